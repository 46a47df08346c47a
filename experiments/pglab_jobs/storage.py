"""Atomic result files.

Every result file is written to a temporary file in the same directory and then
renamed over the target (``os.replace`` is atomic on POSIX), so a killed job leaves
either the old file or the new one, never half of one. ``metadata.json`` is written
last; a job counts as finished only when it says so (see :func:`is_finished`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

METADATA_FILE = "metadata.json"
FINISHED_STATUSES = ("complete", "diverged")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` as parquet, atomically."""
    return _atomic_write(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically (non-JSON values go through ``str``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())

    return _atomic_write(Path(path), write)


def read_metadata(run_dir: str | os.PathLike) -> dict | None:
    """The job's ``metadata.json``, or ``None`` when missing or unreadable."""
    try:
        with open(Path(run_dir) / METADATA_FILE) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when the job in ``run_dir`` finished and every result file it lists exists."""
    meta = read_metadata(run_dir)
    if not meta or meta.get("status") not in FINISHED_STATUSES:
        return False
    return all((Path(run_dir) / name).is_file() for name in meta.get("result_files", []))
