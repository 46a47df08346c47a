"""Estimator study on tabular MDPs: bias, variance, MSE, cosine and SNR against the exact gradient.

For each batch size N and each estimator, K independent batches of N trajectories give
K estimates ĝ_N; ``pglab.stats.gradient_estimate_metrics`` compares them with the exact
∇J from ``pglab.tabular.exact``. All estimators share the same sampled trajectories (common
random numbers), so their differences are not sampling noise between estimators.

    python experiments/estimator_variance.py                       # chain MDP, every estimator
    python experiments/estimator_variance.py -m mdp=chain,frozenlake estimator=reinforce,reward_to_go
    python experiments/estimator_variance.py mdp=file mdp.path=examples/mdps/two_state.yaml

Writes ``<run_dir>/results.parquet`` (one row per estimator × N) and ``metadata.json``.
"""

from __future__ import annotations

import hydra
import pandas as pd
from omegaconf import DictConfig
from pglab_jobs.cli import preflight
from pglab_jobs.config import EstimatorVarianceSettings, validate_estimator_variance
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.tabular import build_logits

from pglab import estimators, stats
from pglab.tabular import (
    estimates,
    exact,
)


def study(ctx: JobContext) -> JobOutput:
    settings: EstimatorVarianceSettings = ctx.settings  # checked by validate_estimator_variance
    names = list(settings.estimator)
    batch_sizes = list(settings.n_trajectories)
    n_repetitions = settings.n_repetitions
    n_resamples = settings.n_resamples
    seed = settings.seed
    mdp = settings.mdp.built
    logits = build_logits(settings.policy, mdp)
    truth = exact.solve(mdp, logits)
    true_gradient = truth.gradient.flatten()

    rows = []
    # W&B charts every metric against N (W&B's own _step is the index of N)
    ctx.tracker.define_x_axis("n_trajectories")
    with ctx.progress(len(batch_sizes), f"{mdp.name}: batch sizes") as bar:
        for index, n in enumerate(sorted(batch_sizes)):
            # seeded by (seed, N): a batch size gives the same numbers whatever the grid
            batches = estimates.batch_estimates(
                mdp, logits, n, n_repetitions, names, seed=seed * 1_000_003 + n
            )
            logged = {"n_trajectories": n}
            for name in names:
                metrics = stats.gradient_estimate_metrics(
                    batches[name].reshape(n_repetitions, -1),
                    true_gradient,
                    confidence=settings.confidence,
                    seed=seed,
                    n_resamples=n_resamples,
                    constant=estimators.is_constant(name, n),
                )
                rows.append({"mdp": mdp.name, "estimator": name, "n_trajectories": n, **metrics})
                logged.update(
                    {
                        f"{name}/{key}": metrics[key]
                        for key in (
                            "relative_bias",
                            "total_variance",
                            "mse",
                            "cosine_mean",
                            "snr",
                            "p_value",
                            "relative_bias_ci_low",
                            "relative_bias_ci_high",
                        )
                    }
                )
            ctx.tracker.log(logged, step=index)
            bar.update(1, postfix=f"N={n}")

    table = pd.DataFrame(rows)
    table["seed"] = seed
    table["gamma"] = mdp.gamma
    table["horizon"] = mdp.horizon
    table["n_states"] = mdp.n_states
    table["n_actions"] = mdp.n_actions
    table["policy_kind"] = settings.policy.kind
    table["true_return"] = truth.expected_return
    table["true_gradient"] = [true_gradient.tolist()] * len(table)
    summary = {
        "true_return": truth.expected_return,
        "true_gradient_norm": float(true_gradient.norm()),
    }
    for name, group in table.groupby("estimator"):
        # exactly-zero variances (e.g. the batch-mean baseline at N = 1) have no logarithm
        positive = group[group["total_variance"] > 0]
        if positive["n_trajectories"].nunique() >= 2:
            slope = stats.loglog_slope(positive["n_trajectories"], positive["total_variance"])
            summary[f"{name}/variance_slope"] = slope
    return JobOutput(tables={"results": table}, summary=summary, wandb_tables=("results",))


@hydra.main(version_base="1.3", config_path="../conf", config_name="estimator_variance")
def main(cfg: DictConfig) -> str:
    return run_job(cfg, "estimator_variance", study, validate=validate_estimator_variance)


if __name__ == "__main__":
    preflight("estimator_variance", validate_estimator_variance)
    main()
