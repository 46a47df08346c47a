"""Weights & Biases, offline by default, never at the cost of local results.

Conventions (one W&B run per job, finished inside the job):

=============  ==========================================================
project        ``logger.project`` (default ``pglab``)
group          the sweep name for multiruns (``sweep_name``), else unset
job_type       the experiment (``estimator_variance``, ``cartpole``, ...)
name           the job's overrides, e.g. ``n_trajectories=10,step_size=0.1``
tags           ``logger.tags`` plus the experiment name
config         the resolved Hydra config (logged at init)
summary        the job's summary metrics (logged at finish)
=============  ==========================================================

Local parquet files are written before anything is sent to W&B; if W&B fails to
start or to log (bad mode, online without network or account), a warning is printed
and the run carries on with local results only.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
MODES = ("offline", "online", "disabled")


class Tracker:
    """A W&B run, or nothing when ``enabled`` is false or W&B could not start.

    Args:
        enabled: ``False`` for ``logger=none``.
        mode: ``offline`` (default, no account or network needed), ``online`` or ``disabled``.
        project, group, job_type, name, tags, config: the W&B run's fields (see module doc).
        directory: where the run's files go; W&B writes ``<directory>/wandb/offline-run-*``.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        mode: str = "offline",
        project: str = "pglab",
        entity: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        config: dict[str, Any] | None = None,
        directory: str | os.PathLike = ".",
        init_timeout: float = 60.0,
    ) -> None:
        self.run = None
        self.mode = mode
        if not enabled:
            return
        if mode not in MODES:
            warnings.warn(
                f"logger.mode={mode!r} is not one of {MODES}; W&B is off for this run, "
                "local results are still written",
                stacklevel=2,
            )
            return
        try:
            import wandb

            Path(directory).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=project,
                entity=entity,
                group=group,
                job_type=job_type,
                name=name,
                tags=tags,
                config=config,
                dir=str(directory),
                mode=mode,
                reinit="finish_previous",
                settings=wandb.Settings(
                    silent=True, console="off", init_timeout=init_timeout, x_disable_stats=True
                ),
            )
        except Exception as error:  # W&B must never cost us the local results
            warnings.warn(
                f"W&B could not start in mode {mode!r} ({type(error).__name__}: {error}); "
                "continuing with local results only",
                stacklevel=2,
            )
            self.run = None

    @property
    def active(self) -> bool:
        return self.run is not None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as error:
            warnings.warn(
                f"W&B {what} failed ({error}); local results are unaffected", stacklevel=3
            )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._guard("log", lambda: self.run.log(metrics, step=step))

    def log_table(self, key: str, frame: pd.DataFrame) -> None:
        def do() -> None:
            import wandb

            flat = frame.copy()
            for column in flat.columns:  # W&B tables hold scalars; lists become strings
                if flat[column].map(lambda v: isinstance(v, list | tuple)).any():
                    flat[column] = flat[column].map(str)
            self.run.log({key: wandb.Table(dataframe=flat)})

        self._guard("table", do)

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(values))

    def finish(self, exit_code: int = 0) -> str | None:
        """Finish the run; return the ``wandb sync`` command for an offline run."""
        if self.run is None:
            return None
        run_dir = getattr(self.run, "dir", None)
        self._guard("finish", lambda: self.run.finish(exit_code=exit_code))
        self.run = None
        if self.mode == "offline" and run_dir:
            offline_dir = Path(run_dir).parent  # .../wandb/offline-run-*/files -> offline-run-*
            return f"wandb sync {offline_dir}"
        return None
