"""Tests for pglab.gym.policies: shapes, exact identities of the softmax policy, seeding, sampling law."""

from __future__ import annotations

import math

import pytest
import torch

from pglab.gym.policies import ACTIVATIONS, CategoricalPolicy, make_policy

# Binomial z-test bound used below: |z| < 5 where z = (count - n p) / sqrt(n p (1 - p)).
# Under the null (sampler exact) z is ~N(0, 1) by the CLT, P(|z| >= 5) ~ 6e-7 per check.
Z_BOUND = 5.0


def _binomial_z(count: torch.Tensor, n: int, p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    return (count.double() - n * p) / torch.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_shapes_dtypes_and_softmax_identities(kind: str) -> None:
    policy = make_policy(kind, obs_dim=5, n_actions=3, seed=1, init_scale=3.0)
    obs = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    logits = policy(obs)
    assert logits.shape == (7, 3) and logits.dtype == torch.float32
    probs = policy.probs(obs)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))
    actions = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    # log pi(a|s) is log softmax evaluated at a
    torch.testing.assert_close(
        policy.log_prob(obs, actions), probs.log().gather(1, actions[:, None]).squeeze(1)
    )
    # H = -sum_a p log p
    torch.testing.assert_close(policy.entropy(obs), -(probs * probs.log()).sum(-1))
    # any leading batch shape: [N, T, obs_dim] -> [N, T]
    obs3 = obs.reshape(7, 1, 5).expand(7, 4, 5)
    assert policy.log_prob(obs3, actions[:, None].expand(7, 4)).shape == (7, 4)
    assert policy.entropy(obs3).shape == (7, 4)
    assert policy.sample(obs3, torch.Generator().manual_seed(0)).shape == (7, 4)


def test_linear_kind_is_affine_logits() -> None:
    policy = make_policy("linear", obs_dim=4, n_actions=2, seed=3)
    assert len(policy.layers) == 1
    layer = policy.layers[0]
    obs = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(policy(obs), obs @ layer.weight.T + layer.bias)


def test_mlp_architecture_and_activation() -> None:
    policy = make_policy("mlp", obs_dim=4, n_actions=2, hidden_sizes=(8, 16), activation="relu")
    assert [(lay.in_features, lay.out_features) for lay in policy.layers] == [
        (4, 8),
        (8, 16),
        (16, 2),
    ]
    obs = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    w = [(lay.weight, lay.bias) for lay in policy.layers]
    h = torch.relu(obs @ w[0][0].T + w[0][1])
    h = torch.relu(h @ w[1][0].T + w[1][1])
    torch.testing.assert_close(policy(obs), h @ w[2][0].T + w[2][1])


def test_init_scale_zero_is_exactly_uniform() -> None:
    policy = make_policy("mlp", obs_dim=6, n_actions=3, init_scale=0.0)
    obs = 10 * torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy(obs), torch.zeros(50, 3))
    assert torch.equal(policy.probs(obs), torch.full((50, 3), 1 / 3))
    torch.testing.assert_close(policy.entropy(obs), torch.full((50,), math.log(3)))


def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = make_policy("mlp", 4, 2, seed=7)
    b = make_policy("mlp", 4, 2, seed=7)
    c = make_policy("mlp", 4, 2, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    # default law U(-1/sqrt(fan_in), 1/sqrt(fan_in)); init_scale scales the output layer only
    assert a.layers[1].weight.abs().max() <= 1 / math.sqrt(64)
    d = make_policy("mlp", 4, 2, seed=7, init_scale=0.5)
    assert torch.equal(d.layers[0].weight, a.layers[0].weight)
    assert torch.equal(d.output_layer.weight, 0.5 * a.output_layer.weight)
    assert all(p.dtype == torch.float32 for p in a.parameters())


def test_linear_score_function_matches_closed_form() -> None:
    """For logits W s + b: grad_W log pi(a|s) = (e_a - pi(.|s)) s^T, grad_b = e_a - pi(.|s)."""
    policy = make_policy("linear", 3, 4, seed=0, init_scale=2.0, dtype=torch.float64)
    s = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    a = torch.tensor(2)
    policy.log_prob(s, a).backward()
    residual = torch.nn.functional.one_hot(a, 4).double() - policy.probs(s).detach()
    layer = policy.layers[0]
    torch.testing.assert_close(layer.weight.grad, torch.outer(residual, s), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, residual, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_actions", [2, 3, 5])
def test_sample_frequencies_match_probs(n_actions: int) -> None:
    """Empirical action frequencies at fixed observations vs pi(.|s): binomial z-test."""
    policy = make_policy("mlp", 4, n_actions, seed=n_actions, init_scale=4.0)
    distinct = torch.randn(4, 4, generator=torch.Generator().manual_seed(10))
    repeats = 50_000
    obs = distinct.repeat_interleave(repeats, dim=0)  # [4 * repeats, 4]
    actions = policy.sample(obs, torch.Generator().manual_seed(11))
    assert actions.dtype == torch.int64 and not actions.requires_grad
    assert actions.min() >= 0 and actions.max() < n_actions
    counts = torch.nn.functional.one_hot(actions, n_actions).reshape(4, repeats, n_actions).sum(1)
    probs = policy.probs(distinct).detach()
    assert probs.min() > 0.01, "test needs every action to be reasonably likely"
    assert probs.max(1).values.min() < 0.99
    z = _binomial_z(counts, repeats, probs)
    assert z.abs().max() < Z_BOUND, f"z = {z}"


def test_sample_extreme_and_degenerate_probabilities() -> None:
    policy = make_policy("linear", 1, 3, seed=0, init_scale=0.0)
    with torch.no_grad():
        policy.output_layer.bias.copy_(torch.tensor([0.0, 60.0, -60.0]))  # pi(1) = 1 - 9e-27
    actions = policy.sample(torch.zeros(10_000, 1), torch.Generator().manual_seed(0))
    assert torch.equal(actions, torch.ones(10_000, dtype=torch.int64))
    two = make_policy("linear", 1, 2, seed=0, init_scale=0.0)
    with torch.no_grad():
        two.output_layer.bias.copy_(torch.tensor([0.0, -200.0]))  # sigmoid(-200) = 0 in float32
    assert two.sample(torch.zeros(10_000, 1), torch.Generator().manual_seed(0)).sum() == 0


def test_sample_uses_only_the_generator() -> None:
    policy = make_policy("mlp", 4, 3, seed=0)
    obs = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    first = policy.sample(obs, torch.Generator().manual_seed(5))
    second = policy.sample(obs, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)


def test_float64_policy_accepts_float32_obs() -> None:
    policy = make_policy("mlp", 4, 2, dtype=torch.float64)
    out = policy(torch.zeros(3, 4, dtype=torch.float32))
    assert out.dtype == torch.float64


def test_bad_arguments_raise_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"unknown policy kind 'cnn'; choose one of: mlp, linear"):
        make_policy("cnn", 4, 2)
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; choose one of: tanh, "):
        make_policy("mlp", 4, 2, activation="swish")
    with pytest.raises(ValueError, match="n_actions"):
        make_policy("mlp", 4, 1)
    with pytest.raises(ValueError, match="obs_dim"):
        make_policy("mlp", 0, 2)
    with pytest.raises(ValueError, match="hidden_sizes"):
        make_policy("mlp", 4, 2, hidden_sizes=(64, 0))
    with pytest.raises(ValueError, match="init_scale"):
        make_policy("mlp", 4, 2, init_scale=float("nan"))
    assert set(ACTIVATIONS) >= {"tanh", "relu", "elu"}
    assert isinstance(make_policy("linear", 4, 2), CategoricalPolicy)
