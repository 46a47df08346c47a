"""Report section "step-size control": update rules on one phase diagram (issue 10).

For gymnasium training results that hold more than one update rule, the rules are compared
with everything else equal (env, estimator, budget):

* a **rule** is ``update`` (pg, npg, trpo, ppo), and for ``update=pg`` with an optimizer
  other than sgd, its own rule ``pg+<optimizer>`` (the adaptive learning rates adam,
  rmsprop, adagrad; momentum);
* the **phase diagram** per rule: rows N, columns the rule's step parameter ``step_size``
  (α, η, δ in nats, or a learning rate), cells the collapse fraction k/n with its
  Clopper–Pearson interval and the final return with its bootstrap interval over seeds;
* the **common unit**: the recorded KL between successive policies (``kl``, nats) of a
  run's first update, KL(π_0 ‖ π_1) from the seed's initial policy, then the median over
  the cell's runs — a step of α = 1e-2 and a step of δ = 1e-2 read in the same units there;
* **return vs env steps per rule at its best setting** (per N, the step with the highest
  mean final return);
* a **verdict** per rule against plain pg (sgd) at the same N (:func:`boundary_verdicts`).

Collapse boundary at N: the smallest step on the grid whose collapse fraction is >= 1/2
(``None`` when no step of the grid reaches it: the boundary is off the grid). A rule moved
the boundary when the pooled collapse counts over the steps *between* the two boundaries
differ with disjoint Clopper–Pearson intervals; overlapping intervals say "cannot decide".
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
    with_context,
)
from analysis.report.gym import COLLAPSE_VALIDATION, env_prefixes, return_curves
from pglab.schema import CARTPOLE

RULE = "rule"
CELL = [RULE, "n_trajectories", "step_size"]
#: Identity columns besides the rule's that split the comparison (rules are compared with
#: these equal); update and optimizer make up the rule.
CONTEXT = [c for c in CARTPOLE.context if c not in ("env_id", "update", "optimizer")]
STEPS = "env_steps"
CURVE_POINTS = 200
REFERENCE = "pg"
#: What step_size means per update rule (captions).
STEP_MEANING = {
    "pg": "α",
    "npg": "η",
    "trpo": "δ (nats)",
    "ppo": "learning rate",
}


def rule_labels(frame: pd.DataFrame) -> pd.Series:
    """Rule per row: ``update``, or ``pg+<optimizer>`` for update=pg with a stateful optimizer."""
    optimizer = (
        frame["optimizer"] if "optimizer" in frame.columns else pd.Series("sgd", frame.index)
    )
    return pd.Series(
        [
            u if u != "pg" or o in ("sgd", None) or pd.isna(o) else f"pg+{o}"
            for u, o in zip(frame["update"], optimizer, strict=True)
        ],
        index=frame.index,
    )


def _rule_order(rules: Sequence[str]) -> list[str]:
    base = ["pg", "npg", "trpo", "ppo"]
    return [r for r in base if r in rules] + sorted(r for r in set(rules) if r not in base)


#: Updates per run whose KL measures the step in common units (:func:`per_run_kl`): the
#: first, KL(π_0 ‖ π_1), taken by every rule from the same initial policy of a seed.
KL_UPDATES = 1


def per_run_kl(history: pd.DataFrame, first: int = KL_UPDATES) -> pd.DataFrame:
    """``run_dir`` + ``median_kl``: the median of a run's recorded KL(π_k ‖ π_k+1) (nats)
    over its first ``first`` updates (iterations 0 .. first-1; default: the first update).

    The first update because every rule takes it from the same policy π_0 (the seed's
    initial network), so the KL shows what the rule's step parameter does to one policy; a
    run that collapses does so within a few updates (a deterministic policy then moves by
    a KL of ~0 per update, which would hide the steps that collapsed it).
    """
    frame = history.dropna(subset=["kl"])
    frame = frame[frame["iteration"] < first]
    return frame.groupby("run_dir", sort=True)["kl"].median().rename("median_kl").reset_index()


def phase_cells(
    summary: pd.DataFrame,
    history: pd.DataFrame | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
) -> pd.DataFrame:
    """One row per (rule, N, step): collapse counts and rates, final return, median KL.

    Args:
        summary: one row per run with ``rule`` (:func:`rule_labels`), ``n_trajectories``,
            ``step_size``, ``collapsed``, ``final_return``, ``run_dir``.
        history: one row per (run, iteration) with ``kl``; ``None``: no KL columns.
    Returns:
        ``rule, n_trajectories, step_size, k, n, probability, ci_low, ci_high`` (collapse,
        Clopper–Pearson), ``final_return, final_return_ci_low, final_return_ci_high``
        (mean and percentile bootstrap over runs), ``n_seeds`` and, with a history,
        ``median_kl`` (median over the cell's runs of each run's first-update KL,
        :func:`per_run_kl`).
    """
    cells = stats.collapse_table(summary, CELL, confidence=confidence)
    returns = stats.mean_ci_over_seeds(
        summary, CELL, "final_return", confidence, n_resamples, seed_column="run_dir"
    ).rename(
        columns={
            "mean": "final_return",
            "ci_low": "final_return_ci_low",
            "ci_high": "final_return_ci_high",
        }
    )
    cells = cells.merge(returns, on=CELL, how="left")
    if history is not None and not history.empty and "kl" in history.columns:
        kl = per_run_kl(history).merge(summary[[*CELL, "run_dir"]], on="run_dir")
        median = kl.groupby(CELL, sort=True)["median_kl"].median().reset_index()
        cells = cells.merge(median, on=CELL, how="left")
    return cells.sort_values(CELL).reset_index(drop=True)


def collapse_boundary(cells: pd.DataFrame) -> float | None:
    """Smallest ``step_size`` of ``cells`` (one rule, one N) with collapse fraction >= 1/2."""
    hit = cells[cells["probability"] >= 0.5]
    return float(hit["step_size"].min()) if len(hit) else None


def _pooled(cells: pd.DataFrame, steps: Sequence[float], confidence: float) -> dict:
    part = cells[cells["step_size"].isin(list(steps))]
    k, n = int(part["k"].sum()), int(part["n"].sum())
    return {"k": k, "n": n, **stats.binomial_rate(k, n, confidence)}


def _decades(low: float, high: float) -> float:
    return math.log10(high / low)


def boundary_verdicts(cells: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (rule other than pg, N): did the rule move pg's collapse boundary at that N?

    Args:
        cells: :func:`phase_cells` (every rule, every N).
    Returns:
        one row per (rule, N): ``rule, n_trajectories, pg_boundary, rule_boundary``
        (``NaN`` = off the grid: no step reached collapse fraction 1/2), ``moved`` (the two
        boundaries differ), ``shift_decades`` (log10 of the ratio of the boundaries; a
        lower bound on its size when one is off the grid, see ``shift_text``), the pooled collapse counts over the steps between the two
        boundaries ``pg_k, pg_n, rule_k, rule_n`` with their Clopper–Pearson intervals,
        ``decided`` (the two intervals are disjoint) and ``verdict`` (one line).
    """
    rows = []
    rules = [r for r in _rule_order(list(cells[RULE].unique())) if r != REFERENCE]
    for rule in rules:
        for n_traj in sorted(cells.loc[cells[RULE] == rule, "n_trajectories"].unique()):
            mine = cells[(cells[RULE] == rule) & (cells["n_trajectories"] == n_traj)]
            ref = cells[(cells[RULE] == REFERENCE) & (cells["n_trajectories"] == n_traj)]
            if ref.empty:
                continue
            steps = sorted(set(mine["step_size"]) & set(ref["step_size"]))
            mine = mine[mine["step_size"].isin(steps)]
            ref = ref[ref["step_size"].isin(steps)]
            rows.append(_verdict_row(rule, n_traj, steps, mine, ref, confidence))
    columns = [
        RULE,
        "n_trajectories",
        "pg_boundary",
        "rule_boundary",
        "moved",
        "shift_decades",
        "shift_text",
        "pg_k",
        "pg_n",
        "pg_ci_low",
        "pg_ci_high",
        "rule_k",
        "rule_n",
        "rule_ci_low",
        "rule_ci_high",
        "decided",
        "verdict",
    ]
    return pd.DataFrame(rows, columns=columns)


def _verdict_row(rule, n_traj, steps, mine, ref, confidence) -> dict:
    b_ref, b_rule = collapse_boundary(ref), collapse_boundary(mine)
    top = max(steps)
    # the steps where exactly one of the two has crossed its boundary
    lo = min(b for b in (b_ref, b_rule) if b is not None) if (b_ref or b_rule) else None
    hi = max(b_ref or math.inf, b_rule or math.inf)
    between = [s for s in steps if lo is not None and lo <= s < hi]
    pooled_ref = _pooled(ref, between, confidence)
    pooled_rule = _pooled(mine, between, confidence)
    disjoint = bool(between) and (
        pooled_ref["ci_high"] < pooled_rule["ci_low"]
        or pooled_rule["ci_high"] < pooled_ref["ci_low"]
    )
    fmt = figures.fmt
    if b_ref is None and b_rule is None:
        shift, text = 0.0, f"neither collapses on this grid (steps up to {fmt(top)})"
    elif b_ref == b_rule:
        shift, text = 0.0, f"same boundary, step {fmt(b_ref)}"
    elif b_rule is None:
        shift = _decades(b_ref, top)
        text = f"pg collapses from {fmt(b_ref)}, {rule} at no step up to {fmt(top)}: moved up, " + (
            f"off the grid (by more than the {shift:.0f} decade(s) from {fmt(b_ref)} to {fmt(top)})"
            if shift > 0
            else "above the grid's largest step (by an amount the grid cannot show)"
        )
    elif b_ref is None:
        shift = -_decades(b_rule, top)
        text = (
            f"{rule} collapses from {fmt(b_rule)}, pg at no step up to {fmt(top)}: moved down"
            + (
                f" (by more than the {-shift:.0f} decade(s) from {fmt(b_rule)} to {fmt(top)})"
                if shift < 0
                else " (pg's boundary lies above the grid)"
            )
        )
    else:
        shift = _decades(b_ref, b_rule)
        direction = "up" if shift > 0 else "down"
        text = (
            f"pg collapses from {fmt(b_ref)}, {rule} from {fmt(b_rule)}: moved {direction} "
            f"by {abs(shift):.0f} decade(s)"
        )
    if between:
        ci = ci_phrase(confidence)
        counts = (
            f"steps {', '.join(fmt(s) for s in between)}: pg collapsed "
            f"{pooled_ref['k']}/{pooled_ref['n']} ({ci} [{pooled_ref['ci_low']:.2f}, "
            f"{pooled_ref['ci_high']:.2f}]), {rule} {pooled_rule['k']}/{pooled_rule['n']} "
            f"([{pooled_rule['ci_low']:.2f}, {pooled_rule['ci_high']:.2f}])"
        )
        text += f"; {counts}" + ("" if disjoint else "; the intervals overlap: cannot decide")
    return {
        RULE: rule,
        "n_trajectories": n_traj,
        "pg_boundary": np.nan if b_ref is None else b_ref,
        "rule_boundary": np.nan if b_rule is None else b_rule,
        "moved": b_ref != b_rule,
        "shift_decades": shift,
        "shift_text": text.split(";")[0],
        "pg_k": pooled_ref["k"],
        "pg_n": pooled_ref["n"],
        "pg_ci_low": pooled_ref["ci_low"],
        "pg_ci_high": pooled_ref["ci_high"],
        "rule_k": pooled_rule["k"],
        "rule_n": pooled_rule["n"],
        "rule_ci_low": pooled_rule["ci_low"],
        "rule_ci_high": pooled_rule["ci_high"],
        "decided": disjoint,
        "verdict": f"N={int(n_traj)}: {text}",
    }


def rule_paragraphs(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One paragraph per rule from :func:`boundary_verdicts`: ``rule, verdict``."""
    rows = []
    for rule in _rule_order(list(verdicts[RULE].unique())):
        part = verdicts[verdicts[RULE] == rule]
        moved = part[part["decided"] & part["moved"]]
        if len(moved):
            head = (
                f"{rule} moved pg's collapse boundary at "
                f"N ∈ {{{', '.join(str(int(n)) for n in moved['n_trajectories'])}}} "
                f"(disjoint Clopper–Pearson intervals over the steps in between)"
            )
        elif part["moved"].any():
            head = f"{rule}: cannot decide whether it moved pg's collapse boundary"
        else:
            head = f"{rule} did not move pg's collapse boundary on this grid"
        rows.append({RULE: rule, "verdict": head + ". " + ". ".join(part["verdict"]) + "."})
    return pd.DataFrame(rows, columns=[RULE, "verdict"])


def best_settings(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, N) the step with the highest mean final return (ties: the smaller step)."""
    ranked = cells.assign(_neg=-cells["final_return"]).sort_values(
        [RULE, "n_trajectories", "_neg", "step_size"]
    )
    best = ranked.groupby([RULE, "n_trajectories"], sort=True).head(1).drop(columns="_neg")
    return best.reset_index(drop=True)


def _phase_figures(section: Section, cells: pd.DataFrame, names, text) -> None:
    prefix, slug = names
    label, env, ci = text["label"], text["env"], text["ci"]
    seeds = seeds_phrase(cells["n"])
    shown = cells.assign(
        probability_text=[
            f"{k}/{n}\n{r:.0f}" if np.isfinite(r) else f"{k}/{n}"
            for k, n, r in zip(cells["k"], cells["n"], cells["final_return"], strict=True)
        ]
    )
    figure = figures.heatmap(
        shown,
        row="n_trajectories",
        col="step_size",
        value="probability",
        facet=RULE,
        cmap="rocket_r",
        vmin=0,
        vmax=1,
        cbar_label="P(collapsed at the end)",
        title=with_context(
            f"{env}: phase diagram per update rule; k/n collapsed and mean final return; {seeds}",
            label,
        ),
    )
    meanings = ", ".join(f"{r}: {m}" for r, m in STEP_MEANING.items())
    section.add_figure(
        f"{prefix}_stepsize_phase{slug}",
        figure,
        f"{env} step-size phase diagram per update rule (panels): rows N (episodes per "
        f"update), columns the rule's step parameter ({meanings}; pg+<optimizer>: the "
        f"optimizer's learning rate α). Colour and first line: collapsed runs k/n (stuck at "
        f"the end of the budget or diverged); second line: mean final return over the "
        f"cell's runs ({seeds}). The table gives the Clopper–Pearson {ci} of each "
        f"collapse fraction and the bootstrap {ci} of the final return. {COLLAPSE_VALIDATION}"
        + caption_context(label),
    )
    if "median_kl" in cells.columns and cells["median_kl"].notna().any():
        kl = cells.assign(
            log10_kl=np.log10(cells["median_kl"].where(cells["median_kl"] > 0)),
            log10_kl_text=[figures.fmt(float(f"{v:.2g}")) for v in cells["median_kl"]],
        )
        section.add_figure(
            f"{prefix}_stepsize_kl{slug}",
            figures.heatmap(
                kl,
                row="n_trajectories",
                col="step_size",
                value="log10_kl",
                facet=RULE,
                cbar_label="log10 KL(π_0 ‖ π_1) (nats), median over runs",
                title=with_context(f"{env}: KL of the first update, KL(π_0 ‖ π_1)", label),
            ),
            f"{env}: the step in common units. Per run the recorded KL(π_0 ‖ π_1) of its "
            f"first update on the batch's states (nats; every rule starts from the same π_0 "
            f"of a seed; later updates of a collapsed run are ~0), then the median over "
            f"the cell's runs (annotated; colour log10): point estimates, no interval; "
            f"{seeds}. Same rows and columns as the phase diagram." + caption_context(label),
        )
    section.add_cells(
        f"{prefix}_stepsize_cells{slug}",
        f"Per (rule, N, step): collapsed runs k of n with the Clopper–Pearson {ci} of the "
        f"fraction; final return (mean of the last ≤10 iterations) with its bootstrap {ci} "
        f"over runs; median_kl: median over runs of the first update's KL(π_0 ‖ π_1) (nats).",
        cells,
        [*text["context"], *CELL],
        n="n",
    )


def _best_curves(section: Section, part: pd.DataFrame, best: pd.DataFrame, names, text) -> None:
    prefix, slug = names
    keep = part.merge(best[CELL], on=CELL)
    if keep.empty:
        return
    curves = return_curves(keep, CELL, text)
    curves = curves.assign(
        rule_setting=[
            f"{r} ({figures.fmt(s)})"
            for r, s in zip(curves[RULE], curves["step_size"], strict=True)
        ]
    )
    seeds = seeds_phrase(stats.seed_counts(keep, CELL, seed_column="run_dir")["n_seeds"])
    spec = figures.FacetSpec(
        facet="n_trajectories",
        x=STEPS,
        hue="rule_setting",
        rows=(figures.Row("mean", ("ci_low", "ci_high"), "mean episode return"),),
        xlabel="environment steps (cumulative)",
        title=with_context(
            f"{text['env']}: each rule at its best step; mean ± {text['ci']}; {seeds}",
            text["label"],
        ),
        hue_title="rule (step)",
        facet_title="N",
        errorbars=False,
    )
    section.add_figure(
        f"{prefix}_stepsize_best{slug}",
        figures.facet_lines(curves, spec),
        f"{text['env']}: mean episode return against cumulative environment steps, one "
        f"panel per N, one colour per rule at its best step for that N (the step with the "
        f"highest mean final return on the grid, in parentheses). Bands: {text['ci']}, "
        f"percentile bootstrap over seeds on {CURVE_POINTS} points of the common span; "
        f"{seeds}." + caption_context(text["label"]),
    )


def stepsize_section(
    env: str, prefix: str, tables: dict[str, pd.DataFrame], design: Sequence[str], text: dict
) -> Section | None:
    """The step-size-control section of one env id; ``None`` with fewer than two rules."""
    summary, history = tables["summary"], tables["history"]
    if summary.empty or "collapsed" not in summary.columns:
        return None
    summary = summary.assign(**{RULE: rule_labels(summary)})
    if summary[RULE].nunique() < 2:
        return None
    history = history.assign(**{RULE: rule_labels(history)}) if not history.empty else history
    keys = [k for k in design_keys(summary, CARTPOLE, design) if k not in ("optimizer",)]
    split = [*CONTEXT, *keys]
    rules = _rule_order(list(summary[RULE].unique()))
    section = Section(
        f"{env}: step-size control (update rules compared)",
        intro=(
            f"{summary['run_dir'].nunique()} runs of {len(rules)} rules ({', '.join(rules)}); "
            f"each rule's step parameter on its own axis, the recorded KL per update as the "
            f"common unit. A rule moved the collapse boundary at N when its pooled collapse "
            f"counts over the steps between its boundary and pg's (the smallest step with "
            f"collapse fraction ≥ 1/2) differ from pg's with disjoint Clopper–Pearson "
            f"{ci_phrase(text['confidence'])}s; otherwise the verdict says cannot decide. "
            f"{COLLAPSE_VALIDATION}"
        ),
    )
    text = {**text, "env": env, "ci": ci_phrase(text["confidence"])}
    for label, slug, part in split_by(summary, split):
        runs = set(part["run_dir"])
        part_history = history[history["run_dir"].isin(runs)] if not history.empty else None
        cells = phase_cells(part, part_history, text["confidence"], text["resamples"])
        context = [c for c in ["env_id", *split] if c in part.columns]
        for column in reversed(context):
            cells.insert(0, column, [part[column].iloc[0]] * len(cells))
        part_text = {**text, "label": label, "context": context}
        _phase_figures(section, cells, (prefix, slug), part_text)
        if part_history is not None and not part_history.empty:
            _best_curves(section, part_history, best_settings(cells), (prefix, slug), part_text)
        if REFERENCE in set(cells[RULE]):
            verdicts = boundary_verdicts(cells, text["confidence"])
            section.add_table(
                f"{prefix}_stepsize_verdicts{slug}",
                f"Did each rule move plain pg's collapse boundary at the same N? Boundary: "
                f"the smallest step with collapse fraction ≥ 1/2 (NaN: off the grid). "
                f"Pooled collapse counts over the steps between the two boundaries, with "
                f"Clopper–Pearson {text['ci']}s; decided = disjoint intervals. "
                f"{COLLAPSE_VALIDATION}" + caption_context(label),
                verdicts,
            )
            section.add_table(
                f"{prefix}_stepsize_verdict_text{slug}",
                "One paragraph per rule (from the verdict table)." + caption_context(label),
                rule_paragraphs(verdicts),
            )
    return section


def stepsize_sections(
    history: pd.DataFrame, summary: pd.DataFrame, design: dict[str, Sequence[str]], text: dict
) -> list[Section]:
    """One :func:`stepsize_section` per env id whose results hold two rules or more."""
    if summary.empty:
        return []
    envs = sorted(set(summary["env_id"].dropna()))
    prefixes = env_prefixes(envs)
    keys = sorted(
        {k for name in ("cartpole_history", "cartpole_summary") for k in design.get(name, ())}
    )
    out = []
    for env in envs:
        tables = {
            "summary": summary[summary["env_id"] == env],
            "history": history[history["env_id"] == env] if not history.empty else history,
        }
        section = stepsize_section(env, prefixes[env], tables, keys, text)
        if section is not None:
            out.append(section)
    return out
