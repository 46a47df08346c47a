"""The Hydra apps end to end, as a user runs them: multiruns, bad input, W&B offline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_app

SMALL_STUDY = ("n_repetitions=20", "progress=false")


def job_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metadata.json"))


def test_estimator_study_multirun_2x2x2_with_wandb_offline(tmp_path):
    """Issue 2: `-m mdp=A,B estimator=C,D` over two N values completes and writes results."""
    proc = run_app(
        "estimator_variance.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        "mdp=two_state,chain",
        "estimator=reinforce,reward_to_go",
        "n_trajectories=[1,10]",
        "logger=wandb",
        "logger.mode=offline",
        *SMALL_STUDY,
    )
    jobs = job_dirs(tmp_path / "multirun" / "estimator_variance" / "default")
    assert len(jobs) == 4
    assert "4 done" in proc.stdout
    seen = set()
    for job in jobs:
        meta = json.loads((job / "metadata.json").read_text())
        assert meta["status"] == "complete"
        assert meta["git_commit"] and meta["versions"]["torch"].startswith("2.")
        assert meta["config"]["seed"] == 0
        table = pd.read_parquet(job / "results.parquet")
        assert sorted(table["n_trajectories"]) == [1, 10]
        assert table["estimator"].nunique() == 1
        assert (
            table["true_gradient"].map(len).iloc[0]
            == table["n_states"].iloc[0] * table["n_actions"].iloc[0]
        )
        seen.add((table["mdp"].iloc[0], table["estimator"].iloc[0]))
        offline = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(offline) == 1, f"one offline W&B run per job, found {offline}"
    assert seen == {(m, e) for m in ("two_state", "chain") for e in ("reinforce", "reward_to_go")}
    assert "wandb sync" in proc.stdout


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    args = ("mdp=two_state", "n_trajectories=[3,30]", "logger=none", *SMALL_STUDY)
    run_app("estimator_variance.py", f"paths.output_dir={tmp_path / 'a'}", *args)
    run_app("estimator_variance.py", f"paths.output_dir={tmp_path / 'b'}", *args)
    (a,) = (tmp_path / "a").rglob("results.parquet")
    (b,) = (tmp_path / "b").rglob("results.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n_trajectories=0", "n_trajectories must be a positive integer, got 0"),
        ("n_trajectories=[10,-1]", r"n_trajectories\[1\] must be a positive integer, got -1"),
        ("estimator=reinforse", "reinforse"),
        ("n_repetitions=1", "n_repetitions must be >= 2"),
        ("policy.kind=greedy", "unknown policy.kind 'greedy'"),
        ("mdp.horizon=0", "horizon"),
    ],
)
def test_bad_estimator_study_config_fails_before_work(tmp_path, override, message):
    proc = run_app(
        "estimator_variance.py",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        override,
        check=False,
    )
    assert proc.returncode != 0
    assert pytest.importorskip("re").search(message, proc.stderr + proc.stdout), proc.stderr[-2000:]
    assert not list(tmp_path.rglob("results.parquet"))


def test_unknown_mdp_names_the_choices(tmp_path):
    proc = run_app(
        "estimator_variance.py", f"paths.output_dir={tmp_path}", "mdp=nosuch", check=False
    )
    assert proc.returncode != 0
    assert "nosuch" in proc.stderr and "chain" in proc.stderr


def test_mdp_from_file(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "mdps" / "two_state.yaml"
    run_app(
        "estimator_variance.py",
        f"paths.output_dir={tmp_path}",
        "mdp=file",
        f"mdp.path={example}",
        "n_trajectories=[5]",
        "logger=none",
        *SMALL_STUDY,
    )
    (results,) = tmp_path.rglob("results.parquet")
    assert len(pd.read_parquet(results)) == 7  # every estimator, one N


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("step_size=nan", "step_size"),
        ("step_size=inf", "step_size"),
        ("step_size=-1", "step_size"),
        ("n_trajectories=0", "n_trajectories"),
        ("estimator=baseline_value", "baseline_value"),
        ("env_id=NoSuchEnv-v0", "NoSuchEnv-v0"),
        ("optimizer=rmsprop", "rmsprop"),
        ("step_size=abc", "step_size='abc', expected a number"),
        ("budget.iterations=0", "budget.iterations must be a positive integer or null, got 0"),
        ("collapse.window_episodes=0", "window_episodes=0"),
        ("collapse.entropy_threshold=-1", "entropy_threshold=-1"),
    ],
)
def test_bad_cartpole_config_fails_before_work(tmp_path, override, message):
    proc = run_app(
        "cartpole.py", f"paths.output_dir={tmp_path}", "logger=none", override, check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("history.parquet"))


def test_cartpole_multirun_2x2_completes(tmp_path):
    """Issue 3: a 2×2 Hydra multirun completes, each job with history and summary."""
    proc = run_app(
        "cartpole.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        "n_trajectories=2,4",
        "step_size=0.001,0.01",
        "budget.iterations=5",
        "variance_every=2",
        "progress=false",
    )
    jobs = job_dirs(tmp_path / "multirun" / "cartpole" / "default")
    assert len(jobs) == 4 and "4 done" in proc.stdout
    for job in jobs:
        history = pd.read_parquet(job / "history.parquet")
        summary = pd.read_parquet(job / "summary.parquet")
        assert list(history["iteration"]) == list(range(5))
        assert history["grad_variance"].notna().sum() >= 2
        assert len(summary) == 1 and summary["status"].iloc[0] == "complete"
        assert list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        # collapse columns: verdict at the end, window of 100 episodes = ceil(100 / N) iterations
        row = summary.iloc[0]
        n = int(row["n_trajectories"])
        assert row["collapse_window_episodes"] == 100
        assert row["collapse_window_iterations"] == -(-100 // n)
        assert bool(row["collapsed"]) == bool(history["collapsed"].iloc[-1])
        assert 0.0 <= row["stuck_fraction"] <= 1.0 and row["dips"] >= 0


def test_tabular_ascent_exact_vs_estimator(tmp_path):
    run_app(
        "tabular_ascent.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        "gradient=exact,reinforce",
        "step_size=1.0",
        "n_iterations=10",
        "logger=none",
        "progress=false",
    )
    histories = [pd.read_parquet(p) for p in sorted(tmp_path.rglob("history.parquet"))]
    assert sorted(h["gradient"].iloc[0] for h in histories) == ["exact", "reinforce"]
    for history in histories:
        assert len(history) == 10 and history["expected_return"].notna().all()
        # suboptimality against J* (non-stationary) and against the best stationary return
        gap = history["optimal_return"] - history["stationary_return"]
        assert (gap >= -1e-12).all()
        assert (
            history["suboptimality"] - history["suboptimality_stationary"] - gap
        ).abs().max() < 1e-9
    for summary in sorted(tmp_path.rglob("summary.parquet")):
        row = pd.read_parquet(summary).iloc[0]
        assert row["stationary_return"] <= row["optimal_return"] + 1e-12


def test_misspelled_preset_is_an_error_before_any_work(tmp_path):
    """A typo in experiment=... used to run one job with the default config and exit 0
    (the group was optional); now Hydra refuses it and lists the presets."""
    proc = run_app(
        "cartpole.py",
        "-m",
        "experiment=cartpole_smal",
        "logger=none",
        f"paths.output_dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Could not find 'experiment/cartpole_smal'" in output
    assert "cartpole_small" in output  # the available presets are listed
    assert not any(tmp_path.iterdir())  # nothing was started
