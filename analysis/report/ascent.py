"""Report section of tabular gradient ascent (``experiments/tabular_ascent.py``).

J(θ_k) is exact at every iterate, so curves are drawn over iterations (each iteration
is one update; the sampled gradient is the only randomness).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis import figures, stats
from analysis.report.common import (
    Section,
    caption_context,
    ci_phrase,
    design_keys,
    seeds_phrase,
    split_by,
    with_context,
)
from pglab.schema import TABULAR_ASCENT

CELL = ["gradient_label", "step_size"]


def ascent_labels(frame: pd.DataFrame) -> pd.Series:
    """Facet label per row: ``exact``, or ``<estimator> (N=<n>)`` for sampled gradients."""
    if "n_trajectories" not in frame.columns:
        return frame["gradient"].astype(str)
    return pd.Series(
        [
            g if g == "exact" or pd.isna(n) or n == 0 else f"{g} (N={int(n)})"
            for g, n in zip(frame["gradient"], frame["n_trajectories"], strict=True)
        ],
        index=frame.index,
    )


def _horizontal_line(value: float | None):
    """A ``facet_lines`` decorator drawing the optimal return J* (nothing when unknown)."""

    def draw(ax, _level, _row):
        if value is None:
            return []
        ax.axhline(value, color="0.3", ls="--", lw=1)
        return [("optimal J*", {"color": "0.3", "ls": "--"})]

    return draw


def _curve_figure(section: Section, part: pd.DataFrame, label: str, slug: str, text) -> None:
    ci = ci_phrase(text["confidence"])
    curves = stats.curve_ci_over_seeds(
        part,
        CELL,
        "iteration",
        "expected_return",
        text["confidence"],
        text["resamples"],
        seed_column="run_dir",
    )
    seeds = seeds_phrase(stats.seed_counts(part, CELL, seed_column="run_dir")["n_seeds"])
    optimal = part["optimal_return"].dropna() if "optimal_return" in part else []
    spec = figures.FacetSpec(
        facet="gradient_label",
        x="iteration",
        hue="step_size",
        rows=(figures.Row("mean", ("ci_low", "ci_high"), "exact J(θ_k)"),),
        xlabel="iteration",
        title=with_context(f"Exact J vs iteration; mean ± {ci} over seeds; {seeds}", label),
        hue_title="step size α",
        facet_title="gradient",
        numeric_hue=True,
        errorbars=False,
    )
    figure = figures.facet_lines(
        curves, spec, decorate=_horizontal_line(float(optimal.iloc[0]) if len(optimal) else None)
    )
    section.add_figure(
        f"ascent_expected_return{slug}",
        figure,
        f"Exact expected return J(θ_k) along the gradient-ascent iterates, one panel per "
        f"gradient kind (exact, or an estimator with its batch size N), one colour per "
        f"step size α; dashed: the optimal return J* over all policies (possibly "
        f"non-stationary, so a stationary softmax policy may stay below it; the best "
        f"stationary return is the history's stationary_return). Bands: {ci}, bootstrap "
        f"over seeds; {seeds}." + caption_context(label),
    )


def ascent_section(
    history: pd.DataFrame,
    summary: pd.DataFrame,
    design: Sequence[str],
    confidence: float,
    n_resamples: int,
) -> Section:
    """Exact J along the iterates (one figure per MDP) and the final returns."""
    section = Section("Tabular ascent: exact J along the iterates")
    runs = summary if not summary.empty else history
    keys = design_keys(runs, TABULAR_ASCENT, design)
    split = [*TABULAR_ASCENT.context, *keys]
    text = {"confidence": confidence, "resamples": n_resamples}
    if not history.empty:
        frame = history.assign(gradient_label=ascent_labels(history))
        section.intro = (
            f"{frame['run_dir'].nunique()} runs; J(θ_k) is computed exactly at every iterate, "
            f"so the only randomness is the sampled gradient; intervals are "
            f"{ci_phrase(confidence)} over seeds."
            + (f" Cells are split by {', '.join(keys)} (differs between runs)." if keys else "")
        )
        for label, slug, part in split_by(frame, split):
            _curve_figure(section, part, label, slug, text)
    if not summary.empty and "final_return" in summary.columns:
        frame = summary.assign(gradient_label=ascent_labels(summary))
        by = [c for c in split if c in frame.columns and frame[c].map(repr).nunique() > 1]
        by = [*by, *CELL]
        cells = stats.mean_ci_over_seeds(
            frame, by, "final_return", confidence, n_resamples, seed_column="run_dir"
        )
        section.add_cells(
            "ascent_final_return",
            f"Final exact return per gradient kind and step size: mean over seeds and "
            f"{ci_phrase(confidence)} (bootstrap over seeds).",
            cells,
            by,
        )
    return section
