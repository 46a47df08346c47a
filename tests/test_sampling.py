"""pglab.tabular.sampling: alias tables, the law of sampled trajectories, masking, reproducibility.

Statistical tests compare empirical frequencies with exact probabilities from
``pglab.tabular.exact``. Each count is Binomial(N, p); we use the *exact* two-sided binomial
p-value per cell, 2 min(P(X <= k), P(X >= k)), not the normal approximation, whose tails
are far too thin for cells with small N p (a count of 126 where 82 are expected has
normal |z| = 4.9 but exact p = 7.6e-6). Over the m cells tested at once the familywise
false-alarm rate is held at alpha = 1e-3 by Bonferroni: reject if m min_p < alpha.
Seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from pglab.tabular import estimates, exact, zoo
from pglab.tabular.policy import initial_logits, softmax_policy
from pglab.tabular.sampling import (
    TrajectoryBatch,
    TrajectorySampler,
    alias_tables,
    sample_trajectories,
)

ALPHA = 1e-3  # familywise false-alarm rate of every statistical assertion
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tabular_sampling.py"


def binomial_test(counts: torch.Tensor, probabilities: torch.Tensor, n: int) -> tuple[float, str]:
    """Bonferroni-corrected exact binomial p-value over cells with 0 < p < 1, and the worst cell.

    Cells with p = 0 (or 1) must match exactly: one hit (miss) is impossible under the model.
    """
    k = counts.reshape(-1).numpy()
    p = probabilities.reshape(-1).numpy()
    inner = (p > 1e-12) & (p < 1 - 1e-12)
    np.testing.assert_allclose(k[~inner] / n, p[~inner], atol=1e-9, err_msg="impossible event")
    k, p = k[inner], p[inner]
    lower = scipy_stats.binom.cdf(k, n, p)  # P(X <= k)
    upper = scipy_stats.binom.sf(k - 1, n, p)  # P(X >= k)
    two_sided = np.minimum(1.0, 2.0 * np.minimum(lower, upper))
    worst = int(np.argmin(two_sided))
    where = f"count {k[worst]:.0f}, expected {n * p[worst]:.1f} (p={p[worst]:.3g})"
    return min(1.0, inner.sum() * float(two_sided[worst])), where


def state_action_frequencies(batch: TrajectoryBatch, n_states: int, n_actions: int) -> torch.Tensor:
    """[T, S, A] counts of (s_t, a_t) = (s, a) over the batch."""
    n, horizon = batch.states.shape
    index = (
        torch.arange(horizon) * (n_states * n_actions) + batch.states * n_actions + batch.actions
    )
    counts = torch.bincount(index.reshape(-1), minlength=horizon * n_states * n_actions)
    return counts.view(horizon, n_states, n_actions).to(torch.float64)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_tabular_sampling", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MDPS = {
    "garnet": lambda: zoo.garnet(
        n_states=8, n_actions=3, branching=3, seed=2, horizon=12, gamma=0.9
    ),
    "gridworld": lambda: zoo.gridworld(size=3, slip=0.2, horizon=10),
    "chain": lambda: zoo.chain(n_states=4, slip=0.2, horizon=8),
}


# ---------------------------------------------------------------------------------------
# alias tables
# ---------------------------------------------------------------------------------------
def test_alias_tables_reproduce_each_row_exactly():
    """Walker's identity q(m) = (prob[m] + sum_{j: alias[j]=m} (1 - prob[j])) / M, per row."""
    rng = np.random.default_rng(0)
    rows = rng.random((40, 9)) ** 3
    rows[0, [1, 4, 5]] = 0.0  # zero-probability columns
    rows[1] = 0.0
    rows[1, 7] = 2.5  # one-point distribution (unnormalised)
    rows[2] = 1.0  # uniform
    rows[3] = 0.01
    rows[3, 4] = 0.92  # one dominant outcome: it must absorb every other column
    rows[4:] = rng.dirichlet(np.full(9, 0.3), size=36)  # spiky random rows
    prob, alias = alias_tables(rows)
    n_cols = rows.shape[1]
    rebuilt = prob.copy()
    for r in range(rows.shape[0]):
        np.add.at(rebuilt[r], alias[r], 1.0 - prob[r])
    target = rows / rows.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(rebuilt / n_cols, target, rtol=0, atol=1e-14)
    assert np.all((prob >= 0) & (prob <= 1))
    # a probability-0 column is never kept and never an alias target
    zero = target == 0
    assert np.all(prob[zero] == 0)
    assert not np.any(zero[np.arange(rows.shape[0])[:, None], alias][prob < 1])


# ---------------------------------------------------------------------------------------
# law of the trajectories
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MDPS))
def test_state_action_frequencies_match_exact_occupancy(name):
    """P(s_t = s, a_t = a) = d_t(s) pi(a|s), d_t the exact occupancy; binomial test per cell."""
    mdp = MDPS[name]()
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", scale=1.0, seed=1)
    solution = exact.solve(mdp, logits)
    n = 20_000
    batch = sample_trajectories(mdp, solution.policy, n, torch.Generator().manual_seed(3))
    counts = state_action_frequencies(batch, mdp.n_states, mdp.n_actions)
    expected = solution.occupancy[:, :, None] * solution.policy  # [T, S, A]
    p_value, worst = binomial_test(counts, expected, n)
    assert p_value > ALPHA, f"{name}: Bonferroni p = {p_value:.2g}; worst cell: {worst}"
    # marginal over actions: the state occupancy itself
    p_value, worst = binomial_test(counts.sum(-1), solution.occupancy, n)
    assert p_value > ALPHA, f"{name}: occupancy p = {p_value:.2g}; worst cell: {worst}"


def test_terminal_steps_are_masked_and_absorbing():
    mdp = zoo.gridworld(size=3, slip=0.2, horizon=12)
    policy = softmax_policy(torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64))
    batch = sample_trajectories(mdp, policy, 5000, torch.Generator().manual_seed(0))
    terminal = mdp.terminal[batch.states]
    assert torch.equal(batch.mask, ~terminal)
    assert bool(terminal.any()), "the test needs episodes that end early"
    assert torch.all(batch.rewards[~batch.mask] == 0)
    # once terminal, always terminal and in the same state: mask is a prefix of True
    assert torch.all(batch.mask[:, 1:] <= batch.mask[:, :-1])
    stays = terminal[:, :-1]
    assert torch.equal(batch.states[:, 1:][stays], batch.states[:, :-1][stays])
    # rewards are the realized R(s_t, a_t, s_{t+1}) on real steps (gridworld pays on
    # entering a cell, so it has transition_rewards; before issue 8 this was r(s_t, a_t))
    assert mdp.transition_rewards is not None
    s, a, mask = batch.states, batch.actions, batch.mask
    realized = mdp.transition_rewards[s[:, :-1], a[:, :-1], s[:, 1:]]
    assert torch.equal(batch.rewards[:, :-1][mask[:, :-1]], realized[mask[:, :-1]])
    # the last step's s_T is not in the batch: its reward is R(s, a, s') of a reachable s'
    last = mask[:, -1]
    reachable = mdp.transitions[s[last, -1], a[last, -1]] > 0  # [n_last, S]
    paid = mdp.transition_rewards[s[last, -1], a[last, -1]] == batch.rewards[last, -1, None]
    assert bool((reachable & paid).any(dim=1).all())


def test_rewards_without_transition_rewards_are_expected_rewards():
    mdp = MDPS["garnet"]()
    assert mdp.transition_rewards is None
    policy = softmax_policy(torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64))
    batch = sample_trajectories(mdp, policy, 2000, torch.Generator().manual_seed(0))
    assert torch.equal(batch.rewards, mdp.rewards[batch.states, batch.actions])


def test_shapes_and_dtypes():
    mdp = MDPS["garnet"]()
    policy = softmax_policy(torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64))
    batch = sample_trajectories(mdp, policy, 7, torch.Generator().manual_seed(0))
    for field, dtype in (
        ("states", torch.int64),
        ("actions", torch.int64),
        ("rewards", torch.float64),
        ("mask", torch.bool),
    ):
        value = getattr(batch, field)
        assert value.shape == (7, mdp.horizon) and value.dtype == dtype, field
        assert value.is_contiguous(), field
    assert batch.n_trajectories == 7 and batch.horizon == mdp.horizon


# ---------------------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------------------
def test_same_seed_same_trajectories_and_splits_do_not_matter():
    mdp = MDPS["gridworld"]()
    logits = initial_logits(mdp.n_states, mdp.n_actions, kind="random", seed=0)
    sampler = TrajectorySampler(mdp, softmax_policy(logits))

    def fields(batch):
        return (batch.states, batch.actions, batch.rewards, batch.mask)

    whole = sampler.sample(1000, torch.Generator().manual_seed(42))
    again = sample_trajectories(
        mdp, softmax_policy(logits), 1000, torch.Generator().manual_seed(42)
    )
    for a, b in zip(fields(whole), fields(again), strict=True):
        assert torch.equal(a, b)
    # two calls on one generator = one call with the total (trajectory-major draws)
    generator = torch.Generator().manual_seed(42)
    first, second = sampler.sample(313, generator), sampler.sample(687, generator)
    for a, b, c in zip(fields(whole), fields(first), fields(second), strict=True):
        assert torch.equal(a, torch.cat([b, c]))
    # blocks of any size give the same rows
    parts = [
        tuple(f.clone() for f in fields(block))
        for block in sampler.blocks(1000, torch.Generator().manual_seed(42), block_size=64)
    ]
    for k, field in enumerate(fields(whole)):
        assert torch.equal(field, torch.cat([part[k] for part in parts]))
    other = sampler.sample(1000, torch.Generator().manual_seed(43))
    assert not torch.equal(whole.actions, other.actions)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10", None])
def test_bad_n_trajectories(bad):
    mdp = MDPS["chain"]()
    policy = softmax_policy(torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_trajectories must be a positive integer"):
        sample_trajectories(mdp, policy, bad, torch.Generator())


def test_bad_policy_and_generator():
    mdp = MDPS["chain"]()
    good = softmax_policy(torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"policy has shape \[4, 3\], expected \[S, A\] = \[4, 2\]"
    ):
        sample_trajectories(mdp, torch.full((4, 3), 1 / 3), 5, torch.Generator())
    skewed = good.clone()
    skewed[2, 0] += 0.1
    with pytest.raises(ValueError, match=r"policy\[2\] sums to 1.1"):
        sample_trajectories(mdp, skewed, 5, torch.Generator())
    negative = good.clone()
    negative[1] = torch.tensor([1.5, -0.5])
    with pytest.raises(ValueError, match=r"policy\[1, 1\] is -0.5"):
        sample_trajectories(mdp, negative, 5, torch.Generator())
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        sample_trajectories(mdp, good, 5, 0)
    with pytest.raises(ValueError, match="mdp must be a TabularMDP"):
        sample_trajectories("chain", good, 5, torch.Generator())
    sampler = TrajectorySampler(mdp, good)
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        sampler.blocks(5, torch.Generator(), block_size=0)  # raised on the call, not later


# ---------------------------------------------------------------------------------------
# the benchmark's baseline is a correct sampler too (so the speed comparison is fair)
# ---------------------------------------------------------------------------------------
def test_benchmark_baseline_samples_the_same_law_as_pglab():
    """Both samplers: (t, s, a) visit frequencies match d_t(s) pi(a|s) (exact binomial test)."""
    bench = load_benchmark()
    mdp, logits = bench.workload()
    mdp = mdp.replace(horizon=10)  # same Garnet, shorter episodes: a fast test
    solution = exact.solve(mdp, logits)
    expected = solution.occupancy[:, :, None] * solution.policy
    n = 20_000
    baseline = bench.baseline_sample_trajectories(
        mdp, solution.policy, n, torch.Generator().manual_seed(5)
    )
    ours = sample_trajectories(mdp, solution.policy, n, torch.Generator().manual_seed(5))
    for name, batch in (("baseline", baseline), ("pglab", ours)):
        counts = state_action_frequencies(batch, mdp.n_states, mdp.n_actions)
        p_value, worst = binomial_test(counts, expected, n)
        assert p_value > ALPHA, f"{name}: Bonferroni p = {p_value:.2g}; worst cell: {worst}"


def test_benchmark_baseline_gradients_are_reinforce():
    """The baseline's per-trajectory gradients equal pglab's reinforce rows on the same paths."""
    bench = load_benchmark()
    mdp, logits = bench.workload()
    mdp = mdp.replace(horizon=6)

    n = 500
    ours = estimates.sample_gradients(mdp, logits, n, "reinforce", seed=9)
    batch = sample_trajectories(mdp, softmax_policy(logits), n, torch.Generator().manual_seed(9))
    theirs = bench.reinforce_from_trajectories(mdp, softmax_policy(logits), batch)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)
