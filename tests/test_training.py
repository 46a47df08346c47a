"""pglab.gym.training: the REINFORCE loop on CartPole-v1.

Facts used below:
* The uniform random policy on CartPole-v1 returns mu_0 = 22.09 per episode with
  standard deviation 11.7 (measured once on 20 000 episodes: standard error 0.08, so the
  value is known to +-0.3 at 4 standard errors). ``UNIFORM_RETURN`` below is that mean.
* A saturated softmax (pi(a|s) = 1 in float32) has score grad log pi = e_a - pi = 0, so
  plain gradient ascent can never leave it: an absurd step size that saturates the policy
  in one update freezes it there.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise

import numpy as np
import pytest
import torch

from pglab.checks import FLOAT32_MAX, ConfigError
from pglab.collapse import CollapseConfig, CollapseDetector, CollapseStatus
from pglab.estimators import step_weights
from pglab.gym.gradients import flat_grad, surrogate_loss
from pglab.gym.policies import make_policy
from pglab.gym.rollouts import RolloutCollector
from pglab.gym.training import MAX_STEP_SIZE, TrainConfig, TrainResult, train

UNIFORM_RETURN = 22.09
METRIC_KEYS = {
    "iteration",
    "env_steps",
    "env_steps_total",
    "wall_time",
    "sps",
    "return_mean",
    "return_median",
    "return_min",
    "return_max",
    "length_mean",
    "loss",
    "grad_norm",
    "entropy",
    "kl",
    "step_norm",  # issue 10: ||theta_{k+1} - theta_k||_2, and the update rules' diagnostics
    "backtracks",
    "accepted",
    "clip_fraction",
    "frac_deterministic",
    "grad_variance",
    "collapsed",
    "diverged",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: one intra-op thread is several times faster on a shared 2-core box,
    # and makes float reductions (hence the seeded runs) independent of the core count.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _run(config: TrainConfig, kind: str = "mlp", seed: int = 0, **kwargs) -> TrainResult:
    policy = make_policy(kind, obs_dim=4, n_actions=2, seed=seed)
    with RolloutCollector(config.env_id, config.n_trajectories, seed=seed) as collector:
        return train(config, policy, collector, **kwargs)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_trajectories": 0}, "n_trajectories must be a positive integer, got 0"),
        ({"step_size": "abc"}, "step_size must be a number, got 'abc'"),
        ({"gamma": "abc"}, "gamma must be a number, got 'abc'"),
        ({"max_env_steps": "abc"}, "max_env_steps must be a positive integer, got 'abc'"),
        ({"variance_every": 1.5}, "variance_every must be an integer, got 1.5"),
        ({"n_trajectories": -3}, "n_trajectories must be a positive integer, got -3"),
        ({"step_size": math.nan}, r"step_size must be finite and in \(0, 3.40282e\+38\], got nan"),
        ({"step_size": math.inf}, r"step_size must be finite and in \(0, 3.40282e\+38\], got inf"),
        ({"step_size": 0.0}, r"step_size must be finite and in \(0, 3.40282e\+38\], got 0.0"),
        ({"step_size": -0.1}, r"step_size must be finite and in \(0, 3.40282e\+38\], got -0.1"),
        ({"estimator": "vanilla"}, "unknown estimator 'vanilla'; choose one of: reinforce, "),
        ({"estimator": "baseline_value"}, "estimator='baseline_value' needs exact tabular values"),
        (
            {"optimizer": "lbfgs"},
            "unknown optimizer 'lbfgs'; choose one of: sgd, momentum, adam, rmsprop, adagrad",
        ),
        ({"gamma": 1.5}, r"gamma must be finite and in \[0, 1\], got 1.5"),
        ({"momentum": 1.0}, r"momentum must be finite and in \[0, 1\), got 1.0"),
        ({"max_iterations": None, "max_env_steps": None}, "set at least one budget"),
        ({"max_iterations": 0}, "max_iterations must be a positive integer, got 0"),
        (
            {"deterministic_threshold": 0.0},
            r"deterministic_threshold must be finite and in \(0, 1\]",
        ),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"inject_nan_at": -1}, "inject_nan_at must be an integer >= 0, got -1"),
        ({"stop_on_collapse": "yes"}, "stop_on_collapse must be true or false, got 'yes'"),
    ],
)
def test_validate_names_field_and_value(changes, message):
    config = TrainConfig(**changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    # train() validates before touching the policy or the collector
    with pytest.raises(ValueError, match=message):
        train(config, policy=None, collector=None)


# --------------------------------------------------------------------------- mechanics
def test_one_sgd_step_is_theta_plus_alpha_ghat():
    """theta_1 = theta_0 + alpha ghat_N with ghat_N = (1/N) sum_i R_i sum_t grad log pi,
    recomputed independently from the identical (same seeds) batch."""
    config = TrainConfig(n_trajectories=4, step_size=0.05, max_iterations=1, seed=3)
    policy = make_policy("linear", 4, 2, seed=1)
    theta_0 = [p.detach().clone() for p in policy.parameters()]
    reference = make_policy("linear", 4, 2, seed=1)
    with RolloutCollector("CartPole-v1", 4, seed=7) as collector:
        batch = collector.collect(reference, torch.Generator().manual_seed(3))
    weights = step_weights(batch.rewards, batch.mask, "reinforce")
    surrogate_loss(reference, batch, weights).backward()
    ghat = -flat_grad(reference.parameters())

    with RolloutCollector("CartPole-v1", 4, seed=7) as collector:
        result = train(config, policy, collector)
    theta_1 = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    expected = torch.cat([p.reshape(-1) for p in theta_0]) + config.step_size * ghat
    torch.testing.assert_close(theta_1, expected, rtol=0, atol=1e-6)
    assert result.history[0]["grad_norm"] == pytest.approx(float(ghat.norm()), rel=1e-6)
    assert result.history[0]["env_steps"] == int(batch.lengths.sum())
    assert result.history[0]["return_mean"] == pytest.approx(float(batch.returns.mean()))


def test_metrics_budget_variance_and_callback():
    seen: list[dict] = []
    config = TrainConfig(
        n_trajectories=6,
        step_size=1e-4,
        max_iterations=None,
        max_env_steps=600,
        variance_every=2,
        seed=1,
    )
    result = _run(config, callback=seen.append)
    history = result.history
    assert seen == history and result.status == "complete"
    assert all(set(h) == METRIC_KEYS for h in history)
    # budget: a new iteration starts only while env_steps < 600; the last one may overshoot
    steps = [h["env_steps"] for h in history]
    assert all(s < 600 for s in steps[:-1]) and steps[-1] >= 600
    assert all(b > a for a, b in pairwise(steps))
    assert all(h["env_steps_total"] >= h["env_steps"] for h in history)
    for h in history:
        assert 0.0 <= h["entropy"] <= math.log(2) + 1e-6
        assert h["kl"] >= -1e-7  # KL >= 0 up to float32 rounding
        assert 0.0 <= h["frac_deterministic"] <= 1.0
        assert h["return_min"] <= h["return_median"] <= h["return_max"]
        assert h["return_min"] <= h["return_mean"] <= h["return_max"]
        measured = h["iteration"] % 2 == 0
        assert math.isfinite(h["grad_variance"]) == measured
    summary = result.summary()
    assert summary["iterations"] == len(history) and summary["env_steps"] == steps[-1]
    assert not summary["diverged"]


def test_single_episode_batches_train_with_variance_left_unmeasured():
    """A sample variance needs two episodes: with N = 1 grad_variance is NaN, not an error."""
    config = TrainConfig(n_trajectories=1, step_size=1e-4, max_iterations=4, variance_every=2)
    result = _run(config)
    assert result.status == "complete" and len(result.history) == 4
    assert all(math.isnan(h["grad_variance"]) for h in result.history)


def test_runs_are_reproducible_and_optimizers_run():
    config = TrainConfig(n_trajectories=5, step_size=1e-3, max_iterations=4, seed=2)
    a, b = _run(config), _run(config)
    assert [h["return_mean"] for h in a.history] == [h["return_mean"] for h in b.history]
    for name, value in a.final_params.items():
        assert torch.equal(value, b.final_params[name])
    for optimizer in ("momentum", "adam"):
        result = _run(
            TrainConfig(n_trajectories=5, step_size=1e-3, max_iterations=3, optimizer=optimizer)
        )
        assert result.status == "complete" and len(result.history) == 3


# --------------------------------------------------------------------------- learning
def test_sensible_step_size_beats_the_uniform_policy():
    """Plain SGD REINFORCE, N = 10, alpha = 1e-4, 150 iterations (tanh MLP 64x64).

    Claim: the trained policy is better than uniform. Test: evaluate it on 100 fresh
    episodes (independent environment seed and action generator) and compute
    z = (mean - mu_0) / (sd / sqrt(100)). Under H0 "mean return <= mu_0 = 22.09" the CLT
    gives P(z > 5) < 3e-7; we require z > 5. (Seeds 0-4 all pass with z between 8 and 30;
    the untrained policy stays near mu_0.) Also the run itself must not collapse or
    diverge, and the last 10 iterations' mean return must be at least twice mu_0.
    """
    config = TrainConfig(n_trajectories=10, step_size=1e-4, max_iterations=150, seed=0)
    policy = make_policy("mlp", 4, 2, seed=0)
    with RolloutCollector("CartPole-v1", 10, seed=0) as collector:
        result = train(config, policy, collector)
    with RolloutCollector("CartPole-v1", 100, seed=10_000) as evaluation:
        returns = evaluation.collect(policy, torch.Generator().manual_seed(99)).returns
    returns = returns.double().numpy()
    z = (returns.mean() - UNIFORM_RETURN) / (returns.std(ddof=1) / np.sqrt(len(returns)))
    assert z > 5, f"mean {returns.mean():.1f} over 100 episodes, z = {z:.2f}"
    summary = result.summary()
    assert summary["final_return"] > 2 * UNIFORM_RETURN
    assert result.status == "complete" and not result.collapse.collapsed


def test_absurd_step_size_is_detected():
    """alpha = 1e4 saturates the softmax after one update; the gradient then vanishes and
    the policy is frozen near-deterministic at a poor return: stuck at the end of the run
    (or diverged)."""
    config = TrainConfig(n_trajectories=10, step_size=1e4, max_iterations=30, seed=0)
    result = _run(config)
    assert result.collapse.collapsed
    assert result.collapse.reason in ("stuck", "non_finite")
    summary = result.summary()
    assert summary["collapsed"] and summary["collapse_reason"] == result.collapse.reason
    if result.status != "diverged":
        # the frozen plateau: zero entropy, return at or below random play (22.1)
        late = result.history[-10:]
        assert all(h["entropy"] < 0.05 for h in late)
        assert summary["final_return"] <= 22.1
        # the 100-episode window (10 iterations at N = 10) is stuck from then to the end
        assert result.history[-1]["collapsed"]
        assert summary["collapse_iteration"] == summary["first_collapse_iteration"]
        assert summary["stuck_fraction"] == pytest.approx(
            (len(result.history) - result.collapse.detected_at) / len(result.history)
        )
    # the same run with a sensible step stays healthy over the same iterations
    healthy = _run(TrainConfig(n_trajectories=10, step_size=1e-4, max_iterations=30, seed=0))
    assert not healthy.collapse.collapsed


# --------------------------------------------------------------------------- divergence
def test_injected_nan_gradient_ends_run_cleanly():
    seen: list[int] = []
    config = TrainConfig(n_trajectories=4, step_size=1e-3, max_iterations=20, inject_nan_at=3)
    result = _run(config, callback=lambda m: seen.append(m["iteration"]))
    assert result.status == "diverged"
    assert [h["iteration"] for h in result.history] == [0, 1, 2, 3] and seen == [0, 1, 2, 3]
    assert [h["diverged"] for h in result.history] == [False, False, False, True]
    assert result.collapse == CollapseStatus(
        True, 3, "non_finite", 3, first_onset=3, stuck_iterations=1
    )
    assert math.isnan(result.history[-1]["grad_norm"]) and math.isnan(result.history[-1]["kl"])
    # the NaN step was not applied: parameters are the last finite ones
    assert all(torch.isfinite(v).all() for v in result.final_params.values())
    summary = result.summary()
    assert summary["diverged"] and summary["collapse_reason"] == "non_finite"
    assert summary["collapsed"] and summary["collapse_iteration"] == 3
    assert summary["iterations"] == 4 and math.isfinite(summary["final_return"])
    assert result.history[-1]["collapsed"] and not result.history[2]["collapsed"]


def test_step_size_above_float32_max_is_refused_before_any_work():
    """Issue 9: step_size=1e39 passed validation and crashed in p.add_ (the float32
    parameters cannot take the step), losing the run. Now a one-line config error."""
    message = re.escape("step_size must be finite and in (0, 3.40282e+38], got 1e+39")
    with pytest.raises(ConfigError, match=message):
        TrainConfig(step_size=1e39).validate()
    policy = make_policy("linear", 4, 2, seed=0)
    before = [p.detach().clone() for p in policy.parameters()]
    with RolloutCollector("CartPole-v1", 4, seed=0) as collector:
        with pytest.raises(ConfigError, match=message):
            train(TrainConfig(n_trajectories=4, step_size=1e39), policy, collector)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_adam_step_size_bound_accounts_for_its_bias_correction():
    """Adam's first step is alpha / (1 - beta1) = 10 alpha: at alpha = 1e38 it would overflow
    float32 in Adam's own update (a crash, not a divergence), so its bound is a tenth."""
    assert MAX_STEP_SIZE["adam"] == 3.4e37  # rmsprop/adagrad: tests/test_update_optimizers.py
    assert MAX_STEP_SIZE["sgd"] == MAX_STEP_SIZE["momentum"] == FLOAT32_MAX
    TrainConfig(step_size=1e38, optimizer="momentum").validate()
    with pytest.raises(
        ConfigError, match=re.escape("step_size must be finite and in (0, 3.4e+37], got 1e+38")
    ):
        TrainConfig(step_size=1e38, optimizer="adam").validate()


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_largest_step_size_diverges_cleanly_with_results_kept(optimizer):
    """The largest accepted step overflows the parameters (or, with Adam, whose steps are
    ~alpha, makes the logits non-finite): the run ends "diverged" with its history, never
    with an exception."""
    seen: list[int] = []
    step_size = MAX_STEP_SIZE[optimizer]
    config = TrainConfig(
        n_trajectories=4, step_size=step_size, optimizer=optimizer, max_iterations=20, seed=1
    )
    result = _run(config, kind="linear", callback=lambda m: seen.append(m["iteration"]))
    assert result.status == "diverged"
    assert result.history and seen == [h["iteration"] for h in result.history]
    assert result.history[-1]["diverged"] and not any(h["diverged"] for h in result.history[:-1])
    assert result.collapse.reason == "non_finite"
    summary = result.summary()
    assert summary["diverged"] and summary["iterations"] == len(result.history)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_step_that_overflows_the_parameter_dtype_ends_the_run_as_diverged(optimizer):
    """A float16 policy cannot take a step of 1e5 (float16 tops out at 65504): torch raises
    in p.add_, which used to escape train() and lose the run (SGD: the parameters stay as
    they were); Adam's update overflows to inf instead (non-finite parameters)."""
    policy = make_policy("linear", 4, 2, seed=0, dtype=torch.float16)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    config = TrainConfig(
        n_trajectories=4, step_size=1e5, optimizer=optimizer, max_iterations=5, seed=1
    )
    with RolloutCollector("CartPole-v1", 4, seed=0) as collector:
        result = train(config, policy, collector)
    assert result.status == "diverged" and len(result.history) == 1
    assert result.history[0]["diverged"] and math.isnan(result.history[0]["kl"])
    assert (result.collapse.reason, result.collapse.iteration) == ("non_finite", 0)
    if optimizer == "sgd":
        assert all(torch.equal(result.final_params[k], v) for k, v in before.items())


def test_collector_for_another_env_is_refused():
    """Issue 9: TrainConfig(env_id="Acrobot-v1") with a CartPole collector silently trained
    CartPole while the config recorded Acrobot."""
    policy = make_policy("linear", 4, 2, seed=0)
    config = TrainConfig(env_id="Acrobot-v1", n_trajectories=4, max_iterations=2)
    with RolloutCollector("CartPole-v1", 4, seed=0) as collector:
        with pytest.raises(
            ConfigError,
            match=re.escape("collector.env_id='CartPole-v1' but config.env_id='Acrobot-v1'"),
        ):
            train(config, policy, collector)


def test_collector_with_another_n_is_refused():
    """N has one owner, the config: a collector playing another number of episodes per
    batch would make the estimator, the recorded N and the collapse window disagree."""
    policy = make_policy("linear", 4, 2, seed=0)
    config = TrainConfig(n_trajectories=10, max_iterations=2)
    with RolloutCollector("CartPole-v1", 4, seed=0) as collector:
        with pytest.raises(
            ConfigError,
            match=re.escape("collector.n_trajectories=4 but config.n_trajectories=10"),
        ):
            train(config, policy, collector)
    with pytest.raises(ConfigError, match=re.escape("collector.env_id=None")):
        train(config, policy, collector=None)


def test_make_collector_builds_the_config_s_collector():
    config = TrainConfig(env_id="CartPole-v1", n_trajectories=3, max_iterations=3, seed=5)
    with config.make_collector(max_episode_steps=200) as collector:
        assert (collector.env_id, collector.n_trajectories) == ("CartPole-v1", 3)
        assert (collector.seed, collector.max_episode_steps) == (5, 200)
        made = train(config, make_policy("linear", 4, 2, seed=0), collector)
    with RolloutCollector("CartPole-v1", 3, seed=5, max_episode_steps=200) as collector:
        by_hand = train(config, make_policy("linear", 4, 2, seed=0), collector)
    assert all(
        torch.equal(made.final_params[k], by_hand.final_params[k]) for k in made.final_params
    )
    with config.make_collector(seed=9) as collector:
        assert collector.seed == 9


def test_nan_parameter_set_from_outside_is_caught_before_sampling():
    policy = make_policy("linear", 4, 2, seed=0)

    def poison(metrics: dict) -> None:
        if metrics["iteration"] == 1:
            with torch.no_grad():
                policy.output_layer.weight[0, 0] = math.nan

    config = TrainConfig(n_trajectories=4, step_size=1e-3, max_iterations=10)
    detector = CollapseDetector(CollapseConfig())
    with RolloutCollector("CartPole-v1", 4, seed=0) as collector:
        result = train(config, policy, collector, detector=detector, callback=poison)
    assert result.status == "diverged" and len(result.history) == 2
    assert (result.collapse.reason, result.collapse.iteration) == ("non_finite", 2)


def test_summary_definitions():
    history = [
        {"return_mean": float(r), "env_steps": 10 * (k + 1)} for k, r in enumerate(range(12))
    ]
    result = TrainResult(history, "complete", CollapseStatus())
    summary = result.summary()
    assert summary["final_return"] == pytest.approx(np.mean(range(2, 12)))  # last 10
    assert summary["auc"] == pytest.approx(5.5)  # mean over all 12 iterations
    assert summary["best_return"] == 11.0 and summary["env_steps"] == 120
    empty = TrainResult([], "diverged", CollapseStatus(True, 0, "non_finite", 0)).summary()
    assert math.isnan(empty["final_return"]) and empty["iterations"] == 0


def test_summary_reports_the_verdict_at_the_end_and_the_history_of_the_run():
    """A run that was stuck and climbed out: not collapsed at the end, its first onset and
    stuck fraction kept."""
    history = [{"return_mean": 10.0, "env_steps": k} for k in range(10)]
    status = CollapseStatus(False, None, None, None, first_onset=2, stuck_iterations=4, dips=1)
    summary = TrainResult(history, "complete", status).summary()
    assert not summary["collapsed"] and summary["collapse_iteration"] is None
    assert summary["collapse_reason"] is None and summary["first_collapse_iteration"] == 2
    assert summary["stuck_fraction"] == pytest.approx(0.4) and summary["dips"] == 1
    assert summary["dropped_at_end"] is False


def test_detector_window_counts_episodes_of_the_batch():
    """The trainer feeds N episodes per iteration: with a 40-episode window and N = 4 the
    window is full after 10 iterations, so the absurd-step plateau (frozen from iteration 1)
    is first flagged at iteration 10 with onset 1."""
    detector = CollapseDetector(CollapseConfig(window_episodes=40))
    config = TrainConfig(n_trajectories=4, step_size=1e4, max_iterations=15, seed=0)
    result = _run(config, detector=detector)
    assert result.status == "complete"
    flags = [h["collapsed"] for h in result.history]
    assert flags == [False] * 10 + [True] * 5
    assert (result.collapse.iteration, result.collapse.detected_at) == (1, 10)
