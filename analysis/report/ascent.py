"""Report section of tabular gradient ascent (``experiments/tabular_ascent.py``).

J(θ_k) is exact at every iterate, so curves are drawn over iterations (each iteration
is one update; the sampled gradient is the only randomness).

Convergence rates (issue 10), for runs on the exact gradient: the suboptimality
``J* − J(θ_t)`` against ``t`` on log-log axes, one colour per update rule, and per run the
fitted rates (:func:`analysis.stats.convergence_rates`, the least-squares fits of
``pglab.tabular.natural.fit_sublinear_rate`` / ``fit_linear_rate``): the exponent of
``gap_t ~ C t^slope`` (PG on a bandit: −1, Mei et al. 2020) and the contraction per step
of ``gap_t ~ exp(a + b t)`` (exact NPG on a bandit: ``e^(−ηΔ)``), both on the window
:func:`rate_window` chooses. Runs on a sampled gradient (any rule) are drawn in the same
figure, labelled with their estimator and N, but not fitted: their gap is noisy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import figures, stats
from analysis.report.common import (
    Section,
    caption_context,
    ci_phrase,
    design_keys,
    seeds_phrase,
    split_by,
    varying,
    with_context,
)
from pglab.schema import TABULAR_ASCENT

CELL = ["gradient_label", "step_size"]
#: Gaps at or below ROUND_OFF * max(1, |J*|) are round-off: a rate window ends before them.
ROUND_OFF = 1e-9
#: A window whose gap shrinks by less than this factor (end / start) is a stall or a
#: plateau, not a rate (a C/t gap halves over a window [T/2, T)).
STALL = 0.9
#: Fewest iterates in a rate window.
MIN_POINTS = 4
#: The gaps tried, in order: to J* (any policy), then to the best stationary return (a
#: stationary softmax policy may not reach J* in a finite-horizon MDP).
TARGETS = (("suboptimality", "optimal_return"), ("suboptimality_stationary", "stationary_return"))


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
    exact = history[history["gradient"] == "exact"] if not history.empty else history
    # rates compare update rules (issue 10): a study of plain pg alone keeps its old section;
    # sampled runs are drawn beside the exact ones but only exact runs are fitted
    if not history.empty and (history["update"] != "pg").any():
        rate_split = [c for c in split if c not in ("mdp", "update")]
        for label, slug, part in split_by(history, rate_split):
            _rate_figure(section, part, label, slug, text)
        if not exact.empty:
            _rate_cells(section, exact, varying(exact, rate_split))
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


def rate_window(gaps: np.ndarray, scale: float) -> tuple[int, int, str]:
    """``(start, stop, status)``: the iterates ``[start, stop)`` a rate is fitted on.

    ``gaps[t]`` is ``J_target − J(θ_t)``, ``t = 0 .. K−1``. The window is the second half
    (in t) of the iterates ``1 .. T−1`` before the gap first reaches round-off
    (``<= ROUND_OFF * max(1, scale)``): late enough to skip the transient (and the plateau
    of a bad start), early enough to stay above round-off. ``status`` is ``"ok"``,
    ``"stalls"`` (the gap shrinks by less than :data:`STALL` over the window: a plateau,
    or a limit below the target) or ``"too few points"``.
    """
    floor = ROUND_OFF * max(1.0, abs(scale))
    below = np.nonzero(~(gaps[1:] > floor))[0]
    end = int(below[0]) + 1 if len(below) else len(gaps)
    start = max(1, (1 + end) // 2)
    if end - start < MIN_POINTS:
        return start, end, "too few points"
    if gaps[end - 1] > STALL * gaps[start]:
        return start, end, "stalls"
    return start, end, "ok"


def run_rates(run: pd.DataFrame) -> dict:
    """Fitted rates of one run (its history rows, any order).

    Each gap of :data:`TARGETS` gets a :func:`rate_window`; the rates are fitted on the
    gap with the smaller final value among those whose window is ``"ok"`` (a run converging
    to the best stationary return below J* has a J* gap that levels off, and its
    stationary gap is the one that converges). ``status`` says why there is no rate
    otherwise (the first target's). ``constant``: ``t gap_t`` at the window's last
    iterate (PG on an A-armed bandit: ``-> (A - 1) / (A α)``).
    """
    run = run.sort_values("iteration")
    empty = {"exponent": math.nan, "contraction": math.nan, "constant": math.nan}
    found = []
    for column, reference in TARGETS:
        if column not in run.columns or run[column].isna().all():
            continue
        gaps = run[column].to_numpy(dtype=float)
        scale = float(run[reference].iloc[-1]) if reference in run.columns else 1.0
        start, stop, status = rate_window(gaps, scale)
        found.append(
            {
                "target": column,
                "window": f"[{start}, {stop})",
                "status": status,
                "final_gap": float(gaps[-1]),
                "_fit": (gaps, start, stop),
            }
        )
    if not found:
        return {"target": "", "window": "", "status": "no gap", "final_gap": math.nan, **empty}
    ok = [f for f in found if f["status"] == "ok"]
    if not ok:
        return {k: v for k, v in found[0].items() if k != "_fit"} | empty
    best = min(ok, key=lambda f: f["final_gap"])
    gaps, start, stop = best.pop("_fit")
    return best | stats.convergence_rates(gaps, start, stop)


def rate_table(history: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per run (``run_dir``) with the cell columns ``by``: :func:`run_rates`."""
    rows = []
    for run_dir, run in history.groupby("run_dir", sort=True):
        rows.append({**{c: run[c].iloc[0] for c in by}, "run_dir": run_dir, **run_rates(run)})
    columns = [*by, "run_dir", "target", "window", "status", "exponent", "contraction"]
    frame = pd.DataFrame(rows, columns=[*columns, "constant", "final_gap"])
    return frame.sort_values([*by, "run_dir"]).reset_index(drop=True)


def _rate_figure(section: Section, part: pd.DataFrame, label: str, slug: str, text) -> None:
    frame = part[(part["iteration"] >= 1) & (part["suboptimality"] > 0)]
    if frame.empty:
        return
    frame = frame.assign(
        rule=[
            f"{u} ({figures.fmt(s)})" + ("" if g == "exact" else f", {g}")
            for u, s, g in zip(
                frame["update"], frame["step_size"], ascent_labels(frame), strict=True
            )
        ]
    )
    by = ["mdp", "rule"]
    curves = stats.curve_ci_over_seeds(
        frame,
        by,
        "iteration",
        "suboptimality",
        text["confidence"],
        text["resamples"],
        seed_column="run_dir",
    )
    seeds = seeds_phrase(stats.seed_counts(frame, by, seed_column="run_dir")["n_seeds"])
    spec = figures.FacetSpec(
        facet="mdp",
        x="iteration",
        hue="rule",
        rows=(figures.Row("mean", None, "J* − J(θ_t)", log=True),),
        logx=True,
        xlabel="iteration t",
        title=with_context(f"Suboptimality vs iteration per update rule; {seeds}", label),
        hue_title="rule (step)",
        errorbars=False,
    )
    section.add_figure(
        f"ascent_rates{slug}",
        figures.facet_lines(curves, spec),
        "Suboptimality J* − J(θ_t) against the iteration t on log-log axes, one "
        "panel per MDP, one colour per update rule (its step in parentheses: α for pg, η "
        "for npg, δ in nats for trpo; a sampled run adds its estimator and N, and is the "
        "mean gap over its seeds, not fitted in the rates table: noisy). A C/t rate (plain PG) is a line of slope −1; a "
        "linear rate (NPG) bends down. A curve that levels off is a plateau (a bad start) or "
        "a limit below J* (a stationary or feature-restricted policy cannot reach J*); gaps "
        f"at round-off are not drawn. J is exact: point estimates (mean over runs, no "
        f"interval); {seeds}." + caption_context(label),
    )


def _rate_cells(section: Section, history: pd.DataFrame, split: list[str]) -> None:
    exact = history[history["gradient"] == "exact"]
    if exact.empty or "suboptimality" not in exact.columns:
        return
    by = [c for c in ["mdp", *split, "update", "step_size"] if c in exact.columns]
    by = list(dict.fromkeys(by))
    rates = rate_table(exact, by)
    cells = (
        rates.groupby(by, sort=True, dropna=False)
        .agg(
            n_seeds=("run_dir", "nunique"),
            target=("target", "first"),
            window=("window", "first"),
            status=("status", lambda v: ", ".join(sorted(set(v)))),
            exponent=("exponent", "median"),
            contraction=("contraction", "median"),
            constant=("constant", "median"),
            final_gap=("final_gap", "median"),
        )
        .reset_index()
    )
    section.add_cells(
        "ascent_rates",
        "Fitted convergence rates of exact ascent per MDP and rule (median over runs; sampled "
        "runs are drawn in the figure but not fitted: their gap is noisy): "
        "exponent = slope of log gap on log t (PG's C/t: −1), contraction = exp(slope of "
        "log gap on t), the factor the gap shrinks by per step (NPG on a bandit: e^(−ηΔ)); "
        "constant = t·gap at the window's end (PG on an A-armed bandit: → (A − 1)/(A α)); "
        "both fitted on the window (iterations) chosen by rate_window: the second half of "
        "the iterates before the gap reaches round-off. target: the gap fitted (J* − J, or "
        "the best-stationary-return gap when J* is out of a stationary policy's reach); "
        "status stalls: the gap shrank by less than 10% over the window (a plateau or a "
        "limit below the target), no rate.",
        cells,
        by,
    )
