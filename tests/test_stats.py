"""pglab.stats: gradient-quality metrics on synthetic Gaussian estimates with known answers.

Estimates are ghat_k = g + b + sigma * z_k, z_k ~ N(0, I): true bias b, covariance
Sigma = diag(sigma^2). Tolerances are 5 standard deviations of the statistic, derived for
this Gaussian model (two-sided normal tail 6e-7), and stated at each assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pglab.stats import gradient_estimate_metrics, loglog_slope

K, D = 4000, 10


def gaussian_estimates(bias_scale: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=D)
    bias = bias_scale * rng.normal(size=D)
    sigma = rng.uniform(0.5, 2.0, size=D)
    estimates = truth + bias + sigma * rng.normal(size=(K, D))
    return estimates, truth, bias, sigma


def test_metrics_recover_known_bias_variance_and_mse():
    estimates, truth, bias, sigma = gaussian_estimates(bias_scale=0.3)
    m = gradient_estimate_metrics(estimates, truth, seed=1)
    var = sigma**2
    trace = var.sum()
    b2 = float(bias @ bias)
    b_sigma_b = float(bias @ (var * bias))

    # tr Cov: (K-1) s_j^2 / sigma_j^2 ~ chi2(K-1), so Var(sum_j s_j^2) = sum_j 2 sigma_j^4/(K-1)
    sd_trace = math.sqrt(2 * (var**2).sum() / (K - 1))
    assert abs(m["total_variance"] - trace) < 5 * sd_trace

    # ||ebar - g||^2 - trS/K is unbiased for ||b||^2, with
    # Var ~ 4 b'Sigma b / K + 2 tr(Sigma^2) / K^2 (+ that of trS/K, 2 tr(Sigma^2)/(K^3))
    debiased_sq = m["bias_norm_debiased"] ** 2
    sd_debiased = math.sqrt(4 * b_sigma_b / K + 2 * (var**2).sum() / K**2 * (1 + 1 / K))
    assert abs(debiased_sq - b2) < 5 * sd_debiased

    # mse: E||ghat - g||^2 = ||b||^2 + tr Sigma; per-row variance 4 b'Sigma b + 2 tr(Sigma^2)
    sd_mse = math.sqrt((4 * b_sigma_b + 2 * (var**2).sum()) / K)
    assert abs(m["mse"] - (b2 + trace)) < 5 * sd_mse

    # definitions that are exact given the sample
    mean = estimates.mean(axis=0)
    total = estimates.var(axis=0, ddof=1).sum()
    g_norm = np.linalg.norm(truth)
    assert m["n_repetitions"] == K
    assert m["true_gradient_norm"] == pytest.approx(g_norm, rel=1e-12)
    assert m["bias_norm"] == pytest.approx(np.linalg.norm(mean - truth), rel=1e-12)
    assert m["bias_noise_floor"] == pytest.approx(math.sqrt(total / K), rel=1e-12)
    assert m["relative_bias"] == pytest.approx(m["bias_norm"] / g_norm, rel=1e-12)
    assert m["relative_bias_ci_low"] == pytest.approx(m["bias_norm_ci_low"] / g_norm, rel=1e-12)
    assert m["snr"] == pytest.approx(g_norm**2 / total, rel=1e-12)

    # bootstrap CI brackets the point estimate; its width matches the delta-method
    # standard error sqrt(b'Sigma b / K) / ||b|| (x 2 x 1.96) within a factor 1.5
    assert m["bias_norm_ci_low"] < m["bias_norm"] < m["bias_norm_ci_high"]
    width = m["bias_norm_ci_high"] - m["bias_norm_ci_low"]
    predicted = 2 * 1.96 * math.sqrt(b_sigma_b / K) / math.sqrt(b2)
    assert predicted / 1.5 < width < 1.5 * predicted

    # the bias is 0.3 * sqrt(D) ~ 1 vs standard errors ~ 0.02: the test must reject
    assert m["p_value"] < 1e-10 and m["max_abs_z"] > 10
    assert m["n_tested_coordinates"] == D


def test_unbiased_gaussian_passes_the_z_test():
    estimates, truth, _, _ = gaussian_estimates(bias_scale=0.0, seed=2)
    m = gradient_estimate_metrics(torch.from_numpy(estimates), torch.from_numpy(truth))
    assert m["p_value"] > 1e-3  # familywise level 1e-3 over the D coordinates
    assert m["bias_norm_debiased"] <= m["bias_norm"]
    assert m["bias_norm"] < 5 * m["bias_noise_floor"]


def test_bootstrap_is_seeded():
    estimates, truth, _, _ = gaussian_estimates(bias_scale=0.1, seed=3)
    a = gradient_estimate_metrics(estimates[:300], truth, seed=7, n_resamples=500)
    b = gradient_estimate_metrics(estimates[:300], truth, seed=7, n_resamples=500)
    c = gradient_estimate_metrics(estimates[:300], truth, seed=8, n_resamples=500)
    assert a == b
    assert a["bias_norm_ci_low"] != c["bias_norm_ci_low"]


def test_cosine_definition_including_zero_estimates():
    truth = np.array([1.0, -2.0, 0.5])
    estimates = np.stack([truth, -truth, np.zeros(3), 2 * truth])  # cos = 1, -1, 0 (defined), 1
    m = gradient_estimate_metrics(estimates, truth)
    assert m["cosine_mean"] == pytest.approx(0.25, abs=1e-15)


def test_zero_variance_coordinates():
    rng = np.random.default_rng(4)
    truth = np.array([0.0, 1.0, 2.0])
    estimates = truth + rng.normal(size=(500, 3))
    estimates[:, 0] = 0.0  # e.g. an unreachable state: always exactly the true 0
    m = gradient_estimate_metrics(estimates, truth)
    assert m["n_tested_coordinates"] == 2 and m["p_value"] > 1e-3
    assert m["n_untestable_coordinates"] == 0
    # constant but different from the truth: K identical draws (e.g. a rare event never
    # seen) give the z-test nothing to work with, so the coordinate is untestable
    estimates[:, 0] = 0.1
    m = gradient_estimate_metrics(estimates, truth)
    assert m["n_tested_coordinates"] == 2 and m["n_untestable_coordinates"] == 1
    assert m["p_value"] > 1e-3
    only = gradient_estimate_metrics(estimates[:, :1], truth[:1])
    assert math.isnan(only["p_value"])


def test_rarely_moving_coordinate_is_not_tested():
    """A coordinate non-zero in 9 of 500 batches is outside the CLT regime: untestable."""
    rng = np.random.default_rng(5)
    truth = np.array([0.05, 1.0])
    estimates = np.stack([np.zeros(500), truth[1] + rng.normal(size=500)], axis=1)
    estimates[:9, 0] = 1.0  # mean 0.018 against 0.05: a naive z-test would reject
    m = gradient_estimate_metrics(estimates, truth)
    assert m["n_tested_coordinates"] == 1 and m["n_untestable_coordinates"] == 1
    assert m["p_value"] > 1e-3


def test_metrics_bad_input():
    truth = np.zeros(3)
    with pytest.raises(ValueError, match="K >= 2"):
        gradient_estimate_metrics(np.zeros((1, 3)), truth)
    with pytest.raises(ValueError, match=r"truth has 3 entries, expected D = 4"):
        gradient_estimate_metrics(np.zeros((5, 4)), truth)
    with pytest.raises(ValueError, match=r"estimates must have shape \[K, D\]"):
        gradient_estimate_metrics(np.zeros(5), truth)
    bad = np.zeros((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"estimates\[2, 1\] is nan"):
        gradient_estimate_metrics(bad, truth)
    with pytest.raises(ValueError, match="confidence must be in"):
        gradient_estimate_metrics(np.zeros((5, 3)), truth, confidence=1.0)


def test_loglog_slope():
    n = np.array([4, 16, 64, 256])
    assert loglog_slope(n, 3.0 * n**-1.5) == pytest.approx(-1.5, abs=1e-12)
    assert loglog_slope([1, 10], [2, 20]) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1, 2], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        loglog_slope([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 points"):
        loglog_slope([1], [1])
    with pytest.raises(ValueError, match="all equal"):
        loglog_slope([2, 2], [1, 3])
