"""Report section of the estimator study (``experiments/estimator_variance.py``).

The estimator study's own bias intervals (columns ``*_ci_low``/``*_ci_high`` of
``results.parquet``) invert its bootstrap-t unbiasedness test over the K batches of one
job (``pglab.stats``); they are used as they are when a cell has one seed, and replaced
by an interval over seeds when it has several.
"""

from __future__ import annotations

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
from pglab.schema import ESTIMATOR_VARIANCE

#: A cell: the identity without the seed, and the row's N (pooled over seeds).
ESTIMATOR_CELL = [
    *(k for k in ESTIMATOR_VARIANCE.identity if k != "seed"),
    *ESTIMATOR_VARIANCE.table("results").index,
]
ESTIMATOR_METRICS = [
    "relative_bias",
    "relative_noise_floor",
    "total_variance",
    "mse",
    "cosine_mean",
    "snr",
]
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
N_LABEL = "batch size N (trajectories)"
CELL_COLUMNS = [
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


def _cell_row(cell: pd.DataFrame, confidence: float, n_resamples: int) -> dict:
    n_seeds = int(cell["run_dir"].nunique())
    row: dict = {"n_seeds": n_seeds}
    row["n_repetitions"] = int(cell["n_repetitions"].min()) if "n_repetitions" in cell else np.nan
    for metric in ESTIMATOR_METRICS:
        row[metric] = float(cell[metric].mean())
    if n_seeds == 1:
        row["relative_bias_ci_low"] = float(cell["relative_bias_ci_low"].iloc[0])
        row["relative_bias_ci_high"] = float(cell["relative_bias_ci_high"].iloc[0])
        row["ci_over"] = f"K={row['n_repetitions']} batches"
        return row
    # per run, (‖ē − ∇J‖² − tr Cov/K)/‖∇J‖² is unbiased for the squared relative bias:
    # average it over runs, bootstrap that mean over runs, then take roots
    squared = (cell["bias_norm"] ** 2 - cell["bias_noise_floor"] ** 2) / cell[
        "true_gradient_norm"
    ] ** 2
    per_seed = squared.groupby(cell["run_dir"]).mean().to_numpy()
    low, high = stats.bootstrap_ci(per_seed, confidence, n_resamples)
    row["relative_bias"] = float(np.sqrt(max(0.0, per_seed.mean())))
    row["relative_bias_ci_low"] = float(np.sqrt(max(0.0, low)))
    row["relative_bias_ci_high"] = float(np.sqrt(max(0.0, high)))
    row["ci_over"] = f"{n_seeds} seeds"
    return row


def estimator_cells(
    estimator: pd.DataFrame,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    keys: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per cell ``(*keys, mdp, estimator, N)``: the plotted numbers of the study.

    Args:
        estimator: ``Results.estimator``, one row per (job, estimator, N).
        keys: config columns that split cells (:func:`analysis.report.common.design_keys`).
    Returns:
        the cell columns, ``n_seeds`` (runs in the cell), ``n_repetitions`` and the mean
        over runs of ``relative_bias, relative_noise_floor`` (= bias_noise_floor / ‖∇J‖),
        ``total_variance, mse, cosine_mean, snr``. ``relative_bias`` estimates
        ‖E ĝ_N − ∇J‖/‖∇J‖ (noise-debiased) and ``relative_bias_ci_low/high`` is its
        interval: the job's own (bootstrap-t inversion over its K batches; NaN when the
        batches are insufficient data) when the cell has one run, and otherwise the
        root of a bootstrap CI over runs of the per-run unbiased estimates of the
        squared relative bias (``ci_over`` says which).
    """
    frame = estimator.copy()
    if "mdp" not in frame.columns:
        frame["mdp"] = "mdp"
    frame["relative_noise_floor"] = frame["bias_noise_floor"] / frame["true_gradient_norm"]
    by = [*keys, *ESTIMATOR_CELL]
    rows = []
    for key, cell in frame.groupby(by, sort=True, dropna=False):
        rows.append({**dict(zip(by, key, strict=True)), **_cell_row(cell, confidence, n_resamples)})
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


def variance_slopes(cells: pd.DataFrame, keys: Sequence[str] = ()) -> pd.DataFrame:
    """Fitted log-log slope of tr Cov against N per (mdp, estimator); −1 is the 1/N law."""
    by = [*keys, "mdp", "estimator"]
    rows = []
    for key, cell in cells.groupby(by, sort=True, dropna=False):
        fit = stats.loglog_fit(cell["n_trajectories"], cell["total_variance"])
        rows.append({**dict(zip(by, key, strict=True)), **fit})
    return pd.DataFrame(rows, columns=[*by, "slope", "slope_stderr", "intercept", "n_points"])


def _bias_figure(section: Section, cells: pd.DataFrame, name: str, text: dict) -> None:
    colours = figures.palette(figures.levels(cells["estimator"]))

    def noise_floor(ax, mdp, _row):
        part = cells[cells["mdp"] == mdp]
        for level, colour in colours.items():
            line = part[part["estimator"] == level].sort_values("n_trajectories")
            ax.plot(line["n_trajectories"], line["relative_noise_floor"], ":", color=colour, lw=1)
        ax.axhline(0, color="0.3", lw=0.8)
        return [("noise floor √(tr Cov/K)/‖∇J‖", {"color": "0.3", "ls": ":"})]

    ci, source, seeds = text["ci"], text["source"], text["seeds"]
    spec = figures.FacetSpec(
        facet="mdp",
        x="n_trajectories",
        hue="estimator",
        rows=(
            figures.Row(
                "relative_bias",
                ci=("relative_bias_ci_low", "relative_bias_ci_high"),
                label="relative bias ‖E ĝ_N − ∇J‖ / ‖∇J‖",
            ),
        ),
        logx=True,
        xlabel=N_LABEL,
        title=with_context(f"Relative bias vs N — {ci} ({source}); {seeds}", text["label"]),
    )
    section.add_figure(
        name,
        figures.facet_lines(cells, spec, decorate=noise_floor),
        f"Relative bias ‖E ĝ_N − ∇J‖/‖∇J‖ of each estimator against the batch size N "
        f"(log axis), one panel per MDP, ∇J the exact gradient. Points: the "
        f"noise-debiased estimate √max(0, ‖ē − ∇J‖² − tr Cov/K)/‖∇J‖ (ē the mean of the K "
        f"batch estimates). Error bars: {ci} of the bias itself, {source} (inverting the "
        f"bootstrap-t test of the table below), {seeds}; it may touch 0, and a missing bar "
        f"means insufficient data (fewer than 20 effective batches, e.g. a rarely reached "
        f"goal at small N). The dotted lines are the noise floor √(tr Cov/K)/‖∇J‖, the "
        f"distance at which a bias becomes detectable. {CALIBRATION_NOTE}"
        + caption_context(text["label"]),
    )


def _variance_figure(
    section: Section, plotted: pd.DataFrame, slopes: pd.DataFrame, name: str, text: dict
) -> None:
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

    slope_labels = {
        level: f"{level} (slope {', '.join(f'{s:.2f}' for s in group['slope'])})"
        for level, group in slopes.groupby("estimator")
    }
    seeds = text["seeds"]
    spec = figures.FacetSpec(
        facet="mdp",
        x="n_trajectories",
        hue="estimator",
        rows=(figures.Row("total_variance", label="tr Cov(ĝ_N)", log=True),),
        logx=True,
        xlabel=N_LABEL,
        title=with_context(
            f"Total variance vs N (log-log) with a 1/N reference; {seeds}", text["label"]
        ),
        hue_labels=slope_labels,
    )
    section.add_figure(
        name,
        figures.facet_lines(plotted, spec, decorate=one_over_n),
        f"Total variance tr Cov(ĝ_N) over the K batches against N on log-log axes, one panel "
        f"per MDP, with a dashed 1/N reference through the median variance at the smallest "
        f"N. The legend and the slope table give each estimator's least-squares log-log "
        f"slope (one per MDP, in panel order); an average of N independent trajectories has "
        f"slope −1. Point estimates ({seeds}; no interval is drawn, the slope's standard "
        f"error is in the table).{text['zero_note']}" + caption_context(text["label"]),
    )


def _point_figures(
    section: Section, cells: pd.DataFrame, plotted: pd.DataFrame, slug: str, text: dict
) -> None:
    seeds, label = text["seeds"], text["label"]
    spec = figures.FacetSpec(
        facet="mdp",
        x="n_trajectories",
        hue="estimator",
        rows=(
            figures.Row("mse", label="MSE  E‖ĝ_N − ∇J‖²", log=True),
            figures.Row("cosine_mean", label="mean cos(ĝ_N, ∇J)"),
        ),
        logx=True,
        xlabel=N_LABEL,
        title=with_context(f"MSE and cosine to the true gradient; {seeds}", label),
    )
    section.add_figure(
        f"estimator_mse_cosine{slug}",
        figures.facet_lines(cells, spec),
        f"Top row: mean squared error E‖ĝ_N − ∇J‖² (log-log); bottom row: mean cosine "
        f"similarity between ĝ_N and the exact gradient ∇J, against N, one column per MDP. "
        f"Means over the K batches of each job ({seeds}; point estimates)."
        + caption_context(label),
    )
    spec = figures.FacetSpec(
        facet="mdp",
        x="n_trajectories",
        hue="estimator",
        rows=(figures.Row("snr", label="SNR ‖∇J‖² / tr Cov(ĝ_N)", log=True),),
        logx=True,
        xlabel=N_LABEL,
        title=with_context(f"Signal-to-noise ratio vs N; {seeds}", label),
    )
    section.add_figure(
        f"estimator_snr{slug}",
        figures.facet_lines(plotted, spec),
        f"Signal-to-noise ratio ‖∇J‖²/tr Cov(ĝ_N) against N on log-log axes, one panel per "
        f"MDP; for an average of N i.i.d. trajectories it grows as N. Point estimates "
        f"({seeds}).{text['zero_note']}" + caption_context(label),
    )


def _ci_source(cells: pd.DataFrame) -> tuple[str, str]:
    ks = sorted({int(k) for k in cells["n_repetitions"].dropna()})
    k_text = f"K = {ks[0]}" if len(ks) == 1 else f"K = {ks[0]}–{ks[-1]}"
    if bool((cells["n_seeds"] == 1).all()):
        return k_text, f"bootstrap-t over the {k_text} batches of each job"
    return k_text, "bootstrap over seeds (over the K batches where a cell has one seed)"


def _tables(
    section: Section, estimator: pd.DataFrame, cells, slopes, keys, text, level: float
) -> None:
    section.add_table(
        "estimator_unbiasedness",
        f"Unbiasedness test per job row: H0 E[ĝ_N] = ∇J, bootstrap-t test on the "
        f"studentised squared distance test_statistic = K‖ē − ∇J‖²/tr Cov (about 1 for "
        f"an unbiased estimator), from the stored results; 'insufficient data' when the K "
        f"batches hold fewer than 20 effective batches (the spread comes from a few "
        f"batches, e.g. a rare goal), where no approximation holds its level. Verdict at "
        f"level {level:g} per row, with no correction across rows: even for an unbiased "
        f"estimator up to {level:.0%} of the rows reject by chance. {CALIBRATION_NOTE}",
        stats.unbiasedness_verdicts(estimator, level=level, keys=keys),
    )
    section.add_table(
        "estimator_variance_slopes",
        "Least-squares slope of log10 tr Cov against log10 N per MDP and estimator, with "
        "its standard error; −1 is the 1/N law.",
        slopes,
    )
    by = [*keys, *ESTIMATOR_CELL]
    section.add_cells(
        "estimator_cells",
        f"The numbers behind the figures: one row per (MDP, estimator, N"
        f"{''.join(', ' + k for k in keys)}), means over seeds ({text['seeds']}); "
        f"relative-bias {text['ci']} over the source in ci_over.",
        cells[[*by, *CELL_COLUMNS]],
        by,
    )


def estimator_section(
    estimator: pd.DataFrame,
    design: Sequence[str],
    confidence: float,
    level: float,
    n_resamples: int,
) -> Section:
    """Figures (relative bias, variance, MSE and cosine, SNR) and tables of the study."""
    keys = design_keys(estimator, ESTIMATOR_VARIANCE, design)
    cells = estimator_cells(estimator, confidence, n_resamples, keys)
    plotted, zero_note = drop_zero_variance(cells)
    slopes = variance_slopes(plotted, keys)
    seeds = seeds_phrase(cells["n_seeds"])
    k_text, source = _ci_source(cells)
    n_values = ", ".join(str(int(n)) for n in sorted(cells["n_trajectories"].unique()))
    section = Section(
        "Estimator study",
        intro=(
            f"{len(estimator)} rows from {estimator['run_dir'].nunique()} jobs; "
            f"{cells['mdp'].nunique()} MDP(s), {cells['estimator'].nunique()} estimator(s), "
            f"N ∈ {{{n_values}}}; {seeds}; each job draws K independent batches of N "
            f"trajectories ({k_text})."
            + (f" Cells are split by {', '.join(keys)} (differs between runs)." if keys else "")
        ),
    )
    for label, slug, part in split_by(cells, keys):
        text = {
            "seeds": seeds_phrase(part["n_seeds"]),
            "ci": ci_phrase(confidence),
            "source": _ci_source(part)[1],
            "label": label,
            "zero_note": zero_note,
        }
        chosen = plotted.loc[part.index]
        _bias_figure(section, part, f"estimator_relative_bias{slug}", text)
        _variance_figure(
            section,
            chosen,
            slopes if not keys else slopes.merge(part[keys].drop_duplicates(), on=keys),
            f"estimator_variance{slug}",
            text,
        )
        _point_figures(section, part, chosen, slug, text)
    text = {"seeds": seeds, "ci": ci_phrase(confidence)}
    _tables(section, estimator, cells, slopes, keys, text, level)
    return section
