"""Exact Fisher information, natural gradient, TRPO and the fitted convergence rates."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pglab.checks import ConfigError
from pglab.tabular import exact, zoo
from pglab.tabular import features as feat
from pglab.tabular import natural as nat
from pglab.tabular.mdp import TabularMDP

REWARDS = torch.tensor([1.0, 0.9, 0.1], dtype=torch.float64)


def _bandit(rewards: torch.Tensor = REWARDS) -> TabularMDP:
    n = len(rewards)
    return TabularMDP(torch.ones(1, n, 1, dtype=torch.float64), rewards[None], [1.0], 1)


def _random(shape, seed, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)


def _mdps():
    return [zoo.make("two_state"), zoo.make("gridworld"), zoo.garnet(n_states=5, horizon=8)]


# --------------------------------------------------------------------------------------
# Fisher information
# --------------------------------------------------------------------------------------
def test_fisher_equals_the_second_moment_of_the_trajectory_score_by_enumeration():
    # two_state is deterministic: a trajectory is fixed by its actions, so E over the 2^T
    # action sequences of (sum_t psi_t)(sum_t psi_t)^T is the Fisher of P(tau), cross
    # terms included (they average to 0; the enumeration does not assume it)
    mdp = zoo.two_state(horizon=3)
    logits = _random((2, 2), 0)
    policy = torch.softmax(logits, dim=-1)
    psi = feat.scores(feat.one_hot_features(2, 2), policy)  # [S, A, 4]
    nxt = mdp.transitions.argmax(-1)  # deterministic successor [S, A]
    second_moment = torch.zeros(4, 4, dtype=torch.float64)
    for actions in itertools.product(range(2), repeat=mdp.horizon):
        s, prob, score = 0, 1.0, torch.zeros(4, dtype=torch.float64)
        for a in actions:
            prob *= float(policy[s, a])
            score += psi[s, a]
            s = int(nxt[s, a])
        second_moment += prob * torch.outer(score, score)
    # sums of 8 products of O(1) terms: round-off ~1e-15
    torch.testing.assert_close(nat.fisher_matrix(mdp, logits), second_moment, atol=1e-13, rtol=0.0)


@pytest.mark.parametrize("mdp", _mdps(), ids=lambda m: m.name[:10])
def test_fisher_is_the_curvature_of_the_trajectory_kl(mdp):
    # L KLbar(theta, theta + h v) is KL(P_theta || P_theta+hv); its symmetric second
    # difference is h^2 v^T F v + O(h^4): with h = 1e-3 the O(h^2) relative remainder is
    # ~1e-6 and rounding eps / h^2 ~ 2e-10
    logits = _random((mdp.n_states, mdp.n_actions), 1)
    fisher = nat.fisher_matrix(mdp, logits)
    length = float(nat.state_weights(mdp, exact.solve(mdp, logits)).sum())
    h = 1e-3
    for seed in range(3):
        v = _random((mdp.n_states, mdp.n_actions), 10 + seed)
        kl_sum = nat.mean_kl(mdp, logits, logits + h * v) + nat.mean_kl(mdp, logits, logits - h * v)
        quadratic = float(v.reshape(-1) @ fisher @ v.reshape(-1))
        assert length * kl_sum / h**2 == pytest.approx(quadratic, rel=1e-5)


def test_fisher_with_features_is_the_pullback_of_the_tabular_fisher():
    mdp = zoo.make("gridworld")
    phi = _random((mdp.n_states, mdp.n_actions, 5), 2)
    theta = _random((5,), 3)
    logits = feat.feature_logits(phi, theta)
    tabular = nat.fisher_matrix(mdp, logits)
    jacobian = phi.reshape(-1, 5)  # d logits / d theta
    torch.testing.assert_close(
        nat.fisher_matrix(mdp, theta, phi), jacobian.T @ tabular @ jacobian, atol=1e-12, rtol=1e-12
    )


def test_terminal_states_take_no_decisions():
    mdp = zoo.make("gridworld")  # goal and pit are terminal
    solution = exact.solve(mdp, torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64))
    weights = nat.state_weights(mdp, solution)
    assert torch.all(weights[mdp.terminal] == 0)
    assert float(weights.sum()) < mdp.horizon  # some episodes end early


# --------------------------------------------------------------------------------------
# Natural gradient and NPG
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mdp", _mdps(), ids=lambda m: m.name[:10])
def test_tabular_closed_form_equals_the_pseudo_inverse(mdp):
    logits = _random((mdp.n_states, mdp.n_actions), 4)
    closed = nat.natural_gradient(mdp, logits)
    phi = feat.one_hot_features(mdp.n_states, mdp.n_actions)
    pinv = nat.natural_gradient(mdp, logits.reshape(-1), phi)
    # two routes to F^dagger grad J: pinv is backward-stable to ~eps * cond(F restricted to
    # its range); these moderately mixed policies have cond <= ~1e5, so 1e-9 absolute
    torch.testing.assert_close(closed.direction.reshape(-1), pinv.direction, atol=1e-9, rtol=0.0)
    # the direction solves F x = grad J and is orthogonal to F's null space
    fisher = nat.fisher_matrix(mdp, logits)
    torch.testing.assert_close(
        fisher @ closed.direction.reshape(-1), closed.gradient.reshape(-1), atol=1e-12, rtol=0.0
    )
    assert closed.quadratic == pytest.approx(float((closed.gradient * closed.direction).sum()))


def test_bandit_npg_matches_the_closed_form_per_iterate():
    # x = F^dagger grad J = r - mean(r) on a one-state bandit, so
    # theta_k = theta_0 + k eta (r - mean(r)) and pi_k(a) ~ pi_0(a) exp(k eta r_a)
    mdp = _bandit()
    theta0 = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    eta, n = 0.5, 60
    iterates = nat.exact_iterates(mdp, theta0, "npg", eta, n)
    k = torch.arange(n + 1, dtype=torch.float64)[:, None]
    closed = theta0[0] + k * eta * (REWARDS - REWARDS.mean())
    # each step adds an O(1) vector: round-off grows like k eps |theta| ~ 60 * 2e-16 * 30
    torch.testing.assert_close(iterates.thetas[:, 0, :], closed, atol=1e-10, rtol=0.0)
    policies = torch.softmax(iterates.thetas[:, 0, :], dim=-1)
    expected = torch.softmax(theta0[0] + k * eta * REWARDS, dim=-1)
    torch.testing.assert_close(policies, expected, atol=1e-10, rtol=0.0)
    # theta_a <- theta_a + eta (r_a - J) up to a constant: the difference is constant in a
    for step in range(5):
        j = float(iterates.returns[step])
        theta_j = iterates.thetas[step, 0] + eta * (REWARDS - j)
        shift = iterates.thetas[step + 1, 0] - theta_j
        assert float(shift.max() - shift.min()) < 1e-13


def test_npg_with_features_is_invariant_to_an_invertible_reparametrisation():
    # phi' = M^T phi: theta = M theta', F' = M^T F M, grad' = M^T grad, so M x' = x and the
    # policies of the two NPG runs coincide (PG's do not)
    mdp = zoo.make("two_state")
    phi = _random((2, 2, 2), 5)  # d = 2 = S (A - 1): F is invertible
    m = torch.tensor([[2.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    phi2 = torch.einsum("sak,kl->sal", phi, m)
    theta = _random((2,), 6)
    theta2 = torch.linalg.solve(m, theta)
    run1 = nat.exact_iterates(mdp, theta, "npg", 0.3, 10, features=phi)
    run2 = nat.exact_iterates(mdp, theta2, "npg", 0.3, 10, features=phi2)
    torch.testing.assert_close(run1.returns, run2.returns, atol=1e-10, rtol=0.0)
    pg1 = nat.exact_iterates(mdp, theta, "pg", 0.3, 10, features=phi)
    pg2 = nat.exact_iterates(mdp, theta2, "pg", 0.3, 10, features=phi2)
    assert float((pg1.returns - pg2.returns).abs().max()) > 1e-3


def test_npg_step_is_theta_plus_eta_direction():
    mdp = zoo.make("chain")
    logits = _random((mdp.n_states, mdp.n_actions), 7)
    step = nat.npg_step(mdp, logits, 0.25)
    torch.testing.assert_close(step, logits + 0.25 * nat.natural_gradient(mdp, logits).direction)


# --------------------------------------------------------------------------------------
# KL and TRPO
# --------------------------------------------------------------------------------------
def test_mean_kl_by_hand_and_its_invariances():
    mdp = zoo.make("two_state")
    old = _random((2, 2), 8)
    new = _random((2, 2), 9)
    solution = exact.solve(mdp, old)
    w = solution.occupancy.sum(0)
    p, q = torch.softmax(old, -1), torch.softmax(new, -1)
    per_state = (p * (p.log() - q.log())).sum(-1)
    assert nat.mean_kl(mdp, old, new) == pytest.approx(float((w * per_state).sum() / w.sum()))
    assert nat.mean_kl(mdp, old, old) == 0.0
    # adding a constant to a state's logits changes no policy
    assert nat.mean_kl(mdp, old, old + torch.tensor([[3.0], [-2.0]])) == pytest.approx(
        0.0, abs=1e-15
    )


def test_trpo_quadratic_model_is_exact_for_small_steps():
    mdp = zoo.make("gridworld")
    logits = _random((mdp.n_states, mdp.n_actions), 11, scale=0.5)
    delta = 1e-6
    step = nat.trpo_step(mdp, logits, delta)
    assert step.accepted and len(step.trials) == 1
    # KLbar = delta + O(delta^{3/2}): relative error ~ sqrt(delta) ~ 1e-3
    assert step.kl == pytest.approx(delta, rel=5e-3)


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_trpo_accepted_steps_never_exceed_delta_in_exact_kl(delta):
    for mdp, theta0 in [
        (_bandit(), torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)),
        (zoo.make("chain"), _random((5, 2), 12, scale=2.0)),
        (zoo.make("gridworld"), _random((16, 4), 13, scale=2.0)),
    ]:
        iterates = nat.exact_iterates(mdp, theta0, "trpo", delta, 8)
        assert float(iterates.kls.max()) <= delta
        # every iterate improves J (or stays put when nothing was accepted)
        assert bool(torch.all(iterates.returns[1:] >= iterates.returns[:-1]))
        for k in range(8):  # the recorded KL is the exact one between the iterates
            recorded = nat.mean_kl(mdp, iterates.thetas[k], iterates.thetas[k + 1])
            assert float(iterates.kls[k]) == pytest.approx(recorded, abs=1e-15)


def test_trpo_line_search_rejects_a_step_that_breaks_the_kl_bound():
    # from a bad start (pi concentrated on the worst arm) the quadratic model underestimates
    # the KL of the full step: exact KLbar = 0.152 > delta = 0.1 (measured), so the search
    # must reject it and take the half step
    mdp = _bandit()
    theta = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    step = nat.trpo_step(mdp, theta, 0.1)
    first, taken = step.trials[0], step.trials[-1]
    assert first.kl > 0.1 and not first.accepted
    assert step.accepted and taken.accepted and taken.fraction == 0.5
    assert step.kl == taken.kl <= 0.1 and step.improvement > 0
    torch.testing.assert_close(
        step.theta, theta + 0.5 * step.max_step * nat.natural_gradient(mdp, theta).direction
    )


def test_trpo_keeps_theta_when_no_candidate_passes():
    mdp = _bandit()
    theta = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    step = nat.trpo_step(mdp, theta, 0.1, max_backtracks=0)
    assert not step.accepted and step.kl == 0.0 and step.step_norm == 0.0
    assert torch.equal(step.theta, theta)


def test_trpo_at_a_stationary_point_does_nothing():
    mdp = _bandit(torch.tensor([0.5, 0.5], dtype=torch.float64))  # grad J = 0 everywhere
    step = nat.trpo_step(mdp, torch.zeros(1, 2, dtype=torch.float64), 0.1)
    assert not step.accepted and step.max_step == 0.0 and step.trials == ()


# --------------------------------------------------------------------------------------
# Convergence rates on a 3-armed bandit
# --------------------------------------------------------------------------------------
def test_pg_converges_as_c_over_t_with_c_two_thirds_over_eta():
    # asymptotic ODE of x_a = pi(a)/pi(a*) (r* - r_a): dx_a/dt = -eta x_a (x_a + sum_b x_b),
    # solved by x_a = 1 / (3 eta t) for both suboptimal arms: t gap_t -> 2 / (3 eta). The
    # approach is slow (t gap_t = C + a log(t)/t + ..., 1.73 at t = 3000 for eta = 0.4), so
    # C is read off a least-squares fit of t gap_t on [1, log(t)/t] over t in [500, 3000]
    mdp = _bandit()
    eta = 0.4
    iterates = nat.exact_iterates(mdp, torch.zeros(1, 3, dtype=torch.float64), "pg", eta, 3000)
    gaps = (1.0 - iterates.returns).numpy()
    fit = nat.fit_sublinear_rate(gaps, start=1000)
    assert fit.slope == pytest.approx(-1.0, abs=0.06)  # log-log slope; measured -1.049
    t = np.arange(500, 3001, dtype=np.float64)
    design = np.stack([np.ones_like(t), np.log(t) / t], axis=1)
    constant, _ = np.linalg.lstsq(design, t * gaps[500:], rcond=None)[0]
    # measured 1.666766 vs 1.666667: the next correction term is O(1/t) ~ 1e-4
    assert constant == pytest.approx(2.0 / (3.0 * eta), rel=1e-3)


def test_npg_converges_linearly_at_rate_exp_minus_eta_delta():
    # pi_k(a) ~ exp(k eta r_a): gap_k = sum_a u_a (r* - r_a) / (1 + sum_b u_b) with
    # u_a = exp(-k eta (r* - r_a)), dominated by the closest arm (Delta = 0.1); the
    # denominator moves the log-slope by ~eta Delta u(k) <= 5e-6 at k >= 200
    mdp = _bandit()
    eta = 0.5
    iterates = nat.exact_iterates(mdp, torch.zeros(1, 3, dtype=torch.float64), "npg", eta, 400)
    gaps = 1.0 - iterates.returns  # >= 2e-10 over the window: far above round-off
    fit = nat.fit_linear_rate(gaps, start=200, stop=400)
    assert fit.contraction == pytest.approx(math.exp(-eta * 0.1), rel=1e-5)
    # and PG with the same eta is far slower: still above 1e-3 after 400 steps
    pg = nat.exact_iterates(mdp, torch.zeros(1, 3, dtype=torch.float64), "pg", eta, 400)
    assert float(1.0 - pg.returns[-1]) > 1e-3 > 1e3 * float(gaps[-1])


def test_rate_fits_refuse_non_positive_gaps():
    with pytest.raises(ConfigError, match=r"suboptimality\[2\] is 0.0"):
        nat.fit_linear_rate([1.0, 0.5, 0.0, 0.1])
    with pytest.raises(ConfigError, match="holds 1 points"):
        nat.fit_sublinear_rate([1.0, 0.5], start=1)
    assert nat.fit_linear_rate([1.0, 0.5, 0.25]).contraction == pytest.approx(0.5)
    assert nat.fit_sublinear_rate([9.0, 1.0, 0.5, 1 / 3]).slope == pytest.approx(-1.0)


# --------------------------------------------------------------------------------------
# The short corridor: exact PG, NPG and TRPO reach p* = 2 - sqrt(2)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "step", "n"), [("pg", 0.05, 20), ("npg", 0.1, 30), ("trpo", 0.05, 10)]
)
def test_corridor_optimum_is_reached_by_exact_ascent(rule, step, n):
    mdp, phi = feat.short_corridor()
    theta0 = torch.tensor([-2.0, 0.0], dtype=torch.float64)  # p = 0.12: J = -35.8
    iterates = nat.exact_iterates(mdp, theta0, rule, step, n, features=phi)
    theta = iterates.thetas[-1]
    p = float(torch.sigmoid(theta[0] - theta[1]))
    # J is flat at p*: |J - J*| <= 1e-3 allows |p - p*| up to ~5e-3 (J'' ~ -100)
    assert float(iterates.returns[-1]) == pytest.approx(feat.CORRIDOR_OPTIMAL_RETURN, abs=1e-3)
    assert p == pytest.approx(feat.CORRIDOR_OPTIMAL_P, abs=5e-3)


def test_input_checks():
    mdp = _bandit()
    with pytest.raises(ConfigError, match="unknown rule 'ppo'"):
        nat.exact_iterates(mdp, torch.zeros(1, 3), "ppo", 0.1, 1)
    with pytest.raises(ConfigError, match="max_kl must be finite and > 0"):
        nat.trpo_step(mdp, torch.zeros(1, 3), 0.0)
    with pytest.raises(ValueError, match=r"logits has shape \[3\]"):
        nat.natural_gradient(mdp, torch.zeros(3))


# --------------------------------------------------------------------------------------
# Tabular natural direction from any state weights (exact or sampled visit counts)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_tabular_natural_direction_matches_the_explicit_block_solve(damping):
    n_states, n_actions = 4, 3
    logits = _random((n_states, n_actions), 20)
    pi = torch.softmax(logits, -1)
    z = _random((n_states, n_actions), 21)
    g = pi * (z - (pi * z).sum(-1, keepdim=True))  # a softmax gradient: sums to 0 per state
    c = torch.tensor([0.7, 0.0, 2.5, 0.05], dtype=torch.float64)  # one unvisited state
    fisher = torch.block_diag(
        *[c[s] * (torch.diag(pi[s]) - torch.outer(pi[s], pi[s])) for s in range(4)]
    )
    if damping == 0.0:
        expected = torch.linalg.pinv(fisher, hermitian=True, rtol=1e-12) @ g.reshape(-1)
    else:
        expected = torch.linalg.solve(
            fisher + damping * torch.eye(12, dtype=torch.float64), g.reshape(-1)
        )
    x = nat.tabular_natural_direction(logits, g, c, damping)
    # cond(F restricted to its range) ~ 1e2 here: both routes agree to ~1e-14
    torch.testing.assert_close(x.reshape(-1), expected, atol=1e-11, rtol=0.0)


def test_tabular_natural_direction_with_exact_weights_is_the_natural_gradient():
    mdp = zoo.make("gridworld")
    logits = _random((mdp.n_states, mdp.n_actions), 22)
    natural = nat.natural_gradient(mdp, logits)
    weights = nat.state_weights(mdp, natural.solution)
    x = nat.tabular_natural_direction(logits, natural.gradient, weights)
    # g / (w pi) recovers Abar up to round-off of pi ~ e^-4 at worst here
    torch.testing.assert_close(x, natural.direction, atol=1e-10, rtol=0.0)
