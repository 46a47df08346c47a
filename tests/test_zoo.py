"""The MDP zoo: registry, each constructor's specification, and the two-state closed form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pglab.tabular import exact, zoo
from pglab.tabular.mdp import TabularMDP

REPO = Path(__file__).resolve().parents[1]

NAMES = [
    "two_state",
    "chain",
    "gridworld",
    "garnet",
    "frozenlake",
    "cliffwalking",
    "taxi",
    "short_corridor",
    "file",
]


def test_registry_lists_every_name():
    assert zoo.available() == NAMES


@pytest.mark.parametrize("name", [n for n in NAMES if n != "file"])
def test_every_constructor_builds_a_valid_documented_mdp(name):
    mdp = zoo.make(name)
    assert isinstance(mdp, TabularMDP)
    sums = mdp.transitions.sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0, atol=1e-12)
    doc = getattr(zoo, name).__doc__
    for section in ("States", "Actions", "Why"):
        assert section in doc, f"zoo.{name} docstring lacks {section!r}"


def test_make_file_loads_a_path():
    mdp = zoo.make("file", path=REPO / "examples" / "mdps" / "two_state.yaml")
    assert mdp.name == "two_state"


def test_unknown_name_lists_known_names():
    with pytest.raises(
        ValueError,
        match=r"unknown MDP 'chian' \(did you mean 'chain'\?\); choose one of: two_state, chain, ",
    ):
        zoo.make("chian")


def test_unknown_argument_lists_parameters():
    with pytest.raises(ValueError, match=r"make\('chain'\): .*n_state.*chain takes \['n_states'"):
        zoo.make("chain", n_state=5)


# --------------------------------------------------------------------------------------
# two_state: closed form (derived in the zoo.two_state docstring)
# --------------------------------------------------------------------------------------
def two_state_closed_form(p, q, horizon, gamma, r1, r2):
    """J and dJ/dtheta for p = pi(stay|start), q = pi(stay|far); see zoo.two_state."""
    ts = range(horizon)
    j = sum(gamma**t * (p**t * p * r1 + (1 - p**t) * q * r2) for t in ts)
    dj_dp = sum(gamma**t * ((t + 1) * p**t * r1 - t * p ** max(t - 1, 0) * q * r2) for t in ts)
    dj_dq = sum(gamma**t * (1 - p**t) * r2 for t in ts)
    # softmax chain rule: dp/dtheta[start] = p(1-p) [1, -1], dq/dtheta[far] = q(1-q) [1, -1]
    g_start = p * (1 - p) * dj_dp
    g_far = q * (1 - q) * dj_dq
    return j, torch.tensor([[g_start, -g_start], [g_far, -g_far]], dtype=torch.float64)


def test_two_state_uniform_policy_by_hand():
    # Worked out by hand in the docstring: J = 0.5 + (0.25 + 0.5) + (0.125 + 0.75) = 2.125.
    solution = exact.solve(zoo.two_state(), torch.zeros(2, 2))
    assert solution.expected_return == 2.125
    expected = torch.tensor([[0.1875, -0.1875], [0.625, -0.625]], dtype=torch.float64)
    # All quantities are dyadic rationals, exact in float64: demand equality up to 1 ulp.
    assert torch.allclose(solution.gradient, expected, rtol=0, atol=1e-15)
    assert exact.optimal_return(zoo.two_state()) == 4.0


@pytest.mark.parametrize(
    ("horizon", "gamma", "stay_reward", "far_reward", "seed"),
    [(1, 1.0, 1.0, 2.0, 0), (2, 0.5, 1.0, 2.0, 1), (5, 0.9, -1.0, 3.0, 2), (12, 1.0, 0.3, 0.7, 3)],
)
def test_two_state_matches_closed_form(horizon, gamma, stay_reward, far_reward, seed):
    mdp = zoo.two_state(
        horizon=horizon, gamma=gamma, stay_reward=stay_reward, far_reward=far_reward
    )
    logits = torch.randn(2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    policy = torch.softmax(logits, dim=-1)
    p, q = policy[0, 0].item(), policy[1, 0].item()
    j, gradient = two_state_closed_form(p, q, horizon, gamma, stay_reward, far_reward)
    solution = exact.solve(mdp, logits)
    # Two float64 evaluations of the same finite sums: agreement to ~1e-14 relative;
    # 1e-12 leaves room for the different summation order.
    assert solution.expected_return == pytest.approx(j, rel=1e-12, abs=1e-12)
    assert torch.allclose(solution.gradient, gradient, rtol=1e-12, atol=1e-12)
    # Theorem: d_t(start) = p^t.
    occupancy_start = torch.tensor([p**t for t in range(horizon)], dtype=torch.float64)
    assert torch.allclose(solution.occupancy[:, 0], occupancy_start, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------
# chain
# --------------------------------------------------------------------------------------
def test_chain_follows_its_specification():
    mdp = zoo.chain(n_states=4, slip=0.2, small_reward=2.0, big_reward=10.0, horizon=6)
    left, right = 0, 1
    # right from 1: to 2 w.p. 0.8, slips to "left" (back to 0) w.p. 0.2
    assert mdp.transitions[1, right].tolist() == pytest.approx([0.2, 0.0, 0.8, 0.0])
    assert mdp.transitions[1, left].tolist() == pytest.approx([0.8, 0.0, 0.2, 0.0])
    # rewards follow the executed action: r(s, right) = 0.8 * 0 + 0.2 * 2 away from the end
    assert mdp.rewards[1, right].item() == pytest.approx(0.4)
    assert mdp.rewards[3, right].item() == pytest.approx(0.8 * 10 + 0.2 * 2)
    assert mdp.rewards[3, left].item() == pytest.approx(0.8 * 2 + 0.2 * 10)
    assert mdp.initial.tolist() == [1.0, 0.0, 0.0, 0.0]
    # Without slips, the optimal 6-step return is 3 unrewarded steps then 3 x 10 = 30
    # (versus 6 x 2 = 12 for always-left).
    assert exact.optimal_return(zoo.chain(n_states=4, slip=0.0, horizon=6)) == 30.0


def test_chain_pays_the_executed_actions_reward_on_each_step():
    """R(s, a, s') follows the executed action, which the landing state s' reveals."""
    mdp = zoo.chain(n_states=4, slip=0.2, small_reward=2.0, big_reward=10.0, horizon=6)
    left, right = 0, 1
    realized = mdp.transition_rewards
    for chosen in (left, right):
        assert realized[1, chosen, 0].item() == 2.0  # landed in 0: left was executed
        assert realized[1, chosen, 2].item() == 0.0  # landed in 2: right was executed
        assert realized[3, chosen, 3].item() == 10.0  # stayed at the end: right
        assert realized[3, chosen, 0].item() == 2.0
    # the expectation is the documented r(s, a), bit for bit
    assert torch.equal((mdp.transitions * realized).sum(-1), mdp.rewards)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_states": 1}, "n_states must be an integer >= 2, got 1"),
        ({"slip": 1.5}, r"slip must be finite and in \[0, 1\], got 1.5"),
        ({"horizon": 0}, "horizon must be a positive integer, got 0"),
    ],
)
def test_chain_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.chain(**kwargs)


# --------------------------------------------------------------------------------------
# gridworld
# --------------------------------------------------------------------------------------
def test_gridworld_follows_its_specification():
    mdp = zoo.gridworld(size=4, slip=0.2, pit=True)
    goal, pit = 15, 10
    assert mdp.terminal.nonzero().flatten().tolist() == [pit, goal]
    assert mdp.horizon == 16
    down, right = 1, 2  # actions: 0 = left, 1 = down, 2 = right, 3 = up
    # From the top-left corner, "right" goes right w.p. 0.8; the perpendicular slips are
    # down (w.p. 0.1) and up into the wall, staying put (w.p. 0.1).
    assert mdp.transitions[0, right, 1].item() == pytest.approx(0.8)
    assert mdp.transitions[0, right, 4].item() == pytest.approx(0.1)
    assert mdp.transitions[0, right, 0].item() == pytest.approx(0.1)
    # Down from (2, 3) = 11 enters the goal w.p. 0.8, slips left into the pit w.p. 0.1.
    assert mdp.rewards[11, down].item() == pytest.approx(0.8 * 1.0 + 0.1 * -1.0)
    assert mdp.transitions[11, down, pit].item() == pytest.approx(0.1)
    no_pit = zoo.gridworld(size=5, slip=0.0, pit=False)
    assert no_pit.terminal.nonzero().flatten().tolist() == [24]
    # Deterministic, no pit: the goal is 8 steps away and the horizon 20 is enough.
    assert exact.optimal_return(no_pit) == 1.0
    assert exact.optimal_return(no_pit.replace(horizon=7)) == 0.0


def test_gridworld_pit_needs_room():
    with pytest.raises(ValueError, match="size must be >= 3 when pit=True"):
        zoo.gridworld(size=2)


# --------------------------------------------------------------------------------------
# garnet
# --------------------------------------------------------------------------------------
def test_garnet_has_exactly_branching_successors_and_is_seeded():
    mdp = zoo.garnet(n_states=20, n_actions=4, branching=3, seed=7, horizon=50)
    successors = (mdp.transitions > 0).sum(dim=-1)
    # Successor probabilities are gaps between U(0,1) cut points: zero with probability 0.
    assert torch.equal(successors, torch.full((20, 4), 3))
    assert ((mdp.rewards >= 0) & (mdp.rewards < 1)).all()
    assert torch.allclose(mdp.initial, torch.full((20,), 1 / 20, dtype=torch.float64))
    again = zoo.garnet(n_states=20, n_actions=4, branching=3, seed=7, horizon=50)
    assert torch.equal(again.transitions, mdp.transitions)
    assert torch.equal(again.rewards, mdp.rewards)
    other = zoo.garnet(n_states=20, n_actions=4, branching=3, seed=8, horizon=50)
    assert not torch.equal(other.transitions, mdp.transitions)
    # Seeding uses a private generator: the global RNG state does not matter.
    torch.manual_seed(123)
    assert torch.equal(zoo.garnet(seed=7).transitions, zoo.garnet(seed=7).transitions)


def test_garnet_branching_bounds():
    deterministic = zoo.garnet(n_states=5, n_actions=2, branching=1, seed=0)
    assert torch.equal(deterministic.transitions.max(dim=-1).values, torch.ones(5, 2).double())
    with pytest.raises(ValueError, match="branching must be <= n_states = 5, got 6"):
        zoo.garnet(n_states=5, branching=6)


# --------------------------------------------------------------------------------------
# gymnasium wrappers
# --------------------------------------------------------------------------------------
def test_gymnasium_wrappers_name_and_size():
    assert zoo.frozenlake().name == "FrozenLake-v1"
    lake8 = zoo.frozenlake(map_name="8x8", is_slippery=False)
    assert (lake8.name, lake8.n_states, lake8.horizon) == (
        "FrozenLake8x8-v1(is_slippery=False)",
        64,
        200,
    )
    cliff = zoo.cliffwalking()
    assert (cliff.name, cliff.n_states, cliff.horizon) == ("CliffWalking-v1", 49, 100)
    rainy = zoo.taxi(is_rainy=True)
    assert (rainy.name, rainy.n_states) == ("Taxi-v4(is_rainy=True)", 501)
    assert rainy.transitions[0, 0].max().item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"unknown map_name '6x6'.*; choose one of: 4x4, 8x8"):
        zoo.frozenlake(map_name="6x6")


def test_short_corridor_carries_its_features_and_only_it_does():
    """Issue 10: the corridor's features ride on the MDP; every other zoo MDP has none
    (so its tabular softmax, and every result on it, is unchanged)."""
    from pglab.tabular import features

    mdp = zoo.make("short_corridor")
    reference, phi = features.short_corridor()
    assert torch.equal(mdp.features, phi) and tuple(phi.shape) == (4, 2, 2)
    assert torch.equal(mdp.transitions, reference.transitions)
    # value at p* = 2 - sqrt(2): theta = (logit p*, 0); the textbook value to 1e-8 at
    # horizon 200 (truncation 6.6e-9, features.short_corridor's measured bound)
    p = features.CORRIDOR_OPTIMAL_P
    theta = torch.tensor([float(torch.logit(torch.tensor(p, dtype=torch.float64))), 0.0])
    value = features.feature_expected_return(mdp, mdp.features, theta)
    assert value == pytest.approx(features.CORRIDOR_OPTIMAL_RETURN, abs=1e-8)
    for name in [n for n in NAMES if n not in ("file", "short_corridor")]:
        assert zoo.make(name).features is None, name
