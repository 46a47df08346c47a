"""What every result records: config, seed, package versions, git commit, job hash."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import socket
import subprocess
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pglab.schema import NON_SEMANTIC_KEYS

REPO_ROOT = Path(__file__).resolve().parents[2]
TRACKED_PACKAGES = (
    "pglab",
    "torch",
    "numpy",
    "gymnasium",
    "hydra-core",
    "omegaconf",
    "wandb",
    "pandas",
    "pyarrow",
    "scipy",
)
# NON_SEMANTIC_KEYS (pglab.schema) before "threads" joined it: jobs finished under it carry
# a hash that still includes the thread count; resume accepts it (see job_hashes).
_LEGACY_NON_SEMANTIC_KEYS = tuple(k for k in NON_SEMANTIC_KEYS if k != "threads")

#: Per app, a stamp of the code's arithmetic: a change that gives the same config other
#: numbers (same laws, other bits) bumps its app's stamp here. Every job records its
#: app's stamp (``numerics``), and resume reuses a finished job only if its stamp is the
#: current one, so a resumed sweep never mixes results of two versions of the code. Apps
#: without an entry record ``None`` (their numbers have not changed since stamps began).
#: cartpole: "2026-12-02 numpy lock-step": the lock-step forward and the stacked step's
#: tanh moved to numpy; "2026-12-02b numpy stacked step": the whole stacked step of tanh
#: and relu policies moved to numpy (its sums run in other orders: other last bits);
#: "2026-12-03 one BLAS thread": numpy's BLAS runs on one thread inside pglab (before,
#: OpenBLAS's default, one thread per core, summed the stacked step's weight gradients in
#: an order that depended on the machine; pglab/threads.py), and the per-episode gradients
#: behind grad_variance came from the stacked step's numpy backward (its last bits).
NUMERICS: dict[str, str] = {"cartpole": "2026-12-03 one BLAS thread"}


def numerics_problem(meta: dict[str, Any]) -> str | None:
    """Why a job's numbers are not those of the current code (its metadata records another
    :data:`NUMERICS` stamp than its app's), or ``None``."""
    recorded, current = meta.get("numerics"), NUMERICS.get(str(meta.get("experiment")))
    if recorded == current:
        return None
    return f"its numbers come from older code (numerics {recorded!r}, now {current!r})"


# Both are read once per process: the code a process runs is the code it imported, and a
# sweep of many jobs in one process (the basic launcher) should not pay for it per job.
@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return tuple(versions.items())


def package_versions() -> dict[str, str]:
    return dict(_package_versions())


@functools.cache
def _git_state(repo: Path) -> tuple[str, bool | None]:
    """The commit checked out in ``repo`` and whether tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit or "unknown", bool(dirty) if dirty is not None else None


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit checked out in ``repo`` and whether tracked files differ from it."""
    commit, dirty = _git_state(Path(repo))
    return {"git_commit": commit, "git_dirty": dirty}


def job_hash(config: dict[str, Any], exclude: tuple[str, ...] = NON_SEMANTIC_KEYS) -> str:
    """Stable identity of a job: sha256 of its resolved config without output/reporting keys."""
    semantic = {k: v for k, v in config.items() if k not in exclude}
    blob = json.dumps(semantic, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_hashes(config: dict[str, Any]) -> tuple[str, ...]:
    """The job's hash, then the hashes the same job got before ``threads`` became
    non-semantic and, for ``update=pg``, before the ``update`` group existed (issue 10).

    A finished job recorded under any of them is the same computation (its results did
    not depend on the thread count; ``update=pg`` reproduces the earlier code bit for bit,
    tests/test_update_wiring.py), so sweeps run before the change resume without
    re-running; ``analysis.load`` reads their tables as ``update=pg``.
    """
    hashes = [job_hash(config), job_hash(config, _LEGACY_NON_SEMANTIC_KEYS)]
    if config.get("update") == {"name": "pg"}:
        before = {k: v for k, v in config.items() if k != "update"}
        hashes += [job_hash(before), job_hash(before, _LEGACY_NON_SEMANTIC_KEYS)]
    return tuple(dict.fromkeys(hashes))


def base_metadata(
    experiment: str,
    config: dict[str, Any],
    overrides: list[str],
    *,
    started_at: str | None = None,
) -> dict[str, Any]:
    """What every job records; ``started_at`` defaults to now (ISO 8601, UTC, seconds)."""
    return {
        "experiment": experiment,
        "job_hash": job_hash(config),
        "numerics": NUMERICS.get(experiment),
        "config": config,
        "overrides": overrides,
        "seed": config.get("seed"),
        "versions": package_versions(),
        **git_state(),
        "hostname": socket.gethostname(),
        "started_at": started_at or datetime.now(UTC).isoformat(timespec="seconds"),
    }


@functools.cache
def _tree_digest(path: str) -> str:
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def compose_key(config_sources: Any, config_name: str, task_overrides: list[str]) -> str | None:
    """What determines a job's composed config, as one digest: every file of its config
    directories (Hydra's ``runtime.config_sources`` of scheme ``file``), the primary config's
    name, the task overrides (sorted) and Hydra's version. Equal keys compose equal configs,
    so a launcher can skip a finished job before composing it (``None``: a source that is
    not a directory, e.g. a package, so no key).
    """
    from hydra import __version__ as hydra_version

    parts = [hydra_version, str(config_name)]
    for source in config_sources:
        if source.get("provider") == "hydra" or source.get("schema") == "structured":
            continue  # Hydra's own and code-registered configs: they come with the versions
        if source.get("schema") != "file" or not Path(source.get("path", "")).is_dir():
            return None
        parts.append(_tree_digest(str(Path(source["path"]).resolve())))
    parts.extend(sorted(task_overrides))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
