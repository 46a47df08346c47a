"""One self-contained HTML report (plus PNG and SVG/PDF figures) from stored results.

    python -m analysis.report RESULTS_DIR... --out DIR [--confidence 0.95] [--level 0.05]
                              [--vector svg|pdf] [--resamples 2000]

RESULTS_DIR is any mix of job, sweep or output directories (see :mod:`analysis.load`).
Writes ``DIR/report.html`` (figures embedded as base64 PNG, captions, the numbers as
HTML tables), ``DIR/figures/<name>.png`` and ``.svg`` (or ``.pdf``), and
``DIR/tables/<name>.csv``. Sections appear only for the experiments present.

Uncertainty: every interval resamples runs (seeds), never episodes (see
:mod:`analysis.stats`); each caption states the level and the number of seeds, and cells
with fewer seeds than the others are listed, not dropped. The estimator study's own
bias intervals (columns ``*_ci_low``/``*_ci_high`` of ``results.parquet``) invert its
bootstrap-t unbiasedness test over the K batches of one job (``pglab.stats``); they are
used as they are when a cell has one seed, and replaced by an interval over seeds when it
has several. A calibration sweep (``experiments/calibration.py``) among the inputs adds a
section with the verdicts' measured size, power and coverage.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import figures, stats
from analysis.load import Results, load_results

ESTIMATOR_CELL = ["mdp", "estimator", "n_trajectories"]
ESTIMATOR_METRICS = [
    "relative_bias",
    "relative_noise_floor",
    "total_variance",
    "mse",
    "cosine_mean",
    "snr",
]
CARTPOLE_CONTEXT = ["env_id", "estimator", "optimizer"]  # split into separate figures if they vary
ASCENT_CONTEXT = ["mdp"]
#: The CartPole collapse detector's measured error rates, stated under the phase diagram.
#: Re-measure with ``python benchmarks/bench_collapse_detector.py`` after changing
#: pglab.collapse or its defaults in conf/cartpole.yaml.
COLLAPSE_VALIDATION = (
    "Detector validation (benchmarks/bench_collapse_detector.py: N ∈ {1, 2, 5, 10, 20} × "
    "α ∈ {1e-4, 1e-3, 1e-2} × 3 seeds, verdict after B = 10^5 env steps vs. still stuck "
    "after 3B): precision 21/23 = 0.91 (95% CI [0.72, 0.99]), recall 21/21 = 1.00 "
    "(95% CI [0.84, 1.00])."
)
ZERO_VARIANCE_REL = 1e-12  # tr Cov below this × the MDP's largest is float round-off of 0
#: The verdicts' measured error rates (calibration study, README "How far the verdicts can
#: be trusted"), stated where the verdicts are shown. Re-measure with
#: ``python experiments/calibration.py -m experiment=calibration`` after changing pglab.stats.
CALIBRATION_NOTE = (
    "Measured error rates (calibration study, experiment=calibration: every cell re-run 200 "
    "times on every zoo MDP, γ = 0.9, N = 1–100, K = 200): test size mean 0.034 and ≤ 0.08 in "
    "126 of 128 cells (the other two 0.055 and 0.056 on 1000 studies); 95% intervals cover 0 "
    "for unbiased estimators in 0.925–1.0 of the studies and the batch-mean baseline's true "
    "1/N in 0.935–1.0; power against a bias below the noise floor is near the level; "
    "FrozenLake at N ≤ 10 is mostly insufficient data. See the README."
)
MIN_DECIDED_STUDIES = 20  # coverage is drawn only where this many studies gave an interval
HTML_LONG_TABLE = 25  # rows; longer tables fold into <details>
HTML_MAX_ROWS = 400  # rows; longer tables are only linked (their CSV holds every row)


@dataclass
class FigureOut:
    name: str  # file stem, unique within the report
    figure: Figure
    caption: str


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[FigureOut] = field(default_factory=list)
    tables: list[tuple[str, str, pd.DataFrame]] = field(
        default_factory=list
    )  # name, caption, table


# ---------------------------------------------------------------------------- helpers


def seeds_phrase(n_seeds: pd.Series | Sequence[int]) -> str:
    """``"5 seeds per cell"`` or ``"3–5 seeds per cell"`` from per-cell seed counts."""
    counts = pd.Series(n_seeds, dtype=float).dropna()
    if counts.empty:
        return "no seeds"
    low, high = int(counts.min()), int(counts.max())
    unit = "seed" if high == 1 else "seeds"
    return f"{low} {unit} per cell" if low == high else f"{low}–{high} seeds per cell"


def ci_phrase(confidence: float) -> str:
    return f"{confidence:.0%} CI"


def _varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame.columns and frame[c].nunique(dropna=False) > 1]


def split_by(
    frame: pd.DataFrame, columns: Sequence[str]
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """``(label, slug, part)`` per combination of the ``columns`` that vary in ``frame``.

    One part (label ``""``) when none varies, so figures are never pooled across, say,
    two environments or two optimizers.
    """
    varying = _varying(frame, columns)
    if not varying:
        yield "", "", frame
        return
    for key, part in frame.groupby(varying, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{c} = {figures._fmt(v)}" for c, v in zip(varying, key, strict=True))
        slug = "_" + "_".join(_slug(figures._fmt(v)) for v in key)
        yield label, slug, part


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in text).strip("-")


def _with_context(title: str, label: str) -> str:
    return f"{title} ({label})" if label else title


# ------------------------------------------------------------------- estimator study


def estimator_cells(
    estimator: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000
) -> pd.DataFrame:
    """One row per (mdp, estimator, N): the plotted numbers of the estimator study.

    Args:
        estimator: ``Results.estimator``, one row per (job, estimator, N).
    Returns:
        ``mdp, estimator, n_trajectories, n_seeds, n_repetitions`` and the mean over seeds
        of ``relative_bias, relative_noise_floor`` (= bias_noise_floor / ‖∇J‖),
        ``total_variance, mse, cosine_mean, snr``. ``relative_bias`` estimates
        ‖E ĝ_N − ∇J‖/‖∇J‖ (noise-debiased) and ``relative_bias_ci_low/high`` is its
        interval: the job's own (bootstrap-t inversion over its K batches; NaN when the
        batches are insufficient data) when the cell has one seed, and otherwise the
        root of a bootstrap CI over seeds of the per-seed unbiased estimates of the
        squared relative bias (``ci_over`` says which).
    """
    frame = estimator.copy()
    if "mdp" not in frame.columns:
        frame["mdp"] = "mdp"
    frame["relative_noise_floor"] = frame["bias_noise_floor"] / frame["true_gradient_norm"]
    rows = []
    for key, cell in frame.groupby(ESTIMATOR_CELL, sort=True):
        row = dict(zip(ESTIMATOR_CELL, key, strict=True))
        n_seeds = int(cell["seed"].nunique())
        row["n_seeds"] = n_seeds
        row["n_repetitions"] = (
            int(cell["n_repetitions"].min()) if "n_repetitions" in cell else np.nan
        )
        for metric in ESTIMATOR_METRICS:
            row[metric] = float(cell[metric].mean())
        if n_seeds == 1:
            row["relative_bias_ci_low"] = float(cell["relative_bias_ci_low"].iloc[0])
            row["relative_bias_ci_high"] = float(cell["relative_bias_ci_high"].iloc[0])
            row["ci_over"] = f"K={row['n_repetitions']} batches"
        else:
            # per seed, (‖ē − ∇J‖² − tr Cov/K)/‖∇J‖² is unbiased for the squared relative
            # bias: average it over seeds, bootstrap that mean over seeds, then take roots
            squared = (cell["bias_norm"] ** 2 - cell["bias_noise_floor"] ** 2) / cell[
                "true_gradient_norm"
            ] ** 2
            per_seed = squared.groupby(cell["seed"]).mean().to_numpy()
            low, high = stats.bootstrap_ci(per_seed, confidence, n_resamples)
            row["relative_bias"] = float(np.sqrt(max(0.0, per_seed.mean())))
            row["relative_bias_ci_low"] = float(np.sqrt(max(0.0, low)))
            row["relative_bias_ci_high"] = float(np.sqrt(max(0.0, high)))
            row["ci_over"] = f"{n_seeds} seeds"
        rows.append(row)
    return pd.DataFrame(rows)


def drop_zero_variance(
    cells: pd.DataFrame, rel: float = ZERO_VARIANCE_REL
) -> tuple[pd.DataFrame, str]:
    """Cells to plot on log axes, with numerically zero variances blanked, and a caption note.

    tr Cov ≤ ``rel`` × the largest tr Cov of the same MDP is zero up to float round-off
    (e.g. a batch-mean baseline at N = 1 returns exactly 0); on a log axis it would
    stretch the scale by tens of decades and it would wreck the log-log slope fit. Such
    cells get NaN ``total_variance`` and ``snr`` in the returned copy (not drawn, not
    fitted); the note names them. The input table is left as stored.
    """
    plotted = cells.copy()
    largest = plotted.groupby("mdp")["total_variance"].transform("max")
    zero = plotted["total_variance"] <= rel * largest
    plotted.loc[zero, ["total_variance", "snr"]] = np.nan
    if not zero.any():
        return plotted, ""
    names = "; ".join(
        f"{row.estimator} at N = {row.n_trajectories} ({row.mdp})"
        for row in cells[zero].itertuples()
    )
    note = (
        f" Not drawn and not fitted, because tr Cov is numerically zero (≤ {rel:g} × the "
        f"panel's largest): {names}."
    )
    return plotted, note


def variance_slopes(cells: pd.DataFrame) -> pd.DataFrame:
    """Fitted log-log slope of tr Cov against N per (mdp, estimator); −1 is the 1/N law."""
    rows = []
    for (mdp, name), cell in cells.groupby(["mdp", "estimator"], sort=True):
        fit = stats.loglog_slope(cell["n_trajectories"], cell["total_variance"])
        rows.append({"mdp": mdp, "estimator": name, **fit})
    return pd.DataFrame(
        rows, columns=["mdp", "estimator", "slope", "slope_stderr", "intercept", "n_points"]
    )


def estimator_section(
    estimator: pd.DataFrame, confidence: float, level: float, n_resamples: int
) -> Section:
    cells = estimator_cells(estimator, confidence, n_resamples)
    plotted, zero_note = drop_zero_variance(cells)
    slopes = variance_slopes(plotted)
    seeds = seeds_phrase(cells["n_seeds"])
    ks = sorted({int(k) for k in cells["n_repetitions"].dropna()})
    k_text = f"K = {ks[0]}" if len(ks) == 1 else f"K = {ks[0]}–{ks[-1]}"
    one_seed = bool((cells["n_seeds"] == 1).all())
    ci_source = (
        f"bootstrap-t over the {k_text} batches of each job"
        if one_seed
        else "bootstrap over seeds (over the K batches where a cell has one seed)"
    )
    section = Section(
        "Estimator study",
        intro=(
            f"{len(estimator)} rows from {estimator['run_dir'].nunique()} jobs; "
            f"{cells['mdp'].nunique()} MDP(s), {cells['estimator'].nunique()} estimator(s), "
            f"N ∈ {{{', '.join(str(int(n)) for n in sorted(cells['n_trajectories'].unique()))}}}; "
            f"{seeds}; each job draws K independent batches of N trajectories ({k_text})."
        ),
    )
    colours = figures.palette(figures._levels(cells["estimator"]))

    def noise_floor(ax, mdp, _row):
        part = cells[cells["mdp"] == mdp]
        for name, colour in colours.items():
            line = part[part["estimator"] == name].sort_values("n_trajectories")
            ax.plot(line["n_trajectories"], line["relative_noise_floor"], ":", color=colour, lw=1)
        ax.axhline(0, color="0.3", lw=0.8)
        return [("noise floor √(tr Cov/K)/‖∇J‖", {"color": "0.3", "ls": ":"})]

    fig = figures.facet_lines(
        cells,
        facet="mdp",
        x="n_trajectories",
        y="relative_bias",
        hue="estimator",
        ci=("relative_bias_ci_low", "relative_bias_ci_high"),
        logx=True,
        ylabel="relative bias ‖E ĝ_N − ∇J‖ / ‖∇J‖",
        xlabel="batch size N (trajectories)",
        title=f"Relative bias vs N — {ci_phrase(confidence)} ({ci_source}); {seeds}",
        decorate=noise_floor,
    )
    section.figures.append(
        FigureOut(
            "estimator_relative_bias",
            fig,
            (
                f"Relative bias ‖E ĝ_N − ∇J‖/‖∇J‖ of each estimator against the batch size N "
                f"(log axis), one panel per MDP, ∇J the exact gradient. Points: the "
                f"noise-debiased estimate √max(0, ‖ē − ∇J‖² − tr Cov/K)/‖∇J‖ (ē the mean of the K "
                f"batch estimates). Error bars: {ci_phrase(confidence)} of the bias itself, "
                f"{ci_source} (inverting the bootstrap-t test of the table below), {seeds}; it may "
                f"touch 0, "
                f"and a missing bar means insufficient data (fewer than 20 effective batches, "
                f"e.g. a rarely reached goal at small N). The dotted lines are the noise floor "
                f"√(tr Cov/K)/‖∇J‖, the distance at which a bias becomes detectable. "
                f"{CALIBRATION_NOTE}"
            ),
        )
    )

    def one_over_n(ax, mdp, _row):
        part = plotted[(plotted["mdp"] == mdp) & plotted["total_variance"].notna()]
        if part.empty:
            return []
        smallest = part[part["n_trajectories"] == part["n_trajectories"].min()]
        figures.reference_power_line(  # through the median variance at the smallest N
            ax,
            part["n_trajectories"].to_numpy(float),
            (float(smallest["n_trajectories"].iloc[0]), float(smallest["total_variance"].median())),
        )
        return [("reference ∝ 1/N", {"color": "0.4", "ls": "--"})]

    slope_labels = {}
    for name, group in slopes.groupby("estimator"):
        text = ", ".join(f"{s:.2f}" for s in group["slope"])
        slope_labels[name] = f"{name} (slope {text})"
    fig = figures.facet_lines(
        plotted,
        facet="mdp",
        x="n_trajectories",
        y="total_variance",
        hue="estimator",
        logx=True,
        logy=True,
        ylabel="tr Cov(ĝ_N)",
        xlabel="batch size N (trajectories)",
        title=f"Total variance vs N (log-log) with a 1/N reference; {seeds}",
        hue_labels=slope_labels,
        decorate=one_over_n,
    )
    section.figures.append(
        FigureOut(
            "estimator_variance",
            fig,
            (
                f"Total variance tr Cov(ĝ_N) over the K batches against N on log-log axes, one panel "
                f"per MDP, with a dashed 1/N reference through the median variance at the smallest "
                f"N. The legend and the slope table give each estimator's least-squares log-log "
                f"slope (one per MDP, in panel order); an average of N independent trajectories has "
                f"slope −1. Point estimates ({seeds}; no interval is drawn, the slope's standard "
                f"error is in the table).{zero_note}"
            ),
        )
    )

    fig = figures.facet_lines(
        cells,
        facet="mdp",
        x="n_trajectories",
        y=["mse", "cosine_mean"],
        hue="estimator",
        logx=True,
        logy=[True, False],
        ylabel=["MSE  E‖ĝ_N − ∇J‖²", "mean cos(ĝ_N, ∇J)"],
        xlabel="batch size N (trajectories)",
        title=f"MSE and cosine to the true gradient; {seeds}",
    )
    section.figures.append(
        FigureOut(
            "estimator_mse_cosine",
            fig,
            (
                f"Top row: mean squared error E‖ĝ_N − ∇J‖² (log-log); bottom row: mean cosine "
                f"similarity between ĝ_N and the exact gradient ∇J, against N, one column per MDP. "
                f"Means over the K batches of each job ({seeds}; point estimates)."
            ),
        )
    )

    fig = figures.facet_lines(
        plotted,
        facet="mdp",
        x="n_trajectories",
        y="snr",
        hue="estimator",
        logx=True,
        logy=True,
        ylabel="SNR ‖∇J‖² / tr Cov(ĝ_N)",
        xlabel="batch size N (trajectories)",
        title=f"Signal-to-noise ratio vs N; {seeds}",
    )
    section.figures.append(
        FigureOut(
            "estimator_snr",
            fig,
            (
                f"Signal-to-noise ratio ‖∇J‖²/tr Cov(ĝ_N) against N on log-log axes, one panel per "
                f"MDP; for an average of N i.i.d. trajectories it grows as N. Point estimates "
                f"({seeds}).{zero_note}"
            ),
        )
    )

    tests = stats.unbiasedness_verdicts(estimator, level=level)
    section.tables.append(
        (
            "estimator_unbiasedness",
            (
                f"Unbiasedness test per job row: H0 E[ĝ_N] = ∇J, bootstrap-t test on the "
                f"studentised squared distance test_statistic = K‖ē − ∇J‖²/tr Cov (about 1 for "
                f"an unbiased estimator), from the stored results; 'insufficient data' when the K "
                f"batches hold fewer than 20 effective batches (the spread comes from a few "
                f"batches, e.g. a rare goal), where no approximation holds its level. Verdict at "
                f"level {level:g} per row, with no correction across rows: even for an unbiased "
                f"estimator up to {level:.0%} of the rows reject by chance. {CALIBRATION_NOTE}"
            ),
            tests,
        )
    )
    section.tables.append(
        (
            "estimator_variance_slopes",
            (
                "Least-squares slope of log10 tr Cov against log10 N per MDP and estimator, with its "
                "standard error; −1 is the 1/N law."
            ),
            slopes,
        )
    )
    columns = [
        "mdp",
        "estimator",
        "n_trajectories",
        "n_seeds",
        "relative_bias",
        "relative_bias_ci_low",
        "relative_bias_ci_high",
        "ci_over",
        "relative_noise_floor",
        "total_variance",
        "mse",
        "cosine_mean",
        "snr",
    ]
    section.tables.append(
        (
            "estimator_cells",
            (
                f"The numbers behind the figures: one row per (MDP, estimator, N), means over seeds "
                f"({seeds}); relative-bias {ci_phrase(confidence)} over the source in ci_over."
            ),
            cells[columns],
        )
    )
    return section


# ---------------------------------------------------------------- verdict calibration


def calibration_section(calibration: pd.DataFrame, confidence: float, level: float) -> Section:
    """Size, power, coverage and decided fraction of the estimator study's verdicts."""
    rates = stats.calibration_rates(calibration, level=level)
    n_studies = sorted({int(n) for n in rates["n_studies"]})
    studies = (
        f"{n_studies[0]} studies"
        if len(n_studies) == 1
        else f"{n_studies[0]}–{n_studies[-1]} studies"
    )
    seeds = seeds_phrase(calibration.groupby(ESTIMATOR_CELL)["seed"].nunique())
    section = Section(
        "Verdict calibration",
        intro=(
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
        ),
    )

    def level_lines(ax, _mdp, _row):
        ax.axhline(level, color="0.3", lw=0.8, ls="--")
        ax.axhline(0.08, color="0.6", lw=0.8, ls=":")
        return [
            (f"level {level:g}", {"color": "0.3", "ls": "--"}),
            ("bound 0.08", {"color": "0.6", "ls": ":"}),
        ]

    size = rates[rates["kind"] == "size"]
    power = rates[rates["kind"] == "power"]
    panels = (
        (size, "size", "size P(reject | unbiased)", "rejected an estimator that is unbiased"),
        (power, "power", "power P(reject | biased)", "rejected an estimator that is biased"),
    )
    for part, kind, ylabel, what in panels:
        if part.empty:
            continue
        fig = figures.facet_lines(
            part,
            facet="mdp",
            x="n_trajectories",
            y="reject_rate",
            hue="estimator",
            ci=("reject_ci_low", "reject_ci_high"),
            logx=True,
            ylabel=ylabel,
            xlabel="batch size N (trajectories)",
            title=f"{kind.capitalize()} of the unbiasedness test at level {level:g}; {studies}",
            decorate=level_lines,
        )
        section.figures.append(
            FigureOut(
                f"calibration_{kind}",
                fig,
                (
                    f"{kind.capitalize()}: the fraction of {studies} in which the level-{level:g} "
                    f"test {what}, against N, one panel per MDP ('insufficient data' counts as "
                    f"not rejecting); error bars: 95% CI (Clopper–Pearson) over the studies; "
                    f"{seeds}. Dashed: the level; dotted: 0.08, the bound the size is held to."
                ),
            )
        )
    # Coverage among a handful of decided studies is conditional on the data holding
    # unusually many events (the gate selects them) and is not drawn; the caption names them.
    decided_studies = rates["decided"] * rates["n_studies"]
    few = rates[rates["coverage"].notna() & (decided_studies < MIN_DECIDED_STUDIES)]
    cover = rates[rates["coverage"].notna() & (decided_studies >= MIN_DECIDED_STUDIES)].copy()
    few_note = ""
    if not few.empty:
        few_note = " Not drawn (fewer than {} decided studies): {}.".format(
            MIN_DECIDED_STUDIES,
            "; ".join(
                f"{r.estimator} at N = {r.n_trajectories} ({r.mdp}: "
                f"{round(r.decided * r.n_studies)} decided, coverage {r.coverage:.2f})"
                for r in few.itertuples()
            ),
        )
    if not cover.empty:
        cover["coverage_ci_low"] = cover["coverage"] - 1.96 * cover["coverage_se"]
        cover["coverage_ci_high"] = cover["coverage"] + 1.96 * cover["coverage_se"]

        def band(ax, _mdp, _row):
            ax.axhspan(0.90, 0.99, color="0.9", zorder=0)
            ax.axhline(confidence, color="0.3", lw=0.8, ls="--")
            return [(f"nominal {confidence:g}", {"color": "0.3", "ls": "--"})]

        fig = figures.facet_lines(
            cover,
            facet="mdp",
            x="n_trajectories",
            y="coverage",
            hue="estimator",
            ci=("coverage_ci_low", "coverage_ci_high"),
            logx=True,
            ylabel="coverage of the true relative bias",
            xlabel="batch size N (trajectories)",
            title=f"Coverage of the {ci_phrase(confidence)} of the relative bias; {studies}",
            decorate=band,
        )
        section.figures.append(
            FigureOut(
                "calibration_coverage",
                fig,
                (
                    f"Coverage: the fraction of {studies} whose {ci_phrase(confidence)} of "
                    f"‖E ĝ_N − ∇J‖/‖∇J‖ contains the true value (0 for unbiased estimators, where "
                    f"the interval's lower end is 0 exactly when the one-sided test at level "
                    f"{(1 - confidence) / 2:g} does not reject, so about {(1 + confidence) / 2:g} is "
                    f"expected; 1/N for baseline_batch_mean), against N; error bars ±1.96 "
                    f"Monte-Carlo SE (95% CI); {seeds}. Grey band: 0.90–0.99.{few_note}"
                ),
            )
        )
    caption_power = (
        "Power (rejection rate of a known-biased estimator) per cell: biases below the noise "
        "floor √(tr Cov/K) are not detectable, so power falls with N for baseline_batch_mean "
        "(bias ∇J/N)."
    )
    section.tables.append(
        (
            "calibration_rates",
            (
                f"Every cell of the calibration: decided fraction, rejection rate (size where "
                f"kind = size, power where kind = power) with its Monte-Carlo SE and 95% "
                f"Clopper–Pearson CI, and coverage with its SE. {caption_power}"
            ),
            rates,
        )
    )
    worst = (
        rates.groupby(["mdp", "kind"])
        .agg(
            max_reject=("reject_rate", "max"),
            min_reject=("reject_rate", "min"),
            min_coverage=("coverage", "min"),
            max_coverage=("coverage", "max"),
            min_decided=("decided", "min"),
        )
        .reset_index()
    )
    section.tables.append(
        (
            "calibration_summary",
            (
                "Per MDP: the worst size (max_reject where kind = size), the weakest and "
                "strongest power (kind = power), the coverage range, and the smallest "
                "decided fraction over its cells."
            ),
            worst,
        )
    )
    return section


# ---------------------------------------------------------------------------- CartPole


def cartpole_cells(
    summary: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000
) -> pd.DataFrame:
    """Final return and AUC per (N, α): mean over seeds, bootstrap CI over seeds.

    Args:
        summary: ``Results.cartpole_summary`` (one row per run) for one context.
    Returns:
        ``n_trajectories, step_size, n_seeds, final_return, final_return_ci_low,
        final_return_ci_high, auc, auc_ci_low, auc_ci_high``.
    """
    by = ["n_trajectories", "step_size"]
    out = None
    for value in ("final_return", "auc"):
        part = stats.mean_ci_over_seeds(summary, by, value, confidence, n_resamples).rename(
            columns={
                "mean": value,
                "ci_low": f"{value}_ci_low",
                "ci_high": f"{value}_ci_high",
                "n_seeds": f"n_seeds_{value}",
            }
        )
        out = part if out is None else out.merge(part, on=by, how="outer")
    counts = stats.seed_counts(summary, by)
    out = counts.merge(out, on=by, how="left")
    return (
        out.drop(columns=["n_seeds_final_return", "n_seeds_auc"])
        .sort_values(by)
        .reset_index(drop=True)
    )


def cartpole_section(
    history: pd.DataFrame,
    summary: pd.DataFrame,
    quality: pd.DataFrame,
    confidence: float,
    n_resamples: int,
) -> Section:
    section = Section("CartPole: step size × batch size")
    runs = summary if not summary.empty else history.drop_duplicates("run_dir")
    section.intro = (
        f"{runs['run_dir'].nunique()} runs; N ∈ "
        f"{{{', '.join(figures._fmt(v) for v in figures._levels(runs['n_trajectories']))}}}, "
        f"α ∈ {{{', '.join(figures._fmt(v) for v in figures._levels(runs['step_size']))}}}; "
        f"intervals are {ci_phrase(confidence)} from a bootstrap over seeds "
        f"(runs), never over episodes."
    )
    if not history.empty:
        for label, slug, part in split_by(history, CARTPOLE_CONTEXT):
            curves = stats.curve_ci_over_seeds(
                part,
                ["n_trajectories", "step_size"],
                "iteration",
                "return_mean",
                confidence,
                n_resamples,
            )
            seeds = seeds_phrase(
                stats.seed_counts(part, ["n_trajectories", "step_size"])["n_seeds"]
            )
            fig = figures.facet_lines(
                curves,
                facet="n_trajectories",
                x="iteration",
                y="mean",
                hue="step_size",
                ci=("ci_low", "ci_high"),
                errorbars=False,
                numeric_hue=True,
                ylabel="mean episode return",
                xlabel="iteration",
                hue_title="step size α",
                title=_with_context(
                    f"Learning curves: mean ± {ci_phrase(confidence)} over seeds; {seeds}", label
                ),
            )
            section.figures.append(
                FigureOut(
                    f"cartpole_learning_curves{slug}",
                    fig,
                    (
                        f"Mean episode return per iteration (the iteration's batch mean, return_mean) "
                        f"averaged over seeds, one panel per batch size N, one colour per step size α; "
                        f"bands: {ci_phrase(confidence)}, percentile bootstrap over seeds at each "
                        f"iteration; {seeds}." + (f" {label}." if label else "")
                    ),
                )
            )
            section.tables.append(
                (
                    f"cartpole_learning_curves{slug}",
                    "Learning-curve numbers: mean and CI over seeds per (N, α, "
                    "iteration); n_seeds counts the seeds with that iteration.",
                    curves,
                )
            )
    if not summary.empty:
        for label, slug, part in split_by(summary, CARTPOLE_CONTEXT):
            cells = cartpole_cells(part, confidence, n_resamples)
            seeds = seeds_phrase(cells["n_seeds"])
            for value, what in (
                ("final_return", "final return (mean of the last ≤10 iterations)"),
                ("auc", "AUC (mean return over all iterations)"),
            ):
                fig = figures.heatmap(
                    cells,
                    row="n_trajectories",
                    col="step_size",
                    value=value,
                    title=_with_context(f"{what}: mean over seeds; {seeds}", label),
                    cbar_label=value.replace("_", " "),
                )
                section.figures.append(
                    FigureOut(
                        f"cartpole_{value}_heatmap{slug}",
                        fig,
                        (
                            f"Heatmap of the {what} per batch size N (rows) and step size α (columns): "
                            f"mean over seeds ({seeds}); the table below gives its {ci_phrase(confidence)} "
                            f"(bootstrap over seeds)." + (f" {label}." if label else "")
                        ),
                    )
                )
            section.tables.append(
                (
                    f"cartpole_returns{slug}",
                    (
                        f"Final return and AUC per (N, α): mean over seeds and {ci_phrase(confidence)} "
                        f"(percentile bootstrap over seeds; NaN with one seed)."
                    ),
                    cells,
                )
            )
            if "collapsed" in part.columns:
                collapse = stats.collapse_table(
                    part, ["n_trajectories", "step_size"], confidence=confidence
                )
                collapse["probability_text"] = [
                    f"{k}/{n}" for k, n in zip(collapse["k"], collapse["n"], strict=True)
                ]
                fig = figures.heatmap(
                    collapse,
                    row="n_trajectories",
                    col="step_size",
                    value="probability",
                    cmap="rocket_r",
                    vmin=0,
                    vmax=1,
                    cbar_label="P(stuck at the end)",
                    title=_with_context(
                        f"Step-size phase diagram: P(collapsed = stuck at the end of the budget), "
                        f"k/n runs; {seeds}",
                        label,
                    ),
                )
                section.figures.append(
                    FigureOut(
                        f"cartpole_collapse{slug}",
                        fig,
                        (
                            f"Step-size phase diagram: the fraction of runs that ended their budget "
                            f"collapsed, i.e. stuck (over the last 100 episodes: mean return at or "
                            f"below random play and a near-deterministic policy) or diverged, per "
                            f"batch size N (rows) and step size α (columns), annotated k/n (collapsed "
                            f"runs / runs; {seeds}); runs that dipped and recovered are not counted. "
                            f"The table gives the exact (Clopper–Pearson) {ci_phrase(confidence)} of "
                            f"each probability. {COLLAPSE_VALIDATION}"
                            + (f" {label}." if label else "")
                        ),
                    )
                )
                section.tables.append(
                    (
                        f"cartpole_collapse{slug}",
                        (
                            f"Collapse (stuck at the end of the budget, or diverged) counts per (N, α) "
                            f"with the Clopper–Pearson {ci_phrase(confidence)} of the probability."
                        ),
                        collapse.drop(columns="probability_text"),
                    )
                )
    if not quality.empty:
        context = [*CARTPOLE_CONTEXT, "config.n_trajectories"]
        for label, slug, part in split_by(quality, context):
            facet = "step_size" if "step_size" in part.columns else "checkpoint_iteration"
            by = [facet, "checkpoint_iteration", "n_trajectories"]
            merged = None
            for value in ("cosine", "relative_error"):
                cell = stats.mean_ci_over_seeds(
                    part, by, value, confidence, n_resamples, seed_column="run_dir"
                ).rename(
                    columns={
                        "mean": value,
                        "ci_low": f"{value}_ci_low",
                        "ci_high": f"{value}_ci_high",
                    }
                )
                merged = (
                    cell
                    if merged is None
                    else merged.merge(cell.drop(columns="n_seeds"), on=by, how="outer")
                )
            seeds = seeds_phrase(merged["n_seeds"])
            fig = figures.facet_lines(
                merged,
                facet=facet,
                x="n_trajectories",
                y=["cosine", "relative_error"],
                hue="checkpoint_iteration",
                numeric_hue=True,
                ci=[
                    ("cosine_ci_low", "cosine_ci_high"),
                    ("relative_error_ci_low", "relative_error_ci_high"),
                ],
                logx=True,
                logy=[False, True],
                xlabel="batch size N (trajectories)",
                ylabel=["cos(ĝ_N, reference ∇J)", "‖ĝ_N − ref‖ / ‖ref‖"],
                hue_title="checkpoint (iteration)",
                title=_with_context(
                    f"Gradient quality vs batch size; {ci_phrase(confidence)} over runs; {seeds}",
                    label,
                ),
            )
            section.figures.append(
                FigureOut(
                    f"cartpole_gradient_quality{slug}",
                    fig,
                    (
                        f"Gradient quality at training checkpoints: cosine similarity (top) and relative "
                        f"error (bottom, log) between a batch estimate ĝ_N and a large-sample reference "
                        f"gradient, against the batch size N, one colour per checkpoint. Batches are "
                        f"averaged within a run first; error bars: {ci_phrase(confidence)}, bootstrap "
                        f"over runs; {seeds}." + (f" {label}." if label else "")
                    ),
                )
            )
            section.tables.append(
                (
                    f"cartpole_gradient_quality{slug}",
                    "Gradient-quality numbers per (checkpoint, batch N): mean over "
                    "runs of the per-run mean over batches, with the CI.",
                    merged,
                )
            )
    return section


# ---------------------------------------------------------------------- tabular ascent


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


def ascent_section(
    history: pd.DataFrame, summary: pd.DataFrame, confidence: float, n_resamples: int
) -> Section:
    section = Section("Tabular ascent: exact J along the iterates")
    if not history.empty:
        frame = history.assign(gradient_label=ascent_labels(history))
        section.intro = (
            f"{frame['run_dir'].nunique()} runs; J(θ_k) is computed exactly at "
            f"every iterate, so the only randomness is the sampled gradient; "
            f"intervals are {ci_phrase(confidence)} over seeds."
        )
        for label, slug, part in split_by(frame, ASCENT_CONTEXT):
            curves = stats.curve_ci_over_seeds(
                part,
                ["gradient_label", "step_size"],
                "iteration",
                "expected_return",
                confidence,
                n_resamples,
            )
            seeds = seeds_phrase(
                stats.seed_counts(part, ["gradient_label", "step_size"])["n_seeds"]
            )
            optimal = part["optimal_return"].dropna() if "optimal_return" in part else []
            optimum = _horizontal_line(float(optimal.iloc[0]) if len(optimal) else None)
            fig = figures.facet_lines(
                curves,
                facet="gradient_label",
                x="iteration",
                y="mean",
                hue="step_size",
                ci=("ci_low", "ci_high"),
                errorbars=False,
                numeric_hue=True,
                ylabel="exact J(θ_k)",
                xlabel="iteration",
                hue_title="step size α",
                facet_title="gradient",
                title=_with_context(
                    f"Exact J vs iteration; mean ± {ci_phrase(confidence)} over seeds; {seeds}",
                    label,
                ),
                decorate=optimum,
            )
            section.figures.append(
                FigureOut(
                    f"ascent_expected_return{slug}",
                    fig,
                    (
                        f"Exact expected return J(θ_k) along the gradient-ascent iterates, one panel per "
                        f"gradient kind (exact, or an estimator with its batch size N), one colour per "
                        f"step size α; dashed: the optimal return J* over all policies (possibly "
                        f"non-stationary, so a stationary softmax policy may stay below it; the "
                        f"best stationary return is the history's stationary_return). Bands: "
                        f"{ci_phrase(confidence)}, "
                        f"bootstrap over seeds; {seeds}." + (f" {label}." if label else "")
                    ),
                )
            )
    if not summary.empty and "final_return" in summary.columns:
        frame = summary.assign(gradient_label=ascent_labels(summary))
        by = [*_varying(frame, ASCENT_CONTEXT), "gradient_label", "step_size"]
        cells = stats.mean_ci_over_seeds(frame, by, "final_return", confidence, n_resamples)
        section.tables.append(
            (
                "ascent_final_return",
                (
                    f"Final exact return per gradient kind and step size: mean over seeds and "
                    f"{ci_phrase(confidence)} (bootstrap over seeds)."
                ),
                cells,
            )
        )
    return section


# ------------------------------------------------------------------------ under-seeded


def under_seeded(results: Results) -> pd.DataFrame:
    """Cells with fewer seeds than the best-seeded cell of the same table (all sections)."""
    specs = [
        ("estimator study", results.estimator, ESTIMATOR_CELL),
        ("cartpole", results.cartpole_summary, [*CARTPOLE_CONTEXT, "n_trajectories", "step_size"]),
        (
            "tabular ascent",
            results.ascent_summary,
            [*ASCENT_CONTEXT, "gradient", "n_trajectories", "step_size"],
        ),
    ]
    rows = []
    for table, frame, by in specs:
        if frame.empty:
            continue
        by = [c for c in by if c in frame.columns]
        for _, cell in stats.under_seeded_cells(frame, by).iterrows():
            name = ", ".join(f"{c}={figures._fmt(cell[c])}" for c in by)
            rows.append(
                {
                    "table": table,
                    "cell": name,
                    "n_seeds": int(cell["n_seeds"]),
                    "expected": int(cell["expected"]),
                }
            )
    return pd.DataFrame(rows, columns=["table", "cell", "n_seeds", "expected"])


# ------------------------------------------------------------------------------ output


def _table_html(frame: pd.DataFrame, csv_name: str | None = None) -> str:
    if len(frame) > HTML_MAX_ROWS and csv_name:
        return (
            f"<p>{len(frame)} rows: too many to show here; every row is in "
            f'<a href="tables/{csv_name}.csv">tables/{csv_name}.csv</a>.</p>'
        )
    shown = frame.copy()
    for column in shown.columns:  # list-valued cells (e.g. a gradient) are not for tables
        if shown[column].map(lambda v: isinstance(v, tuple | list | np.ndarray)).any():
            shown = shown.drop(columns=column)
    text = shown.to_html(
        index=False,
        border=0,
        classes="numbers",
        na_rep="NaN",
        float_format=lambda v: f"{v:.4g}",
        escape=True,
    )
    if len(shown) > HTML_LONG_TABLE:
        return f"<details><summary>{len(shown)} rows (click to show)</summary>{text}</details>"
    return text


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; }
table.numbers { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0 1.5em; }
table.numbers th, table.numbers td { border-bottom: 1px solid #ddd; padding: 2px 8px;
       text-align: right; }
table.numbers th { background: #f3f3f3; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5em 1em; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def build_report(
    results: Results,
    out_dir: str | os.PathLike,
    confidence: float = 0.95,
    level: float = 0.05,
    vector_format: str = "svg",
    n_resamples: int = 2000,
) -> Path:
    """Write figures, tables and ``report.html`` for ``results`` into ``out_dir``.

    Args:
        results: from :func:`analysis.load.load_results`.
        confidence: level of every bootstrap CI. level: the unbiasedness-test level.
        vector_format: ``"svg"`` or ``"pdf"``, written beside each PNG.
    Returns:
        the path of ``report.html``.
    """
    if vector_format not in ("svg", "pdf"):
        raise ValueError(f"vector_format must be 'svg' or 'pdf', got {vector_format!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)

    sections = []
    if not results.estimator.empty:
        sections.append(estimator_section(results.estimator, confidence, level, n_resamples))
    if not results.calibration.empty:
        sections.append(calibration_section(results.calibration, confidence, level))
    if not (
        results.cartpole_history.empty
        and results.cartpole_summary.empty
        and results.gradient_quality.empty
    ):
        sections.append(
            cartpole_section(
                results.cartpole_history,
                results.cartpole_summary,
                results.gradient_quality,
                confidence,
                n_resamples,
            )
        )
    if not (results.ascent_history.empty and results.ascent_summary.empty):
        sections.append(
            ascent_section(results.ascent_history, results.ascent_summary, confidence, n_resamples)
        )

    body = ["<h1>pglab report</h1>", _overview_html(results, confidence)]
    figure_number = 0
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.intro:
            body.append(f"<p>{html.escape(section.intro)}</p>")
        for item in section.figures:
            figure_number += 1
            png = _png_bytes(item.figure)
            (out / "figures" / f"{item.name}.png").write_bytes(png)
            item.figure.savefig(
                out / "figures" / f"{item.name}.{vector_format}",
                format=vector_format,
                metadata={"Date": None} if vector_format == "svg" else {"CreationDate": None},
            )
            encoded = base64.b64encode(png).decode("ascii")
            body.append(
                f'<figure id="{item.name}"><img alt="{item.name}" '
                f'src="data:image/png;base64,{encoded}">'
                f"<figcaption><b>Figure {figure_number}.</b> {html.escape(item.caption)} "
                f'Files: <a href="figures/{item.name}.png">figures/{item.name}.png</a>, '
                f'<a href="figures/{item.name}.{vector_format}">'
                f"figures/{item.name}.{vector_format}</a>.</figcaption></figure>"
            )
        for name, caption, table in section.tables:
            table.to_csv(out / "tables" / f"{name}.csv", index=False)
            body.append(
                f'<h3 id="table-{name}">{html.escape(name.replace("_", " "))}</h3>'
                f"<p>{html.escape(caption)} "
                f'(<a href="tables/{name}.csv">tables/{name}.csv</a>)</p>'
                + _table_html(table, name)
            )
    if not sections:
        body.append("<p>No table of a known experiment was loaded.</p>")

    thin = under_seeded(results)
    body.append("<h2>Under-seeded cells</h2>")
    if thin.empty:
        body.append("<p>None: every cell of each table has the same number of seeds.</p>")
    else:
        thin.to_csv(out / "tables" / "under_seeded_cells.csv", index=False)
        body.append(
            "<p class='warning'>These cells have fewer seeds than the best-seeded cell "
            "of their table: their means and intervals rest on fewer runs (shown, not "
            "dropped).</p>" + _table_html(thin)
        )

    body.append("<h2>Skipped runs</h2>")
    if results.skipped:
        skipped = pd.DataFrame(results.skipped, columns=["path", "reason"])
        skipped.to_csv(out / "tables" / "skipped_runs.csv", index=False)
        body.append(
            f"<p class='warning'>{len(skipped)} job(s) found but not loaded.</p>"
            + _table_html(skipped)
        )
    else:
        body.append("<p>None.</p>")

    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>pglab report</title><style>"
        + CSS
        + "</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    report = out / "report.html"
    report.write_text(page, encoding="utf-8")
    return report


def _overview_html(results: Results, confidence: float) -> str:
    runs = results.runs
    parts = [
        f"<p>Inputs: {', '.join(f'<code>{html.escape(p)}</code>' for p in results.searched)}. "
        f"{len(runs)} job(s) loaded, {len(results.skipped)} skipped. Intervals: "
        f"{ci_phrase(confidence)}, bootstrap over seeds (runs) unless a caption says "
        f"otherwise. A percentile bootstrap over fewer than about five seeds undercovers "
        f"(with two seeds it spans their range); read such intervals as descriptive.</p>"
    ]
    if not runs.empty:
        overview = (
            runs.groupby(["experiment", "status"], dropna=False).size().rename("jobs").reset_index()
        )
        commits = sorted({str(c) for c in runs["git_commit"].dropna()})
        dirty = bool(runs["git_dirty"].fillna(False).astype(bool).any())
        parts.append(_table_html(overview))
        parts.append(
            f"<p>git commit(s): {', '.join(f'<code>{html.escape(c)}</code>' for c in commits) or 'unknown'}"
            f"{' (some jobs ran with uncommitted changes)' if dirty else ''}.</p>"
        )
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Figures and a self-contained HTML report from pglab result directories.",
    )
    parser.add_argument("results", nargs="+", help="job, sweep or output directories")
    parser.add_argument("--out", required=True, help="directory for report.html, figures/, tables/")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level (default 0.95)")
    parser.add_argument(
        "--level",
        type=float,
        default=0.05,
        help="level of the unbiasedness test verdicts (default 0.05)",
    )
    parser.add_argument(
        "--vector",
        choices=("svg", "pdf"),
        default="svg",
        help="vector format written beside each PNG (default svg)",
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if not 0 < args.confidence < 1:
        parser.error(f"--confidence must be in (0, 1), got {args.confidence}")
    if not 0 < args.level < 1:
        parser.error(f"--level must be in (0, 1), got {args.level}")
    if args.resamples < 100:
        parser.error(f"--resamples must be >= 100, got {args.resamples}")
    try:  # a missing path or no results is a usage error, not a crash: message, exit 2
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            results = load_results(args.results)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = build_report(
        results,
        args.out,
        confidence=args.confidence,
        level=args.level,
        vector_format=args.vector,
        n_resamples=args.resamples,
    )
    print(f"report: {report} ({len(results.runs)} jobs, {len(results.skipped)} skipped)")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
