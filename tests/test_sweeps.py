"""Resumable sweeps, atomic results, sweep summaries and W&B failure handling (issue 5)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_app
from pglab_jobs import storage
from pglab_jobs.metadata import job_hash


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "results.parquet"
    storage.write_parquet(pd.DataFrame({"a": [1, 2]}), target)

    class Boom(Exception):
        pass

    def exploding(tmp: Path) -> None:
        tmp.write_bytes(b"half a parquet file")
        raise Boom

    with pytest.raises(Boom):
        storage._atomic_write(target, exploding)
    # the old file is intact and no temporary file is left behind
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]


def test_job_hash_ignores_outputs_and_logging_only():
    base = {
        "seed": 0,
        "step_size": 0.1,
        "paths": {"output_dir": "a"},
        "logger": {"mode": "offline"},
    }
    moved = {**base, "paths": {"output_dir": "b"}, "logger": {"enabled": False}, "sweep_name": "x"}
    assert job_hash(base) == job_hash(moved)
    assert job_hash(base) != job_hash({**base, "seed": 1})


def _status(job: Path) -> str | None:
    meta = storage.read_metadata(job)
    return meta and meta.get("status")


def test_killed_sweep_resumes_skipping_finished_jobs(tmp_path):
    """Kill a multirun while its second job runs; re-running finishes it and skips the first."""
    sweep = tmp_path / "multirun" / "cartpole" / "resume"
    args = [
        sys.executable,
        str(REPO / "experiments" / "cartpole.py"),
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=resume",
        "logger=none",
        "progress=false",
        "n_trajectories=2",
        "step_size=0.0001",
        "seed=0,1,2",
        "budget.iterations=400",
    ]
    common = "budget.iterations=400,n_trajectories=2"
    jobs = [sweep / f"{common},seed={s},step_size=0.0001" for s in range(3)]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 240
    try:
        while not (_status(jobs[0]) == "complete" and _status(jobs[1]) == "running"):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "timed out waiting for the second job to start"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_finish = storage.read_metadata(jobs[0])["finished_at"]
    assert not storage.is_finished(jobs[1]), "a killed job must not count as finished"
    assert not (jobs[2] / "metadata.json").exists()

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 done" in rerun.stdout and "1 skipped" in rerun.stdout, rerun.stdout
    assert storage.read_metadata(jobs[0])["finished_at"] == first_finish  # not re-run
    for job in jobs:
        assert storage.is_finished(job)
        assert len(pd.read_parquet(job / "history.parquet")) == 400

    third = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "0 done" in third.stdout and "3 skipped" in third.stdout, third.stdout


def test_failed_job_is_reported_and_rerun(tmp_path):
    """A failing job does not stop the sweep; the summary counts it and the exit code says so."""
    args = (
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=f",
        "logger=none",
        "progress=false",
        "mdp=two_state",
        "n_repetitions=5",
        "n_trajectories=[2]",
        "mdp.horizon=2,0",
    )
    proc = run_app("estimator_variance.py", *args, check=False)
    assert proc.returncode != 0
    assert "1 done" in proc.stdout and "1 failed" in proc.stdout, proc.stdout
    (failed,) = (tmp_path / "multirun" / "estimator_variance" / "f").glob("*mdp.horizon=0*")
    # A config error is caught before anything is written: only the job's status records it,
    # with the one-line message naming the key, and the log shows that line, no traceback.
    status = json.loads((failed / "job_status.json").read_text())
    assert status["status"] == "failed" and "mdp.horizon" in status["error"], status
    assert not (failed / "metadata.json").exists()
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    (line,) = [ln for ln in output.splitlines() if "config error" in ln]
    assert "mdp.horizon" in line and "0" in line
    again = run_app("estimator_variance.py", *args, check=False)
    assert "1 skipped" in again.stdout and "1 failed" in again.stdout  # failed jobs run again


def closed_port() -> int:
    """A local TCP port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def silent_server():
    """A local TCP server that accepts connections and never answers (a W&B server that
    hangs): the reachability probe succeeds, ``wandb.init`` online times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


# No test needs network or a W&B account: the server W&B talks to is a local port that
# refuses (unreachable), or a local server that accepts and never answers (hangs).
@pytest.mark.parametrize(
    ("overrides", "server", "key", "warning"),
    [
        (["logger.mode=bogus"], None, None, "logger.mode='bogus'"),
        (["logger.mode=online"], "refused", "0" * 40, "W&B is unreachable"),
        (
            ["logger.mode=online", "logger.init_timeout=3"],
            "silent",
            None,
            "W&B could not start in mode 'online'",
        ),
        (
            ["logger.mode=online", "logger.init_timeout=3"],
            "silent",
            "0" * 40,
            "W&B could not start in mode 'online'",
        ),
    ],
    ids=["bad-mode", "online-unreachable", "online-no-account", "online-server-hangs"],
)
def test_wandb_failure_keeps_local_results(tmp_path, overrides, server, key, warning):
    """W&B never costs the local results; online falls back to an offline run."""
    full_env = {**os.environ}
    full_env.pop("WANDB_MODE", None)  # let logger.mode decide
    full_env.pop("WANDB_API_KEY", None)
    if key:
        full_env["WANDB_API_KEY"] = key
    with contextlib.ExitStack() as stack:
        if server == "refused":
            full_env["WANDB_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
        elif server == "silent":
            full_env["WANDB_BASE_URL"] = stack.enter_context(silent_server())
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "experiments" / "tabular_ascent.py"),
                f"paths.output_dir={tmp_path}",
                "n_iterations=3",
                "progress=false",
                *overrides,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=full_env,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert warning in proc.stderr
    (job,) = [p.parent for p in tmp_path.rglob("metadata.json")]
    assert storage.is_finished(job)
    assert len(pd.read_parquet(job / "history.parquet")) == 3
    if server:  # online that cannot work logs offline instead, to upload later
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1
        assert "logging offline instead" in proc.stderr


def test_nan_during_training_ends_run_as_diverged_with_results(tmp_path):
    run_app(
        "cartpole.py",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "progress=false",
        "budget.iterations=1000",
        "step_size=1e30",
        "n_trajectories=2",
    )
    (job,) = [p.parent for p in tmp_path.rglob("metadata.json")]
    meta = json.loads((job / "metadata.json").read_text())
    summary = pd.read_parquet(job / "summary.parquet").iloc[0]
    assert meta["status"] == summary["status"]
    assert summary["collapsed"]
    assert len(pd.read_parquet(job / "history.parquet")) >= 1


def test_rerun_sets_earlier_wandb_runs_aside(tmp_path):
    """resume=false re-runs a finished job in the same dir; only the new W&B run is synced."""
    args = (
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=again",
        "n_iterations=3",
        "progress=false",
    )
    run_app("tabular_ascent.py", *args)
    run_app("tabular_ascent.py", *args, "resume=false")
    (job,) = [p.parent for p in tmp_path.rglob("metadata.json")]
    assert len(list((job / "wandb").glob("offline-run-*"))) == 1
    assert len(list((job / "wandb" / "superseded").glob("offline-run-*"))) == 1
    from analysis.wandb_source import load_wandb_offline

    assert len(load_wandb_offline(tmp_path)["runs"]) == 1


def test_failure_while_writing_results_is_recorded_as_failed(tmp_path, monkeypatch):
    """An error after the body (here: pyarrow cannot store a column) ends the job as failed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from pglab_jobs.job import JobOutput, run_job

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "tabular_ascent",
            overrides=[f"paths.output_dir={tmp_path}", "logger=none"],
            return_hydra_config=True,
        )
    cfg.hydra.runtime.output_dir = str(tmp_path / "job")
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.job.override_dirname = "job"
    HydraConfig.instance().set_config(cfg)
    bad = pd.DataFrame({"mixed": [1, "two"]})  # pyarrow refuses mixed int/str objects
    status = run_job(cfg, "tabular_ascent", lambda ctx: JobOutput(tables={"history": bad}))
    assert status == "failed"
    meta = storage.read_metadata(tmp_path / "job")
    assert meta["status"] == "failed"
    assert meta["error"].startswith("Arrow"), meta["error"]  # pyarrow's ArrowTypeError/Invalid
    assert not storage.is_finished(tmp_path / "job")
