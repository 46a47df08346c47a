"""The job runtime's faults (issue 9), each reproduced with real processes and real files.

Every test runs the real apps through real Hydra sweeps. The one injected fault is the
disk limit (``RLIMIT_FSIZE``, set on the running sweep from outside with ``prlimit``): the
kernel then fails writes with ``EFBIG`` exactly where a full disk fails them with ``ENOSPC``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import resource
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_app
from pglab_jobs import batching, storage
from pglab_jobs import progress as sweep_progress
from pglab_jobs.metadata import job_hash
from pglab_jobs.progress import Progress
from test_sweeps import closed_port, silent_server

from pglab import schema
from pglab.gym import lockstep

APP = str(REPO / "experiments" / "tabular_ascent.py")


def _sweep(tmp_path: Path, name: str, app: str = "tabular_ascent") -> Path:
    return tmp_path / "multirun" / app / name


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/" + schema.METADATA_FILE))


def _status(job: Path) -> str | None:
    try:
        return json.loads((job / schema.JOB_STATUS_FILE).read_text()).get("status")
    except (OSError, ValueError):
        return None


# -- 1. one declaration -----------------------------------------------------------------


def test_runtime_uses_the_schema_declaration():
    from pglab_jobs import callbacks, job, metadata

    assert storage.METADATA_FILE is schema.METADATA_FILE
    assert storage.FINISHED_STATUSES is schema.FINISHED_STATUSES
    assert metadata.NON_SEMANTIC_KEYS is schema.NON_SEMANTIC_KEYS
    for module in (job, storage, metadata, callbacks):
        source = Path(module.__file__).read_text()
        for name in ("METADATA_FILE", "JOB_STATUS_FILE", "FINISHED_STATUSES", "NON_SEMANTIC_KEYS"):
            assert not re.search(rf"^{name}\s*=", source, re.M), (
                f"{module.__name__} redefines {name}"
            )


def test_thread_count_neither_renames_nor_reruns_a_job(tmp_path):
    """threads is non-semantic: a re-run with another thread count finds the finished job."""
    args = ("-m", f"paths.output_dir={tmp_path}", "sweep_name=t", "logger=none", "progress=false")
    args += ("n_iterations=3", "seed=0")
    run_app("tabular_ascent.py", *args, "threads=1")
    again = run_app("tabular_ascent.py", *args, "threads=2")
    assert "0 done, 1 skipped" in again.stdout, again.stdout
    (job,) = _jobs(_sweep(tmp_path, "t"))
    assert job.name == "n_iterations=3,seed=0"
    # A job finished before threads became non-semantic carries the hash that included it.
    meta = storage.read_metadata(job)
    legacy = tuple(k for k in schema.NON_SEMANTIC_KEYS if k != "threads")
    meta["job_hash"] = job_hash(meta["config"], legacy)
    assert meta["job_hash"] != job_hash(meta["config"])
    storage.write_json(meta, job / schema.METADATA_FILE)
    third = run_app("tabular_ascent.py", *args)
    assert "0 done, 1 skipped" in third.stdout, third.stdout


# -- 2. config errors ----------------------------------------------------------------------


def test_config_error_in_a_sweep_fails_the_job_in_one_line_and_the_sweep_goes_on(tmp_path):
    """threads=0 used to fail before the job's error handling: no summary, a traceback."""
    proc = run_app(
        "tabular_ascent.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=c",
        "logger=none",
        "progress=false",
        "n_iterations=3",
        "seed=0,1",
        "threads=0",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "0 done, 0 skipped, 2 failed" in proc.stdout, output
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if "config error" in ln]
    assert len(lines) == 2, output
    assert all("threads" in ln and "got 0" in ln for ln in lines), lines
    for job in sorted(_sweep(tmp_path, "c").glob("seed=*")):
        assert _status(job) == "failed"
        assert not (job / schema.METADATA_FILE).exists()  # nothing written before the check
        assert not (job / "wandb").exists()


# -- 3. resume verifies integrity -----------------------------------------------------------


def test_resume_recomputes_damaged_results(tmp_path):
    args = (
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=r",
        "logger=none",
        "progress=false",
        "n_iterations=4",
        "seed=0,1,2",
    )
    run_app("tabular_ascent.py", *args)
    jobs = _jobs(_sweep(tmp_path, "r"))
    assert len(jobs) == 3
    for job in jobs:
        meta = storage.read_metadata(job)
        assert meta["result_files"] == ["history.parquet", "summary.parquet"]
        for name in meta["result_files"]:
            assert meta["result_digests"][name] == storage.digest(job / name)
    truncated, flipped, intact = jobs
    blob = (truncated / "history.parquet").read_bytes()
    (truncated / "history.parquet").write_bytes(blob[: len(blob) // 2])
    blob = bytearray((flipped / "summary.parquet").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, one byte changed
    (flipped / "summary.parquet").write_bytes(bytes(blob))
    assert not storage.is_finished(truncated) and not storage.is_finished(flipped)
    first_intact = storage.read_metadata(intact)["finished_at"]

    again = run_app("tabular_ascent.py", *args)
    assert "2 done, 1 skipped" in again.stdout, again.stdout
    assert "recomputing" in again.stdout
    for job in jobs:
        assert storage.is_finished(job)
        assert len(pd.read_parquet(job / "history.parquet")) == 4
    assert storage.read_metadata(intact)["finished_at"] == first_intact
    third = run_app("tabular_ascent.py", *args)
    assert "0 done, 3 skipped" in third.stdout, third.stdout


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_resume_recomputes_jobs_whose_numbers_came_from_older_code(tmp_path, launcher):
    # A code change that gives the same config other bits bumps its app's NUMERICS stamp;
    # a finished job recorded under another stamp (here: none, as before stamps existed)
    # is recomputed, never mixed into the resumed sweep, under every launcher (batched's
    # skip-before-composing path included). Jobs with the current stamp are skipped.
    from pglab_jobs.metadata import NUMERICS

    args = (
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=n",
        "logger=none",
        "progress=false",
        "budget.iterations=3",
        "n_trajectories=2",
        "seed=0,1",
        f"hydra/launcher={launcher}",
    )
    run_app("cartpole.py", *args)
    stale, current = _jobs(_sweep(tmp_path, "n", "cartpole"))
    assert storage.read_metadata(current)["numerics"] == NUMERICS["cartpole"]
    meta = storage.read_metadata(stale)
    del meta["numerics"]
    (stale / schema.METADATA_FILE).write_text(json.dumps(meta))
    kept = storage.read_metadata(current)["finished_at"]

    again = run_app("cartpole.py", *args)
    assert "1 done, 1 skipped" in again.stdout, again.stdout
    assert "its numbers come from older code" in again.stdout + again.stderr
    assert storage.read_metadata(stale)["numerics"] == NUMERICS["cartpole"]
    assert storage.read_metadata(current)["finished_at"] == kept
    assert storage.is_finished(stale)


def test_legacy_metadata_without_digests_still_detects_truncation(tmp_path):
    """Sweeps finished before digests were recorded: presence plus parquet's end marker."""
    args = ("-m", f"paths.output_dir={tmp_path}", "sweep_name=l", "logger=none")
    args += ("progress=false", "n_iterations=4", "seed=0,1")
    run_app("tabular_ascent.py", *args)
    jobs = _jobs(_sweep(tmp_path, "l"))
    for job in jobs:
        meta = storage.read_metadata(job)
        del meta["result_digests"]
        storage.write_json(meta, job / schema.METADATA_FILE)
    assert all(storage.is_finished(job) for job in jobs)
    blob = (jobs[0] / "history.parquet").read_bytes()
    (jobs[0] / "history.parquet").write_bytes(blob[:-100])
    again = run_app("tabular_ascent.py", *args)
    assert "1 done, 1 skipped" in again.stdout, again.stdout


# -- 4. sweep lock ----------------------------------------------------------------------------


def _popen(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, APP, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        **kwargs,
    )


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"sweep ended before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_sweep_into_the_same_directory_refuses_or_waits(tmp_path):
    """A second identical sweep refuses in one line naming the directory and the holder;
    with lock_wait_s it waits, then finds every job done. The first sweep's live W&B runs
    stay where they are and its summary counts only its own jobs."""
    args = [
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=lock",
        "progress=false",
        "n_iterations=2500",
        "seed=0,1",
    ]
    sweep = _sweep(tmp_path, "lock")
    first = _popen(args)
    try:
        _wait_for(lambda: _status(sweep / "n_iterations=2500,seed=0") == "running", first, "job 0")
        second = subprocess.run(
            [sys.executable, APP, *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert second.returncode != 0
        refusal = [ln for ln in second.stderr.splitlines() if "in use by another sweep" in ln]
        assert len(refusal) == 1, second.stderr[-3000:]
        assert str(sweep) in refusal[0] and f"pid {first.pid}" in refusal[0]
        assert "Traceback" not in second.stderr
        waiter = _popen([*args, "hydra.callbacks.sweep_summary.lock_wait_s=600"])
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err[-3000:]
    assert "2 done, 0 skipped, 0 failed" in out, out
    assert not list(sweep.glob("*/wandb/superseded")), "the first sweep's W&B runs were moved"
    for job in _jobs(sweep):
        assert len(list(job.glob("wandb/offline-run-*"))) == 1
    w_out, w_err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, w_err[-3000:]
    assert "waiting up to 600 s for sweep directory" in w_err
    assert "0 done, 2 skipped, 0 failed" in w_out, w_out


# -- 5. umask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_result_files_honour_the_umask(tmp_path, umask):
    proc = subprocess.run(
        [sys.executable, APP, f"paths.output_dir={tmp_path}", "logger=none", "n_iterations=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = [p.parent for p in tmp_path.rglob(schema.METADATA_FILE)]
    files = ["history.parquet", "summary.parquet", schema.METADATA_FILE, schema.JOB_STATUS_FILE]
    for name in files:
        assert (job / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_reading_the_umask_does_not_change_it():
    before = os.umask(0o027)
    try:
        assert storage.current_umask() == 0o027
        assert storage.current_umask() == 0o027
    finally:
        os.umask(before)


# -- 6. disk full -----------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_while_recording_the_failure_ends_jobs_failed_and_the_sweep_goes_on(tmp_path):
    """Lower the sweep's file-size limit while its first job runs: its results, then its
    failure metadata, cannot be written (EFBIG, as ENOSPC on a full disk); later jobs cannot
    even write 'running'. Every job must still end 'failed' and the sweep must summarise."""
    sweep = _sweep(tmp_path, "full")
    proc = _popen(
        [
            "-m",
            f"paths.output_dir={tmp_path}",
            "sweep_name=full",
            "logger=none",
            "progress=false",
            "hydra.output_subdir=null",  # Hydra's own per-job copies are not ours to guard
            "hydra/job_logging=stdout",  # the job log goes to the terminal, not a file
            "n_iterations=3000,5,6",
        ],
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )
    first = sweep / "n_iterations=3000"
    try:
        _wait_for(lambda: _status(first) == "running", proc, "the first job")
        assert storage.read_metadata(first)["status"] == "running"
        limit = 1024  # bytes: the statuses fit, metadata.json and the results do not
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "0 done, 0 skipped, 3 failed" in out, out + err
    jobs = sorted(sweep.glob("n_iterations=*"))
    assert len(jobs) == 3
    for job in jobs:
        assert _status(job) == "failed", job
        meta = storage.read_metadata(job)
        assert meta["status"] == "failed" and "File too large" in meta["error"], meta
        assert meta.get("incomplete_metadata") is True  # the short form fitted
        assert not storage.is_finished(job)
    assert out.count("could not write metadata.json") >= 3


# -- 7. W&B unreachable: decided once per sweep -------------------------------------------------


def _online_sweep(tmp_path: Path, name: str, base_url: str, *extra: str):
    env = {**os.environ, "WANDB_BASE_URL": base_url, "WANDB_API_KEY": "0" * 40}
    env.pop("WANDB_MODE", None)
    start = time.perf_counter()
    proc = run_app(
        "tabular_ascent.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        f"sweep_name={name}",
        "logger.mode=online",
        "progress=false",
        "n_iterations=3",
        "seed=0,1,2",
        *extra,
        env=env,
    )
    return proc, time.perf_counter() - start


def test_unreachable_wandb_is_decided_once_and_every_job_logs_offline(tmp_path):
    proc, _ = _online_sweep(tmp_path, "u", f"http://127.0.0.1:{closed_port()}")
    sweep = _sweep(tmp_path, "u")
    decision = json.loads((sweep / ".pglab-wandb.json").read_text())
    assert decision["online"] is False and "unreachable" in decision["reason"]
    assert proc.stderr.count("W&B is unreachable") == 3  # one warning per job, no more
    jobs = _jobs(sweep)
    assert len(jobs) == 3 and "3 done" in proc.stdout
    for job in jobs:
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1
        assert storage.read_metadata(job)["wall_time_s"] < 30  # never the init timeout
    assert f"python -m pglab_jobs.sync {sweep}" in proc.stdout
    # that command finds exactly this sweep's three offline runs
    assert _runs_to_sync(sweep) == 3


@pytest.mark.slow
def test_wandb_that_hangs_costs_one_timeout_per_sweep_not_per_job(tmp_path):
    """The server accepts connections and never answers: the first job waits its
    init_timeout, records the verdict, and the later jobs go offline at once."""
    timeout = 8
    with silent_server() as url:
        proc, _ = _online_sweep(tmp_path, "h", url, f"logger.init_timeout={timeout}")
    sweep = _sweep(tmp_path, "h")
    decision = json.loads((sweep / ".pglab-wandb.json").read_text())
    assert decision["online"] is False and "online start failed" in decision["reason"]
    walls = [
        storage.read_metadata(sweep / f"n_iterations=3,seed={s}")["wall_time_s"] for s in range(3)
    ]
    assert walls[0] >= timeout
    assert walls[1] < timeout and walls[2] < timeout, walls
    for job in _jobs(sweep):
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1


# -- 8. fast skip: nothing slow before the skip decision -----------------------------------------


def test_skip_decision_collects_no_versions_or_git_state(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from pglab_jobs import job, metadata

    args = ("-m", f"paths.output_dir={tmp_path}", "sweep_name=s", "logger=none")
    run_app("tabular_ascent.py", *args, "progress=false", "n_iterations=3", "seed=0")
    (done,) = _jobs(_sweep(tmp_path, "s"))

    def forbidden(*a, **k):
        raise AssertionError("collected before the skip decision")

    monkeypatch.setattr(metadata, "_package_versions", forbidden)
    monkeypatch.setattr(metadata, "_git_state", forbidden)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "tabular_ascent",
            overrides=[f"paths.output_dir={tmp_path}", "logger=none", "progress=false"]
            + ["n_iterations=3", "seed=0", "sweep_name=s"],
            return_hydra_config=True,
        )
    cfg.hydra.runtime.output_dir = str(done)
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.sweep.dir = str(done.parent)
    cfg.hydra.job.override_dirname = done.name
    HydraConfig.instance().set_config(cfg)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # as Hydra passes it

    def body(ctx):
        raise AssertionError("a finished job ran again")

    assert job.run_job(task, "tabular_ascent", body) == "skipped"


# -- 9. safe directory names ---------------------------------------------------------------------


def test_job_dirname_keeps_ordinary_names_and_flattens_paths():
    from pglab_jobs import job_dirname

    assert job_dirname("n_iterations=3,seed=0") == "n_iterations=3,seed=0"
    assert job_dirname("mdp.path=/x/y.yaml,seed=1") == "mdp.path=%2Fx%2Fy.yaml,seed=1"
    assert job_dirname("") == ""
    long = "x=" + "a" * 400
    assert len(job_dirname(long).encode()) <= 200
    assert job_dirname(long) != job_dirname(long + "b")


@pytest.mark.slow
def test_path_override_gives_one_directory_per_job_and_a_working_sync_command(tmp_path):
    mdp = REPO / "examples" / "mdps" / "two_state.yaml"
    args = (
        "-m",
        f"paths.output_dir={tmp_path}",
        "sweep_name=p",
        "progress=false",
        "n_iterations=3",
        "mdp=file",
        f"mdp.path={mdp}",
        "seed=0,1",
    )
    proc = run_app("tabular_ascent.py", *args)
    sweep = _sweep(tmp_path, "p")
    jobs = _jobs(sweep)
    assert len(jobs) == 2, sorted(str(p) for p in sweep.rglob(schema.METADATA_FILE))
    assert all("%2F" in job.name and job.parent == sweep for job in jobs)
    # the printed upload command takes the sweep as one argument (no shell glob, so a
    # path inside an override cannot break it) and finds every offline run
    assert f"python -m pglab_jobs.sync {sweep}" in proc.stdout
    assert _runs_to_sync(sweep) == 2
    again = run_app("tabular_ascent.py", *args)
    assert "0 done, 2 skipped" in again.stdout, again.stdout


@pytest.mark.slow
def test_sweep_with_nested_job_directories_from_before_resumes(tmp_path):
    """Sweeps run before the safe names nested path overrides; their jobs are still found."""
    mdp = REPO / "examples" / "mdps" / "two_state.yaml"
    args = ("-m", f"paths.output_dir={tmp_path}", "sweep_name=n", "logger=none")
    args += ("progress=false", "n_iterations=3", "mdp=file", f"mdp.path={mdp}", "seed=0,1")
    run_app("tabular_ascent.py", *args, "hydra.sweep.subdir=${hydra.job.override_dirname}")
    sweep = _sweep(tmp_path, "n")
    assert not _jobs(sweep) and len(list(sweep.rglob(schema.METADATA_FILE))) == 2  # nested
    again = run_app("tabular_ascent.py", *args)
    assert "0 done, 2 skipped" in again.stdout, again.stdout


# -- 10. progress ----------------------------------------------------------------------------------


def test_progress_without_a_tty_logs_every_tenth_and_every_few_seconds(monkeypatch, caplog):
    from pglab_jobs import progress

    caplog.set_level("INFO", logger="pglab.progress")
    with Progress(1000, "env steps", bar=False) as bar:
        for _ in range(35):
            bar.update(10)  # 35 % in 10-step updates: lines at 10, 20, 30 %
    assert [r.getMessage().split()[2] for r in caplog.records] == [
        "100/1000",
        "200/1000",
        "300/1000",
    ]
    caplog.clear()
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.05)
    with Progress(10_000, "env steps", bar=False) as bar:
        bar.update(1)
        time.sleep(0.1)
        bar.update(1)  # far below 10 %, but 0.1 s passed
    assert [r.getMessage().split()[2] for r in caplog.records] == ["2/10000"]


def _run_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run the app with stderr on a pseudo-terminal (as a user's shell would), stdout piped."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24x100
    proc = subprocess.Popen(
        [sys.executable, APP, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read()
    proc.wait(timeout=600)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_progress_lines_closing_lines_and_report_command(tmp_path, launcher):
    code, out, terminal = _run_on_a_terminal(
        [
            "-m",
            f"hydra/launcher={launcher}",
            f"paths.output_dir={tmp_path}",
            "sweep_name=pr",
            "logger=none",
            "n_iterations=400",
            "seed=0,1,2",
        ]
    )
    assert code == 0, out[-3000:] + terminal[-3000:]
    sweep = _sweep(tmp_path, "pr")
    lines = re.findall(r"(\d) of 3 jobs done \((\d) failed\), ETA (\d\d:\d\d)", out)
    assert sorted(int(k) for k, _, _ in lines) == [1, 2, 3], out
    assert all(f == "0" for _, f, _ in lines)
    closing = [ln for ln in out.splitlines() if "tabular_ascent complete in" in ln]
    assert len(closing) == 3 and all("final_return=" in ln for ln in closing), out
    report = f"python -m analysis.report {sweep} --out {sweep / 'report'}"
    assert report in out
    if launcher == "joblib":
        # Workers share the terminal: they log lines, never draw bars over each other.
        assert "it/s" not in terminal and "%|" not in terminal, terminal[-2000:]
        assert "400/400 (100%)" in out
    else:
        assert "it/s" in terminal  # one job at a time: a bar on the terminal


def _runs_to_sync(sweep: Path) -> int:
    """How many offline runs ``python -m pglab_jobs.sync SWEEP`` would upload (dry run)."""
    dry = subprocess.run(
        [sys.executable, "-m", "pglab_jobs.sync", str(sweep), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    return sum("offline-run-" in line for line in dry.stdout.splitlines())


def test_batch_eta_extrapolates_from_the_slowest_runs_share():
    assert batching.batch_eta(10.0, 0.25) == "00:30"  # 10 s for a quarter: 30 s left
    assert batching.batch_eta(90.0, 0.5) == "01:30"
    assert batching.batch_eta(42.0, 1.0) == "00:00"
    assert batching.batch_eta(3.0, 0.0) == "--:--"  # nothing to extrapolate from yet
    # with the batch's vector steps and the last interval's pace: 3000 steps for a quarter,
    # 9000 more at 2 ms a step
    assert batching.batch_eta(10.0, 0.25, 3000, 0.002) == "00:18"


def test_the_batch_line_takes_the_pace_of_its_last_interval(caplog):
    caplog.set_level("INFO", logger=batching.log.name)
    report = batching._report("batch 1/1")
    first = lockstep.Progress(2, 0, 1000, 1000, 10.0, budget_used=0.25)
    # the next 1000 vector steps took 2 s, not 10: 2000 steps for a half, 2000 more at 2 ms
    second = lockstep.Progress(2, 1, 2000, 2000, 12.0, budget_used=0.5)
    report(first)
    report(second)
    etas = re.findall(r"batch ETA (\S+)", caplog.text)
    assert etas == ["00:30", "00:04"]


@pytest.mark.slow
def test_a_lock_step_sweep_leaves_the_eta_to_the_batch_lines(tmp_path):
    # Lock-step jobs end in bursts, so a job-rate ETA would be wild: the job lines point
    # to the batch lines, whose ETA follows the batch's slowest run.
    proc = run_app(
        "tabular_ascent.py",
        "-m",
        "hydra/launcher=batched",
        "hydra.launcher.n_jobs=1",
        f"paths.output_dir={tmp_path}",
        "sweep_name=eta",
        "logger=none",
        "progress=false",
        "n_iterations=50",
        "seed=0,1,2",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = re.findall(r"(\d) of 3 jobs done \(0 failed\), ETA ([^\n]+)", out)
    assert sorted(lines) == [
        ("1", "in the batch lines"),
        ("2", "in the batch lines"),
        ("3", "00:00"),
    ]
    assert re.search(r"batch 1/1: 3 of 3 runs finished, 150 iterations, .*, batch ETA 00:00", out)
    assert "lockstep" in os.listdir(_sweep(tmp_path, "eta") / sweep_progress.PROGRESS_DIR)
