"""The report's step-size-control section (analysis/report/stepsize.py) and the tabular
rates (analysis/report/ascent.py), on real tiny multiruns of the apps.

Truths checked: the phase diagram's counts and the median KL equal what direct pandas on
each run's own parquet files gives; the boundary verdict follows the Clopper–Pearson
intervals (0/6 vs 6/6 is decided, 0/3 vs 3/3 is not); the fitted rates of exact ascent on a
3-armed bandit match the theory (PG: gap ~ (A−1)/(A α t); NPG: contraction e^(−ηΔ)).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import run_app

from analysis import stats
from analysis.load import load_results
from analysis.report import main
from analysis.report.ascent import rate_table, rate_window, run_rates
from analysis.report.gym import COLLAPSE_VALIDATION
from analysis.report.stepsize import (
    KL_UPDATES,
    boundary_verdicts,
    collapse_boundary,
    rule_labels,
    rule_paragraphs,
)
from pglab.tabular import natural, zoo

RESAMPLES = "500"
COMMON = ("logger=none", "progress=false")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """pg and trpo at two steps (1e-4: stays; 0.1: pg collapses within ~20 updates at N=2)
    and pg+adam at 0.1, two seeds each, 1500 env steps (enough for the detector's window of
    50 iterations at N = 2 to close on a collapsed policy's ~9-step episodes)."""
    out = tmp_path_factory.mktemp("stepsize")
    budget = ("budget.iterations=null", "budget.env_steps=1500", "n_trajectories=2")
    run_app(
        "cartpole.py",
        "-m",
        "update=pg,trpo",
        "step_size=0.0001,0.1",
        "seed=0,1",
        "sweep_name=rules",
        *budget,
        *COMMON,
        f"paths.output_dir={out}",
    )
    run_app(
        "cartpole.py",
        "-m",
        "optimizer=adam",
        "step_size=0.1",
        "seed=0,1",
        "sweep_name=adam",
        *budget,
        *COMMON,
        f"paths.output_dir={out}",
    )
    dirs = [out / "multirun" / "cartpole" / name for name in ("rules", "adam")]
    report = out / "report"
    assert main([*map(str, dirs), "--out", str(report), "--resamples", RESAMPLES]) == 0
    return {"dirs": dirs, "report": report}


def _runs(dirs) -> pd.DataFrame:
    """Every run's summary.parquet read directly (one row per run) with its run directory."""
    rows = []
    for directory in dirs:
        for path in sorted(directory.glob("*/summary.parquet")):
            rows.append(pd.read_parquet(path).assign(run_dir=str(path.parent)))
    return pd.concat(rows, ignore_index=True)


def test_section_writes_phase_kl_and_best_setting_figures_with_the_detector_rates(grid):
    report = grid["report"]
    names = {p.stem for p in (report / "figures").glob("*.png")}
    assert {"cartpole_stepsize_phase", "cartpole_stepsize_kl", "cartpole_stepsize_best"} <= names
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "<h2>CartPole-v1: step-size control (update rules compared)" in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    phase = [c for c in captions if "phase diagram per update rule" in c]
    assert phase and "precision 21/23" in phase[0]  # COLLAPSE_VALIDATION, the gym text
    assert "precision 21/23" in COLLAPSE_VALIDATION
    for caption in captions:
        assert re.search(r"\d+(–\d+)? seeds? per cell", caption), caption
    for table in ("cells", "verdicts", "verdict_text"):
        assert (report / "tables" / f"cartpole_stepsize_{table}.csv").is_file()


def test_phase_counts_and_returns_equal_counts_by_hand_from_the_summaries(grid):
    runs = _runs(grid["dirs"])
    runs["rule"] = [
        u if o == "sgd" else f"{u}+{o}"
        for u, o in zip(runs["update"], runs["optimizer"], strict=True)
    ]
    by = ["rule", "n_trajectories", "step_size"]
    hand = (
        runs.groupby(by)
        .agg(k=("collapsed", "sum"), n=("collapsed", "size"), final_return=("final_return", "mean"))
        .reset_index()
    )
    table = pd.read_csv(grid["report"] / "tables" / "cartpole_stepsize_cells.csv")
    table = table.sort_values(by).reset_index(drop=True)
    assert table[by].to_numpy().tolist() == hand[by].to_numpy().tolist()
    assert table["k"].tolist() == hand["k"].astype(int).tolist()
    assert table["n"].tolist() == hand["n"].tolist() == [2] * len(hand)
    np.testing.assert_allclose(table["final_return"], hand["final_return"], rtol=1e-12)
    # plain pg at alpha = 0.1, N = 2 collapses (the boundary the other rules are read against)
    assert hand.set_index(by).loc[("pg", 2, 0.1), "k"] == 2
    assert set(table["rule"]) == {"pg", "trpo", "pg+adam"}


def test_median_kl_equals_the_median_over_runs_of_each_runs_first_update_kl(grid):
    frames = []
    for directory in grid["dirs"]:
        for path in sorted(directory.glob("*/history.parquet")):
            frames.append(pd.read_parquet(path).assign(run_dir=str(path.parent)))
    history = pd.concat(frames, ignore_index=True)
    early = history[history["iteration"] < KL_UPDATES].groupby("run_dir")["kl"].median()
    runs = _runs(grid["dirs"]).set_index("run_dir")
    runs["median_kl"] = early
    runs["rule"] = rule_labels(runs.reset_index()).to_numpy()
    hand = runs.groupby(["rule", "step_size"])["median_kl"].median()
    table = pd.read_csv(grid["report"] / "tables" / "cartpole_stepsize_cells.csv")
    for _, row in table.iterrows():
        assert row["median_kl"] == pytest.approx(hand[(row["rule"], row["step_size"])], rel=1e-12)
    # TRPO's accepted steps stay within delta in the KL it checks (mean KL <= delta)
    trpo = table[table["rule"] == "trpo"]
    assert (trpo["median_kl"] <= trpo["step_size"] * (1 + 1e-6)).all()


# --------------------------------------------------------------------------------------
# The verdict: the boundary and the Clopper–Pearson intervals (no runs needed)
# --------------------------------------------------------------------------------------
def _cells(rule_counts: dict[str, list[int]], n: int = 3) -> pd.DataFrame:
    from analysis.stats import binomial_rate

    steps = [1e-4, 1e-3, 1e-2, 1e-1]
    rows = []
    for rule, ks in rule_counts.items():
        for step, k in zip(steps, ks, strict=True):
            rate = binomial_rate(k, n)
            rows.append(
                {
                    "rule": rule,
                    "n_trajectories": 10,
                    "step_size": step,
                    "k": k,
                    "n": n,
                    "probability": k / n,
                    "ci_low": rate["ci_low"],
                    "ci_high": rate["ci_high"],
                }
            )
    return pd.DataFrame(rows)


def test_a_rule_that_never_collapses_where_pg_does_twice_moves_the_boundary_decidedly():
    cells = _cells({"pg": [0, 0, 3, 3], "trpo": [0, 0, 0, 0]})
    assert collapse_boundary(cells[cells["rule"] == "pg"]) == 1e-2
    assert collapse_boundary(cells[cells["rule"] == "trpo"]) is None
    row = boundary_verdicts(cells).iloc[0]
    assert row["pg_boundary"] == 1e-2 and math.isnan(row["rule_boundary"])
    # pooled over 1e-2 and 1e-1: pg 6/6, exact 95% CI [0.025^(1/6), 1] = [0.541, 1];
    # trpo 0/6, [0, 1 - 0.025^(1/6)] = [0, 0.459]: disjoint
    assert (row["pg_k"], row["pg_n"], row["rule_k"], row["rule_n"]) == (6, 6, 0, 6)
    assert row["pg_ci_low"] == pytest.approx(0.025 ** (1 / 6), rel=1e-9)
    assert row["rule_ci_high"] == pytest.approx(1 - 0.025 ** (1 / 6), rel=1e-9)
    assert row["decided"] and row["shift_decades"] == pytest.approx(1.0)
    assert row["moved"] and "more than the 1 decade(s)" in row["verdict"]
    assert "cannot decide" not in row["verdict"]
    assert rule_paragraphs(boundary_verdicts(cells))["verdict"][0].startswith(
        "trpo moved pg's collapse boundary at N ∈ {10}"
    )


def test_one_cell_of_three_seeds_cannot_decide():
    # 3/3 vs 0/3: CIs [0.292, 1] and [0, 0.708] overlap
    row = boundary_verdicts(_cells({"pg": [0, 0, 0, 3], "npg": [0, 0, 0, 0]})).iloc[0]
    assert row["moved"] and not row["decided"] and "cannot decide" in row["verdict"]
    # pg's boundary is the grid's largest step: the shift is positive but of unknown size
    assert "above the grid's largest step" in row["verdict"] and "0 decade" not in row["verdict"]
    paragraph = rule_paragraphs(boundary_verdicts(_cells({"pg": [0, 0, 0, 3], "npg": [0] * 4})))
    assert paragraph["verdict"][0].startswith("npg: cannot decide")


def test_the_same_boundary_is_no_shift_and_an_earlier_one_is_a_shift_down():
    same = boundary_verdicts(_cells({"pg": [0, 3, 3, 3], "ppo": [0, 2, 3, 3]})).iloc[0]
    assert not same["moved"] and same["shift_decades"] == 0
    assert "same boundary" in same["verdict"]
    down = boundary_verdicts(_cells({"pg": [0, 0, 3, 3], "npg": [3, 3, 3, 3]})).iloc[0]
    assert down["shift_decades"] == pytest.approx(-2.0)
    assert (down["pg_k"], down["rule_k"]) == (0, 6) and down["decided"]


def test_rule_labels_name_the_adaptive_optimisers():
    frame = pd.DataFrame(
        {"update": ["pg", "pg", "pg", "trpo"], "optimizer": ["sgd", "adam", "rmsprop", "sgd"]}
    )
    assert rule_labels(frame).tolist() == ["pg", "pg+adam", "pg+rmsprop", "trpo"]


# --------------------------------------------------------------------------------------
# Tabular rates
# --------------------------------------------------------------------------------------
def test_rate_window_fits_exact_sequences_exactly():
    t = np.arange(400, dtype=float)
    one_over_t = 5.0 / np.maximum(t, 1.0)
    run = pd.DataFrame({"iteration": t, "suboptimality": one_over_t, "optimal_return": 1.0})
    rates = run_rates(run)
    assert rates["status"] == "ok" and rates["window"] == "[200, 400)"
    assert rates["exponent"] == pytest.approx(-1.0, abs=1e-12)
    assert rates["constant"] == pytest.approx(5.0, rel=1e-12)
    geometric = 0.9**t
    rates = run_rates(run.assign(suboptimality=geometric))
    # 0.9^t first reaches the round-off floor 1e-9 at t = 197: the window is [99, 197)
    assert rates["window"] == "[99, 197)"
    assert rates["contraction"] == pytest.approx(0.9, rel=1e-12)
    assert rate_window(np.full(50, 0.3), 1.0)[2] == "stalls"  # a plateau is no rate


def test_fitted_rates_of_the_ascent_app_on_a_bandit_match_the_theory(tmp_path):
    """pg and npg, exact, on the 3-armed bandit of experiment=tabular_bandit_rates (rewards
    0.921, 0.645, 0.791 from Garnet seed 0), step 1, 3000 iterations."""
    run_app(
        "tabular_ascent.py",
        "-m",
        "experiment=tabular_bandit_rates",
        "update=pg,npg",
        "step_size=1.0",
        *COMMON,
        f"paths.output_dir={tmp_path}",
    )
    history = load_results(tmp_path / "multirun").ascent_history
    rates = rate_table(history, ["update"]).set_index("update")
    rewards = zoo.make("garnet", n_states=1, n_actions=3, branching=1, horizon=1).rewards[0]
    best, second = sorted(rewards.tolist(), reverse=True)[:2]
    eta = alpha = 1.0
    # NPG: gap_k ~ exp(-k eta Delta), Delta = r* - r_2nd; over its window (k >= 72) the
    # other terms move the log-slope by < 1e-4 relative (the farther arm's share
    # exp(-72 eta (r* - r_3rd - Delta)) ~ 3e-5, the normaliser's ~1e-4)
    assert rates.loc["npg", "contraction"] == pytest.approx(
        math.exp(-eta * (best - second)), rel=1e-4
    )
    # PG: t gap_t -> (A - 1) / (A alpha) = 2/3 with an O(log t / t) approach (Mei et al.
    # 2020; test_natural_gradient): measured slope -1.021 and t gap_t = 0.679 on [1500, 3000)
    assert rates.loc["pg", "window"] == "[1500, 3000)"
    assert rates.loc["pg", "exponent"] == pytest.approx(-1.0, abs=0.05)
    assert rates.loc["pg", "constant"] == pytest.approx(2 / (3 * alpha), rel=0.05)


@pytest.mark.parametrize("rule", ["pg", "npg"])
def test_report_rate_fits_equal_the_ones_of_pglab_tabular_natural(rule):
    """analysis/ does not import pglab's maths: its fits restate natural.fit_* on stored
    values, so the two must agree (same least squares, round-off only)."""
    import torch

    mdp = zoo.make("garnet", n_states=1, n_actions=3, branching=1, horizon=1)
    theta0 = torch.zeros(1, 3, dtype=torch.float64)
    iterates = natural.exact_iterates(mdp, theta0, rule, 0.5, 300)
    gaps = (float(mdp.rewards.max()) - iterates.returns).numpy()
    start, stop, status = rate_window(gaps, 1.0)
    assert status == "ok"
    mine = stats.convergence_rates(gaps, start, stop)
    sublinear = natural.fit_sublinear_rate(gaps, start=start, stop=stop)
    linear = natural.fit_linear_rate(gaps, start=start, stop=stop)
    assert mine["exponent"] == pytest.approx(sublinear.slope, rel=1e-12)
    assert mine["constant"] == pytest.approx(sublinear.constant, rel=1e-12)
    assert mine["contraction"] == pytest.approx(linear.contraction, rel=1e-12)
