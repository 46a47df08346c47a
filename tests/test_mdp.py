"""TabularMDP: validation, gymnasium import and file round trips."""

from __future__ import annotations

import math
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab.tabular import zoo
from pglab.tabular.mdp import PROBABILITY_TOLERANCE, REWARD_TOLERANCE, TabularMDP

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "mdps"


def small_arrays() -> dict:
    """A valid 3-state, 2-action MDP whose state 2 is terminal."""
    transitions = np.array(
        [
            [[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]],
            [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
        ]
    )
    rewards = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]])
    return {
        "transitions": transitions,
        "rewards": rewards,
        "initial": np.array([0.7, 0.3, 0.0]),
        "horizon": 4,
        "gamma": 0.9,
        "terminal": np.array([False, False, True]),
        "name": "small",
    }


def with_changes(**changes) -> dict:
    arrays = small_arrays()
    arrays.update(changes)
    return arrays


# --------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------
def test_valid_mdp_stores_float64_copies():
    arrays = small_arrays()
    mdp = TabularMDP(**arrays)
    assert (mdp.n_states, mdp.n_actions, mdp.horizon, mdp.gamma) == (3, 2, 4, 0.9)
    assert mdp.transitions.dtype == mdp.rewards.dtype == mdp.initial.dtype == torch.float64
    assert mdp.terminal.dtype == torch.bool
    assert mdp.terminal.tolist() == [False, False, True]
    # The caller's arrays are copied: changing them afterwards does not reach the MDP.
    arrays["transitions"][0, 0, 0] = 123.0
    arrays["initial"][0] = -5.0
    assert mdp.transitions[0, 0, 0].item() == 0.5
    assert mdp.initial[0].item() == 0.7


def test_tensor_inputs_are_copied():
    transitions = torch.tensor(small_arrays()["transitions"])
    mdp = TabularMDP(**with_changes(transitions=transitions))
    transitions[0, 0, 0] = 9.0
    assert mdp.transitions[0, 0, 0].item() == 0.5


def test_list_inputs_and_default_terminal():
    mdp = TabularMDP(transitions=[[[1.0]]], rewards=[[3.0]], initial=[1.0], horizon=2, name="one")
    assert mdp.terminal.tolist() == [False]
    assert mdp.gamma == 1.0


def test_rewards_per_transition_are_reduced_to_expectations():
    arrays = small_arrays()
    full = np.zeros((3, 2, 3))
    full[0, 0] = [2.0, 4.0, 100.0]  # the 100 is unreachable (P = 0)
    full[1, 1] = [0.0, 0.0, 7.0]
    mdp = TabularMDP(**with_changes(rewards=full))
    expected = (arrays["transitions"] * full).sum(axis=-1)
    assert torch.equal(mdp.rewards, torch.from_numpy(expected))
    assert mdp.rewards[0, 0].item() == 0.5 * 2.0 + 0.5 * 4.0
    # ... and R(s, a, s') itself is kept (as given, unreachable entries included) for the
    # samplers, which pay realized rewards
    assert torch.equal(mdp.transition_rewards, torch.from_numpy(full))


# --------------------------------------------------------------------------------------
# Realized rewards R(s, a, s') (transition_rewards)
# --------------------------------------------------------------------------------------
def small_transition_rewards() -> np.ndarray:
    """R(s, a, s') for small_arrays() whose expectation is small_arrays()["rewards"]."""
    full = np.zeros((3, 2, 3))
    full[0, 0] = [0.0, 2.0, 55.0]  # 0.5 * 0 + 0.5 * 2 = 1; the 55 is unreachable
    full[0, 1] = [0.0, 5.0, -2.5]  # 0.2 * 5 - 0.8 * 2.5 = -1
    full[1, 0] = [0.5, 0.0, 0.0]
    full[1, 1] = [0.0, 0.0, 2.0]
    return full


def test_transition_rewards_are_kept_and_rewards_stay_as_given():
    full = small_transition_rewards()
    mdp = TabularMDP(**small_arrays(), transition_rewards=full)
    assert mdp.transition_rewards.dtype == torch.float64
    assert torch.equal(mdp.transition_rewards, torch.from_numpy(full))
    assert torch.equal(mdp.rewards, torch.from_numpy(small_arrays()["rewards"]))
    full[0, 0, 1] = 99.0  # a private copy: the caller's array does not leak in
    assert mdp.transition_rewards[0, 0, 1].item() == 2.0
    # without them (the default), there is nothing extra
    assert TabularMDP(**small_arrays()).transition_rewards is None


def test_transition_rewards_may_miss_the_expectation_only_by_round_off():
    full = small_transition_rewards()
    nudged = small_arrays()["rewards"].copy()
    nudged[0, 1] += 0.5 * REWARD_TOLERANCE  # scale 1 + max|R| = 6: well within tolerance
    mdp = TabularMDP(**with_changes(rewards=nudged), transition_rewards=full)
    assert torch.equal(mdp.rewards, torch.from_numpy(nudged))
    assert REWARD_TOLERANCE == 1e-9


def test_replace_keeps_or_recomputes_the_reward_model():
    full = small_transition_rewards()
    mdp = TabularMDP(**small_arrays(), transition_rewards=full)
    longer = mdp.replace(horizon=10)  # unchanged rewards: both kept bit for bit
    assert torch.equal(longer.transition_rewards, mdp.transition_rewards)
    assert torch.equal(longer.rewards, mdp.rewards)
    # new transitions: r recomputed from the kept R under the new P
    transitions = small_arrays()["transitions"].copy()
    transitions[0, 0] = [0.25, 0.75, 0.0]
    moved = mdp.replace(transitions=transitions)
    assert torch.equal(moved.transition_rewards, mdp.transition_rewards)
    assert moved.rewards[0, 0].item() == 0.75 * 2.0
    # new [S, A] rewards replace the whole reward model; new R alone recomputes r
    plain = mdp.replace(rewards=np.ones((3, 2)) * [[1], [1], [0]])
    assert plain.transition_rewards is None and plain.rewards[0, 1].item() == 1.0
    doubled = mdp.replace(transition_rewards=2 * full)
    assert torch.equal(doubled.rewards, 2 * mdp.rewards)
    dropped = mdp.replace(transition_rewards=None)
    assert dropped.transition_rewards is None and torch.equal(dropped.rewards, mdp.rewards)
    with pytest.raises(ValueError, match=re.escape("rewards[0, 0] is 1 but sum_s'")):
        mdp.replace(rewards=small_arrays()["rewards"], transition_rewards=2 * full)


def test_tiny_negative_probabilities_are_clipped_to_zero():
    transitions = small_arrays()["transitions"].copy()
    transitions[0, 0] = [0.5 + 1e-10, 0.5, -1e-10]
    mdp = TabularMDP(**with_changes(transitions=transitions))
    assert mdp.transitions[0, 0, 2].item() == 0.0


def test_repr_names_the_sizes():
    text = repr(TabularMDP(**small_arrays()))
    assert text == (
        "TabularMDP(name='small', n_states=3, n_actions=2, horizon=4, gamma=0.9, n_terminal=1)"
    )


def test_replace_revalidates():
    mdp = TabularMDP(**small_arrays())
    assert mdp.replace(horizon=10).horizon == 10
    with pytest.raises(ValueError, match=r"horizon must be a positive integer, got 0"):
        mdp.replace(horizon=0)
    with pytest.raises(ValueError, match="unknown field"):
        mdp.replace(horizn=3)


# --------------------------------------------------------------------------------------
# Validation: every malformed field raises ValueError naming field, index and value
# --------------------------------------------------------------------------------------
def _bad_row_sum():
    transitions = small_arrays()["transitions"].copy()
    transitions[1, 0] = [0.97, 0.0, 0.0]
    return transitions


def _negative_probability():
    transitions = small_arrays()["transitions"].copy()
    transitions[0, 1] = [-0.1, 0.3, 0.8]
    return transitions


def _with_transition_reward(index, value):
    full = small_transition_rewards()
    full[index] = value
    return full


def _with_value(field, index, value):
    array = small_arrays()[field].copy()
    array[index] = value
    return array


INVALID = {
    "transitions not 3-d": (
        {"transitions": np.ones((3, 2))},
        r"transitions must have shape \[S, A, S\] with S, A >= 1, got shape \[3, 2\]",
    ),
    "transitions not square": (
        {"transitions": np.full((3, 2, 4), 0.25)},
        r"got shape \[3, 2, 4\]",
    ),
    "row does not sum to 1": (
        {"transitions": _bad_row_sum()},
        re.escape("transitions[1, 0] sums to 0.97, expected 1 (tolerance 1e-08)"),
    ),
    "row sums to 1 + 1e-7": (
        {"transitions": _with_value("transitions", (0, 0, 0), 0.5 + 1e-7)},
        re.escape("transitions[0, 0] sums to 1.0000001, expected 1"),
    ),
    "negative probability": (
        {"transitions": _negative_probability()},
        re.escape("transitions[0, 1, 0] is -0.1; probabilities must be >= 0"),
    ),
    "nan probability": (
        {"transitions": _with_value("transitions", (1, 1, 2), np.nan)},
        re.escape("transitions[1, 1, 2] is nan; all entries must be finite"),
    ),
    "non-numeric transitions": (
        {"transitions": [[["a"]]]},
        "transitions must be a numeric array",
    ),
    "rewards wrong shape": (
        {"rewards": np.zeros((2, 3))},
        re.escape("rewards has shape [2, 3], expected [S, A] = [3, 2] or [S, A, S] = [3, 2, 3]"),
    ),
    "rewards infinite": (
        {"rewards": _with_value("rewards", (1, 0), np.inf)},
        re.escape("rewards[1, 0] is inf; all entries must be finite"),
    ),
    "per-transition rewards nan": (
        {"rewards": np.full((3, 2, 3), np.nan)},
        re.escape("rewards[0, 0, 0] is nan"),
    ),
    "initial wrong shape": (
        {"initial": np.array([0.5, 0.5])},
        re.escape("initial has shape [2], expected [S] = [3]"),
    ),
    "initial does not sum to 1": (
        {"initial": np.array([0.5, 0.4, 0.0])},
        re.escape("initial sums to 0.9, expected 1 (tolerance 1e-08)"),
    ),
    "initial negative": (
        {"initial": np.array([1.5, -0.5, 0.0])},
        re.escape("initial[1] is -0.5; probabilities must be >= 0"),
    ),
    "initial nan": (
        {"initial": np.array([np.nan, 0.5, 0.5])},
        re.escape("initial[0] is nan"),
    ),
    "horizon 0": ({"horizon": 0}, "horizon must be a positive integer, got 0"),
    "horizon float": ({"horizon": 3.0}, re.escape("horizon must be a positive integer, got 3.0")),
    "horizon bool": ({"horizon": True}, "horizon must be a positive integer, got True"),
    "gamma above 1": ({"gamma": 1.5}, re.escape("gamma must be finite and in [0, 1], got 1.5")),
    "gamma negative": ({"gamma": -0.1}, re.escape("gamma must be finite and in [0, 1], got -0.1")),
    "gamma nan": (
        {"gamma": float("nan")},
        re.escape("gamma must be finite and in [0, 1], got nan"),
    ),
    "gamma string": ({"gamma": "0.9"}, "gamma must be a number, got '0.9'"),
    "terminal not absorbing": (
        {"terminal": np.array([True, False, True])},
        re.escape(
            "transitions[0, 0, 0] is 0.5 but state 0 is terminal; terminal states must be absorbing"
        ),
    ),
    "terminal with reward": (
        {"rewards": _with_value("rewards", (2, 1), 4.0)},
        re.escape("rewards[2, 1] is 4 but state 2 is terminal; terminal states must give zero"),
    ),
    "terminal wrong shape": (
        {"terminal": np.array([False, True])},
        re.escape("terminal has shape [2], expected [S] = [3]"),
    ),
    "terminal not boolean": (
        {"terminal": np.array([0, 0, 1])},
        "terminal must be a boolean mask of shape",
    ),
    "transition rewards wrong shape": (
        {"transition_rewards": np.zeros((3, 2))},
        re.escape("transition_rewards has shape [3, 2], expected [S, A, S] = [3, 2, 3]"),
    ),
    "transition rewards nan": (
        {"transition_rewards": _with_transition_reward((1, 1, 0), np.nan)},
        re.escape("transition_rewards[1, 1, 0] is nan; all entries must be finite"),
    ),
    "transition rewards infinite": (
        {"transition_rewards": _with_transition_reward((0, 1, 2), -np.inf)},
        re.escape("transition_rewards[0, 1, 2] is -inf; all entries must be finite"),
    ),
    "transition rewards not numeric": (
        {"transition_rewards": "lots"},
        "transition_rewards must be a numeric array",
    ),
    "rewards not the expectation of transition rewards": (
        {"transition_rewards": _with_transition_reward((0, 1, 1), 6.0)},
        re.escape(
            "rewards[0, 1] is -1 but sum_s' transitions[0, 1, s'] * transition_rewards[0, 1, s'] "
            "is -0.8; rewards must be the expectation of transition_rewards"
        ),
    ),
    "transition rewards given twice": (
        {"rewards": np.zeros((3, 2, 3)), "transition_rewards": np.zeros((3, 2, 3))},
        re.escape("rewards has shape [S, A, S] and transition_rewards is given too"),
    ),
    "terminal with transition reward": (
        {"transition_rewards": _with_transition_reward((2, 0, 2), 3.0)},
        re.escape(
            "transition_rewards[2, 0, 2] is 3 but state 2 is terminal; "
            "terminal states must give zero reward"
        ),
    ),
    "terminal with per-transition reward": (
        {"rewards": _with_transition_reward((2, 1, 2), -1.0)},
        re.escape("rewards[2, 1] is -1 but state 2 is terminal"),
    ),
    "name not a string": ({"name": 3}, re.escape("name must be a str, got 3 (int)")),
    "state names wrong length": (
        {"state_names": ["a", "b"]},
        "state_names has 2 entries, expected 3",
    ),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_mdp_raises_value_error_naming_field_index_value(case):
    changes, message = INVALID[case]
    with pytest.raises(ValueError, match=message):
        TabularMDP(**with_changes(**changes))


def test_probability_tolerance_is_the_documented_one():
    assert PROBABILITY_TOLERANCE == 1e-8
    ok = _with_value("transitions", (0, 0, 0), 0.5 + 0.5e-8)
    TabularMDP(**with_changes(transitions=ok))  # within tolerance: accepted


# --------------------------------------------------------------------------------------
# gymnasium
# --------------------------------------------------------------------------------------
def _gym_model_expectations(env) -> tuple[np.ndarray, np.ndarray]:
    """Independent reading of env.unwrapped.P: (P summed over outcomes, expected reward)."""
    unwrapped = env.unwrapped
    n_states, n_actions = unwrapped.observation_space.n, unwrapped.action_space.n
    p = np.zeros((n_states, n_actions, n_states))
    r = np.zeros((n_states, n_actions))
    for s in range(n_states):
        for a in range(n_actions):
            for prob, next_state, reward, _ in unwrapped.P[s][a]:
                p[s, a, next_state] += prob
                r[s, a] += prob * reward
    return p, r


@pytest.mark.parametrize("map_name", ["4x4", "8x8"])
@pytest.mark.parametrize("is_slippery", [True, False])
def test_frozenlake_marks_holes_and_goal_terminal(map_name, is_slippery):
    env = gym.make("FrozenLake-v1", map_name=map_name, is_slippery=is_slippery)
    mdp = TabularMDP.from_gymnasium(env)
    p, r = _gym_model_expectations(env)
    desc = env.unwrapped.desc.ravel()
    # Holes and the goal are absorbing with zero reward in gymnasium's model: no extra state.
    assert mdp.n_states == desc.size
    assert mdp.terminal.numpy().tolist() == [bytes(c) in (b"H", b"G") for c in desc]
    assert np.allclose(mdp.transitions.numpy(), p, rtol=0, atol=1e-15)
    assert np.allclose(mdp.rewards.numpy(), r, rtol=0, atol=1e-15)
    sums = mdp.transitions.sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0, atol=1e-12)
    assert np.array_equal(mdp.initial.numpy(), env.unwrapped.initial_state_distrib)
    assert mdp.horizon == 100 and mdp.name == "FrozenLake-v1"  # the registry's TimeLimit


def test_cliffwalking_routes_goal_step_to_an_added_terminal_state():
    env = gym.make("CliffWalking-v1")
    with pytest.raises(ValueError, match="horizon: env CliffWalking-v1 has no max_episode_steps"):
        TabularMDP.from_gymnasium(env)
    mdp = TabularMDP.from_gymnasium(env, horizon=50)
    extra = 48
    assert mdp.n_states == 49 and mdp.terminal.nonzero().flatten().tolist() == [extra]
    # From (2, 11) = state 35, "down" (2) enters the goal: it must land in the extra state.
    assert mdp.transitions[35, 2, extra].item() == 1.0
    assert mdp.rewards[35, 2].item() == -1.0
    # Other transitions are copied unchanged; the cliff sends the agent back to the start.
    p, r = _gym_model_expectations(env)
    assert mdp.transitions[36, 1, 36].item() == 1.0 and mdp.rewards[36, 1].item() == -100.0
    goal_entries = np.zeros_like(p, dtype=bool)
    goal_entries[:, :, 47] = True
    assert np.array_equal(mdp.transitions[:48, :, :48].numpy()[~goal_entries], p[~goal_entries])
    assert np.array_equal(mdp.rewards[:48].numpy(), r)
    assert mdp.initial[36].item() == 1.0 and mdp.initial.sum().item() == 1.0
    sums = mdp.transitions.sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0, atol=1e-12)


def test_taxi_builds_with_initial_distribution_of_the_env():
    env = gym.make("Taxi-v4")
    mdp = TabularMDP.from_gymnasium(env)
    assert (mdp.n_states, mdp.n_actions, mdp.horizon) == (501, 6, 200)
    assert mdp.terminal.nonzero().flatten().tolist() == [500]
    assert np.array_equal(mdp.initial[:500].numpy(), env.unwrapped.initial_state_distrib)
    assert mdp.initial[500].item() == 0.0
    sums = mdp.transitions.sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums), rtol=0, atol=1e-12)
    # A correct drop-off pays +20 and ends the episode in the added state. State encoding
    # ((row * 5 + col) * 5 + passenger) * 4 + destination; passenger 4 = in the taxi.
    at_red_carrying_to_red = ((0 * 5 + 0) * 5 + 4) * 4 + 0
    assert mdp.transitions[at_red_carrying_to_red, 5, 500].item() == 1.0
    assert mdp.rewards[at_red_carrying_to_red, 5].item() == 20.0


def test_from_gymnasium_accepts_an_id_string_and_make_kwargs():
    mdp = TabularMDP.from_gymnasium("FrozenLake-v1", is_slippery=False, horizon=7, gamma=0.5)
    assert (mdp.horizon, mdp.gamma, mdp.name) == (7, 0.5, "FrozenLake-v1")
    assert mdp.transitions.max().item() == 1.0  # not slippery: deterministic
    with pytest.raises(ValueError, match="only apply when env is an id string"):
        TabularMDP.from_gymnasium(gym.make("FrozenLake-v1"), is_slippery=False)


def test_from_gymnasium_rejects_env_without_tabular_model():
    with pytest.raises(ValueError, match=r"has no tabular model env.unwrapped.P"):
        TabularMDP.from_gymnasium("CartPole-v1")


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
def assert_same_mdp(a: TabularMDP, b: TabularMDP) -> None:
    assert torch.equal(a.transitions, b.transitions)
    assert torch.equal(a.rewards, b.rewards)
    if a.transition_rewards is None or b.transition_rewards is None:
        assert a.transition_rewards is None and b.transition_rewards is None
    else:
        assert torch.equal(a.transition_rewards, b.transition_rewards)
    assert torch.equal(a.initial, b.initial)
    assert torch.equal(a.terminal, b.terminal)
    assert (a.horizon, a.gamma, a.name) == (b.horizon, b.gamma, b.name)
    assert (a.state_names, a.action_names) == (b.state_names, b.action_names)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".npz"])
def test_file_round_trip_is_exact(tmp_path, suffix):
    mdp = TabularMDP(**small_arrays(), state_names=["a", "b", "end"], action_names=["x", "y"])
    garnet = zoo.garnet(n_states=6, n_actions=3, branching=2, seed=4, horizon=9, gamma=0.95)
    realized = TabularMDP(**small_arrays(), transition_rewards=small_transition_rewards())
    for original in (mdp, garnet, zoo.gridworld(), realized, zoo.frozenlake(), zoo.chain()):
        path = tmp_path / f"mdp{suffix}"
        original.to_file(path)
        assert_same_mdp(TabularMDP.from_file(path), original)


def test_files_without_transition_rewards_are_written_as_before(tmp_path):
    import yaml

    TabularMDP(**small_arrays()).to_file(tmp_path / "plain.yaml")
    data = yaml.safe_load((tmp_path / "plain.yaml").read_text())
    assert "transition_rewards" not in data
    TabularMDP(**small_arrays()).to_file(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as archive:
        assert "transition_rewards" not in archive.files
    realized = TabularMDP(**small_arrays(), transition_rewards=small_transition_rewards())
    realized.to_file(tmp_path / "realized.yaml")
    data = yaml.safe_load((tmp_path / "realized.yaml").read_text())
    assert data["rewards"] == small_arrays()["rewards"].tolist()  # r(s, a), readable
    assert data["transition_rewards"] == small_transition_rewards().tolist()


def test_yaml_transition_rewards_key_is_validated(tmp_path):
    import yaml

    data = {
        "horizon": 4,
        "initial": [0.7, 0.3, 0.0],
        "transitions": small_arrays()["transitions"].tolist(),
        "rewards": small_arrays()["rewards"].tolist(),
        "terminal": [2],
        "transition_rewards": small_transition_rewards().tolist(),
    }
    path = tmp_path / "realized.yaml"
    path.write_text(yaml.safe_dump(data))
    mdp = TabularMDP.from_file(path)
    assert torch.equal(mdp.transition_rewards, torch.from_numpy(small_transition_rewards()))
    data["transition_rewards"][0][1][1] = 6.0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=re.escape("rewards[0, 1] is -1 but sum_s'")):
        TabularMDP.from_file(path)


def test_example_files_load(tmp_path):
    two_state = TabularMDP.from_file(EXAMPLES / "two_state.yaml")
    assert_same_mdp(two_state, zoo.two_state())
    corridor = TabularMDP.from_file(EXAMPLES / "corridor.yaml")
    assert corridor.terminal.tolist() == [False, False, False, True]
    # R(2, forward, goal) = 1 reached w.p. 0.9: r(2, forward) = 0.9.
    assert corridor.rewards[2, 1].item() == 0.9
    # R(s, a, s') given as `rewards: [S][A][S]` is kept: samples pay 1 or 0, not 0.9
    assert corridor.transition_rewards[2, 1].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_yaml_terminal_as_booleans_and_defaults(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "horizon: 2\ninitial: [1.0, 0.0]\n"
        "transitions: [[[0.0, 1.0]], [[0.0, 1.0]]]\nrewards: [[1.0], [0.0]]\n"
        "terminal: [false, true]\n"
    )
    mdp = TabularMDP.from_file(path)
    assert mdp.terminal.tolist() == [False, True]
    assert (mdp.name, mdp.gamma) == ("tiny", 1.0)


MALFORMED_YAML = {
    "missing horizon": (
        "initial: [1.0]\ntransitions: [[[1.0]]]\nrewards: [[0.0]]\n",
        r"missing required key 'horizon'",
    ),
    "missing rewards": (
        "horizon: 3\ninitial: [1.0]\ntransitions: [[[1.0]]]\n",
        r"missing required key 'rewards'",
    ),
    "unknown key": (
        "horizon: 3\ninitial: [1.0]\ntransitions: [[[1.0]]]\nrewards: [[0.0]]\ngama: 0.9\n",
        r"unknown key 'gama'",
    ),
    "not a mapping": ("- 1\n- 2\n", r"expected a YAML mapping"),
    "terminal index out of range": (
        "horizon: 3\ninitial: [1.0]\ntransitions: [[[1.0]]]\nrewards: [[0.0]]\nterminal: [4]\n",
        re.escape("terminal[0] is 4, not a state index in [0, 0]"),
    ),
    "bad content is validated": (
        "horizon: 3\ninitial: [1.0]\ntransitions: [[[0.5]]]\nrewards: [[0.0]]\n",
        re.escape("transitions[0, 0] sums to 0.5, expected 1"),
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_YAML), ids=list(MALFORMED_YAML))
def test_malformed_yaml_raises_value_error_naming_the_problem(tmp_path, case):
    text, message = MALFORMED_YAML[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        TabularMDP.from_file(path)


def test_malformed_npz_and_unknown_suffix(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, transitions=np.ones((1, 1, 1)), rewards=np.zeros((1, 1)), horizon=3)
    with pytest.raises(ValueError, match=r"missing required key 'initial'"):
        TabularMDP.from_file(path)
    with pytest.raises(ValueError, match=r"unknown MDP file suffix '.json'"):
        TabularMDP.from_file(tmp_path / "mdp.json")
    with pytest.raises(ValueError, match=r"unknown MDP file suffix '.txt'"):
        TabularMDP(**small_arrays()).to_file(tmp_path / "mdp.txt")


# --------------------------------------------------------------------------------------
# File size limits: a small file must not make from_file allocate gigabytes
# --------------------------------------------------------------------------------------
def _npz_declaring(path: Path, key: str, shape: tuple, descr: str = "<f8", data: bool = True):
    """Write ``path`` as an .npz whose ``key`` array declares ``shape``, plus small
    ``rewards``/``initial``/``horizon``. The big array's zeros are streamed through the
    compressor (as ``np.savez_compressed`` of a zero array would store them), never held."""
    import zipfile

    from numpy.lib import format as npy

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as handle:
            header = {"descr": descr, "fortran_order": False, "shape": shape}
            npy.write_array_header_1_0(handle, header)
            left = int(np.prod(shape)) * np.dtype(descr).itemsize if data else 0
            zeros = bytes(2**24)
            while left:
                handle.write(zeros[: min(left, len(zeros))])
                left -= min(left, len(zeros))
        for name, array in {
            "rewards": np.zeros((shape[0], 1)),
            "initial": np.zeros(shape[0]),
            "horizon": np.array(3),
        }.items():
            with zf.open(f"{name}.npy", "w") as handle:
                npy.write_array(handle, array)


def _fails_fast_and_small(path: Path, message: str) -> None:
    """from_file raises ``message`` within 1 s, and allocates < 64 MB (numpy and Python
    objects, measured by tracemalloc on a second, untimed call: tracing slows Python)."""
    import time
    import tracemalloc

    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        TabularMDP.from_file(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message):
            TabularMDP.from_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"allocated {peak / 2**20:.0f} MB"


def test_npz_declaring_a_huge_transition_table_fails_fast(tmp_path):
    """Issue 9: a 1.75 MB npz declaring transitions [15000, 1, 15000] took 36 s and 6.3 GB
    before validation rejected it. The .npy header is now checked first (here [8000, 1,
    8000]: 6.4e7 entries, 512 MB as float64, stored in ~3 MB)."""
    path = tmp_path / "big.npz"
    _npz_declaring(path, "transitions", (8000, 1, 8000))
    assert path.stat().st_size < 4 * 2**20
    _fails_fast_and_small(
        path,
        re.escape("transitions has shape [8000, 1, 8000] (64000000 entries)")
        + r".*at most MAX_FILE_ENTRIES = 50000000 entries",
    )


def test_npz_array_of_huge_strings_is_refused_from_its_header(tmp_path):
    path = tmp_path / "names.npz"
    _npz_declaring(path, "states", (10,), descr="<U20000000", data=False)  # 800 MB declared
    _fails_fast_and_small(path, re.escape("states has shape [10] of dtype <U20000000"))


def test_yaml_aliases_declaring_a_huge_transition_table_fail_fast(tmp_path):
    """A 60 kB YAML file can declare [7100, 1, 7100] by repeating one aliased row: counted
    (aliases included) before any array is built."""
    n = 7100
    row = "[" + ", ".join(["0.0"] * n) + "]"
    text = (
        "horizon: 3\ninitial: [1.0]\nrewards: [[0.0]]\ntransitions:\n"
        + f"  - &row [{row}]\n"
        + "  - *row\n" * (n - 1)
    )
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    assert path.stat().st_size < 100_000
    _fails_fast_and_small(path, re.escape(f"transitions has shape [{n}, 1, {n}] ({n * n} entries)"))


def test_recursive_yaml_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("horizon: 3\ninitial: [1.0]\nrewards: [[0.0]]\ntransitions: &t [[*t]]\n")
    with pytest.raises(ValueError, match=r"transitions contains itself \(a recursive YAML alias\)"):
        TabularMDP.from_file(path)


@pytest.mark.parametrize(("suffix", "limit"), [(".yaml", 2**24), (".npz", 2**30)])
def test_oversized_files_are_refused_before_reading(tmp_path, suffix, limit):
    from pglab.tabular import mdp as mdp_module

    assert {".yaml": mdp_module.MAX_YAML_BYTES, ".npz": mdp_module.MAX_NPZ_BYTES}[suffix] == limit
    path = tmp_path / f"huge{suffix}"
    with path.open("wb") as handle:
        handle.truncate(limit + 1)  # sparse: nothing is written
    _fails_fast_and_small(path, re.escape(f"the file has {limit + 1} bytes, more than the {limit}"))


def test_files_at_the_limit_still_load(tmp_path):
    """The limits refuse only what exceeds them: an npz and a YAML file of a real MDP load."""
    mdp = zoo.garnet(n_states=30, n_actions=3, branching=2, seed=1, horizon=5)
    for suffix in (".npz", ".yaml"):
        mdp.to_file(tmp_path / f"garnet{suffix}")
        assert_same_mdp(TabularMDP.from_file(tmp_path / f"garnet{suffix}"), mdp)


# ---------------------------------------------------------------------------------------
# Features phi(s, a) [S, A, d] (issue 10)
# ---------------------------------------------------------------------------------------
def _two_state_args():
    return dict(
        transitions=[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]],
        rewards=[[1.0, 0.0], [2.0, 0.0]],
        initial=[1.0, 0.0],
        horizon=3,
    )


def test_features_default_to_none_and_are_validated():
    assert TabularMDP(**_two_state_args()).features is None
    phi = torch.arange(12, dtype=torch.float64).reshape(2, 2, 3)
    mdp = TabularMDP(**_two_state_args(), features=phi)
    assert torch.equal(mdp.features, phi) and mdp.features.dtype == torch.float64
    with pytest.raises(ValueError, match=r"features must have shape \[S, A, d\] = \[2, 2"):
        TabularMDP(**_two_state_args(), features=torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match=r"features must have shape"):
        TabularMDP(**_two_state_args(), features=torch.zeros(2, 2, 0))
    bad = phi.clone()
    bad[1, 0, 2] = math.nan
    with pytest.raises(ValueError, match=r"features\[1, 0, 2\] = nan is not finite"):
        TabularMDP(**_two_state_args(), features=bad)


@pytest.mark.parametrize("suffix", [".yaml", ".npz"])
def test_features_survive_replace_and_a_file_round_trip(tmp_path, suffix):
    phi = torch.tensor([[[1.0, 0.5], [0.0, -2.25]], [[3.0, 1e-17], [0.1, 0.2]]])
    mdp = TabularMDP(**_two_state_args(), features=phi)
    assert torch.equal(mdp.replace(horizon=5).features, mdp.features)
    path = tmp_path / f"mdp{suffix}"
    mdp.to_file(path)
    assert torch.equal(TabularMDP.from_file(path).features, mdp.features)
    plain = tmp_path / f"plain{suffix}"
    TabularMDP(**_two_state_args()).to_file(plain)
    assert TabularMDP.from_file(plain).features is None
