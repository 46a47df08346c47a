"""Feature-based tabular policies: one-hot features are the tabular softmax, the exact
gradient matches finite differences, and the short corridor has its textbook optimum."""

from __future__ import annotations

import math

import pytest
import torch

from pglab.checks import ConfigError
from pglab.tabular import exact, zoo
from pglab.tabular import features as feat


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", ["two_state", "chain", "gridworld"])
def test_one_hot_features_recover_the_tabular_softmax(name):
    mdp = zoo.make(name)
    logits = _random((mdp.n_states, mdp.n_actions), 0)
    phi = feat.one_hot_features(mdp.n_states, mdp.n_actions)
    theta = logits.reshape(-1)
    solved = feat.feature_solve(mdp, phi, theta)
    tabular = exact.solve(mdp, logits)
    # phi theta picks theta[s A + a] exactly (one product by 1.0, sums of exact zeros), so
    # the logits, and hence everything downstream, are bit-identical
    assert torch.equal(solved.logits, logits)
    assert solved.expected_return == tabular.expected_return
    assert torch.equal(solved.gradient, tabular.gradient.reshape(-1))
    assert torch.equal(feat.feature_policy(phi, theta), tabular.policy)


@pytest.mark.parametrize("name", ["two_state", "gridworld", "garnet"])
def test_feature_gradient_matches_central_differences(name):
    mdp = zoo.make(name) if name != "garnet" else zoo.garnet(n_states=6, horizon=10)
    d = 3
    phi = _random((mdp.n_states, mdp.n_actions, d), 1)
    theta = _random((d,), 2)
    gradient = feat.feature_gradient(mdp, phi, theta)
    h = 1e-5
    numeric = torch.empty(d, dtype=torch.float64)
    for k in range(d):
        e = torch.zeros(d, dtype=torch.float64)
        e[k] = h
        plus = feat.feature_expected_return(mdp, phi, theta + e)
        minus = feat.feature_expected_return(mdp, phi, theta - e)
        numeric[k] = (plus - minus) / (2 * h)
    # central differences: truncation h^2 |J'''| / 6 ~ 1e-10 |J'''| plus rounding
    # eps |J| / h ~ 1e-11 |J|; |J|, |J'''| are O(1-10) on these MDPs -> 1e-8 is ample
    scale = 1.0 + abs(feat.feature_expected_return(mdp, phi, theta))
    torch.testing.assert_close(gradient, numeric, rtol=0.0, atol=1e-8 * scale)


def test_scores_are_centred_feature_vectors():
    phi = _random((4, 3, 5), 3)
    policy = torch.softmax(_random((4, 3), 4), dim=-1)
    psi = feat.scores(phi, policy)
    # E_pi[psi(s, a)] = 0 for every s (round-off of sums of O(1) terms)
    torch.testing.assert_close(
        torch.einsum("sa,sak->sk", policy, psi),
        torch.zeros(4, 5, dtype=torch.float64),
        atol=1e-14,
        rtol=0.0,
    )


def test_feature_score_is_the_gradient_of_log_pi():
    phi = _random((2, 3, 4), 5)
    theta = _random((4,), 6).requires_grad_(True)
    log_pi = torch.log_softmax(feat.feature_logits(phi, theta), dim=-1)
    psi = feat.scores(phi, torch.softmax(feat.feature_logits(phi, theta.detach()), dim=-1))
    for s in range(2):
        for a in range(3):
            (grad,) = torch.autograd.grad(log_pi[s, a], theta, retain_graph=True)
            torch.testing.assert_close(grad, psi[s, a], atol=1e-14, rtol=0.0)


def test_corridor_closed_form_and_its_optimum():
    # v1(p) = 2 (p - 2) / (p (1 - p)) is maximised at p* = 2 - sqrt(2), value -(6 + 4 sqrt 2)
    p_star = feat.CORRIDOR_OPTIMAL_P
    assert feat.corridor_return(p_star) == pytest.approx(-(6 + 4 * math.sqrt(2)), rel=1e-14)
    for p in (0.3, 0.5, 0.58, 0.59, 0.7, 0.9):
        assert feat.corridor_return(p) < feat.corridor_return(p_star)
    assert feat.corridor_return(0.0) == -math.inf


def _corridor_theta(p: float) -> torch.Tensor:
    # pi(right) = sigmoid(theta_0 - theta_1)
    return torch.tensor([math.log(p / (1 - p)), 0.0], dtype=torch.float64)


def test_corridor_mdp_matches_the_textbook_values():
    mdp, phi = feat.short_corridor()
    for p in (0.2, 0.5, feat.CORRIDOR_OPTIMAL_P, 0.8):
        policy = feat.feature_policy(phi, _corridor_theta(p))
        # one shared policy in every state
        torch.testing.assert_close(policy[:, 1], torch.full((4,), p, dtype=torch.float64))
        j = feat.feature_expected_return(mdp, phi, _corridor_theta(p))
        # T = 200 truncates episodes still running after 200 steps, whose mass decays like
        # rho^200 <= 2e-5 with rho <= 0.948 for these p (spectral radius of the transient
        # chain), times the ~20 steps such an episode still has to go: measured 4.6e-4 at
        # p = 0.2, 7e-9 at p*; within the 1e-3
        assert j == pytest.approx(feat.corridor_return(p), abs=1e-3)


def test_corridor_exact_optimum_is_2_minus_sqrt2():
    mdp, phi = feat.short_corridor()
    # maximise J over p by golden-section search on the exact oracle
    lo, hi = 0.3, 0.8
    ratio = (math.sqrt(5) - 1) / 2

    def j(p):
        return feat.feature_expected_return(mdp, phi, _corridor_theta(p))

    for _ in range(40):  # bracket shrinks by 0.618^40 ~ 4e-9
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if j(a) < j(b):
            lo = a
        else:
            hi = b
    p_hat = (lo + hi) / 2
    # near the optimum J is flat (J(p) - J* ~ J'' (p - p*)^2 / 2 with J'' ~ -100), so a
    # comparison-based search locates p* to ~sqrt(2 eps |J| / |J''|) ~ 1e-8
    assert p_hat == pytest.approx(2 - math.sqrt(2), abs=1e-6)
    assert j(p_hat) == pytest.approx(-(6 + 4 * math.sqrt(2)), abs=1e-3)
    # the gradient vanishes along the identified direction theta_0 - theta_1 there
    gradient = feat.feature_gradient(mdp, phi, _corridor_theta(p_hat))
    assert abs(float(gradient[0])) < 1e-5
    # and the policy is shared: gradient components are opposite (features sum to [1, 1])
    assert float(gradient.sum()) == pytest.approx(0.0, abs=1e-12)


def test_deterministic_corridor_policies_never_arrive():
    mdp, phi = feat.short_corridor(horizon=50)
    for p in (1e-9, 1 - 1e-9):
        # about -T: the agent is stuck for the whole horizon
        assert feat.feature_expected_return(mdp, phi, _corridor_theta(p)) < -49.0


def test_checks_name_the_bad_input():
    mdp = zoo.make("two_state")
    with pytest.raises(ConfigError, match=r"features has shape \[2, 3, 1\]"):
        feat.feature_solve(mdp, torch.zeros(2, 3, 1), torch.zeros(1))
    with pytest.raises(ConfigError, match=r"theta has shape \[3\], expected \[d\] = \[2\]"):
        feat.feature_solve(mdp, torch.zeros(2, 2, 2), torch.zeros(3))
    with pytest.raises(ConfigError, match=r"features\[0, 1, 0\] is nan"):
        phi = torch.zeros(2, 2, 1)
        phi[0, 1, 0] = math.nan
        feat.feature_solve(mdp, phi, torch.zeros(1))
    with pytest.raises(ConfigError, match=r"theta\[1\] is inf"):
        feat.feature_solve(mdp, torch.zeros(2, 2, 2), [0.0, math.inf])
