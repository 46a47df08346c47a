"""Issue 10's update rules wired into the training loops (pglab.gym.training.train and
pglab.tabular.ascent.tabular_ascent).

``update="pg"`` must reproduce the results of the code before the wiring bit for bit:
``tests/data/pg_baseline.json`` holds the values those exact runs produced at commit
cd01170 (floats as ``float.hex``, final parameters as a SHA-256 of their bytes), so the
comparison is exact equality, no tolerance. Float bits of torch/MKL arithmetic depend on
the CPU (an AMD EPYC gives other last bits than the machine of the first baseline, for
cd01170's code as for today's), so the file holds one baseline per platform, each computed
by cd01170's own code there, and a run must equal one of them in every value.
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


def _equals_a_baseline(name: str, got: dict[str, object]) -> None:
    """``got`` equals, in every key, the baseline ``name`` of one recorded platform."""
    misses = []
    for baseline in BASELINE["baselines"]:
        want = baseline["values"][name]
        differing = sorted(key for key in want if got[key] != want[key])
        if not differing:
            return
        misses.append(f"{baseline['platform']}: {differing}")
    raise AssertionError(
        f"{name} equals no recorded cd01170 baseline; differs in " + "; ".join(misses)
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_update_pg_reproduces_the_cartpole_results_before_the_wiring_bit_for_bit(optimizer):
    result = _cartpole(optimizer)
    got: dict[str, object] = {
        key: _hex(result.history, key)
        for key in ("return_mean", "loss", "grad_norm", "entropy", "kl", "grad_variance")
    }
    params = b"".join(v.numpy().tobytes() for v in result.final_params.values())
    got["params"] = hashlib.sha256(params).hexdigest()
    _equals_a_baseline(f"cartpole_{optimizer}", got)


@pytest.mark.parametrize("gradient", ["exact", "reinforce"])
def test_update_pg_reproduces_the_tabular_ascent_before_the_wiring_bit_for_bit(gradient):
    mdp = zoo.make("chain")
    logits0 = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    result = tabular_ascent(mdp, logits0, 1.0, 15, gradient=gradient, n_trajectories=8, seed=5)
    got: dict[str, object] = {
        key: _hex(result.history, key)
        for key in ("expected_return", "entropy", "grad_norm", "p_optimal")
    }
    got["params"] = hashlib.sha256(result.final_params["logits"].numpy().tobytes()).hexdigest()
    _equals_a_baseline(f"ascent_{gradient}", got)


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


# ---------------------------------------------------------------------------------------
# Tabular ascent with update rules
# ---------------------------------------------------------------------------------------
def test_tabular_trpo_steps_never_exceed_delta_in_exact_kl():
    """Exact TRPO accepts a step only if its exact mean KL is <= delta, and the recorded
    kl is natural.mean_kl of (theta_k, theta_{k+1}) recomputed independently."""
    from pglab.tabular import natural

    mdp = zoo.make("chain")
    logits0 = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    delta = 0.05
    result = tabular_ascent(mdp, logits0, delta, 25, update="trpo")
    assert result.status == "complete"
    accepted = [row for row in result.history if row["accepted"] == 1.0]
    assert len(accepted) >= 5 and result.history[0]["accepted"] == 1.0
    # steps are refused only once no step improves J: at the best stationary return
    # (chain: 60.4288), to the 1e-6 a line search of 10 halvings resolves here
    refused = [row for row in result.history if row["accepted"] == 0.0]
    assert all(abs(row["suboptimality_stationary"]) < 1e-6 for row in refused)
    for row in result.history:
        assert row["kl"] <= delta
        if row["accepted"] == 0.0:
            assert row["step_norm"] == 0.0 and row["kl"] == 0.0
    # the recorded KL of the first step is the exact mean KL between theta_0 and theta_1
    first = tabular_ascent(mdp, logits0, delta, 1, update="trpo")
    theta1 = first.final_params["logits"]
    assert first.history[0]["kl"] == natural.mean_kl(mdp, logits0, theta1)
    # and TRPO moves J up monotonically (every accepted step improves the exact J)
    returns = [row["expected_return"] for row in result.history]
    assert all(b >= a for a, b in zip(returns, returns[1:], strict=False))


def test_tabular_npg_iterates_equal_natural_exact_iterates():
    """update=npg in tabular_ascent is natural.npg_step: the iterates equal
    natural.exact_iterates(rule='npg') bit for bit (same operations)."""
    from pglab.tabular import natural

    mdp = zoo.make("two_state")
    logits0 = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)
    result = tabular_ascent(mdp, logits0, 0.7, 10, update="npg")
    reference = natural.exact_iterates(mdp, logits0, "npg", 0.7, 10)
    assert torch.equal(result.final_params["logits"], reference.thetas[-1])
    kls = torch.tensor([row["kl"] for row in result.history], dtype=torch.float64)
    assert torch.equal(kls, reference.kls)
    returns = [row["expected_return"] for row in result.history]
    assert returns == reference.returns[:-1].tolist()


@pytest.mark.parametrize("update", ["pg", "npg"])
def test_corridor_optimum_is_reached_by_exact_pg_and_npg(update):
    """Sutton & Barto Ex. 13.1: p* = 2 - sqrt(2), J* = -(6 + 4 sqrt(2)). Within 1e-3 of
    J* as issue 10 asks (J is flat at the optimum: a 1e-3 gap in J allows |p - p*| ~ 1e-2)."""
    from pglab.tabular import features

    mdp = zoo.make("short_corridor")
    # pg: alpha = 0.1 (0.3 already overshoots into a near-deterministic policy, J = -200
    # at the horizon); npg: eta = 0.5
    step = {"pg": 0.1, "npg": 0.5}[update]
    result = tabular_ascent(mdp, torch.zeros(2, dtype=torch.float64), step, 300, update=update)
    theta = result.final_params["theta"]
    p = float(torch.sigmoid(theta[0] - theta[1]))
    assert result.history[-1]["expected_return"] == pytest.approx(
        features.CORRIDOR_OPTIMAL_RETURN, abs=1e-3
    )
    assert p == pytest.approx(features.CORRIDOR_OPTIMAL_P, abs=2e-2)
    assert all(math.isfinite(row["kl"]) and row["step_norm"] >= 0 for row in result.history)


def test_sampled_pg_on_features_is_the_chain_rule_of_the_tabular_estimate():
    """With features the sampled gradient is sum_{s,a} ghat[s, a] phi(s, a) of the same
    trajectories (same seed), so its mean over iterations is unbiased; one iteration
    checked against the sampler called directly."""
    from pglab.tabular import estimates
    from pglab.tabular.ascent import iteration_seed
    from pglab.tabular.features import feature_logits

    mdp = zoo.make("short_corridor")
    theta0 = torch.tensor([0.2, -0.1], dtype=torch.float64)
    result = tabular_ascent(mdp, theta0, 0.1, 1, gradient="reinforce", n_trajectories=16, seed=4)
    samples = estimates.sample_gradients(
        mdp, feature_logits(mdp.features, theta0), 16, "reinforce", iteration_seed(4, 0)
    )
    ghat = torch.einsum("sa,sak->k", torch.as_tensor(samples).mean(0), mdp.features)
    assert torch.equal(result.final_params["theta"], theta0 + 0.1 * ghat)


@pytest.mark.parametrize(
    ("update", "gradient", "parts"),
    [
        ("ppo", "exact", ("update=ppo", "not built")),
        ("ppo", "reinforce", ("update=ppo", "gradient=reinforce", "minibatch epochs")),
        ("trp0", "exact", ("update", "'trp0'")),
    ],
)
def test_tabular_ascent_refuses_rules_it_does_not_build(update, gradient, parts):
    mdp = zoo.make("two_state")
    logits0 = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    with pytest.raises(ConfigError) as error:
        tabular_ascent(mdp, logits0, 0.1, 2, gradient=gradient, n_trajectories=2, update=update)
    for part in parts:
        assert part in str(error.value), str(error.value)


# ---------------------------------------------------------------------------------------
# The real apps
# ---------------------------------------------------------------------------------------
def _history(root: Path):
    import pandas as pd

    (path,) = sorted(root.rglob("history.parquet"))
    return pd.read_parquet(path)


def test_cartpole_app_runs_trpo_and_records_kl_within_delta(tmp_path):
    from conftest import run_app

    run_app(
        "cartpole.py",
        "update=trpo",
        "step_size=0.01",
        "n_trajectories=4",
        "budget.iterations=3",
        "logger=none",
        "progress=false",
        f"paths.output_dir={tmp_path}",
    )
    history = _history(tmp_path)
    assert set(history["update"]) == {"trpo"} and len(history) == 3
    assert (history["kl"] <= 0.01).all() and (history["step_norm"] >= 0).all()
    assert set(history["accepted"]) <= {0.0, 1.0}


def test_tabular_app_runs_npg_on_the_corridor_and_records_kl(tmp_path):
    from conftest import run_app

    run_app(
        "tabular_ascent.py",
        "update=npg",
        "mdp=short_corridor",
        "step_size=0.5",
        "n_iterations=40",
        "logger=none",
        "progress=false",
        f"paths.output_dir={tmp_path}",
    )
    history = _history(tmp_path)
    assert set(history["update"]) == {"npg"} and set(history["mdp"]) == {"short_corridor"}
    assert history["kl"].notna().all() and (history["step_norm"] > 0).any()
    # the corridor's optimum, -(6 + 4 sqrt(2)), to 1e-3 (issue 10's tolerance)
    assert abs(history["expected_return"].iloc[-1] + 6 - 4 * -math.sqrt(2)) < 1e-3


def test_misspelled_update_rule_is_refused_by_the_app_in_one_line(tmp_path):
    from conftest import run_app

    proc = run_app(
        "cartpole.py", "update=trp0", "logger=none", f"paths.output_dir={tmp_path}", check=False
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "did you mean 'trpo'" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("experiment", ["cartpole", "tabular_ascent"])
def test_results_stored_before_the_update_rules_still_load_as_update_pg(experiment):
    """A table written before issue 10 has no update column and no step diagnostics: the
    loader reads it as update='pg' (what every earlier run did) with NaN diagnostics, and
    then it meets the schema; a table that has the columns is left as it is."""
    import pandas as pd

    from analysis.load import missing_columns, upgrade_table
    from pglab import schema

    spec = schema.experiment(experiment)
    added = schema.ADDED_COLUMNS[experiment]
    for table in spec.tables:
        required = [*spec.identity, *table.index, *table.columns]
        old = pd.DataFrame({c: [1.0] for c in required if c not in added})
        new = upgrade_table(experiment, table.stem, old)
        assert missing_columns(spec, table.stem, new) == []
        assert list(new["update"]) == ["pg"]
        for column in set(added) & set(table.columns):
            assert new[column].isna().all()
        current = pd.DataFrame({c: [2.0] for c in required}).assign(update="trpo")
        assert upgrade_table(experiment, table.stem, current).equals(current)


def test_a_pg_job_finished_before_the_update_group_is_the_same_job():
    """Resume: update=pg is bit-identical to the code before the group, so the hash that
    job got (its config had no update key) is one of the current job's hashes; a job of
    another rule is never matched to it."""
    from pglab_jobs.metadata import job_hash, job_hashes

    before = {"seed": 0, "step_size": 0.01, "threads": 1, "paths": {"output_dir": "x"}}
    pg = {**before, "update": {"name": "pg"}}
    assert job_hash(before) in job_hashes(pg)
    assert job_hash(pg) == job_hashes(pg)[0]
    trpo = {**before, "update": {"name": "trpo", "backtrack": 0.5}}
    assert job_hash(before) not in job_hashes(trpo)


def test_a_config_without_the_update_group_reads_as_update_pg():
    from analysis.load import flatten_config, upgrade_config

    old = {"seed": 0, "step_size": 0.01}
    new = {**old, "update": {"name": "pg"}}
    for experiment in ("cartpole", "tabular_ascent"):
        assert flatten_config(upgrade_config(experiment, old)) == flatten_config(new)
    assert upgrade_config("estimator_variance", old) == old
    trpo = {**old, "update": {"name": "trpo"}}
    assert upgrade_config("cartpole", trpo) == trpo


def test_stepsize_grid_preset_sweeps_every_rule_over_n_and_its_step():
    """experiment=stepsize_grid: 4 rules x 3 N x 4 steps x 3 seeds, each a valid job, and
    its per-rule override (the preset's second command) passes the pre-flight."""
    from hydra import compose, initialize_config_dir
    from pglab_jobs import cli, config

    validate = config.VALIDATORS["cartpole"][1]
    cli.check_command_line("cartpole", validate, ["-m", "experiment=stepsize_grid"])
    line = ["-m", "experiment=stepsize_grid", "update=trpo", "step_size=0.003,0.01,0.03"]
    cli.check_command_line("cartpole", validate, line)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("cartpole", overrides=["experiment=stepsize_grid"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert str(params["update"]).split(",") == ["pg", "npg", "trpo", "ppo"]
    sizes = [len(str(params[k]).split(",")) for k in ("update", "n_trajectories", "step_size")]
    assert sizes == [4, 3, 4] and len(str(params.seed).split(",")) == 3
    for rule in ("pg", "npg", "trpo", "ppo"):
        for step in str(params.step_size).split(","):
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                job = compose(
                    "cartpole",
                    overrides=["experiment=stepsize_grid", f"update={rule}", f"step_size={step}"],
                )
            settings = validate(job)
            assert settings.update.name == rule and settings.budget.env_steps == 50000
