"""Progress: a bar or log lines for one job's loop, and the sweep's "k of n jobs" line.

One job: on a terminal, in a process that runs jobs one at a time (a single run, the basic
launcher), :class:`Progress` is a tqdm bar on stderr. Elsewhere (no TTY, ``progress=false``,
a joblib or submitit worker, whose bars would overwrite each other's) it logs one line at
every 10 % of ``total`` or every :data:`LINE_EVERY_S` seconds, whichever comes first, and at
the end; the lines land in the job's log file too.

A sweep: the launching process records when the sweep started and how many jobs it has in
``<sweep_dir>/.pglab-sweep.lock`` (:mod:`pglab_jobs.callbacks`); every job, in whichever
process it runs, records its end as an empty file ``<sweep_dir>/.pglab-progress/<status>~<job>``
and logs :func:`sweep_line`: ``k of n jobs done (f failed), ETA mm:ss`` (under the batched
launcher the ETA is in its batch lines). Empty files (no
appends to one shared file) keep this safe on network file systems and across SLURM nodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("pglab.progress")

#: Held (flock) by the launching process for the whole sweep; holds its JSON description.
SWEEP_LOCK_FILE = ".pglab-sweep.lock"
#: One empty file per ended job of the current sweep run: ``<status>~<job key>``.
PROGRESS_DIR = ".pglab-progress"
#: In :data:`PROGRESS_DIR`: the jobs of this sweep run train in lock-step batches (written
#: by the batched launcher; not a job: it has no ``~``).
LOCKSTEP_MARK = "lockstep"
#: A line-mode progress report at least this often (seconds).
LINE_EVERY_S = 10.0


class Progress:
    """``with Progress(total, "env steps") as bar: bar.update(n, postfix)``.

    Args:
        total: units of work (iterations, env steps, ...).
        desc: what the job is, shown first on every line.
        enabled: ``False`` (``progress=false``) never draws a bar; lines are still logged.
        bar: ``False`` forces line mode (a worker process sharing a terminal with others).
        lines: ``False`` logs no lines either (a job inside a batch, whose launcher reports
            the batch's progress instead).
    """

    def __init__(
        self, total: int, desc: str, enabled: bool = True, bar: bool = True, lines: bool = True
    ) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.count = 0
        self.start = time.perf_counter()
        self.next_tenth = 1  # the next multiple of 10 % to report
        self.next_time = self.start + LINE_EVERY_S
        self.postfix = ""
        self.lines = lines
        self.bar = (
            tqdm(total=self.total, desc=desc, leave=False)
            if enabled and bar and sys.stderr.isatty()
            else None
        )

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        if not self.lines:
            return
        tenths = 10 * self.count // self.total  # integers: no drift at 30 %
        now = time.perf_counter()
        if tenths >= self.next_tenth or now >= self.next_time or self.count == self.total:
            log.info(
                "%s %d/%d (%.0f%%) %.1fs %s",
                self.desc,
                self.count,
                self.total,
                100 * min(self.count / self.total, 1.0),
                now - self.start,
                self.postfix,
            )
            self.next_tenth = max(self.next_tenth, tenths + 1)
            self.next_time = now + LINE_EVERY_S

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_sweep_state(sweep_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The description the launching process wrote into the sweep lock, if readable."""
    try:
        state = json.loads((Path(sweep_dir) / SWEEP_LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def job_key(run_dir: str | os.PathLike, job_num: int | None) -> str:
    """A file-name-safe key for one job of a sweep: its number, and a digest of its directory."""
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]
    return f"{job_num}-{digest}" if job_num is not None else digest


def record_job_end(sweep_dir: str | os.PathLike, key: str, status: str) -> bool:
    """Record that the job ``key`` (:func:`job_key`) ended with ``status``; ``False`` if it could not."""
    folder = Path(sweep_dir) / PROGRESS_DIR
    try:
        folder.mkdir(exist_ok=True)
        (folder / f"{status}~{key}").touch()
    except OSError:
        return False
    return True


def mark_lockstep(sweep_dir: str | os.PathLike) -> None:
    """Note that this sweep run's jobs train in lock-step batches (:func:`sweep_line`)."""
    folder = Path(sweep_dir) / PROGRESS_DIR
    try:
        folder.mkdir(exist_ok=True)
        (folder / LOCKSTEP_MARK).touch()
    except OSError:  # the sweep line keeps its job-rate ETA
        pass


def ended_jobs(sweep_dir: str | os.PathLike) -> dict[str, int]:
    """Jobs of the current sweep run that ended, by status."""
    counts: dict[str, int] = {}
    try:
        names = os.listdir(Path(sweep_dir) / PROGRESS_DIR)
    except OSError:
        return counts
    for name in names:
        if "~" not in name:  # a mark, not a job
            continue
        status = name.split("~", 1)[0]
        counts[status] = counts.get(status, 0) + 1
    return counts


def clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def sweep_line(sweep_dir: str | os.PathLike) -> str | None:
    """``k of n jobs done (f failed), ETA mm:ss`` for the running sweep, or ``None``.

    The ETA extrapolates the sweep's throughput over the jobs that ran (skipped jobs take
    no time and would make it optimistic), so it accounts for parallel workers. Jobs that
    train in lock-step batches (:data:`LOCKSTEP_MARK`) end in bursts, most of a batch's
    near its end, so a job rate says nothing there (it gave "ETA 2:15:44" for a sweep
    with two minutes left): the line then points to the batch lines, whose ETA follows
    the batch's slowest run.
    """
    state = read_sweep_state(sweep_dir)
    if not state or state.get("ended") or not state.get("started"):
        return None
    counts = ended_jobs(sweep_dir)
    done = sum(counts.values())
    failed = counts.get("failed", 0)
    skipped = counts.get("skipped", 0)
    ran = done - skipped
    n_jobs = state.get("n_jobs")
    detail = f"{failed} failed" + (f", {skipped} skipped" if skipped else "")
    if not isinstance(n_jobs, int) or n_jobs < done:
        return f"{done} jobs done ({detail})"
    started = datetime.fromisoformat(state["started"])
    elapsed = (datetime.now(UTC) - started).total_seconds()
    if done == n_jobs:
        eta = clock(0)
    elif (Path(sweep_dir) / PROGRESS_DIR / LOCKSTEP_MARK).exists():
        eta = "in the batch lines"
    elif ran > 0:
        eta = clock(elapsed / ran * (n_jobs - done))
    else:
        eta = "--:--"
    return f"{done} of {n_jobs} jobs done ({detail}), ETA {eta}"
