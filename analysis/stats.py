"""Honest uncertainty over stored results: bootstrap over runs, never over episodes.

A run (one seed of one configuration) is the unit of replication. Every interval here
resamples runs: the values passed in are one number per seed (a final return, an AUC,
the return at one iteration), never the episodes inside a run, which are correlated
through the shared policy. Intervals come from ``scipy.stats.bootstrap`` with a fixed
``rng`` seed, so the same inputs give the same interval.

With one seed there is no interval: the functions return NaN bounds and mark the cell
(``n_seeds == 1``); cells with fewer seeds than the best-seeded cell of their table are
listed by :func:`under_seeded_cells` rather than dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of ``values`` (one value per seed).

    Args:
        values: shape ``[n_seeds]``; NaN entries are dropped (a seed without a value).
        confidence: two-sided level, e.g. 0.95.
        n_resamples: bootstrap resamples of the seeds.
        seed: seeds ``numpy.random.default_rng`` for ``scipy.stats.bootstrap``.
        method: ``"percentile"`` (default; stable for a handful of seeds) or ``"BCa"``.
    Returns:
        ``(low, high)``. ``(nan, nan)`` when fewer than two seeds have a value: one seed
        says nothing about seed-to-seed spread. ``(v, v)`` when every seed gives ``v``.
    """
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    result = scipy_stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_ci_columns(
    values: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the column means of ``values`` ``[n_seeds, n_points]``.

    Seeds (rows) are resampled jointly across points, one ``scipy.stats.bootstrap`` call
    for all columns without NaN; a column with NaN (a seed that stopped early) gets its
    own call on its non-NaN seeds, through :func:`bootstrap_ci`.
    Returns ``(low, high)``, each ``[n_points]``.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"values must be [n_seeds, n_points], got shape {x.shape}")
    low = np.full(x.shape[1], np.nan)
    high = np.full(x.shape[1], np.nan)
    complete = ~np.isnan(x).any(axis=0)
    constant = complete & np.all(x == x[:1], axis=0)
    low[constant] = high[constant] = x[0, constant] if x.shape[0] >= 2 else np.nan
    bulk = complete & ~constant
    if x.shape[0] >= 2 and bulk.any():
        result = scipy_stats.bootstrap(
            (x[:, bulk],),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
            vectorized=True,
            axis=0,
        )
        low[bulk] = result.confidence_interval.low
        high[bulk] = result.confidence_interval.high
    for j in np.flatnonzero(~complete):
        low[j], high[j] = bootstrap_ci(x[:, j], confidence, n_resamples, seed)
    return low, high


def mean_ci_over_seeds(
    frame: pd.DataFrame,
    by: Sequence[str],
    value: str,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    seed_column: str = "seed",
) -> pd.DataFrame:
    """Mean of ``value`` per cell ``by`` with a bootstrap CI over seeds.

    Args:
        frame: tidy rows, one per (cell, seed); several rows of one seed in a cell are
            averaged first, so the bootstrap resamples seeds, not rows.
        by: the cell's columns, e.g. ``["n_trajectories", "step_size"]``.
        value: the column to summarise.
    Returns:
        one row per cell: ``by`` columns, ``mean``, ``ci_low``, ``ci_high``, ``n_seeds``,
        sorted by ``by``. ``ci_low``/``ci_high`` are NaN when ``n_seeds < 2``.
    """
    by = list(by)
    per_seed = (
        frame.dropna(subset=[value])
        .groupby([*by, seed_column], sort=True, dropna=False)[value]
        .mean()
        .reset_index()
    )
    rows = []
    for key, cell in per_seed.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        low, high = bootstrap_ci(cell[value].to_numpy(), confidence, n_resamples, seed)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean": float(cell[value].mean()),
                "ci_low": low,
                "ci_high": high,
                "n_seeds": int(cell[seed_column].nunique()),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "n_seeds"])


def curve_ci_over_seeds(
    frame: pd.DataFrame,
    by: Sequence[str],
    x: str,
    value: str,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    seed_column: str = "seed",
) -> pd.DataFrame:
    """Learning curve per cell: mean of ``value`` at each ``x`` with a CI over seeds.

    Args:
        frame: tidy history, one row per (cell, seed, x).
        by: the cell's columns; x: the curve's abscissa (``iteration``); value: the metric.
    Returns:
        one row per (cell, x): ``by``, ``x``, ``mean``, ``ci_low``, ``ci_high``,
        ``n_seeds`` (seeds with a value at that x).
    """
    by = list(by)
    out = []
    for key, cell in frame.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        wide = (
            cell.pivot_table(
                index=seed_column, columns=x, values=value, aggfunc="mean", dropna=False
            )
            .sort_index(axis=0)
            .sort_index(axis=1)
        )
        matrix = wide.to_numpy(dtype=float)  # [n_seeds, n_points]
        low, high = bootstrap_ci_columns(matrix, confidence, n_resamples, seed)
        part = pd.DataFrame(
            {
                x: wide.columns.to_numpy(),
                "mean": np.nanmean(matrix, axis=0),
                "ci_low": low,
                "ci_high": high,
                "n_seeds": (~np.isnan(matrix)).sum(axis=0),
            }
        )
        for column, level in zip(by, key, strict=True):
            part[column] = level
        out.append(part)
    columns = [*by, x, "mean", "ci_low", "ci_high", "n_seeds"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def seed_counts(frame: pd.DataFrame, by: Sequence[str], seed_column: str = "seed") -> pd.DataFrame:
    """Number of distinct seeds per cell ``by``: columns ``by`` + ``n_seeds``."""
    return (
        frame.groupby(list(by), sort=True, dropna=False)[seed_column]
        .nunique()
        .rename("n_seeds")
        .reset_index()
    )


def under_seeded_cells(
    frame: pd.DataFrame, by: Sequence[str], seed_column: str = "seed"
) -> pd.DataFrame:
    """Cells with fewer seeds than the best-seeded cell of ``frame``.

    Returns ``by`` + ``n_seeds`` + ``expected`` (the maximum over cells), one row per
    under-seeded cell; empty when every cell has the same number of seeds.
    """
    counts = seed_counts(frame, by, seed_column)
    if counts.empty:
        return counts.assign(expected=pd.Series(dtype=int))
    expected = int(counts["n_seeds"].max())
    return counts[counts["n_seeds"] < expected].assign(expected=expected).reset_index(drop=True)


def collapse_table(
    summary: pd.DataFrame,
    by: Sequence[str],
    column: str = "collapsed",
    confidence: float = DEFAULT_CONFIDENCE,
) -> pd.DataFrame:
    """Collapse probability per cell with its Clopper-Pearson (exact binomial) interval.

    Args:
        summary: one row per run with a boolean ``column``.
    Returns:
        ``by`` + ``k`` (runs that collapsed), ``n`` (runs), ``probability`` = k/n,
        ``ci_low``, ``ci_high`` (``scipy.stats.binomtest(k, n).proportion_ci``).
    """
    rows = []
    for key, cell in summary.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        flags = cell[column].astype("boolean").fillna(False).astype(bool)
        k, n = int(flags.sum()), int(flags.size)
        rate = binomial_rate(k, n, confidence)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "k": k,
                "n": n,
                "probability": rate["rate"],
                "ci_low": rate["ci_low"],
                "ci_high": rate["ci_high"],
            }
        )
    return pd.DataFrame(rows, columns=[*by, "k", "n", "probability", "ci_low", "ci_high"])


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares line of log10(y) on log10(x) (``scipy.stats.linregress``): slope and more.

    (``pglab.stats.loglog_slope`` returns the bare slope and rejects bad points; this one
    reports the fit of whatever stored points are usable.)

    For tr Cov(ĝ_N) against N an unbiased average of N i.i.d. trajectories has slope −1.
    Points with non-positive x or y are dropped. Returns ``slope``, ``slope_stderr``,
    ``intercept`` (of log10 y) and ``n_points``; NaN slope with fewer than two points.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2 or np.unique(x[keep]).size < 2:
        return {
            "slope": float("nan"),
            "slope_stderr": float("nan"),
            "intercept": float("nan"),
            "n_points": int(keep.sum()),
        }
    fit = scipy_stats.linregress(np.log10(x[keep]), np.log10(y[keep]))
    return {
        "slope": float(fit.slope),
        "slope_stderr": float(fit.stderr),
        "intercept": float(fit.intercept),
        "n_points": int(keep.sum()),
    }


def step_resample(
    frame: pd.DataFrame,
    by: Sequence[str],
    x: str,
    value: str,
    n_points: int = 200,
    seed_column: str = "seed",
) -> pd.DataFrame:
    """Put each run's curve on a grid of ``x`` shared by its cell, as a step function.

    For a learning curve over cumulative environment steps: runs of one cell reach the
    same step counts at different iterations, so their values are compared at common
    ``x``. At grid point g a run's value is the ``value`` of its last row with
    ``x <= g`` (what the run had achieved by then). The grid spans the cell's common
    support, from the latest first ``x`` to the earliest last ``x`` of its runs, so every
    point averages the same runs (a mean over a changing set of runs jumps where one
    ends); when the runs share no span, each run counts where it has data (NaN
    elsewhere, not counted in ``n_seeds`` downstream).

    Args:
        frame: tidy history, one row per (cell, seed, iteration) with an increasing ``x``.
        by: the cell's columns. n_points: grid points per cell, evenly spaced over the
            span (rounded to whole numbers, duplicates dropped).
    Returns:
        one row per (cell, seed, grid point): ``by``, ``seed_column``, ``x``, ``value``.
    """
    by = list(by)
    out = []
    for key, cell in frame.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        runs = [run.sort_values(x) for _, run in cell.groupby(seed_column, sort=True)]
        first = max(float(run[x].iloc[0]) for run in runs)
        last = min(float(run[x].iloc[-1]) for run in runs)
        if last < first:  # no common span: each run where it has data
            first = min(float(run[x].iloc[0]) for run in runs)
            last = max(float(run[x].iloc[-1]) for run in runs)
        grid = np.unique(np.linspace(first, last, n_points).round())
        values = []
        for run in runs:
            xs = run[x].to_numpy(float)
            ys = run[value].to_numpy(float)
            index = np.searchsorted(xs, grid, side="right") - 1
            inside = (index >= 0) & (grid <= xs[-1])
            values.append(np.where(inside, ys[np.clip(index, 0, None)], np.nan))
        covered = ~np.isnan(np.vstack(values)).all(axis=0)  # a point some run has data at
        for run, ys in zip(runs, values, strict=True):
            part = pd.DataFrame({x: grid[covered], value: ys[covered]})
            part[seed_column] = run[seed_column].iloc[0]
            for column, level in zip(by, key, strict=True):
                part[column] = level
            out.append(part)
    columns = [*by, seed_column, x, value]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def unbiasedness_verdicts(
    estimator: pd.DataFrame, level: float = 0.05, keys: Sequence[str] = ()
) -> pd.DataFrame:
    """The estimator table's unbiasedness tests with a verdict at ``level``.

    Each row's ``p_value`` is the app's bootstrap-t test of H0: E[ĝ_N] = ∇J on the
    studentised squared norm ``test_statistic`` = K‖ē − ∇J‖²/tr Cov (``pglab.stats``),
    NaN when the K batches hold fewer than ``MIN_EFFECTIVE_BATCHES`` effective batches
    (``effective_batches``). Returns ``mdp``, ``estimator``, ``n_trajectories``, ``seed``,
    ``effective_batches``, ``test_statistic``, ``p_value``, ``verdict``: "reject unbiased"
    when ``p_value < level``, "insufficient data" when it is NaN, else "consistent with
    unbiased". ``keys``: further columns to keep first (config keys that split cells).
    """
    columns = [
        c
        for c in (
            *keys,
            "mdp",
            "estimator",
            "n_trajectories",
            "seed",
            "effective_batches",
            "test_statistic",
            "p_value",
        )
        if c in estimator.columns
    ]
    table = estimator[columns].copy()
    p = table["p_value"].to_numpy(dtype=float)
    table["verdict"] = np.select(
        [np.isnan(p), p < level],
        ["insufficient data", "reject unbiased"],
        default="consistent with unbiased",
    )
    return table.reset_index(drop=True)


def binomial_rate(
    successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE
) -> dict[str, float]:
    """A rate, its Monte-Carlo standard error ``sqrt(p (1 - p) / n)`` and Clopper–Pearson CI."""
    if trials == 0:
        return {"rate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    rate = successes / trials
    interval = scipy_stats.binomtest(successes, trials).proportion_ci(confidence, method="exact")
    return {
        "rate": rate,
        "se": float(np.sqrt(rate * (1 - rate) / trials)),
        "ci_low": float(interval.low),
        "ci_high": float(interval.high),
    }


def calibration_rates(
    calibration: pd.DataFrame, level: float = 0.05, keys: Sequence[str] = ()
) -> pd.DataFrame:
    """Error rates of the verdicts per (mdp, estimator, N) from the calibration study's rows.

    Args:
        calibration: one row per (mdp, estimator, N, study): ``p_value``,
            ``relative_bias_ci_low/high``, ``known_relative_bias`` (NaN where theory does
            not give it), as written by ``experiments/calibration.py``.
        level: the test's level.
        keys: further cell columns (config keys that split cells), first.
    Returns:
        One row per cell: ``n_studies``, ``n_seeds`` (runs); ``decided`` (fraction with a verdict, i.e. not
        "insufficient data"); ``kind`` ("size" when the estimator is unbiased there,
        "power" when it is biased); ``reject_rate`` over
        all studies ("insufficient data" makes no claim and counts as not rejecting, as
        for any test that may abstain) with its Monte-Carlo ``reject_se`` and
        Clopper–Pearson ``reject_ci_low/high``; ``coverage`` of ``known_relative_bias`` by
        the interval over the studies that report one (decided), with ``coverage_se``
        (NaN where the truth is unknown).
    """
    rows = []
    by = [*keys, "mdp", "estimator", "n_trajectories"]
    for key, cell in calibration.groupby(by, sort=True, dropna=False):
        row = dict(zip(by, key, strict=True))
        truth = cell["known_relative_bias"].iloc[0]
        decided = cell[cell["p_value"].notna()]
        row["n_studies"] = len(cell)
        if "run_dir" in cell.columns:
            row["n_seeds"] = int(cell["run_dir"].nunique())
        row["decided"] = len(decided) / len(cell)
        row["known_relative_bias"] = truth
        # NaN truth: biased by theory, by an amount it does not give (normalized at N > 1,
        # the dropped discount at gamma < 1)
        row["kind"] = "size" if truth == 0 else "power"
        # 'insufficient data' makes no claim: it counts as not rejecting
        reject = binomial_rate(int((decided["p_value"] < level).sum()), len(cell))
        row.update({f"reject_{k}" if k != "rate" else "reject_rate": v for k, v in reject.items()})
        if np.isnan(truth) or decided.empty:
            row["coverage"], row["coverage_se"] = np.nan, np.nan
        else:
            # a relative tolerance of 1e-9 absorbs float round-off at a zero-width interval
            slack = 1e-9 * max(truth, 1e-300)
            inside = (decided["relative_bias_ci_low"] <= truth + slack) & (
                truth - slack <= decided["relative_bias_ci_high"]
            )
            cover = binomial_rate(int(inside.sum()), len(decided))
            row["coverage"], row["coverage_se"] = cover["rate"], cover["se"]
        rows.append(row)
    return pd.DataFrame(rows)


def convergence_rates(
    gaps: Sequence[float] | np.ndarray, start: int, stop: int
) -> dict[str, float]:
    """Sublinear and linear rate fits of a suboptimality curve over iterates ``[start, stop)``.

    The least-squares fits of ``pglab.tabular.natural.fit_sublinear_rate`` and
    ``fit_linear_rate`` on stored values (analysis/ does not import pglab's maths; a test
    checks that the two agree to round-off):

    * ``exponent``: slope of ``log gap_t`` on ``log t`` (``gap_t ~ C t^exponent``; plain
      softmax PG on a bandit: −1);
    * ``contraction``: ``exp`` of the slope of ``log gap_t`` on ``t``, the factor the gap
      shrinks by per iterate (exact NPG on a bandit: ``e^(−ηΔ)``);
    * ``constant``: ``t gap_t`` at the window's last iterate (``C`` when the exponent is −1).

    Args:
        gaps: ``[K]``, ``gaps[t]`` the gap at iterate t; the window's values must be finite
            and > 0, and ``1 <= start``, ``stop - start >= 2``.
    """
    y = np.asarray(gaps, dtype=float)[start:stop]
    t = np.arange(start, start + len(y), dtype=float)
    if start < 1 or len(y) < 2 or not np.all(np.isfinite(y) & (y > 0)):
        raise ValueError(
            f"a rate fit needs start >= 1 and >= 2 finite gaps > 0 in [{start}, {stop}), "
            f"got start={start} and {len(y)} point(s)"
        )
    exponent = np.polyfit(np.log(t), np.log(y), 1)[0]
    slope = np.polyfit(t, np.log(y), 1)[0]
    return {
        "exponent": float(exponent),
        "contraction": float(np.exp(slope)),
        "constant": float(t[-1] * y[-1]),
    }
