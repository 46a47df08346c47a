"""The life of one job: config check, resume check, metadata, W&B, atomic results, status.

Every experiment's ``main`` is ``run_job(cfg, "<experiment>", body, validate=...)``, where
``body`` takes a :class:`JobContext` and returns a :class:`JobOutput`. The order is fixed:

1. check the config (``validate(cfg)``, ``threads``) and resolve it; compute the job hash
   (config without :data:`pglab.schema.NON_SEMANTIC_KEYS`). Nothing is written before this;
   a config error ends the job as ``failed`` with one log line and writes only its
   ``job_status.json``;
2. in a multirun with ``resume=true``, skip the job if a finished job with the same hash
   already sits in the sweep directory *and its result files are intact* (sizes and sha256
   recorded in its metadata; a damaged job is recomputed). This comes before anything slow
   (package versions, git), so re-running a finished sweep costs milliseconds per job;
3. write ``metadata.json`` with status ``running``; start W&B (offline by default);
4. run ``body``; write every result table as parquet (atomic), *then* log to W&B;
5. rewrite ``metadata.json`` with status ``complete`` / ``diverged`` (or ``failed`` and the
   error), the result file names (``result_files``) and their digests
   (``result_digests``: ``{name: {"sha256": hex, "bytes": size}}``); finish W&B; log one
   closing line with the job's key numbers.

A job is finished only once step 5 has renamed ``metadata.json`` into place, so a job
killed at any point is re-run by the next attempt. Any failure, including a full disk while
the failure itself is being recorded, ends the job ``failed`` as far as anything can still
be written, and in a multirun the sweep goes on (the end-of-sweep summary counts it). In a
single run the error is raised.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pglab import checks
from pglab.schema import JOB_STATUS_FILE, METADATA_FILE
from pglab_jobs import job_dirname, naming, storage
from pglab_jobs import progress as sweep_progress
from pglab_jobs.metadata import base_metadata, compose_key, job_hashes, numerics_problem
from pglab_jobs.progress import Progress
from pglab_jobs.tracking import DECISION_FILE, Tracker

log = logging.getLogger("pglab")

#: Summary entries shown on a job's closing line, in this order, when present.
KEY_NUMBERS = (
    "final_return",
    "collapsed",
    "auc",
    "final_suboptimality_stationary",
    "size_overall",
    "decided_fraction",
    "env_steps",
    "iterations",
)


@dataclass
class JobContext:
    cfg: DictConfig
    config: dict[str, Any]
    run_dir: Path
    tracker: Tracker
    show_progress: bool = True
    settings: Any = None  # the app's typed, validated config (what ``validate`` returned)
    show_bar: bool = True  # False in worker processes that share a terminal (line mode)
    show_lines: bool = True  # False inside a batch: the batched launcher reports progress

    def progress(self, total: int, desc: str) -> Progress:
        return Progress(
            total, desc, enabled=self.show_progress, bar=self.show_bar, lines=self.show_lines
        )


@dataclass
class JobOutput:
    tables: dict[str, pd.DataFrame]  # file stem -> table, written as <run_dir>/<stem>.parquet
    summary: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"  # or "diverged": finished, results saved, but the run blew up
    wandb_tables: tuple[str, ...] = ()  # which tables to also log to W&B as tables


@dataclass
class _Facts:
    run_dir: Path
    multirun: bool
    sweep_dir: Path | None
    name: str
    overrides: list[str]
    job_num: int | None
    worker: bool  # runs in a process other than the one that owns the terminal


def _hydra_facts() -> _Facts:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = str(hc.launcher.get("_target_", "")) if hc.get("launcher") else ""
    num = hc.job.get("num")
    return _Facts(
        run_dir=Path(hc.runtime.output_dir),
        multirun=multirun,
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
        name=job_dirname(hc.job.override_dirname) or "default",
        overrides=list(hc.overrides.task),
        job_num=int(num) if isinstance(num, int) else None,
        worker=multirun and not launcher.endswith("BasicLauncher"),
    )


def job_dirs(sweep_dir: Path) -> Iterator[Path]:
    """Job directories under ``sweep_dir``: those holding ``metadata.json``.

    Walks like ``rglob`` (job directories of old sweeps may be nested) but never enters a
    job directory, ``wandb`` or a hidden directory, where the bulk of a sweep's files lie.
    """
    stack = [(sweep_dir, True)]
    while stack:
        folder, is_root = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        if any(entry.name == METADATA_FILE for entry in entries):
            yield Path(folder)
            if not is_root:
                continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "wandb":
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), False))
            except OSError:
                continue


def reusable(job_dir: Path, meta: dict[str, Any]) -> bool:
    """Whether resume may take the job in ``job_dir`` (metadata ``meta``) as done: finished,
    intact, and computed by code with the current numerics."""
    return numerics_problem(meta) is None and storage.is_finished(job_dir, meta)


def _finished_twin(sweep_dir: Path, run_dir: Path, hashes: tuple[str, ...]) -> Path | None:
    """A finished, intact job with one of ``hashes`` in the sweep: this job's own directory
    first (a re-run sweep), then any other (same config under other overrides)."""
    meta = storage.read_metadata(run_dir)
    if meta and meta.get("job_hash") in hashes:
        problem = storage.result_problem(run_dir, meta) or numerics_problem(meta)
        if problem is None:
            return run_dir
        if meta.get("status") in storage.FINISHED_STATUSES:
            log.warning("recomputing %s: %s", run_dir.name, problem)
    for job_dir in job_dirs(sweep_dir):
        if job_dir == run_dir:
            continue
        meta = storage.read_metadata(job_dir)
        if meta and meta.get("job_hash") in hashes and reusable(job_dir, meta):
            return job_dir
    return None


def _set_aside_earlier_wandb_runs(run_dir: Path) -> None:
    """Move offline W&B runs of earlier attempts in ``run_dir`` to ``wandb/superseded/``.

    A job directory is re-used when a job is re-run (failed or killed before, or
    ``resume=false``); its earlier offline runs would otherwise be uploaded by the
    ``wandb sync <sweep>/*/wandb/offline-run-*`` command next to the current one.
    """
    earlier = sorted((run_dir / "wandb").glob("offline-run-*"))
    if earlier:
        superseded = run_dir / "wandb" / "superseded"
        superseded.mkdir(parents=True, exist_ok=True)
        for path in earlier:
            path.rename(superseded / path.name)


def _compose_key(facts: _Facts) -> str | None:
    """This job's :func:`pglab_jobs.metadata.compose_key` (what a launcher can check for a
    finished job before composing its config)."""
    hc = HydraConfig.get()
    return compose_key(hc.runtime.config_sources, hc.job.config_name, facts.overrides)


def _record_compose_key(run_dir: Path) -> None:
    """A finished job found by its config hash gets the current compose key, if it differs
    (the config files changed without changing its config, or it predates the key)."""
    meta = storage.read_metadata(run_dir)
    key = _compose_key(_hydra_facts())
    if meta is not None and key is not None and meta.get("compose_key") != key:
        storage.write_json({**meta, "compose_key": key}, run_dir / METADATA_FILE)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _job_status(run_dir: Path, status: str, **extra: Any) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    record = {"status": status, "at": stamp, **extra}
    storage.write_json(record, run_dir / JOB_STATUS_FILE, durable=False)


def _best_effort(what: str, run_dir: Path, write: Callable[[], Any]) -> bool:
    """Run ``write``; if it fails (disk full, quota, ...) log one line and return False.

    Used while a failure is being recorded: nothing raised there may replace the job's own
    error or stop the sweep.
    """
    try:
        write()
    except Exception as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        log.error("could not write %s in %s: %s", what, run_dir, reason)
        return False
    return True


def _record_failure(run_dir: Path, meta: dict[str, Any] | None, error_text: str) -> None:
    """Write the failure as far as the disk allows; never raises an OS error."""
    if meta is not None:
        written = _best_effort(
            METADATA_FILE, run_dir, lambda: storage.write_json(meta, run_dir / METADATA_FILE)
        )
        if not written:  # room for a few hundred bytes, maybe: say at least that it failed
            small = {
                key: meta.get(key)
                for key in ("experiment", "job_hash", "run_dir", "started_at", "finished_at")
            }
            small.update(status="failed", error=error_text, incomplete_metadata=True)
            _best_effort(
                f"{METADATA_FILE} (short form)",
                run_dir,
                lambda: storage.write_json(small, run_dir / METADATA_FILE),
            )
    _best_effort(JOB_STATUS_FILE, run_dir, lambda: _job_status(run_dir, "failed", error=error_text))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def closing_line(
    experiment: str, status: str, wall_s: float, summary: dict[str, Any], run_dir: Path
) -> str:
    """``cartpole complete in 12.3s: final_return=187.2, collapsed=False -> <run_dir>``."""
    numbers = [
        f"{key}={_format(summary[key])}" for key in KEY_NUMBERS if summary.get(key) is not None
    ][:5]
    if not numbers:  # an app without the usual keys: its first few scalars
        scalars = [
            (k, v)
            for k, v in summary.items()
            if isinstance(v, int | float | bool) and k not in ("seed", "status")
        ]
        numbers = [f"{k}={_format(v)}" for k, v in scalars[:4]]
    shown = f": {', '.join(numbers)}" if numbers else ""
    return f"{experiment} {status} in {wall_s:.1f}s{shown} -> {run_dir}"


def _is_config_error(error: BaseException, checking: bool) -> bool:
    return isinstance(error, checks.ConfigError) or (
        checking and isinstance(error, OmegaConfBaseException)
    )


@dataclass
class OpenJob:
    """A job past its checks and set-up (steps 1-3), waiting for its body's output."""

    experiment: str
    facts: _Facts
    key: str
    meta: dict[str, Any]
    tracker: Tracker
    context: JobContext
    start: float  # perf_counter at the job's start


def _end_of_job(facts: _Facts, key: str, status: str) -> None:
    end_of_job(facts.sweep_dir, key, status)


def end_of_job(sweep_dir: Path | None, key: str, status: str) -> None:
    """Record a sweep job's end for the sweep's progress line, and log that line."""
    if sweep_dir is None:
        return
    sweep_progress.record_job_end(sweep_dir, key, status)
    line = sweep_progress.sweep_line(sweep_dir)
    if line:
        log.info("sweep %s: %s", sweep_dir.name, line)


def mark_skipped(run_dir: Path, sweep_dir: Path | None, key: str, **extra: Any) -> str:
    """A job found finished before: its status file says "skipped" (``extra``: e.g. the
    twin it is the same as), the sweep counts it; returns ``"skipped"``."""
    _best_effort(JOB_STATUS_FILE, run_dir, lambda: _job_status(run_dir, "skipped", **extra))
    end_of_job(sweep_dir, key, "skipped")
    return "skipped"


def mark_failed(run_dir: Path, sweep_dir: Path | None, key: str, error_text: str) -> str:
    """A job that was open when the process running it died (e.g. its SLURM job was
    cancelled): its metadata and status file say "failed" with ``error_text``, the sweep
    counts it; returns ``"failed"``. A re-run of the sweep does the job again."""
    meta = storage.read_metadata(run_dir)
    if meta is not None:
        meta.update(status="failed", error=error_text, finished_at=_now())
    _record_failure(run_dir, meta, error_text)
    end_of_job(sweep_dir, key, "failed")
    return "failed"


def _job_failed(
    error: BaseException,
    experiment: str,
    facts: _Facts,
    key: str,
    meta: dict[str, Any] | None,
    tracker: Tracker | None,
    checking: bool,
    start: float,
) -> str:
    """Record ``error`` as the job's end; raise it in a single run, return "failed" in a sweep."""
    run_dir = facts.run_dir
    error_text = f"{type(error).__name__}: {error}"
    config_error = _is_config_error(error, checking)
    if meta is not None:
        meta.update(
            status="failed",
            error=error_text,
            finished_at=_now(),
            wall_time_s=time.perf_counter() - start,
        )
    # A config error writes only the status: nothing else was written, and a
    # finished job's metadata from an earlier run is not overwritten.
    _record_failure(run_dir, meta, error_text)
    if tracker is not None:
        try:
            tracker.finish(exit_code=1)
        except Exception as finish_error:  # never hide the job's own error
            log.warning("W&B finish failed: %s", finish_error)
    if not facts.multirun or isinstance(error, KeyboardInterrupt | SystemExit):
        raise error
    # In a sweep, one failed job must not stop the others: log it, let the sweep go
    # on, and let the end-of-sweep summary (callbacks.SweepSummary) report it.
    if config_error:
        log.error("%s config error in %s: %s", experiment, facts.name, error)
    else:
        log.error("%s failed in %s", experiment, run_dir, exc_info=error)
    _end_of_job(facts, key, "failed")
    return "failed"


def open_job(
    cfg: DictConfig,
    experiment: str,
    *,
    validate: Callable[[DictConfig], Any] | None = None,
    job_type: str | None = None,
) -> OpenJob | str:
    """Steps 1-3 of the module docstring for the Hydra job now current.

    Returns the :class:`OpenJob` to run, or the job's final status when it ended here
    (``"skipped"``: a finished twin exists; ``"failed"``: a config error in a sweep).
    """
    start = time.perf_counter()
    started_at = _now()
    facts = _hydra_facts()
    run_dir = facts.run_dir
    sweep_dir = facts.sweep_dir
    key = sweep_progress.job_key(run_dir, facts.job_num)
    meta: dict[str, Any] | None = None
    tracker: Tracker | None = None
    checking = True
    try:
        settings = validate(cfg) if validate is not None else None
        threads = checks.positive_int("threads", cfg.get("threads", 1))
        config = OmegaConf.to_container(cfg, resolve=True)
        checking = False
        hashes = job_hashes(config)

        if facts.multirun and cfg.get("resume", True):
            twin = _finished_twin(sweep_dir, run_dir, hashes)
            if twin is not None:
                log.info("skip: job %s already finished in %s", hashes[0], twin)
                if twin == run_dir:  # so that the next re-run skips it before composing
                    _best_effort(METADATA_FILE, run_dir, lambda: _record_compose_key(run_dir))
                extra = {"same_as": str(twin)} if twin != run_dir else {}
                return mark_skipped(run_dir, sweep_dir, key, **extra)

        import torch  # not needed to skip a job

        torch.set_num_threads(threads)
        meta = base_metadata(experiment, config, facts.overrides, started_at=started_at)
        meta["sweep_name"] = cfg.get("sweep_name") if facts.multirun else None
        meta["run_dir"] = str(run_dir)
        meta["compose_key"] = _compose_key(facts)
        storage.write_json({**meta, "status": "running"}, run_dir / METADATA_FILE)
        _job_status(run_dir, "running")
        _set_aside_earlier_wandb_runs(run_dir)
        logger_cfg = cfg.get("logger") or {}
        tracker = Tracker(
            enabled=bool(logger_cfg.get("enabled", False)),
            mode=str(logger_cfg.get("mode", "offline")),
            project=str(logger_cfg.get("project", "pglab")),
            entity=logger_cfg.get("entity"),
            group=naming.sweep_group(meta["sweep_name"], sweep_dir),
            job_type=job_type or experiment,
            name=naming.run_name(experiment, config, facts.overrides),
            tags=naming.run_tags(experiment, list(logger_cfg.get("tags") or []), facts.overrides),
            config=naming.run_config(config, facts.name, facts.overrides),
            directory=run_dir,
            init_timeout=float(logger_cfg.get("init_timeout", 30)),
            decision_file=sweep_dir / DECISION_FILE if sweep_dir is not None else None,
            browse_dir=sweep_dir / "wandb" if sweep_dir is not None else None,
        )
        context = JobContext(
            cfg=cfg,
            config=config,
            run_dir=run_dir,
            tracker=tracker,
            show_progress=bool(cfg.get("progress", True)),
            settings=settings,
            show_bar=not facts.worker,
        )
    except BaseException as error:
        return _job_failed(error, experiment, facts, key, meta, tracker, checking, start)
    return OpenJob(experiment, facts, key, meta, tracker, context, start)


def close_job(job: OpenJob, output: JobOutput | BaseException) -> str:
    """Steps 4-5: write the body's ``output`` (or record the error it raised); the status."""
    if isinstance(output, BaseException):
        return _job_failed(
            output, job.experiment, job.facts, job.key, job.meta, job.tracker, False, job.start
        )
    run_dir, meta, tracker = job.facts.run_dir, job.meta, job.tracker
    try:
        # Writing results can fail too (disk full, a table pyarrow cannot store): that
        # must end as "failed" like an error in the body, never leave "running" behind.
        digests = {}
        for stem, table in output.tables.items():
            path = storage.write_parquet(table, run_dir / f"{stem}.parquet")
            digests[path.name] = storage.digest(path)
        for stem in output.wandb_tables:
            tracker.log_table(stem, output.tables[stem])
        tracker.summary({**output.summary, "status": output.status})
        meta.update(
            status=output.status,
            summary=output.summary,
            result_files=list(digests),
            result_digests=digests,
            finished_at=_now(),
            wall_time_s=time.perf_counter() - job.start,
        )
        storage.write_json(meta, run_dir / METADATA_FILE)
        # The job is finished and says so; a status file that cannot be written now (disk
        # full) leaves "running" there, which the end-of-sweep summary counts as unfinished.
        _best_effort(JOB_STATUS_FILE, run_dir, lambda: _job_status(run_dir, output.status))
    except BaseException as error:
        return _job_failed(
            error, job.experiment, job.facts, job.key, meta, tracker, False, job.start
        )

    tracker.attach_job(run_dir)  # the results travel with the W&B run
    sync = tracker.finish()
    wall = time.perf_counter() - job.start
    log.info(closing_line(job.experiment, output.status, wall, output.summary, run_dir))
    if sync:
        log.info("W&B offline run saved; to upload: %s", sync)
    _end_of_job(job.facts, job.key, output.status)
    return output.status


def run_job(
    cfg: DictConfig,
    experiment: str,
    body: Callable[[JobContext], JobOutput],
    *,
    validate: Callable[[DictConfig], Any] | None = None,
    job_type: str | None = None,
) -> str:
    """Run ``body`` as one pglab job; return its status (see module docstring).

    ``validate(cfg)`` checks the whole config before anything is written and returns the
    app's typed settings (``ctx.settings``); ``job_type`` labels the W&B run (default:
    ``experiment``; the gymnasium app passes the env, e.g. ``"acrobot"``).
    """
    job = open_job(cfg, experiment, validate=validate, job_type=job_type)
    if isinstance(job, str):
        return job
    try:
        output: JobOutput | BaseException = body(job.context)
    except BaseException as error:
        output = error
    return close_job(job, output)
