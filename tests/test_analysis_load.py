"""analysis.load, analysis.stats and analysis.wandb_source: stored results -> tidy tables.

Truths checked:

1. A real 2×2 estimator-study sweep (mdp × estimator, run here as a subprocess) loads into
   one row per (job, N): every swept value is a column, and the rows equal the parquet
   files row for row.
2. Same inputs -> identical tables, whatever the order or repetition of the paths; one
   job found twice (same job_hash) is loaded once and the copy is listed as skipped.
3. On real CartPole jobs: failed/running jobs are skipped with their status; a truncated
   parquet file, a missing result file or bad JSON skips the job with a ResultFileWarning
   naming the file; a table without a column pglab.schema requires skips the job with a
   "schema mismatch" reason naming the file and the column (estimator results too: no
   silent drop); a job directory whose metadata.json is gone is listed, not left out;
   old gradient-quality files (batch N in n_trajectories) load as current ones; a
   non-semantic key (threads) never becomes a column; no results -> ValueError naming
   the paths searched.
4. Statistics: the bootstrap CI is scipy's percentile bootstrap over seeds (same rng ->
   same interval), NaN for one seed; per-cell means equal ``groupby().mean()``; the
   collapse interval is scipy's Clopper–Pearson interval; a power law y = c/N has
   log-log slope −1 to rounding error.
5. W&B: an offline run written here reads back (config, every history row, final summary,
   a logged table, non-finite floats); the API loader reads recorded responses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_app
from scipy import stats as scipy_stats

from analysis import stats
from analysis.load import ResultFileWarning, load_results, skip_kind, skipped_summary
from analysis.wandb_source import load_wandb_offline, load_wandb_project
from pglab import schema

MDPS = ("chain", "two_state")
ESTIMATORS = ("reinforce", "reward_to_go")
BATCH_SIZES = (1, 10)


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def estimator_sweep(tmp_path_factory) -> Path:
    """A real multirun of the estimator study: 2 MDPs × 2 estimators, N ∈ {1, 10}, K = 10."""
    out = tmp_path_factory.mktemp("estimator_sweep")
    run_app(
        "estimator_variance.py",
        "-m",
        f"mdp={','.join(MDPS)}",
        f"estimator={','.join(ESTIMATORS)}",
        f"n_trajectories=[{','.join(map(str, BATCH_SIZES))}]",
        "n_repetitions=10",
        "logger=none",
        "progress=false",
        f"paths.output_dir={out}",
    )
    return out / "multirun" / "estimator_variance" / "default"


CARTPOLE_SWEEP = ("n_trajectories=1,2", "seed=0,1", "budget.iterations=3")


@pytest.fixture(scope="module")
def cartpole_runs(tmp_path_factory) -> Path:
    """Real CartPole jobs: sweep ``a`` (N ∈ {1, 2} × seeds {0, 1}, 3 iterations, MLP
    policy, gradient quality at iteration 0) and sweep ``b``: one linear-policy job of the
    same (N, α, seed) as one of ``a``, run with another thread count."""
    out = tmp_path_factory.mktemp("cartpole_runs")
    common = ("logger=none", "progress=false", f"paths.output_dir={out}")
    run_app(
        "cartpole.py",
        "-m",
        *CARTPOLE_SWEEP,
        "gradient_quality.enabled=true",
        "gradient_quality.reference_episodes=10",
        "gradient_quality.n_batches=2",
        "gradient_quality.batch_sizes=[1,2]",
        "gradient_quality.checkpoints=[0]",
        "sweep_name=a",
        *common,
    )
    run_app(
        "cartpole.py",
        "-m",
        "n_trajectories=1",
        "seed=0",
        "budget.iterations=3",
        "policy=linear",
        "threads=2",
        "sweep_name=b",
        *common,
    )
    return out


def job_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metadata.json"))


def copy_sweep(cartpole_runs: Path, tmp_path: Path, sweep: str = "a") -> Path:
    """A private copy of one real sweep to damage."""
    (source,) = {m.parent.parent for m in cartpole_runs.rglob("metadata.json")} & {
        p for p in cartpole_runs.rglob(sweep) if p.is_dir()
    }
    copy = tmp_path / sweep
    shutil.copytree(source, copy)
    return copy


def set_status(job_dir: Path, status: str, error: str | None = None) -> None:
    """Rewrite a job's recorded status as a failed or interrupted job leaves it."""
    meta = json.loads((job_dir / "metadata.json").read_text())
    meta["status"] = status
    if error:
        meta["error"] = error
    (job_dir / "metadata.json").write_text(json.dumps(meta))


# ------------------------------------------------------------- 1. the real sweep


def test_real_estimator_sweep_loads_with_swept_values_as_columns(estimator_sweep):
    results = load_results(estimator_sweep)
    table = results.estimator
    assert results.skipped == []
    assert len(results.runs) == len(MDPS) * len(ESTIMATORS)
    assert set(results.runs["experiment"]) == {"estimator_variance"}
    # One row per (job, N): 4 jobs × 2 batch sizes.
    assert len(table) == len(MDPS) * len(ESTIMATORS) * len(BATCH_SIZES)
    for column in (
        "mdp",
        "mdp.name",
        "estimator",
        "n_trajectories",
        "seed",
        "run_dir",
        "job_hash",
        "relative_bias",
        "total_variance",
        "p_value",
    ):
        assert column in table.columns, column
    assert set(table["mdp.name"]) == set(MDPS)
    assert set(zip(table["mdp.name"], table["estimator"], strict=True)) == {
        (m, e) for m in MDPS for e in ESTIMATORS
    }
    assert sorted(table["n_trajectories"].unique()) == list(BATCH_SIZES)
    assert (table.groupby(["mdp.name", "estimator"]).size() == len(BATCH_SIZES)).all()
    # The config's list of N is constant across the sweep, so it is not a column.
    assert "config.n_trajectories" not in table.columns


def test_real_sweep_rows_equal_the_parquet_files(estimator_sweep):
    table = load_results(estimator_sweep).estimator
    for run_dir, rows in table.groupby("run_dir"):
        stored = pd.read_parquet(Path(run_dir) / "results.parquet")
        stored = stored.sort_values("n_trajectories").reset_index(drop=True)
        loaded = rows.sort_values("n_trajectories").reset_index(drop=True)
        numeric = [c for c in stored.columns if pd.api.types.is_numeric_dtype(stored[c])]
        pd.testing.assert_frame_equal(loaded[numeric], stored[numeric], check_dtype=False)
        assert list(loaded["estimator"]) == list(stored["estimator"])


def test_same_inputs_identical_tables_and_duplicates_loaded_once(estimator_sweep, tmp_path):
    job_dirs = sorted(p.parent for p in estimator_sweep.rglob("metadata.json"))
    first = load_results([estimator_sweep])
    again = load_results([*reversed(job_dirs), estimator_sweep, estimator_sweep])
    pd.testing.assert_frame_equal(first.estimator, again.estimator)
    pd.testing.assert_frame_equal(first.runs, again.runs)
    # A copy of one job elsewhere has the same job_hash: loaded once, the copy listed.
    copy = tmp_path / "copy_of_job"
    shutil.copytree(job_dirs[0], copy)
    with_copy = load_results([estimator_sweep, copy])
    assert len(with_copy.estimator) == len(first.estimator)
    assert len(with_copy.skipped) == 1
    dropped, reason = with_copy.skipped[0]
    kept = reason.removeprefix("duplicate of ").split(" (same job_hash")[0]
    assert {dropped, kept} == {str(copy.resolve()), str(job_dirs[0])}
    # Either copy may win (latest finished_at, then smallest path); the rows are the same.
    pd.testing.assert_frame_equal(
        with_copy.estimator.drop(columns="run_dir"), first.estimator.drop(columns="run_dir")
    )


# ------------------------------------------- 2./3. real layouts, failures, the schema


def test_swept_nested_config_keys_become_dotted_columns(cartpole_runs):
    results = load_results(cartpole_runs)
    summary = results.cartpole_summary
    assert results.skipped == []
    assert sorted(summary["policy.kind"]) == ["linear", "mlp", "mlp", "mlp", "mlp"]
    assert "paths.output_dir" not in summary.columns  # never a column
    assert "threads" not in summary.columns  # non-semantic (pglab.schema), though it differs
    assert "threads" not in results.runs.columns
    assert "policy.kind" in results.design["cartpole_summary"]
    assert len(results.cartpole_history) == 5 * 3


def test_failed_and_running_jobs_are_skipped_with_their_status(cartpole_runs, tmp_path):
    sweep = copy_sweep(cartpole_runs, tmp_path)
    good, failed, running, *rest = job_dirs(sweep)
    set_status(failed, "failed", "RuntimeError: boom")
    set_status(running, "running")
    results = load_results(sweep)
    assert list(results.runs["run_dir"]) == [str(good.resolve()), *map(str, rest)]
    reasons = dict(results.skipped)
    assert "status 'failed': RuntimeError: boom" == reasons[str(failed.resolve())]
    assert "status 'running'" == reasons[str(running.resolve())]


@pytest.mark.parametrize("damage", ["truncate_parquet", "delete_parquet", "bad_json"])
def test_damaged_job_is_skipped_with_a_warning_naming_the_file(cartpole_runs, tmp_path, damage):
    sweep = copy_sweep(cartpole_runs, tmp_path)
    bad = job_dirs(sweep)[1]
    if damage == "truncate_parquet":
        file = bad / "summary.parquet"
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif damage == "delete_parquet":
        file = bad / "history.parquet"
        file.unlink()
    else:
        file = bad / "metadata.json"
        file.write_text('{"experiment": "cartpole", "status": ')
    with pytest.warns(ResultFileWarning, match=str(file.resolve().name)) as caught:
        results = load_results(sweep)
    assert any(str(file.resolve()) in str(w.message) for w in caught)
    assert str(bad.resolve()) not in set(results.cartpole_summary["run_dir"])
    assert str(bad.resolve()) not in set(results.cartpole_history["run_dir"])
    assert len(results.runs) == 3
    assert [path for path, _ in results.skipped] == [str(bad.resolve())]
    assert str(file.resolve()) in results.skipped[0][1]


@pytest.mark.parametrize("stem", ["summary", "history", "gradient_quality"])
def test_a_table_without_its_schema_columns_skips_the_job_with_its_reason(
    cartpole_runs, tmp_path, stem
):
    """A table written with other columns (here: without one the schema requires) used to
    be loaded and crash the report (summary: TypeError) or drop rows silently."""
    sweep = copy_sweep(cartpole_runs, tmp_path)
    bad = job_dirs(sweep)[0]
    file = bad / f"{stem}.parquet"
    spec = schema.CARTPOLE.table(stem)
    dropped = spec.columns[0]
    pd.read_parquet(file).drop(columns=[dropped]).to_parquet(file, index=False)
    with pytest.warns(ResultFileWarning, match="schema mismatch"):
        results = load_results(sweep)
    (skip,) = results.skipped
    assert skip[0] == str(bad.resolve())
    assert skip[1].startswith(f"schema mismatch: {file.resolve()} lacks column(s) {dropped}")
    assert len(results.runs) == 3 and str(bad.resolve()) not in set(results.runs["run_dir"])
    for name in ("cartpole_history", "cartpole_summary", "gradient_quality"):
        assert str(bad.resolve()) not in set(getattr(results, name)["run_dir"]), name


def test_wrong_column_estimator_results_are_skipped_not_dropped(estimator_sweep, tmp_path):
    copy = tmp_path / "estimator"
    shutil.copytree(estimator_sweep, copy)
    bad = job_dirs(copy)[0]
    file = bad / "results.parquet"
    pd.read_parquet(file).rename(columns={"relative_bias": "rel_bias"}).to_parquet(file)
    with pytest.warns(ResultFileWarning, match="relative_bias"):
        results = load_results(copy)
    assert results.skipped == [
        (
            str(bad.resolve()),
            f"schema mismatch: {file.resolve()} lacks column(s) relative_bias that "
            f"pglab.schema requires of estimator_variance/results",
        )
    ]
    assert len(results.estimator) == (len(MDPS) * len(ESTIMATORS) - 1) * len(BATCH_SIZES)


def test_job_without_metadata_is_listed_not_left_out(cartpole_runs, tmp_path):
    sweep = copy_sweep(cartpole_runs, tmp_path)
    lost = job_dirs(sweep)[2]
    (lost / "metadata.json").unlink()
    with pytest.warns(ResultFileWarning, match="no metadata.json"):
        results = load_results(sweep)
    (skip,) = results.skipped
    assert skip[0] == str(lost.resolve())
    assert skip[1].startswith("no metadata.json: the directory holds ")
    assert "history.parquet" in skip[1] and "summary.parquet" in skip[1]
    assert skip_kind(skip[1]) == "no metadata.json"
    assert len(results.runs) == 3


def test_only_metadata_less_jobs_still_load_as_zero_jobs(cartpole_runs, tmp_path):
    sweep = copy_sweep(cartpole_runs, tmp_path)
    for job in job_dirs(sweep):
        (job / "metadata.json").unlink()
    with pytest.warns(ResultFileWarning):
        results = load_results(sweep)
    assert results.runs.empty and len(results.skipped) == 4
    assert skipped_summary(results.skipped) == "4 no metadata.json"


def to_old_gradient_quality(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as written before pglab.schema: n_trajectories was the batch N and
    train_n_trajectories the training N."""
    return frame.rename(
        columns={"n_trajectories": "train_n_trajectories", "batch_n_trajectories": "n_trajectories"}
    )


def test_old_gradient_quality_files_are_mapped_on_load(cartpole_runs, tmp_path):
    sweep = copy_sweep(cartpole_runs, tmp_path)
    current = load_results(sweep).gradient_quality
    assert set(current["batch_n_trajectories"]) == {1, 2}
    assert set(current["n_trajectories"]) == {1, 2}  # the training N of each run
    for file in sweep.rglob("gradient_quality.parquet"):
        frame = pd.read_parquet(file)
        if "batch_n_trajectories" in frame.columns:
            to_old_gradient_quality(frame).to_parquet(file, index=False)
    old = load_results(sweep)
    assert old.skipped == []
    pd.testing.assert_frame_equal(old.gradient_quality, current[old.gradient_quality.columns])
    assert list(old.gradient_quality.columns) == list(current.columns)


def test_no_results_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no results found: no metadata.json under .*empty"):
        load_results(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_results(tmp_path / "typo")


# -------------------------------------------------------------------- 4. statistics


def test_bootstrap_ci_is_scipys_percentile_bootstrap_over_seeds():
    values = np.array([101.0, 87.5, 120.25, 95.0, 110.0])  # one final return per seed
    low, high = stats.bootstrap_ci(values, confidence=0.9, n_resamples=1000, seed=3)
    reference = scipy_stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=1000,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(3),
    )
    assert (low, high) == (reference.confidence_interval.low, reference.confidence_interval.high)
    assert low < values.mean() < high
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)
    assert all(np.isnan(stats.bootstrap_ci([5.0])))  # one seed: no interval
    assert all(np.isnan(stats.bootstrap_ci([5.0, np.nan])))
    assert stats.bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)


def test_curve_ci_resamples_seeds_jointly_and_matches_the_single_column_interval():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(6, 4))  # [n_seeds, n_iterations]
    low, high = stats.bootstrap_ci_columns(matrix, n_resamples=500, seed=1)
    for j in range(matrix.shape[1]):  # same rng seed -> same resampled seed indices
        assert (low[j], high[j]) == pytest.approx(
            stats.bootstrap_ci(matrix[:, j], n_resamples=500, seed=1), rel=1e-12
        )


def test_cell_means_equal_groupby_and_under_seeded_cells_are_listed(tmp_path):
    rows = [
        {"n_trajectories": n, "step_size": a, "seed": s, "final_return": 10 * n + a + s}
        for n in (1, 10)
        for a in (0.1, 1.0)
        for s in range(3)
        if (n, a, s) != (10, 1.0, 2)
    ]
    frame = pd.DataFrame(rows)
    cells = stats.mean_ci_over_seeds(
        frame, ["n_trajectories", "step_size"], "final_return", n_resamples=200
    )
    expected = frame.groupby(["n_trajectories", "step_size"])["final_return"].mean()
    np.testing.assert_allclose(cells["mean"], expected.to_numpy(), rtol=0, atol=1e-12)
    assert cells["n_seeds"].tolist() == [3, 3, 3, 2]
    thin = stats.under_seeded_cells(frame, ["n_trajectories", "step_size"])
    assert thin.to_dict("records") == [
        {"n_trajectories": 10, "step_size": 1.0, "n_seeds": 2, "expected": 3}
    ]


def test_collapse_table_counts_and_clopper_pearson_interval():
    summary = pd.DataFrame(
        {
            "n_trajectories": [1] * 5 + [10] * 4,
            "step_size": [0.1] * 9,
            "collapsed": [True, True, False, True, False, False, False, True, False],
        }
    )
    table = stats.collapse_table(summary, ["n_trajectories", "step_size"])
    assert table[["k", "n"]].to_numpy().tolist() == [[3, 5], [1, 4]]
    ci = scipy_stats.binomtest(3, 5).proportion_ci(0.95, method="exact")
    assert (table.loc[0, "ci_low"], table.loc[0, "ci_high"]) == (ci.low, ci.high)


def test_loglog_fit_of_a_power_law_is_its_exponent():
    n = np.array([1, 10, 100, 1000])
    fit = stats.loglog_fit(n, 3.0 / n)
    assert fit["slope"] == pytest.approx(-1.0, abs=1e-12)
    assert fit["intercept"] == pytest.approx(np.log10(3.0), abs=1e-12)
    assert np.isnan(stats.loglog_fit([5], [1.0])["slope"])
    assert not hasattr(stats, "loglog_slope")  # one name, one concept: pglab.stats has that


def test_step_resample_reads_each_run_as_a_step_function_on_the_common_span():
    frame = pd.DataFrame(
        {
            "cell": ["a"] * 5,
            "run_dir": ["r0", "r0", "r0", "r1", "r1"],
            "env_steps": [10, 30, 60, 20, 50],
            "return_mean": [1.0, 2.0, 3.0, 10.0, 20.0],
        }
    )
    out = stats.step_resample(frame, ["cell"], "env_steps", "return_mean", 4, "run_dir")
    # common span: from the latest first step (20) to the earliest last step (50)
    assert sorted(out["env_steps"].unique()) == [20, 30, 40, 50]
    r0 = out[out["run_dir"] == "r0"]["return_mean"].tolist()
    r1 = out[out["run_dir"] == "r1"]["return_mean"].tolist()
    assert r0 == [1.0, 2.0, 2.0, 2.0] and r1 == [10.0, 10.0, 10.0, 20.0]


# ---------------------------------------------------------------------------- 5. W&B


def test_offline_wandb_run_reads_back(tmp_path):
    import wandb

    run = wandb.init(
        mode="offline",
        dir=str(tmp_path),
        project="pglab",
        group="sweep_a",
        job_type="cartpole",
        name="n_trajectories=10,step_size=0.1",
        config={"seed": 3, "step_size": 0.1, "policy": {"kind": "mlp"}},
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    returns = [10.0, 12.5, float("nan"), 30.0]
    for step, value in enumerate(returns):
        run.log({"return_mean": value, "grad_norm": 1.0 / (step + 1)}, step=step)
    run.config.update({"late_key": 7})
    run.log(
        {
            "results": wandb.Table(
                dataframe=pd.DataFrame({"n_trajectories": [1, 10], "snr": [0.5, 5.0]})
            )
        }
    )
    run.summary.update({"final_return": 30.0, "status": "complete"})
    run.finish()

    frames = load_wandb_offline(tmp_path)
    assert frames["skipped"].empty
    assert frames["runs"][["name", "group", "job_type", "state"]].iloc[0].tolist() == [
        "n_trajectories=10,step_size=0.1",
        "sweep_a",
        "cartpole",
        "finished",
    ]
    config = frames["config"].iloc[0]
    assert (config["seed"], config["step_size"], config["policy.kind"], config["late_key"]) == (
        3,
        0.1,
        "mlp",
        7,
    )
    history = frames["history"]
    np.testing.assert_array_equal(history["return_mean"].to_numpy()[:4], np.array(returns))
    assert history["_step"].tolist()[:4] == [0, 1, 2, 3]
    summary = frames["summary"].iloc[0]
    assert (summary["final_return"], summary["status"]) == (30.0, "complete")
    table = frames["table/results"]
    assert table[["n_trajectories", "snr"]].to_numpy().tolist() == [[1, 0.5], [10, 5.0]]


def test_unreadable_offline_file_is_skipped_with_a_warning(tmp_path):
    bad = tmp_path / "wandb" / "offline-run-x" / "run-x.wandb"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a wandb log")
    with pytest.warns(ResultFileWarning, match="run-x.wandb"):
        frames = load_wandb_offline(tmp_path)
    assert frames["skipped"]["path"].tolist() == [str(bad.resolve())]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no W&B run files"):
        load_wandb_offline(empty)


class RecordedRun:
    """A run as ``wandb.Api().runs()`` returned it (fields recorded, no network)."""

    def __init__(self, run_id, name, group, config, summary, history):
        self.id, self.name, self.group, self.job_type, self.state = (
            run_id,
            name,
            group,
            "cartpole",
            "finished",
        )
        self.config, self.summary, self._history = config, summary, history

    def history(self, samples=500, pandas=True):
        assert pandas
        return self._history.head(samples)


class RecordedApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return list(self._runs)


def test_wandb_project_loader_reads_recorded_api_responses():
    runs = [
        RecordedRun(
            "b2",
            "n_trajectories=100",
            "grid",
            {"n_trajectories": 100, "seed": 1, "policy": {"kind": "mlp"}},
            {"final_return": 480.0, "_wandb": {"runtime": 3}},
            pd.DataFrame({"_step": [0, 1], "return_mean": [20.0, 480.0]}),
        ),
        RecordedRun(
            "a1",
            "n_trajectories=10",
            "grid",
            {"n_trajectories": 10, "seed": 0, "policy": {"kind": "mlp"}},
            {"final_return": 150.0},
            pd.DataFrame({"_step": [0, 1, 2], "return_mean": [20.0, 90.0, 150.0]}),
        ),
    ]
    api = RecordedApi(runs)
    frames = load_wandb_project("me", "pglab", api=api, filters={"group": "grid"})
    assert api.calls == [("me/pglab", {"group": "grid"})]
    assert frames["runs"]["run_id"].tolist() == ["a1", "b2"]  # sorted, whatever the API order
    assert frames["config"]["n_trajectories"].tolist() == [10, 100]
    assert frames["config"]["policy.kind"].tolist() == ["mlp", "mlp"]
    assert frames["summary"]["final_return"].tolist() == [150.0, 480.0]
    assert "_wandb.runtime" not in frames["summary"].columns
    history = frames["history"]
    assert history.groupby("run_id").size().to_dict() == {"a1": 3, "b2": 2}
    assert history[history["run_id"] == "a1"]["return_mean"].tolist() == [20.0, 90.0, 150.0]
    with pytest.raises(ValueError, match="no runs in W&B project me/empty"):
        load_wandb_project("me", "empty", api=RecordedApi([]))


def test_warnings_are_not_raised_for_a_clean_load(estimator_sweep):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultFileWarning)
        load_results(estimator_sweep)


def test_analysis_never_imports_training_code():
    """analysis/ reads stored results only: importing it loads the dependency-free result
    schema (pglab.schema) and no other pglab module, no job runtime and no torch/gymnasium."""
    code = (
        "import sys, analysis.load, analysis.stats, analysis.figures, analysis.report, "
        "analysis.report.cli, analysis.wandb_source\n"
        "roots = ('pglab', 'experiments', 'pglab_jobs', 'torch', 'gymnasium')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in roots\n"
        "             and m not in ('pglab', 'pglab.schema'))\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_config_list_beside_a_string_column_loads(tmp_path):
    """Two real calibration sweeps, one with ``estimator=reinforce`` and one with a list of
    estimators: the config value (str or list) is compared with the rows' estimator
    column (a pyarrow string column), which raised NotImplementedError from pandas."""
    common = (
        "mdp=two_state",
        "n_trajectories=[2]",
        "n_studies=2",
        "n_repetitions=20",
        "n_resamples=100",
        "logger=none",
        "progress=false",
        f"paths.output_dir={tmp_path}",
    )
    run_app("calibration.py", "-m", "estimator=reinforce", "sweep_name=one", *common)
    run_app("calibration.py", "-m", "estimator=[reinforce,reward_to_go]", "sweep_name=two", *common)
    results = load_results(tmp_path)
    assert results.skipped == [] and len(results.runs) == 2
    table = results.calibration
    assert sorted(table["estimator"].unique()) == ["reinforce", "reward_to_go"]
    configs = {
        value if isinstance(value, str) else tuple(value) for value in table["config.estimator"]
    }
    assert configs == {"reinforce", ("reinforce", "reward_to_go")}
    assert "config.estimator" in results.design["calibration"]
