"""Gradient-quality statistics: how far repeated gradient estimates are from the truth.

Pure functions over arrays (numpy, tensors or anything ``np.asarray`` takes), with the
statistics themselves from scipy. The input layout throughout:

* ``estimates``: ``[K, D]`` float, ``K`` independent batch estimates ``ghat_N`` of one
  estimator (each a flattened ``[S, A]`` gradient, ``D = S A``), e.g. a value of
  :func:`pglab.estimators.batch_estimates` reshaped to ``[K, -1]``;
* ``truth``: ``[D]`` the exact gradient ``grad J`` (:func:`pglab.exact.policy_gradient`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

__all__ = [
    "MIN_INFORMATIVE_BATCHES",
    "ZERO_VARIANCE_ATOL",
    "gradient_estimate_metrics",
    "loglog_slope",
]

#: A coordinate whose ``K`` estimates are all equal has no standard error; it counts
#: as unbiased only if ``|mean - truth| <= ZERO_VARIANCE_ATOL * (1 + |truth|)`` (float
#: round-off), otherwise the test rejects outright (``p_value = 0``).
ZERO_VARIANCE_ATOL = 1e-12
#: A coordinate enters the z-test only if at least this many of the K batch estimates
#: differ from its median (the normal approximation needs more than a handful of events).
MIN_INFORMATIVE_BATCHES = 10


def _as_float_array(name: str, value: Any, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array: {error}") from None
    if array.ndim != ndim:
        expected = "[K, D]" if ndim == 2 else "[D]"
        raise ValueError(f"{name} must have shape {expected}, got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name}{list(index)} is {array[index]}; all entries must be finite")
    return array


def gradient_estimate_metrics(
    estimates: Any,
    truth: Any,
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = 2000,
) -> dict[str, float]:
    """Bias, variance, MSE, alignment and an unbiasedness test for ``K`` gradient estimates.

    Args:
        estimates: ``[K, D]`` (``K >= 2``) independent estimates ``ghat_k``.
        truth: ``[D]`` the exact gradient ``g``.
        confidence: level of the bootstrap confidence intervals, in ``(0, 1)``.
        seed: seeds the bootstrap's ``numpy.random.Generator``.
        n_resamples: bootstrap resamples.

    Returns:
        A dict of floats, with ``ebar = (1/K) sum_k ghat_k`` and ``s_j^2`` the unbiased
        sample variance of coordinate ``j`` over the ``K`` rows:

        ======================================  =================================================
        key                                     definition
        ======================================  =================================================
        ``n_repetitions``                       ``K``
        ``true_gradient_norm``                  ``||g||``
        ``bias_norm``                           ``||ebar - g||``
        ``bias_norm_ci_low`` / ``_high``        percentile bootstrap CI of ``bias_norm``,
                                                resampling the ``K`` rows
                                                (``scipy.stats.bootstrap``)
        ``bias_noise_floor``                    ``sqrt(trCov / K)``: the typical
                                                ``||ebar - g||`` of an *unbiased* estimator
        ``bias_norm_debiased``                  ``sqrt(max(0, ||ebar - g||^2 - trCov / K))``;
                                                ``||ebar - g||^2 - trCov/K`` is unbiased for
                                                ``||E ghat - g||^2``
        ``relative_bias`` (``_ci_low/_high``)   ``bias_norm / ||g||`` (nan if ``g = 0``)
        ``total_variance``                      ``trCov = sum_j s_j^2``, the trace of the
                                                covariance of one ``ghat_N``
        ``mse``                                 ``(1/K) sum_k ||ghat_k - g||^2``
        ``cosine_mean``                         ``(1/K) sum_k cos(ghat_k, g)``, with
                                                ``cos = 0`` for a zero estimate (no
                                                direction); nan if ``g = 0``
        ``snr``                                 ``||g||^2 / trCov`` (inf if ``trCov = 0``)
        ``max_abs_z``                           ``max_j |z_j|``, ``z_j = (ebar_j - g_j) /
                                                (s_j / sqrt(K))`` over the coordinates
                                                whose K values are not all equal
        ``p_value``                             ``min(1, m * 2 (1 - Phi(max_abs_z)))``:
                                                Bonferroni over those ``m`` coordinates,
                                                for ``H0: E ghat = g``
        ``n_tested_coordinates``                ``m``
        ``n_untestable_coordinates``            coordinates the z-test cannot judge (below)
        ======================================  =================================================

        The z-test uses the normal approximation to the mean of ``K`` rows, so it only
        tests coordinates that differ from their median in at least
        :data:`MIN_INFORMATIVE_BATCHES` of the ``K`` batches. A constant coordinate equal to
        the truth up to round-off (:data:`ZERO_VARIANCE_ATOL`) passes; a constant one that
        differs, or one that moved in too few batches (a rarely visited state), is counted
        in ``n_untestable_coordinates`` rather than taken as evidence of bias. With no
        tested coordinate ``p_value`` is 1 if nothing is untestable and NaN otherwise.

    Raises:
        ValueError: wrong shapes, ``K < 2``, non-finite entries, or ``confidence`` outside
            ``(0, 1)``.
    """
    values = _as_float_array("estimates", estimates, 2)
    target = _as_float_array("truth", truth, 1)
    n_reps, dim = values.shape
    if n_reps < 2:
        raise ValueError(f"estimates needs K >= 2 rows to estimate a variance, got K = {n_reps}")
    if target.shape[0] != dim:
        raise ValueError(
            f"truth has {target.shape[0]} entries, expected D = {dim} (from estimates)"
        )
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, numbers.Real)
        or not 0.0 < confidence < 1.0
    ):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if (
        isinstance(n_resamples, bool)
        or not isinstance(n_resamples, numbers.Integral)
        or n_resamples < 1
    ):
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")

    mean = values.mean(axis=0)
    diff = mean - target
    bias_sq = float(diff @ diff)
    bias_norm = math.sqrt(bias_sq)
    variances = values.var(axis=0, ddof=1)  # s_j^2
    total_variance = float(variances.sum())
    g_norm = float(np.linalg.norm(target))

    # Bootstrap over the K rows: resample row indices, statistic ||mean of rows - g||.
    low, high = _bootstrap_bias_ci(values, target, float(confidence), int(seed), int(n_resamples))

    # Alignment: cos(ghat_k, g) with cos = 0 for ghat_k = 0.
    row_norms = np.linalg.norm(values, axis=1)
    if g_norm > 0:
        dots = values @ target
        safe = np.where(row_norms > 0, row_norms, 1.0)
        cosine_mean = float(np.mean(np.where(row_norms > 0, dots / (safe * g_norm), 0.0)))
    else:
        cosine_mean = math.nan

    # Unbiasedness: per-coordinate z with the sample standard error, Bonferroni over m.
    # The z-test leans on the central limit theorem, which needs a coordinate to move in
    # enough of the K batches: one that differs from its median in fewer than
    # MIN_INFORMATIVE_BATCHES (a rarely reached state, say) is "untestable", as is a
    # constant column that differs from the truth (K identical draws of a rare-event
    # estimator are no evidence of bias). A constant column equal to the truth (up to
    # round-off) is fine, e.g. an unreachable state.
    std = np.sqrt(variances)
    informative = (values != np.median(values, axis=0)).sum(axis=0)
    tested = (informative >= MIN_INFORMATIVE_BATCHES) & (std > 0)
    constant_ok = (np.ptp(values, axis=0) == 0) & (
        np.abs(diff) <= ZERO_VARIANCE_ATOL * (1.0 + np.abs(target))
    )
    n_untestable = int((~tested & ~constant_ok).sum())
    m = int(tested.sum())
    z = diff[tested] / (std[tested] / math.sqrt(n_reps))
    max_abs_z = float(np.max(np.abs(z))) if m > 0 else 0.0
    if m == 0:
        p_value = math.nan if n_untestable else 1.0
    else:
        p_value = min(1.0, m * 2.0 * float(scipy_stats.norm.sf(max_abs_z)))

    def relative(x: float) -> float:
        return x / g_norm if g_norm > 0 else math.nan

    return {
        "n_repetitions": float(n_reps),
        "true_gradient_norm": g_norm,
        "bias_norm": bias_norm,
        "bias_norm_ci_low": low,
        "bias_norm_ci_high": high,
        "bias_noise_floor": math.sqrt(total_variance / n_reps),
        "bias_norm_debiased": math.sqrt(max(0.0, bias_sq - total_variance / n_reps)),
        "relative_bias": relative(bias_norm),
        "relative_bias_ci_low": relative(low),
        "relative_bias_ci_high": relative(high),
        "total_variance": total_variance,
        "mse": float(np.mean(np.sum((values - target) ** 2, axis=1))),
        "cosine_mean": cosine_mean,
        "snr": g_norm**2 / total_variance if total_variance > 0 else math.inf,
        "max_abs_z": max_abs_z,
        "p_value": p_value,
        "n_untestable_coordinates": n_untestable,
        "n_tested_coordinates": float(m),
    }


def _bootstrap_bias_ci(
    values: np.ndarray, target: np.ndarray, confidence: float, seed: int, n_resamples: int
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``||mean_k values[k] - target||`` over the ``K`` rows.

    The data handed to ``scipy.stats.bootstrap`` are the row indices ``0 .. K-1``; the
    statistic turns each resample of indices into counts ``c [B, K]`` and evaluates
    ``||c @ values / K - target||``, so no ``[B, K, D]`` array is formed.
    """
    n_reps = values.shape[0]

    def statistic(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        indices = np.moveaxis(np.asarray(indices), axis, -1)
        lead = indices.shape[:-1]
        flat = indices.reshape(-1, n_reps)
        rows = flat.shape[0]
        offsets = (np.arange(rows) * n_reps)[:, None]
        counts = np.bincount((flat + offsets).ravel(), minlength=rows * n_reps)
        means = counts.reshape(rows, n_reps) @ values / n_reps
        return np.linalg.norm(means - target, axis=1).reshape(lead)

    point = float(statistic(np.arange(n_reps)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (all-equal) resamples warn; handled below
        result = scipy_stats.bootstrap(
            (np.arange(n_reps),),
            statistic,
            n_resamples=n_resamples,
            batch=max(1, 2_000_000 // n_reps),  # bounds the [B, K] counts to ~16 MB
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # every resample gave the same value
        return point, point
    return low, high


def loglog_slope(x: Any, y: Any) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (``scipy.stats.linregress``).

    Args:
        x: ``[n]`` positive numbers (e.g. batch sizes ``N``), ``n >= 2``, not all equal.
        y: ``[n]`` positive numbers (e.g. ``total_variance``).

    Returns:
        The slope ``b`` of ``log y = a + b log x``; ``-1`` for ``trCov(ghat_N) ~ 1/N``.
    """
    xs = _as_float_array("x", x, 1)
    ys = _as_float_array("y", y, 1)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {xs.shape[0]} and {ys.shape[0]}")
    if xs.shape[0] < 2:
        raise ValueError(f"need at least 2 points for a slope, got {xs.shape[0]}")
    for name, array in (("x", xs), ("y", ys)):
        if np.any(array <= 0):
            index = int(np.argmax(array <= 0))
            raise ValueError(f"{name}[{index}] is {array[index]}; log-log needs positive values")
    if np.all(xs == xs[0]):
        raise ValueError("x values are all equal; the slope is undefined")
    return float(scipy_stats.linregress(np.log(xs), np.log(ys)).slope)
