"""``python -m analysis.report``: figures, tables and one HTML file from real tiny sweeps.

Truths checked:

1. End to end on real sweeps run here (estimator study; CartPole and tabular ascent when
   their apps exist): every expected figure is written as a non-empty PNG plus SVG, the
   HTML embeds exactly those PNGs (base64 equal to the files) and names each file, and
   every caption states the CI level and the number of seeds.
2. The report's tables are the data: CartPole final return / AUC per (N, α) equal
   ``groupby().mean()`` over the loaded summaries, collapse counts equal the sums, and the
   estimator tables equal the parquet rows.
3. A truncated parquet file: the CLI warns naming it, the run is skipped, the HTML lists
   it under "Skipped runs", and the cell that lost a seed is listed as under-seeded.
4. No results: exit status 2 and a one-line message, no traceback.
5. Same inputs -> byte-identical tables and HTML.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_app

from analysis.load import load_results
from analysis.report import main

RESAMPLES = "500"  # bootstrap resamples in tests (the CLI default is 2000)
HAS_CARTPOLE = (REPO / "experiments" / "cartpole.py").exists()
HAS_ASCENT = (REPO / "experiments" / "tabular_ascent.py").exists()
ESTIMATOR_FIGURES = {
    "estimator_relative_bias",
    "estimator_variance",
    "estimator_mse_cosine",
    "estimator_snr",
}
CARTPOLE_FIGURES = {
    "cartpole_learning_curves",
    "cartpole_final_return_heatmap",
    "cartpole_auc_heatmap",
    "cartpole_collapse",
    # gradient quality is measured on each run's own policy: one figure per training N
    "cartpole_gradient_quality_2",
    "cartpole_gradient_quality_4",
}
ASCENT_FIGURES = {"ascent_expected_return"}
CARTPOLE_GRID = {"n_trajectories": (2, 4), "step_size": (0.01, 0.1), "seed": (0, 1)}
GQ_BATCH_SIZES = (1, 4)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """Real tiny sweeps: estimator study 2×2; CartPole 2×2×2 seeds (5 iterations, gradient
    quality at iterations 0 and 5); tabular ascent exact/reinforce × 2 α × 2 seeds."""
    out = tmp_path_factory.mktemp("sweeps")
    common = ("logger=none", "progress=false", f"paths.output_dir={out}")
    run_app(
        "estimator_variance.py",
        "-m",
        "mdp=chain,two_state",
        "estimator=reinforce,reward_to_go",
        "n_trajectories=[1,10]",
        "n_repetitions=10",
        *common,
    )
    dirs = {"estimator": out / "multirun" / "estimator_variance" / "default"}
    if HAS_CARTPOLE:
        grid = [f"{k}={','.join(map(str, v))}" for k, v in CARTPOLE_GRID.items()]
        run_app(
            "cartpole.py",
            "-m",
            *grid,
            "budget.iterations=5",
            "gradient_quality.enabled=true",
            "gradient_quality.reference_episodes=50",
            "gradient_quality.n_batches=2",
            f"gradient_quality.batch_sizes=[{','.join(map(str, GQ_BATCH_SIZES))}]",
            "gradient_quality.checkpoints=[0,5]",
            *common,
        )
        dirs["cartpole"] = out / "multirun" / "cartpole" / "default"
    if HAS_ASCENT:
        run_app(
            "tabular_ascent.py",
            "-m",
            "gradient=exact,reinforce",
            "step_size=1,10",
            "seed=0,1",
            "n_iterations=10",
            *common,
        )
        dirs["ascent"] = out / "multirun" / "tabular_ascent" / "default"
    return dirs


@pytest.fixture(scope="module")
def report(sweeps, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main([*map(str, sweeps.values()), "--out", str(out), "--resamples", RESAMPLES]) == 0
    return out


def expected_figures(sweeps) -> set[str]:
    names = set(ESTIMATOR_FIGURES)
    if "cartpole" in sweeps:
        names |= CARTPOLE_FIGURES
    if "ascent" in sweeps:
        names |= ASCENT_FIGURES
    return names


def test_report_writes_every_figure_and_embeds_it_in_the_html(report, sweeps):
    html = (report / "report.html").read_text(encoding="utf-8")
    pngs = sorted((report / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == expected_figures(sweeps)
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(pngs)
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, png
        assert base64.b64encode(data).decode() in embedded, f"{png.name} not embedded"
        assert f'href="figures/{png.name}"' in html
        svg = png.with_suffix(".svg")
        assert svg.stat().st_size > 10_000 and f'href="figures/{svg.name}"' in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert len(captions) == len(pngs)
    for caption in captions:
        assert "95% CI" in caption or "point estimates" in caption.lower(), caption
        assert re.search(r"\d+(–\d+)? seeds? per cell", caption), caption
    for section in ("Estimator study", "Under-seeded cells", "Skipped runs"):
        assert f"<h2>{section}" in html
    assert ("<h2>CartPole" in html) == ("cartpole" in sweeps)
    assert ("<h2>Tabular ascent" in html) == ("ascent" in sweeps)


def test_estimator_tables_equal_the_parquet_rows(report, sweeps):
    stored = pd.concat(
        [pd.read_parquet(f) for f in sorted(sweeps["estimator"].rglob("results.parquet"))]
    )
    key = ["mdp", "estimator", "n_trajectories"]
    stored = stored.sort_values(key).reset_index(drop=True)
    tests = pd.read_csv(report / "tables" / "estimator_unbiasedness.csv").sort_values(key)
    np.testing.assert_allclose(tests["test_statistic"], stored["test_statistic"], rtol=1e-12)
    np.testing.assert_allclose(tests["p_value"], stored["p_value"], rtol=1e-12)
    assert (
        tests["verdict"].eq("reject unbiased").to_numpy() == (stored["p_value"] < 0.05).to_numpy()
    ).all()
    assert (
        tests["verdict"].eq("insufficient data").to_numpy() == stored["p_value"].isna().to_numpy()
    ).all()
    cells = pd.read_csv(report / "tables" / "estimator_cells.csv").sort_values(key)
    for column in (
        "relative_bias",
        "relative_bias_ci_low",
        "relative_bias_ci_high",
        "total_variance",
        "mse",
        "cosine_mean",
        "snr",
    ):
        np.testing.assert_allclose(cells[column], stored[column], rtol=1e-12, err_msg=column)


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_cartpole_tables_equal_direct_pandas(report, sweeps):
    summary = load_results(sweeps["cartpole"]).cartpole_summary
    by = ["n_trajectories", "step_size"]
    direct = summary.groupby(by)[["final_return", "auc"]].mean().reset_index()
    table = pd.read_csv(report / "tables" / "cartpole_returns.csv").sort_values(by)
    np.testing.assert_allclose(table["final_return"], direct["final_return"], rtol=1e-12)
    np.testing.assert_allclose(table["auc"], direct["auc"], rtol=1e-12)
    assert table["n_seeds"].tolist() == summary.groupby(by)["seed"].nunique().tolist()
    assert (table["n_seeds"] == len(CARTPOLE_GRID["seed"])).all()
    collapse = pd.read_csv(report / "tables" / "cartpole_collapse.csv").sort_values(by)
    assert collapse["k"].tolist() == summary.groupby(by)["collapsed"].sum().tolist()
    assert collapse["n"].tolist() == summary.groupby(by).size().tolist()


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_gradient_quality_table_has_one_row_per_batch_size(report):
    for train_n in CARTPOLE_GRID["n_trajectories"]:
        quality = pd.read_csv(report / "tables" / f"cartpole_gradient_quality_{train_n}.csv")
        assert sorted(quality["batch_n_trajectories"].unique()) == list(GQ_BATCH_SIZES)
        first = quality[quality["checkpoint_iteration"] == 0]  # every run measures it
        assert (first["n_seeds"] == len(CARTPOLE_GRID["seed"])).all()


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_learning_curves_are_drawn_over_cumulative_env_steps(report, sweeps):
    """Budgets are in env steps: the curves' x axis is the history's cumulative env_steps,
    over the span every run of a cell reached; the table holds every seed at every point."""
    history = load_results(sweeps["cartpole"]).cartpole_history
    curves = pd.read_csv(report / "tables" / "cartpole_learning_curves.csv")
    assert "env_steps" in curves.columns and "iteration" not in curves.columns
    for (n, alpha), cell in curves.groupby(["n_trajectories", "step_size"]):
        runs = history[(history["n_trajectories"] == n) & (history["step_size"] == alpha)]
        by_run = runs.groupby("run_dir")["env_steps"]
        assert cell["env_steps"].min() == by_run.min().max()
        assert cell["env_steps"].max() == by_run.max().min()
        assert (cell["n_seeds"] == len(CARTPOLE_GRID["seed"])).all()
        # at a run's own last step the mean is the mean of the runs' values there
        last = cell[cell["env_steps"] == cell["env_steps"].max()]["mean"].item()
        values = [
            run[run["env_steps"] <= cell["env_steps"].max()]["return_mean"].iloc[-1]
            for _, run in runs.sort_values("env_steps").groupby("run_dir")
        ]
        assert last == pytest.approx(np.mean(values), rel=1e-12)


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_truncated_parquet_is_skipped_warned_and_listed(sweeps, tmp_path, capsys):
    copy = tmp_path / "cartpole"
    shutil.copytree(sweeps["cartpole"], copy)
    damaged = sorted(copy.rglob("summary.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    cell = pd.read_parquet(damaged.parent / "history.parquet").iloc[0]
    out = tmp_path / "report"
    assert main([str(copy), "--out", str(out), "--resamples", RESAMPLES]) == 0
    stderr = capsys.readouterr().err
    assert f"warning: skipping job {damaged.parent.resolve()}" in stderr
    assert str(damaged.resolve()) in stderr
    html = (out / "report.html").read_text(encoding="utf-8")
    skipped_section = html.split("<h2>Skipped runs</h2>")[1]
    assert str(damaged.resolve()) in skipped_section
    thin = pd.read_csv(out / "tables" / "under_seeded_cells.csv")
    # the cell as the returns table names it (the collapse table has the same cells)
    expected_cell = (
        f"env_id={cell['env_id']}, estimator={cell['estimator']}, update={cell['update']}, "
        f"optimizer={cell['optimizer']}, n_trajectories={cell['n_trajectories']}, "
        f"step_size={cell['step_size']:g}"
    )
    # (a run that stopped early can leave a gradient-quality checkpoint under-seeded too)
    thin = thin[~thin["table"].str.startswith("cartpole_gradient_quality")]
    assert thin.to_dict("records") == [
        {
            "table": "cartpole_returns, cartpole_collapse",
            "cell": expected_cell,
            "n_seeds": 1,
            "expected": 2,
        }
    ]
    assert expected_cell in html.split("<h2>Under-seeded cells</h2>")[1]


def test_no_results_exits_2_with_a_message(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(empty), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"error: no results found: no metadata.json under {empty.resolve()}"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "report.html").exists()


def test_same_inputs_give_identical_tables_and_html(report, sweeps, tmp_path):
    again = tmp_path / "again"
    # Paths in another order: the inputs are the same set of jobs.
    assert (
        main(
            [
                *map(str, reversed(list(sweeps.values()))),
                "--out",
                str(again),
                "--resamples",
                RESAMPLES,
            ]
        )
        == 0
    )
    first_tables = sorted(p.name for p in (report / "tables").glob("*.csv"))
    assert first_tables == sorted(p.name for p in (again / "tables").glob("*.csv"))
    for name in first_tables:
        assert (report / "tables" / name).read_bytes() == (again / "tables" / name).read_bytes(), (
            name
        )
    strip_inputs = re.compile(r"<p>Inputs: .*?</code>\. ", flags=re.S)
    first = strip_inputs.sub("", (report / "report.html").read_text(encoding="utf-8"))
    second = strip_inputs.sub("", (again / "report.html").read_text(encoding="utf-8"))
    assert first == second


# ------------------------------------------------- faults of issue 9: schema, pooling, env


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analysis.report", *args, "--resamples", RESAMPLES],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def captions(html: str) -> dict[str, str]:
    """Figure name -> caption text."""
    return dict(
        re.findall(r'<figure id="([^"]+)">.*?<figcaption>(.*?)</figcaption>', html, flags=re.S)
    )


def seeds_in(caption: str) -> tuple[int, int]:
    """``(low, high)`` of the caption's "k seeds per cell" / "k–m seeds per cell"."""
    found = re.search(r"(\d+)(?:–(\d+))? seeds? per cell", caption)
    assert found, caption
    return int(found.group(1)), int(found.group(2) or found.group(1))


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_nothing_usable_exits_1_with_one_line(sweeps, tmp_path):
    """Jobs found but none loadable: no report, one line with the counts, exit 1 (was 0)."""
    copy = tmp_path / "cartpole"
    shutil.copytree(sweeps["cartpole"], copy)
    jobs = sorted(p.parent for p in copy.rglob("metadata.json"))
    for job in jobs[:3]:
        (job / "metadata.json").unlink()
    for job in jobs[3:]:
        file = job / "summary.parquet"
        pd.read_parquet(file).drop(columns="final_return").to_parquet(file, index=False)
    proc = run_report(str(copy), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: 0 jobs loaded, {len(jobs)} skipped: {len(jobs) - 3} schema mismatch, "
        f"3 no metadata.json (no report written)"
    ]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
@pytest.mark.parametrize("kind", ["other_table", "renamed_column"])
def test_a_summary_with_other_columns_is_listed_and_the_report_is_written(sweeps, tmp_path, kind):
    """Used to end in a TypeError with no report.html (other columns altogether), or to
    load the job without its final return (a renamed column) and list nothing."""
    copy = tmp_path / "cartpole"
    shutil.copytree(sweeps["cartpole"], copy)
    job = sorted(p.parent for p in copy.rglob("metadata.json"))[0]
    file = job / "summary.parquet"
    if kind == "other_table":
        pd.DataFrame({"foo": [1.0], "bar": ["x"]}).to_parquet(file)
    else:
        pd.read_parquet(file).rename(columns={"final_return": "last_return"}).to_parquet(file)
    out = tmp_path / "out"
    proc = run_report(str(copy), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "1 skipped (1 schema mismatch)" in html
    listed = pd.read_csv(out / "tables" / "skipped_runs.csv")
    assert listed["path"].tolist() == [str(job.resolve())]
    if kind == "renamed_column":
        assert "lacks column(s) final_return that" in listed["reason"].item()
    else:
        assert "lacks column(s) env_id, estimator, n_trajectories" in listed["reason"].item()
        assert "more that pglab.schema requires of cartpole/summary" in listed["reason"].item()
    assert str(file.resolve()) in html.split("<h2>Skipped runs</h2>")[1]


@pytest.fixture(scope="module")
def two_budgets(tmp_path_factory) -> Path:
    """Two real sweeps of the same (N, α) grid that differ only in budget.iterations:
    'long' (4 iterations) with seeds 0-3, 'short' (3 iterations) with seeds 0-2 at N = 1
    and 0-1 at N = 2."""
    out = tmp_path_factory.mktemp("two_budgets")
    common = ("step_size=0.01", "logger=none", "progress=false", f"paths.output_dir={out}")
    for n, seeds, budget, name in (
        ("1,2", "0,1,2,3", 4, "long"),
        ("1", "0,1,2", 3, "short"),
        ("2", "0,1", 3, "short"),
    ):
        run_app(
            "cartpole.py",
            "-m",
            f"n_trajectories={n}",
            f"seed={seeds}",
            f"budget.iterations={budget}",
            f"sweep_name={name}",
            *common,
        )
    return out


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_sweeps_differing_in_budget_are_split_and_seed_counts_agree(two_budgets, tmp_path):
    """Was: one pooled cell with n = 7 in the collapse table, "4 seeds per cell" in the
    captions and "Under-seeded cells: None"."""
    out = tmp_path / "out"
    assert main([str(two_budgets), "--out", str(out), "--resamples", RESAMPLES]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Cells are split by budget.iterations" in html
    expected = {"_3": {1: 3, 2: 2}, "_4": {1: 4, 2: 4}}  # slug -> N -> runs
    figures_by_slug = {}
    for name, caption in captions(html).items():
        slug = name[name.rindex("_") :]
        figures_by_slug.setdefault(slug, []).append(name)
        counts = expected[slug].values()
        assert seeds_in(caption) == (min(counts), max(counts)), name
        assert f"budget.iterations = {slug[1:]}" in caption, name
    assert sorted(figures_by_slug) == ["_3", "_4"]
    for slug, runs in expected.items():
        collapse = pd.read_csv(out / "tables" / f"cartpole_collapse{slug}.csv")
        returns = pd.read_csv(out / "tables" / f"cartpole_returns{slug}.csv")
        assert dict(zip(collapse["n_trajectories"], collapse["n"], strict=True)) == runs
        assert dict(zip(returns["n_trajectories"], returns["n_seeds"], strict=True)) == runs
        assert set(returns["budget.iterations"]) == {int(slug[1:])}
    thin = pd.read_csv(out / "tables" / "under_seeded_cells.csv")
    assert thin[["n_seeds", "expected"]].to_numpy().tolist() == [[2, 3]]
    assert "budget.iterations=3" in thin["cell"].item()
    assert "n_trajectories=2" in thin["cell"].item()


@pytest.fixture(scope="module")
def acrobot(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("acrobot")
    run_app(
        "cartpole.py",
        "-m",
        "env_id=Acrobot-v1",
        "n_trajectories=1",
        "seed=0,1",
        "budget.iterations=2",
        "logger=none",
        "progress=false",
        f"paths.output_dir={out}",
    )
    return out


@pytest.mark.skipif(not HAS_CARTPOLE, reason="experiments/cartpole.py does not exist yet")
def test_each_env_gets_its_own_section_titled_with_its_id(acrobot, sweeps, tmp_path):
    """Was: an Acrobot-v1 run reported under "CartPole", with "Acrobot" nowhere."""
    out = tmp_path / "out"
    assert (
        main([str(acrobot), str(sweeps["cartpole"]), "--out", str(out), "--resamples", RESAMPLES])
        == 0
    )
    html = (out / "report.html").read_text(encoding="utf-8")
    titles = re.findall(r"<h2>([^<]*)</h2>", html)
    assert "Acrobot-v1: step size × batch size" in titles
    assert "CartPole-v1: step size × batch size" in titles
    acrobot_part = html.split("<h2>Acrobot-v1")[1].split("<h2>")[0]
    assert "CartPole" not in acrobot_part
    names = captions(html)
    for stem in ("learning_curves", "final_return_heatmap", "auc_heatmap", "collapse"):
        assert f"acrobot_{stem}" in names and f"cartpole_{stem}" in names
        assert names[f"acrobot_{stem}"].split("</b> ")[1].startswith("Acrobot-v1")
    assert (out / "figures" / "acrobot_learning_curves.png").stat().st_size > 10_000
    returns = pd.read_csv(out / "tables" / "acrobot_returns.csv")
    assert set(returns["env_id"]) == {"Acrobot-v1"}


def test_estimator_sweeps_differing_in_k_are_not_pooled(tmp_path):
    """Two real sweeps of the same cells with K = 10 and K = 20 batches (same seed): each
    K keeps its own cells (was: one cell per (estimator, N) averaging both, "1 seed")."""
    for k in (10, 20):
        run_app(
            "estimator_variance.py",
            "-m",
            "mdp=two_state",
            "estimator=reinforce,reward_to_go",
            "n_trajectories=[1,10]",
            f"n_repetitions={k}",
            f"sweep_name=k{k}",
            "logger=none",
            "progress=false",
            f"paths.output_dir={tmp_path}",
        )
    out = tmp_path / "report"
    assert main([str(tmp_path / "multirun"), "--out", str(out), "--resamples", RESAMPLES]) == 0
    cells = pd.read_csv(out / "tables" / "estimator_cells.csv")
    stored = pd.concat(pd.read_parquet(f) for f in sorted(tmp_path.rglob("results.parquet")))
    key = ["n_repetitions", "estimator", "n_trajectories"]
    assert len(cells) == len(stored) == 8 and (cells["n_seeds"] == 1).all()
    merged = cells.merge(stored, on=key, suffixes=("", "_stored"))
    np.testing.assert_allclose(merged["relative_bias"], merged["relative_bias_stored"], rtol=1e-12)
    names = {p.stem for p in (out / "figures").glob("*.png")}
    assert {f"estimator_relative_bias_{k}" for k in (10, 20)} <= names
    assert "estimator_relative_bias" not in names
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Cells are split by n_repetitions" in html
    assert "n_repetitions = 20" in captions(html)["estimator_relative_bias_20"]


@pytest.mark.skipif(not HAS_ASCENT, reason="experiments/tabular_ascent.py does not exist yet")
def test_exact_ascent_runs_with_different_n_are_not_extra_seeds(tmp_path):
    """gradient=exact ignores N, but runs that differ in it are different configs: two N
    × two seeds are two cells of two seeds (were one "exact" cell of "4 seeds")."""
    run_app(
        "tabular_ascent.py",
        "-m",
        "gradient=exact",
        "n_trajectories=10,100",
        "seed=0,1",
        "n_iterations=3",
        "logger=none",
        "progress=false",
        f"paths.output_dir={tmp_path}",
    )
    out = tmp_path / "report"
    assert main([str(tmp_path / "multirun"), "--out", str(out), "--resamples", RESAMPLES]) == 0
    final = pd.read_csv(out / "tables" / "ascent_final_return.csv")
    # the table stores N = 0 for exact rows: the config's N is the key that splits the cells
    assert final[["config.n_trajectories", "gradient_label", "n_seeds"]].to_numpy().tolist() == [
        [10, "exact", 2],
        [100, "exact", 2],
    ]
    for n in (10, 100):
        caption = captions((out / "report.html").read_text(encoding="utf-8"))[
            f"ascent_expected_return_{n}"
        ]
        assert seeds_in(caption) == (2, 2)
        assert f"config.n_trajectories = {n}" in caption
