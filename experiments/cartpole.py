"""REINFORCE on CartPole (or any discrete-action gymnasium env) with step-size-collapse detection.

One job = one (N, α, seed): train with θ ← θ + α ĝ_N (``update=pg``; or NPG, TRPO, PPO with
``update=npg|trpo|ppo``, ``step_size`` then being η, δ or the learning rate, the rule's
other keys in ``conf/update/<rule>.yaml``) for the budget, record per-iteration
metrics (the KL between successive policies and the step's norm for every rule), detect collapse (``collapsed`` in the summary = stuck at the END of the budget, see
pglab/collapse.py), and optionally measure gradient quality at checkpoints.

    python experiments/cartpole.py n_trajectories=10 step_size=0.01
    python experiments/cartpole.py -m n_trajectories=1,10,100 step_size=0.001,0.01,0.1
    python experiments/cartpole.py -m experiment=cartpole_grid hydra/launcher=joblib
    python experiments/cartpole.py update=trpo step_size=0.01

Writes ``history.parquet`` (per iteration), ``summary.parquet`` (one row), optionally
``gradient_quality.parquet`` (``n_trajectories`` the training N, ``batch_n_trajectories``
the N of the batches measured), and ``metadata.json`` into the job directory; columns as
declared in ``pglab.schema.CARTPOLE``. Directories and the W&B job type are named after the
env (``env_id=Acrobot-v1`` -> ``runs/acrobot/``, ``multirun/acrobot/<sweep_name>/``); the
``experiment`` of ``metadata.json`` stays ``cartpole`` (this app). Every key is declared and
checked in ``pglab_jobs.config.CartPoleSettings``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig
from pglab_jobs.batching import BatchPlan
from pglab_jobs.cli import preflight
from pglab_jobs.config import CartPoleSettings, identity, validate_cartpole
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.tracking import log_iteration

from pglab import checks, schema
from pglab.collapse import CollapseConfig, CollapseDetector
from pglab.gym import gradient_quality, lockstep, policies, rollouts
from pglab.gym.training import TrainConfig, TrainResult, train


def train_config(settings: CartPoleSettings) -> TrainConfig:
    """The core's run config, from the validated settings (N from the one n_trajectories)."""
    return TrainConfig(
        env_id=settings.env_id,
        n_trajectories=settings.n_trajectories,
        step_size=settings.step_size,
        estimator=settings.estimator,
        gamma=settings.gamma,
        optimizer=settings.optimizer,
        momentum=settings.momentum,
        max_iterations=settings.budget.iterations,
        max_env_steps=settings.budget.env_steps,
        variance_every=settings.variance_every,
        deterministic_threshold=settings.deterministic_threshold,
        seed=settings.seed,
        update=settings.update.name,
        update_config=settings.update.core(),
    )


def measure_gradient_quality(
    settings: CartPoleSettings, policy, iteration: int, ctx: JobContext
) -> list[dict]:
    gq = settings.gradient_quality
    reference = gradient_quality.reference_gradient(
        policy,
        settings.env_id,
        n_episodes=gq.reference_episodes,
        estimator=gq.reference_estimator,
        gamma=settings.gamma,
        seed=settings.seed * 7919 + iteration,
        max_episode_steps=settings.max_episode_steps,
    )
    rows = gradient_quality.batch_gradient_quality(
        policy,
        settings.env_id,
        reference,
        batch_sizes=list(gq.batch_sizes),
        n_batches=gq.n_batches,
        estimator=settings.estimator,
        gamma=settings.gamma,
        seed=settings.seed * 7919 + iteration + 1,
        max_episode_steps=settings.max_episode_steps,
    )
    for row in rows:
        # the core's n_trajectories is the batch size measured; the table's n_trajectories
        # is the identity column (the training N), as in every table of this app
        row["batch_n_trajectories"] = row.pop("n_trajectories")
        row.update(
            checkpoint_iteration=iteration,
            reference_episodes=reference.n_episodes,
            reference_relative_se=reference.relative_se,
        )
    ctx.tracker.log({"gradient_quality/reference_relative_se": reference.relative_se})
    return rows


@dataclass
class Prepared:
    """One job's training, built and ready to run alone or in a lock-step batch."""

    settings: CartPoleSettings
    config: TrainConfig
    policy: policies.CategoricalPolicy
    detector: CollapseDetector
    collapse_config: CollapseConfig
    callback: Callable[[dict], None]
    quality_rows: list[dict]
    bar: Any
    group: tuple | None  # lock-step group (pglab.gym.lockstep.group_key); None: alone only

    def lockstep_run(self) -> lockstep.LockstepRun:
        return lockstep.LockstepRun(self.config, self.policy, self.detector, self.callback)


def prepare(ctx: JobContext) -> Prepared:
    """Build the job's policy, detector and per-iteration callback (nothing trained yet)."""
    settings: CartPoleSettings = ctx.settings  # checked by validate_cartpole
    n = settings.n_trajectories  # the one N: collector, TrainConfig and collapse window
    config = train_config(settings)
    collapse_config = CollapseConfig(
        window_episodes=settings.collapse.window_episodes,
        poor_return=settings.collapse.poor_return,
        entropy_threshold=settings.collapse.entropy_threshold,
        drop_fraction=settings.collapse.drop_fraction,
        min_peak=settings.collapse.min_peak,
    )
    detector = CollapseDetector(collapse_config)
    gq = settings.gradient_quality
    checkpoints = set(gq.checkpoints) if gq.enabled else set()
    obs_dim, n_actions = rollouts.env_dims(settings.env_id)
    policy = policies.make_policy(
        settings.policy.kind,
        obs_dim,
        n_actions,
        hidden_sizes=settings.policy.hidden_sizes,
        activation=settings.policy.activation,
        init_scale=settings.policy.init_scale,
        seed=settings.seed,
    )
    quality_rows: list[dict] = []
    budget = settings.budget
    # The bar counts env steps when the budget is in env steps (the presets' choice; the
    # last batch may overshoot, the bar stops at its total), iterations otherwise.
    in_env_steps = budget.env_steps is not None and budget.iterations is None
    total = budget.env_steps if in_env_steps else budget.iterations
    step = {"pg": "α", "npg": "η", "trpo": "δ", "ppo": "lr"}[settings.update.name]
    bar = ctx.progress(
        total, f"{settings.update.name} N={n} {step}={settings.step_size} seed={settings.seed}"
    )
    steps_so_far = 0
    rows = (ctx.cfg.get("logger") or {}).get("history_rows")
    if rows is not None:
        rows = checks.positive_int("logger.history_rows", rows)
    last_mark, last_flags = -1, None

    def wanted(metrics: dict) -> bool:
        """Whether W&B gets this row: with ``logger.history_rows: R``, the first row, one
        per 1/R of the budget, the last one, and every row where a flag changes (every row
        when R is null or the run has at most R iterations). history.parquet keeps all."""
        nonlocal last_mark, last_flags
        k = int(metrics["iteration"])
        done = metrics["env_steps"] if in_env_steps else k + 1
        mark = -1 if rows is None else min(done, total) * rows // total
        flags = (metrics["collapsed"], metrics["diverged"])
        last = (
            metrics["diverged"]
            or (budget.iterations is not None and k + 1 >= budget.iterations)
            or (budget.env_steps is not None and metrics["env_steps"] >= budget.env_steps)
        )
        keep = rows is None or mark != last_mark or flags != last_flags or last
        last_mark, last_flags = mark, flags
        return keep

    def on_iteration(metrics: dict) -> None:
        nonlocal steps_so_far
        k = int(metrics["iteration"])
        if wanted(metrics):
            log_iteration(ctx.tracker, metrics, detector.status)  # charted against env_steps
        if in_env_steps:
            env_steps = int(metrics["env_steps"])
            advance = min(env_steps, total) - min(steps_so_far, total)
            steps_so_far = env_steps
        else:
            advance = 1
        bar.update(advance, postfix=f"return {metrics['return_mean']:.1f}")
        if k + 1 in checkpoints:  # checkpoint c = after c updates
            quality_rows.extend(measure_gradient_quality(settings, policy, k + 1, ctx))

    if 0 in checkpoints:
        quality_rows.extend(measure_gradient_quality(settings, policy, 0, ctx))
    group = None  # not batchable: trains alone with a RolloutCollector
    if lockstep.unbatchable_reason(settings.env_id, policy) is None:
        group = lockstep.group_key(config, policy, max_episode_steps=settings.max_episode_steps)
    return Prepared(
        settings, config, policy, detector, collapse_config, on_iteration, quality_rows, bar, group
    )


def train_prepared(prepared: Prepared) -> TrainResult:
    """Train one prepared job alone: lock-step with R = 1 for CartPole (so its numbers equal
    the same job's inside any batch), :func:`train` with a RolloutCollector otherwise."""
    if prepared.group is not None:
        (outcome,) = train_group([prepared])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    settings = prepared.settings
    try:
        with prepared.config.make_collector(
            seed=settings.seed, max_episode_steps=settings.max_episode_steps
        ) as collector:
            return train(
                prepared.config,
                prepared.policy,
                collector,
                detector=prepared.detector,
                callback=prepared.callback,
            )
    finally:
        prepared.bar.close()


def train_group(
    group: list[Prepared], report=None, on_result=None
) -> list[TrainResult | BaseException]:
    """Train prepared jobs of one lock-step group together; one result or error each
    (``on_result(i, outcome)`` as soon as job i's run has ended)."""
    try:
        return lockstep.train_lockstep(
            [p.lockstep_run() for p in group],
            max_episode_steps=group[0].settings.max_episode_steps,
            report=report,
            on_result=on_result,
        )
    finally:
        for p in group:
            p.bar.close()


def finish(prepared: Prepared, result: TrainResult) -> JobOutput:
    """The job's tables and summary from its training result."""
    settings, collapse_config = prepared.settings, prepared.collapse_config
    ident = identity(schema.CARTPOLE, settings, update=settings.update.name)
    history = pd.DataFrame(result.history)
    for key, value in ident.items():
        history[key] = value
    summary = {
        **ident,
        **result.summary(),
        "status": result.status,
        "collapse_window_episodes": collapse_config.window_episodes,
        "collapse_window_iterations": collapse_config.window_iterations(settings.n_trajectories),
    }
    tables = {"history": history, "summary": pd.DataFrame([summary])}
    if prepared.quality_rows:
        quality = pd.DataFrame(prepared.quality_rows)
        for key, value in ident.items():
            quality[key] = value
        tables["gradient_quality"] = quality
    scalar_summary = {
        k: v for k, v in summary.items() if isinstance(v, int | float | str | bool) or v is None
    }
    if isinstance(scalar_summary.get("final_return"), float) and math.isnan(
        scalar_summary["final_return"]
    ):
        scalar_summary["final_return"] = None
    return JobOutput(tables=tables, summary=scalar_summary, status=result.status)


def experiment(ctx: JobContext) -> JobOutput:
    prepared = prepare(ctx)
    return finish(prepared, train_prepared(prepared))


def job_type(cfg: DictConfig) -> str:
    """W&B job type and output directories (conf/cartpole.yaml) name the env: "acrobot"."""
    return schema.env_slug(str(cfg.get("env_id")))


# What hydra/launcher=batched needs to run many jobs of this app in one process.
BATCH = BatchPlan(
    experiment="cartpole",
    validate=validate_cartpole,
    job_type=job_type,
    prepare=prepare,
    run_group=train_group,
    run_alone=train_prepared,
    finish=finish,
)


@hydra.main(version_base="1.3", config_path="../conf", config_name="cartpole")
def main(cfg: DictConfig) -> str:
    return run_job(cfg, "cartpole", experiment, validate=validate_cartpole, job_type=job_type(cfg))


if __name__ == "__main__":
    preflight("cartpole", validate_cartpole)
    main()
