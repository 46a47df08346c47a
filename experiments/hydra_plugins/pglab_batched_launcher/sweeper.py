"""pglab's sweeper (``hydra/sweeper=pglab``, every app's default): Hydra's basic sweeper,
except that it does not compose every job once more before a batched launch.

Hydra's ``BasicSweeper`` composes each job's config before handing the batch to the
launcher (``validate_batch_is_legal``), to fail early when the launcher runs elsewhere.
``hydra/launcher=batched`` runs in this process and composes each job itself, after it has
skipped the finished ones without composing them; validating first would compose every job
of a re-run 200-job sweep for nothing (~0.08 s each, measured). Bad keys and values are
refused before Hydra starts by the apps' pre-flight check (``pglab_jobs.cli``), and a job
whose config cannot be composed ends ``failed`` on its own. With any other launcher this is
exactly the basic sweeper.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra_plugins.pglab_batched_launcher.batched_launcher import BatchedLauncher


class PglabSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if isinstance(getattr(self, "launcher", None), BatchedLauncher):
            return
        super().validate_batch_is_legal(batch)
