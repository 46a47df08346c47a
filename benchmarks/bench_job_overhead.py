"""Per-job fixed overhead: interpreter + imports + Hydra + W&B init/finish + result writing.

Runs a job whose own work is negligible (two-state MDP, N=1, K=2) as a user would
(``python experiments/estimator_variance.py ...``) and compares it, in the same run, with
a bare ``python -c pass`` and with importing the stack. Target: the job's wall time,
W&B offline included, stays <= 3 s.

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
TRIVIAL = [
    "mdp=two_state",
    "n_trajectories=1",
    "n_repetitions=2",
    "estimator=reinforce",
    "progress=false",
]


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
    with tempfile.TemporaryDirectory() as out:
        app = [py, "experiments/estimator_variance.py", f"paths.output_dir={out}", *TRIVIAL]
        figures = {
            "python -c pass": wall([py, "-c", "pass"], args.repeats),
            "import torch+gymnasium+hydra+pandas": wall(
                [py, "-c", "import torch, gymnasium, hydra, pandas, pyarrow"], args.repeats
            ),
            "job, logger=none": wall([*app, "logger=none"], args.repeats),
            "job, W&B offline": wall([*app, "logger=wandb"], args.repeats),
        }
    base = figures["python -c pass"]
    print(f"per-job overhead (median of {args.repeats}):")
    for name, seconds in figures.items():
        print(f"  {name:40s} {seconds:6.2f} s   ({seconds / base:5.1f}x bare python)")
    job = figures["job, W&B offline"]
    verdict = "OK" if job <= 3.0 else "OVER TARGET"
    print(
        f"job with W&B offline: {job:.2f} s (target <= 3 s: {verdict}); "
        f"W&B adds {job - figures['job, logger=none']:.2f} s"
    )


if __name__ == "__main__":
    main()
