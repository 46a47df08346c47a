"""The adaptive optimisers of ``update=pg`` (issue 10): ``optimizer=rmsprop|adagrad``.

Their first step has a closed form in the first gradient g = grad L (all state starts at
zero, torch defaults):

* Adagrad: G = g^2, so theta_1 = theta_0 - alpha g / (|g| + 1e-10): every coordinate moves
  by alpha sign(g) (up to the eps);
* RMSprop: v = (1 - 0.99) g^2, so theta_1 = theta_0 - alpha g / (0.1 |g| + 1e-8): every
  coordinate moves by 10 alpha sign(g).

The first batch is re-drawn here exactly as ``train`` draws it (the config's collector and
a generator seeded with the config's seed), so the check is on the real wiring. Parameters
are float32: theta_1 is compared at float32 round-off (1e-6 relative to |theta| + |step|).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from pglab_jobs import config as job_config

from pglab.checks import FLOAT32_MAX, ConfigError
from pglab.estimators import step_weights
from pglab.gym.gradients import surrogate_loss
from pglab.gym.policies import make_policy
from pglab.gym.training import MAX_STEP_SIZE, OPTIMIZERS, TrainConfig, train

ALPHA = 1e-3
CONF = Path(__file__).resolve().parents[1] / "conf"


def _first_step(optimizer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """``(theta_0, theta_1, g)`` flat, and the run's first history row."""
    config = TrainConfig(n_trajectories=3, step_size=ALPHA, optimizer=optimizer, max_iterations=1)
    collector = config.make_collector()
    policy = make_policy("mlp", collector.obs_dim, collector.n_actions, (8, 8), seed=1)
    theta0 = torch.cat([p.detach().clone().flatten() for p in policy.parameters()])
    # the batch train() draws first: same collector, same generator seed
    replay = make_policy("mlp", collector.obs_dim, collector.n_actions, (8, 8), seed=1)
    batch = config.make_collector().collect(replay, torch.Generator().manual_seed(config.seed))
    weights = torch.as_tensor(step_weights(batch.rewards, batch.mask, config.estimator))
    surrogate_loss(replay, batch, weights).backward()
    grad = torch.cat([p.grad.flatten() for p in replay.parameters()])
    result = train(config, policy, collector)
    theta1 = torch.cat([v.flatten() for v in result.final_params.values()])
    return theta0, theta1, grad, result.history[0]


@pytest.mark.parametrize(
    ("optimizer", "denominator"),
    [
        ("adagrad", lambda g: g.abs() + 1e-10),  # sqrt(G) + eps, G = g^2
        ("rmsprop", lambda g: (0.01 * g * g).sqrt() + 1e-8),  # sqrt(v) + eps, v = 0.01 g^2
    ],
)
def test_first_adaptive_step_is_the_closed_form_of_the_first_gradient(optimizer, denominator):
    theta0, theta1, grad, row = _first_step(optimizer)
    expected = theta0 - ALPHA * grad / denominator(grad)
    tolerance = 1e-6 * (theta0.abs() + 10 * ALPHA)
    assert torch.all((theta1 - expected).abs() <= tolerance)
    # the recorded step norm is the norm of that step
    assert math.isclose(row["step_norm"], float((theta1 - theta0).norm()), rel_tol=1e-6)


def test_adagrad_moves_every_coordinate_by_at_most_alpha_and_rmsprop_by_at_most_ten_alpha():
    """The bounds behind :data:`MAX_STEP_SIZE` (Adagrad alpha, RMSprop 10 alpha per step)."""
    for optimizer, bound in (("adagrad", ALPHA), ("rmsprop", 10 * ALPHA)):
        theta0, theta1, _, _ = _first_step(optimizer)
        step = (theta1 - theta0).abs()
        assert float(step.max()) <= bound * (1 + 1e-4)  # float32 round-off of theta_1 - theta_0
        assert float(step.max()) >= bound * (1 - 1e-4)  # a coordinate with |g| >> eps moved fully


@pytest.mark.parametrize("optimizer", ["rmsprop", "adagrad"])
def test_adaptive_optimisers_run_to_the_budget_with_finite_rows(optimizer):
    config = TrainConfig(n_trajectories=2, step_size=0.01, optimizer=optimizer, max_iterations=4)
    collector = config.make_collector()
    policy = make_policy("linear", collector.obs_dim, collector.n_actions, seed=0)
    result = train(config, policy, collector)
    assert result.status == "complete" and len(result.history) == 4
    for row in result.history:
        assert math.isfinite(row["kl"]) and row["kl"] >= 0
        assert math.isfinite(row["step_norm"]) and row["step_norm"] > 0


def test_step_size_bound_per_adaptive_optimiser():
    assert {"rmsprop", "adagrad"} <= set(OPTIMIZERS)
    assert MAX_STEP_SIZE["rmsprop"] == MAX_STEP_SIZE["adam"] < FLOAT32_MAX / 10
    assert MAX_STEP_SIZE["adagrad"] == FLOAT32_MAX
    with pytest.raises(ConfigError, match=r"step_size must be finite and in \(0, 3.4e\+37\]"):
        TrainConfig(step_size=1e38, optimizer="rmsprop").validate()
    TrainConfig(step_size=1e38, optimizer="adagrad").validate()


@pytest.mark.parametrize(
    ("overrides", "parts"),
    [
        (("optimizer=adagrd",), ("optimizer", "'adagrd'", "did you mean 'adagrad'")),
        (("update=npg", "optimizer=rmsprop"), ("optimizer=rmsprop", "update=pg only")),
        (("update=trpo", "optimizer=adagrad"), ("optimizer=adagrad", "update=pg only")),
        (("step_size=1e38", "optimizer=rmsprop"), ("step_size", "1e+38", "optimizer=rmsprop")),
    ],
)
def test_bad_optimiser_settings_are_refused_in_one_line_naming_the_field(overrides, parts):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose("cartpole", overrides=list(overrides))
    with pytest.raises(ConfigError) as error:
        job_config.VALIDATORS["cartpole"][1](composed)
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adagrad"])
def test_the_cartpole_app_accepts_the_adaptive_optimisers(optimizer):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose("cartpole", overrides=[f"optimizer={optimizer}", "step_size=0.1"])
    settings = job_config.VALIDATORS["cartpole"][1](composed)
    assert settings.optimizer == optimizer


def test_stepsize_optimizers_preset_puts_each_adaptive_optimiser_on_the_stepsize_grid():
    """experiment=stepsize_optimizers: 3 optimisers x stepsize_grid's N, steps, seeds and
    budget (so its cells sit beside the update rules' in the report), each a valid job."""
    from pglab_jobs import cli

    validate = job_config.VALIDATORS["cartpole"][1]
    cli.check_command_line("cartpole", validate, ["-m", "experiment=stepsize_optimizers"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        mine = compose("cartpole", ["experiment=stepsize_optimizers"], return_hydra_config=True)
        grid = compose("cartpole", ["experiment=stepsize_grid"], return_hydra_config=True)
    params, reference = mine.hydra.sweeper.params, grid.hydra.sweeper.params
    assert str(params.optimizer).split(",") == ["adam", "rmsprop", "adagrad"]
    for key in ("n_trajectories", "step_size", "seed"):
        assert str(params[key]) == str(reference[key]), key
    for optimizer in ("adam", "rmsprop", "adagrad"):
        for step in str(params.step_size).split(","):
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                job = compose(
                    "cartpole",
                    [
                        "experiment=stepsize_optimizers",
                        f"optimizer={optimizer}",
                        f"step_size={step}",
                    ],
                )
            settings = validate(job)
            assert settings.update.name == "pg" and settings.optimizer == optimizer
            assert settings.budget.env_steps == grid.budget.env_steps == 50000
