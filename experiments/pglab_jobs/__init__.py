"""Run plumbing shared by every experiment: storage, metadata, W&B, resume, progress.

Nothing here does mathematics; ``pglab`` does. Nothing in ``pglab`` imports this.

Importing the package registers the OmegaConf resolver ``pglab_dirname`` that
conf/hydra/default.yaml uses for job directory names (:func:`job_dirname`); every process
that runs a job imports it (the apps import :mod:`pglab_jobs.job`).
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

#: Longest job directory name in bytes (most file systems allow 255).
MAX_DIRNAME_BYTES = 200


def job_dirname(override_dirname: str) -> str:
    """A job directory name from Hydra's ``override_dirname``: one path component, always.

    Ordinary names are kept as they are (sweeps started before this resume in place). A
    ``/`` inside a value (``mdp.path=/x/y.yaml``), which would nest directories and break
    the ``<sweep>/*/wandb`` glob, is written ``%2F`` as in a URL:
    ``mdp.path=%2Fx%2Fy.yaml``. A name longer than :data:`MAX_DIRNAME_BYTES` bytes keeps
    its start and ends in ``~`` and a digest of the whole, so it stays unique.
    """
    name = str(override_dirname).replace("/", "%2F").replace("\x00", "")
    encoded = name.encode()
    if len(encoded) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha256(encoded).hexdigest()[:16]
        head = encoded[: MAX_DIRNAME_BYTES - len(digest) - 1].decode(errors="ignore")
        name = f"{head}~{digest}"
    return name


OmegaConf.register_new_resolver("pglab_dirname", job_dirname, replace=True)
