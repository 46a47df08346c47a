"""Throughput of the calibration study's cells: pglab's bias test vs the same test on numpy's
``np.quantile`` and uncached bootstrap draws (the code before 2026-12-03).

Workload: :func:`pglab.tabular.calibration.study_verdicts`, the unit of work of
``experiments/calibration.py`` and of ``tests/test_calibration.py``'s size tests: K = 200
batch estimates of every unbiased estimator at one N, then each estimator's bias test and
95 % interval (:func:`pglab.stats.bias_test`, B = 1000 bootstrap resamples), on gridworld
and chain at gamma = 0.9 (random logits, seed 0), N in {1, 3, 10}.

* ``pglab``: as shipped. The interval's bisections (60 halvings per end, ~240 quantiles of a
  ``[B]`` array per test) take each quantile with ``stats._Quantile`` (one ``partition``
  and numpy's interpolation), and the ``[B, K]`` bootstrap draws are cached per seed, so
  the estimators of one cell share them.
* ``baseline``: the same code with ``np.quantile`` for every quantile and the draws made
  anew for each estimator (both swapped in by this script, in this process).

The two sides alternate, study by study, ``--studies`` studies per cell (default 20); the
script prints studies per second of each side and their ratio, and checks that every
verdict (p-value, interval ends, statistic) is bit for bit the same on both sides.

    .venv/bin/python benchmarks/bench_calibration_study.py [--studies 20]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from pglab import estimators, stats
from pglab.tabular import calibration, exact, zoo
from pglab.tabular import policy as tabular_policy


class _NumpyQuantile:
    """The baseline's quantile: ``np.quantile(values, level)`` on every call."""

    def __init__(self, n: int, level: float) -> None:
        self.level = level

    def __call__(self, values: np.ndarray) -> float:
        return float(np.quantile(values, self.level))


def _same(a: dict, b: dict) -> bool:
    return all(
        a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key]))
        for key in a
        if isinstance(a[key], float)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=20, help="studies per cell and side")
    args = parser.parse_args()
    names = list(estimators.UNBIASED_ESTIMATORS)
    shipped = (stats._Quantile, stats._bootstrap_counts)
    baseline = (_NumpyQuantile, stats._bootstrap_counts.__wrapped__)
    seconds = {"pglab": 0.0, "baseline": 0.0}
    rows, mismatches = 0, 0
    for mdp_name in ("gridworld", "chain"):
        mdp = getattr(zoo, mdp_name)(gamma=0.9)
        logits = tabular_policy.initial_logits(mdp.n_states, mdp.n_actions, kind="random", seed=0)
        truth = exact.solve(mdp, logits).gradient.flatten()
        for n_trajectories in (1, 3, 10):
            for study in range(args.studies):
                verdicts = {}
                for side, (quantile, counts) in (("baseline", baseline), ("pglab", shipped)):
                    stats._Quantile, stats._bootstrap_counts = quantile, counts
                    start = time.perf_counter()
                    verdicts[side] = list(
                        calibration.study_verdicts(
                            mdp, logits, truth, n_trajectories, study, names, n_resamples=1000
                        )
                    )
                    seconds[side] += time.perf_counter() - start
                stats._Quantile, stats._bootstrap_counts = shipped
                for a, b in zip(verdicts["pglab"], verdicts["baseline"], strict=True):
                    rows += 1
                    mismatches += not _same(a, b)
    studies = 2 * 3 * args.studies
    for side in ("baseline", "pglab"):
        print(
            f"{side:>8}: {studies / seconds[side]:7.1f} studies/s "
            f"({1e3 * seconds[side] / studies:.1f} ms a study of {len(names)} estimators)"
        )
    print(f"   ratio: {seconds['baseline'] / seconds['pglab']:.2f}x (pglab over baseline)")
    print(f"verdicts: {rows} compared, {mismatches} differ in any bit")
    if mismatches:
        raise SystemExit("the two sides disagree")


if __name__ == "__main__":
    main()
