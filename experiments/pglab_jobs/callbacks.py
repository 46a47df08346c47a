"""Hydra callbacks, run by the process that launches a multirun: the sweep lock and summary.

:class:`SweepSummary` (conf/hydra/default.yaml) does three things around every multirun:

* **Sweep lock.** At the start it takes an exclusive ``flock`` on
  ``<sweep_dir>/.pglab-sweep.lock`` and writes the holder into it (pid, host, start time,
  number of jobs). A second sweep launched into the same directory while the first runs
  refuses with one line naming the directory and the holder (or, with
  ``hydra.callbacks.sweep_summary.lock_wait_s=<seconds>``, waits that long first). The lock
  belongs to the launching process only: the sweep's own jobs, in this process (basic
  launcher) or in others (joblib workers, submitit/SLURM jobs), never take it, so they are
  never blocked by it. The kernel drops it when the launching process ends, however it ends;
  on network file systems it relies on the client's ``flock`` (NFSv4 maps it to a byte-range
  lock that all clients see). The file stays behind, unlocked, for the next sweep.
* **Fresh per-run state**: the ended-job records of :mod:`pglab_jobs.progress` and the
  sweep's W&B reachability verdict (:mod:`pglab_jobs.tracking`) are cleared.
* **Summary** at the end: ``multirun <dir>: N done, N diverged, N skipped, N failed``, the
  ``wandb sync`` command, the command that builds the report, and a non-zero exit when a
  job failed or did not finish.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pglab.schema import JOB_STATUS_FILE
from pglab_jobs.progress import PROGRESS_DIR, SWEEP_LOCK_FILE, ended_jobs
from pglab_jobs.tracking import DECISION_FILE


def sweep_counts(sweep_dir: Path, since: str | None = None) -> dict[str, int]:
    """Count job statuses under ``sweep_dir`` (only those stamped at or after ``since``)."""
    counts = {"done": 0, "diverged": 0, "skipped": 0, "failed": 0, "unfinished": 0}
    for status_file in sweep_dir.rglob(JOB_STATUS_FILE):
        try:
            record = json.loads(status_file.read_text())
        except (OSError, ValueError):
            counts["unfinished"] += 1
            continue
        if since is not None and record.get("at", "") < since:
            continue
        status = record.get("status")
        key = {"complete": "done", "running": "unfinished"}.get(status, status)
        counts[key if key in counts else "unfinished"] += 1
    return counts


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper will launch for ``config``; ``None`` if unknown."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.utils import get_class

        sweeper = get_class(str(config.hydra.sweeper.get("_target_", "")))
        if not issubclass(sweeper, BasicSweeper):  # its grid is the basic sweeper's
            return None
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = config.hydra.sweeper.get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()]
        arguments += list(config.hydra.overrides.task)
        overrides = OverridesParser.create().parse_overrides(arguments)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # a sweep this cannot expand still runs; only "of n" and ETA go
        return None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class SweepLockError(SystemExit):
    """Another sweep holds this sweep directory."""


def acquire_sweep_lock(sweep_dir: Path, wait_s: float = 0.0) -> int:
    """Lock ``sweep_dir`` for this process; return the open descriptor that holds it.

    Raises :class:`SweepLockError` (exit status 1, one line) when another process holds it
    after ``wait_s`` seconds.
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SWEEP_LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + max(wait_s, 0.0)
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise SweepLockError(
                f"sweep directory {sweep_dir} is in use by another sweep ({_holder(path)}); "
                "wait for it to finish or choose another sweep_name"
            )
        if not announced:
            print(
                f"waiting up to {wait_s:g} s for sweep directory {sweep_dir} ({_holder(path)})",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        time.sleep(0.5)


def _write_state(fd: int, state: dict[str, Any]) -> None:
    data = json.dumps(state, sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _clear_run_state(sweep_dir: Path) -> None:
    progress = sweep_dir / PROGRESS_DIR
    if progress.is_dir():
        for entry in os.scandir(progress):
            try:
                os.unlink(entry.path)
            except OSError:
                pass
    try:
        (sweep_dir / DECISION_FILE).unlink()
    except FileNotFoundError:
        pass


class SweepSummary(Callback):
    """Sweep lock at the start, summary at the end (see module docstring).

    Args:
        lock_wait_s: how long a second sweep into a locked directory waits before refusing
            (default 0: refuse at once).
    """

    def __init__(self, lock_wait_s: float = 0.0) -> None:
        self.started: str | None = None
        self.lock_wait_s = float(lock_wait_s)
        self.lock_fd: int | None = None
        self.state: dict[str, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self.lock_fd = acquire_sweep_lock(sweep_dir, self.lock_wait_s)
        self.started = datetime.now(UTC).isoformat(timespec="microseconds")
        _clear_run_state(sweep_dir)
        self.state = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "n_jobs": count_jobs(config),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
        }
        try:
            _write_state(self.lock_fd, self.state)
        except OSError:  # the lock holds without its description (disk full)
            pass

    def _release(self) -> None:
        if self.lock_fd is None:
            return
        try:
            _write_state(self.lock_fd, {**self.state, "ended": True})
        except OSError:
            pass
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        os.close(self.lock_fd)
        self.lock_fd = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            counts = sweep_counts(sweep_dir, since=self.started)
            # A job that could not even record its status (disk full) is not lost from view.
            n_jobs = self.state.get("n_jobs")
            if isinstance(n_jobs, int):
                ended = max(sum(counts.values()), sum(ended_jobs(sweep_dir).values()))
                counts["unfinished"] += max(0, n_jobs - ended)
        finally:
            self._release()
        always = ("done", "skipped", "failed")
        line = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in always)
        print(f"multirun {sweep_dir}: {line}", flush=True)
        quoted = shlex.quote(str(sweep_dir))
        if counts["done"] + counts["diverged"] and config.get("logger", {}).get("enabled"):
            print(
                f"upload every offline W&B run of this sweep: python -m pglab_jobs.sync {quoted}",
                flush=True,
            )
        if counts["done"] + counts["diverged"] + counts["skipped"]:
            report = shlex.quote(str(sweep_dir / "report"))
            print(
                f"build the report: python -m analysis.report {quoted} --out {report}",
                flush=True,
            )
        bad = counts["failed"] + counts["unfinished"]
        if bad:
            raise SystemExit(
                f"{bad} job(s) failed or did not finish; see their metadata.json and logs "
                f"under {sweep_dir}"
            )
