"""Shared test fixtures. W&B is always offline in tests and writes only under tmp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread: the numbers of seeded tests do not depend on the machine's core
# count, and two test processes on a 2-core machine do not oversubscribe it.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _wandb_in_tmp(tmp_path_factory, monkeypatch):
    wandb_home = tmp_path_factory.getbasetemp() / "wandb-home"
    monkeypatch.setenv("WANDB_DIR", str(wandb_home))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(wandb_home / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_home / "config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(wandb_home / "data"))


def run_app(
    script: str,
    *overrides: str,
    cwd: Path | None = None,
    timeout: float = 600,
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python experiments/<script> <overrides>`` as a user would, in a subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *overrides],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(overrides)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def digests_under_blas_threads(code: str, threads: tuple[str, ...] = ("1", "2")) -> set[str]:
    """What ``python -c code`` prints (a digest), once per ``OPENBLAS_NUM_THREADS`` value:
    a set of one element when the printed bits do not depend on the BLAS thread count."""
    digests = set()
    for count in threads:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": count}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    return digests


def slurm_skip_reason() -> str | None:
    """Why SLURM tests cannot run here, or None when a cluster is reachable."""
    if os.environ.get("PGLAB_SLURM") == "unavailable":
        return "PGLAB_SLURM=unavailable: no SLURM test cluster (could not start one, or disabled)"
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        return "SLURM_CONF is unset: run the tests via `make test` (starts a SLURM test cluster)"
    if not Path(conf).is_file():
        return f"SLURM_CONF={conf} does not exist (cluster stopped?)"
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH: run scripts/slurm/install.sh"
    return None


SLURM_SKIP_REASON = slurm_skip_reason()
PARTITION = os.environ.get("PGLAB_SLURM_PARTITION", "debug")


def pytest_collection_modifyitems(config, items):
    """Groups for ``pytest -n N --dist loadgroup`` (what ``make test`` runs, pytest-xdist):
    the SLURM tests share one worker (they share the one-node test cluster, and one finds
    its victim among the cluster's jobs), and a test that uses a module-scoped fixture runs
    on the worker of its module's other such tests, so the fixture is built once. Every
    other test goes to whichever worker is free."""
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            group = "slurm"
        else:
            info = getattr(item, "_fixtureinfo", None)
            definitions = info.name2fixturedefs.values() if info is not None else ()
            shared = any(d and d[-1].scope == "module" for d in definitions)
            module = getattr(item, "module", None)
            group = module.__name__ if shared and module is not None else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
