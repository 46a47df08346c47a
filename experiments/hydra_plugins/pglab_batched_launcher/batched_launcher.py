"""``hydra/launcher=batched``: a sweep's jobs in one process, CartPole runs in lock-step.

Hydra loads launchers from the ``hydra_plugins`` namespace package only; this module is that
registration (configured by ``conf/hydra/launcher/batched.yaml``). The work is done by
:mod:`pglab_jobs.batching`, which documents the three passes (open, train, close).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class BatchedLauncher(Launcher):
    """Runs a sweep's jobs in this process; jobs of one lock-step group share batches.

    Args:
        max_batch: most runs in one lock-step batch (a larger group is split; splitting
            changes no run's numbers, only the wall time).
        n_jobs: worker processes, each running a round-robin share of the jobs in its own
            batches; ``None``: one per CPU core; ``1``: everything in the launching process.
    """

    def __init__(self, max_batch: int = 256, n_jobs: int | None = None) -> None:
        for name, value in (("max_batch", max_batch), ("n_jobs", n_jobs)):
            if value is None and name == "n_jobs":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"hydra.launcher.{name} must be a positive integer, got {value!r}")
        self.max_batch = max_batch
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from pglab_jobs import batching  # the job runtime, imported when a sweep runs

        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        kwargs: dict[str, Any] = dict(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=self.config,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
            max_batch=self.max_batch,
            n_jobs=self.n_jobs,
        )
        return batching.launch(**kwargs)
