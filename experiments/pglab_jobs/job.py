"""The life of one job: resume check, metadata, W&B, atomic results, clean status.

Every experiment's ``main`` is ``run_job(cfg, "<experiment>", body)``, where ``body``
takes a :class:`JobContext` and returns a :class:`JobOutput`. The order is fixed:

1. resolve the config; compute the job hash (config without output/reporting keys);
2. in a multirun with ``resume=true``, skip the job if a finished job with the same hash
   already sits in the sweep directory;
3. write ``metadata.json`` with status ``running``; start W&B (offline by default);
4. run ``body``; write every result table as parquet (atomic), *then* log to W&B;
5. rewrite ``metadata.json`` with status ``complete`` / ``diverged`` (or ``failed`` and the
   error); finish W&B and print the ``wandb sync`` command.

A job is finished only once step 5 has renamed ``metadata.json`` into place, so a job
killed at any point is re-run by the next attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pglab_jobs import storage
from pglab_jobs.metadata import base_metadata
from pglab_jobs.progress import Progress
from pglab_jobs.tracking import Tracker

log = logging.getLogger("pglab")
JOB_STATUS_FILE = "job_status.json"


@dataclass
class JobContext:
    cfg: DictConfig
    config: dict[str, Any]
    run_dir: Path
    tracker: Tracker
    show_progress: bool = True
    settings: Any = None  # the app's typed, validated config (what ``validate`` returned)

    def progress(self, total: int, desc: str) -> Progress:
        return Progress(total, desc, enabled=self.show_progress)


@dataclass
class JobOutput:
    tables: dict[str, pd.DataFrame]  # file stem -> table, written as <run_dir>/<stem>.parquet
    summary: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"  # or "diverged": finished, results saved, but the run blew up
    wandb_tables: tuple[str, ...] = ()  # which tables to also log to W&B as tables


def _hydra_facts() -> tuple[Path, bool, str | None, str, list[str]]:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_dir = Path(hc.sweep.dir) if multirun else None
    name = hc.job.override_dirname or "default"
    return run_dir, multirun, str(sweep_dir) if sweep_dir else None, name, list(hc.overrides.task)


def _finished_twin(sweep_dir: Path, job_hash: str) -> Path | None:
    for meta_file in sweep_dir.rglob(storage.METADATA_FILE):
        meta = storage.read_metadata(meta_file.parent)
        if meta and meta.get("job_hash") == job_hash and storage.is_finished(meta_file.parent):
            return meta_file.parent
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


def _job_status(run_dir: Path, status: str, **extra: Any) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    storage.write_json({"status": status, "at": stamp, **extra}, run_dir / JOB_STATUS_FILE)


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
    start = time.perf_counter()
    settings = validate(cfg) if validate is not None else None
    torch.set_num_threads(int(cfg.get("threads", 1)))
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir, multirun, sweep_dir, name, overrides = _hydra_facts()
    meta = base_metadata(experiment, config, overrides)
    meta["sweep_name"] = cfg.get("sweep_name") if multirun else None
    meta["run_dir"] = str(run_dir)

    if multirun and cfg.get("resume", True):
        twin = _finished_twin(Path(sweep_dir), meta["job_hash"])
        if twin is not None:
            log.info("skip: job %s already finished in %s", meta["job_hash"], twin)
            if twin != run_dir:
                _job_status(run_dir, "skipped", same_as=str(twin))
            else:
                _job_status(run_dir, "skipped")
            return "skipped"

    storage.write_json({**meta, "status": "running"}, run_dir / storage.METADATA_FILE)
    _job_status(run_dir, "running")
    _set_aside_earlier_wandb_runs(run_dir)
    logger_cfg = cfg.get("logger") or {}
    tracker = Tracker(
        enabled=bool(logger_cfg.get("enabled", False)),
        mode=str(logger_cfg.get("mode", "offline")),
        project=str(logger_cfg.get("project", "pglab")),
        entity=logger_cfg.get("entity"),
        group=meta["sweep_name"],
        job_type=job_type or experiment,
        name=name,
        tags=[experiment, *list(logger_cfg.get("tags") or [])],
        config=config,
        directory=run_dir,
        init_timeout=float(logger_cfg.get("init_timeout", 30)),
    )
    context = JobContext(
        cfg=cfg,
        config=config,
        run_dir=run_dir,
        tracker=tracker,
        show_progress=bool(cfg.get("progress", True)),
        settings=settings,
    )
    try:
        output = body(context)
        # Writing results can fail too (disk full, a table pyarrow cannot store): that
        # must end as "failed" like an error in the body, never leave "running" behind.
        for stem, table in output.tables.items():
            storage.write_parquet(table, run_dir / f"{stem}.parquet")
        for stem in output.wandb_tables:
            tracker.log_table(stem, output.tables[stem])
        tracker.summary({**output.summary, "status": output.status})
        meta.update(
            status=output.status,
            summary=output.summary,
            result_files=[f"{stem}.parquet" for stem in output.tables],
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            wall_time_s=time.perf_counter() - start,
        )
        storage.write_json(meta, run_dir / storage.METADATA_FILE)
    except BaseException as error:
        meta.update(
            status="failed",
            error=f"{type(error).__name__}: {error}",
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            wall_time_s=time.perf_counter() - start,
        )
        storage.write_json(meta, run_dir / storage.METADATA_FILE)
        _job_status(run_dir, "failed", error=meta["error"])
        tracker.finish(exit_code=1)
        if not multirun or isinstance(error, KeyboardInterrupt):
            raise
        # In a sweep, one failed job must not stop the others: log it, let the sweep go
        # on, and let the end-of-sweep summary (callbacks.SweepSummary) report it.
        log.exception("%s failed in %s", experiment, run_dir)
        return "failed"

    _job_status(run_dir, output.status)
    sync = tracker.finish()
    log.info(
        "%s %s: results in %s (%.1fs)", experiment, output.status, run_dir, meta["wall_time_s"]
    )
    if sync:
        log.info("W&B offline run saved; to upload: %s", sync)
    return output.status
