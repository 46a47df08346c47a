"""``hydra/launcher=batched`` (and ``batched_slurm``): a sweep's jobs in few processes,
CartPole runs in lock-step.

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
            slurm=self.slurm_shards(batching),
        )
        return batching.launch(**kwargs)

    def slurm_shards(self, batching: Any) -> Any:
        """Where the shards run: ``None``, on this machine."""
        return None


def _positive(name: str, value: Any, kind: type = int) -> Any:
    number = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, number) or value <= 0:
        raise ValueError(f"hydra.launcher.{name} must be a positive {kind.__name__}, got {value!r}")
    return value


class BatchedSlurmLauncher(BatchedLauncher):
    """``hydra/launcher=batched_slurm``: the sweep dealt into ``shards`` SLURM jobs, each
    training its share in lock-step batches (as ``batched`` does on one machine).

    Args:
        max_batch: as for ``batched``.
        n_jobs: worker processes inside each SLURM job; ``None``: its ``cpus_per_task``.
        shards: SLURM jobs to deal the jobs into (round-robin; fewer when there are fewer
            jobs to run).
        submitit_folder: submitit's folder for scripts and logs (``%j``: the SLURM job id).
        partition, timeout_min, cpus_per_task, mem_gb, additional_parameters: the SLURM
            job's resources, as for Hydra's ``submitit_slurm`` launcher
            (``additional_parameters``: extra ``#SBATCH`` keys).
    """

    def __init__(
        self,
        max_batch: int = 256,
        n_jobs: int | None = None,
        shards: int = 2,
        submitit_folder: str = ".submitit/%j",
        partition: str | None = None,
        timeout_min: int = 60,
        cpus_per_task: int = 1,
        mem_gb: float = 4.0,
        additional_parameters: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(max_batch=max_batch, n_jobs=n_jobs)
        self.shards = _positive("shards", shards)
        self.timeout_min = _positive("timeout_min", timeout_min)
        self.cpus_per_task = _positive("cpus_per_task", cpus_per_task)
        self.mem_gb = _positive("mem_gb", mem_gb, float)
        self.submitit_folder = str(submitit_folder)
        self.partition = None if partition is None else str(partition)
        self.additional_parameters = dict(additional_parameters or {})

    def slurm_shards(self, batching: Any) -> Any:
        return batching.SlurmShards(
            shards=self.shards,
            folder=self.submitit_folder,
            partition=self.partition,
            timeout_min=self.timeout_min,
            cpus_per_task=self.cpus_per_task,
            mem_gb=float(self.mem_gb),
            additional_parameters=self.additional_parameters,
        )
