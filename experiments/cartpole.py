"""REINFORCE on CartPole (or any discrete-action gymnasium env) with step-size-collapse detection.

One job = one (N, α, seed): train with θ ← θ + α ĝ_N for the budget, record per-iteration
metrics, detect collapse (``collapsed`` in the summary = stuck at the END of the budget, see
pglab/collapse.py), and optionally measure gradient quality at checkpoints.

    python experiments/cartpole.py n_trajectories=10 step_size=0.01
    python experiments/cartpole.py -m n_trajectories=1,10,100 step_size=0.001,0.01,0.1
    python experiments/cartpole.py -m experiment=cartpole_grid hydra/launcher=joblib

Writes ``history.parquet`` (per iteration), ``summary.parquet`` (one row), optionally
``gradient_quality.parquet``, and ``metadata.json`` into the job directory.
"""

from __future__ import annotations

import math

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.validate import positive_int

from pglab.collapse import CollapseConfig, CollapseDetector
from pglab.gym import gradient_quality, policies, rollouts
from pglab.gym.training import TrainConfig, train


def train_config(cfg: DictConfig) -> TrainConfig:
    for key in ("iterations", "env_steps"):  # name the config keys users type
        value = cfg.budget[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"budget.{key} must be a positive integer or null, got {value!r}")
    return TrainConfig(
        env_id=cfg.env_id,
        n_trajectories=cfg.n_trajectories,
        step_size=cfg.step_size,
        estimator=cfg.estimator,
        gamma=cfg.gamma,
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        max_iterations=cfg.budget.iterations,
        max_env_steps=cfg.budget.env_steps,
        variance_every=cfg.variance_every,
        deterministic_threshold=cfg.deterministic_threshold,
        seed=cfg.seed,
    )


def identity(cfg: DictConfig) -> dict:
    return {
        "env_id": cfg.env_id,
        "estimator": cfg.estimator,
        "n_trajectories": cfg.n_trajectories,
        "step_size": cfg.step_size,
        "optimizer": cfg.optimizer,
        "seed": cfg.seed,
    }


def measure_gradient_quality(
    cfg: DictConfig, policy, iteration: int, ctx: JobContext
) -> list[dict]:
    gq = cfg.gradient_quality
    reference = gradient_quality.reference_gradient(
        policy,
        cfg.env_id,
        n_episodes=gq.reference_episodes,
        estimator=gq.reference_estimator,
        gamma=cfg.gamma,
        seed=cfg.seed * 7919 + iteration,
        max_episode_steps=cfg.max_episode_steps,
    )
    rows = gradient_quality.batch_gradient_quality(
        policy,
        cfg.env_id,
        reference,
        batch_sizes=list(gq.batch_sizes),
        n_batches=gq.n_batches,
        estimator=cfg.estimator,
        gamma=cfg.gamma,
        seed=cfg.seed * 7919 + iteration + 1,
        max_episode_steps=cfg.max_episode_steps,
    )
    for row in rows:
        row.update(
            checkpoint_iteration=iteration,
            reference_episodes=reference.n_episodes,
            reference_relative_se=reference.relative_se,
        )
    ctx.tracker.log({"gradient_quality/reference_relative_se": reference.relative_se})
    return rows


def experiment(ctx: JobContext) -> JobOutput:
    cfg = ctx.cfg
    config = train_config(cfg)
    config.validate()  # N, α, estimator, optimizer, budget: fail before any work
    collapse_config = CollapseConfig(**OmegaConf.to_container(cfg.collapse))
    detector = CollapseDetector(collapse_config)
    checkpoints: set[int] = set()
    if cfg.gradient_quality.enabled:
        for c in cfg.gradient_quality.checkpoints:
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise ValueError(f"gradient_quality.checkpoints must be iterations >= 0, got {c!r}")
        checkpoints = set(cfg.gradient_quality.checkpoints)
        positive_int("gradient_quality.reference_episodes", cfg.gradient_quality.reference_episodes)
        positive_int("gradient_quality.n_batches", cfg.gradient_quality.n_batches)
    collector = rollouts.RolloutCollector(
        cfg.env_id,
        cfg.n_trajectories,
        seed=cfg.seed,
        max_episode_steps=cfg.max_episode_steps,
    )
    policy = policies.make_policy(
        cfg.policy.kind,
        collector.obs_dim,
        collector.n_actions,
        hidden_sizes=tuple(cfg.policy.hidden_sizes),
        activation=cfg.policy.activation,
        init_scale=cfg.policy.init_scale,
        seed=cfg.seed,
    )
    quality_rows: list[dict] = []
    total = cfg.budget.iterations or 0
    bar = ctx.progress(total or 1, f"N={cfg.n_trajectories} α={cfg.step_size} seed={cfg.seed}")

    def on_iteration(metrics: dict) -> None:
        k = int(metrics["iteration"])
        ctx.tracker.log(
            {
                key: value
                for key, value in metrics.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            },
            step=k,
        )
        bar.update(1 if total else 0, postfix=f"return {metrics['return_mean']:.1f}")
        if k + 1 in checkpoints:  # checkpoint c = after c updates
            quality_rows.extend(measure_gradient_quality(cfg, policy, k + 1, ctx))

    try:
        if 0 in checkpoints:
            quality_rows.extend(measure_gradient_quality(cfg, policy, 0, ctx))
        result = train(config, policy, collector, detector=detector, callback=on_iteration)
    finally:
        bar.close()
        collector.close()

    ident = identity(cfg)
    history = pd.DataFrame(result.history)
    for key, value in ident.items():
        history[key] = value
    summary = {
        **ident,
        **result.summary(),
        "status": result.status,
        "collapse_window_episodes": collapse_config.window_episodes,
        "collapse_window_iterations": collapse_config.window_iterations(config.n_trajectories),
    }
    tables = {"history": history, "summary": pd.DataFrame([summary])}
    if quality_rows:
        quality = pd.DataFrame(quality_rows)  # its n_trajectories is the batch size N
        for key, value in ident.items():
            quality["train_n_trajectories" if key == "n_trajectories" else key] = value
        tables["gradient_quality"] = quality
    scalar_summary = {
        k: v for k, v in summary.items() if isinstance(v, int | float | str | bool) or v is None
    }
    if isinstance(scalar_summary.get("final_return"), float) and math.isnan(
        scalar_summary["final_return"]
    ):
        scalar_summary["final_return"] = None
    return JobOutput(tables=tables, summary=scalar_summary, status=result.status)


@hydra.main(version_base="1.3", config_path="../conf", config_name="cartpole")
def main(cfg: DictConfig) -> str:
    return run_job(cfg, "cartpole", experiment)


if __name__ == "__main__":
    main()
