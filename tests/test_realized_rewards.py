"""Realized rewards (issue 8): samples pay R(s_t, a_t, s_{t+1}), the exact oracle uses r(s, a).

The acceptance test plays gymnasium's own ``FrozenLake-v1`` (slippery) under a tabular
softmax policy and checks that the trace of the covariance of one trajectory's REINFORCE
gradient, ``tr Cov(g_1)``, is what pglab's sampler gives on the zoo's ``frozenlake``,
within sampling error, and that the old expected-reward sampler is many standard errors
off. Seeds are fixed, so every test is deterministic.

Statistics. For i.i.d. rows ``g_i`` (flattened to ``S A`` entries) the estimate is
``T_hat = (1/(N-1)) sum_i ||g_i - g_bar||^2``; by the delta method its standard error is
``sd_i(||g_i - g_bar||^2) / sqrt(N)`` (the error from centring at ``g_bar`` is ``O(1/N)``).
Two independent estimates are compared with ``z = (T_a - T_b) / sqrt(se_a^2 + se_b^2)``.
Means are compared with the usual ``z = (mean - mu) / (sd / sqrt(N))``. ``|z| < 4``
throughout: a two-sided normal false-alarm rate of 6e-5 per comparison.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab import estimators
from pglab.tabular import estimates, exact, zoo
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import initial_logits, softmax_policy
from pglab.tabular.sampling import sample_trajectories

Z_MAX = 4.0
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mdps"


def covariance_trace(gradients: torch.Tensor) -> tuple[float, float]:
    """``(tr Cov(g_1), its standard error)`` from ``[N, ...]`` i.i.d. per-trajectory gradients."""
    rows = gradients.reshape(gradients.shape[0], -1).to(torch.float64)
    n = rows.shape[0]
    squared = ((rows - rows.mean(0)) ** 2).sum(1)  # ||g_i - g_bar||^2, [N]
    return float(squared.sum() / (n - 1)), float(squared.std() / n**0.5)


def z_statistic(a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - b[0]) / float(np.hypot(a[1], b[1]))


# ---------------------------------------------------------------------------------------
# Which zoo MDPs have state-dependent rewards
# ---------------------------------------------------------------------------------------
WITH_TRANSITION_REWARDS = {
    "frozenlake": lambda: zoo.frozenlake(),  # 1 only when the slip lands on G
    "frozenlake_8x8": lambda: zoo.frozenlake(map_name="8x8"),
    "cliffwalking_slippery": lambda: zoo.cliffwalking(is_slippery=True),  # -100 if it slips off
    "gridworld": lambda: zoo.gridworld(),  # paid on entering the goal / the pit
    "chain": lambda: zoo.chain(),  # the executed (maybe slipped) action's reward
    "corridor_file": lambda: zoo.file(EXAMPLES / "corridor.yaml"),
}
WITHOUT_TRANSITION_REWARDS = {  # every outcome of each (s, a) pays the same
    "two_state": lambda: zoo.two_state(),
    "garnet": lambda: zoo.garnet(),
    "frozenlake_not_slippery": lambda: zoo.frozenlake(is_slippery=False),
    "cliffwalking": lambda: zoo.cliffwalking(),
    "taxi": lambda: zoo.taxi(),
    "taxi_rainy": lambda: zoo.taxi(is_rainy=True),
}


@pytest.mark.parametrize("name", sorted(WITH_TRANSITION_REWARDS))
def test_zoo_mdps_with_state_dependent_rewards_keep_them(name):
    mdp = WITH_TRANSITION_REWARDS[name]()
    realized = mdp.transition_rewards
    assert realized is not None
    reached = mdp.transitions > 0
    # state-dependent: some (s, a) pays different rewards for different landing states
    spread = torch.where(reached, realized, -torch.inf).amax(-1) - torch.where(
        reached, realized, torch.inf
    ).amin(-1)
    assert bool((spread > 0).any())
    # and r(s, a) is still their expectation
    torch.testing.assert_close(
        (mdp.transitions * realized).sum(-1), mdp.rewards, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("name", sorted(WITHOUT_TRANSITION_REWARDS))
def test_zoo_mdps_without_state_dependent_rewards_need_nothing_extra(name):
    assert WITHOUT_TRANSITION_REWARDS[name]().transition_rewards is None


def gym_outcome_rewards(env_id: str, **kwargs) -> dict[tuple[int, int, int], list[float]]:
    """``(s, a, s') -> rewards`` of the positive-probability outcomes of a toy-text env."""
    env = gym.make(env_id, **kwargs)
    model = env.unwrapped.P
    outcomes: dict[tuple[int, int, int], list[float]] = {}
    for s, by_action in model.items():
        for a, listed in by_action.items():
            for prob, next_state, reward, _ in listed:
                if prob > 0:
                    outcomes.setdefault((s, a, int(next_state)), []).append(float(reward))
    env.close()
    return outcomes


def test_frozenlake_transition_rewards_are_the_env_rewards():
    mdp = zoo.frozenlake()
    outcomes = gym_outcome_rewards("FrozenLake-v1", is_slippery=True)
    for (s, a, next_state), rewards in outcomes.items():
        assert set(rewards) == {mdp.transition_rewards[s, a, next_state].item()}
    goal = 15
    assert mdp.transition_rewards[14, 2, goal].item() == 1.0  # right from 14 into G
    assert mdp.transition_rewards[14, 2, 10].item() == 0.0  # ... slipping up instead
    assert mdp.rewards[14, 2].item() == pytest.approx(1 / 3)


def test_cliffwalking_slippery_merges_outcomes_landing_in_the_same_state():
    """A cliff fall and a wall bump both land on the start 36: R(s, a, 36) is their mean."""
    mdp = zoo.cliffwalking(is_slippery=True)
    outcomes = gym_outcome_rewards("CliffWalking-v1", is_slippery=True)
    start, up = 36, 0
    assert sorted(outcomes[(start, up, start)]) == [-100.0, -1.0]
    assert mdp.transition_rewards[start, up, start].item() == pytest.approx(-50.5)
    for (s, a, next_state), rewards in outcomes.items():
        if len(set(rewards)) == 1 and mdp.transitions[s, a, next_state] > 0:
            assert mdp.transition_rewards[s, a, next_state].item() == rewards[0]


@pytest.mark.parametrize("name", ["frozenlake", "chain", "gridworld", "corridor_file"])
def test_sampled_rewards_are_realized_rewards(name):
    """Each sampled step pays R(s_t, a_t, s_{t+1}), one of the env's own reward values."""
    mdp = WITH_TRANSITION_REWARDS[name]()
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=0)
    batch = sample_trajectories(mdp, softmax_policy(logits), 4000, torch.Generator().manual_seed(1))
    s, a, mask = batch.states, batch.actions, batch.mask
    paid = batch.rewards[:, :-1][mask[:, :-1]]
    assert torch.equal(paid, mdp.transition_rewards[s[:, :-1], a[:, :-1], s[:, 1:]][mask[:, :-1]])
    # the values paid are realized ones (FrozenLake pays only 0 or 1, never 1/3) ...
    reachable = mdp.transition_rewards[mdp.transitions > 0].unique()
    assert bool(torch.isin(batch.rewards[mask].unique(), reachable).all())
    if name == "frozenlake":
        assert batch.rewards[mask].unique().tolist() == [0.0, 1.0]
    # ... and not the expected r(s_t, a_t) that the sampler paid before issue 8
    assert not torch.equal(batch.rewards[mask], mdp.rewards[s, a][mask])


def test_rewards_constant_in_the_next_state_give_the_same_samples():
    """Given R(s, a, s') = r(s, a), the sampler's output is bit for bit that of r alone."""
    plain = zoo.garnet(n_states=8, n_actions=3, branching=3, seed=2, horizon=12, gamma=0.9)
    constant = plain.replace(
        transition_rewards=plain.rewards[:, :, None].expand(-1, -1, plain.n_states)
    )
    assert constant.transition_rewards is not None
    policy = softmax_policy(initial_logits(8, 3, kind="random", seed=0))
    a = sample_trajectories(plain, policy, 3000, torch.Generator().manual_seed(4))
    b = sample_trajectories(constant, policy, 3000, torch.Generator().manual_seed(4))
    for x, y in zip(
        (a.states, a.actions, a.rewards, a.mask),
        (b.states, b.actions, b.rewards, b.mask),
        strict=True,
    ):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------------------
# The exact oracle is unchanged; sampled returns still have mean J
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(WITH_TRANSITION_REWARDS))
def test_exact_oracle_ignores_how_rewards_are_realized(name):
    """J, grad J, V, Q depend on r(s, a) only: dropping R changes none of them (bit for bit)."""
    mdp = WITH_TRANSITION_REWARDS[name]()
    expected_only = mdp.replace(transition_rewards=None)
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=3)
    a, b = exact.solve(mdp, logits), exact.solve(expected_only, logits)
    assert torch.equal(a.values, b.values) and torch.equal(a.q_values, b.q_values)
    assert exact.expected_return(mdp, logits) == exact.expected_return(expected_only, logits)
    assert torch.equal(
        exact.policy_gradient(mdp, logits), exact.policy_gradient(expected_only, logits)
    )


#: exact J at initial_logits(kind="random", scale=1, seed=3), computed with pglab before
#: issue 8 (commit c48e41b), when R(s, a, s') was reduced to r(s, a) on load.
J_BEFORE_ISSUE_8 = {
    "frozenlake": 0.019942477265824207,
    "frozenlake_8x8": 0.0028819863130770955,
    "cliffwalking_slippery": -1099.3225491869262,
    "gridworld": -0.23205790323478429,
    "chain": 30.642915983916524,
    "corridor_file": 0.032495879082030305,
}


@pytest.mark.parametrize("name", sorted(WITH_TRANSITION_REWARDS))
def test_exact_j_is_unchanged_from_before_issue_8(name):
    mdp = WITH_TRANSITION_REWARDS[name]()
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=3)
    assert exact.expected_return(mdp, logits) == pytest.approx(
        J_BEFORE_ISSUE_8[name], rel=1e-13, abs=1e-15
    )


@pytest.mark.parametrize("name", sorted(WITH_TRANSITION_REWARDS))
def test_sampled_mean_return_matches_exact_j(name):
    """E[sum_t gamma^t R(s_t, a_t, s_{t+1})] = J: z-test of the mean of 20 000 returns."""
    mdp = WITH_TRANSITION_REWARDS[name]()
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=5)
    n = 20_000
    batch = sample_trajectories(mdp, softmax_policy(logits), n, torch.Generator().manual_seed(6))
    returns = estimators.discounted_returns(batch.rewards, batch.mask, mdp.gamma)
    truth = exact.expected_return(mdp, logits)
    z = (returns.mean().item() - truth) / (returns.std().item() / n**0.5)
    assert abs(z) < Z_MAX, f"{name}: mean {returns.mean().item():.6g} vs J {truth:.6g}, z={z:.2f}"


# ---------------------------------------------------------------------------------------
# Acceptance: tr Cov(g_1) of REINFORCE equals gymnasium's FrozenLake-v1
# ---------------------------------------------------------------------------------------
def frozenlake_policy_logits(mdp: TabularMDP) -> torch.Tensor:
    """Random logits (seed 1, scale 1) plus 3 on the optimal first action of every state.

    The push makes reaching G, the only way to a nonzero REINFORCE gradient, common
    (J = 0.24, against 0.008 for the random logits alone), so 30 000 episodes estimate the
    trace to ~1.5%.
    """
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=1)
    _, optimal_actions = exact.optimal_solution(mdp)
    logits[torch.arange(mdp.n_states), optimal_actions[0]] += 3.0
    return logits


def gymnasium_reinforce_gradients(
    policy: np.ndarray, n_episodes: int, seed: int, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Play ``FrozenLake-v1`` (slippery, gymnasium's 100-step TimeLimit) under ``policy``.

    Independent of pglab's sampler: actions are drawn from ``policy[s]`` by inverting its
    CDF with a numpy ``Generator(seed)`` uniform; the env draws the slips with its own RNG
    (``reset(seed=seed)`` once). Each episode's REINFORCE gradient is
    ``g = R sum_t grad log pi(a_t|s_t)`` with the tabular softmax score
    ``d log pi(a|s) / d theta[s, b] = 1[b = a] - pi(b|s)`` (row ``s`` only), i.e.
    ``g = R (C - pi * C.sum(1))`` for the visit counts ``C[s, a]``, and
    ``R = sum_t gamma^t r_t`` sums the rewards the env paid.

    Returns:
        ``(gradients [n, S, A], returns [n])`` float64.
    """
    env = gym.make("FrozenLake-v1", is_slippery=True)
    assert env.spec.max_episode_steps == 100
    n_states, n_actions = policy.shape
    cdf = np.cumsum(policy, axis=1)
    cdf[:, -1] = 1.0
    rng = np.random.default_rng(seed)
    gradients = np.zeros((n_episodes, n_states, n_actions))
    returns = np.zeros(n_episodes)
    state, _ = env.reset(seed=seed)
    for episode in range(n_episodes):
        if episode:
            state, _ = env.reset()
        counts = np.zeros((n_states, n_actions))
        episode_return, discount = 0.0, 1.0
        done = False
        while not done:
            action = int(np.searchsorted(cdf[state], rng.random(), side="right"))
            counts[state, action] += 1.0
            state, reward, terminated, truncated, _ = env.step(action)
            episode_return += discount * float(reward)
            discount *= gamma
            done = terminated or truncated
        returns[episode] = episode_return
        if episode_return != 0.0:
            gradients[episode] = episode_return * (
                counts - policy * counts.sum(axis=1, keepdims=True)
            )
    env.close()
    return gradients, returns


def test_reinforce_covariance_trace_matches_gymnasium_frozenlake():
    mdp = zoo.frozenlake()  # FrozenLake-v1, slippery, T = 100 (its TimeLimit), gamma = 1
    assert (mdp.horizon, mdp.gamma) == (100, 1.0)
    logits = frozenlake_policy_logits(mdp)
    policy = softmax_policy(logits)

    gym_gradients, gym_returns = gymnasium_reinforce_gradients(
        policy.numpy(), n_episodes=30_000, seed=2024, gamma=mdp.gamma
    )
    # the gymnasium side plays the same MDP: its mean return is J
    truth = exact.expected_return(mdp, logits)
    z_return = (gym_returns.mean() - truth) / (gym_returns.std() / len(gym_returns) ** 0.5)
    assert abs(z_return) < Z_MAX, f"gymnasium mean return vs J: z={z_return:.2f}"
    gym_trace = covariance_trace(torch.from_numpy(gym_gradients))

    ours = covariance_trace(estimates.sample_gradients(mdp, logits, 100_000, "reinforce", 7))
    z = z_statistic(ours, gym_trace)
    assert abs(z) < Z_MAX, (
        f"tr Cov(g_1): pglab {ours[0]:.4f} +- {ours[1]:.4f}, "
        f"gymnasium {gym_trace[0]:.4f} +- {gym_trace[1]:.4f}, z={z:.2f}"
    )
    # power: paying the expected r(s_t, a_t) (pglab before issue 8) fails by far
    expected_only = mdp.replace(transition_rewards=None)
    old = covariance_trace(
        estimates.sample_gradients(expected_only, logits, 100_000, "reinforce", 7)
    )
    z_old = z_statistic(old, gym_trace)  # measured: 2.234 +- 0.037 vs 1.368 +- 0.020, z = 20.6
    assert abs(z_old) > 10.0, f"expected rewards: {old[0]:.4f}, z={z_old:.2f}"
    assert old[0] > 1.5 * gym_trace[0]  # the old sampler overstated it by ~60% here
