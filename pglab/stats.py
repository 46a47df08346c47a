"""Gradient-quality statistics: how far repeated gradient estimates are from the truth.

Pure functions over arrays (numpy, tensors or anything ``np.asarray`` takes), with the
statistics themselves from scipy. The input layout throughout:

* ``estimates``: ``[K, D]`` float, ``K`` independent batch estimates ``ghat_N`` of one
  estimator (each a flattened ``[S, A]`` gradient, ``D = S A``), e.g. a value of
  :func:`pglab.tabular.estimates.batch_estimates` reshaped to ``[K, -1]``;
* ``truth``: ``[D]`` the exact gradient ``grad J`` (:func:`pglab.tabular.exact.policy_gradient`).

Thread counts. The results are bit-identical whatever the BLAS and OpenMP thread counts
(``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ...): a multithreaded BLAS splits a
product's sums differently for different thread counts, which moves the last bits of the
bootstrap and, through them, of the interval ends. So the two matrix products of the
bias test, the Gram matrix of the centred estimates (``[K, K]`` or ``[D, D]``) and the
bootstrap's ``counts @ centred`` (``[B, K] x [K, D]``), run through the BLAS on one thread
(:func:`pglab.threads.blas_single_thread`, one summation order; 12-13x faster than
``np.einsum``'s own loops at K = 200, D = 64-3000, measured), the vector reductions are
``np.einsum`` (numpy's own loops), and the one eigenvector the interval needs comes from
:func:`_top_eigenvector` (Householder tridiagonalisation in numpy, then LAPACK's
bisection and inverse iteration on the tridiagonal matrix: vector operations only, which
OpenBLAS runs on one thread below 10^4 entries, far above the ``min(K, D)`` it sees
here). The interval does not depend on that eigenvector's sign (it tries both), so no
eigensolver's sign convention enters a result. Numbers can still differ between machines
whose CPUs take different vector paths through the BLAS or numpy's loops. (The one other
BLAS call, in :func:`loglog_slope` via ``scipy.stats.linregress``, is a 2 x n product of
a handful of points: one thread.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import linalg as scipy_linalg
from scipy import stats as scipy_stats

from pglab import checks
from pglab.threads import blas_single_thread

__all__ = [
    "HIGH_DIMENSION",
    "MIN_EFFECTIVE_BATCHES",
    "ZERO_VARIANCE_ATOL",
    "bias_test",
    "gradient_estimate_metrics",
    "loglog_slope",
]

#: All ``K`` estimates equal: the estimate counts as exactly the truth when
#: ``||ebar - g|| <= ZERO_VARIANCE_ATOL * (1 + ||g||)`` (float round-off).
ZERO_VARIANCE_ATOL = 1e-12
#: The bias test and interval need at least this many *effective* batches
#: ``n_eff = (sum_k w_k)^2 / sum_k w_k^2``, ``w_k = ||ghat_k - ebar||^2``: the number of
#: batches that carry the spread. For a rare event (a state reached in c of the K batches)
#: ``n_eff`` is about c; for Gaussian estimates in D dimensions about ``K D / (D + 2)``.
#: Below it the verdict is "insufficient data" (NaN p-value and interval). 20 comes from
#: the Poisson case: a studentised test on c ~ Poisson(lambda) events holds its level
#: 0.05 to within 0.01 once c >= 20, and exceeds 0.08 for lambda ~ 10-15 (calibration
#: study: README, "How far the verdicts can be trusted").
MIN_EFFECTIVE_BATCHES = 20
#: With ``nu = (tr Sigma)^2 / tr(Sigma^2)`` (the number of equally noisy axes) at or above
#: this, the test and interval use the Gaussian-theory F approximation alone: the squared
#: norm then sums many axes' noise and is near its two-moment approximation, while the
#: bootstrap-t turns conservative (resamples repeat rows, which inflates each resample's
#: own trS_b). Measured on Taxi (nu = 150-340, K = 200): bootstrap-t size 0.004 over 800
#: studies and 95% intervals covering 0 in 99.5-100% of them; the zoo's other MDPs have
#: nu <= 40 (gridworld ~14, garnet ~36).
HIGH_DIMENSION = 50.0
#: Up to this many rows (or K <= D) the test works with the [K, K] Gram matrix of the
#: centred rows; beyond, with the [D, D] scatter matrix (same eigenvalues, less memory).
MAX_GRAM_ROWS = 1000


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


def _sq_norm(vector: np.ndarray) -> float:
    """``||v||^2`` in one fixed summation order (``v @ v`` is a BLAS call that may thread)."""
    return float(np.einsum("d,d->", vector, vector))


def _top_eigenvector(matrix: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the largest eigenvalue of the symmetric ``matrix`` ``[n, n]``.

    Computed in a fixed order whatever the thread counts: Householder reflections
    ``H_k = I - 2 v_k v_k^T`` (numpy loops) reduce ``matrix`` to a tridiagonal ``T =
    Q^T matrix Q``, LAPACK's bisection and inverse iteration (``stebz``/``stein``, no
    level-3 BLAS) give the eigenvector ``z`` of ``T``'s largest eigenvalue, and ``Q z`` is
    the result. Accurate to round-off over the gap to the next eigenvalue, as LAPACK's
    ``syevd``; the sign is arbitrary (the caller fixes it).
    """
    work = np.array(matrix, dtype=np.float64)  # a copy, reduced in place
    n = work.shape[0]
    if n == 1:
        return np.ones(1)
    reflectors: list[tuple[int, np.ndarray]] = []
    for k in range(n - 2):
        column = work[k + 1 :, k]
        norm = math.sqrt(_sq_norm(column))
        if norm == 0.0:
            continue  # already reduced
        alpha = -math.copysign(norm, column[0])  # H column = alpha e_1
        v = column.copy()
        v[0] -= alpha
        v /= math.sqrt(_sq_norm(v))
        block = work[k + 1 :, k + 1 :]
        p = 2.0 * np.einsum("ij,j->i", block, v)  # 2 A v
        w = p - np.einsum("i,i->", v, p) * v
        block -= np.multiply.outer(v, w) + np.multiply.outer(w, v)  # H A H
        work[k + 1 :, k] = 0.0
        work[k, k + 1 :] = 0.0
        work[k + 1, k] = work[k, k + 1] = alpha
        reflectors.append((k, v))
    _, z = scipy_linalg.eigh_tridiagonal(
        np.diag(work).copy(), np.diag(work, 1).copy(), select="i", select_range=(n - 1, n - 1)
    )
    vector = z[:, 0].copy()
    for k, v in reversed(reflectors):  # Q z = H_0 H_1 ... z
        tail = vector[k + 1 :]
        tail -= 2.0 * np.einsum("i,i->", v, tail) * v
    return vector / math.sqrt(_sq_norm(vector))


def _principal_axis(centred: np.ndarray, gram: np.ndarray, use_gram: bool) -> np.ndarray:
    """Unit top principal axis ``[D]`` of the centred rows ``[K, D]``.

    ``gram`` is ``centred centred^T`` (``use_gram``) or ``centred^T centred``; the axis is
    :func:`_top_eigenvector`'s, of the smaller of the two ``min(K, D)``-sized matrices. Its
    sign is arbitrary (the interval tries both); the largest entry is made positive so the
    same data always give the same vector.
    """
    n_reps, dim = centred.shape
    if dim <= n_reps:
        scatter = gram if not use_gram else _gram(centred, use_gram=False)
        axis = _top_eigenvector(scatter)
    else:
        small = gram if use_gram else _gram(centred, use_gram=True)
        axis = np.einsum("kd,k->d", centred, _top_eigenvector(small))
        axis /= math.sqrt(_sq_norm(axis))
    return axis if axis[int(np.argmax(np.abs(axis)))] > 0 else -axis


def _gram(centred: np.ndarray, use_gram: bool) -> np.ndarray:
    """``centred centred^T`` ``[K, K]`` (``use_gram``) or ``centred^T centred`` ``[D, D]``:
    one BLAS call on one thread (``syrk``: exactly symmetric)."""
    with blas_single_thread():
        return centred @ centred.T if use_gram else centred.T @ centred


def _resampled_means(counts: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """``e_b = counts_b . centred / K`` ``[B, D]``, each resample's mean of the centred rows
    (``counts`` ``[B, K]``, ``centred`` ``[K, D]``): one BLAS call on one thread."""
    with blas_single_thread():
        return (counts @ centred) / centred.shape[0]


@functools.lru_cache(maxsize=1)
def _bootstrap_counts(n_reps: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[B, K]`` float: how often each of the ``K`` rows is drawn in each of ``B`` resamples.

    Read-only and cached: a study tests every estimator of a cell, one after another, with
    the cell's seed, so the same ``[B, K]`` draws serve them all (drawing them is ~3.5 ms
    at B = 1000, K = 200). One entry: the last draws only, so no more memory stays held
    than one test needs (``8 B K`` bytes).
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_reps, size=(n_resamples, n_reps))
    draws += (np.arange(n_resamples) * n_reps)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_resamples * n_reps)
    counts = counts.reshape(n_resamples, n_reps).astype(np.float64)
    counts.flags.writeable = False
    return counts


def bias_test(
    errors: np.ndarray, confidence: float = 0.95, seed: int = 0, n_resamples: int = 2000
) -> dict[str, float]:
    """Test ``H0: E x = 0`` and a confidence interval for ``||E x||`` from ``K`` i.i.d. rows.

    Args:
        errors: ``[K, D]`` float64, row ``k`` is ``x_k = ghat_k - g`` (estimate minus truth),
            its mean ``b = E x`` the bias vector. Rows with no spread are handled by
            :func:`gradient_estimate_metrics`, not here.
        confidence: level of the interval, in ``(0, 1)``.
        seed: seeds the bootstrap's ``numpy.random.Generator``.
        n_resamples: ``B``, bootstrap resamples.

    Returns:
        ``p_value``, ``ci_low``, ``ci_high`` (of ``||b||``, absolute units) and
        ``test_statistic`` ``T = K ||xbar||^2 / trS``.

    The statistic is the squared norm of the mean error studentised by the total variance,
    ``q / trS`` with ``q = ||xbar||^2`` and ``trS = sum_j s_j^2``. Its null distribution is
    the *bootstrap-t* one: resample the centred rows ``x_k - xbar`` (``B`` times, with
    replacement), and for resample ``b`` let ``e_b`` be its mean and ``trS_b`` its total
    variance; then ``q / trS`` is compared with ``||e_b||^2 / trS_b``. Studentising each
    resample by its own ``trS_b`` is what keeps the level on skewed, rare-event
    estimates: a batch sample that happens to hold few events has a small mean error *and*
    a small variance, and the bootstrap-t distribution reproduces that coupling, where a
    normal approximation (or a z-test per coordinate) rejects far above its level.

    * ``p_value = max(p_boot, p_F)``: the test rejects only when two calibrations agree,
      the bootstrap-t one, ``p_boot = (1 + #{b: ||e_b||^2 / trS_b >= q / trS}) / (B + 1)``
      (one-sided because any bias makes ``q`` larger; at least ``1 / (B + 1)``), and the
      Gaussian-theory ``p_F = P(F(nu, nu (K - 1)) >= T)`` (:func:`_f_bias_test`). Its size is at most the smaller of
      the two: the F-test alone is liberal on skewed, rare-event estimates (it is exact
      only for Gaussian rows), and the bootstrap-t alone slightly on near-Gaussian ones
      (measured at level 0.05 on 3000 sets of K = 200 Gaussian rows in D = 2: 0.056
      alone, 0.053 combined, Monte-Carlo SE 0.004).
    * The interval inverts the same test for ``H_theta: b = theta u``, with ``u = xbar /
      ||xbar||`` (the direction the data point to) when the test rejects at level
      ``1 - c``, and otherwise the top principal axis of ``S`` (the direction is then
      unknown, and a bias along the noisiest axis is the easiest to hide: the least
      favourable choice, which keeps the upper end from undercovering when the bias is
      comparable to the noise; an axis has no sign, so both ``u`` and ``-u`` are tried
      and the wider interval kept, which makes it independent of the sign an
      eigensolver returns). Under it, resample ``b`` gives
      ``stat_b(theta) = (theta^2 + 2 theta u.e_b + ||e_b||^2) trS / trS_b``, and ``theta``
      is kept while ``q`` lies between the ``(1 - c)/2`` and ``(1 + c)/2`` quantiles of
      ``stat_b(theta)`` (``c`` = confidence; for ``theta = 0`` only the upper quantile
      counts). The ends are found by bisection. The lower end is 0 exactly when ``q`` is
      below the null's ``(1 + c)/2`` quantile, so for an unbiased estimator the interval
      covers 0 with probability about ``(1 + c)/2`` (0.975 at 95%), and a test at level
      ``1 - c`` can reject while the interval still touches 0 (a narrow band: the test is
      one-sided, the interval two-sided).
    * With ``nu >= HIGH_DIMENSION`` effective axes the bootstrap-t is conservative and the
      F approximation accurate: test and interval are then :func:`_f_bias_test`'s alone.
    """
    mean = errors.mean(axis=0)
    centred = errors - mean
    spread = np.einsum("kd,kd->k", centred, centred)  # w_k = ||x_k - xbar||^2
    return _bias_test(mean, centred, spread, confidence, seed, n_resamples)


def _bias_test(
    mean: np.ndarray,
    centred: np.ndarray,
    spread: np.ndarray,
    confidence: float,
    seed: int,
    n_resamples: int,
) -> dict[str, float]:
    """:func:`bias_test` on ``xbar`` ``[D]``, the centred rows ``[K, D]`` and their ``w_k`` ``[K]``."""
    n_reps, dim = centred.shape
    q = _sq_norm(mean)
    trace = float(spread.sum()) / (n_reps - 1)

    # (K - 1) S = centred^T centred [D, D] and the Gram matrix centred centred^T [K, K]
    # share their non-zero eigenvalues: the Gram matrix unless K is both large and > D
    use_gram = n_reps <= max(dim, MAX_GRAM_ROWS)
    gram = _gram(centred, use_gram)
    statistic = n_reps * q / trace
    dof = _effective_dimension(gram, n_reps, dim)
    if dof >= HIGH_DIMENSION:
        return _f_bias_test(statistic, dof, n_reps, trace, confidence)

    counts = _bootstrap_counts(n_reps, n_resamples, seed)  # [B, K]
    resampled = _resampled_means(counts, centred)  # e_b  [B, D]
    sq_norms = np.einsum("bd,bd->b", resampled, resampled)  # ||e_b||^2
    traces = (np.einsum("bk,k->b", counts, spread) - n_reps * sq_norms) / (n_reps - 1)  # trS_b
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(traces > 0, trace / traces, np.inf)  # trS / trS_b
    with np.errstate(invalid="ignore"):
        null = sq_norms * scale  # ||e_b||^2 trS / trS_b
    null = np.where(np.isnan(null), np.inf, null)  # 0 * inf: a degenerate resample
    p_bootstrap = (1.0 + float(np.count_nonzero(null >= q))) / (n_resamples + 1.0)
    p_value = max(p_bootstrap, float(scipy_stats.f.sf(statistic, dof, dof * (n_reps - 1))))

    # Direction u of the bias in the interval's worlds: the data's, xbar / ||xbar||, when
    # they show a bias (p < 1 - confidence); otherwise the direction is unknown and u is the
    # least favourable one, the top principal axis of S, along which a bias is easiest to
    # hide in the noise (it widens the upper end only).
    # An axis has no sign, and the interval's upper end depends on it through the skew of
    # the resampled projections u.e_b: both signs are tried and the wider end is kept, so
    # the interval does not depend on the sign a LAPACK build happens to return.
    if q > 0 and p_value < 1.0 - confidence:
        directions = [mean / math.sqrt(q)]
    else:
        axis = _principal_axis(centred, gram, use_gram)
        directions = [axis, -axis]
    upper_level, lower_level = (1.0 + confidence) / 2.0, (1.0 - confidence) / 2.0
    far = math.sqrt(q) + 10.0 * math.sqrt(trace)  # beyond any plausible ||b||
    # theta = 0 is the same world for every direction: 0 is rejected (at level
    # (1 - confidence) / 2) or not whatever u is, so the lower end is 0 for the axis.
    quantiles = {level: _Quantile(n_resamples, level) for level in (upper_level, lower_level)}
    low, high = math.inf, 0.0
    for direction in directions:
        along = np.einsum("bd,d->b", resampled, direction)  # u.e_b

        def quantile(theta: float, level: float, along: np.ndarray = along) -> float:
            with np.errstate(invalid="ignore"):
                world = (theta * theta + 2.0 * theta * along + sq_norms) * scale
            return quantiles[level](np.where(np.isnan(world), np.inf, world))

        end = 0.0
        if quantile(0.0, upper_level) < q:  # 0 rejected: smallest theta whose upper quantile >= q
            _, end = _bisect(lambda theta, a=along: quantile(theta, upper_level, a) < q, 0.0, far)
        low = min(low, end)
        top, _ = _bisect(lambda theta, a=along: quantile(theta, lower_level, a) <= q, end, far)
        high = max(high, top)  # largest theta whose lower quantile <= q
    return {"p_value": p_value, "ci_low": low, "ci_high": high, "test_statistic": statistic}


class _Quantile:
    """``np.quantile(values, level)`` (its default ``linear`` method) for many arrays of one
    length ``n``, at a fraction of the call's cost, bit for bit.

    The bisections of :func:`_bias_test` ask for one quantile of a fresh ``[B]`` array ~240
    times per test, and ``np.quantile``'s argument handling cost ~6x its partition (65 % of
    a calibration study, measured). This does what ``np.quantile`` does for one level of a
    1-D float array without NaN: the order statistics ``x_(i)`` and ``x_(i+1)`` around the
    virtual index ``h = (n - 1) level`` (one ``partition``; order statistics do not depend
    on which other positions a partition also fixes), then numpy's own ``_lerp``, ``a +
    (b - a) g`` for ``g = h - i < 0.5`` and ``b - (b - a) (1 - g)`` otherwise, in the same
    float64 operations. ``tests/test_stats.py`` holds it equal to ``np.quantile``.
    """

    def __init__(self, n: int, level: float) -> None:
        self.level = level
        virtual = (n - 1) * level
        self.low = math.floor(virtual)
        self.high = self.low + 1
        self.gamma = virtual - self.low
        self.inside = 0.0 <= virtual < n - 1  # else numpy's clamping rules: leave it to numpy

    def __call__(self, values: np.ndarray) -> float:
        if not self.inside:
            return float(np.quantile(values, self.level))
        ordered = np.partition(values, (self.low, self.high))
        a, b = ordered[self.low], ordered[self.high]
        diff = b - a
        if self.gamma >= 0.5:
            return float(b - diff * (1.0 - self.gamma))
        return float(a + diff * self.gamma)


def _bisect(below: Callable[[float], bool], low: float, high: float) -> tuple[float, float]:
    """60 halvings of ``[low, high]`` around the point where ``below(x)`` turns False.

    ``below`` is True left of the boundary and False right of it; returns the final
    ``(low, high)`` bracket (``high - low`` = the start width / 2^60).
    """
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if below(middle) else (low, middle)
    return low, high


def _effective_dimension(gram: np.ndarray, n_reps: int, dim: int) -> float:
    """``nu = (tr Sigma)^2 / tr(Sigma^2)``, the number of equally noisy axes, in ``[1, D]``.

    ``tr(Sigma^2)`` is estimated without bias under normality (Bai and Saranadasa, 1996)
    from ``gram``, the ``[K, K]`` Gram matrix of the ``K`` centred rows or their ``[D, D]``
    scatter matrix (the two have the same traces of powers).
    """
    trace = float(np.trace(gram)) / (n_reps - 1)
    trace_sq = float(np.sum(gram * gram)) / (n_reps - 1) ** 2  # tr(S^2)
    if n_reps > 2:
        factor = (n_reps - 1) ** 2 / ((n_reps - 2) * (n_reps + 1))
        trace_sq = factor * (trace_sq - trace**2 / (n_reps - 1))
    dof = trace**2 / trace_sq if trace_sq > 0 else float(dim)
    return min(max(dof, 1.0), float(dim))


def _f_bias_test(
    statistic: float, dof: float, n_reps: int, trace: float, confidence: float
) -> dict[str, float]:
    """Gaussian-theory test and interval: ``T = K ||xbar||^2 / trS ~ F'(nu, nu (K-1), lambda)``.

    ``K ||xbar||^2`` and ``(K - 1) trS`` are weighted sums of chi-squares with Sigma's
    eigenvalues as weights; matching two moments (Satterthwaite / Box) makes each a scaled
    chi-square with ``nu`` degrees of freedom per row and scale ``c = trS / nu``, so ``T``
    is F-distributed, noncentral with ``lambda = K ||b||^2 / c`` under a bias ``b``. The
    p-value is ``P(F(nu, nu (K - 1)) >= T)``; the interval collects the ``||b||`` whose
    ``lambda`` keeps ``T`` between the ``(1 -+ c)/2`` quantiles (``lambda = 0`` by the upper
    one only), found by bisection on ``scipy.stats.ncf``.
    """
    dfd = dof * (n_reps - 1)
    upper_level, lower_level = (1.0 + confidence) / 2.0, (1.0 - confidence) / 2.0
    scale = trace / dof  # c

    def cdf(lam: float) -> float:
        if lam == 0.0:
            return float(scipy_stats.f.cdf(statistic, dof, dfd))
        return float(scipy_stats.ncf.cdf(statistic, dof, dfd, lam))

    def solve(level: float) -> float:  # the lambda with cdf(lambda) = level (cdf decreases)
        if cdf(0.0) <= level:
            return 0.0
        high = dof * statistic * 4.0 + 50.0
        while cdf(high) > level:
            high *= 2.0
        return _bisect(lambda lam: cdf(lam) > level, 0.0, high)[1]

    def norm(lam: float) -> float:  # ||b|| from lambda = K ||b||^2 / c
        return math.sqrt(lam * scale / n_reps)

    return {
        "p_value": float(scipy_stats.f.sf(statistic, dof, dfd)),
        "ci_low": norm(solve(upper_level)),
        "ci_high": norm(solve(lower_level)),
        "test_statistic": statistic,
    }


def gradient_estimate_metrics(
    estimates: Any,
    truth: Any,
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = 2000,
    constant: bool = False,
) -> dict[str, float]:
    """Bias, variance, MSE, alignment and an unbiasedness test for ``K`` gradient estimates.

    Args:
        estimates: ``[K, D]`` (``K >= 2``) independent estimates ``ghat_k``.
        truth: ``[D]`` the exact gradient ``g``.
        confidence: level of the bias interval, in ``(0, 1)``.
        seed: seeds the bootstrap's ``numpy.random.Generator``.
        n_resamples: bootstrap resamples ``B``.
        constant: the estimator is known to be a constant (no randomness), e.g.
            ``baseline_batch_mean`` and ``normalized`` at ``N = 1``, which are identically 0
            (:func:`pglab.estimators.is_constant`). Its ``K`` values must then be equal and
            their common value *is* its mean: the bias is known exactly (p-value 0 or 1,
            a zero-width interval), instead of "insufficient data".

    Returns:
        A dict of floats, with ``ebar = (1/K) sum_k ghat_k``, ``s_j^2`` the unbiased
        sample variance of coordinate ``j`` over the ``K`` rows and ``trS = sum_j s_j^2``:

        ======================================  =================================================
        key                                     definition
        ======================================  =================================================
        ``n_repetitions``                       ``K``
        ``true_gradient_norm``                  ``||g||``
        ``bias_norm``                           ``||ebar - g||``, the raw distance; even an
                                                unbiased estimator has ``E bias_norm^2 = trCov/K``
        ``bias_noise_floor``                    ``sqrt(trS / K)``: the typical ``bias_norm`` of an
                                                *unbiased* estimator
        ``bias_norm_debiased``                  ``sqrt(max(0, ||ebar - g||^2 - trS / K))``; the
                                                square's expectation is ``||E ghat - g||^2``
        ``bias_norm_ci_low`` / ``_high``        confidence interval of ``||E ghat - g||``
                                                (:func:`bias_test`; may touch 0)
        ``relative_bias``                       ``bias_norm_debiased / ||g||``: estimate of
                                                ``||E ghat - g|| / ||g||`` (nan if ``g = 0``)
        ``relative_bias_ci_low`` / ``_high``    the interval divided by ``||g||``
        ``total_variance``                      ``trS``, the trace of the covariance of one
                                                ``ghat_N``
        ``mse``                                 ``(1/K) sum_k ||ghat_k - g||^2``
        ``cosine_mean``                         ``(1/K) sum_k cos(ghat_k, g)``, with ``cos = 0``
                                                for a zero estimate; nan if ``g = 0``
        ``snr``                                 ``||g||^2 / trS`` (inf if ``trS = 0``)
        ``effective_batches``                   ``n_eff`` (:data:`MIN_EFFECTIVE_BATCHES`)
        ``test_statistic``                      ``K ||ebar - g||^2 / trS`` (about 1 when unbiased)
        ``p_value``                             bootstrap-t p-value of ``H0: E ghat = g``
                                                (:func:`bias_test`); NaN = insufficient data
        ======================================  =================================================

        Insufficient data: fewer than :data:`MIN_EFFECTIVE_BATCHES` effective batches (a
        rare event seen in a handful of batches, or never: all ``K`` equal but not equal
        to ``g``) leaves ``p_value`` and the interval NaN. All ``K`` equal to ``g`` up to
        round-off gives ``p_value = 1`` and the interval ``[0, 0]``.

    Raises:
        ValueError: wrong shapes, ``K < 2``, non-finite entries, ``confidence`` outside
            ``(0, 1)``, or ``constant=True`` with estimates that differ.
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
    confidence = checks.real("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    seed = checks.seed("seed", seed)
    n_resamples = checks.positive_int("n_resamples", n_resamples)

    errors = values - target  # x_k = ghat_k - g
    mean_error = errors.mean(axis=0)
    bias_sq = _sq_norm(mean_error)
    bias_norm = math.sqrt(bias_sq)
    centred = errors - mean_error
    spread = np.einsum("kd,kd->k", centred, centred)  # w_k = ||ghat_k - ebar||^2
    total_variance = float(spread.sum()) / (n_reps - 1)
    g_norm = math.sqrt(_sq_norm(target))
    all_equal = bool(np.all(np.ptp(values, axis=0) == 0))
    effective = float(spread.sum() ** 2 / _sq_norm(spread)) if spread.any() else 0.0
    if all_equal:
        effective, total_variance = 0.0, 0.0  # round-off in the mean is not spread
    if constant and not all_equal:
        raise ValueError("constant=True, but the K estimates are not all equal")

    # Unbiasedness test and the interval of ||E ghat - g||.
    nan = math.nan
    if all_equal:
        exact_zero = bias_norm <= ZERO_VARIANCE_ATOL * (1.0 + g_norm)
        if exact_zero:
            test = {"p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0, "test_statistic": 0.0}
        elif constant:  # the mean is known: it is the one value
            test = {"p_value": 0.0, "ci_low": bias_norm, "ci_high": bias_norm}
            test["test_statistic"] = math.inf
        else:
            test = {"p_value": nan, "ci_low": nan, "ci_high": nan, "test_statistic": math.inf}
    elif effective < MIN_EFFECTIVE_BATCHES:
        test = {"p_value": nan, "ci_low": nan, "ci_high": nan}
        test["test_statistic"] = n_reps * bias_sq / total_variance
    else:
        test = _bias_test(mean_error, centred, spread, confidence, seed, n_resamples)
    debiased = (
        bias_norm
        if (all_equal and constant)
        else math.sqrt(max(0.0, bias_sq - total_variance / n_reps))
    )

    # Alignment: cos(ghat_k, g) with cos = 0 for ghat_k = 0.
    row_norms = np.linalg.norm(values, axis=1)
    if g_norm > 0:
        dots = np.einsum("kd,d->k", values, target)
        safe = np.where(row_norms > 0, row_norms, 1.0)
        cosine_mean = float(np.mean(np.where(row_norms > 0, dots / (safe * g_norm), 0.0)))
    else:
        cosine_mean = math.nan

    def relative(x: float) -> float:
        return x / g_norm if g_norm > 0 else math.nan

    return {
        "n_repetitions": float(n_reps),
        "true_gradient_norm": g_norm,
        "bias_norm": bias_norm,
        "bias_noise_floor": math.sqrt(total_variance / n_reps),
        "bias_norm_debiased": debiased,
        "bias_norm_ci_low": test["ci_low"],
        "bias_norm_ci_high": test["ci_high"],
        "relative_bias": relative(debiased),
        "relative_bias_ci_low": relative(test["ci_low"]),
        "relative_bias_ci_high": relative(test["ci_high"]),
        "total_variance": total_variance,
        "mse": float(np.mean(np.sum(errors**2, axis=1))),
        "cosine_mean": cosine_mean,
        "snr": g_norm**2 / total_variance if total_variance > 0 else math.inf,
        "effective_batches": effective,
        "test_statistic": float(test["test_statistic"]),
        "p_value": float(test["p_value"]),
    }


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
