"""Many jobs of one sweep in one process: the work behind ``hydra/launcher=batched``.

An app that can batch exposes ``BATCH = BatchPlan(...)`` beside its ``main``
(``experiments/cartpole.py`` does). The launcher then runs a sweep in three passes:

1. **open** every job in its own Hydra job context, in sweep order: compose its config,
   check it, skip it if a finished twin exists (resume), write its ``metadata.json``
   (status ``running``), start its W&B run, and ``prepare`` it (policy, detector, callback;
   nothing trained). A job that fails here ends ``failed`` on its own, as with any launcher;
2. **train** the prepared jobs, grouped by ``prepared.group`` (equal groups can share a
   lock-step batch, at most ``max_batch`` runs each; ``None``: the job runs alone) with
   ``run_group`` / ``run_alone``. A run that raises or diverges ends on its own; the rest
   of its batch goes on;
3. **close** each job as soon as its run has ended, in its Hydra job context again:
   ``finish`` turns its result into tables and summary, which
   :func:`pglab_jobs.job.close_job` writes (parquet, then metadata, W&B summary and finish,
   the closing line in the job's own log file). A finished run's results are on disk while
   the rest of its batch still trains; an interruption (Ctrl-C) records every job still
   open as failed (finished W&B runs included) and goes on up.

``hydra/launcher=batched_slurm`` runs the same passes on a SLURM cluster: the jobs still to
do are dealt round-robin into ``shards`` SLURM jobs (one submitit array job,
:class:`SlurmShards`), and each runs its share on its node as a local sweep would.

Jobs without a group (``prepared.group`` ``None``: CartPole runs of other envs, tabular
ascents other than ``gradient=exact update=pg``) and apps without a ``BATCH`` (the estimator
study) run one job after another in each worker process, exactly as the basic launcher
runs them. Everything a job leaves behind (directory,
files, metadata, W&B run, status, resume by config hash, the end-of-sweep summary) is the
same as under any other launcher; only the wall time differs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from omegaconf import DictConfig, open_dict

from pglab_jobs import progress as sweep_progress
from pglab_jobs import storage
from pglab_jobs.job import (
    JobContext,
    JobOutput,
    OpenJob,
    close_job,
    job_dirs,
    mark_failed,
    mark_skipped,
    open_job,
    reusable,
)
from pglab_jobs.metadata import compose_key

log = logging.getLogger("pglab.batched")


@dataclass(frozen=True)
class BatchPlan:
    """How the batched launcher runs an app's jobs (see the module docstring).

    ``prepare(ctx)`` returns an object with a ``group`` attribute (hashable, or ``None``);
    ``run_group(prepared_list, report=..., on_result=...)`` returns one result or exception
    per job and calls ``on_result(i, outcome)`` as soon as job i's run has ended;
    ``run_alone(prepared)`` returns a result or raises; ``finish(prepared, result)`` returns
    the :class:`JobOutput`.
    """

    experiment: str
    validate: Callable[[DictConfig], Any]
    job_type: Callable[[DictConfig], str]
    prepare: Callable[[JobContext], Any]
    run_group: Callable[..., list[Any]]
    run_alone: Callable[[Any], Any]
    finish: Callable[[Any, Any], JobOutput]


@dataclass
class _Pending:
    ret: JobReturn
    config: DictConfig  # the job's composed config, hydra node included
    job: OpenJob
    prepared: Any
    closed: bool = False  # its results (or its failure) are written


@dataclass(frozen=True)
class Sweep:
    """What every shard of one sweep needs; pickled to worker processes and SLURM jobs."""

    hydra_context: Any
    task_function: Callable
    plan: BatchPlan | None
    config: DictConfig  # the sweep's config (hydra node included)
    initial_job_idx: int
    max_batch: int


def plan_of(task_function: Callable) -> BatchPlan | None:
    """The ``BATCH`` plan of the module that defines ``task_function``, if it has one."""
    plan = getattr(task_function, "__globals__", {}).get("BATCH")
    return plan if isinstance(plan, BatchPlan) else None


def _open(plan: BatchPlan, holder: dict[str, Any]) -> Callable[[DictConfig], str]:
    def task(cfg: DictConfig) -> str:
        job = open_job(cfg, plan.experiment, validate=plan.validate, job_type=plan.job_type(cfg))
        if isinstance(job, str):
            return job  # skipped (a finished twin), or failed its checks
        job.context.show_lines = False  # the launcher reports the batch's progress
        try:
            prepared = plan.prepare(job.context)
        except BaseException as error:
            return close_job(job, error)
        holder["job"], holder["prepared"] = job, prepared
        return "pending"

    return task


def finished_before_composing(
    config: DictConfig, job_overrides: Sequence[Sequence[str]]
) -> dict[int, Path]:
    """Jobs (by position) that already finished in the sweep directory, found without
    composing their configs: a finished, intact job whose recorded ``compose_key`` (config
    files, config name, overrides; :func:`pglab_jobs.metadata.compose_key`) equals theirs
    and whose numbers come from the current code (:data:`pglab_jobs.metadata.NUMERICS`).
    Anything else (older jobs without the key, changed config files) is left to the usual
    check by config hash, which composes first.
    """
    if not config.get("resume", True):
        return {}
    return _dirs_by_compose_key(config, job_overrides, reusable)


def _dirs_by_compose_key(
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    accept: Callable[[Path, dict[str, Any]], bool],
) -> dict[int, Path]:
    """The job directories (by position in ``job_overrides``) whose metadata records the
    job's ``compose_key`` and passes ``accept(job_dir, metadata)``."""
    sources = config.hydra.runtime.config_sources
    name = config.hydra.job.config_name
    wanted: dict[str, list[int]] = {}
    for position, overrides in enumerate(job_overrides):
        key = compose_key(sources, name, list(overrides))
        if key is not None:
            wanted.setdefault(key, []).append(position)
    found: dict[int, Path] = {}
    for job_dir in job_dirs(Path(str(config.hydra.sweep.dir))):
        meta = storage.read_metadata(job_dir)
        key = meta.get("compose_key") if meta else None
        positions = wanted.get(key, [])
        if positions and positions[0] not in found and accept(job_dir, meta):
            found.update(dict.fromkeys(positions, job_dir))  # only wanted jobs are checked
    return found


def _skip(job_dir: Path, sweep_dir: Path, idx: int, overrides: Sequence[str]) -> JobReturn:
    log.info("\t#%d : skip, already finished in %s", idx, job_dir.name)
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = mark_skipped(job_dir, sweep_dir, sweep_progress.job_key(job_dir, idx))
    return ret


def _in_job_context(config: DictConfig) -> None:
    """Make ``config``'s job current again: Hydra's config singleton and its log file."""
    HydraConfig.instance().set_config(config)
    configure_log(config.hydra.job_logging, config.hydra.verbose)


def _report(label: str) -> Callable[[Any], None]:
    """A batch's progress line: env steps for gymnasium batches (``lockstep.Progress``),
    ascent iterations for tabular ones (``batched_ascent.AscentProgress``), and the time
    the batch has left (:func:`batch_eta`, at the pace of the lock-step batch's last
    reporting interval)."""
    last = {"wall": 0.0, "vector_steps": 0}

    def report(progress: Any) -> None:
        steps = getattr(progress, "env_steps", None)
        count = steps if steps is not None else progress.iterations
        rate = count / progress.wall_time if progress.wall_time > 0 else 0.0
        if steps is not None:
            amount = f"{steps / 1e6:.2f}M env steps, {rate / 1e3:.0f}k steps/s"
        else:
            amount = f"{count} iterations, {rate:.0f} iterations/s"
        vector_steps = getattr(progress, "vector_steps", None)
        pace = None
        if vector_steps is not None and vector_steps > last["vector_steps"]:
            pace = (progress.wall_time - last["wall"]) / (vector_steps - last["vector_steps"])
            last.update(wall=progress.wall_time, vector_steps=vector_steps)
        log.info(
            "%s: %d of %d runs finished, %s, %.0fs, batch ETA %s",
            label,
            progress.finished,
            progress.runs,
            amount,
            progress.wall_time,
            batch_eta(progress.wall_time, progress.budget_used, vector_steps, pace),
        )

    return report


def batch_eta(
    wall_time: float,
    budget_used: float,
    steps: int | None = None,
    pace: float | None = None,
) -> str:
    """``mm:ss`` left in a lock-step batch, ``--:--`` before any run has used any budget.

    A batch ends with its slowest run, so what is left is extrapolated from the least
    share of its budget any unfinished run has used, f: ``steps (1 - f) / f`` more vector
    steps, at ``pace`` seconds a step (the last reporting interval's: runs that end take
    their copies and updates with them, so steps get cheaper as a batch goes on). Without
    ``steps`` and ``pace`` (tabular batches), at the batch's mean pace: ``wall_time
    (1 - f) / f``. Either errs long, since later steps are cheaper still (measured on the
    full ``cartpole_grid``, docs/batched.md).
    """
    if not budget_used > 0:
        return "--:--"
    left = (1.0 - min(budget_used, 1.0)) / budget_used
    if steps is None or pace is None:
        return sweep_progress.clock(wall_time * left)
    return sweep_progress.clock(steps * left * pace)


def launch(
    *,
    hydra_context: Any,
    task_function: Callable,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    max_batch: int,
    n_jobs: int | None = None,
    slurm: SlurmShards | None = None,
) -> list[JobReturn]:
    """Run every job of ``job_overrides`` (see the module docstring); one return per job.

    ``slurm``: deal the jobs to ``slurm.shards`` SLURM jobs instead (each a node process
    running its share as here, with ``n_jobs`` workers; ``None`` there: its
    ``cpus_per_task``), submitted with submitit and awaited.

    Finished jobs are skipped first (:func:`finished_before_composing`). The rest are dealt
    round-robin into ``n_jobs`` shards (``None``: one per CPU core, at most one per job),
    each run by one process (joblib's loky workers; ``1``: this process). A job's numbers
    do not depend on its shard or batch.
    """
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_of(task_function)
    returns: dict[int, JobReturn] = {}
    done_before = finished_before_composing(config, job_overrides)
    if done_before:
        log.info("%d of %d jobs finished before: skipped", len(done_before), len(job_overrides))
    for offset, job_dir in done_before.items():
        idx = initial_job_idx + offset
        returns[offset] = _skip(job_dir, sweep_dir, idx, job_overrides[offset])
    todo = [(o, list(ov)) for o, ov in enumerate(job_overrides) if o not in done_before]
    sweep = Sweep(hydra_context, task_function, plan, config, initial_job_idx, max_batch)
    if slurm is not None and todo:
        returns.update(_run_on_slurm(slurm, sweep, todo, n_jobs))
    elif todo:
        returns.update(run_here(sweep, todo, n_jobs))
    return [returns[offset] for offset in range(len(job_overrides))]


def run_here(
    sweep: Sweep, todo: list[tuple[int, list[str]]], n_jobs: int | None
) -> dict[int, JobReturn]:
    """Run ``todo`` on this machine: dealt round-robin into ``n_jobs`` shards (``None``: one
    per CPU core, at most one per job), each run by one process (joblib's loky workers;
    ``1``: this process)."""
    workers = min(len(todo), n_jobs or os.cpu_count() or 1)
    how = (
        "in lock-step batches"
        if sweep.plan is not None
        else "one after another in each (no batch plan)"
    )
    log.info(
        "Launching %d jobs in %s, %s",
        len(todo),
        "this process" if workers <= 1 else f"{workers} worker processes",
        how,
    )
    if workers <= 1:
        shard_returns = [run_shard(sweep, todo)]
    else:
        from joblib import Parallel, delayed

        state = Singleton.get_state()
        shard_returns = Parallel(n_jobs=workers, backend="loky")(
            delayed(_in_new_process)(state, run_shard, sweep, todo[w::workers])
            for w in range(workers)
        )
    returns: dict[int, JobReturn] = {}
    for shard in shard_returns:
        returns.update(shard)
    return returns


@dataclass(frozen=True)
class SlurmShards:
    """``hydra/launcher=batched_slurm``: the sweep's jobs dealt round-robin into ``shards``
    SLURM jobs (submitit), each training its share in lock-step batches on its node.

    ``folder``: submitit's job folder (``%j`` is the SLURM job id); ``partition``,
    ``timeout_min``, ``cpus_per_task``, ``mem_gb`` and ``additional_parameters`` (extra
    ``#SBATCH`` keys) as for Hydra's ``submitit_slurm`` launcher.
    """

    shards: int
    folder: str
    partition: str | None = None
    timeout_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    additional_parameters: dict[str, Any] | None = None


def _run_on_slurm(
    slurm: SlurmShards, sweep: Sweep, todo: list[tuple[int, list[str]]], n_jobs: int | None
) -> dict[int, JobReturn]:
    """Submit one SLURM job per shard (round-robin, like the local workers) and wait for
    them. A SLURM job that fails as a whole (timeout, node lost) fails its shard's jobs
    with that reason; their directories stay unfinished, so a re-run does them again."""
    import submitit

    shards = min(len(todo), slurm.shards)
    executor = submitit.AutoExecutor(folder=slurm.folder, cluster="slurm")
    parameters: dict[str, Any] = dict(
        timeout_min=slurm.timeout_min,
        cpus_per_task=slurm.cpus_per_task,
        mem_gb=slurm.mem_gb,
        name=str(sweep.config.hydra.job.name),
        slurm_additional_parameters=dict(slurm.additional_parameters or {}),
    )
    if slurm.partition:
        parameters["slurm_partition"] = slurm.partition
    executor.update_parameters(**parameters)
    state = Singleton.get_state()
    parts = [todo[s::shards] for s in range(shards)]
    with executor.batch():
        jobs = [
            executor.submit(
                _in_new_process, state, run_here, sweep, part, n_jobs or slurm.cpus_per_task
            )
            for part in parts
        ]
    log.info(
        "Submitted %d jobs as %d SLURM jobs (%s), each training its share in lock-step",
        len(todo),
        shards,
        ", ".join(job.job_id for job in jobs),
    )
    returns: dict[int, JobReturn] = {}
    for job, part in zip(jobs, parts, strict=True):
        try:
            returns.update(job.result())
        except Exception as error:  # the whole SLURM job died: each of its jobs says so
            reason = f"its SLURM job {job.job_id} ended without a result ({type(error).__name__})"
            log.error("SLURM job %s failed: %s", job.job_id, error)
            returns.update(_failed_with_shard(sweep, part, reason))
    return returns


def _failed_with_shard(
    sweep: Sweep, part: list[tuple[int, list[str]]], reason: str
) -> dict[int, JobReturn]:
    """The jobs of a shard whose process died. Those it had opened and not closed (their
    metadata says "running") are recorded as failed with ``reason``; the others had
    finished (and keep their results) or never started (the sweep counts them as
    unfinished). A re-run does every one that did not finish."""
    sweep_dir = Path(str(sweep.config.hydra.sweep.dir))
    found = _dirs_by_compose_key(
        sweep.config,
        [overrides for _, overrides in part],
        lambda job_dir, meta: meta.get("status") == "running" or storage.is_finished(job_dir, meta),
    )
    returns: dict[int, JobReturn] = {}
    for position, (offset, overrides) in enumerate(part):
        ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        job_dir = found.get(position)
        if job_dir is None:
            ret.return_value = "unfinished"
        elif storage.is_finished(job_dir):
            ret.return_value = "complete"
        else:
            key = sweep_progress.job_key(job_dir, sweep.initial_job_idx + offset)
            ret.return_value = mark_failed(job_dir, sweep_dir, key, reason)
        returns[offset] = ret
    return returns


def _in_new_process(state: Any, work: Callable, *args: Any) -> dict[int, JobReturn]:
    """``work(*args)`` in a worker process or SLURM job, with Hydra's globals set up as in
    the launching process (``state``: its ``Singleton`` state)."""
    setup_globals()
    Singleton.set_state(state)
    return work(*args)


def run_shard(sweep: Sweep, jobs: list[tuple[int, list[str]]]) -> dict[int, JobReturn]:
    """Open, train and close the ``jobs`` ``(offset, overrides)`` in this process."""
    hydra_context, task_function, plan, config = (
        sweep.hydra_context,
        sweep.task_function,
        sweep.plan,
        sweep.config,
    )
    initial_job_idx, max_batch = sweep.initial_job_idx, sweep.max_batch
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    returns: dict[int, JobReturn] = {}
    pending: list[_Pending] = []
    start = time.perf_counter()
    for offset, overrides in jobs:
        idx = initial_job_idx + offset
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        try:
            sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        except Exception as error:  # not composable: this job fails, the others go on
            log.error("#%d failed: its config cannot be composed: %s", idx, error)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            ret.return_value = error
            returns[offset] = ret
            continue
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        holder: dict[str, Any] = {}
        task = task_function if plan is None else _open(plan, holder)
        ret = run_job(
            hydra_context=hydra_context,
            task_function=task,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        returns[offset] = ret
        if "job" in holder:
            pending.append(_Pending(ret, sweep_config, holder["job"], holder["prepared"]))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    if plan is None or not pending:
        return returns
    opened = time.perf_counter() - start
    log.info(
        "%d of %d jobs opened in %.1fs (the others skipped or failed); training",
        len(pending),
        len(jobs),
        opened,
    )

    groups: dict[Any, list[_Pending]] = {}
    alone: list[_Pending] = []
    for item in pending:
        group = getattr(item.prepared, "group", None)
        (alone if group is None else groups.setdefault(group, [])).append(item)
    batches = [
        members[i : i + max_batch]
        for members in groups.values()
        for i in range(0, len(members), max_batch)
    ]
    original = HydraConfig.instance().cfg
    if batches:  # jobs now end in bursts: the sweep line leaves the ETA to the batch lines
        sweep_progress.mark_lockstep(Path(str(config.hydra.sweep.dir)))

    def close(item: _Pending, outcome: Any) -> None:
        """Write one job's results now (in its own Hydra context and log file)."""
        if item.closed:
            return
        item.closed = True
        try:
            _in_job_context(item.config)
            if not isinstance(outcome, BaseException):
                try:
                    outcome = plan.finish(item.prepared, outcome)
                except Exception as error:
                    outcome = error
            item.ret.return_value = close_job(item.job, outcome)
        finally:
            HydraConfig.instance().cfg = original
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)

    try:
        for number, batch in enumerate(batches, 1):
            label = f"batch {number}/{len(batches)}"
            log.info("%s: %d runs in lock-step", label, len(batch))

            def on_result(i: int, outcome: Any, batch: list[_Pending] = batch) -> None:
                close(batch[i], outcome)  # results are saved as soon as a run ends

            try:
                outcomes = plan.run_group(
                    [item.prepared for item in batch], report=_report(label), on_result=on_result
                )
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # the whole batch failed to start: each job says so
                outcomes = [error] * len(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                close(item, outcome)
        for item in alone:
            try:
                outcome = plan.run_alone(item.prepared)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:
                outcome = error
            close(item, outcome)
    except BaseException as interrupt:
        # Interrupted (Ctrl-C, a kill turned into SystemExit): every job still open is
        # recorded as failed with the reason and its W&B run finished; finished jobs keep
        # their results. Then the interruption goes on.
        for item in pending:
            try:
                close(item, interrupt)
            except BaseException:  # close_job re-raises an interruption after recording it
                pass
        raise
    finally:
        _flush_wandb()
    trained = time.perf_counter() - start - opened
    log.info("trained and wrote %d jobs in %.1fs", len(pending), trained)
    return returns


def _flush_wandb() -> None:
    """Wait until W&B has written every finished run: ``run.finish()`` returns before its
    service has written the run's log, and a worker process may be stopped right after."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    try:
        wandb.teardown()
    except Exception as error:  # never lose the sweep over it; results are on disk already
        log.warning("W&B teardown failed: %s", error)
