"""Gradient ascent on a tabular MDP: exact J(θ_k) at every iterate, no evaluation noise.

    python experiments/tabular_ascent.py mdp=chain step_size=10
    python experiments/tabular_ascent.py -m gradient=exact,reinforce step_size=0.1,1,10,100
    python experiments/tabular_ascent.py update=npg mdp=short_corridor step_size=0.5

``update=pg|npg|trpo`` (conf/update/): ``step_size`` is α, η or δ (nats). With
gradient=exact npg and trpo use the exact gradient, Fisher, KL and J; with an estimator
(gradient=reinforce ...) they use only the iteration's N trajectories: the sampled Fisher,
``update.damping`` λ, and (trpo) the batch's mean KL and surrogate. An MDP with features (mdp=short_corridor)
is ascended in its feature parameters θ [d]; ``policy.kind`` then sets θ_0 [d] the same way
(uniform: 0, random: scale·N(0,1), near_deterministic: scale at one drawn coordinate).

Writes ``history.parquet`` (per iteration), ``summary.parquet`` and ``metadata.json``.
``suboptimality`` is measured against the non-stationary optimum J* (an upper bound a
stationary policy may not reach), ``suboptimality_stationary`` against the best stationary
return; ``collapsed`` means stuck at the end of the run (thresholds relative to the best
stationary return, ``pglab.tabular.ascent.tabular_collapse_config``).
"""

from __future__ import annotations

import hydra
import pandas as pd
from omegaconf import DictConfig
from pglab_jobs.cli import preflight
from pglab_jobs.config import TabularAscentSettings, identity, validate_tabular_ascent
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.tabular import build_parameters

from pglab import schema
from pglab.collapse import CollapseDetector
from pglab.tabular.ascent import tabular_ascent, tabular_collapse_config


def experiment(ctx: JobContext) -> JobOutput:
    settings: TabularAscentSettings = ctx.settings  # checked by validate_tabular_ascent
    step_size = settings.step_size
    n_iterations = settings.n_iterations
    mdp = settings.mdp.built
    logits0 = build_parameters(settings.policy, mdp)  # theta_0 [d] for an MDP with features
    rule = settings.update
    detector = CollapseDetector(tabular_collapse_config(mdp, window=settings.collapse_window))
    label = f"{mdp.name} {rule.name} step={step_size} {settings.gradient}"
    with ctx.progress(n_iterations, label) as bar:

        def on_iteration(metrics: dict) -> None:
            ctx.tracker.log(
                {
                    k: v
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
                step=int(metrics["iteration"]),
            )
            bar.update(1, postfix=f"J={metrics['expected_return']:.3f}")

        result = tabular_ascent(
            mdp,
            logits0,
            step_size,
            n_iterations,
            gradient=settings.gradient,
            n_trajectories=settings.n_trajectories,
            seed=settings.seed,
            detector=detector,
            callback=on_iteration,
            update=rule.name,
            **(
                {"backtrack": rule.backtrack, "max_backtracks": rule.max_backtracks}
                if rule.name == "trpo"
                else {}
            ),
            **({"damping": rule.damping} if rule.name in ("npg", "trpo") else {}),
        )
    # the exact gradient samples nothing: N is recorded as 0
    exact = settings.gradient == "exact"
    ident = identity(
        schema.TABULAR_ASCENT,
        settings,
        mdp=mdp.name,
        update=rule.name,
        n_trajectories=0 if exact else settings.n_trajectories,
    )
    history = pd.DataFrame(result.history).assign(**ident)
    last = result.history[-1]
    summary = {
        **ident,
        **result.summary(),  # collapsed = stuck at the end (see pglab/collapse.py)
        "status": result.status,
        "optimal_return": last["optimal_return"],  # J*, possibly non-stationary
        "stationary_return": last["stationary_return"],  # best stationary J (reachable)
        "final_suboptimality_stationary": last["suboptimality_stationary"],
    }
    return JobOutput(
        tables={"history": history, "summary": pd.DataFrame([summary])},
        summary=summary,
        status=result.status,
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="tabular_ascent")
def main(cfg: DictConfig) -> str:
    return run_job(cfg, "tabular_ascent", experiment, validate=validate_tabular_ascent)


if __name__ == "__main__":
    preflight("tabular_ascent", validate_tabular_ascent)
    main()
