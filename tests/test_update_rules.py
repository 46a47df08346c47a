"""Sampled update rules (pglab.gym.updates): conjugate gradient, Fisher-vector products,
NPG, TRPO's KL bound, and PPO's reduction to plain PG."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pglab import estimators
from pglab.checks import ConfigError
from pglab.gym import updates as U
from pglab.gym.gradients import flat_params, surrogate_loss
from pglab.gym.policies import make_policy
from pglab.gym.rollouts import EpisodeBatch, RolloutCollector


def _synthetic_batch(n=6, t=5, obs_dim=3, n_actions=3, seed=0, dtype=torch.float64):
    """N episodes of random lengths 1..T with random states, actions and rewards."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    obs = torch.randn(n, t, obs_dim, generator=g, dtype=dtype) * mask[..., None]
    actions = torch.randint(0, n_actions, (n, t), generator=g) * mask
    rewards = torch.rand(n, t, generator=g, dtype=dtype) * mask
    return EpisodeBatch(
        observations=obs,
        actions=actions,
        rewards=rewards,
        mask=mask,
        lengths=lengths,
        terminated=torch.ones(n, dtype=torch.bool),
        env_steps=n * t,
    )


def _weights(batch, estimator="reward_to_go"):
    return estimators.step_weights(batch.rewards, batch.mask, estimator)


def _explicit_fisher(policy, obs):
    """Fbar = (1/M) sum_m sum_a pi(a|s_m) psi psi^T, psi = grad log pi(a|s_m), by autograd
    of each log pi(a|s_m) separately: shares no code with FisherOperator."""
    params = [p for p in policy.parameters()]
    log_pi = torch.log_softmax(policy(obs), dim=-1)
    pi = log_pi.detach().exp()
    dim = sum(p.numel() for p in params)
    fisher = torch.zeros(dim, dim, dtype=log_pi.dtype)
    for m in range(obs.shape[0]):
        for a in range(log_pi.shape[1]):
            grads = torch.autograd.grad(log_pi[m, a], params, retain_graph=True)
            psi = torch.cat([g.reshape(-1) for g in grads])
            fisher += pi[m, a] * torch.outer(psi, psi)
    return fisher / obs.shape[0]


class _Wrapped(nn.Module):
    """A policy FisherOperator cannot see into (no ``layers``): the autograd path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, obs):
        return self.inner(obs)

    def log_prob(self, obs, actions):
        return self.inner.log_prob(obs, actions)


# --------------------------------------------------------------------------------------
# Conjugate gradient
# --------------------------------------------------------------------------------------
def test_cg_solves_a_known_spd_system():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(20, 20, generator=g, dtype=torch.float64)
    a = q.T @ q + 0.5 * torch.eye(20, dtype=torch.float64)  # cond ~ 1e3
    x_true = torch.randn(20, generator=g, dtype=torch.float64)
    b = a @ x_true
    result = U.conjugate_gradient(lambda v: a @ v, b, iterations=60, tolerance=1e-14)
    # CG reaches ||r|| <= 1e-14 ||b||; then ||x - x*|| <= cond ||r|| / ||A|| ~ 1e-11 |x*|
    torch.testing.assert_close(result.x, x_true, atol=1e-9, rtol=0.0)
    assert result.residual <= 1e-14 and result.iterations <= 60


def test_cg_on_a_singular_system_returns_the_minimum_norm_solution():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(10, 4, generator=g, dtype=torch.float64)
    a = u @ u.T  # rank 4, PSD
    b = a @ torch.randn(10, generator=g, dtype=torch.float64)  # in the range
    result = U.conjugate_gradient(lambda v: a @ v, b, iterations=10, tolerance=1e-13)
    # iterates stay in the Krylov space of b, inside range(A): the pinv solution
    torch.testing.assert_close(result.x, torch.linalg.pinv(a) @ b, atol=1e-8, rtol=0.0)


def test_cg_of_zero_is_zero():
    result = U.conjugate_gradient(lambda v: v, torch.zeros(3))
    assert torch.equal(result.x, torch.zeros(3)) and result.iterations == 0


# --------------------------------------------------------------------------------------
# Fisher-vector products
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "hidden", "activation", "wrap"),
    [
        ("linear", (), "tanh", False),
        ("mlp", (5,), "tanh", False),
        ("mlp", (4, 3), "relu", False),
        ("linear", (), "tanh", True),
        ("mlp", (5,), "tanh", True),
    ],
)
@pytest.mark.parametrize("n_actions", [2, 3])  # two actions: the rank-one factor
def test_fisher_vector_products_match_the_explicit_empirical_fisher(
    kind, hidden, activation, wrap, n_actions
):
    policy = make_policy(kind, 3, n_actions, hidden, activation, seed=2, dtype=torch.float64)
    batch = _synthetic_batch(n_actions=n_actions)
    obs = batch.observations[batch.mask]
    fisher = _explicit_fisher(policy, obs)
    subject = _Wrapped(policy) if wrap else policy
    modes = ("autograd",) if wrap else ("jacobian", "matrix_free", "autograd")
    assert U.FisherOperator(subject, obs).mode == ("autograd" if wrap else "jacobian")
    g = torch.Generator().manual_seed(3)
    for mode in modes:
        operator = U.FisherOperator(subject, obs, mode=mode)
        for _ in range(3):
            v = torch.randn(operator.dim, generator=g, dtype=torch.float64)
            # float64, sums of O(10-100) products of O(1) terms: round-off ~1e-15
            torch.testing.assert_close(operator(v), fisher @ v, atol=1e-12, rtol=1e-12)
        # stride k: the same Fisher on every k-th state
        strided = U.FisherOperator(subject, obs, stride=2, mode=mode)
        v = torch.randn(operator.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(
            strided(v), _explicit_fisher(policy, obs[::2]) @ v, atol=1e-12, rtol=1e-12
        )


def test_fisher_mode_auto_switches_to_matrix_free_for_large_batches(monkeypatch):
    policy = make_policy("mlp", 3, 3, (5,), seed=2, dtype=torch.float64)
    obs = _synthetic_batch().observations[_synthetic_batch().mask]
    monkeypatch.setattr(U, "JACOBIAN_BUDGET", 10)
    assert U.FisherOperator(policy, obs).mode == "matrix_free"
    with pytest.raises(ConfigError, match="use 'autograd' for _Wrapped"):
        U.FisherOperator(_Wrapped(policy), obs, mode="jacobian")


def test_fisher_is_the_curvature_of_the_mean_kl():
    policy = make_policy("mlp", 3, 3, (5,), seed=4, dtype=torch.float64)
    obs = _synthetic_batch().observations[_synthetic_batch().mask]
    operator = U.FisherOperator(policy, obs)
    theta = flat_params(policy.parameters())
    log_old = torch.log_softmax(policy(obs), -1).detach()
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v /= v.norm()
    h = 1e-4
    total = 0.0
    for sign in (1.0, -1.0):
        U._set_flat(list(policy.parameters()), theta + sign * h * v)
        total += U.batch_kl(log_old, torch.log_softmax(policy(obs), -1).detach())
    # KL(+h) + KL(-h) = h^2 v^T Fbar v + O(h^4) (odd orders cancel): with |v| = 1 the
    # remainder is ~h^2 C_4 ~ 1e-8 x O(10) and rounding eps / (h^2 v^T F v) ~ 1e-7
    assert total / h**2 == pytest.approx(float(v @ operator(v)), rel=1e-5)


# --------------------------------------------------------------------------------------
# Plain PG and NPG
# --------------------------------------------------------------------------------------
def test_pg_update_is_theta_plus_alpha_ghat():
    policy = make_policy("mlp", 3, 3, (5,), seed=6, dtype=torch.float64)
    batch = _synthetic_batch()
    weights = _weights(batch)
    theta = flat_params(policy.parameters())
    loss = surrogate_loss(policy, batch, weights)
    ghat = -torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(policy.parameters()))])
    info = U.pg_update(policy, batch, weights, 0.3)
    torch.testing.assert_close(flat_params(policy.parameters()), theta + 0.3 * ghat)
    assert info.step_norm == pytest.approx(0.3 * float(ghat.norm()))
    assert info.grad_norm == pytest.approx(float(ghat.norm()))


def test_npg_step_solves_the_damped_fisher_system():
    policy = make_policy("linear", 3, 3, seed=7, dtype=torch.float64)  # P = 12
    batch = _synthetic_batch()
    weights = _weights(batch)
    obs = batch.observations[batch.mask]
    theta = flat_params(policy.parameters())
    fisher_hat = obs.shape[0] / batch.mask.shape[0] * _explicit_fisher(policy, obs)
    loss = surrogate_loss(policy, batch, weights)
    ghat = -torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(policy.parameters()))])
    damping, eta = 1e-2, 0.5
    x = torch.linalg.solve(fisher_hat + damping * torch.eye(12, dtype=torch.float64), ghat)
    config = U.NPGConfig(eta, damping, cg_iterations=50, cg_tolerance=1e-14, fisher_stride=1)
    info = U.npg_update(policy, batch, weights, config)
    # CG on a 12-dim SPD system with cond <= ~1e3 converges to 1e-14 relative residual
    torch.testing.assert_close(flat_params(policy.parameters()) - theta, eta * x, atol=1e-9, rtol=0)
    assert info.extras["quadratic_kl"] == pytest.approx(
        0.5 * eta**2 * float(x @ _explicit_fisher(policy_at(policy, theta), obs) @ x), rel=1e-8
    )


def policy_at(policy, theta):
    clone = copy.deepcopy(policy)
    U._set_flat(list(clone.parameters()), theta)
    return clone


def test_kl_normalised_npg_step_has_the_target_quadratic_kl():
    policy = make_policy("mlp", 3, 3, (5,), seed=8, dtype=torch.float64)
    batch = _synthetic_batch()
    kappa = 1e-6
    config = U.NPGConfig(
        kl_target=kappa, damping=0.1, cg_iterations=100, cg_tolerance=1e-14, fisher_stride=1
    )
    info = U.npg_update(policy, batch, _weights(batch), config)
    assert info.extras["quadratic_kl"] == pytest.approx(kappa, rel=1e-9)
    # the measured KL differs from its quadratic model by a relative O(|step|) = O(sqrt
    # kappa) term (measured 4e-5 here; with damping 1e-3 the solve puts a 10x longer step
    # into the Fisher's flat directions and the gap is 2e-2 at this kappa)
    assert info.kl == pytest.approx(kappa, rel=1e-3)


# --------------------------------------------------------------------------------------
# TRPO
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [1e-3, 1e-2, 1e-1, 1.0, 10.0])
def test_trpo_accepted_step_has_sampled_kl_below_delta(delta):
    for seed in range(4):
        policy = make_policy("mlp", 3, 3, (8,), seed=seed, dtype=torch.float64)
        batch = _synthetic_batch(n=8, seed=seed)
        weights = _weights(batch, "reinforce")
        obs = batch.observations[batch.mask]
        theta = flat_params(policy.parameters())
        log_old = torch.log_softmax(policy(obs), -1).detach()
        info = U.trpo_update(policy, batch, weights, U.TRPOConfig(max_kl=delta))
        new = flat_params(policy.parameters())
        if info.extras["accepted"]:
            recomputed = U.batch_kl(log_old, torch.log_softmax(policy(obs), -1).detach())
            assert info.kl == recomputed <= delta
            assert info.extras["surrogate_improvement"] > 0
            assert info.step_norm == pytest.approx(float((new - theta).norm()))
        else:
            assert torch.equal(new, theta) and info.kl == 0.0


def _cartpole_batch(n, seed, estimator="reinforce"):
    policy = make_policy("mlp", 4, 2, seed=0)  # float32, 64-64
    with RolloutCollector("CartPole-v1", n, seed=seed) as collector:
        batch = collector.collect(policy, torch.Generator().manual_seed(seed))
    return policy, batch, _weights(batch, estimator)


def test_trpo_line_search_rejects_a_full_step_that_breaks_the_kl_bound():
    # N = 5, seed 1, delta = 1e-3: the quadratic model (on every 5th state) puts the full
    # step's KL at delta, but on all the batch's states it is 1.03e-3 (measured): rejected,
    # and the half step (KL ~ delta / 4) taken
    policy, batch, weights = _cartpole_batch(5, 1)
    info = U.trpo_update(policy, batch, weights, U.TRPOConfig(max_kl=1e-3))
    assert info.extras["full_step_kl"] > 1e-3 and info.extras["full_step_improvement"] > 0
    assert info.extras["backtracks"] == 1.0 and info.extras["accepted"] == 1.0
    assert 0.0 < info.kl <= 1e-3


def test_trpo_line_search_rejects_a_full_step_that_lowers_the_surrogate():
    # N = 5, seed 0, delta = 10: the full step is within the bound (KL 4.06, measured) but
    # overshoots, lowering the importance-weighted surrogate; two shrinks later it improves
    policy, batch, weights = _cartpole_batch(5, 0)
    info = U.trpo_update(policy, batch, weights, U.TRPOConfig(max_kl=10.0))
    assert info.extras["full_step_kl"] <= 10.0 and info.extras["full_step_improvement"] < 0
    assert info.extras["backtracks"] >= 1.0 and info.extras["accepted"] == 1.0
    assert info.kl <= 10.0 and info.extras["surrogate_improvement"] > 0


def test_trpo_on_a_cartpole_batch_respects_delta():
    policy, batch, weights = _cartpole_batch(10, 0, "reward_to_go")
    for delta in (1e-3, 1e-2):
        info = U.trpo_update(copy.deepcopy(policy), batch, weights, U.TRPOConfig(max_kl=delta))
        assert info.extras["accepted"] == 1.0 and 0.0 < info.kl <= delta


def test_trpo_with_zero_gradient_stays_put():
    policy = make_policy("mlp", 3, 3, (4,), seed=0, dtype=torch.float64)
    batch = _synthetic_batch()
    theta = flat_params(policy.parameters())
    info = U.trpo_update(policy, batch, torch.zeros_like(batch.rewards), U.TRPOConfig())
    assert info.extras["accepted"] == 0.0 and info.step_norm == 0.0
    assert torch.equal(flat_params(policy.parameters()), theta)


# --------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_ppo_without_clipping_one_epoch_one_minibatch_sgd_is_plain_pg(dtype, tol):
    # rho = exp(log pi - log pi_old) = exp(0) = 1 exactly at theta_old and grad rho =
    # grad log pi, so the first (only) SGD step is theta + alpha ghat. The two
    # computations differ only in the order the M steps are summed (PPO shuffles them):
    # the gap is a few ulps of the largest partial sums, i.e. ~M eps |alpha ghat|, and
    # both then round theta + step to the dtype, which may land one ulp of theta apart
    # (<= eps |theta| per entry: the rtol below; seen on an AMD EPYC, 1.49e-8 at |theta| ~ 0.2)
    policy = make_policy("mlp", 4, 2, seed=0, dtype=dtype)
    with RolloutCollector("CartPole-v1", 8, seed=0) as collector:
        batch = collector.collect(policy, torch.Generator().manual_seed(0))
    weights = _weights(batch)
    pg, ppo = copy.deepcopy(policy), copy.deepcopy(policy)
    alpha = 0.01
    pg_info = U.pg_update(pg, batch, weights, alpha)
    config = U.PPOConfig(step_size=alpha, clip=1e9, epochs=1, minibatches=1, optimizer="sgd")
    ppo_info = U.ppo_update(
        ppo, batch, weights, config, U.make_ppo_optimizer(ppo, config), torch.Generator()
    )
    step = pg_info.step_norm
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(
        flat_params(ppo.parameters()), flat_params(pg.parameters()), atol=tol * step, rtol=eps
    )
    assert ppo_info.kl == pytest.approx(pg_info.kl, rel=1e-4 if dtype == torch.float32 else 1e-10)


def test_ppo_minibatch_gradients_are_unbiased_for_ghat():
    # minibatch B's gradient at theta_old is (M/m_B) (1/N) sum_{m in B} Psi_m grad log pi_m,
    # whose average over a uniformly drawn B is ghat. With one step per real step
    # (m_B = 1) and a tiny learning rate (the gradient barely moves between the steps), the
    # M steps of one epoch add up to M alpha ghat
    policy = make_policy("mlp", 3, 3, (5,), seed=9, dtype=torch.float64)
    batch = _synthetic_batch(n=8, t=6, seed=3)
    weights = _weights(batch)
    theta = flat_params(policy.parameters())
    pg = copy.deepcopy(policy)
    alpha = 1e-7
    U.pg_update(pg, batch, weights, alpha)
    ghat_step = flat_params(pg.parameters()) - theta
    m = int(batch.mask.sum())
    config = U.PPOConfig(step_size=alpha, clip=1e9, epochs=1, minibatches=m, optimizer="sgd")
    U.ppo_update(
        policy,
        batch,
        weights,
        config,
        U.make_ppo_optimizer(policy, config),
        torch.Generator().manual_seed(0),
    )
    # the drift between steps is O(M alpha |ghat|) relative to the step: ~1e-5 here
    torch.testing.assert_close(
        flat_params(policy.parameters()) - theta, m * ghat_step, rtol=1e-4, atol=0.0
    )


def test_ppo_clipping_stops_the_ratio_from_running_away():
    policy = make_policy("mlp", 3, 3, (5,), seed=10, dtype=torch.float64)
    batch = _synthetic_batch(n=8, seed=4)
    weights = _weights(batch, "baseline_batch_mean")  # signed weights
    config = U.PPOConfig(step_size=0.05, clip=0.1, epochs=30, minibatches=1, optimizer="sgd")
    info = U.ppo_update(
        policy,
        batch,
        weights,
        config,
        U.make_ppo_optimizer(policy, config),
        torch.Generator().manual_seed(0),
    )
    assert info.extras["clip_fraction"] > 0 and info.extras["optimizer_steps"] == 30
    assert math.isfinite(info.kl) and info.kl > 0


# --------------------------------------------------------------------------------------
# Rule objects and checks
# --------------------------------------------------------------------------------------
def test_make_update_rule_dispatches_and_keeps_state():
    batch = _synthetic_batch()
    weights = _weights(batch)
    for name in U.UPDATE_RULES:
        policy = make_policy("mlp", 3, 3, (5,), seed=11, dtype=torch.float64)
        reference = copy.deepcopy(policy)
        rule = U.make_update_rule(name, policy, 0.01)
        info = rule(batch, weights)
        assert math.isfinite(info.kl) and info.step_norm > 0
        if name == "pg":
            U.pg_update(reference, batch, weights, 0.01)
            assert torch.equal(
                flat_params(policy.parameters()), flat_params(reference.parameters())
            )
        if name == "ppo":
            assert rule.optimizer is not None and rule.optimizer.state  # Adam moments kept
        if name == "trpo":
            assert rule.trpo.max_kl == 0.01 and info.kl <= 0.01


def test_configs_name_the_bad_field():
    with pytest.raises(ConfigError, match="trpo.max_kl must be finite and > 0"):
        U.TRPOConfig(max_kl=0.0).validate()
    with pytest.raises(ConfigError, match="unknown ppo.optimizer 'adamw'"):
        U.PPOConfig(optimizer="adamw").validate()
    with pytest.raises(ConfigError, match="npg.cg_iterations must be a positive integer"):
        U.NPGConfig(cg_iterations=0).validate()
    with pytest.raises(ConfigError, match="unknown update 'nqg'"):
        U.make_update_rule("nqg", make_policy("linear", 3, 3), 0.1)
    with pytest.raises(ConfigError, match=r"weights has shape \[2\]"):
        U.pg_update(make_policy("linear", 3, 3), _synthetic_batch(), torch.zeros(2), 0.1)
