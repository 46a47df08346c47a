"""Hydra callbacks: the end-of-multirun summary (jobs done, skipped, failed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

JOB_STATUS_FILE = "job_status.json"  # written by pglab_jobs.job


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


class SweepSummary(Callback):
    """Prints ``multirun <dir>: N done, N diverged, N skipped, N failed`` at the end of a sweep."""

    def __init__(self) -> None:
        self.started: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = datetime.now(UTC).isoformat(timespec="microseconds")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        counts = sweep_counts(sweep_dir, since=self.started)
        always = ("done", "skipped", "failed")
        line = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in always)
        print(f"multirun {sweep_dir}: {line}", flush=True)
        if counts["done"] + counts["diverged"] and config.get("logger", {}).get("enabled"):
            print(
                f"upload every offline W&B run of this sweep: wandb sync {sweep_dir}/*/wandb/offline-run-*",
                flush=True,
            )
        if counts["failed"]:
            raise SystemExit(
                f"{counts['failed']} job(s) failed; see their metadata.json and logs under {sweep_dir}"
            )
