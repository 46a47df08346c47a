"""The Hydra apps end to end, as a user runs them: multiruns, bad input, W&B offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_app

from pglab import schema

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


def assert_refused_in_one_line(proc, tmp_path: Path, *parts: str) -> None:
    """Exit status 2, one line on stderr naming ``parts``, nothing written (no output dir)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    for part in parts:
        assert part in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "an output directory was created"


def refused(script: str, tmp_path: Path, *args: str):
    flags = [a for a in args if a.startswith("-")]  # -m before the overrides, as users type it
    overrides = [a for a in args if not a.startswith("-")]
    return run_app(
        script,
        *flags,
        f"paths.output_dir={tmp_path / 'out'}",
        "logger=none",
        *overrides,
        check=False,
    )


@pytest.mark.parametrize(
    ("override", "parts"),
    [
        ("n_trajectories=0", ("n_trajectories must be a positive integer, got 0",)),
        ("n_trajectories=[10,-1]", ("n_trajectories[1] must be a positive integer, got -1",)),
        ("estimator=reinforse", ("reinforse", "did you mean 'reinforce'")),
        ("n_repetitions=1", ("n_repetitions must be an integer >= 2, got 1",)),
        ("policy.kind=greedy", ("unknown policy.kind 'greedy'",)),
        ("mdp.horizon=0", ("mdp.horizon", "0")),
        ("mdp=file", ("mdp.path is required", "a .yaml or .npz file")),
        ("mdp=chian", ("chian", "did you mean 'chain'")),
    ],
)
def test_bad_estimator_study_config_fails_before_work(tmp_path, override, parts):
    proc = refused("estimator_variance.py", tmp_path, override)
    assert_refused_in_one_line(proc, tmp_path, *parts)


def test_unknown_mdp_names_the_choices(tmp_path):
    proc = refused("estimator_variance.py", tmp_path, "mdp=nosuch")
    assert_refused_in_one_line(proc, tmp_path, "nosuch", "chain")


@pytest.mark.parametrize(
    "script", ["estimator_variance.py", "calibration.py", "cartpole.py", "tabular_ascent.py"]
)
def test_fractional_seed_is_refused_by_every_app(tmp_path, script):
    """seed=1.7 used to run seed 1 in the tabular apps (and record 1.7)."""
    proc = refused(script, tmp_path, "seed=1.7")
    assert_refused_in_one_line(proc, tmp_path, "seed", "1.7")


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
    ("override", "parts"),
    [
        ("step_size=nan", ("step_size", "nan")),
        ("step_size=inf", ("step_size", "inf")),
        ("step_size=-1", ("step_size", "-1")),
        ("step_size=1e39", ("step_size", "1e+39", "3.40282e+38")),
        ("n_trajectories=0", ("n_trajectories", "0")),
        ("estimator=baseline_value", ("baseline_value",)),
        ("env_id=NoSuchEnv-v0", ("NoSuchEnv-v0",)),
        ("env_id=CartPol-v1", ("CartPol-v1", "did you mean 'CartPole-v1'")),
        ("optimizer=lbfgs", ("lbfgs",)),
        ("step_size=abc", ("step_size must be a number, got 'abc'",)),
        ("seed=abc", ("seed must be an integer, got 'abc'",)),
        ("threads=abc", ("threads must be a positive integer, got 'abc'",)),
        ("threads=0", ("threads must be a positive integer, got 0",)),
        ("budget.iterations=0", ("budget.iterations must be a positive integer or null, got 0",)),
        ("collapse.window_episodes=0", ("collapse.window_episodes", "got 0")),
        ("collapse.entropy_threshold=-1", ("collapse.entropy_threshold", "-1")),
        ("n_trajectorie=10", ("'n_trajectorie'", "did you mean 'n_trajectories'")),
        ("budget.env_step=10", ("'budget.env_step'", "did you mean 'budget.env_steps'")),
        ("seed=1,2", ("seed=1,2", "-m")),
    ],
)
def test_bad_cartpole_config_fails_before_work(tmp_path, override, parts):
    proc = refused("cartpole.py", tmp_path, override)
    assert_refused_in_one_line(proc, tmp_path, *parts)


def test_bad_value_in_a_sweep_fails_that_job_and_the_sweep_goes_on(tmp_path):
    proc = run_app(
        "cartpole.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "seed=0,1.7",
        "n_trajectories=2",
        "budget.iterations=2",
        "progress=false",
        check=False,
    )
    assert proc.returncode != 0
    assert "1 done" in proc.stdout and "1 failed" in proc.stdout, proc.stdout[-2000:]
    sweep = tmp_path / "multirun" / "cartpole" / "default"
    statuses = {}
    for status_file in sweep.rglob(schema.JOB_STATUS_FILE):
        status = json.loads(status_file.read_text())
        statuses[status_file.parent.name] = status["status"]
        if status["status"] == "failed":
            assert "seed must be an integer, got 1.7" in status["error"]
            assert "\n" not in status["error"]
    assert statuses == {
        "budget.iterations=2,n_trajectories=2,seed=0": "complete",
        "budget.iterations=2,n_trajectories=2,seed=1.7": "failed",
    }


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
    (the group was optional), then Hydra refused it in 12 lines; now one line says which."""
    proc = refused("cartpole.py", tmp_path, "-m", "experiment=cartpole_smal")
    assert_refused_in_one_line(
        proc, tmp_path, "experiment", "'cartpole_smal'", "did you mean 'cartpole_small'"
    )


def test_preset_of_another_app_is_refused(tmp_path):
    proc = refused("cartpole.py", tmp_path, "-m", "experiment=calibration")
    assert_refused_in_one_line(proc, tmp_path, "experiment=calibration", "'mdp'")


def test_other_env_is_named_in_directories_and_wandb_job_type(tmp_path):
    """env_id=Acrobot-v1 used to write to runs/cartpole with W&B job type `cartpole`."""
    from analysis.wandb_source import load_wandb_offline

    common = ("env_id=Acrobot-v1", "n_trajectories=2", "budget.iterations=2", "progress=false")
    run_app("cartpole.py", f"paths.output_dir={tmp_path}", "logger=none", *common)
    (single,) = job_dirs(tmp_path / "runs")
    assert single.parent.name == "acrobot"
    proc = run_app(
        "cartpole.py", "-m", f"paths.output_dir={tmp_path}", "seed=0,1", "logger=wandb", *common
    )
    sweep = tmp_path / "multirun" / "acrobot" / "default"
    jobs = job_dirs(sweep)
    assert len(jobs) == 2 and "2 done" in proc.stdout
    for job in jobs + [single]:
        meta = json.loads((job / "metadata.json").read_text())
        assert meta["experiment"] == "cartpole" and meta["config"]["env_id"] == "Acrobot-v1"
    assert set(load_wandb_offline(sweep)["runs"]["job_type"]) == {"acrobot"}


def test_progress_counts_env_steps_when_the_budget_is_in_env_steps(tmp_path):
    """With an env-step budget (what the presets use) the bar used to stay at 0/1."""
    proc = run_app(
        "cartpole.py",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "n_trajectories=2",
        "budget.iterations=null",
        "budget.env_steps=300",
        "progress=true",
    )
    output = proc.stdout + proc.stderr
    assert re.search(r"seed=0 300/300 \(100%\)", output), output[-3000:]
    counts = [int(c) for c in re.findall(r"seed=0 (\d+)/300", output)]
    assert counts == sorted(counts) and len(counts) >= 2


def test_gradient_quality_rows_carry_the_training_n_and_the_batch_n(tmp_path):
    run_app(
        "cartpole.py",
        f"paths.output_dir={tmp_path}",
        "logger=none",
        "progress=false",
        "n_trajectories=3",
        "budget.iterations=2",
        "gradient_quality.enabled=true",
        "gradient_quality.checkpoints=[0,2]",
        "gradient_quality.reference_episodes=20",
        "gradient_quality.batch_sizes=[1,2]",
        "gradient_quality.n_batches=2",
    )
    (path,) = tmp_path.rglob("gradient_quality.parquet")
    quality = pd.read_parquet(path)
    assert set(quality["n_trajectories"]) == {3}  # the training N, as in every table
    assert sorted(set(quality["batch_n_trajectories"])) == [1, 2]
    assert "train_n_trajectories" not in quality
    assert sorted(set(quality["checkpoint_iteration"])) == [0, 2]
    assert len(quality) == 2 * 2 * 2
