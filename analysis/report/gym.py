"""Report sections of gymnasium training (``experiments/cartpole.py``, any ``env_id``).

One section per environment id, titled with it; figure and table names start with the
env's slug (``pglab.schema.env_slug``: ``cartpole_...`` for CartPole-v1,
``acrobot_...`` for Acrobot-v1). Learning curves are drawn over cumulative environment
steps (the budget's unit), not iterations: runs of one cell need different numbers of
iterations for the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis import figures, stats
from analysis.report.common import (
    CellCount,
    Section,
    caption_context,
    ci_phrase,
    design_keys,
    seeds_phrase,
    split_by,
    with_context,
)
from pglab.schema import CARTPOLE, env_slug

#: The CartPole collapse detector's measured error rates, stated under the phase diagram.
#: Re-measure with ``python benchmarks/bench_collapse_detector.py`` after changing
#: pglab.collapse or its defaults in conf/cartpole.yaml.
COLLAPSE_VALIDATION = (
    "Detector validation (benchmarks/bench_collapse_detector.py: N ∈ {1, 2, 5, 10, 20} × "
    "α ∈ {1e-4, 1e-3, 1e-2} × 3 seeds, verdict after B = 10^5 env steps vs. still stuck "
    "after 3B): precision 21/23 = 0.91 (95% CI [0.72, 0.99]), recall 21/21 = 1.00 "
    "(95% CI [0.84, 1.00])."
)
#: Identity columns that split a section into separate figures when they vary (the env
#: id splits sections); N and α are the axes of every figure.
CONTEXT = [c for c in CARTPOLE.context if c != "env_id"]
#: The axes of every figure: the identity keys that are neither context nor the seed (N, α).
CELL = [k for k in CARTPOLE.identity if k not in CARTPOLE.context and k != "seed"]
STEPS = "env_steps"  # cumulative real environment steps (the budget's unit)
CURVE_POINTS = 200


def env_prefixes(env_ids: Sequence[str]) -> dict[str, str]:
    """File-name prefix per env id: its slug, or the slugged full id where slugs collide."""
    slugs = {env: env_slug(env) for env in env_ids}
    clash = {s for s in slugs.values() if list(slugs.values()).count(s) > 1}
    return {
        env: (s if s not in clash else env_slug(env.replace("-v", "_v")))
        for env, s in slugs.items()
    }


def gym_cells(
    summary: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000
) -> pd.DataFrame:
    """Final return and AUC per (N, α): mean over runs, bootstrap CI over runs.

    Args:
        summary: ``Results.cartpole_summary`` (one row per run) for one context.
    Returns:
        ``n_trajectories, step_size, n_seeds, final_return, final_return_ci_low,
        final_return_ci_high, auc, auc_ci_low, auc_ci_high``.
    """
    out = stats.seed_counts(summary, CELL, seed_column="run_dir")
    for value in ("final_return", "auc"):
        part = stats.mean_ci_over_seeds(
            summary, CELL, value, confidence, n_resamples, seed_column="run_dir"
        ).rename(
            columns={"mean": value, "ci_low": f"{value}_ci_low", "ci_high": f"{value}_ci_high"}
        )
        out = out.merge(part.drop(columns="n_seeds"), on=CELL, how="left")
    return out.sort_values(CELL).reset_index(drop=True)


def return_curves(part: pd.DataFrame, cell: list[str], text: dict) -> pd.DataFrame:
    """Mean return over env steps per cell with its CI over seeds: each run's history is
    put on a common grid of CURVE_POINTS env-step values, then pooled per cell."""
    on_grid = stats.step_resample(
        part, cell, STEPS, "return_mean", CURVE_POINTS, seed_column="run_dir"
    )
    return stats.curve_ci_over_seeds(
        on_grid,
        cell,
        STEPS,
        "return_mean",
        text["confidence"],
        text["resamples"],
        seed_column="run_dir",
    )


def _learning_curves(
    section: Section, part: pd.DataFrame, names: tuple[str, str], text: dict
) -> None:
    prefix, slug = names
    label, ci, env = text["label"], text["ci"], text["env"]
    curves = return_curves(part, CELL, text)
    by = [*text["context"], *CELL]
    counts = stats.seed_counts(part, by, seed_column="run_dir")
    seeds = seeds_phrase(counts["n_seeds"])
    spec = figures.FacetSpec(
        facet="n_trajectories",
        x=STEPS,
        hue="step_size",
        rows=(figures.Row("mean", ("ci_low", "ci_high"), "mean episode return"),),
        xlabel="environment steps (cumulative)",
        title=with_context(f"{env} learning curves: mean ± {ci} over seeds; {seeds}", label),
        hue_title="step size α",
        numeric_hue=True,
        errorbars=False,
    )
    section.add_figure(
        f"{prefix}_learning_curves{slug}",
        figures.facet_lines(curves, spec),
        f"{env}: mean episode return (each iteration's batch mean, return_mean) against the "
        f"cumulative environment steps, averaged over seeds, one panel per batch size N, one "
        f"colour per step size α. Each run is read as a step function of its steps (its "
        f"latest iteration's return) on {CURVE_POINTS} points over the steps every run of the "
        f"cell reached; bands: {ci}, percentile bootstrap over seeds at each point; "
        f"{seeds}." + caption_context(label),
    )
    section.add_table(
        f"{prefix}_learning_curves{slug}",
        "Learning-curve numbers: mean and CI over seeds per (N, α, env steps); n_seeds "
        "counts the runs with a value at that point.",
        curves,
    )
    if text["count_curves"]:  # else the returns table counts the same runs
        section.counts.append(CellCount(f"{prefix}_learning_curves{slug}", by, counts))


def _return_figures(section: Section, cells: pd.DataFrame, names: tuple[str, str], text) -> None:
    prefix, slug = names
    seeds, label, env = seeds_phrase(cells["n_seeds"]), text["label"], text["env"]
    for value, what in (
        ("final_return", "final return (mean of the last ≤10 iterations)"),
        ("auc", "AUC (mean return over all iterations)"),
    ):
        figure = figures.heatmap(
            cells,
            row="n_trajectories",
            col="step_size",
            value=value,
            title=with_context(f"{env} {what}: mean over seeds; {seeds}", label),
            cbar_label=value.replace("_", " "),
        )
        section.add_figure(
            f"{prefix}_{value}_heatmap{slug}",
            figure,
            f"{env}: heatmap of the {what} per batch size N (rows) and step size α "
            f"(columns): mean over seeds ({seeds}); the table below gives its "
            f"{text['ci']} (bootstrap over seeds)." + caption_context(label),
        )
    section.add_cells(
        f"{prefix}_returns{slug}",
        f"Final return and AUC per (N, α): mean over seeds and {text['ci']} "
        f"(percentile bootstrap over seeds; NaN with one seed).",
        cells,
        [*text["context"], *CELL],
    )


def _collapse_figure(section: Section, part: pd.DataFrame, names: tuple[str, str], text) -> None:
    prefix, slug = names
    label, env, ci = text["label"], text["env"], text["ci"]
    windows = sorted({int(w) for w in part.get("collapse_window_episodes", pd.Series()).dropna()})
    window = "/".join(map(str, windows)) or "the detector's window of"
    cartpole = env.startswith("CartPole")
    poor_note = " (default 30; random play scores about 22)" if cartpole else ""
    collapse = stats.collapse_table(part, CELL, confidence=text["confidence"])
    for column in reversed(text["context"]):
        collapse.insert(0, column, [part[column].iloc[0]] * len(collapse))
    seeds = seeds_phrase(collapse["n"])
    collapse["probability_text"] = [
        f"{k}/{n}" for k, n in zip(collapse["k"], collapse["n"], strict=True)
    ]
    figure = figures.heatmap(
        collapse,
        row="n_trajectories",
        col="step_size",
        value="probability",
        cmap="rocket_r",
        vmin=0,
        vmax=1,
        cbar_label="P(stuck at the end)",
        title=with_context(
            f"{env} step-size phase diagram: P(collapsed = stuck at the end of the budget), "
            f"k/n runs; {seeds}",
            label,
        ),
    )
    section.add_figure(
        f"{prefix}_collapse{slug}",
        figure,
        f"{env} step-size phase diagram: the fraction of runs that ended their budget "
        f"collapsed, i.e. stuck (over the last {window} episodes: mean return at or below "
        f"collapse.poor_return{poor_note} and a near-deterministic policy) or diverged, per batch size N (rows) and "
        f"step size α (columns), annotated k/n (collapsed runs / runs; {seeds}); runs that "
        f"dipped and recovered are not counted. The table gives the exact (Clopper–Pearson) "
        f"{ci} of each probability."
        + (f" {COLLAPSE_VALIDATION}" if cartpole else "")
        + caption_context(label),
    )
    section.add_cells(
        f"{prefix}_collapse{slug}",
        f"Collapse (stuck at the end of the budget, or diverged) counts per (N, α) with "
        f"the Clopper–Pearson {ci} of the probability.",
        collapse.drop(columns="probability_text"),
        [*text["context"], *CELL],
        n="n",
    )


def _quality_cells(part: pd.DataFrame, by: list[str], text: dict) -> pd.DataFrame:
    merged = None
    for value in ("cosine", "relative_error"):
        cell = stats.mean_ci_over_seeds(
            part, by, value, text["confidence"], text["resamples"], seed_column="run_dir"
        ).rename(
            columns={"mean": value, "ci_low": f"{value}_ci_low", "ci_high": f"{value}_ci_high"}
        )
        merged = (
            cell
            if merged is None
            else merged.merge(cell.drop(columns="n_seeds"), on=by, how="outer")
        )
    return merged


def _quality_figures(section: Section, quality: pd.DataFrame, prefix: str, text: dict) -> None:
    context = [*text["context_columns"], "n_trajectories"]
    for label, slug, part in split_by(quality, context):
        facet = "step_size" if "step_size" in part.columns else "checkpoint_iteration"
        by = [facet, "checkpoint_iteration", "batch_n_trajectories"]
        merged = _quality_cells(part, by, text)
        seeds = seeds_phrase(merged["n_seeds"])
        spec = figures.FacetSpec(
            facet=facet,
            x="batch_n_trajectories",
            hue="checkpoint_iteration",
            rows=(
                figures.Row(
                    "cosine", ("cosine_ci_low", "cosine_ci_high"), "cos(ĝ_N, reference ∇J)"
                ),
                figures.Row(
                    "relative_error",
                    ("relative_error_ci_low", "relative_error_ci_high"),
                    "‖ĝ_N − ref‖ / ‖ref‖",
                    log=True,
                ),
            ),
            logx=True,
            xlabel="batch size N (trajectories)",
            hue_title="checkpoint (iteration)",
            numeric_hue=True,
            title=with_context(
                f"{text['env']} gradient quality vs batch size; {text['ci']} over runs; {seeds}",
                label,
            ),
        )
        section.add_figure(
            f"{prefix}_gradient_quality{slug}",
            figures.facet_lines(merged, spec),
            f"{text['env']}: gradient quality at training checkpoints: cosine similarity (top) "
            f"and relative error (bottom, log) between a batch estimate ĝ_N and a large-sample "
            f"reference gradient, against the batch size N, one colour per checkpoint. Batches "
            f"are averaged within a run first; error bars: {text['ci']}, bootstrap over runs; "
            f"{seeds}." + caption_context(label),
        )
        section.add_cells(
            f"{prefix}_gradient_quality{slug}",
            "Gradient-quality numbers per (checkpoint, batch N): mean over runs of the "
            "per-run mean over batches, with the CI.",
            merged,
            by,
        )


def _intro(runs: pd.DataFrame, confidence: float, keys: Sequence[str]) -> str:
    n_values = ", ".join(figures.fmt(v) for v in figures.levels(runs["n_trajectories"]))
    alphas = ", ".join(figures.fmt(v) for v in figures.levels(runs["step_size"]))
    return (
        f"{runs['run_dir'].nunique()} runs; N ∈ {{{n_values}}}, α ∈ {{{alphas}}}; intervals "
        f"are {ci_phrase(confidence)} from a bootstrap over seeds (runs), never over "
        f"episodes."
        + (f" Cells are split by {', '.join(keys)} (differs between runs)." if keys else "")
    )


def gym_section(
    env: str, prefix: str, tables: dict[str, pd.DataFrame], design: Sequence[str], text: dict
) -> Section:
    """The section of one env id: learning curves, return heatmaps, collapse, quality."""
    history, summary = tables["history"], tables["summary"]
    runs = summary if not summary.empty else history.drop_duplicates("run_dir")
    keys = design_keys(runs, CARTPOLE, design)
    section = Section(
        f"{env}: step size × batch size", intro=_intro(runs, text["confidence"], keys)
    )
    text = {**text, "env": env, "ci": ci_phrase(text["confidence"])}
    split = [*CONTEXT, *keys]
    if not history.empty:
        for label, slug, part in split_by(history, split):
            context = [c for c in ["env_id", *split] if c in part.columns]
            part_text = {**text, "label": label, "context": context, "count_curves": summary.empty}
            _learning_curves(section, part, (prefix, slug), part_text)
    if not summary.empty:
        for label, slug, part in split_by(summary, split):
            context = [c for c in ["env_id", *split] if c in part.columns]
            cells = gym_cells(part, text["confidence"], text["resamples"])
            for column in reversed(context):
                cells.insert(0, column, [part[column].iloc[0]] * len(cells))
            part_text = {**text, "label": label, "context": context}
            _return_figures(section, cells, (prefix, slug), part_text)
            if "collapsed" in part.columns:
                _collapse_figure(section, part, (prefix, slug), part_text)
    quality = tables["gradient_quality"]
    if not quality.empty:
        _quality_figures(section, quality, prefix, {**text, "context_columns": split})
    return section


def gym_sections(
    history: pd.DataFrame,
    summary: pd.DataFrame,
    quality: pd.DataFrame,
    design: dict[str, Sequence[str]],
    text: dict,
) -> list[Section]:
    """One :func:`gym_section` per env id present, in env-id order."""
    frames = {"history": history, "summary": summary, "gradient_quality": quality}
    envs = sorted({e for f in frames.values() if not f.empty for e in f["env_id"].dropna()})
    prefixes = env_prefixes(envs)
    keys = sorted(
        {k for name in ("cartpole_history", "cartpole_summary") for k in design.get(name, ())}
    )
    sections = []
    for env in envs:
        tables = {name: (f[f["env_id"] == env] if not f.empty else f) for name, f in frames.items()}
        sections.append(gym_section(env, prefixes[env], tables, keys, text))
    return sections
