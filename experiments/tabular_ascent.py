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

``hydra/launcher=batched``: jobs with ``gradient=exact update=pg`` on the same MDP (equal
``mdp.*`` keys; :func:`group_of`) ascend together, one batched oracle call per iteration
for all of them (:func:`pglab.tabular.batched_ascent.batched_tabular_ascent`; any step
sizes, seeds, initial policies and ``n_iterations``). Such a job always runs through that
code, alone with R = 1, so its numbers are bit for bit the same under any launcher and in
any batch. Other gradients and update rules run one by one
(:func:`pglab.tabular.ascent.tabular_ascent`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig
from pglab_jobs.batching import BatchPlan
from pglab_jobs.cli import preflight
from pglab_jobs.config import TabularAscentSettings, identity, validate_tabular_ascent
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.progress import Progress
from pglab_jobs.tabular import build_parameters

from pglab import schema
from pglab.collapse import CollapseDetector
from pglab.result import TrainResult
from pglab.tabular.ascent import GRADIENT_EXACT, tabular_ascent, tabular_collapse_config
from pglab.tabular.batched_ascent import AscentRun, batched_tabular_ascent, exact_pg_ascent
from pglab.tabular.mdp import TabularMDP


@dataclass
class Prepared:
    """One job's ascent, built and ready to run alone or in a batch (nothing computed)."""

    settings: TabularAscentSettings
    mdp: TabularMDP
    logits0: Any  # theta_0: [S, A] logits, or [d] with mdp.features
    detector: CollapseDetector
    callback: Callable[[dict], None]  # per-iteration metrics -> tracker and progress bar
    bar: Progress
    group: tuple | None  # batch group (group_of); None: tabular_ascent, alone

    def run(self) -> AscentRun:
        return AscentRun(
            self.logits0,
            self.settings.step_size,
            self.settings.n_iterations,
            self.detector,
            self.callback,
        )


def group_of(settings: TabularAscentSettings) -> tuple | None:
    """Jobs that can share a batch: ``gradient=exact update=pg`` on the same MDP (its name
    and ``mdp.*`` keys, S, A, features or not); ``None`` for every other job."""
    if settings.gradient != GRADIENT_EXACT or settings.update.name != "pg":
        return None
    mdp = settings.mdp.built
    params = json.dumps(settings.mdp.params, sort_keys=True, default=str)
    return (
        "exact_pg",
        settings.mdp.name,
        params,
        mdp.n_states,
        mdp.n_actions,
        mdp.features is not None,
    )


def prepare(ctx: JobContext) -> Prepared:
    """Build the job's MDP, theta_0, detector and per-iteration callback."""
    settings: TabularAscentSettings = ctx.settings  # checked by validate_tabular_ascent
    mdp = settings.mdp.built
    logits0 = build_parameters(settings.policy, mdp)  # theta_0 [d] for an MDP with features
    detector = CollapseDetector(tabular_collapse_config(mdp, window=settings.collapse_window))
    label = f"{mdp.name} {settings.update.name} step={settings.step_size} {settings.gradient}"
    bar = ctx.progress(settings.n_iterations, label)

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

    return Prepared(settings, mdp, logits0, detector, on_iteration, bar, group_of(settings))


def run_alone(prepared: Prepared) -> TrainResult:
    """One job: through the batched code with R = 1 when it can batch (the numbers it has
    in any batch), :func:`tabular_ascent` otherwise."""
    settings, rule = prepared.settings, prepared.settings.update
    try:
        if prepared.group is not None:
            return exact_pg_ascent(
                prepared.mdp,
                prepared.logits0,
                settings.step_size,
                settings.n_iterations,
                detector=prepared.detector,
                callback=prepared.callback,
            )
        return tabular_ascent(
            prepared.mdp,
            prepared.logits0,
            settings.step_size,
            settings.n_iterations,
            gradient=settings.gradient,
            n_trajectories=settings.n_trajectories,
            seed=settings.seed,
            detector=prepared.detector,
            callback=prepared.callback,
            update=rule.name,
            **(
                {"backtrack": rule.backtrack, "max_backtracks": rule.max_backtracks}
                if rule.name == "trpo"
                else {}
            ),
            **({"damping": rule.damping} if rule.name in ("npg", "trpo") else {}),
        )
    finally:
        prepared.bar.close()


def run_group(
    group: list[Prepared], report: Any = None, on_result: Any = None
) -> list[TrainResult | BaseException]:
    """Jobs of one group (:func:`group_of`) ascended together on the first job's MDP (the
    others' are equal); one result or error each, ``on_result(i, outcome)`` as soon as
    job i's run has ended; ``report(progress)`` every 10 s (iterations, not env steps: the
    exact gradient samples nothing)."""
    try:
        return batched_tabular_ascent(
            group[0].mdp, [p.run() for p in group], on_result=on_result, report=report
        )
    finally:
        for p in group:
            p.bar.close()


def finish(prepared: Prepared, result: TrainResult) -> JobOutput:
    """The job's tables (history, summary) and W&B summary from its result."""
    settings, rule = prepared.settings, prepared.settings.update
    # the exact gradient samples nothing: N is recorded as 0
    exact = settings.gradient == GRADIENT_EXACT
    ident = identity(
        schema.TABULAR_ASCENT,
        settings,
        mdp=prepared.mdp.name,
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


def experiment(ctx: JobContext) -> JobOutput:
    prepared = prepare(ctx)
    return finish(prepared, run_alone(prepared))


def job_type(cfg: DictConfig) -> str:
    """W&B job type and output directories: the app's name."""
    return "tabular_ascent"


# What hydra/launcher=batched needs to run many jobs of this app in one process.
BATCH = BatchPlan(
    experiment="tabular_ascent",
    validate=validate_tabular_ascent,
    job_type=job_type,
    prepare=prepare,
    run_group=run_group,
    run_alone=run_alone,
    finish=finish,
)


@hydra.main(version_base="1.3", config_path="../conf", config_name="tabular_ascent")
def main(cfg: DictConfig) -> str:
    return run_job(
        cfg, "tabular_ascent", experiment, validate=validate_tabular_ascent, job_type=job_type(cfg)
    )


if __name__ == "__main__":
    preflight("tabular_ascent", validate_tabular_ascent)
    main()
