"""pglab.gym.gradients: the surrogate's gradient is the REINFORCE sum, computed by hand.

For the linear softmax policy pi(.|x) = softmax(W x + b) the score function is known in
closed form:  grad_W log pi(a|x) = (e_a - pi(.|x)) x^T,  grad_b log pi(a|x) = e_a - pi(.|x).
So the estimate ghat_N = (1/N) sum_i sum_t Psi_{i,t} grad log pi(a_{i,t}|x_{i,t}) can be
written down without autograd and compared with -grad L and with the per-episode rows.

Tolerances: the hand computation is float64; the policy is float32 (unit roundoff
u = 6e-8). Each gradient entry is a sum of at most N*T = 40 terms of size <= 2 here, so
the float32 rounding error is bounded by about 40 * 2 * u ~ 5e-6 in the worst case and is
typically ~1e-7; we assert 1e-6 absolute plus 1e-5 relative.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pglab.gym.gradients import (
    flat_grad,
    flat_params,
    grad_variance,
    per_episode_gradients,
    surrogate_loss,
    welford_variance,
)
from pglab.gym.policies import make_policy

ATOL, RTOL = 1e-6, 1e-5


def _hand_batch(n_actions: int = 3, obs_dim: int = 4, seed: int = 0):
    """N=5 padded episodes (T=8) with random states, actions and weights Psi.

    Padded steps hold NaN observations and weights: masking must keep them out entirely.
    """
    rng = np.random.default_rng(seed)
    lengths = np.array([8, 3, 5, 1, 6])
    n, t = len(lengths), int(lengths.max())
    mask = np.arange(t)[None, :] < lengths[:, None]
    obs = rng.uniform(-1, 1, size=(n, t, obs_dim)).astype(np.float32)
    actions = rng.integers(0, n_actions, size=(n, t))
    weights = rng.uniform(-1, 1, size=(n, t))
    obs[~mask] = np.nan
    weights[~mask] = np.nan
    actions[~mask] = 0
    batch = SimpleNamespace(
        observations=torch.from_numpy(obs),
        actions=torch.from_numpy(actions),
        mask=torch.from_numpy(mask),
    )
    return batch, torch.from_numpy(weights)


def _hand_gradients(policy, batch, weights):
    """Per-episode REINFORCE sums for a linear softmax policy, float64, by the closed form."""
    layer = policy.output_layer
    w = layer.weight.detach().double().numpy()  # [A, d]
    b = layer.bias.detach().double().numpy()  # [A]
    obs = batch.observations.double().numpy()
    acts, mask, psi = batch.actions.numpy(), batch.mask.numpy(), weights.numpy()
    n_actions = w.shape[0]
    rows = []
    for i in range(obs.shape[0]):
        g_w, g_b = np.zeros_like(w), np.zeros_like(b)
        for t in range(obs.shape[1]):
            if not mask[i, t]:
                continue
            x = obs[i, t]
            logits = w @ x + b
            pi = np.exp(logits - logits.max())
            pi /= pi.sum()
            score = np.eye(n_actions)[acts[i, t]] - pi  # e_a - pi(.|x)
            g_w += psi[i, t] * np.outer(score, x)  # Psi (e_a - pi) x^T
            g_b += psi[i, t] * score
        rows.append(np.concatenate([g_w.ravel(), g_b.ravel()]))  # named_parameters order
    return np.stack(rows)  # [N, P]


def test_surrogate_gradient_equals_hand_reinforce_sum():
    policy = make_policy("linear", obs_dim=4, n_actions=3, seed=1)
    batch, weights = _hand_batch()
    loss = surrogate_loss(policy, batch, weights)
    loss.backward()
    minus_grad = -flat_grad(policy.parameters()).double().numpy()
    expected = _hand_gradients(policy, batch, weights).mean(axis=0)  # (1/N) sum_i g_i
    np.testing.assert_allclose(minus_grad, expected, atol=ATOL, rtol=RTOL)


def test_per_episode_rows_are_hand_sums_and_average_to_minus_grad_loss():
    policy = make_policy("linear", obs_dim=4, n_actions=3, seed=1)
    batch, weights = _hand_batch()
    per_episode = per_episode_gradients(policy, batch, weights, chunk_size=2)  # 3 chunks
    assert per_episode.shape == (5, 4 * 3 + 3)
    assert per_episode.dtype == torch.float32
    hand = _hand_gradients(policy, batch, weights)
    np.testing.assert_allclose(per_episode.double().numpy(), hand, atol=ATOL, rtol=RTOL)

    surrogate_loss(policy, batch, weights).backward()
    minus_grad = -flat_grad(policy.parameters())
    np.testing.assert_allclose(
        per_episode.double().mean(0).numpy(), minus_grad.double().numpy(), atol=ATOL, rtol=RTOL
    )


def test_per_episode_gradients_mlp_match_autograd_per_episode():
    """For an MLP (no closed form) row i must equal autograd's gradient of episode i alone."""
    policy = make_policy("mlp", obs_dim=4, n_actions=3, hidden_sizes=(8,), seed=2)
    batch, weights = _hand_batch(seed=3)
    per_episode = per_episode_gradients(policy, batch, weights, chunk_size=4)
    for i in range(batch.mask.shape[0]):
        one = SimpleNamespace(
            observations=batch.observations[i : i + 1],
            actions=batch.actions[i : i + 1],
            mask=batch.mask[i : i + 1],
        )
        policy.zero_grad()
        surrogate_loss(policy, one, weights[i : i + 1]).backward()  # N=1: -grad L = g_i
        expected = -flat_grad(policy.parameters())
        np.testing.assert_allclose(
            per_episode[i].double().numpy(), expected.double().numpy(), atol=ATOL, rtol=RTOL
        )
    # The parameters were not touched by the functional computation.
    assert torch.isfinite(flat_params(policy.parameters())).all()


def test_grad_variance_is_trace_of_sample_covariance_over_n():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(7, 5))
    expected = np.trace(np.cov(g, rowvar=False, ddof=1)) / 7
    assert grad_variance(torch.from_numpy(g)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 50, 257])
@pytest.mark.parametrize("columns", [8, 10, 130, 4610])
def test_welford_variance_equals_torch_var_bit_for_bit(n, columns):
    """grad_variance's fast path keeps the numbers torch.var(dim=0) gave, to the last bit
    (the same recurrence), over scales from 1e-8 to 1e4 and with a large common offset."""
    rng = np.random.default_rng(n * 10_000 + columns)
    for scale in (1e-8, 1.0, 1e4):
        g = rng.normal(size=(n, columns)) * scale + rng.normal(size=(1, columns)) * 3 * scale
        assert torch.equal(
            torch.from_numpy(welford_variance(g)), torch.from_numpy(g).var(dim=0, unbiased=True)
        )
    g[1, 3], g[0, 5] = np.nan, np.inf  # non-finite values propagate as NaN, as in torch
    got, want = welford_variance(g), torch.from_numpy(g).var(dim=0).numpy()
    assert np.isnan(got[3]) and np.isnan(got[5])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_bad_inputs_raise_value_error():
    policy = make_policy("linear", obs_dim=4, n_actions=3)
    batch, weights = _hand_batch()
    with pytest.raises(ValueError, match="weights has shape"):
        surrogate_loss(policy, batch, weights[:, :3])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        per_episode_gradients(policy, batch, weights, chunk_size=0)
    with pytest.raises(ValueError, match="N=1"):
        grad_variance(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"expected \[N, P\]"):
        grad_variance(torch.zeros(3))


def test_surrogate_on_a_real_cartpole_batch():
    """Same identity on a real EpisodeBatch (zero padding, float32 rewards, step_weights).

    Weights here are rewards-to-go up to ~60, so entries of ghat are sums of ~100 terms of
    size up to ~60 * 2 * |x|; the tolerance is float32 roundoff relative to that scale:
    atol = 1e-6 * (1/N) sum_{i,t} |Psi_{i,t}| (1 + |x_{i,t}|_1).
    """
    from pglab.estimators import step_weights
    from pglab.gym.rollouts import RolloutCollector

    policy = make_policy("linear", obs_dim=4, n_actions=2, seed=4)
    with RolloutCollector("CartPole-v1", 3, seed=11) as collector:
        batch = collector.collect(policy, torch.Generator().manual_seed(0))
    weights = step_weights(batch.rewards, batch.mask, "reward_to_go")
    surrogate_loss(policy, batch, weights).backward()
    minus_grad = -flat_grad(policy.parameters()).double().numpy()
    hand = _hand_gradients(policy, batch, weights.double())
    scale = float(
        (weights.double().abs() * (1 + batch.observations.double().abs().sum(-1))).sum() / 3
    )
    np.testing.assert_allclose(minus_grad, hand.mean(0), atol=1e-6 * scale, rtol=0)
    per_episode = per_episode_gradients(policy, batch, weights).double().numpy()
    np.testing.assert_allclose(per_episode, hand, atol=1e-6 * scale, rtol=0)


def test_per_episode_gradients_fast_route_equals_the_vmap_route():
    # CategoricalPolicy takes the one-backward route; a subclass of it takes vmap(grad).
    # Same maths: in float64 the rows agree to 1e-12 (rounding of sums of <= 200 terms of
    # size ~1 is ~1e-14), in float32 to a relative 1e-5 (float32 epsilon 1.2e-7 x ~T terms).
    from pglab.gym.policies import CategoricalPolicy, make_policy
    from pglab.gym.rollouts import RolloutCollector

    class Other(CategoricalPolicy):
        pass

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        policy = make_policy("mlp", 4, 2, hidden_sizes=(16, 8), seed=1, dtype=dtype)
        other = Other(4, 2, (16, 8), dtype=dtype)
        other.load_state_dict(policy.state_dict())
        with RolloutCollector("CartPole-v1", 7, seed=3) as collector:
            batch = collector.collect(policy, torch.Generator().manual_seed(0))
        weights = torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(1))
        fast = per_episode_gradients(policy, batch, weights, chunk_size=3)
        slow = per_episode_gradients(other, batch, weights, chunk_size=3)
        assert fast.shape == slow.shape == (7, sum(p.numel() for p in policy.parameters()))
        scale = slow.abs().max()
        assert torch.allclose(fast, slow, rtol=0, atol=float(tol * scale)), (
            dtype,
            (fast - slow).abs().max(),
        )
