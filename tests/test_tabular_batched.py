"""Batched exact ascent (pglab/tabular/batched_ascent.py) and the tabular app's batch plan.

A run's numbers must not depend on its batch: bit for bit the same alone (R = 1) and in
batches of any size and order, with runs leaving early (budget, divergence). They agree
with the one-by-one :func:`pglab.tabular.ascent.tabular_ascent` to float64 rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_app

from pglab.collapse import CollapseDetector
from pglab.tabular import batched_ascent, zoo
from pglab.tabular.ascent import tabular_ascent, tabular_collapse_config
from pglab.tabular.batched_ascent import (
    PAD,
    AscentRun,
    _padded_xlogy,
    batched_solve,
    batched_tabular_ascent,
    exact_pg_ascent,
)
from pglab.tabular.exact import solve
from pglab.tabular.policy import initial_logits

# Shapes differ: chain S*A = 10, gridworld and frozenlake 64 (T = 100 for frozenlake),
# garnet 7 x 3 = 21, short_corridor features [4, 2, 2] (theta [d]).
MDPS = {
    "chain": lambda: zoo.make("chain"),
    "gridworld": lambda: zoo.make("gridworld"),
    "frozenlake": lambda: zoo.make("frozenlake"),
    "garnet_7x3": lambda: zoo.garnet(n_states=7, n_actions=3, horizon=15, seed=4),
    "chain_discounted": lambda: zoo.make("chain", gamma=0.9),  # gamma != 1
    "short_corridor": lambda: zoo.make("short_corridor"),
}

# (theta_0 kind, its seed, alpha, K): runs that leave at different iterations; 1e308
# overflows theta on the first step where an entry of grad J(0) exceeds 1.8 in size
# (chain, short corridor).
SPECS = (
    ("random", 0, 1.0, 12),
    ("uniform", 0, 10.0, 9),
    ("uniform", 0, 1e308, 12),
    ("near_deterministic", 2, 0.5, 7),
    ("random", 3, 30.0, 12),
)


def _theta0(mdp, kind: str, seed: int) -> torch.Tensor:
    if mdp.features is None:
        return initial_logits(mdp.n_states, mdp.n_actions, kind, 1.0, seed)
    d = int(mdp.features.shape[2])
    return initial_logits(1, d, kind, 1.0, seed).reshape(d)


def _runs(mdp, specs=SPECS) -> list[AscentRun]:
    """Fresh runs (fresh detectors: a detector is reset and then fed by its run)."""
    return [
        AscentRun(
            _theta0(mdp, kind, seed),
            alpha,
            k,
            detector=CollapseDetector(tabular_collapse_config(mdp, window=3)),
        )
        for kind, seed, alpha, k in specs
    ]


def _bits(result) -> tuple:
    """Everything of a result, floats by their exact bits (float.hex: NaN equals NaN)."""
    rows = tuple(
        tuple((k, v.hex() if isinstance(v, float) else v) for k, v in row.items())
        for row in result.history
    )
    params = tuple(
        (name, tuple(float(x).hex() for x in tensor.reshape(-1).tolist()))
        for name, tensor in sorted(result.final_params.items())
    )
    return rows, params, result.status, result.collapse


@pytest.mark.parametrize("name", list(MDPS))
def test_a_run_is_bit_identical_alone_and_in_batches_of_any_size_and_order(name):
    mdp = MDPS[name]()
    alone = [
        _bits(exact_pg_ascent(mdp, r.logits0, r.step_size, r.n_iterations, r.detector))
        for r in _runs(mdp)
    ]
    n = len(SPECS)
    orders = ([1, 0], [3, 2], [4, 2], list(range(n)), [4, 3, 2, 1, 0], [2, 4, 0, 3, 1])
    for order in orders:
        runs = _runs(mdp)
        outcomes = batched_tabular_ascent(mdp, [runs[i] for i in order])
        for i, outcome in zip(order, outcomes, strict=True):
            assert _bits(outcome) == alone[i], (name, order, SPECS[i])
    statuses = [bits[2] for bits in alone]
    if name in ("chain", "short_corridor"):  # the 1e308 step overflows
        assert statuses[2] == "diverged" and len(alone[2][0]) == 1
    assert statuses.count("complete") >= n - 1


def test_a_batch_too_large_for_one_stack_runs_in_chunks_with_the_same_numbers(monkeypatch):
    mdp = MDPS["garnet_7x3"]()
    alone = [
        _bits(outcome) for outcome in (batched_tabular_ascent(mdp, [r])[0] for r in _runs(mdp))
    ]
    block = mdp.horizon * mdp.n_states * mdp.n_actions
    monkeypatch.setattr(batched_ascent, "MAX_ELEMENTS", 2 * block)  # chunks of 2 runs
    ended: list[int] = []
    outcomes = batched_tabular_ascent(mdp, _runs(mdp), on_result=lambda r, o: ended.append(r))
    assert [_bits(outcome) for outcome in outcomes] == alone
    assert sorted(ended[:2]) == [0, 1] and sorted(ended[2:4]) == [2, 3] and ended[4] == 4


def test_a_diverging_run_ends_alone_with_its_row_and_the_others_go_on():
    mdp = zoo.make("chain")
    specs = (("random", 0, 1.0, 8), ("uniform", 0, 1e308, 8), ("uniform", 0, 10.0, 8))
    ended: list[int] = []
    outcomes = batched_tabular_ascent(
        mdp, _runs(mdp, specs), on_result=lambda r, o: ended.append(r)
    )
    assert ended == [1, 0, 2]  # the diverged run first, as soon as it ended
    diverged = outcomes[1]
    assert diverged.status == "diverged" and diverged.collapse.reason == "non_finite"
    (row,) = diverged.history
    assert row["diverged"] and row["collapsed"] and math.isnan(row["kl"])
    assert math.isnan(row["step_norm"]) and math.isfinite(row["grad_norm"])
    assert torch.equal(diverged.final_params["logits"], _theta0(mdp, "uniform", 0))  # theta_0 kept
    for r in (0, 2):
        (spec,) = [specs[r]]
        (single,) = batched_tabular_ascent(mdp, _runs(mdp, [spec]))
        assert _bits(outcomes[r]) == _bits(single)
        assert outcomes[r].status == "complete" and len(outcomes[r].history) == 8


def test_progress_is_reported_in_iterations_and_once_at_the_end():
    mdp = zoo.make("chain")
    seen: list[batched_ascent.AscentProgress] = []
    outcomes = batched_tabular_ascent(mdp, _runs(mdp, SPECS[:3]), report=seen.append)
    last = seen[-1]
    assert (last.runs, last.finished) == (3, 3)
    assert last.iterations == sum(len(outcome.history) for outcome in outcomes)
    assert last.wall_time > 0
    assert last.budget_used == 1.0  # every run has ended


def test_progress_reports_the_least_iteration_share_of_the_unfinished_runs():
    mdp = zoo.make("chain")
    runs = _runs(mdp, SPECS[:2])
    runs[1] = AscentRun(runs[1].logits0, runs[1].step_size, 2 * runs[0].n_iterations)
    seen: list[batched_ascent.AscentProgress] = []
    batched_tabular_ascent(mdp, runs, report=seen.append, report_every_s=0.0)
    k = runs[0].n_iterations
    # while both run (i iterations each), the least share is run 1's, i / 2K
    shares = [p.budget_used for p in seen]
    assert all(a <= b for a, b in zip(shares, shares[1:], strict=False))
    assert shares[-1] == 1.0
    for p in seen:
        if p.finished == 0:
            assert p.budget_used == p.iterations / 2 / (2 * k)


def test_a_callback_that_raises_ends_only_its_run():
    mdp = zoo.make("gridworld")
    runs = _runs(mdp, SPECS[:3])

    def boom(metrics):
        if metrics["iteration"] == 2:
            raise RuntimeError("tracker down")

    runs[1] = AscentRun(runs[1].logits0, runs[1].step_size, 9, callback=boom)
    outcomes = batched_tabular_ascent(mdp, runs)
    assert isinstance(outcomes[1], RuntimeError)
    for r in (0, 2):
        (single,) = batched_tabular_ascent(mdp, _runs(mdp, [SPECS[r]]))
        assert _bits(outcomes[r]) == _bits(single)


@pytest.mark.parametrize(
    ("field", "run", "message"),
    [
        ("step_size", AscentRun(torch.zeros(5, 2), -1.0, 3), "runs[1].step_size"),
        ("n_iterations", AscentRun(torch.zeros(5, 2), 1.0, 0), "runs[1].n_iterations"),
        ("logits0", AscentRun(torch.zeros(4, 2), 1.0, 3), "runs[1].logits0"),
    ],
)
def test_a_bad_run_is_refused_before_any_work_naming_it(field, run, message):
    mdp = zoo.make("chain")
    good = AscentRun(torch.zeros(5, 2), 1.0, 3, callback=lambda m: pytest.fail("ran"))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        batched_tabular_ascent(mdp, [good, run])


@pytest.mark.parametrize("name", list(MDPS))
@pytest.mark.parametrize("alpha", (1.0, 10.0))
def test_agrees_with_tabular_ascent_to_float64_rounding(name, alpha):
    mdp = MDPS[name]()
    theta0 = _theta0(mdp, "random", 3)
    old = tabular_ascent(mdp, theta0, alpha, 40)
    new = exact_pg_ascent(mdp, theta0, alpha, 40)
    assert new.status == old.status and len(new.history) == len(old.history)
    for row_old, row_new in zip(old.history, new.history, strict=True):
        assert list(row_new) == list(row_old)  # same metrics, same order
        for key, want in row_old.items():
            got = row_new[key]
            if not isinstance(want, float):
                assert got == want, (key, row_old["iteration"])
            elif math.isnan(want):
                assert math.isnan(got), (key, row_old["iteration"])
            else:
                # The batched oracle sums P's products in another order (gathered
                # successor lists instead of a BLAS matrix-vector product), so every
                # number differs from the old one by float64 rounding (~1e-16 relative per
                # operation), which a contracting ascent does not amplify over 40 steps
                # (measured: <= 1e-12 relative). 1e-9 leaves room; the absolute 1e-12
                # covers quantities that are differences of nearly equal numbers (the KL
                # of a small step, suboptimality near the optimum, a vanishing gradient).
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (
                    key,
                    row_old["iteration"],
                    got,
                    want,
                )
    for key, tensor in old.final_params.items():
        assert torch.allclose(new.final_params[key], tensor, rtol=1e-9, atol=1e-12)
    assert new.summary()["collapsed"] == old.summary()["collapsed"]


def test_batched_solve_is_the_exact_oracle_per_run():
    mdp = zoo.make("frozenlake")
    logits = torch.stack([initial_logits(16, 4, "random", 2.0, s) for s in range(3)])
    batched = batched_solve(mdp, logits)
    for r in range(3):
        one = solve(mdp, logits[r])
        assert batched.expected_return[r].item() == pytest.approx(one.expected_return, rel=1e-12)
        torch.testing.assert_close(batched.gradient[r], one.gradient, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(batched.values[r], one.values, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(batched.occupancy[r], one.occupancy, rtol=1e-10, atol=1e-14)


def test_entropy_blocks_are_padded_so_a_value_keeps_its_lane():
    # xlogy's SIMD loop may treat a tail differently; each run's block is padded to PAD.
    pi = torch.softmax(torch.randn(7, 5, 3, dtype=torch.float64), dim=-1)  # 15: not a multiple
    full = _padded_xlogy(pi)
    for r in range(7):
        assert torch.equal(_padded_xlogy(pi[r : r + 1])[0], full[r])
    assert PAD % 16 == 0


def _jobs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.rglob("metadata.json")}


def test_a_sweep_under_the_batched_launcher_equals_the_basic_one_bit_for_bit(tmp_path):
    grid = (
        "gradient=exact,reinforce",  # reinforce jobs run alone (tabular_ascent)
        "step_size=1,10",
        "policy.kind=random",
        "policy.seed=0,1",
        "n_iterations=6",
        "n_trajectories=2",
        "logger=none",
        "progress=false",
    )
    for launcher in ("basic", "batched"):
        proc = run_app(
            "tabular_ascent.py",
            "-m",
            *grid,
            f"hydra/launcher={launcher}",
            *(["hydra.launcher.n_jobs=1"] if launcher == "batched" else []),
            f"paths.output_dir={tmp_path / launcher}",
        )
    assert "batch 1/1: 4 runs in lock-step" in proc.stderr + proc.stdout
    # the batch's progress line counts ascent iterations (4 runs x 6), not env steps
    assert "batch 1/1: 4 of 4 runs finished, 24 iterations" in proc.stderr + proc.stdout
    basic = _jobs(tmp_path / "basic" / "multirun")
    batched = _jobs(tmp_path / "batched" / "multirun")
    assert len(basic) == len(batched) == 8
    for name, job in basic.items():
        for table in ("history", "summary"):
            want = pd.read_parquet(job / f"{table}.parquet")
            got = pd.read_parquet(batched[name] / f"{table}.parquet")
            assert list(got.columns) == list(want.columns), (name, table)
            assert got.equals(want), (name, table)
