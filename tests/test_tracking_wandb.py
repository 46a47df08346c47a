"""pglab_jobs.tracking and pglab_jobs.naming (issue 12), in-process with real offline W&B:
the x axis a run declares, the flags it logs as numbers, the results it carries, and the
group / name / tags conventions."""

from __future__ import annotations

import json
import threading
import time

import pandas as pd
import pytest
from pglab_jobs import naming
from pglab_jobs.tracking import JOB_BUNDLE, Tracker, log_iteration

from analysis.wandb_source import read_bundle, read_records, records_to_frames
from pglab.collapse import CollapseStatus


def _tracker(tmp_path, **fields) -> Tracker:
    tracker = Tracker(enabled=True, mode="offline", directory=tmp_path, **fields)
    assert tracker.active
    return tracker


def _read(tmp_path, timeout_s: float = 30.0) -> dict:
    """The run's records once W&B's service has written its exit record: ``finish()``
    returns before the service has flushed the log (a job's process exits right after;
    a test reads on in the same process)."""
    (log_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = records_to_frames(read_records(log_file))
        except RuntimeError:  # not even the run record yet
            run = None
        if run is not None and "exit_code" in run["run"]:
            return run
        assert time.monotonic() < deadline, f"{log_file} not complete after {timeout_s} s"
        time.sleep(0.05)


def test_log_iteration_charts_against_env_steps_with_numeric_flags(tmp_path):
    tracker = _tracker(tmp_path, project="p", group="g", name="N=2 α=1e-3 seed=0")
    rows = [
        {"iteration": 0, "env_steps": 40, "return_mean": 20.0, "collapsed": False},
        {"iteration": 1, "env_steps": 95, "return_mean": 9.5, "collapsed": True},
    ]
    statuses = [CollapseStatus(dropped=False, dips=0), CollapseStatus(dropped=True, dips=1)]
    for row, status in zip(rows, statuses, strict=True):
        log_iteration(tracker, {**row, "diverged": False, "note": "text is not logged"}, status)
    tracker.finish()
    run = _read(tmp_path)
    assert run["metrics"] == [
        {"name": "env_steps", "glob_name": None, "step_metric": None},
        {"name": None, "glob_name": "*", "step_metric": "env_steps"},
    ]
    history = pd.DataFrame(run["history"])
    assert history["_step"].tolist() == history["iteration"].tolist() == [0, 1]
    assert history["env_steps"].tolist() == [40, 95]
    assert history["collapsed"].tolist() == [0, 1] and history["diverged"].tolist() == [0, 0]
    assert history["dip"].tolist() == [0, 1] and history["dips"].tolist() == [0, 1]
    assert "note" not in history.columns


def test_attach_job_saves_metadata_and_results_in_one_zip(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    frame = pd.DataFrame({"iteration": [0, 1], "return_mean": [1.5, float("nan")]})
    frame.to_parquet(job / "history.parquet")
    (job / "metadata.json").write_text(json.dumps({"result_files": ["history.parquet"]}))
    tracker = _tracker(job)
    bundle = tracker.attach_job(job)
    tracker.finish()
    assert bundle is not None and bundle.name == JOB_BUNDLE
    run = _read(job)
    assert JOB_BUNDLE in run["files"]  # uploaded with the run by wandb sync
    files = read_bundle(bundle)
    assert sorted(files) == ["history.parquet", "metadata.json"]
    assert files["history.parquet"] == (job / "history.parquet").read_bytes()


def test_attach_job_failure_is_a_warning_not_an_error(tmp_path):
    tracker = _tracker(tmp_path)
    with pytest.warns(UserWarning, match="W&B attach failed"):
        assert tracker.attach_job(tmp_path / "no-such-job") is None
    tracker.finish()


def test_disabled_tracker_does_nothing(tmp_path):
    tracker = Tracker(enabled=False)
    log_iteration(tracker, {"iteration": 0, "env_steps": 1, "collapsed": True})
    assert tracker.attach_job(tmp_path) is None and tracker.finish() is None
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.001, "1e-3"), (0.0025, "2.5e-3"), (0.05, "0.05"), (1.0, "1"), (10, "10"), (True, "true")],
)
def test_short_values(value, text):
    assert naming.short_value(value) == text


def test_run_names_per_app():
    cartpole = {"seed": 0, "n_trajectories": 10, "step_size": 0.001, "update": {"name": "pg"}}
    overrides = ["n_trajectories=10", "step_size=0.001", "seed=0", "paths.output_dir=/x"]
    assert naming.run_name("cartpole", cartpole, overrides) == "N=10 α=1e-3 seed=0"
    trpo = {**cartpole, "step_size": 0.01, "update": {"name": "trpo"}}
    extra = ["update=trpo", "estimator=reward_to_go", "hydra/launcher=joblib", "logger.tags=[a]"]
    assert (
        naming.run_name("cartpole", trpo, extra) == "trpo N=10 δ=0.01 seed=0 estimator=reward_to_go"
    )
    study = {"seed": 1, "mdp": {"name": "two_state"}}
    assert (
        naming.run_name("estimator_variance", study, ["mdp=file", "mdp.path=/a/b/two.yaml"])
        == "two_state seed=1 path=two.yaml"
    )


def test_tags_and_config_keep_the_full_overrides():
    long = "mdp.path=/" + "x" * 100
    tags = naming.run_tags("cartpole", ["mine"], ["seed=1", long])
    assert tags[:3] == ["cartpole", "mine", "seed=1"]
    assert len(tags[3]) == naming.MAX_TAG and tags[3].startswith("mdp.path=/xxx")
    config = naming.run_config({"seed": 1}, "seed=1,step_size=0.1", ["seed=1", "step_size=0.1"])
    assert config["pglab"] == {
        "job": "seed=1,step_size=0.1",
        "overrides": ["seed=1", "step_size=0.1"],
    }


def test_default_sweep_group_is_unique_per_sweep_and_shared_by_its_jobs(tmp_path):
    one = tmp_path / "a" / "multirun" / "cartpole" / "default"
    two = tmp_path / "b" / "multirun" / "cartpole" / "default"
    groups: list[str] = []
    threads = [
        threading.Thread(target=lambda: groups.append(naming.sweep_group("default", one)))
        for _ in range(8)
    ]  # jobs of a parallel launcher start together
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(groups)) == 1 and groups[0].startswith("cartpole-default-")
    assert (one / naming.GROUP_FILE).read_text().strip() == groups[0]
    assert naming.sweep_group("default", one) == groups[0]  # a re-run of the sweep
    (two / naming.GROUP_FILE).parent.mkdir(parents=True)
    (two / naming.GROUP_FILE).write_text("cartpole-default-other\n")
    assert naming.sweep_group("default", two) == "cartpole-default-other"
    assert naming.sweep_group("my_sweep", one) == "my_sweep"
    assert naming.sweep_group("default", None) is None  # a single run
    assert not list(one.glob(f"{naming.GROUP_FILE}.*")), "no draft left behind"
