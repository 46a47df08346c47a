"""W&B conventions (issue 5): one offline run per job, under the basic and joblib launchers,
whose config, history and summary read back equal to the local parquet results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_app

from analysis.wandb_source import load_wandb_offline


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_offline_runs_read_back_equal_local_results(tmp_path, launcher):
    proc = run_app(
        "tabular_ascent.py",
        "-m",
        f"paths.output_dir={tmp_path}",
        f"hydra/launcher={launcher}",
        "sweep_name=wb",
        "gradient=exact,reinforce",
        "step_size=0.5,5",
        "n_iterations=6",
        "progress=false",
        "logger.tags=[test]",
    )
    sweep = tmp_path / "multirun" / "tabular_ascent" / "wb"
    jobs = sorted(p.parent for p in sweep.rglob("metadata.json"))
    assert len(jobs) == 4 and "4 done" in proc.stdout
    assert f"python -m pglab_jobs.sync {sweep}" in proc.stdout
    frames = load_wandb_offline(sweep)
    runs = frames["runs"]
    assert len(runs) == 4, "one W&B run per job"
    assert set(runs["group"]) == {"wb"} and set(runs["job_type"]) == {"tabular_ascent"}
    assert (runs["exit_code"] == 0).all()
    for job in jobs:
        meta = json.loads((job / "metadata.json").read_text())
        (wandb_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
        run = runs[runs["path"] == str(wandb_file)].iloc[0]
        config = frames["config"].set_index("run_id").loc[run["run_id"]]
        # a short name per app; the full override string is kept in the config
        assert config["pglab.job"] == job.name
        alpha = "α=0.5" if meta["config"]["step_size"] == 0.5 else "α=5"
        assert (
            run["name"]
            == f"chain {meta['config']['gradient']} "
            + (alpha if meta["config"]["gradient"] == "exact" else f"N=10 {alpha} seed=0")
            + " n_iterations=6"
        )  # then the overrides the app's part leaves out
        # the logged config is the job's resolved config, not another job's (wandb#7227)
        assert config["step_size"] == meta["config"]["step_size"]
        assert config["gradient"] == meta["config"]["gradient"]
        assert config["mdp.name"] == meta["config"]["mdp"]["name"]
        history = frames["history"]
        history = history[history["run_id"] == run["run_id"]].sort_values("_step")
        local = pd.read_parquet(job / "history.parquet")
        assert history["_step"].tolist() == local["iteration"].tolist()
        np.testing.assert_allclose(history["expected_return"], local["expected_return"], rtol=1e-12)
        np.testing.assert_allclose(history["entropy"], local["entropy"], rtol=1e-12)
        summary = frames["summary"].set_index("run_id").loc[run["run_id"]]
        local_summary = pd.read_parquet(job / "summary.parquet").iloc[0]
        assert summary["status"] == local_summary["status"] == meta["status"]
        assert summary["final_return"] == pytest.approx(local_summary["final_return"], rel=1e-12)
        assert summary["auc"] == pytest.approx(local_summary["auc"], rel=1e-12)


def test_estimator_table_logged_to_wandb_equals_parquet(tmp_path):
    run_app(
        "estimator_variance.py",
        f"paths.output_dir={tmp_path}",
        "mdp=two_state",
        "n_trajectories=[2,20]",
        "n_repetitions=10",
        "progress=false",
    )
    (parquet,) = tmp_path.rglob("results.parquet")
    frames = load_wandb_offline(tmp_path)
    logged = (
        frames["table/results"].sort_values(["estimator", "n_trajectories"]).reset_index(drop=True)
    )
    local = (
        pd.read_parquet(parquet).sort_values(["estimator", "n_trajectories"]).reset_index(drop=True)
    )
    for column in ("relative_bias", "total_variance", "mse", "snr", "p_value"):
        np.testing.assert_allclose(logged[column].astype(float), local[column], rtol=1e-12)
