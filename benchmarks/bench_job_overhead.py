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

The skip benchmark (issue 9) builds a finished sweep of ``--skip-jobs`` (200) trivial jobs,
then times the skip decision inside the job, ``run_job`` on a finished job from entry to
return, in process, for every job, against the procedure it replaced (package versions and
git state collected first, then an ``rglob`` of the whole sweep directory for a twin),
timed in the same run on the same sweep. Target: <= 20 ms per finished job. It also
times re-running the whole finished sweep as a user would (interpreter, Hydra's own
per-job work included).

    .venv/bin/python benchmarks/bench_job_overhead.py [--repeats 5] [--skip-jobs 200] [--only-skip]
"""

from __future__ import annotations

import argparse
import json
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


def _old_skip_decision(cfg, sweep_dir: Path, overrides: list[str]) -> bool:
    """The skip check as it was: validate, then metadata (versions, git), then an rglob of
    the sweep directory for a finished twin."""
    from omegaconf import OmegaConf
    from pglab_jobs import metadata
    from pglab_jobs.config import validate_tabular_ascent

    validate_tabular_ascent(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)

    metadata._package_versions.cache_clear()  # it was collected afresh for every job
    metadata._git_state.cache_clear()
    meta = metadata.base_metadata("tabular_ascent", config, overrides)
    for meta_file in sweep_dir.rglob("metadata.json"):
        try:
            other = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if other.get("job_hash") == meta["job_hash"] and other.get("status") in (
            "complete",
            "diverged",
        ):
            if all((meta_file.parent / n).is_file() for n in other.get("result_files", [])):
                return True
    return False


def skip_benchmark(n_jobs: int) -> None:
    import logging

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from pglab_jobs.config import validate_tabular_ascent
    from pglab_jobs.job import run_job

    logging.getLogger("pglab").setLevel(logging.WARNING)  # no per-job log lines in the timing
    py = sys.executable
    with tempfile.TemporaryDirectory() as out:
        seeds = ",".join(map(str, range(n_jobs)))
        sweep_cmd = [
            py,
            "experiments/tabular_ascent.py",
            "-m",
            f"paths.output_dir={out}",
            "sweep_name=skip",
            "logger=none",
            "progress=false",
            "n_iterations=1",
            f"seed={seeds}",
        ]
        start = time.perf_counter()
        subprocess.run(sweep_cmd, cwd=REPO, check=True, capture_output=True)
        first_run = time.perf_counter() - start
        sweep = Path(out) / "multirun" / "tabular_ascent" / "skip"
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            base = compose(
                "tabular_ascent",
                overrides=[f"paths.output_dir={out}", "sweep_name=skip", "logger=none"]
                + ["progress=false", "n_iterations=1"],
                return_hydra_config=True,
            )
        cfgs = []
        for seed in range(n_jobs):
            cfg = base.copy()
            cfg.seed = seed
            name = f"n_iterations=1,seed={seed}"
            cfg.hydra.runtime.output_dir = str(sweep / name)
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(sweep)
            cfg.hydra.job.override_dirname = name
            cfg.hydra.overrides.task = [f"seed={seed}", "n_iterations=1"]
            cfgs.append(cfg)

        def never(ctx):
            raise AssertionError("a finished job was not skipped")

        new, old = [], []
        for cfg in cfgs:
            HydraConfig.instance().set_config(cfg)
            task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # as Hydra does
            start = time.perf_counter()
            status = run_job(task, "tabular_ascent", never, validate=validate_tabular_ascent)
            new.append(time.perf_counter() - start)
            assert status == "skipped", status
            start = time.perf_counter()
            found = _old_skip_decision(task, sweep, list(cfg.hydra.overrides.task))
            old.append(time.perf_counter() - start)
            assert found
        start = time.perf_counter()
        rerun = subprocess.run(sweep_cmd, cwd=REPO, check=True, capture_output=True, text=True)
        second_run = time.perf_counter() - start
        assert f"0 done, {n_jobs} skipped" in rerun.stdout, rerun.stdout[-2000:]
    new_ms = 1000 * statistics.mean(new)
    old_ms = 1000 * statistics.mean(old)
    print(f"skip decision inside the job, {n_jobs} finished jobs of one sweep:")
    print(
        f"  now:          {new_ms:7.2f} ms per job (median {1000 * statistics.median(new):.2f},"
        f" max {1000 * max(new):.2f}) (target <= 20 ms: {'OK' if new_ms <= 20 else 'OVER'})"
    )
    print(f"  old procedure:{old_ms:7.2f} ms per job -> {old_ms / new_ms:.0f}x slower")
    print(
        f"  whole sweep as a user runs it: first run {first_run:.1f} s, re-run {second_run:.1f} s"
        f" ({1000 * second_run / n_jobs:.0f} ms per skipped job, interpreter and Hydra included:"
        " Hydra composes every job's config twice, in its sweeper and in its launcher)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-jobs", type=int, default=200)
    parser.add_argument("--only-skip", action="store_true", help="only the skip benchmark")
    args = parser.parse_args()
    skip_benchmark(args.skip_jobs)
    if args.only_skip:
        return
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
