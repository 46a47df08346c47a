"""pglab.gym.gradient_quality: the large-batch reference gradient and batch estimates against it.

Truths checked, all on CartPole-v1 at initialisation with fixed seeds:

1. Exactness: the chunked, block-merged reference equals the plain mean and standard error
   of the per-episode gradients g_i of the same episodes (recomputed here with
   ``per_episode_gradients`` on the unsorted, unchunked-by-length batches), and equals the
   surrogate-loss gradient of those episodes.
2. The standard error is honest: two references from independent seeds differ
   coordinate-wise by z_j = (m1_j - m2_j) / sqrt(SE1_j^2 + SE2_j^2) ~ N(0, 1) (CLT over M
   i.i.d. episodes), so max_j |z_j| stays below a Bonferroni bound.
3. Batch quality scales as the theory says: for the unbiased REINFORCE estimator and batches
   independent of the reference, E[relative_error^2] = A / N + C, with A = tr Cov(g) /
   ||ghat_ref||^2 and C = ||grad J - ghat_ref||^2 / ||ghat_ref||^2 (E[C] ~ relative_se^2).
4. Invalid arguments raise ValueError naming the field and its value, before any work.

Tests run single-threaded (2 cores are shared): about 15 s in all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pglab import estimators
from pglab.gym.gradient_quality import (
    PER_EPISODE_ESTIMATORS,
    ReferenceGradient,
    batch_episodes,
    batch_gradient_quality,
    reference_episodes,
    reference_gradient,
)
from pglab.gym.gradients import flat_grad, per_episode_gradients, surrogate_loss
from pglab.gym.policies import make_policy

ENV = "CartPole-v1"


@pytest.fixture(autouse=True)
def _one_thread():
    """Intra-op threads fight for the 2 shared cores (10x slower); restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(seed: int = 0):
    # 4 -> 16 -> 2 tanh MLP: P = 4*16 + 16 + 16*2 + 2 = 114 parameters.
    return make_policy("mlp", obs_dim=4, n_actions=2, hidden_sizes=(16,), seed=seed)


def _linear(seed: int = 0):
    # logits = W s + b: P = 2*4 + 2 = 10 parameters.
    return make_policy("linear", obs_dim=4, n_actions=2, seed=seed)


# ---------------------------------------------------------------------------------------
# 1. Exactness of the chunked reference
# ---------------------------------------------------------------------------------------
def test_reference_equals_direct_mean_and_standard_error() -> None:
    """M = 2500 in chunks of 1000 (1000, 1000, 500: both collectors are exercised).

    Both sides average the same float32 per-episode gradients in float64; they differ only
    by float32 rounding of g_i under different padding (~6e-8 relative per entry, entries
    here <= ~20), so the means agree to 1e-6 absolute and the SEs to 1e-6 relative.
    """
    policy = _mlp()
    m, chunk, seed = 2500, 1000, 3
    ref = reference_gradient(policy, ENV, n_episodes=m, seed=seed, chunk_episodes=chunk)

    rows, surrogate_sum, n_steps = [], torch.zeros_like(ref.mean), 0
    for batch in reference_episodes(policy, ENV, m, seed=seed, chunk_episodes=chunk):
        weights = estimators.step_weights(batch.rewards, batch.mask, "reward_to_go")
        rows.append(per_episode_gradients(policy, batch, weights).double())
        policy.zero_grad()
        surrogate_loss(policy, batch, weights).backward()
        # -grad L_c = (1/n_c) sum_{i in c} g_i, so sum_c n_c (-grad L_c) = sum_i g_i
        surrogate_sum -= batch.n_trajectories * flat_grad(policy.parameters()).double()
        n_steps += batch.n_steps
    g = torch.cat(rows)  # [M, P]
    assert g.shape == (m, 114)
    assert ref.n_episodes == m and ref.n_steps == n_steps
    assert ref.mean.dtype == torch.float64 and ref.standard_error.shape == (114,)

    torch.testing.assert_close(ref.mean, g.mean(dim=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        ref.standard_error, g.std(dim=0, unbiased=True) / math.sqrt(m), atol=0, rtol=1e-6
    )
    # Surrogate path: autograd sums ~1000 x 20 step terms per chunk in float32 (u = 6e-8);
    # a rounding error up to ~1e-5 of the entries' scale (<= ~10) gives 1e-4 absolute
    # (observed ~1e-6).
    torch.testing.assert_close(ref.mean, surrogate_sum / m, atol=1e-4, rtol=0)
    # Derived quantities follow their definitions.
    assert ref.relative_se == pytest.approx(
        float(ref.standard_error.norm() / ref.mean.norm()), rel=1e-12
    )
    assert ref.trace_covariance == pytest.approx(float(g.var(dim=0).sum()), rel=1e-6)


def test_reference_is_reproducible_and_leaves_grads_alone() -> None:
    policy = _linear()
    a = reference_gradient(policy, ENV, n_episodes=300, seed=5, estimator="reinforce")
    b = reference_gradient(policy, ENV, n_episodes=300, seed=5, estimator="reinforce")
    assert torch.equal(a.mean, b.mean) and torch.equal(a.standard_error, b.standard_error)
    assert all(p.grad is None for p in policy.parameters())
    c = reference_gradient(policy, ENV, n_episodes=300, seed=6, estimator="reinforce")
    assert not torch.equal(a.mean, c.mean)


# ---------------------------------------------------------------------------------------
# 2. The standard error describes the spread between independent references
# ---------------------------------------------------------------------------------------
def test_standard_error_is_consistent_between_independent_references() -> None:
    """z_j = (m1_j - m2_j) / sqrt(SE1_j^2 + SE2_j^2), j = 1..P, each ~N(0, 1) (CLT, M = 3000).

    Upper bound (SE not too small): Bonferroni over the P coordinates with family-wise
    level alpha = 1e-3, whatever their correlation: P(max_j |z_j| > t) <= P * 2 (1 - Phi(t))
    = alpha for t = Phi^-1(1 - alpha / (2P)) (= 4.45 for P = 114; observed max ~2.2).
    Lower bound (the two seeds really give independent episodes, not the same stream):
    mean_j z_j^2 >= z_1^2 / P, so P(mean z^2 < x) <= P(chi2_1 < P x) = alpha for
    x = chi2_1.ppf(alpha) / P.
    """
    policy = _mlp()
    alpha = 1e-3
    first = reference_gradient(policy, ENV, n_episodes=3000, seed=1, chunk_episodes=1024)
    second = reference_gradient(policy, ENV, n_episodes=3000, seed=2, chunk_episodes=1024)
    se = torch.sqrt(first.standard_error**2 + second.standard_error**2)
    assert bool((se > 0).all())
    z = ((first.mean - second.mean) / se).numpy()
    n_params = z.size
    upper = stats.norm.isf(alpha / (2 * n_params))
    lower = stats.chi2.ppf(alpha, df=1) / n_params
    assert np.abs(z).max() < upper, f"max|z|={np.abs(z).max():.2f} >= Bonferroni {upper:.2f}"
    assert np.mean(z**2) > lower, f"mean z^2={np.mean(z**2):.2e}: the two seeds share episodes"


# ---------------------------------------------------------------------------------------
# 3. Batch estimates against the reference
# ---------------------------------------------------------------------------------------
def test_relative_error_scales_as_one_over_sqrt_n_and_cosine_grows() -> None:
    """REINFORCE batches, linear policy at init (A ~ 45 here, relative_se ~ 0.04).

    E[e^2(N)] = A / N + C for e = relative_error (module doc), hence
    D = e^2(1) - 100 e^2(100) has mean -99 C, with E[C] ~ relative_se^2. The batches are
    independent, so z = (D + 99 relative_se^2) / SE(D), with SE(D)^2 = Var(e^2(1)) / B_1 +
    100^2 Var(e^2(100)) / B_100 from the sample variances, is ~N(0, 1) by the CLT over
    B_1 = 2000 and B_100 = 200 batches: |z| < 4 (two-sided 6e-5 under normality). The
    correction 99 relative_se^2 ~ 0.2 is itself small against SE(D) ~ 5, so how far the
    realised C is from its mean does not matter. A wrong law fails badly: e^2 ~ A / sqrt(N)
    would give D ~ A - 10 A = -9 A ~ -400, i.e. |z| ~ 80.

    Monotonicity in N (1 -> 10 -> 100): the mean cosine rises and the mean relative error
    falls, each step by more than 3 standard errors of the difference of the two means
    (one-sided 1.3e-3 if there were no change); the predicted steps are > 10 SE.
    """
    policy = _linear()
    reference = reference_gradient(policy, ENV, n_episodes=5000, seed=1)
    assert reference.relative_se < 0.1
    rows = batch_gradient_quality(policy, ENV, reference, [1], 2000, "reinforce", seed=0)
    rows += batch_gradient_quality(policy, ENV, reference, [10, 100], 200, "reinforce", seed=0)

    def column(n: int, key: str) -> np.ndarray:
        return np.array([r[key] for r in rows if r["n_trajectories"] == n])

    e1, e100 = column(1, "relative_error") ** 2, column(100, "relative_error") ** 2
    assert e1.size == 2000 and e100.size == 200
    d = e1.mean() - 100 * e100.mean()
    se_d = math.sqrt(e1.var(ddof=1) / e1.size + 100**2 * e100.var(ddof=1) / e100.size)
    z = (d + 99 * reference.relative_se**2) / se_d
    assert abs(z) < 4, f"e^2(1)={e1.mean():.2f}, 100 e^2(100)={100 * e100.mean():.2f}, z={z:.2f}"

    def mean_and_se(x: np.ndarray) -> tuple[float, float]:
        return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))

    for key, sign in (("cosine", +1), ("relative_error", -1)):
        for small, large in ((1, 10), (10, 100)):
            m_small, se_small = mean_and_se(column(small, key))
            m_large, se_large = mean_and_se(column(large, key))
            z_step = sign * (m_large - m_small) / math.hypot(se_small, se_large)
            assert z_step > 3, f"{key}: N={small} -> {large}, z={z_step:.2f}"


def test_batches_match_their_episodes_and_coupled_estimators_see_only_their_batch() -> None:
    """Rows are recomputed from :func:`batch_episodes` (same streams) by hand.

    Exact identities for N = 1: ``baseline_batch_mean`` gives Psi = R - R = 0, so ghat = 0,
    relative_error = ||0 - ref|| / ||ref|| = 1 and cosine is NaN; ``baseline_leave_one_out``
    has baseline 0 and reproduces ``reinforce`` row for row. For N = 4 the leave-one-out
    weights are computed per batch: equal to a direct step_weights on the 4 episodes.
    """
    policy = _linear()
    reference = reference_gradient(policy, ENV, n_episodes=500, seed=1)
    ref = reference.mean
    n, n_batches = 4, 5
    rows = batch_gradient_quality(
        policy, ENV, reference, [n], n_batches, "baseline_leave_one_out", seed=2, chunk_episodes=8
    )
    batches = list(batch_episodes(policy, ENV, n, n_batches, seed=2, chunk_episodes=8))
    assert [r["batch"] for r in rows] == list(range(n_batches)) and len(batches) == n_batches
    for row, batch in zip(rows, batches, strict=True):
        assert batch.n_trajectories == n and row["n_steps"] == batch.n_steps
        weights = estimators.step_weights(batch.rewards, batch.mask, "baseline_leave_one_out")
        policy.zero_grad()
        surrogate_loss(policy, batch, weights).backward()
        g = -flat_grad(policy.parameters()).double()
        policy.zero_grad(set_to_none=True)
        assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-12)
        assert row["relative_error"] == pytest.approx(
            float((g - ref).norm() / ref.norm()), rel=1e-12
        )
        assert row["cosine"] == pytest.approx(float(g @ ref / (g.norm() * ref.norm())), rel=1e-12)

    mean_rows = batch_gradient_quality(policy, ENV, reference, [1], 5, "baseline_batch_mean")
    assert all(r["grad_norm"] == 0.0 and r["relative_error"] == 1.0 for r in mean_rows)
    assert all(math.isnan(r["cosine"]) for r in mean_rows)
    loo = batch_gradient_quality(policy, ENV, reference, [1], 5, "baseline_leave_one_out", seed=7)
    rf = batch_gradient_quality(policy, ENV, reference, [1], 5, "reinforce", seed=7)
    for a, b in zip(loo, rf, strict=True):
        assert a["grad_norm"] == b["grad_norm"] and a["cosine"] == b["cosine"]
    # Independent streams: another seed gives other episodes, and for the same seed the
    # batches never replay the reference's episodes (different SeedSequence keys).
    other = batch_gradient_quality(policy, ENV, reference, [1], 5, "reinforce", seed=8)
    assert [r["grad_norm"] for r in other] != [r["grad_norm"] for r in rf]
    first_ref = next(iter(reference_episodes(policy, ENV, 8, seed=0, chunk_episodes=8)))
    first_batch = next(iter(batch_episodes(policy, ENV, 8, 1, seed=0, chunk_episodes=8)))
    assert not torch.equal(first_ref.observations[:, 0], first_batch.observations[:, 0])


# ---------------------------------------------------------------------------------------
# 4. Validation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_episodes": 0}, r"n_episodes must be an integer >= 2, got 0"),
        ({"n_episodes": 1}, r"n_episodes must be an integer >= 2, got 1"),
        ({"n_episodes": 2.5}, r"n_episodes must be an integer, got 2.5"),
        ({"estimator": "bogus"}, r"unknown estimator 'bogus'"),
        ({"estimator": "baseline_batch_mean"}, r"estimator='baseline_batch_mean' couples"),
        ({"estimator": "normalized"}, r"estimator='normalized' couples"),
        ({"gamma": 1.5}, r"gamma must be finite and in \[0, 1\], got 1.5"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"chunk_episodes": 0}, r"chunk_episodes must be a positive integer, got 0"),
        ({"max_episode_steps": 0}, r"max_episode_steps must be a positive integer, got 0"),
    ],
)
def test_reference_gradient_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reference_gradient(_linear(), ENV, **{"n_episodes": 10, **kwargs})


def test_reference_gradient_rejects_unknown_env_and_policy() -> None:
    with pytest.raises(ValueError, match=r"env_id='NoSuchEnv-v0'"):
        reference_gradient(_linear(), "NoSuchEnv-v0", n_episodes=10)
    with pytest.raises(ValueError, match=r"policy must be a CategoricalPolicy"):
        reference_gradient(torch.nn.Linear(4, 2), ENV, n_episodes=10)
    assert set(PER_EPISODE_ESTIMATORS) == {"reinforce", "reward_to_go"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sizes": [10, 0]}, r"batch_sizes\[1\] must be a positive integer, got 0"),
        ({"batch_sizes": [-3]}, r"batch_sizes\[0\] must be a positive integer, got -3"),
        ({"batch_sizes": []}, r"batch_sizes must list at least one value, got \[\]"),
        ({"batch_sizes": 10}, r"batch_sizes must be a sequence of positive integers, got 10"),
        ({"n_batches": 0}, r"n_batches must be an integer >= 1, got 0"),
        ({"estimator": "bogus"}, r"unknown estimator 'bogus'"),
        ({"estimator": "baseline_value"}, r"estimator='baseline_value' needs exact tabular"),
        ({"gamma": -0.1}, r"gamma must be finite and in \[0, 1\], got -0.1"),
        ({"seed": -2}, r"seed must be an integer >= 0, got -2"),
        ({"reference": "not a reference"}, r"reference must be a ReferenceGradient"),
    ],
)
def test_batch_gradient_quality_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    reference = ReferenceGradient(torch.ones(10, dtype=torch.float64), torch.zeros(10), 100)
    args = {"reference": reference, "batch_sizes": [1], "n_batches": 1, "estimator": "reinforce"}
    with pytest.raises(ValueError, match=match):
        batch_gradient_quality(_linear(), ENV, **{**args, **kwargs})


def test_batch_gradient_quality_rejects_a_reference_of_another_policy() -> None:
    reference = ReferenceGradient(torch.ones(114, dtype=torch.float64), torch.zeros(114), 100)
    with pytest.raises(ValueError, match=r"P=10 parameters"):
        batch_gradient_quality(_linear(), ENV, reference, [1], 1, "reinforce")
