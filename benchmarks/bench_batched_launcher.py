"""hydra/launcher=batched against hydra/launcher=joblib (2 workers) on the same CartPole grid.

Both sides run the whole app end to end as a user would (``python experiments/cartpole.py
-m ...``: process start, Hydra, W&B offline runs, parquet, metadata), one after the other in
this run, into fresh directories. Printed: each side's wall time and env-steps/s, the
speed-up (joblib wall / batched wall; issue 11's target: >= 8x on the default grid), and
whether every job's history and final summary are equal bit for bit between the two (they
must be: a job's numbers do not depend on the launcher).

It also prints two upper bounds on the speed-up, both from this run:

* the critical-path bound (:func:`critical_path`): lock-step plays a run's policy
  evaluations in sequence, so a batch takes at least its longest run's;
* the bound with per-job costs (:func:`cost_bound`): each side is run a second time on the
  same grid with one update per job (``budget.iterations=1``), which keeps what every job
  pays whatever its training (process start, Hydra, its W&B run, parquet, metadata). The
  batched side can take no less than its own one-update wall time plus its longest run's
  evaluations at the pace joblib's workers play them (joblib's extra wall time over its
  one-update run, per evaluation in sequence). It assumes what pglab's launchers all do (a
  job's directory, config and W&B run exist before its first update, so start-up and
  training do not overlap) and that a lock-step vector step costs no less than a lone
  run's step (measured: 0.33 ms for 15 runs against 0.16 ms for one, docs/batched.md). It
  counts one W&B history row per job on the batched side where a real job logs ~200, so
  it errs high.

    python benchmarks/bench_batched_launcher.py                 # the issue's 30-run grid
    python benchmarks/bench_batched_launcher.py --logger none   # without W&B on both sides
    python benchmarks/bench_batched_launcher.py --only batched --grid cartpole_grid
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "experiments" / "cartpole.py"
# The grid: N in {1, 2, 5}, alpha in {1e-4, 1e-3}, 5 seeds, 2e4 env steps each.
SMALL = [
    "n_trajectories=1,2,5",
    "step_size=0.0001,0.001",
    "seed=0,1,2,3,4",
    "budget.iterations=null",
    "budget.env_steps=20000",
]


def run_side(launcher: str, grid: list[str], out: Path, logger: str) -> float:
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    command = [
        sys.executable,
        str(APP),
        "-m",
        *grid,
        f"hydra/launcher={launcher}",
        *extra,
        f"paths.output_dir={out}",
        f"logger={logger}",
        "progress=false",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{launcher} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def _numbers(path: Path) -> pd.DataFrame:
    """The table without its clock columns (wall time, steps per second)."""
    table = pd.read_parquet(path)
    return table.drop(columns=[c for c in table.columns if "wall" in c or c == "sps"])


def results(out: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    found = {}
    for history in sorted(out.rglob("history.parquet")):
        job = history.parent
        found[job.name] = (_numbers(history), _numbers(job / "summary.parquet"))
    return found


def env_steps(found: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> int:
    return int(sum(h["env_steps"].iloc[-1] for h, _ in found.values()))


def chains(found: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> list[float]:
    """Each run's vector steps (env_steps_total / N): its policy evaluations in sequence."""
    return [
        float(h["env_steps_total"].iloc[-1]) / float(h["n_trajectories"].iloc[-1])
        for h, _ in found.values()
    ]


def critical_path(found: dict[str, tuple[pd.DataFrame, pd.DataFrame]], workers: int = 2) -> str:
    """The most speed-up lock-step can give on this grid, from the runs themselves.

    A run's vector steps (env_steps_total / N) are policy evaluations made one after
    another: each waits for the last action, and each batch for the last update. joblib
    plays its jobs' steps back to back on each of ``workers`` processes; a lock-step batch
    plays all its runs' steps side by side, so it takes at least as many vector steps as
    its longest run. Even if a lock-step vector step cost no more than a single run's and
    nothing else cost anything, batched could be at most (total / workers) / longest
    times faster."""
    runs = chains(found)
    sequential = sum(runs) / workers
    return (
        f"critical-path bound: {sequential:.0f} policy evaluations in sequence per joblib "
        f"worker, >= {max(runs):.0f} per lock-step batch: batched <= "
        f"{sequential / max(runs):.1f}x faster, before any per-job cost both sides pay"
    )


def cost_bound(
    walls: dict[str, float],
    floors: dict[str, float],
    found: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
    workers: int = 2,
) -> str:
    """The most speed-up batched can give once per-job costs are counted (module docstring):

    joblib wall / (batched one-update wall + longest chain x c),
    c = (joblib wall - joblib one-update wall) / (evaluations in sequence per worker)."""
    runs = chains(found)
    sequential = sum(runs) / workers
    pace = (walls["joblib"] - floors["joblib"]) / sequential
    least = floors["batched"] + max(runs) * pace
    return (
        f"bound with per-job costs: joblib {walls['joblib']:.1f} s / (batched with one update "
        f"per job {floors['batched']:.1f} s + {max(runs):.0f} evaluations x {pace * 1e3:.3f} ms, "
        f"joblib's pace = {least:.1f} s): batched <= {walls['joblib'] / least:.1f}x faster"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logger", default="wandb", choices=["wandb", "none"])
    parser.add_argument("--grid", default="small", help="'small' (the issue's) or a preset name")
    parser.add_argument("--only", choices=["batched", "joblib"], default=None)
    parser.add_argument(
        "--no-bound", action="store_true", help="skip the one-update runs behind the cost bound"
    )
    args = parser.parse_args()
    grid = SMALL if args.grid == "small" else [f"experiment={args.grid}"]
    # the same jobs with one update each: what every job pays whatever its training
    one_update = [*grid, "budget.iterations=1", "budget.env_steps=null"]
    with tempfile.TemporaryDirectory(prefix="bench-batched-") as tmp:
        walls, found = {}, {}
        for launcher in ("joblib", "batched"):
            if args.only not in (None, launcher):
                continue
            out = Path(tmp) / launcher
            walls[launcher] = run_side(launcher, grid, out, args.logger)
            found[launcher] = results(out)
            steps = env_steps(found[launcher])
            print(
                f"{launcher:8s} {len(found[launcher]):4d} jobs  {walls[launcher]:7.1f} s  "
                f"{steps / walls[launcher] / 1e3:8.1f} k env-steps/s  (logger={args.logger})"
            )
        if len(walls) == 2:
            print(
                f"speed-up batched vs joblib(2 workers): {walls['joblib'] / walls['batched']:.1f}x"
            )
            a, b = found["joblib"], found["batched"]
            same = a.keys() == b.keys() and all(
                a[k][0].equals(b[k][0]) and a[k][1].equals(b[k][1]) for k in a
            )
            print(f"per-job histories and summaries identical: {same} ({len(a)} jobs)")
        if found:
            print(critical_path(next(iter(found.values()))))
        if len(walls) == 2 and not args.no_bound:
            floors = {}
            for launcher in ("joblib", "batched"):
                floors[launcher] = run_side(
                    launcher, one_update, Path(tmp) / f"{launcher}-one-update", args.logger
                )
                print(f"{launcher:8s} the same jobs with one update each: {floors[launcher]:.1f} s")
            print(cost_bound(walls, floors, found["joblib"]))
        # Re-running a finished sweep: every job is skipped (resume) before any work.
        if "batched" in walls:
            start = time.perf_counter()
            run_side("batched", grid, Path(tmp) / "batched", args.logger)
            print(
                f"re-run of the finished sweep (all skipped): {time.perf_counter() - start:.1f} s"
            )


if __name__ == "__main__":
    main()
