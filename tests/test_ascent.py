"""pglab.tabular.ascent: gradient ascent on tabular MDPs, checked against theory and hand values.

Main MDP: ``zoo.two_state()`` (T = 3, gamma = 1, stay reward 1 at start, 2 at far). From
its docstring: uniform logits give J = 2.125 and the optimum is J* = 4 (go, then stay).
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from pglab.collapse import CollapseConfig, CollapseDetector
from pglab.tabular import exact, zoo
from pglab.tabular.ascent import iteration_seed, tabular_ascent, tabular_collapse_config
from pglab.tabular.estimates import sample_gradients
from pglab.tabular.mdp import TabularMDP

UNIFORM = torch.zeros(2, 2, dtype=torch.float64)


def test_uniform_policy_metrics_by_hand():
    """Uniform policy on two_state. Optimal actions (from Q*): t=0 start: go; t=1 start:
    stay and go tie (both lead to 2 more reward); t=2 start: stay; far: stay always.
    Occupancies d_0 = (1, 0), d_1 = (1/2, 1/2), d_2 = (1/4, 3/4), so
    p_optimal = (1/3) [1 * 1/2 + (1/2 * 1 + 1/2 * 1/2) + (1/4 * 1/2 + 3/4 * 1/2)] = 7/12."""
    result = tabular_ascent(zoo.two_state(), UNIFORM, step_size=0.1, n_iterations=1)
    first = result.history[0]
    assert first["expected_return"] == pytest.approx(2.125, abs=1e-12)
    assert first["optimal_return"] == pytest.approx(4.0, abs=1e-12)
    assert first["p_optimal"] == pytest.approx(7 / 12, abs=1e-12)
    assert first["entropy"] == pytest.approx(math.log(2), abs=1e-12)
    assert first["entropy_states"] == pytest.approx(math.log(2), abs=1e-12)
    # gradient from the zoo docstring: [[0.1875, -0.1875], [0.625, -0.625]]
    assert first["grad_norm"] == pytest.approx(math.sqrt(2 * 0.1875**2 + 2 * 0.625**2))
    expected = torch.tensor([[0.1875, -0.1875], [0.625, -0.625]], dtype=torch.float64) * 0.1
    torch.testing.assert_close(result.final_params["logits"], expected, rtol=0, atol=1e-12)


def test_optimal_policy_has_p_optimal_one():
    logits = torch.tensor([[-40.0, 40.0], [40.0, -40.0]], dtype=torch.float64)  # go, stay
    first = tabular_ascent(zoo.two_state(), logits, 1e-3, 1).history[0]
    assert first["expected_return"] == pytest.approx(4.0, abs=1e-12)
    assert first["p_optimal"] == pytest.approx(1.0, abs=1e-12)


def test_small_exact_step_is_monotone_with_the_descent_lemma_gain():
    """Descent lemma (ascent form): if J is L-smooth, theta' = theta + alpha grad J gives
    J(theta') >= J(theta) + alpha (1 - alpha L / 2) ||grad J||^2.

    Smoothness constant. grad^2 J = E[R (s s^T + H)] with s = sum_t grad log pi(a_t|s_t)
    and H = sum_t grad^2 log pi(a_t|s_t). For a unit direction u, |u . s| <= sqrt(2) T
    (||e_a - pi|| <= sqrt(2), one term per step) and |u^T H u| <= T / 2 (the softmax
    Jacobian diag(pi) - pi pi^T has eigenvalues <= 1/2, Gershgorin), while
    0 <= R <= R_max = T * 2 on two_state. So L <= R_max (2 T^2 + T / 2) = 6 * 19.5 = 117,
    and alpha = 0.01 < 2 / L = 0.017 guarantees a gain factor 1 - alpha L / 2 = 0.415 > 0.
    """
    alpha, big_l = 0.01, 6 * (2 * 3**2 + 3 / 2)
    result = tabular_ascent(zoo.two_state(), UNIFORM, step_size=alpha, n_iterations=300)
    history = result.history
    for before, after in pairwise(history):
        gain = alpha * (1 - alpha * big_l / 2) * before["exact_grad_norm"] ** 2
        # 1e-12: float64 rounding of J ~ 4 through a T = 3 recursion
        assert after["expected_return"] - before["expected_return"] >= gain - 1e-12
    assert history[-1]["expected_return"] > history[0]["expected_return"] + 1.0
    assert result.status == "complete" and not result.collapse.collapsed


@pytest.mark.parametrize("name", ["two_state", "chain"])
def test_huge_step_freezes_a_deterministic_suboptimal_plateau(name):
    """alpha = 1e6: one step makes every logit gap ~1e5, so pi is one-hot in float64
    (exp(-1e5) = 0). Then pi(b|s)(Q(s,b) - V(s)) = 0 for every b: the exact gradient is 0
    and the policy never moves again. From uniform, both MDPs' gradients point to the
    myopic action, so the plateau is suboptimal (two_state: stay forever, J = 3 < 4)."""
    mdp = zoo.make(name)
    logits = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    result = tabular_ascent(mdp, logits, step_size=1e6, n_iterations=15)
    later = result.history[1:]
    assert all(h["entropy"] == 0.0 and h["grad_norm"] == 0.0 for h in later)
    assert len({h["expected_return"] for h in later}) == 1  # frozen
    # suboptimal: not even half-way from the uniform policy's J to the best stationary J
    j_uniform, j_stat = result.history[0]["expected_return"], later[0]["stationary_return"]
    assert later[0]["expected_return"] < j_uniform + 0.5 * (j_stat - j_uniform)
    if name == "two_state":
        assert later[0]["expected_return"] == pytest.approx(3.0, abs=1e-12)
    # a real stall: stuck at the end. The 10-iteration window [1..10] is the first whose
    # mean entropy is 0 (iteration 0 is the uniform policy), so onset 1, detected at 10.
    assert result.collapse.collapsed and result.collapse.reason == "stuck"
    assert (result.collapse.iteration, result.collapse.detected_at) == (1, 10)
    assert result.summary()["collapsed"] and result.history[-1]["collapsed"]
    assert not result.history[9]["collapsed"] and result.history[10]["collapsed"]


def test_overflowing_step_diverges_cleanly():
    # Rewards 100 / 200 make the first gradient ~ 19; 1e308 * 19 overflows to inf.
    mdp = zoo.two_state(stay_reward=100.0, far_reward=200.0)
    seen = []
    result = tabular_ascent(mdp, UNIFORM, step_size=1e308, n_iterations=5, callback=seen.append)
    assert result.status == "diverged" and len(result.history) == 1 and seen == result.history
    assert result.history[0]["diverged"]
    assert (result.collapse.reason, result.collapse.iteration) == ("non_finite", 0)
    torch.testing.assert_close(result.final_params["logits"], UNIFORM)  # last finite value


def test_estimator_path_replays_from_seeds_and_stays_in_range():
    mdp = zoo.two_state()
    alpha, n = 0.1, 20
    result = tabular_ascent(mdp, UNIFORM, alpha, 30, gradient="reinforce", n_trajectories=n, seed=5)
    again = tabular_ascent(mdp, UNIFORM, alpha, 30, gradient="reinforce", n_trajectories=n, seed=5)
    other = tabular_ascent(mdp, UNIFORM, alpha, 30, gradient="reinforce", n_trajectories=n, seed=6)
    assert result.history == again.history
    assert result.history != other.history
    # iteration 0's step is exactly alpha times the mean of that iteration's samples
    one = tabular_ascent(mdp, UNIFORM, alpha, 1, gradient="reinforce", n_trajectories=n, seed=5)
    g0 = sample_gradients(mdp, UNIFORM, n, "reinforce", iteration_seed(5, 0)).mean(0)
    torch.testing.assert_close(one.final_params["logits"], UNIFORM + alpha * g0)
    # J is exact at every iteration, so it is always a feasible return: 0 <= J <= J*
    for h in result.history:
        assert 0.0 <= h["expected_return"] <= h["optimal_return"] + 1e-12
        assert 0.0 <= h["p_optimal"] <= 1.0
    baseline = tabular_ascent(mdp, UNIFORM, alpha, 3, gradient="baseline_value", n_trajectories=n)
    assert baseline.status == "complete" and len(baseline.history) == 3


def test_tabular_collapse_config_scale():
    # J_u = 2.125, J* = 4: half-way is 3.0625
    config = tabular_collapse_config(zoo.two_state())
    assert config.poor_return == pytest.approx(3.0625) and config.min_peak == pytest.approx(3.0625)
    assert config.window_episodes == 10  # one exact J per iteration: 10 iterations
    # FrozenLake: half-way to the best STATIONARY return 0.74016, not to J* = 0.74419
    lake = zoo.frozenlake()
    j_uniform = exact.expected_return(lake, torch.zeros(16, 4, dtype=torch.float64))
    assert tabular_collapse_config(lake).poor_return == pytest.approx(
        j_uniform + 0.5 * (exact.best_stationary_return(lake) - j_uniform), abs=1e-12
    )
    # a custom detector is used as given
    detector = CollapseDetector(
        CollapseConfig(window_episodes=2, poor_return=None, min_peak=math.inf)
    )
    result = tabular_ascent(zoo.two_state(), UNIFORM, 1e6, 5, detector=detector)
    assert not result.collapse.collapsed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_size": math.nan}, r"step_size must be finite and > 0, got nan"),
        ({"step_size": math.inf}, r"step_size must be finite and > 0, got inf"),
        ({"step_size": 0.0}, r"step_size must be finite and > 0, got 0.0"),
        ({"n_iterations": 0}, "n_iterations must be a positive integer, got 0"),
        ({"gradient": "magic"}, "unknown gradient 'magic'; choose one of: exact, reinforce, "),
        ({"gradient": "reinforce"}, "n_trajectories must be a positive integer, got None"),
        (
            {"gradient": "reinforce", "n_trajectories": 0},
            "n_trajectories must be a positive integer, got 0",
        ),
        ({"logits0": torch.zeros(3, 2)}, r"logits has shape \[3, 2\]"),
        ({"logits0": torch.tensor([[0.0, math.nan], [0.0, 0.0]])}, "logits\\[0, 1\\] is nan"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs, message):
    arguments = {"mdp": zoo.two_state(), "logits0": UNIFORM, "step_size": 0.1, "n_iterations": 3}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tabular_ascent(**arguments)


def test_iteration_seeds_are_distinct():
    seeds = {iteration_seed(s, k) for s in range(3) for k in range(100)}
    assert len(seeds) == 300 and all(0 <= x < 2**63 for x in seeds)


# --------------------------------------------------------------------------- stationary optimum
def _bandit(rewards: list[float]) -> TabularMDP:
    n = len(rewards)
    return TabularMDP(
        transitions=torch.ones(1, n, 1, dtype=torch.float64),
        rewards=[rewards],
        initial=[1.0],
        horizon=1,
        name="bandit",
    )


def test_best_stationary_return_frozenlake_and_bandit():
    """Slippery FrozenLake 4x4 (T = 100): the best stationary policy reaches 0.74016 while
    the non-stationary optimum is J* = 0.74419 (both measured independently by the user;
    rounding to 5 digits gives the tolerance). A bandit's best stationary arm is argmax r."""
    lake = zoo.frozenlake()
    value, actions = exact.best_stationary_policy(lake)
    assert value == pytest.approx(0.74016, abs=5e-6)
    assert exact.optimal_return(lake) == pytest.approx(0.74419, abs=5e-6)
    assert actions.shape == (16,)
    # the returned actions' own J is the value (a deterministic stationary policy)
    logits = torch.full((16, 4), -1000.0, dtype=torch.float64)
    logits[torch.arange(16), actions] = 0.0
    assert exact.expected_return(lake, logits) == pytest.approx(value, abs=1e-12)
    assert exact.best_stationary_return(_bandit([1.0, 0.9, 0.1])) == pytest.approx(1.0, abs=1e-12)
    for name in ("two_state", "chain", "gridworld"):
        mdp = zoo.make(name)
        assert exact.best_stationary_return(mdp) <= exact.optimal_return(mdp) + 1e-12


def test_bandit_that_climbs_out_of_a_saturated_start_ends_not_collapsed():
    """r = [1, 0.9, 0.1], theta_0 = [0, 0, 6]: pi(arm 2) = 0.995, entropy 0.035 < 0.05 and
    J = 0.105, below half-way (0.833) from the uniform J (0.667) to the best stationary J (1):
    stuck from the start. Exact ascent climbs out (J >= 0.99) and ends near 1, so the run
    ends NOT collapsed; the stuck stretch is remembered in first_onset / stuck_fraction.
    (The old detector kept collapsed=True for ever once it fired at iteration 0.)"""
    mdp = _bandit([1.0, 0.9, 0.1])
    result = tabular_ascent(mdp, [[0.0, 0.0, 6.0]], step_size=0.4, n_iterations=2000)
    history = result.history
    reached = next(h["iteration"] for h in history if h["expected_return"] >= 0.99)
    assert reached == 607  # the user's measurement (alpha = 0.4)
    assert history[-1]["expected_return"] > 0.998
    assert history[9]["collapsed"] and history[0]["entropy"] < 0.05  # stuck at the start
    assert not history[-1]["collapsed"]
    summary = result.summary()
    assert not summary["collapsed"] and summary["collapse_reason"] is None
    assert summary["first_collapse_iteration"] == 0
    assert 0.0 < summary["stuck_fraction"] < reached / len(history)
    assert history[-1]["suboptimality_stationary"] == pytest.approx(
        1.0 - history[-1]["expected_return"], abs=1e-12
    )
    assert history[-1]["suboptimality"] == pytest.approx(
        history[-1]["suboptimality_stationary"], abs=1e-12
    )  # one state, horizon 1: J* = the best stationary return


def test_frozenlake_suboptimality_columns_name_their_optimum():
    lake = zoo.frozenlake()
    result = tabular_ascent(lake, torch.zeros(16, 4, dtype=torch.float64), 1.0, 3)
    h = result.history[-1]
    assert h["optimal_return"] == pytest.approx(0.74419, abs=5e-6)
    assert h["stationary_return"] == pytest.approx(0.74016, abs=5e-6)
    assert h["suboptimality"] - h["suboptimality_stationary"] == pytest.approx(
        h["optimal_return"] - h["stationary_return"], abs=1e-12
    )
