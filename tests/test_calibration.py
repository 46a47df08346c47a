"""Verdict calibration: the unbiasedness test's size on a real MDP, and the calibration app.

The size assertion is the issue's acceptance bound: at level 0.05 the test may reject an
unbiased estimator at most 8% of the time. With 400 independent studies per cell the
observed rate of a test whose true size is 0.05 has Monte-Carlo SE 0.011, so 0.08 is 2.8
SE away: a test of true size 0.05 fails this assertion with probability ~0.003, one of
true size 0.10 passes it with probability ~0.02. Rejections are counted over all studies
("insufficient data" is not a rejection: it is the verdict that makes no claim).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import run_app

from analysis.load import load_results
from analysis.report import build_report
from analysis.stats import calibration_rates
from pglab import estimators
from pglab.tabular import calibration, exact, zoo
from pglab.tabular import policy as tabular_policy

UNBIASED = list(estimators.UNBIASED_ESTIMATORS)


@pytest.mark.slow
@pytest.mark.parametrize("n_trajectories", [1, 3, 10])
def test_size_on_gridworld_is_at_most_0_08(n_trajectories):
    """gridworld at gamma = 0.9 (the flagship MDP where the old per-coordinate z-test
    rejected unbiased estimators 15-33% of the time at N = 1, 3, 10), K = 200 batches."""
    mdp = zoo.gridworld(gamma=0.9)
    logits = tabular_policy.initial_logits(mdp.n_states, mdp.n_actions, kind="random", seed=0)
    truth = exact.solve(mdp, logits).gradient.flatten()
    n_studies = 400
    rows = [
        row
        for study in range(n_studies)
        for row in calibration.study_verdicts(
            mdp, logits, truth, n_trajectories, study, UNBIASED, n_resamples=1000
        )
    ]
    table = pd.DataFrame(rows)
    for name, cell in table.groupby("estimator"):
        assert len(cell) == n_studies
        size = float((cell["p_value"] < 0.05).sum()) / n_studies
        assert size <= 0.08, f"{name} N={n_trajectories}: size {size:.3f}"


def test_calibration_rates_by_hand():
    """Rates, standard errors and coverage on a hand-made table (a 1e-9 relative slack at
    the interval's ends absorbs float round-off of a zero-width interval)."""
    frame = pd.DataFrame(
        {
            "mdp": "m",
            "estimator": ["reinforce"] * 4 + ["baseline_batch_mean"] * 2,
            "n_trajectories": [3] * 6,
            "known_relative_bias": [0.0] * 4 + [1 / 3] * 2,
            "p_value": [0.01, 0.5, np.nan, 0.2, 0.001, 0.3],
            "relative_bias_ci_low": [0.1, 0.0, np.nan, 0.0, 1 / 3, 0.0],
            "relative_bias_ci_high": [0.4, 0.2, np.nan, 0.3, 1 / 3 * (1 - 1e-12), 0.2],
        }
    )
    rates = calibration_rates(frame, level=0.05).set_index("estimator")
    row = rates.loc["reinforce"]
    assert row["kind"] == "size" and row["n_studies"] == 4 and row["decided"] == 0.75
    assert row["reject_rate"] == pytest.approx(1 / 4)  # undecided counts as not rejecting
    assert row["reject_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert row["coverage"] == pytest.approx(2 / 3)  # over the 3 reported intervals
    row = rates.loc["baseline_batch_mean"]
    assert row["kind"] == "power" and row["reject_rate"] == pytest.approx(0.5)
    assert row["coverage"] == pytest.approx(0.5)


def test_calibration_app_and_report_section(tmp_path):
    """The app end to end on a tiny grid: one row per (estimator, N, study), the truths
    from pglab.estimators.known_relative_bias, and a report section built from the rows."""
    run_app(
        "calibration.py",
        f"paths.output_dir={tmp_path}",
        "mdp=two_state",
        "mdp.gamma=0.9",
        "n_trajectories=[1,10]",
        "n_studies=3",
        "n_repetitions=30",
        "n_resamples=200",
        "logger=none",
        "progress=false",
    )
    (path,) = tmp_path.rglob("calibration.parquet")
    table = pd.read_parquet(path)
    assert len(table) == len(estimators.ESTIMATORS) * 2 * 3
    truth = table.set_index(["estimator", "n_trajectories"])["known_relative_bias"]
    assert (truth.loc["reinforce"] == 0.0).all()
    assert (truth.loc[("baseline_batch_mean", 10)] == 0.1).all()
    assert (truth.loc[("normalized", 1)] == 1.0).all()
    assert truth.loc[("reward_to_go_dropped_discount", 10)].isna().all()  # gamma < 1
    # identically 0 at N = 1: biased, with certainty
    constant = table[(table["estimator"] == "baseline_batch_mean") & (table["n_trajectories"] == 1)]
    assert (constant["p_value"] == 0.0).all()
    np.testing.assert_allclose(constant["relative_bias_ci_low"], 1.0, rtol=1e-12)

    results = load_results(tmp_path)
    assert len(results.calibration) == len(table)
    report = build_report(results, tmp_path / "report")
    html = report.read_text()
    assert "<h2>Verdict calibration" in html
    rates = pd.read_csv(tmp_path / "report" / "tables" / "calibration_rates.csv")
    expected = calibration_rates(results.calibration)
    np.testing.assert_allclose(rates["reject_rate"], expected["reject_rate"])
