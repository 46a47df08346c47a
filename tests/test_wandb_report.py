"""Issue 12: W&B runs that chart on the right axes, the report as a W&B run, and the report
built from W&B runs. Real wandb, offline; no account, no network."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_app
from pglab_jobs import naming, tracking

from analysis.load import load_results
from analysis.report import wandb_run
from analysis.report.cli import main as report_main
from analysis.wandb_source import (
    JOB_BUNDLE,
    find_offline_runs,
    load_wandb_offline,
    load_wandb_results,
    read_bundle,
    read_records,
    records_to_frames,
)

BATCH_SIZES = [2, 5, 20]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """An estimator sweep and a CartPole sweep, both the default sweep (no sweep_name)."""
    root = tmp_path_factory.mktemp("issue12")
    run_app(
        "estimator_variance.py",
        "-m",
        f"paths.output_dir={root}",
        "mdp=two_state",
        f"n_trajectories=[{','.join(map(str, BATCH_SIZES))}]",
        "n_repetitions=10",
        "n_resamples=200",
        "seed=0,1",
        "progress=false",
    )
    run_app(
        "cartpole.py",
        "-m",
        f"paths.output_dir={root}",
        "n_trajectories=2",
        "budget.iterations=5",
        "step_size=0.001,0.01",
        "progress=false",
    )
    return {
        "root": root,
        "estimator": root / "multirun" / "estimator_variance" / "default",
        "cartpole": root / "multirun" / "cartpole" / "default",
    }


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/metadata.json"))


def _run_of(job: Path) -> dict:
    (log_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
    return records_to_frames(read_records(log_file), path=str(log_file))


def test_names_shared_between_experiments_and_analysis():
    """Two layers that may not import each other name the same files."""
    assert tracking.JOB_BUNDLE == JOB_BUNDLE
    assert naming.GROUP_FILE == wandb_run.GROUP_FILE
    assert naming.DEFAULT_SWEEP == wandb_run.DEFAULT_SWEEP


def test_estimator_runs_are_charted_against_n(sweeps):
    sweep = sweeps["estimator"]
    group = (sweep / naming.GROUP_FILE).read_text().strip()
    # the default sweep's group: readable, and unique to this sweep directory
    assert group.startswith("estimator_variance-default-") and len(group) == len(
        "estimator_variance-default-20261202-041503"
    )
    for job in _jobs(sweep):
        meta = json.loads((job / "metadata.json").read_text())
        run = _run_of(job)
        assert run["run"]["group"] == group
        assert run["run"]["name"] == (
            f"two_state seed={meta['config']['seed']} "
            f"n_trajectories=[{','.join(map(str, BATCH_SIZES))}] n_repetitions=10 n_resamples=200"
        )
        assert run["config"]["pglab"]["job"] == job.name  # the full overrides, kept
        assert run["config"]["pglab"]["overrides"] == meta["overrides"]
        # every metric is drawn against N, not against W&B's _step
        assert {"name": "n_trajectories", "glob_name": None, "step_metric": None} in run["metrics"]
        assert {"name": None, "glob_name": "*", "step_metric": "n_trajectories"} in run["metrics"]
        history = pd.DataFrame(run["history"])
        assert history["n_trajectories"].tolist() == BATCH_SIZES
        local = pd.read_parquet(job / "results.parquet")
        mse = local[local["estimator"] == "reinforce"].sort_values("n_trajectories")["mse"]
        np.testing.assert_allclose(history["reinforce/mse"], mse, rtol=1e-12)


def test_cartpole_runs_are_charted_against_env_steps_with_flags(sweeps):
    jobs = _jobs(sweeps["cartpole"])
    assert len(jobs) == 2
    groups = set()
    for job in jobs:
        meta = json.loads((job / "metadata.json").read_text())
        run = _run_of(job)
        groups.add(run["run"]["group"])
        alpha = {0.001: "1e-3", 0.01: "0.01"}[meta["config"]["step_size"]]
        assert run["run"]["name"] == f"N=2 α={alpha} seed=0 iterations=5"
        assert run["run"]["job_type"] == "cartpole"
        assert {"name": None, "glob_name": "*", "step_metric": "env_steps"} in run["metrics"]
        history = pd.DataFrame(run["history"]).sort_values("_step")
        local = pd.read_parquet(job / "history.parquet")
        assert history["env_steps"].tolist() == local["env_steps"].tolist()
        assert history["iteration"].tolist() == local["iteration"].tolist() == [0, 1, 2, 3, 4]
        # the flags reach W&B as numbers (a bool was dropped before)
        assert history["collapsed"].tolist() == local["collapsed"].astype(int).tolist()
        assert history["diverged"].tolist() == local["diverged"].astype(int).tolist()
        assert set(history["dip"]) <= {0, 1} and (history["dips"] >= 0).all()
        summary = pd.read_parquet(job / "summary.parquet").iloc[0]
        assert bool(run["summary"]["collapsed"]) == bool(summary["collapsed"])
        assert run["summary"]["status"] == meta["status"]
        # the run carries its own results
        assert JOB_BUNDLE in run["files"]
    assert len(groups) == 1 and groups.pop().startswith("cartpole-default-")


def test_each_run_carries_its_results(sweeps):
    for job in _jobs(sweeps["estimator"]) + _jobs(sweeps["cartpole"]):
        (bundle,) = job.glob(f"wandb/offline-run-*/files/{JOB_BUNDLE}")
        files = read_bundle(bundle)
        meta = json.loads((job / "metadata.json").read_text())
        assert sorted(files) == sorted(["metadata.json", *meta["result_files"]])
        for name, data in files.items():  # byte for byte what the job wrote
            assert data == (job / name).read_bytes(), name


def test_offline_runs_read_in_process_fast(sweeps):
    files = find_offline_runs([sweeps["root"]])
    assert len(files) == 4
    load_wandb_offline(files[0])  # imports protobuf once
    start = time.perf_counter()
    frames = load_wandb_offline(sweeps["root"])
    per_run = (time.perf_counter() - start) / len(files)
    assert len(frames["runs"]) == 4 and frames["skipped"].empty
    assert per_run < 0.2, f"{per_run:.3f} s per run (wandb leet inspect took ~1 s)"
    start = time.perf_counter()
    results = load_wandb_results(sweeps["root"])
    assert (time.perf_counter() - start) / len(files) < 0.2
    assert len(results.runs) == 4


def _report(tmp: Path, name: str, *args: str) -> Path:
    out = tmp / name
    code = report_main([*args, "--out", str(out), "--resamples", "200"])
    assert code == 0
    return out


def _csvs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tables").glob("*.csv"))}


def test_report_from_wandb_runs_equals_report_from_parquet(sweeps, tmp_path):
    root = str(sweeps["root"])
    parquet = _report(tmp_path, "parquet", root)
    offline = _report(tmp_path, "wandb", "--from-wandb", root)
    tables = _csvs(parquet)
    assert len(tables) >= 4  # estimator and cartpole tables
    assert _csvs(offline) == tables  # byte for byte
    figures = sorted(p.name for p in (parquet / "figures").glob("*.png"))
    assert sorted(p.name for p in (offline / "figures").glob("*.png")) == figures


def test_report_run_holds_every_figure_and_table(sweeps, tmp_path, capsys):
    out = _report(tmp_path, "report", str(sweeps["estimator"]), "--wandb")
    assert "upload it: wandb sync" in capsys.readouterr().out
    (log_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    run = records_to_frames(read_records(log_file))
    group = (sweeps["estimator"] / naming.GROUP_FILE).read_text().strip()
    assert run["run"]["job_type"] == "report" and run["run"]["project"] == "pglab"
    assert run["run"]["group"] == group  # beside the sweep's job runs
    (row,) = run["history"]
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert figures and len(figures) >= 3
    for stem in figures:
        image = row[f"figures/{stem}"]
        assert image["_type"] == "image-file"
        logged = log_file.parent / "files" / image["path"]
        assert logged.read_bytes() == (out / "figures" / f"{stem}.png").read_bytes()
    csvs = sorted((out / "tables").glob("*.csv"))
    assert csvs
    for csv in csvs:
        table = row[f"tables/{csv.stem}"]
        assert table["_type"] == "table-file"
        content = json.loads((log_file.parent / "files" / table["path"]).read_text())
        local = pd.read_csv(csv)
        assert content["columns"] == list(local.columns)
        assert len(content["data"]) == len(local)
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "report"]
    assert sorted(artifact["files"]) == sorted(
        ["report.html", *(f"tables/{csv.name}" for csv in csvs)]
    )
    assert run["summary"]["n_figures"] == len(figures)
    assert run["summary"]["n_tables"] == len(csvs)
    assert run["summary"]["n_jobs"] == 2
    # the sweep read back from W&B leaves the report's own run out, silently
    results = load_wandb_results(out)
    assert results.runs.empty and results.skipped == []


class RecordedFile:
    def __init__(self, name: str, data: bytes | None):
        self.name, self.data = name, data

    def download(self, root: str = ".", replace: bool = False):
        if self.data is None:
            raise ValueError(f"file {self.name} not found")  # as the API does for no file
        path = Path(root) / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.data)
        return open(path)


class RecordedRun:
    """A run as ``wandb.Api().runs()`` returns it; ``file()`` serves its recorded files."""

    def __init__(self, run_id: str, job_type: str, files: dict[str, bytes]):
        self.id = self.name = run_id
        self.job_type, self._files = job_type, files

    def file(self, name: str) -> RecordedFile:
        return RecordedFile(name, self._files.get(name))


class RecordedApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return list(self._runs)


def test_report_results_from_a_recorded_project_equal_the_parquet_ones(sweeps):
    jobs = _jobs(sweeps["estimator"]) + _jobs(sweeps["cartpole"])
    runs = [
        RecordedRun(
            _run_of(job)["run"]["run_id"],
            "x",
            {JOB_BUNDLE: next(job.glob(f"wandb/offline-run-*/files/{JOB_BUNDLE}")).read_bytes()},
        )
        for job in jobs
    ]
    runs.append(RecordedRun("rep0rt", "report", {}))  # the report's run: not a job
    runs.append(RecordedRun("old0ne", "cartpole", {}))  # logged before the bundle existed
    api = RecordedApi(runs)
    results = load_wandb_results("me/pglab", api=api, filters={"group": "g"})
    assert api.calls == [("me/pglab", {"group": "g"})]
    assert results.skipped == [
        ("me/pglab/old0ne", f"no {JOB_BUNDLE}: ValueError: file {JOB_BUNDLE} not found")
    ]
    local = load_results([sweeps["estimator"], sweeps["cartpole"]])
    for name, table in local.tables().items():
        pd.testing.assert_frame_equal(results.tables()[name], table)
    pd.testing.assert_frame_equal(results.runs, local.runs)


def test_a_damaged_bundle_is_skipped_with_its_reason(sweeps, tmp_path):
    job = _jobs(sweeps["estimator"])[0]
    run_dir = next(job.glob("wandb/offline-run-*"))
    copy = tmp_path / run_dir.name
    (copy / "files").mkdir(parents=True)
    (copy / run_dir.glob("run-*.wandb").__next__().name).write_bytes(
        next(run_dir.glob("run-*.wandb")).read_bytes()
    )
    files = read_bundle(run_dir / "files" / JOB_BUNDLE)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data[:10] if name.endswith(".parquet") else data)
    (copy / "files" / JOB_BUNDLE).write_bytes(buffer.getvalue())
    with pytest.warns(UserWarning, match="unreadable result file"):
        results = load_wandb_results(tmp_path)
    assert results.runs.empty
    ((where, reason),) = results.skipped
    assert where == str(copy) and reason.startswith("unreadable result file")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-wandb", "no/such/place"], "--from-wandb no/such/place: not an existing path"),
        ([], "give result directories or --from-wandb"),
    ],
)
def test_bad_report_sources_are_one_line_errors(tmp_path, capsys, args, message):
    try:
        code = report_main([*args, "--out", str(tmp_path / "out")])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_in_process_reader_agrees_with_wandb_leet_inspect(tmp_path):
    """The transaction-log reader against W&B's own decoder, on a log of many 32 KiB blocks
    (records split across blocks: FIRST/MIDDLE/LAST chunks) with NaN values."""
    import math
    import subprocess
    import sys

    import wandb

    run = wandb.init(
        project="t",
        mode="offline",
        dir=str(tmp_path),
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    for i in range(600):
        run.log({"x": i * 0.5, "text": "abc" * (i % 200), "y": math.nan if i % 7 == 0 else i})
    run.finish()
    wandb.teardown()  # the log is complete
    (log_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert log_file.stat().st_size > 8 * 32 * 1024
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = records_to_frames([json.loads(line) for line in proc.stdout.splitlines()])
    mine = records_to_frames(read_records(log_file))

    def rows(run):
        return [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in run["history"]
        ]

    assert len(mine["history"]) == 600
    assert rows(mine) == rows(theirs)
    assert mine["run"]["run_id"] == theirs["run"]["run_id"]
    assert mine["run"]["exit_code"] == theirs["run"]["exit_code"] == 0
