"""tabular_ascent's exact-gradient jobs batched (issue 11) against the one-by-one path.

1. The sweep, end to end as a user runs it (process start, Hydra, parquet, metadata)::

       python experiments/tabular_ascent.py -m gradient=exact seed=0,...,9 step_size=1,10 \\
           hydra/launcher=batched hydra.launcher.n_jobs=1 logger=none

   "before": the app with its batch plan switched off, in the same process setup: the
   benchmark imports ``experiments/tabular_ascent.py``, sets ``BATCH = None`` (the launcher
   then runs job after job, as it did for apps without a plan) and ``group_of`` to return
   ``None`` (each job then runs :func:`pglab.tabular.ascent.tabular_ascent`, the code
   before the batched path), and calls its ``main``. "after": the app as it is (the 20
   jobs ascend in one batch). Printed: both walls, their ratio, and the largest relative
   difference of ``expected_return`` between the two (float64 rounding: the batched
   oracle sums in another order).
2. The maths alone, in this process: the same 20 runs (chain MDP, 200 iterations) with
   ``tabular_ascent`` one by one, with the batched code one by one (R = 1, what a single
   job runs), and as one batch of R = 20; then the cost per run for a few R.

    python benchmarks/bench_tabular_batched.py
    python benchmarks/bench_tabular_batched.py --mdp frozenlake --iterations 100
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from pglab.tabular import zoo
from pglab.tabular.ascent import tabular_ascent
from pglab.tabular.batched_ascent import AscentRun, batched_tabular_ascent, exact_pg_ascent

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "experiments" / "tabular_ascent.py"
SEEDS = ",".join(str(s) for s in range(10))
STEP_SIZES = (1.0, 10.0)

# Runs the app's main with its batch plan off (module docstring, "before"). Hydra finds
# the config directory from the task function's file only when its module is __main__.
BEFORE = f"""
import sys
sys.path.insert(0, {str(ROOT / "experiments")!r})
sys.argv = [{str(APP)!r}, *sys.argv[1:]]
import tabular_ascent as app
app.BATCH = None
app.group_of = lambda settings: None
app.main.__wrapped__.__module__ = "__main__"
app.main()
"""


def run_sweep(side: str, out: Path, mdp: str, iterations: int) -> float:
    args = [
        "-m",
        "gradient=exact",
        f"seed={SEEDS}",
        "step_size=" + ",".join(f"{a:g}" for a in STEP_SIZES),
        f"mdp={mdp}",
        f"n_iterations={iterations}",
        "hydra/launcher=batched",
        "hydra.launcher.n_jobs=1",
        "logger=none",
        "progress=false",
        f"paths.output_dir={out}",
    ]
    command = (
        [sys.executable, "-c", BEFORE, *args]
        if side == "before"
        else [sys.executable, str(APP), *args]
    )
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{side} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log = done.stdout + done.stderr
    batched = "in lock-step batches" in log and "batch 1/1" in log
    if batched != (side == "after"):
        sys.exit(f"{side}: the sweep did not run as intended (batched={batched}):\n{log[-3000:]}")
    return wall


def histories(out: Path) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_parquet(p) for p in sorted(out.rglob("history.parquet"))}


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mdp", default="chain")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--skip-sweep", action="store_true", help="only the in-process part")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if not args.skip_sweep:
        with tempfile.TemporaryDirectory(prefix="bench-tabular-batched-") as tmp:
            walls, found = {}, {}
            for side in ("before", "after"):
                out = Path(tmp) / side
                walls[side] = run_sweep(side, out, args.mdp, args.iterations)
                found[side] = histories(out)
                print(f"sweep {side:6s} {len(found[side]):3d} jobs  {walls[side]:6.2f} s wall")
            print(f"sweep speed-up (before / after): {walls['before'] / walls['after']:.2f}x")
            worst = 0.0
            for name, before in found["before"].items():
                a = before["expected_return"].to_numpy()
                b = found["after"][name]["expected_return"].to_numpy()
                worst = max(worst, float(abs(a - b).max() / max(abs(a).max(), 1e-300)))
            print(f"largest relative difference of expected_return, before vs after: {worst:.1e}")

    mdp = zoo.make(args.mdp)
    theta0 = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    if mdp.features is not None:
        theta0 = torch.zeros(int(mdp.features.shape[2]), dtype=torch.float64)
    k = args.iterations
    runs = [AscentRun(theta0, a, k) for a in STEP_SIZES for _ in range(10)]
    old = timed(lambda: [tabular_ascent(mdp, r.logits0, r.step_size, k) for r in runs])
    single = timed(lambda: [exact_pg_ascent(mdp, r.logits0, r.step_size, k) for r in runs])
    batch = timed(lambda: batched_tabular_ascent(mdp, runs))
    print(
        f"maths, {len(runs)} runs x {k} iterations on {args.mdp}: "
        f"tabular_ascent one by one {old:.3f} s, batched code one by one (R=1) {single:.3f} s, "
        f"one batch (R={len(runs)}) {batch:.3f} s; speed-up {old / batch:.1f}x"
    )
    for size in (1, 5, 20, 100):
        many = [AscentRun(theta0, STEP_SIZES[i % 2], k) for i in range(size)]
        per_run = timed(lambda many=many: batched_tabular_ascent(mdp, many)) / size
        print(
            f"  R={size:3d}: {1e3 * per_run:7.2f} ms per run ({1e3 * old / len(runs):.2f} one by one)"
        )


if __name__ == "__main__":
    main()
