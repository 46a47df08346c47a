"""pglab.estimators: weight formulas, (un)biasedness against the exact gradient, 1/N variance.

Monte-Carlo assertions use ``pglab.stats.gradient_estimate_metrics`` on K independent
batch estimates: the bootstrap-t test of H0: E ghat = truth on the studentised squared
norm K ||mean - truth||^2 / tr S (``pglab.stats.bias_test``, 2000 resamples). "Unbiased"
means its p-value exceeds alpha = 1e-3 (false-alarm rate 1e-3 per assertion); "biased"
means it is below alpha, in cases built so the expected per-coordinate |z| of the bias
is 25 or more (stated per test): the chance of missing it is then nil. Seeds are fixed,
so every test is deterministic.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from pglab import estimators, stats
from pglab.estimators import ESTIMATORS, step_weights
from pglab.tabular import exact, zoo
from pglab.tabular.estimates import batch_estimates, sample_gradients
from pglab.tabular.policy import initial_logits, softmax_policy
from pglab.tabular.sampling import sample_trajectories

ALPHA = 1e-3


def garnet_discounted():
    return zoo.garnet(n_states=6, n_actions=3, branching=3, seed=4, horizon=10, gamma=0.9)


def gridworld_terminal():
    return zoo.gridworld(size=3, slip=0.2, horizon=10, gamma=0.95)


def chain_undiscounted():
    return zoo.chain(n_states=4, slip=0.2, horizon=8, gamma=1.0)


def random_logits(mdp, seed=0):
    return initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=seed)


def metrics(estimates, truth):
    k = estimates.shape[0]
    return stats.gradient_estimate_metrics(estimates.reshape(k, -1), truth.reshape(-1))


# ---------------------------------------------------------------------------------------
# step_weights: the formulas, against a plain-Python transcription of the definitions
# ---------------------------------------------------------------------------------------
def reference_weights(rewards, mask, estimator, gamma, values=None):
    """Psi_{i,t} straight from the module table, with Python loops (no shared code)."""
    rewards, mask = rewards.tolist(), mask.tolist()
    n, horizon = len(rewards), len(rewards[0])
    r = [[rewards[i][t] if mask[i][t] else 0.0 for t in range(horizon)] for i in range(n)]
    big_r = [sum(gamma**t * r[i][t] for t in range(horizon)) for i in range(n)]
    out = [[0.0] * horizon for _ in range(n)]
    for i in range(n):
        for t in range(horizon):
            if not mask[i][t]:
                continue
            to_go = sum(gamma ** (k - t) * r[i][k] for k in range(t, horizon))
            others = [big_r[j] for j in range(n) if j != i]
            mean = sum(big_r) / n
            if estimator == "reinforce":
                psi = big_r[i]
            elif estimator == "reward_to_go":
                psi = sum(gamma**k * r[i][k] for k in range(t, horizon))
            elif estimator == "reward_to_go_dropped_discount":
                psi = to_go
            elif estimator == "baseline_batch_mean":
                psi = big_r[i] - mean
            elif estimator == "baseline_leave_one_out":
                psi = big_r[i] - (sum(others) / len(others) if others else 0.0)
            elif estimator == "baseline_value":
                psi = gamma**t * (to_go - values[i][t])
            else:  # normalized
                psi = (big_r[i] - mean) / (statistics.pstdev(big_r) + 1e-8)
            out[i][t] = psi
    return torch.tensor(out, dtype=torch.float64)


REWARDS = torch.tensor(
    [[1.0, 2.0, 3.0, 0.5], [0.0, 1.0, 9.0, 9.0], [4.0, -1.0, 7.0, 7.0]], dtype=torch.float64
)
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
VALUES = torch.tensor(
    [[0.5, 1.0, 2.0, 0.0], [1.0, 0.3, 5.0, 5.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64
)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("gamma", [1.0, 0.7])
def test_step_weights_match_definitions(estimator, gamma):
    # the rewards at masked steps (9, 7) are garbage: they must be ignored
    got = step_weights(REWARDS, MASK, estimator, gamma, values=VALUES)
    expected = reference_weights(REWARDS, MASK, estimator, gamma, VALUES.tolist())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.all(got[~MASK] == 0)
    assert got.dtype == torch.float64


def test_step_weights_hand_values():
    """A few numbers worked out by hand (gamma = 0.5)."""
    rewards = torch.tensor([[1.0, 2.0, 4.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    w = step_weights(rewards, mask, "reinforce", 0.5)  # R = 1 + 1 + 1 = 3, and 2
    assert w.tolist() == [[3.0, 3.0, 3.0], [2.0, 2.0, 0.0]]
    w = step_weights(rewards, mask, "reward_to_go", 0.5)  # gamma^t G_t
    assert w.tolist() == [[3.0, 2.0, 1.0], [2.0, 0.0, 0.0]]
    w = step_weights(rewards, mask, "reward_to_go_dropped_discount", 0.5)  # G_t
    assert w.tolist() == [[3.0, 4.0, 4.0], [2.0, 0.0, 0.0]]
    w = step_weights(rewards, mask, "baseline_batch_mean", 0.5)  # mean 2.5
    assert w.tolist() == [[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]]
    w = step_weights(rewards, mask, "baseline_leave_one_out", 0.5)  # 3 - 2, 2 - 3
    assert w.tolist() == [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]
    w = step_weights(rewards, mask, "normalized", 0.5)  # std 0.5
    torch.testing.assert_close(w[0, 0], torch.tensor(0.5 / (0.5 + 1e-8), dtype=torch.float64))


def test_single_trajectory_batches():
    """N = 1: batch mean gives exactly 0; leave-one-out's baseline is 0 (= reinforce)."""
    rewards, mask = REWARDS[:1], MASK[:1]
    assert torch.all(step_weights(rewards, mask, "baseline_batch_mean", 0.9) == 0)
    assert torch.all(step_weights(rewards, mask, "normalized", 0.9) == 0)
    torch.testing.assert_close(
        step_weights(rewards, mask, "baseline_leave_one_out", 0.9),
        step_weights(rewards, mask, "reinforce", 0.9),
        rtol=0,
        atol=0,
    )


def test_dropped_discount_equals_reward_to_go_when_undiscounted():
    a = step_weights(REWARDS, MASK, "reward_to_go", 1.0)
    b = step_weights(REWARDS, MASK, "reward_to_go_dropped_discount", 1.0)
    assert torch.equal(a, b)
    mdp = garnet_discounted().replace(gamma=1.0)
    logits = random_logits(mdp)
    a = sample_gradients(mdp, logits, 300, "reward_to_go", seed=1)
    b = sample_gradients(mdp, logits, 300, "reward_to_go_dropped_discount", seed=1)
    assert torch.equal(a, b)


def test_step_weights_dtype_batch_axes_and_mask_types():
    rewards32 = REWARDS.to(torch.float32)
    w = step_weights(rewards32, MASK.to(torch.float32), "reward_to_go", 0.9)  # 0/1 mask
    assert w.dtype == torch.float32
    torch.testing.assert_close(
        w, step_weights(REWARDS, MASK, "reward_to_go", 0.9).float(), rtol=1e-6, atol=1e-6
    )
    # leading axes are independent batches: coupling only along N (dim -2)
    stacked = torch.stack([REWARDS, REWARDS.flip(0)])
    masks = torch.stack([MASK, MASK.flip(0)])
    for estimator in ("baseline_batch_mean", "normalized", "baseline_leave_one_out"):
        both = step_weights(stacked, masks, estimator, 0.8)
        for k in range(2):
            torch.testing.assert_close(
                both[k], step_weights(stacked[k], masks[k], estimator, 0.8), rtol=0, atol=1e-15
            )


def test_normalized_is_invariant_to_reward_scale():
    """Why `normalized` cannot be unbiased: scaling rewards by c scales grad J by c, but
    leaves the normalized weights (up to eps) unchanged."""
    a = step_weights(REWARDS, MASK, "normalized", 0.9)
    b = step_weights(100.0 * REWARDS, MASK, "normalized", 0.9)
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_step_weights_bad_input():
    with pytest.raises(
        ValueError,
        match=r"unknown estimator 'reinforcee' \(did you mean 'reinforce'\?\); choose one of: rein",
    ):
        step_weights(REWARDS, MASK, "reinforcee")
    with pytest.raises(ValueError, match="gamma must be finite and in \\[0, 1\\], got 1.5"):
        step_weights(REWARDS, MASK, "reinforce", gamma=1.5)
    with pytest.raises(ValueError, match="needs values"):
        step_weights(REWARDS, MASK, "baseline_value")
    with pytest.raises(ValueError, match="mask has shape"):
        step_weights(REWARDS, MASK[:, :2], "reinforce")
    with pytest.raises(ValueError, match="values has shape"):
        step_weights(REWARDS, MASK, "baseline_value", values=VALUES[:2])
    with pytest.raises(ValueError, match="floating dtype"):
        step_weights(REWARDS.long(), MASK, "reinforce")
    with pytest.raises(ValueError, match="unknown estimator 'ppo'; choose one of: reinforce, "):
        estimators.check_estimator("ppo")
    assert estimators.check_estimator("normalized") == "normalized"


# ---------------------------------------------------------------------------------------
# The score function: scatter-add rows = autograd of the surrogate
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_sample_gradient_rows_equal_autograd_of_the_surrogate(estimator):
    """Row i = grad_theta sum_t Psi_{i,t} log pi_theta(a_t|s_t), Psi held fixed."""
    mdp = gridworld_terminal()
    logits = random_logits(mdp, seed=3)
    n = 40
    rows = sample_gradients(mdp, logits, n, estimator, seed=11)
    assert rows.shape == (n, mdp.n_states, mdp.n_actions) and rows.dtype == torch.float64

    batch = sample_trajectories(mdp, softmax_policy(logits), n, torch.Generator().manual_seed(11))
    values = exact.solve(mdp, logits).values[torch.arange(mdp.horizon), batch.states]
    psi = step_weights(batch.rewards, batch.mask, estimator, mdp.gamma, values)
    theta = logits.clone().requires_grad_(True)
    log_pi = torch.log_softmax(theta, dim=-1)[batch.states, batch.actions]  # [N, T]
    for i in range(n):
        (grad,) = torch.autograd.grad((psi[i] * log_pi[i]).sum(), theta, retain_graph=True)
        torch.testing.assert_close(rows[i], grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Monte-Carlo (un)biasedness against pglab.tabular.exact
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_mdp", [garnet_discounted, gridworld_terminal, chain_undiscounted])
def test_unbiased_estimators_match_the_exact_gradient(make_mdp):
    """E[ghat_N] = grad J for reinforce, reward_to_go, leave-one-out and value baselines.

    K = 3000 batch estimates of N = 8 trajectories each (shared samples); the bootstrap-t
    p-value of H0 (pglab.stats.bias_test) must exceed alpha = 1e-3.
    """
    mdp = make_mdp()
    logits = random_logits(mdp, seed=1)
    truth = exact.policy_gradient(mdp, logits)
    names = ["reinforce", "reward_to_go", "baseline_leave_one_out", "baseline_value"]
    out = batch_estimates(mdp, logits, 8, 3000, names, seed=7)
    for name in names:
        result = metrics(out[name], truth)
        assert result["p_value"] > ALPHA, f"{mdp.name} {name}: T = {result['test_statistic']:.2f}"


def test_batch_mean_baseline_is_shrunk_by_one_minus_one_over_n():
    """E[ghat_N] = (1 - 1/N) grad J (module docstring). Two-state MDP, uniform policy, N = 2.

    Power: the bias grad J / 2 has expected |z| = |grad J_j| / 2 / (sd_j / sqrt(K)), about
    25 and 73 on the two state's coordinates with K = 10 000 (sd from a pilot run); the
    test against grad J must reject at alpha = 1e-3 (its p-value is then at its floor,
    1 / 2001: no bootstrap resample comes near).
    """
    mdp = zoo.two_state()
    logits = torch.zeros(2, 2, dtype=torch.float64)
    truth = exact.policy_gradient(mdp, logits)
    n = 2
    out = batch_estimates(mdp, logits, n, 10_000, ["baseline_batch_mean"], seed=3)
    estimates = out["baseline_batch_mean"]
    assert metrics(estimates, (1 - 1 / n) * truth)["p_value"] > ALPHA
    assert metrics(estimates, truth)["p_value"] < ALPHA
    # N = 1: identically zero
    single = batch_estimates(mdp, logits, 1, 5, ["baseline_batch_mean"], seed=3)
    assert torch.all(single["baseline_batch_mean"] == 0)


def test_normalized_is_biased():
    """Rewards scaled so the return's std (about 11) is far from 1: E[normalized] is about
    grad J / std(R) (a pilot run gives relative bias 0.92). N = 16, K = 2000; the expected
    |z| of the bias is in the thousands: the test must reject at alpha = 1e-3."""
    mdp = zoo.two_state(stay_reward=10.0, far_reward=20.0)
    logits = torch.zeros(2, 2, dtype=torch.float64)
    truth = exact.policy_gradient(mdp, logits)
    out = batch_estimates(mdp, logits, 16, 2000, ["normalized", "reinforce"], seed=5)
    assert metrics(out["normalized"], truth)["p_value"] < ALPHA
    assert metrics(out["reinforce"], truth)["p_value"] > ALPHA  # same samples, unbiased


def test_dropped_discount_is_biased_when_discounted():
    """gamma = 0.5 on the chain: E[sum_t G_t grad log pi_t] = sum_t d_t(s) pi(b|s) A_t(s, b),
    the policy-gradient sum *without* gamma^t, which differs from grad J. We check both:
    the estimator is unbiased for that undiscounted-weight sum (p > alpha), and its
    distance to grad J is rejected at alpha = 1e-3 (a pilot run gives |z| ~ 70 with
    N = 20 000)."""
    mdp = zoo.chain(n_states=4, slip=0.2, horizon=10, gamma=0.5)
    logits = random_logits(mdp)
    solution = exact.solve(mdp, logits)
    undiscounted_weights = solution.policy * torch.einsum(
        "ts,tsa->sa", solution.occupancy, solution.advantages
    )
    rows = sample_gradients(mdp, logits, 20_000, "reward_to_go_dropped_discount", seed=2)
    assert metrics(rows, undiscounted_weights)["p_value"] > ALPHA
    assert metrics(rows, solution.gradient)["p_value"] < ALPHA


def test_variance_of_reinforce_scales_as_one_over_n():
    """trCov(ghat_N) = trCov(g_1) / N for a mean of N i.i.d. rows: log-log slope -1.

    The slope's sampling error is estimated from the data (delta method): with q_k =
    ||ghat_k - mean||^2, trCov_hat = mean(q) K/(K-1) has variance ~ var(q)/K, so
    log trCov_hat has standard error se_N = sd(q) / (sqrt(K) mean(q)); the
    least-squares slope then has se = sqrt(sum_N c_N^2 se_N^2), c_N = (x_N - xbar) /
    sum (x - xbar)^2, x = log N. With K = 1500 this gives se ~ 0.007 here; we assert
    se < 0.025, so the +-0.1 tolerance is at least 4 standard errors, then the slope.
    """
    mdp = zoo.garnet(n_states=5, n_actions=2, branching=2, seed=1, horizon=10, gamma=1.0)
    logits = random_logits(mdp, seed=2)
    sizes = [4, 16, 64, 256]
    k = 1500
    traces, log_se = [], []
    for index, n in enumerate(sizes):
        estimates = batch_estimates(mdp, logits, n, k, ["reinforce"], seed=100 + index)
        flat = estimates["reinforce"].reshape(k, -1).numpy()
        q = ((flat - flat.mean(axis=0)) ** 2).sum(axis=1)
        traces.append(
            stats.gradient_estimate_metrics(flat, np.zeros(flat.shape[1]))["total_variance"]
        )
        log_se.append(q.std(ddof=1) / (math.sqrt(k) * q.mean()))
    x = np.log(sizes)
    c = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    slope_se = float(np.sqrt((c**2 * np.square(log_se)).sum()))
    slope = stats.loglog_slope(sizes, traces)
    assert slope_se < 0.025, slope_se
    assert abs(slope + 1.0) < 0.1, f"slope {slope:.3f} (se {slope_se:.3f})"


# ---------------------------------------------------------------------------------------
# batch_estimates: consistency with sample_gradients and with step_weights on [K, N, T]
# ---------------------------------------------------------------------------------------
def test_batch_estimates_agree_with_sample_gradients_and_step_weights():
    mdp = gridworld_terminal()
    logits = random_logits(mdp, seed=5)
    n, k = 30, 3
    names = list(ESTIMATORS)
    out = batch_estimates(mdp, logits, n, k, names, seed=4)
    small_chunks = batch_estimates(mdp, logits, n, k, names, seed=4, max_trajectories_per_chunk=7)
    assert list(out) == names
    for name in names:
        assert out[name].shape == (k, mdp.n_states, mdp.n_actions)
        assert out[name].dtype == torch.float64
        # repetition 0 = the mean of sample_gradients' rows (same stream, same seed)
        rows = sample_gradients(mdp, logits, n, name, seed=4)
        torch.testing.assert_close(out[name][0], rows.mean(0), rtol=1e-10, atol=1e-12)
        # chunking changes nothing but round-off
        torch.testing.assert_close(small_chunks[name], out[name], rtol=1e-10, atol=1e-12)

    # every repetition from step_weights on [K, N, T] and an explicit one-hot score
    policy = softmax_policy(logits)
    batch = sample_trajectories(mdp, policy, n * k, torch.Generator().manual_seed(4))
    values = exact.solve(mdp, logits).values[torch.arange(mdp.horizon), batch.states]
    pairs = batch.states * mdp.n_actions + batch.actions
    one_hot = torch.nn.functional.one_hot(pairs, mdp.n_states * mdp.n_actions).to(torch.float64)
    one_hot = one_hot.view(n * k, mdp.horizon, mdp.n_states, mdp.n_actions)
    state_hot = one_hot.sum(-1, keepdim=True)
    score = one_hot - state_hot * policy  # [NK, T, S, A] grad log pi(a_t|s_t)
    for name in names:
        psi = step_weights(
            batch.rewards.view(k, n, -1),
            batch.mask.view(k, n, -1),
            name,
            mdp.gamma,
            values.view(k, n, -1),
        )
        expected = torch.einsum("knt,kntsa->ksa", psi, score.view(k, n, *score.shape[1:])) / n
        torch.testing.assert_close(out[name], expected, rtol=1e-10, atol=1e-12)


def test_common_random_numbers_across_estimators():
    """All estimators see the same trajectories: exact algebraic relations hold per row."""
    mdp = chain_undiscounted()
    logits = random_logits(mdp)
    n = 10
    out = batch_estimates(mdp, logits, n, 50, list(ESTIMATORS), seed=8)
    assert torch.equal(out["reward_to_go"], out["reward_to_go_dropped_discount"])  # gamma = 1
    torch.testing.assert_close(
        out["baseline_leave_one_out"],
        n / (n - 1) * out["baseline_batch_mean"],
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda mdp, logits: sample_gradients(mdp, logits, 0),
            "n_trajectories must be a positive integer, got 0",
        ),
        (lambda mdp, logits: sample_gradients(mdp, logits, 5, "ppo"), "unknown estimator 'ppo'"),
        (lambda mdp, logits: sample_gradients(mdp, logits, 5, seed=1.5), "seed must be an int"),
        (lambda mdp, logits: sample_gradients(mdp, logits[:2], 5), "logits has shape"),
        (
            lambda mdp, logits: batch_estimates(mdp, logits, 5, 0, ["reinforce"]),
            "n_repetitions must be a positive",
        ),
        (lambda mdp, logits: batch_estimates(mdp, logits, 5, 2, "reinforce"), "sequence of names"),
        (lambda mdp, logits: batch_estimates(mdp, logits, 5, 2, []), "estimators is empty"),
        (lambda mdp, logits: batch_estimates(mdp, logits, 5, 2, ["x"]), "unknown estimator 'x'"),
        (
            lambda mdp, logits: batch_estimates(
                mdp, logits, 5, 2, ["reinforce"], max_trajectories_per_chunk=0
            ),
            "max_trajectories_per_chunk must be a positive integer",
        ),
    ],
)
def test_sampled_gradient_bad_input(call, message):
    mdp = chain_undiscounted()
    with pytest.raises(ValueError, match=message):
        call(mdp, random_logits(mdp))


def test_batch_coupled_estimators_are_exactly_zero_at_one_trajectory():
    """With N = 1, R_1 − mean(R) = 0: batch-mean and normalized estimates are exactly 0."""
    mdp = zoo.make("chain")
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", seed=0)
    batches = batch_estimates(mdp, logits, 1, 50, ["baseline_batch_mean", "normalized"], seed=0)
    for name, batch in batches.items():
        assert torch.count_nonzero(batch) == 0, name
        assert torch.count_nonzero(sample_gradients(mdp, logits, 1, name)) == 0
