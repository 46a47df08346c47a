"""What every result records: config, seed, package versions, git commit, job hash."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

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
# Config keys that say where and how a job reports, not what it computes: they do not
# enter the job hash, so moving outputs or switching W&B off does not re-run anything.
NON_SEMANTIC_KEYS = ("paths", "logger", "sweep_name", "progress", "resume")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
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
    return {
        "git_commit": commit or "unknown",
        "git_dirty": bool(dirty) if dirty is not None else None,
    }


def job_hash(config: dict[str, Any]) -> str:
    """Stable identity of a job: sha256 of its resolved config without output/reporting keys."""
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    blob = json.dumps(semantic, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_metadata(experiment: str, config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    return {
        "experiment": experiment,
        "job_hash": job_hash(config),
        "config": config,
        "overrides": overrides,
        "seed": config.get("seed"),
        "versions": package_versions(),
        **git_state(),
        "hostname": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
