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

A second part times the test's two matrix products (the Gram matrix of the centred
estimates and the bootstrap's ``counts @ centred``): pglab's BLAS calls on one thread
(``stats._gram``, ``stats._resampled_means``) against ``np.einsum`` (the code before
2026-12-03), on the zoo's largest gradients, Taxi (D = 3006, where the test takes its
F-approximation and the Gram matrix is the main cost) and CliffWalking (D = 196, the
bootstrap path), N = 10, all seven estimators, ``--product-studies`` studies each
(default 5). A change of summation order moves last bits, so it prints the largest
relative difference of any verdict number and counts the verdicts that differ (the test at
level 0.05, and whether the interval covers the known bias); 0 expected.

    .venv/bin/python benchmarks/bench_calibration_study.py [--studies 20] [--product-studies 5]
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


def _einsum_gram(centred: np.ndarray, use_gram: bool) -> np.ndarray:
    """The baseline's Gram matrix: ``np.einsum``'s own loops."""
    if use_gram:
        return np.einsum("kd,jd->kj", centred, centred)
    return np.einsum("kd,ke->de", centred, centred)


def _einsum_resampled_means(counts: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """The baseline's bootstrap means: ``np.einsum``'s own loops."""
    return np.einsum("bk,kd->bd", counts, centred) / centred.shape[0]


def _verdicts(row: dict) -> tuple[bool, bool]:
    """(rejected at 0.05, interval covers the known relative bias)."""
    known = row["known_relative_bias"]
    covers = row["relative_bias_ci_low"] <= known <= row["relative_bias_ci_high"]
    return row["p_value"] < 0.05, covers


def products(n_studies: int) -> None:
    """The second part (module docstring): BLAS on one thread against np.einsum."""
    names = list(estimators.ESTIMATORS)
    shipped = (stats._gram, stats._resampled_means)
    baseline = (_einsum_gram, _einsum_resampled_means)
    for mdp_name in ("taxi", "cliffwalking"):
        mdp = zoo.make(mdp_name, gamma=0.9)
        logits = tabular_policy.initial_logits(mdp.n_states, mdp.n_actions, kind="random", seed=0)
        truth = exact.solve(mdp, logits).gradient.flatten()
        seconds = {"pglab": 0.0, "baseline": 0.0}
        worst, differ, rows = 0.0, 0, 0
        for study in range(n_studies):
            verdicts = {}
            for side, (gram, means) in (("baseline", baseline), ("pglab", shipped)):
                stats._gram, stats._resampled_means = gram, means
                start = time.perf_counter()
                verdicts[side] = list(
                    calibration.study_verdicts(mdp, logits, truth, 10, study, names)
                )
                seconds[side] += time.perf_counter() - start
            stats._gram, stats._resampled_means = shipped
            for a, b in zip(verdicts["pglab"], verdicts["baseline"], strict=True):
                rows += 1
                differ += _verdicts(a) != _verdicts(b)
                for key in calibration.VERDICT_KEYS:
                    x, y = a[key], b[key]
                    if x != y and not (math.isnan(x) and math.isnan(y)):
                        worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
        print(
            f"{mdp_name} (D = {mdp.n_states * mdp.n_actions}), N = 10: products by np.einsum "
            f"{1e3 * seconds['baseline'] / n_studies:.0f} ms a study, by the BLAS on one thread "
            f"{1e3 * seconds['pglab'] / n_studies:.0f} ms: "
            f"{seconds['baseline'] / seconds['pglab']:.2f}x; {rows} verdicts, largest relative "
            f"difference {worst:.1e}, {differ} differ"
        )
        if differ:
            raise SystemExit("a verdict changed with the products' summation order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=20, help="studies per cell and side")
    parser.add_argument(
        "--product-studies", type=int, default=5, help="studies per MDP in the products part"
    )
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
    products(args.product_studies)


if __name__ == "__main__":
    main()
