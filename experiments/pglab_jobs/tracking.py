"""Weights & Biases, offline by default, never at the cost of local results.

Conventions (one W&B run per job, finished inside the job):

=============  ==========================================================
project        ``logger.project`` (default ``pglab``)
group          the sweep (``sweep_name``; for the default sweep a readable id
               unique to its directory), unset for single runs
job_type       the experiment (``estimator_variance``, ``cartpole``, ...)
name           short, per app: ``N=10 α=1e-3 seed=0`` (see ``naming``)
tags           the experiment, ``logger.tags``, each override
config         the resolved Hydra config plus ``pglab.job`` (the full
               override string) and ``pglab.overrides`` (logged at init)
history        per step; the x axis is declared with ``define_metric``:
               ``n_trajectories`` (estimator study), ``env_steps``
               (CartPole, :func:`log_iteration`; ``iteration`` is a metric)
summary        the job's summary metrics and verdicts (logged at finish)
files          :data:`JOB_BUNDLE`: the job's ``metadata.json`` and parquet
               results in one zip (:meth:`Tracker.attach_job`), so a synced
               run carries its own data (``analysis.wandb_source`` reads it)
=============  ==========================================================

Local parquet files are written before anything is sent to W&B; if W&B fails to
start or to log (bad mode, online without network or account), a warning is printed
and the run carries on with local results only.

Online mode is decided once per sweep: the first job probes the W&B server (a TCP connect
of at most :data:`PROBE_TIMEOUT_S` seconds, name lookup included) and records the verdict in
``<sweep_dir>/.pglab-wandb.json`` (:data:`DECISION_FILE`, cleared when a sweep starts). When
the server is unreachable, or an online start fails anyway, every job of the sweep logs
offline instead (one warning; upload later with ``wandb sync``) rather than waiting
``logger.init_timeout`` seconds each. No account is needed for any of this.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import threading
import urllib.parse
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
MODES = ("offline", "online", "disabled")
#: The sweep's verdict on online W&B: ``{"online": bool, "reason": str, "host": ..., "at": ...}``.
DECISION_FILE = ".pglab-wandb.json"
#: Longest wait for the W&B server to accept a TCP connection (name lookup included).
PROBE_TIMEOUT_S = 3.0
#: The job's results as one file of its W&B run (``files/pglab-job.zip``): ``metadata.json``
#: and every parquet file it lists, stored as written (analysis.wandb_source reads it).
JOB_BUNDLE = "pglab-job.zip"


def wandb_server() -> tuple[str, int]:
    """Host and port of the W&B server online runs would use (``WANDB_BASE_URL``, settings)."""
    url = None
    try:
        import wandb

        settings = wandb.Settings()
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
        url = settings.base_url
    except Exception:  # an older or newer wandb: fall back to the environment
        url = os.environ.get("WANDB_BASE_URL")
    parts = urllib.parse.urlsplit(str(url or "https://api.wandb.ai"))
    port = parts.port or (80 if parts.scheme == "http" else 443)
    return parts.hostname or "api.wandb.ai", port


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if ``host:port`` accepts a TCP connection within ``timeout`` s, else why not.

    The attempt runs in a daemon thread so a slow name lookup (which ignores socket
    timeouts) cannot hold the job longer than ``timeout`` either.
    """
    outcome: dict[str, str | None] = {}

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome["error"] = None
        except OSError as error:
            outcome["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=attempt, daemon=True, name="pglab-wandb-probe")
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        return f"no answer from {host}:{port} within {timeout:g} s"
    error = outcome["error"]
    return None if error is None else f"{host}:{port} unreachable ({error})"


def read_decision(decision_file: str | os.PathLike | None) -> dict[str, Any] | None:
    if decision_file is None:
        return None
    try:
        decision = json.loads(Path(decision_file).read_text())
    except (OSError, ValueError):
        return None
    return decision if isinstance(decision, dict) and "online" in decision else None


def record_decision(decision_file: str | os.PathLike | None, online: bool, reason: str) -> None:
    """Record the sweep's verdict (best effort: a job that cannot write it still runs)."""
    if decision_file is None:
        return
    from pglab_jobs import storage

    record = {
        "online": online,
        "reason": reason,
        "host": socket.gethostname(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        storage.write_json(record, decision_file, durable=False)
    except OSError as error:
        log.warning("could not record the W&B decision in %s: %s", decision_file, error)


def decide_online(decision_file: str | os.PathLike | None) -> tuple[bool, str]:
    """Whether online W&B can be tried, and why: the sweep's recorded verdict, or a probe."""
    decision = read_decision(decision_file)
    if decision is not None:
        return bool(decision["online"]), str(decision.get("reason", ""))
    host, port = wandb_server()
    problem = probe(host, port)
    online, reason = problem is None, problem or f"{host}:{port} reachable"
    record_decision(decision_file, online, reason)
    return online, reason


class Tracker:
    """A W&B run, or nothing when ``enabled`` is false or W&B could not start.

    Args:
        enabled: ``False`` for ``logger=none``.
        mode: ``offline`` (default, no account or network needed), ``online`` or ``disabled``.
        project, group, job_type, name, tags, config: the W&B run's fields (see module doc).
        directory: where the run's files go; W&B writes ``<directory>/wandb/offline-run-*``.
        decision_file: where the sweep records whether online W&B works (``None``: a single
            run, which decides for itself).
        browse_dir: the sweep's folder of links to its runs (``<sweep>/wandb``, opened by
            ``wandb leet``); an offline run links itself there when it finishes.
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
        decision_file: str | os.PathLike | None = None,
        browse_dir: str | os.PathLike | None = None,
    ) -> None:
        self.run = None
        self.mode = mode
        self.browse_dir = browse_dir
        self.x_axis: str | None = None  # the metric charts are drawn against (define_x_axis)
        if not enabled:
            return
        if mode not in MODES:
            warnings.warn(
                f"logger.mode={mode!r} is not one of {MODES}; W&B is off for this run, "
                "local results are still written",
                stacklevel=2,
            )
            return
        fields = dict(
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            name=name,
            tags=tags,
            config=config,
            directory=directory,
            init_timeout=init_timeout,
        )
        if mode == "online":
            online, reason = decide_online(decision_file)
            if not online:
                warnings.warn(
                    f"W&B is unreachable ({reason}); logging offline instead, "
                    "upload later with `wandb sync`",
                    stacklevel=2,
                )
                self.mode = "offline"
        try:
            self.run = self._init(mode=self.mode, **fields)
            return
        except Exception as error:  # W&B must never cost us the local results
            failure = f"{type(error).__name__}: {error}"
        if self.mode == "online":
            # Decided for the whole sweep: later jobs go offline without waiting.
            record_decision(decision_file, False, f"online start failed ({failure})")
            self.mode = "offline"
            try:
                self.run = self._init(mode="offline", **fields)
                warnings.warn(
                    f"W&B could not start in mode 'online' ({failure}); logging offline "
                    "instead, upload later with `wandb sync`",
                    stacklevel=2,
                )
                return
            except Exception as error:
                failure = f"{failure}; offline: {type(error).__name__}: {error}"
        warnings.warn(
            f"W&B could not start in mode {mode!r} ({failure}); continuing with local results only",
            stacklevel=2,
        )
        self.run = None

    @staticmethod
    def _init(*, mode: str, directory: str | os.PathLike, init_timeout: float, **fields: Any):
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        return wandb.init(
            **fields,
            dir=str(directory),
            mode=mode,
            reinit="create_new",  # the batched launcher keeps many runs open at once
            # No requirements.txt: scanning every installed distribution costs ~55 ms
            # per run (measured; most of an offline start), and metadata.json (attached
            # to the run) records the versions that matter.
            settings=wandb.Settings(
                silent=True,
                console="off",
                init_timeout=init_timeout,
                x_disable_stats=True,
                x_save_requirements=False,
            ),
        )

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

    def define_x_axis(self, step_metric: str) -> None:
        """Chart every metric of this run against ``step_metric`` (W&B ``define_metric``)
        instead of W&B's ``_step``; ``step_metric`` itself must be logged in each row."""

        def do() -> None:
            self.run.define_metric(step_metric)
            self.run.define_metric("*", step_metric=step_metric)

        self._guard("define_metric", do)
        self.x_axis = step_metric

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

    def attach_job(self, run_dir: str | os.PathLike) -> Path | None:
        """Save the finished job's ``metadata.json`` and the result files it lists to the
        run, as one zip (:data:`JOB_BUNDLE`) in the run's ``files/``; return its path."""
        if self.run is None:
            return None
        from pglab.schema import METADATA_FILE

        out: dict[str, Path] = {}

        def do() -> None:
            source = Path(run_dir)
            meta = json.loads((source / METADATA_FILE).read_text())
            names = [METADATA_FILE, *(meta.get("result_files") or [])]
            bundle = Path(self.run.dir) / JOB_BUNDLE
            with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_STORED) as archive:
                for name in names:  # parquet is compressed already
                    archive.write(source / name, arcname=name)
            self.run.save(str(bundle), base_path=self.run.dir, policy="now")
            out["bundle"] = bundle

        self._guard("attach", do)
        return out.get("bundle")

    def finish(self, exit_code: int = 0) -> str | None:
        """Finish the run; return the ``wandb sync`` command for an offline run."""
        if self.run is None:
            return None
        run_dir = getattr(self.run, "dir", None)
        self._guard("finish", lambda: self.run.finish(exit_code=exit_code))
        self.run = None
        if self.mode == "offline" and run_dir:
            offline_dir = Path(run_dir).parent  # .../wandb/offline-run-*/files -> offline-run-*
            if self.browse_dir is not None:
                try:
                    from pglab_jobs import sync

                    sync.link_run(self.browse_dir, offline_dir)
                except OSError as error:  # a file system without symbolic links
                    log.warning(
                        "could not link %s into %s: %s", offline_dir, self.browse_dir, error
                    )
            return f"wandb sync {shlex.quote(str(offline_dir))}"
        return None


def log_iteration(tracker: Tracker, metrics: dict[str, Any], collapse: Any = None) -> None:
    """Log one training iteration, charted against ``env_steps``.

    ``metrics`` is a row of ``pglab.gym.training.train``'s history: every number is logged,
    flags as 0/1 (``collapsed``, ``diverged``; W&B charts numbers), ``iteration`` as a
    metric and W&B's ``_step``. ``collapse`` (the detector's ``CollapseStatus`` after this
    iteration) adds ``dip`` (1 while the windowed return is below ``drop_fraction`` x its
    peak) and ``dips`` (recovered dips so far). The first call declares ``env_steps`` the
    x axis (:meth:`Tracker.define_x_axis`).
    """
    if not tracker.active:
        return
    if tracker.x_axis is None and "env_steps" in metrics:
        tracker.define_x_axis("env_steps")
    row = {
        key: int(value) if isinstance(value, bool) else value
        for key, value in metrics.items()
        if isinstance(value, int | float)
    }
    if collapse is not None:
        row["dip"] = int(bool(getattr(collapse, "dropped", False)))
        row["dips"] = int(getattr(collapse, "dips", 0))
    tracker.log(row, step=int(metrics["iteration"]))
