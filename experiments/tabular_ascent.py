"""Gradient ascent on a tabular MDP: exact J(θ_k) at every iterate, no evaluation noise.

    python experiments/tabular_ascent.py mdp=chain step_size=10
    python experiments/tabular_ascent.py -m gradient=exact,reinforce step_size=0.1,1,10,100

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
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.tabular import build_logits, build_mdp
from pglab_jobs.validate import finite_positive, positive_int

from pglab.collapse import CollapseDetector
from pglab.tabular.ascent import tabular_ascent, tabular_collapse_config


def experiment(ctx: JobContext) -> JobOutput:
    cfg = ctx.cfg
    step_size = finite_positive("step_size", cfg.step_size)
    n_iterations = positive_int("n_iterations", cfg.n_iterations)
    n_trajectories = positive_int("n_trajectories", cfg.n_trajectories)
    mdp = build_mdp(cfg.mdp)
    logits0 = build_logits(cfg.policy, mdp)
    detector = CollapseDetector(
        tabular_collapse_config(mdp, window=positive_int("collapse_window", cfg.collapse_window))
    )
    with ctx.progress(n_iterations, f"{mdp.name} α={step_size} {cfg.gradient}") as bar:

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
            gradient=cfg.gradient,
            n_trajectories=n_trajectories,
            seed=int(cfg.seed),
            detector=detector,
            callback=on_iteration,
        )
    ident = {
        "mdp": mdp.name,
        "gradient": cfg.gradient,
        "n_trajectories": n_trajectories if cfg.gradient != "exact" else 0,
        "step_size": step_size,
        "seed": int(cfg.seed),
    }
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
    return run_job(cfg, "tabular_ascent", experiment)


if __name__ == "__main__":
    main()
