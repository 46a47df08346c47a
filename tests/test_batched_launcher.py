"""hydra/launcher=batched (issue 11): same per-job results as any launcher, faster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_app
from pglab_jobs import storage

from analysis.wandb_source import read_records, records_to_frames
from pglab.schema import JOB_STATUS_FILE

GRID = ("n_trajectories=1,5", "step_size=0.001,0.01", "seed=0,1")
BUDGET = ("budget.iterations=null", "budget.env_steps=1500", "variance_every=3")


def _numbers(path: Path) -> pd.DataFrame:
    """A result table without its clock columns (wall time, steps per second)."""
    table = pd.read_parquet(path)
    return table.drop(columns=[c for c in table.columns if "wall" in c or c == "sps"])


def _jobs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.rglob("metadata.json")}


def _sweep(tmp_path: Path, launcher: str, *extra: str, name: str = "grid"):
    return run_app(
        "cartpole.py",
        "-m",
        *GRID,
        *BUDGET,
        *extra,
        f"hydra/launcher={launcher}",
        f"paths.output_dir={tmp_path}",
        f"sweep_name={name}",
        "progress=false",
    )


@pytest.mark.slow
def test_batched_jobs_equal_basic_jobs_bit_for_bit_and_resume_only_what_is_missing(tmp_path):
    _sweep(tmp_path / "basic", "basic", "logger=none")
    proc = _sweep(tmp_path / "batched", "batched")
    assert "in lock-step batches" in proc.stderr + proc.stdout
    basic = _jobs(tmp_path / "basic" / "multirun" / "cartpole" / "grid")
    batched = _jobs(tmp_path / "batched" / "multirun" / "cartpole" / "grid")
    assert len(basic) == len(batched) == 8
    for name, job in basic.items():
        for table in ("history", "summary"):
            assert _numbers(job / f"{table}.parquet").equals(
                _numbers(batched[name] / f"{table}.parquet")
            ), (name, table)
        meta = storage.read_metadata(batched[name])
        assert meta["status"] == "complete" and meta["compose_key"]

    # One W&B offline run per job, reading back what the parquet history holds.
    for name, job in batched.items():
        runs = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, name
        logged = records_to_frames(read_records(runs[0]))
        assert logged["run"]["state"] == "finished"
        rows = pd.DataFrame(logged["history"])
        history = pd.read_parquet(job / "history.parquet")
        assert rows["env_steps"].tolist() == history["env_steps"].tolist()
        assert rows["return_mean"].tolist() == history["return_mean"].tolist()
        assert logged["summary"]["status"] == "complete"

    # Resume: damage one job's results and re-run; only that job is recomputed, the other
    # seven are skipped before their configs are composed (compose_key).
    victim = sorted(batched)[3]
    (batched[victim] / "history.parquet").write_bytes(b"not parquet")
    before = {n: (j / "metadata.json").stat().st_mtime_ns for n, j in batched.items()}
    proc = _sweep(tmp_path / "batched", "batched")
    out = proc.stderr + proc.stdout
    assert "7 of 8 jobs finished before: skipped" in out
    after = {n: (j / "metadata.json").stat().st_mtime_ns for n, j in batched.items()}
    assert [n for n in before if before[n] != after[n]] == [victim]
    assert _numbers(batched[victim] / "history.parquet").equals(
        _numbers(basic[victim] / "history.parquet")
    )
    statuses = {
        n: json.loads((j / JOB_STATUS_FILE).read_text())["status"] for n, j in batched.items()
    }
    assert sorted(statuses.values()) == ["complete"] + ["skipped"] * 7


@pytest.mark.slow
def test_a_diverging_job_ends_alone_and_the_batch_finishes(tmp_path):
    # step_size=3e38: the first step overflows float32 (a step the parameters cannot
    # hold), so that run ends as "diverged" with its row saved; its batch mate finishes.
    run_app(
        "cartpole.py",
        "-m",
        "n_trajectories=2",
        "step_size=0.001,3e38",
        "seed=0",
        "budget.iterations=30",
        "hydra/launcher=batched",
        "hydra.launcher.n_jobs=1",  # one process, so both runs share one lock-step batch
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "progress=false",
    )
    jobs = _jobs(tmp_path / "multirun" / "cartpole" / "default")
    status = {name: storage.read_metadata(job)["status"] for name, job in jobs.items()}
    diverged = [n for n in status if "3e+38" in n]
    assert status[diverged[0]] == "diverged"
    assert [s for n, s in status.items() if n not in diverged] == ["complete"]
    history = pd.read_parquet(jobs[diverged[0]] / "history.parquet")
    assert bool(history["diverged"].iloc[-1]) and len(history) == 1


def test_apps_without_a_batch_plan_run_one_by_one_in_process(tmp_path):
    proc = run_app(
        "estimator_variance.py",
        "-m",
        "seed=0,1",
        "mdp=two_state",
        "n_trajectories=[3]",
        "n_repetitions=5",
        "n_resamples=50",
        "hydra/launcher=batched",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "progress=false",
    )
    assert "one after another in each (no batch plan)" in proc.stderr + proc.stdout
    jobs = _jobs(tmp_path / "multirun")
    assert len(jobs) == 2
    assert all(storage.read_metadata(j)["status"] == "complete" for j in jobs.values())


def test_a_bad_max_batch_is_refused_with_the_field_and_value(tmp_path):
    proc = run_app(
        "cartpole.py",
        "-m",
        "seed=0",
        "hydra/launcher=batched",
        "hydra.launcher.max_batch=0",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        check=False,
    )
    assert proc.returncode != 0
    assert "hydra.launcher.max_batch must be a positive integer, got 0" in proc.stderr


@pytest.mark.slow
def test_interrupted_batch_keeps_finished_jobs_and_resumes_the_rest(tmp_path):
    # Two runs share one lock-step batch: the 3-iteration one ends first and is written at
    # once; Ctrl-C while the 3000-iteration one trains records that one as failed; the
    # re-run skips the first and recomputes only the second.
    sweep = tmp_path / "multirun" / "cartpole" / "intr"
    args = [
        sys.executable,
        str(REPO / "experiments" / "cartpole.py"),
        "-m",
        "n_trajectories=2",
        "budget.iterations=3,3000",
        "hydra/launcher=batched",
        "hydra.launcher.n_jobs=1",
        f"paths.output_dir={tmp_path}",
        "sweep_name=intr",
        "logger=none",
        "progress=false",
    ]
    short, long = (sweep / f"budget.iterations={k},n_trajectories=2" for k in (3, 3000))
    # SIGINT as a terminal sends it; a shell that started the tests in the background
    # may have set it to "ignore", which the child would inherit
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    try:
        while not _status(short) == "complete":
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            assert time.monotonic() < deadline, "timed out waiting for the short job"
            time.sleep(0.05)
        assert _status(long) == "running"
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, out
    assert _status(long) == "failed" and "KeyboardInterrupt" in storage.read_metadata(long)["error"]
    first_finish = storage.read_metadata(short)["finished_at"]
    rerun = subprocess.run(
        [*args[:4], "budget.iterations=3,30", *args[5:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert storage.read_metadata(short)["finished_at"] == first_finish
    assert _status(sweep / "budget.iterations=30,n_trajectories=2") == "complete"


def _status(job: Path) -> str | None:
    meta = storage.read_metadata(job)
    return meta and meta.get("status")


def test_a_bad_slurm_shard_count_is_refused_before_anything_is_submitted(tmp_path):
    # the launcher is built before any job is composed or submitted: no SLURM needed here
    proc = run_app(
        "cartpole.py",
        "-m",
        "seed=0",
        "hydra/launcher=batched_slurm",
        "hydra.launcher.shards=0",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        check=False,
    )
    assert proc.returncode != 0
    assert "hydra.launcher.shards must be a positive int, got 0" in proc.stderr
    assert not list(tmp_path.rglob(".submitit"))
