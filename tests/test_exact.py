"""The exact oracle: gradient (theorem vs finite differences vs autograd), Bellman
consistency, occupancies, and known optima of the gymnasium toy-text MDPs."""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab.tabular import exact, zoo
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import entropy, initial_logits, softmax_policy

REPO = Path(__file__).resolve().parents[1]
EPS = float(np.finfo(np.float64).eps)


def random_logits(mdp: TabularMDP, seed: int, scale: float = 1.0) -> torch.Tensor:
    return initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=scale, seed=seed)


def central_differences(mdp: TabularMDP, logits: torch.Tensor, step: float) -> torch.Tensor:
    """[S, A] (J(theta + h e) - J(theta - h e)) / 2h, one coordinate at a time."""
    gradient = torch.zeros_like(logits)
    for s in range(mdp.n_states):
        for a in range(mdp.n_actions):
            bump = torch.zeros_like(logits)
            bump[s, a] = step
            plus = exact.expected_return(mdp, logits + bump)
            minus = exact.expected_return(mdp, logits - bump)
            gradient[s, a] = (plus - minus) / (2 * step)
    return gradient


# --------------------------------------------------------------------------------------
# Gradient: policy-gradient theorem vs central finite differences
# --------------------------------------------------------------------------------------
# Error budget of a central difference with step h = 1e-5:
#   truncation  h^2 / 6 * |d^3 J|  ~ 1.7e-11 * |d^3 J|   (|d^3 J| <~ 100 here)  <~ 2e-9
#   rounding    ~ eps * |J| / h     ~ 2.2e-16 * 30 / 1e-5                      <~ 1e-9
# (observed: <= 1.3e-9). FD_TOLERANCE = 1e-7 leaves >= 10x margin over both and is still
# 1e-6 of the gradient entries' scale (0.1 - 1), so any error in the formula that moves an
# entry by more than 1e-7 fails the test (see the test below that drops gamma^t).
FD_STEP = 1e-5
FD_TOLERANCE = 1e-7

GARNET_CASES = [
    # (n_states, n_actions, branching, horizon, gamma, seed)
    (6, 3, 3, 8, 0.9, 0),
    (6, 3, 3, 8, 1.0, 1),
    (5, 2, 1, 6, 0.7, 2),  # deterministic
    (4, 4, 4, 10, 1.0, 3),  # dense
    (20, 4, 3, 50, 1.0, 4),  # the benchmark's size
    (20, 4, 3, 50, 0.95, 5),
]


@pytest.mark.parametrize(
    ("n_states", "n_actions", "branching", "horizon", "gamma", "seed"), GARNET_CASES
)
def test_theorem_gradient_matches_finite_differences_on_garnets(
    n_states, n_actions, branching, horizon, gamma, seed
):
    mdp = zoo.garnet(n_states, n_actions, branching, seed=seed, horizon=horizon, gamma=gamma)
    logits = random_logits(mdp, seed=100 + seed)
    theorem = exact.policy_gradient(mdp, logits, method="theorem")
    finite_difference = central_differences(mdp, logits, FD_STEP)
    assert (theorem - finite_difference).abs().max().item() < FD_TOLERANCE


def test_finite_difference_check_detects_a_missing_discount():
    """Power of the check above: the gradient without the gamma^t factor is far outside it."""
    mdp = zoo.garnet(6, 3, 3, seed=0, horizon=8, gamma=0.9)
    logits = random_logits(mdp, seed=100)
    solution = exact.solve(mdp, logits)
    undiscounted = solution.policy * torch.einsum(
        "ts,tsa->sa", solution.occupancy, solution.advantages
    )
    finite_difference = central_differences(mdp, logits, FD_STEP)
    assert (undiscounted - finite_difference).abs().max().item() > 1e3 * FD_TOLERANCE


def test_theorem_gradient_matches_finite_differences_with_terminal_states():
    mdp = zoo.gridworld(size=3, slip=0.2, horizon=6, gamma=0.9)
    logits = random_logits(mdp, seed=7)
    theorem = exact.policy_gradient(mdp, logits)
    assert (theorem - central_differences(mdp, logits, FD_STEP)).abs().max() < FD_TOLERANCE


# --------------------------------------------------------------------------------------
# Gradient: theorem vs autograd through the Bellman recursion
# --------------------------------------------------------------------------------------
# Both are exact; they differ only by float64 rounding, ~ (number of operations) * eps
# relative to the gradient's scale. 1e-10 * max(1, max|grad|) is ~10^5 eps.
AUTOGRAD_RELATIVE = 1e-10

AUTOGRAD_MDPS = {
    "garnet": lambda: zoo.garnet(20, 4, 3, seed=11, horizon=50, gamma=0.99),
    "chain": lambda: zoo.chain(),
    "gridworld": lambda: zoo.gridworld(size=5, slip=0.1),
    "two_state": lambda: zoo.two_state(horizon=7, gamma=0.8),
    "frozenlake_slippery": lambda: zoo.frozenlake(),
    "frozenlake_8x8": lambda: zoo.frozenlake(map_name="8x8", is_slippery=False),
    "cliffwalking": lambda: zoo.cliffwalking(horizon=30, gamma=0.95),
    "corridor_file": lambda: zoo.file(REPO / "examples" / "mdps" / "corridor.yaml"),
}


@pytest.mark.parametrize("name", list(AUTOGRAD_MDPS))
def test_theorem_matches_autograd(name):
    mdp = AUTOGRAD_MDPS[name]()
    logits = random_logits(mdp, seed=3, scale=2.0)
    theorem = exact.policy_gradient(mdp, logits, method="theorem")
    autograd = exact.policy_gradient(mdp, logits, method="autograd")
    scale = max(1.0, theorem.abs().max().item())
    assert (theorem - autograd).abs().max().item() <= AUTOGRAD_RELATIVE * scale
    # The logits were not modified or left requiring grad.
    assert not logits.requires_grad


def test_gradient_rows_sum_to_zero():
    """Adding a constant to theta[s] leaves softmax unchanged, so sum_b dJ/dtheta[s, b] = 0."""
    mdp = zoo.garnet(10, 5, 3, seed=2, horizon=20, gamma=0.9)
    gradient = exact.policy_gradient(mdp, random_logits(mdp, seed=4))
    scale = gradient.abs().max().item()
    assert gradient.sum(dim=-1).abs().max().item() <= 1e-13 * max(1.0, scale)


# --------------------------------------------------------------------------------------
# Bellman consistency and occupancies
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_mdp",
    [
        lambda: zoo.garnet(8, 3, 2, seed=5, horizon=12, gamma=0.9),
        lambda: zoo.gridworld(size=4, slip=0.2),
        lambda: zoo.frozenlake(),
        lambda: zoo.cliffwalking(horizon=40),
    ],
    ids=["garnet", "gridworld", "frozenlake", "cliffwalking"],
)
def test_values_q_values_and_occupancies_are_consistent(make_mdp):
    mdp = make_mdp()
    solution = exact.solve(mdp, random_logits(mdp, seed=9))
    pi, v, q, d = solution.policy, solution.values, solution.q_values, solution.occupancy
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    assert v.shape == (horizon + 1, n_states) and q.shape == (horizon, n_states, n_actions)
    assert d.shape == (horizon, n_states) and solution.gradient.shape == (n_states, n_actions)
    scale = max(1.0, v.abs().max().item())
    tol = 1e-12 * scale  # identities between float64 quantities: rounding only
    # V_T = 0 and V_t(s) = sum_a pi(a|s) Q_t(s, a)
    assert torch.equal(v[-1], torch.zeros(n_states, dtype=torch.float64))
    assert (v[:-1] - (pi * q).sum(dim=-1)).abs().max() <= tol
    # Q_t = r + gamma P V_{t+1}, with P applied densely (an independent evaluation).
    bellman = mdp.rewards + mdp.gamma * torch.einsum("sax,tx->tsa", mdp.transitions, v[1:])
    assert (q - bellman).abs().max() <= tol
    # d_0 = rho; d_{t+1} = d_t pi P; each d_t is a distribution (terminal mass included).
    assert torch.equal(d[0], mdp.initial)
    pushed = torch.einsum("ts,sa,sax->tx", d[:-1], pi, mdp.transitions)
    assert (d[1:] - pushed).abs().max() <= 1e-13
    assert (d.sum(dim=-1) - 1).abs().max() <= 1e-12
    assert (d >= 0).all()
    # Terminal states: Q = V = 0, so they add nothing to J or the gradient.
    assert torch.equal(q[:, mdp.terminal], torch.zeros_like(q[:, mdp.terminal]))
    assert torch.equal(solution.gradient[mdp.terminal], torch.zeros_like(pi[mdp.terminal]))
    # Two expressions of J: rho . V_0, and sum_t gamma^t sum_{s,a} d_t(s) pi(a|s) r(s, a).
    discounts = mdp.gamma ** torch.arange(horizon, dtype=torch.float64)
    by_occupancy = torch.einsum("t,ts,sa,sa->", discounts, d, pi, mdp.rewards).item()
    assert solution.expected_return == pytest.approx(by_occupancy, rel=1e-12, abs=1e-12)
    assert exact.expected_return(mdp, random_logits(mdp, seed=9)) == solution.expected_return


def test_return_never_exceeds_the_optimum():
    """Optimality of backward induction: J(pi) <= J* for every policy."""
    for seed in range(5):
        mdp = zoo.garnet(10, 3, 2, seed=seed, horizon=15, gamma=0.95)
        j_star = exact.optimal_return(mdp)
        for logit_seed in range(5):
            logits = random_logits(mdp, seed=logit_seed, scale=3.0)
            assert exact.expected_return(mdp, logits) <= j_star + 1e-12


def test_greedy_stationary_policy_attains_the_optimum_on_a_deterministic_lake():
    # gamma < 1 makes the shortest path strictly best, so the time-0 greedy actions define a
    # stationary optimal policy: J* = gamma^5 (goal entered on the 6th decision).
    mdp = zoo.frozenlake(is_slippery=False, gamma=0.9)
    values, actions = exact.optimal_solution(mdp)
    assert values.shape == (101, 16) and actions.shape == (100, 16)
    assert exact.optimal_return(mdp) == pytest.approx(0.9**5, rel=1e-14)
    logits = 40.0 * torch.nn.functional.one_hot(actions[0], 4).to(torch.float64)
    # pi(greedy) = 1 / (1 + 3 e^-40) per step: the shortfall is ~ 6 * 3e^-40 ~ 8e-17.
    assert exact.expected_return(mdp, logits) == pytest.approx(0.9**5, rel=1e-13)


# --------------------------------------------------------------------------------------
# Known optima of the gymnasium toy-text MDPs
# --------------------------------------------------------------------------------------
def test_frozenlake_optima():
    # Deterministic lakes: the goal is reachable within the time limit, J* = 1.
    assert exact.optimal_return(zoo.frozenlake(is_slippery=False)) == 1.0
    assert exact.optimal_return(zoo.frozenlake(map_name="8x8", is_slippery=False)) == 1.0
    # Slippery: gymnasium's registry (gymnasium/envs/__init__.py) quotes "optimum = 0.74"
    # for FrozenLake-v1 (time limit 100) and "optimum = 0.91" for FrozenLake8x8-v1 (200).
    slippery_4x4 = exact.optimal_return(zoo.frozenlake())
    assert 0.7 < slippery_4x4 < 0.83
    assert slippery_4x4 == pytest.approx(0.74, abs=0.005)
    assert exact.optimal_return(zoo.frozenlake(map_name="8x8")) == pytest.approx(0.91, abs=0.005)


def test_cliffwalking_optimum_is_minus_13():
    # Sutton & Barto, Example 6.6: up, 11 x right, down = 13 steps of reward -1.
    mdp = zoo.cliffwalking(horizon=100, gamma=1.0)
    assert exact.optimal_return(mdp) == -13.0
    _, actions = exact.optimal_solution(mdp)
    up, right, down = 0, 1, 2
    state, path = 36, []
    for t in range(13):
        path.append(actions[t, state].item())
        state = int(mdp.transitions[state, path[-1]].argmax())
    assert path == [up] + [right] * 11 + [down] and state == 48  # the added terminal state
    # Too short a horizon: the goal is out of reach, and the best is 12 steps of -1.
    assert exact.optimal_return(mdp.replace(horizon=12)) == -12.0


def _taxi_optimum_by_search() -> float:
    """Independent optimum of Taxi-v4 from gymnasium's own model, by breadth-first search.

    Every step pays -1 except illegal pickup/drop-off (-10, and the state is unchanged, so
    never optimal) and the final drop-off (+20). A start state whose shortest path to the
    drop-off has n steps therefore has optimal return 20 - (n - 1) = 21 - n.
    """
    env = gym.make("Taxi-v4").unwrapped
    n_states = env.observation_space.n
    predecessors = [[] for _ in range(n_states)]
    steps = np.full(n_states, -1)
    for s in range(n_states):
        for a in range(env.action_space.n):
            for _, next_state, reward, terminated in env.P[s][a]:
                if terminated:
                    steps[s] = 1
                elif reward == -1:
                    predecessors[next_state].append(s)
    queue = deque(np.flatnonzero(steps == 1).tolist())
    while queue:
        s = queue.popleft()
        for previous in predecessors[s]:
            if steps[previous] < 0:
                steps[previous] = steps[s] + 1
                queue.append(previous)
    starts = np.flatnonzero(env.initial_state_distrib)
    return float(np.sum(env.initial_state_distrib[starts] * (21 - steps[starts])))


def test_taxi_optimum_matches_breadth_first_search():
    # gymnasium's registry says "optimum = 8.46", but for Taxi-v4's start distribution the
    # search over its own model gives 7.93 (an average over 300 start states).
    j_star = exact.optimal_return(zoo.taxi())
    assert j_star == pytest.approx(_taxi_optimum_by_search(), abs=1e-12)
    assert j_star == pytest.approx(7.93, abs=1e-12)


def test_taxi_solves_well_under_a_second():
    mdp = zoo.taxi()
    logits = random_logits(mdp, seed=0)
    durations = []
    for _ in range(3):  # best of 3: the machine is shared, and we time the code, not the load
        start = time.perf_counter()
        solution = exact.solve(mdp, logits)
        durations.append(time.perf_counter() - start)
    assert solution.q_values.shape == (200, 501, 6)
    assert min(durations) < 1.0


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------
def test_logits_of_the_wrong_shape_name_both_shapes():
    mdp = zoo.garnet(5, 3, 2, seed=0, horizon=4)
    with pytest.raises(
        ValueError, match=r"logits has shape \[5, 4\], expected \[S, A\] = \[5, 3\]"
    ):
        exact.solve(mdp, torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"logits has shape \[15\], expected"):
        exact.expected_return(mdp, torch.zeros(15))
    with pytest.raises(ValueError, match=r"logits\[2, 1\] is nan; logits must be finite"):
        logits = torch.zeros(5, 3)
        logits[2, 1] = float("nan")
        exact.policy_gradient(mdp, logits)
    with pytest.raises(
        ValueError, match=r"unknown gradient method 'finite'; choose one of: theorem, autograd"
    ):
        exact.policy_gradient(mdp, torch.zeros(5, 3), method="finite")
    with pytest.raises(ValueError, match="mdp must be a TabularMDP"):
        exact.solve("garnet", torch.zeros(5, 3))


def test_logits_may_be_lists_arrays_or_float32():
    mdp = zoo.two_state()
    expected = exact.solve(mdp, torch.zeros(2, 2, dtype=torch.float64)).gradient
    for logits in ([[0.0, 0.0], [0.0, 0.0]], np.zeros((2, 2)), torch.zeros(2, 2)):
        assert torch.equal(exact.solve(mdp, logits).gradient, expected)
        assert torch.equal(exact.policy_gradient(mdp, logits, method="autograd"), expected)


# --------------------------------------------------------------------------------------
# Tabular softmax policy helpers (pglab.tabular.policy), used by the oracle
# --------------------------------------------------------------------------------------
def test_softmax_policy_is_a_stable_float64_distribution():
    logits = torch.tensor([[0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]], dtype=torch.float32)
    policy = softmax_policy(logits)
    assert policy.dtype == torch.float64
    assert torch.allclose(policy[0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert policy[1].tolist() == [1.0, 0.0, 0.0]  # no overflow to nan
    with pytest.raises(ValueError, match=r"logits must have shape \[S, A\], got shape \[3\]"):
        softmax_policy(torch.zeros(3))


def test_entropy_bounds():
    uniform = softmax_policy(torch.zeros(2, 4))
    deterministic = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(entropy(uniform), torch.full((2,), math.log(4), dtype=torch.float64))
    assert entropy(deterministic).tolist() == [0.0]  # 0 log 0 = 0, not nan


def test_initial_logits_kinds():
    assert torch.equal(initial_logits(3, 2, kind="uniform"), torch.zeros(3, 2, dtype=torch.float64))
    first = initial_logits(100, 100, kind="random", scale=2.0, seed=5)
    torch.manual_seed(999)  # the global RNG does not matter: a private generator is seeded
    assert torch.equal(first, initial_logits(100, 100, kind="random", scale=2.0, seed=5))
    assert not torch.equal(first, initial_logits(100, 100, kind="random", scale=2.0, seed=6))
    # scale * N(0, 1) entries: the sample variance of n = 10^4 draws has standard error
    # sigma^2 sqrt(2 / n) = 4 * 0.0141; require |z| < 5.
    z = (first.var().item() - 4.0) / (4.0 * math.sqrt(2 / first.numel()))
    assert abs(z) < 5
    near = initial_logits(50, 4, kind="near_deterministic", scale=5.0, seed=1)
    assert torch.equal((near == 5.0).sum(dim=-1), torch.ones(50, dtype=torch.int64))
    top = softmax_policy(near).max(dim=-1).values
    expected = math.exp(5) / (math.exp(5) + 3)  # e^scale / (e^scale + A - 1) = 0.9802
    assert torch.allclose(top, torch.full((50,), expected, dtype=torch.float64), rtol=1e-14)
    with pytest.raises(
        ValueError, match=r"unknown logits kind 'gauss'; choose one of: uniform, random, near_"
    ):
        initial_logits(3, 2, kind="gauss")
    with pytest.raises(ValueError, match="n_actions must be a positive integer, got 0"):
        initial_logits(3, 0)
    with pytest.raises(ValueError, match="scale must be finite and >= 0, got -1.0"):
        initial_logits(3, 2, scale=-1.0)
