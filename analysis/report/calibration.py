"""Report section of the verdict calibration (``experiments/calibration.py``): the measured
size, power and coverage of the estimator study's verdicts."""

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
from pglab.schema import CALIBRATION

#: A cell: the identity without the seed, and N (pooled over seeds and studies).
CELL = [
    *(k for k in CALIBRATION.identity if k != "seed"),
    *(k for k in CALIBRATION.table("calibration").index if k != "study"),
]
MIN_DECIDED_STUDIES = 20  # coverage is drawn only where this many studies gave an interval
N_LABEL = "batch size N (trajectories)"


def _studies_phrase(rates: pd.DataFrame) -> str:
    n_studies = sorted({int(n) for n in rates["n_studies"]})
    if len(n_studies) == 1:
        return f"{n_studies[0]} studies"
    return f"{n_studies[0]}–{n_studies[-1]} studies"


def _intro(studies: str, level: float, confidence: float, keys: Sequence[str]) -> str:
    return (
        f"How often the estimator study's verdicts are wrong, measured: every cell "
        f"(MDP, estimator, N) re-run as {studies} with independent seeds at the study's "
        f"defaults, each verdict compared with the truth that theory gives (0 bias for "
        f"the unbiased estimators, exactly 1/N relative bias for baseline_batch_mean, 1 for "
        f"the estimators that are identically 0 at N = 1). Size = rejection rate of an "
        f"unbiased estimator (should be ≤ {level:g}); power = rejection rate of a biased "
        f"one; coverage = how often the {ci_phrase(confidence)} of the relative bias holds "
        f"the truth. Rejection rates are over all studies ('insufficient data' makes no "
        f"claim, so it counts as not rejecting); coverage is over the studies that report "
        f"an interval; 'decided' is their fraction. Coverage in cells decided in few "
        f"studies is conditional on the data having enough events and can be poor."
        + (f" Cells are split by {', '.join(keys)} (differs between runs)." if keys else "")
    )


def _rate_figures(section: Section, rates: pd.DataFrame, slug: str, text: dict) -> None:
    level, studies, seeds, label = text["level"], text["studies"], text["seeds"], text["label"]

    def level_lines(ax, _mdp, _row):
        ax.axhline(level, color="0.3", lw=0.8, ls="--")
        ax.axhline(0.08, color="0.6", lw=0.8, ls=":")
        return [
            (f"level {level:g}", {"color": "0.3", "ls": "--"}),
            ("bound 0.08", {"color": "0.6", "ls": ":"}),
        ]

    panels = (
        ("size", "size P(reject | unbiased)", "rejected an estimator that is unbiased"),
        ("power", "power P(reject | biased)", "rejected an estimator that is biased"),
    )
    for kind, ylabel, what in panels:
        part = rates[rates["kind"] == kind]
        if part.empty:
            continue
        spec = figures.FacetSpec(
            facet="mdp",
            x="n_trajectories",
            hue="estimator",
            rows=(figures.Row("reject_rate", ("reject_ci_low", "reject_ci_high"), ylabel),),
            logx=True,
            xlabel=N_LABEL,
            title=with_context(
                f"{kind.capitalize()} of the unbiasedness test at level {level:g}; {studies}",
                label,
            ),
        )
        section.add_figure(
            f"calibration_{kind}{slug}",
            figures.facet_lines(part, spec, decorate=level_lines),
            f"{kind.capitalize()}: the fraction of {studies} in which the level-{level:g} "
            f"test {what}, against N, one panel per MDP ('insufficient data' counts as "
            f"not rejecting); error bars: 95% CI (Clopper–Pearson) over the studies; "
            f"{seeds}. Dashed: the level; dotted: 0.08, the bound the size is held to."
            + caption_context(label),
        )


def _few_note(few: pd.DataFrame) -> str:
    if few.empty:
        return ""
    return " Not drawn (fewer than {} decided studies): {}.".format(
        MIN_DECIDED_STUDIES,
        "; ".join(
            f"{r.estimator} at N = {r.n_trajectories} ({r.mdp}: "
            f"{round(r.decided * r.n_studies)} decided, coverage {r.coverage:.2f})"
            for r in few.itertuples()
        ),
    )


def _coverage_figure(section: Section, rates: pd.DataFrame, slug: str, text: dict) -> None:
    # Coverage among a handful of decided studies is conditional on the data holding
    # unusually many events (the gate selects them) and is not drawn; the caption names them.
    confidence, studies, label = text["confidence"], text["studies"], text["label"]
    decided_studies = rates["decided"] * rates["n_studies"]
    few = rates[rates["coverage"].notna() & (decided_studies < MIN_DECIDED_STUDIES)]
    cover = rates[rates["coverage"].notna() & (decided_studies >= MIN_DECIDED_STUDIES)].copy()
    if cover.empty:
        return
    cover["coverage_ci_low"] = cover["coverage"] - 1.96 * cover["coverage_se"]
    cover["coverage_ci_high"] = cover["coverage"] + 1.96 * cover["coverage_se"]

    def band(ax, _mdp, _row):
        ax.axhspan(0.90, 0.99, color="0.9", zorder=0)
        ax.axhline(confidence, color="0.3", lw=0.8, ls="--")
        return [(f"nominal {confidence:g}", {"color": "0.3", "ls": "--"})]

    spec = figures.FacetSpec(
        facet="mdp",
        x="n_trajectories",
        hue="estimator",
        rows=(
            figures.Row(
                "coverage",
                ("coverage_ci_low", "coverage_ci_high"),
                "coverage of the true relative bias",
            ),
        ),
        logx=True,
        xlabel=N_LABEL,
        title=with_context(
            f"Coverage of the {ci_phrase(confidence)} of the relative bias; {studies}", label
        ),
    )
    section.add_figure(
        f"calibration_coverage{slug}",
        figures.facet_lines(cover, spec, decorate=band),
        f"Coverage: the fraction of {studies} whose {ci_phrase(confidence)} of "
        f"‖E ĝ_N − ∇J‖/‖∇J‖ contains the true value (0 for unbiased estimators, where "
        f"the interval's lower end is 0 exactly when the one-sided test at level "
        f"{(1 - confidence) / 2:g} does not reject, so about {(1 + confidence) / 2:g} is "
        f"expected; 1/N for baseline_batch_mean), against N; error bars ±1.96 "
        f"Monte-Carlo SE (95% CI); {text['seeds']}. Grey band: 0.90–0.99.{_few_note(few)}"
        + caption_context(label),
    )


def _tables(section: Section, rates: pd.DataFrame, keys: Sequence[str]) -> None:
    section.add_cells(
        "calibration_rates",
        "Every cell of the calibration: decided fraction, rejection rate (size where "
        "kind = size, power where kind = power) with its Monte-Carlo SE and 95% "
        "Clopper–Pearson CI, and coverage with its SE. Power (rejection rate of a "
        "known-biased estimator) per cell: biases below the noise floor √(tr Cov/K) are "
        "not detectable, so power falls with N for baseline_batch_mean (bias ∇J/N).",
        rates,
        [*keys, *CELL],
    )
    worst = (
        rates.groupby([*keys, "mdp", "kind"], dropna=False)
        .agg(
            max_reject=("reject_rate", "max"),
            min_reject=("reject_rate", "min"),
            min_coverage=("coverage", "min"),
            max_coverage=("coverage", "max"),
            min_decided=("decided", "min"),
        )
        .reset_index()
    )
    section.add_table(
        "calibration_summary",
        "Per MDP: the worst size (max_reject where kind = size), the weakest and "
        "strongest power (kind = power), the coverage range, and the smallest "
        "decided fraction over its cells.",
        worst,
    )


def calibration_section(
    calibration: pd.DataFrame, design: Sequence[str], confidence: float, level: float
) -> Section:
    """Size, power, coverage and decided fraction of the estimator study's verdicts."""
    keys = design_keys(calibration, CALIBRATION, design)
    rates = stats.calibration_rates(calibration, level=level, keys=keys)
    section = Section(
        "Verdict calibration", intro=_intro(_studies_phrase(rates), level, confidence, keys)
    )
    for label, slug, part in split_by(rates, keys):
        text = {
            "level": level,
            "confidence": confidence,
            "studies": _studies_phrase(part),
            "seeds": seeds_phrase(part["n_seeds"]),
            "label": label,
        }
        _rate_figures(section, part, slug, text)
        _coverage_figure(section, part, slug, text)
    _tables(section, rates, keys)
    return section
