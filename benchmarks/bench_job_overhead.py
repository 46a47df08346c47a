"""Per-job fixed overhead: interpreter + imports + Hydra + W&B init/finish + result writing.

Runs jobs whose own work is negligible, as a user would (``python experiments/<app>.py``):
a CartPole job (one update of one episode: the unit of the big N × α × seed grids) and an
estimator-study job (two-state MDP, N=1, K=2), each with ``logger=none`` and with W&B
offline, and compares them in the same run with a bare ``python -c pass`` and with
importing the stack. Target: a job's wall time, W&B offline included, stays <= 3 s.

In a sweep, the imports are paid once per process (the basic launcher runs every job in
one process, joblib reuses its workers), so the benchmark also runs a 10-job multirun of
trivial CartPole jobs and reports the marginal cost of one more job:
(wall(10 jobs) − wall(1 job)) / 9.

    .venv/bin/python benchmarks/bench_job_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRIVIAL = {
    "cartpole.py": [
        "n_trajectories=1",
        "budget.iterations=1",
        "variance_every=0",
        "progress=false",
    ],
    "estimator_variance.py": [
        "mdp=two_state",
        "n_trajectories=1",
        "n_repetitions=2",
        "estimator=reinforce",
        "progress=false",
    ],
}


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    figures = {
        "python -c pass": wall([py, "-c", "pass"], args.repeats),
        "import torch+gymnasium+hydra+pandas": wall(
            [py, "-c", "import torch, gymnasium, hydra, pandas, pyarrow"], args.repeats
        ),
    }
    with tempfile.TemporaryDirectory() as out:
        for script, overrides in TRIVIAL.items():
            app = [py, f"experiments/{script}", f"paths.output_dir={out}", *overrides]
            figures[f"{script}, logger=none"] = wall([*app, "logger=none"], args.repeats)
            figures[f"{script}, W&B offline"] = wall([*app, "logger=wandb"], args.repeats)
    with tempfile.TemporaryDirectory() as out:
        sweep = [
            py,
            "experiments/cartpole.py",
            "-m",
            f"paths.output_dir={out}",
            *TRIVIAL["cartpole.py"],
            "logger=wandb",
        ]
        one = wall([*sweep, "sweep_name=one", "seed=0"], 1)
        ten = wall([*sweep, "sweep_name=ten", "seed=" + ",".join(map(str, range(10)))], 1)
    marginal = (ten - one) / 9
    base = figures["python -c pass"]
    print(f"per-job overhead (median of {args.repeats}):")
    for name, seconds in figures.items():
        print(f"  {name:40s} {seconds:6.2f} s   ({seconds / base:5.1f}x bare python)")
    print(
        f"multirun of trivial CartPole jobs, W&B offline: 1 job {one:.2f} s, 10 jobs {ten:.2f} s"
        f" -> marginal {marginal:.2f} s per job (target <= 3 s: "
        f"{'OK' if marginal <= 3.0 else 'OVER TARGET'})"
    )
    for script in TRIVIAL:
        job = figures[f"{script}, W&B offline"]
        verdict = "OK" if job <= 3.0 else "OVER TARGET"
        print(
            f"{script} job with W&B offline: {job:.2f} s (target <= 3 s: {verdict}); "
            f"W&B adds {job - figures[f'{script}, logger=none']:.2f} s"
        )


if __name__ == "__main__":
    main()
