"""Atomic, verifiable result files.

Every result file is written to a temporary file in the same directory and then
renamed over the target (``os.replace`` is atomic on POSIX), so a killed job leaves
either the old file or the new one, never half of one. The file gets the permissions
an ordinary ``open`` would give it (``0o666`` less the umask): ``tempfile.mkstemp``
alone creates ``0600``, which collaborators on shared storage cannot read.

``metadata.json`` is written last and records the size and sha256 of every result file
(``result_digests``, beside the plain list of names ``result_files``); a job counts as
finished only when its metadata says so *and* every listed file is still intact (see
:func:`is_finished`), so a truncated or corrupted result is recomputed, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pglab.schema import FINISHED_STATUSES, METADATA_FILE

__all__ = [
    "FINISHED_STATUSES",
    "METADATA_FILE",
    "current_umask",
    "digest",
    "is_finished",
    "read_metadata",
    "result_problem",
    "write_json",
    "write_parquet",
]

_PARQUET_MAGIC = b"PAR1"
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which briefly changes it for every thread
    of the process; Linux reports it in ``/proc/self/status`` instead (since 4.7). The
    set-and-restore fallback runs under a lock.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` as parquet, atomically."""
    return _atomic_write(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def write_json(obj: Any, path: str | os.PathLike, *, durable: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically (non-JSON values go through ``str``).

    ``durable`` fsyncs the data before the rename (``metadata.json``); a status file that
    is rewritten often and matters only for the current sweep can skip it.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())

    return _atomic_write(Path(path), write)


def digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256": hex, "bytes": size}`` of the file at ``path``."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "bytes": size}


def read_metadata(run_dir: str | os.PathLike) -> dict | None:
    """The job's ``metadata.json``, or ``None`` when missing or unreadable."""
    try:
        with open(Path(run_dir) / METADATA_FILE) as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _parquet_problem(path: Path) -> str | None:
    """Cheap integrity check for a file without a recorded digest: parquet magic at both ends."""
    try:
        size = path.stat().st_size
        if size < 12:
            return f"{path.name} is truncated ({size} bytes)"
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(-4, os.SEEK_END)
            tail = handle.read(4)
    except OSError as error:
        return f"{path.name} cannot be read ({error.strerror or error})"
    if head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        return f"{path.name} is not a complete parquet file"
    return None


def result_problem(run_dir: str | os.PathLike, meta: dict | None = None) -> str | None:
    """Why the job in ``run_dir`` does not count as finished, or ``None`` when it does.

    Finished means: ``metadata.json`` has a finished status and every result file it lists
    is present and intact: same size and sha256 as recorded (``result_digests``). Metadata
    written before digests were recorded is checked for presence and, for parquet files,
    the magic bytes at both ends (which a truncated file lacks).
    """
    run_dir = Path(run_dir)
    if meta is None:
        meta = read_metadata(run_dir)
    if not meta:
        return f"no readable {METADATA_FILE}"
    status = meta.get("status")
    if status not in FINISHED_STATUSES:
        return f"status is {status!r}"
    names = meta.get("result_files") or []
    digests = meta.get("result_digests")
    for name in names:
        path = run_dir / name
        if not path.is_file():
            return f"{name} is missing"
        expected = digests.get(name) if isinstance(digests, dict) else None
        if expected is None:
            if digests is not None:
                return f"{name} has no recorded digest"
            if path.suffix == ".parquet" and (problem := _parquet_problem(path)):
                return problem
            continue
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, {expected.get('bytes')} were written"
        if digest(path)["sha256"] != expected.get("sha256"):
            return f"{name} differs from what was written (sha256 mismatch)"
    return None


def is_finished(run_dir: str | os.PathLike, meta: dict | None = None) -> bool:
    """True when the job in ``run_dir`` finished and its result files are intact."""
    return result_problem(run_dir, meta) is None
