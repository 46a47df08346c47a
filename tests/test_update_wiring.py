"""Issue 10's update rules wired into the training loops (pglab.gym.training.train and
pglab.tabular.ascent.tabular_ascent).

``update="pg"`` must reproduce the results of the code before the wiring bit for bit:
``tests/data/pg_baseline.json`` holds the values those exact runs produced at commit
cd01170 (floats as ``float.hex``, final parameters as a SHA-256 of their bytes), so the
comparison is exact equality, no tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from pglab.checks import ConfigError
from pglab.gym import policies, updates
from pglab.gym.training import RECORDED_EXTRAS, TrainConfig, train
from pglab.tabular import zoo
from pglab.tabular.ascent import tabular_ascent

BASELINE = json.loads((Path(__file__).parent / "data" / "pg_baseline.json").read_text())


def _cartpole(optimizer: str = "sgd", **changes):
    settings = dict(n_trajectories=4, step_size=0.01, max_iterations=6, variance_every=2, seed=3)
    config = TrainConfig(**{**settings, "optimizer": optimizer, **changes})
    collector = config.make_collector()
    policy = policies.make_policy(
        "mlp", collector.obs_dim, collector.n_actions, hidden_sizes=(16, 16), seed=3
    )
    return train(config, policy, collector)


def _hex(history, key):
    return [float(row[key]).hex() for row in history]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_update_pg_reproduces_the_cartpole_results_before_the_wiring_bit_for_bit(optimizer):
    result = _cartpole(optimizer)
    expected = BASELINE[f"cartpole_{optimizer}"]
    for key in ("return_mean", "loss", "grad_norm", "entropy", "kl", "grad_variance"):
        assert _hex(result.history, key) == expected[key], key
    params = b"".join(v.numpy().tobytes() for v in result.final_params.values())
    assert hashlib.sha256(params).hexdigest() == expected["params"]


@pytest.mark.parametrize("gradient", ["exact", "reinforce"])
def test_update_pg_reproduces_the_tabular_ascent_before_the_wiring_bit_for_bit(gradient):
    mdp = zoo.make("chain")
    logits0 = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    result = tabular_ascent(mdp, logits0, 1.0, 15, gradient=gradient, n_trajectories=8, seed=5)
    expected = BASELINE[f"ascent_{gradient}"]
    for key in ("expected_return", "entropy", "grad_norm", "p_optimal"):
        assert _hex(result.history, key) == expected[key], key
    digest = hashlib.sha256(result.final_params["logits"].numpy().tobytes()).hexdigest()
    assert digest == expected["params"]


def test_pg_records_the_step_norm_of_theta_plus_alpha_ghat():
    """With sgd the step is alpha ghat, so ||step|| = alpha ||ghat|| up to float32 rounding
    of theta + alpha ghat (relative 1e-5: float32's eps 1.2e-7 times ~P^0.5 accumulated
    per-coordinate roundings of a 386-parameter net is ~2e-6)."""
    result = _cartpole()
    for row in result.history:
        assert row["step_norm"] == pytest.approx(0.01 * row["grad_norm"], rel=1e-5)
        assert all(math.isnan(row[name]) for name in RECORDED_EXTRAS)


def test_trpo_run_records_a_kl_at_most_delta_at_every_accepted_step():
    """TRPO's line search accepts a step only if the batch's mean KL is <= delta, and the
    KL train() records is that same mean over the batch's states: <= delta exactly."""
    delta = 0.01
    result = _cartpole(update="trpo", step_size=delta)
    assert result.status == "complete"
    for row in result.history:
        assert row["kl"] <= delta
        assert row["accepted"] in (0.0, 1.0) and row["backtracks"] >= 0
        if row["accepted"] == 1.0:
            assert row["step_norm"] > 0 and row["kl"] > 0
        else:
            assert row["step_norm"] == 0.0
    assert any(row["accepted"] == 1.0 for row in result.history)


@pytest.mark.parametrize("rule", ["npg", "ppo"])
def test_npg_and_ppo_runs_record_kl_and_step_norm(rule):
    result = _cartpole(update=rule, step_size=0.01)
    assert result.status == "complete" and len(result.history) == 6
    for row in result.history:
        assert math.isfinite(row["kl"]) and row["kl"] >= 0
        assert row["step_norm"] > 0
    if rule == "ppo":
        assert all(0.0 <= row["clip_fraction"] <= 1.0 for row in result.history)


def test_ppo_with_one_plain_sgd_epoch_and_no_clipping_equals_pg():
    """PPOConfig(clip -> inf, 1 epoch, 1 minibatch, sgd) is theta + alpha ghat (its
    gradient at theta_old is ghat): same parameters as update=pg to float32 round-off of
    different summation orders (atol 1e-6 on weights of size ~0.1-1)."""
    config = updates.PPOConfig(clip=1e30, epochs=1, minibatches=1, optimizer="sgd")
    pg = _cartpole(max_iterations=1)
    ppo = _cartpole(max_iterations=1, update="ppo", update_config=config)
    for name, value in pg.final_params.items():
        torch.testing.assert_close(ppo.final_params[name], value, rtol=0, atol=1e-6)


def test_injected_nan_with_a_rule_ends_the_run_as_diverged_with_results_kept():
    result = _cartpole(update="trpo", inject_nan_at=2)
    assert result.status == "diverged"
    assert len(result.history) == 3
    assert result.history[-1]["diverged"] and math.isnan(result.history[-1]["step_norm"])
    assert not result.history[1]["diverged"]


@pytest.mark.parametrize(
    ("changes", "parts"),
    [
        ({"update": "trp0"}, ("update", "'trp0'")),
        ({"update": "npg", "optimizer": "adam"}, ("optimizer='adam'", "update='pg' only")),
        ({"update_config": updates.NPGConfig()}, ("update_config", "update='pg' takes none")),
        ({"update": "trpo", "update_config": updates.NPGConfig()}, ("update_config",)),
    ],
)
def test_bad_update_settings_are_refused_before_any_work(changes, parts):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**changes).validate()
    for part in parts:
        assert part in str(error.value), str(error.value)
