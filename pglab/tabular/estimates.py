"""Sampled policy gradients on a tabular MDP: per-trajectory ``g_i`` and batch estimates.

The estimators themselves (the per-step weights ``Psi_{i,t}``) live in
:mod:`pglab.estimators`; this module samples trajectories with
:class:`pglab.tabular.sampling.TrajectorySampler` and turns weights into gradients.

The tabular softmax score. With ``pi = softmax(theta)`` and ``theta`` of shape ``[S, A]``,
``d log pi(a|s) / d theta[s', b] = 1[s' = s] (1[b = a] - pi(b|s))``. So

    g_i[s, b] = C_i[s, b] - pi(b|s) sum_a C_i[s, a],
    C_i[s, a] = sum_t Psi_{i,t} 1[s_{i,t} = s, a_{i,t} = a],

computed with one scatter-add of the weights per block of trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pglab import checks
from pglab.estimators import (
    BATCH_COUPLED_ESTIMATORS,
    ESTIMATORS,
    RETURN_ESTIMATORS,
    _return_weights,
    _step_weights,
    check_estimator,
    discount_factors,
    return_coefficients,
)
from pglab.tabular import exact
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import check_logits, softmax_policy
from pglab.tabular.sampling import TrajectorySampler, block_size_for
from pglab.threads import thread_invariant

__all__ = ["batch_estimates", "sample_gradients", "sample_gradients_and_visits"]


# ---------------------------------------------------------------------------------------
def _check_mdp_logits_seed(mdp: Any, logits: Any, seed: Any) -> tuple[Tensor, int]:
    """The public entry points' checks: detached float64 logits ``[S, A]`` and the seed."""
    checks.instance("mdp", mdp, TabularMDP)
    seed = checks.seed("seed", seed)
    return check_logits(logits, mdp.n_states, mdp.n_actions).detach(), seed


class _Setup:
    """The per-theta work shared by sample_gradients and batch_estimates.

    Trusts its inputs (checked once by the public entry point): ``theta`` detached float64
    logits ``[S, A]`` of ``mdp``, known estimator ``names`` and a seed in ``[0, 2**63)``.
    """

    def __init__(self, mdp: TabularMDP, theta: Tensor, names: Sequence[str], seed: int) -> None:
        self.mdp = mdp
        self.policy = softmax_policy(theta)  # [S, A]
        self.n_states, self.n_actions, self.horizon = mdp.n_states, mdp.n_actions, mdp.horizon
        # V_t(s) as a flat table indexed by t S + s, for baseline_value.
        self.values = None
        if "baseline_value" in names:
            self.values = exact._solve(mdp, theta).values[:-1].reshape(-1)  # [T*S]
            self.time_offset = torch.arange(self.horizon) * self.n_states  # [T]
        self.sampler = TrajectorySampler._trusted(mdp, self.policy)
        self.generator = torch.Generator().manual_seed(seed)

    def state_values(self, states: Tensor) -> Tensor:
        """``[n, T]`` ``V_t(s_{i,t})``."""
        assert self.values is not None
        return self.values[states + self.time_offset]

    def subtract_policy_part(self, counts: Tensor) -> Tensor:
        """``g[.., s, b] = C[.., s, b] - pi(b|s) sum_a C[.., s, a]``, in place on ``[.., S*A]``."""
        grid = counts.view(*counts.shape[:-1], self.n_states, self.n_actions)
        grid.addcmul_(grid.sum(dim=-1, keepdim=True), self.policy, value=-1.0)
        return counts


@thread_invariant
def sample_gradients(
    mdp: TabularMDP,
    logits: Any,
    n_trajectories: int,
    estimator: str = "reinforce",
    seed: int = 0,
) -> Tensor:
    """Per-trajectory gradient contributions ``g_i`` of one batch of ``N`` trajectories.

    Args:
        mdp: the MDP (``T = mdp.horizon``, ``gamma = mdp.gamma``).
        logits: ``[S, A]`` logits ``theta`` of the softmax policy.
        n_trajectories: ``N``, a positive int.
        estimator: a name in :data:`ESTIMATORS`.
        seed: seeds a fresh CPU ``torch.Generator`` for the sampler (the global RNG is
            untouched); the trajectories are those of
            ``sample_trajectories(mdp, softmax(theta), N, Generator().manual_seed(seed))``.

    Returns:
        ``[N, S, A]`` float64; row ``i`` is ``g_i = sum_t Psi_{i,t} grad log pi(a_t|s_t)``
        and ``rows.mean(0)`` is the batch estimate ``ghat_N``. For the batch-coupled
        estimators row ``i`` is trajectory ``i``'s term within this batch of size ``N``
        (its baseline uses the other rows), so rows are then not independent.

    Memory: ``O(N S A)`` for the result plus ``O(block T)`` working space.
    """
    check_estimator(estimator)
    n = checks.positive_int("n_trajectories", n_trajectories)
    theta, seed = _check_mdp_logits_seed(mdp, logits, seed)
    return _sample_gradients(mdp, theta, n, estimator, seed)


@thread_invariant
def sample_gradients_and_visits(
    mdp: TabularMDP,
    logits: Any,
    n_trajectories: int,
    estimator: str = "reinforce",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """:func:`sample_gradients` plus the decision counts of the same trajectories.

    Returns:
        ``(g, counts)``: ``g`` ``[N, S, A]`` float64, bit for bit
        ``sample_gradients(mdp, logits, N, estimator, seed)``; ``counts`` ``[S, A]``
        float64, ``counts[s, a] = sum_i sum_t 1[s_{i,t} = s, a_{i,t} = a, s_{i,t} not
        terminal]``, the number of real decisions ``(s, a)`` those N trajectories took
        (no extra sampling: the counts are read off the trajectories ``g`` is built from).
        ``E[counts[s, a]] / N = w(s) pi(a|s)`` (:func:`pglab.tabular.natural.state_weights`),
        which makes :func:`pglab.tabular.natural.sampled_fisher` unbiased.
    """
    check_estimator(estimator)
    n = checks.positive_int("n_trajectories", n_trajectories)
    theta, seed = _check_mdp_logits_seed(mdp, logits, seed)
    counts = torch.zeros(mdp.n_states * mdp.n_actions, dtype=torch.float64)
    rows = _sample_gradients(mdp, theta, n, estimator, seed, counts)
    return rows, counts.view(mdp.n_states, mdp.n_actions)


def _sample_gradients(
    mdp: TabularMDP,
    theta: Tensor,
    n: int,
    estimator: str,
    seed: int,
    counts: Tensor | None = None,
) -> Tensor:
    """:func:`sample_gradients` on checked inputs (theta as in :class:`_Setup`).

    ``counts``: ``None``, or a flat ``[S*A]`` float64 tensor to which the real decisions
    ``(s, a)`` of the sampled trajectories are added at ``s A + a`` (read-only use of the
    batch: the returned rows do not depend on it).
    """
    setup = _Setup(mdp, theta, (estimator,), seed)
    n_states, n_actions, horizon, gamma = setup.n_states, setup.n_actions, mdp.horizon, mdp.gamma
    n_pairs = n_states * n_actions
    out = torch.empty(n, n_pairs, dtype=torch.float64)
    per_trajectory = estimator in RETURN_ESTIMATORS
    coupled = estimator in BATCH_COUPLED_ESTIMATORS
    returns = torch.empty(n, dtype=torch.float64) if coupled else None
    block = min(n, block_size_for(horizon))
    pairs = torch.empty(block, horizon, dtype=torch.int64)
    score_weights = torch.empty(block, horizon, dtype=torch.float64)
    discounts = discount_factors(horizon, gamma, out)

    visits = torch.empty(block, n_states, dtype=torch.float64)
    minus_policy = -setup.policy  # [S, A]
    start = 0
    for batch in setup.sampler._blocks(n, setup.generator, block):
        rows = batch.n_trajectories
        stop = start + rows
        sa = torch.add(batch.actions, batch.states, alpha=n_actions, out=pairs[:rows])  # s A + a
        if counts is not None:  # decisions taken: 1 per unmasked step at s A + a
            counts.index_add_(0, sa.reshape(-1), batch.mask.reshape(-1).to(torch.float64))
        if per_trajectory:
            # Psi_{i,t} = m_{i,t} w_i: scatter the mask (the score), scale rows by w_i below.
            weights = score_weights[:rows].copy_(batch.mask)
        else:
            values = setup.state_values(batch.states) if estimator == "baseline_value" else None
            weights = _step_weights(batch.rewards, batch.mask, estimator, gamma, values)
        # sum_a C_i[s, a] = sum_t Psi_{i,t} 1[s_t = s]
        per_state = visits[:rows].zero_().scatter_add_(1, batch.states, weights)
        target = out[start:stop]
        # g_i[s, b] = -pi(b|s) sum_a C_i[s, a]  +  C_i[s, b]
        torch.mul(per_state[:, :, None], minus_policy, out=target.view(rows, n_states, n_actions))
        target.scatter_add_(1, sa, weights)
        if per_trajectory:
            block_returns = batch.rewards @ discounts  # R_i (rewards are 0 where masked)
            if coupled:
                returns[start:stop] = block_returns
            else:  # reinforce: w_i = R_i
                target.mul_(block_returns[:, None])
        start = stop

    if coupled:
        out.mul_(_return_weights(returns, estimator)[:, None])
    return out.view(n, n_states, n_actions)


@thread_invariant
def batch_estimates(
    mdp: TabularMDP,
    logits: Any,
    n_trajectories: int,
    n_repetitions: int,
    estimators: Sequence[str],
    seed: int = 0,
    max_trajectories_per_chunk: int | None = None,
) -> dict[str, Tensor]:
    """``K`` independent batch estimates ``ghat_N`` for each estimator, on shared samples.

    Repetition ``k`` uses trajectories ``k N .. (k+1) N - 1`` of one stream drawn from
    ``Generator().manual_seed(seed)``, and every estimator is computed from the same
    trajectories (common random numbers), so differences between estimators are not
    sampling noise between them. Repetition 0 equals
    ``sample_gradients(mdp, logits, N, name, seed).mean(0)`` (up to float round-off).

    Args:
        mdp: the MDP (``T = mdp.horizon``, ``gamma = mdp.gamma``).
        logits: ``[S, A]`` logits ``theta``.
        n_trajectories: ``N``, trajectories per batch estimate.
        n_repetitions: ``K``, independent batch estimates.
        estimators: names from :data:`ESTIMATORS` (a list, not a bare string).
        seed: seeds the sampler's CPU generator.
        max_trajectories_per_chunk: trajectories sampled and reduced at once; ``None``
            picks :func:`pglab.tabular.sampling.block_size_for` ``(T)`` (~2.6e5 trajectory-steps).
            Memory is ``O(chunk T + K S A)`` whatever ``N`` and ``K``; the result does not
            depend on it beyond float round-off.

    Returns:
        ``{estimator: [K, S, A] float64}``; row ``k`` is the ``k``-th ``ghat_N``.

    How. Per chunk, the weights are scattered straight into ``[K, S*A]`` accumulators at
    ``k S A + s A + a`` (never ``[K N, S, A]``). Per-step estimators scatter their
    ``Psi``. The return-based ones are ``alpha_k (R_i - c_k)`` per trajectory, so they
    only need, per repetition, ``sum_i R_i S_i``, ``sum_i S_i`` (``S_i`` the score of
    trajectory ``i``) and the returns' count, mean and sum of squared deviations (merged
    across chunks with Chan et al.'s pairwise update), from which
    ``ghat_k = alpha_k (sum_i R_i S_i - c_k sum_i S_i) / N``. (The subtraction loses
    about ``|c_k| / std(R)`` ulps relative to forming ``R_i - c_k`` first: negligible
    unless the mean return exceeds its spread by many orders of magnitude.)
    """
    if isinstance(estimators, str) or not isinstance(estimators, Sequence):
        raise checks.ConfigError(
            f"estimators must be a sequence of names, got {estimators!r}; "
            f"e.g. ['reinforce']; known: {list(ESTIMATORS)}"
        )
    if len(estimators) == 0:
        raise checks.ConfigError(f"estimators is empty; choose from {list(ESTIMATORS)}")
    names = list(dict.fromkeys(check_estimator(name) for name in estimators))
    n = checks.positive_int("n_trajectories", n_trajectories)
    n_reps = checks.positive_int("n_repetitions", n_repetitions)
    chunk = None
    if max_trajectories_per_chunk is not None:
        chunk = checks.positive_int("max_trajectories_per_chunk", max_trajectories_per_chunk)
    theta, seed = _check_mdp_logits_seed(mdp, logits, seed)
    setup = _Setup(mdp, theta, names, seed)
    if chunk is None:
        chunk = block_size_for(mdp.horizon)
    n_states, n_actions, horizon, gamma = setup.n_states, setup.n_actions, mdp.horizon, mdp.gamma
    n_pairs = n_states * n_actions

    def zeros() -> Tensor:
        return torch.zeros(n_reps * n_pairs, dtype=torch.float64)

    step_names = [name for name in names if name not in RETURN_ESTIMATORS]
    return_names = [name for name in names if name in RETURN_ESTIMATORS]
    coupled = any(name in BATCH_COUPLED_ESTIMATORS for name in return_names)
    step_sums = {name: zeros() for name in step_names}  # sum_i g_i, flat [K * S*A]
    weighted_scores = zeros() if return_names else None  # sum_i R_i S_i
    scores = zeros() if coupled else None  # sum_i S_i
    count = torch.zeros(n_reps, dtype=torch.float64)  # returns' running statistics
    mean = torch.zeros(n_reps, dtype=torch.float64)
    sum_sq_dev = torch.zeros(n_reps, dtype=torch.float64)

    block = min(n * n_reps, chunk)
    index = torch.empty(block, horizon, dtype=torch.int64)
    mask_weights = torch.empty(block, horizon, dtype=torch.float64)
    discounts = discount_factors(horizon, gamma, mean)
    start = 0
    for batch in setup.sampler._blocks(n * n_reps, setup.generator, block):
        rows = batch.n_trajectories
        rep = torch.arange(start, start + rows) // n  # [rows] repetition of each trajectory
        # flat accumulator index  k S A + s A + a
        idx = torch.add(batch.actions, batch.states, alpha=n_actions, out=index[:rows])
        idx.add_((rep * n_pairs)[:, None])
        flat_idx = idx.view(-1)
        for name in step_names:
            values = setup.state_values(batch.states) if name == "baseline_value" else None
            psi = _step_weights(batch.rewards, batch.mask, name, gamma, values)
            step_sums[name].index_add_(0, flat_idx, psi.reshape(-1))
        if return_names:
            block_returns = batch.rewards @ discounts  # R_i
            m = mask_weights[:rows].copy_(batch.mask)
            if coupled:
                scores.index_add_(0, flat_idx, m.view(-1))
                _merge_moments(count, mean, sum_sq_dev, rep, block_returns)
            weighted_scores.index_add_(0, flat_idx, m.mul_(block_returns[:, None]).view(-1))
        start += rows

    out: dict[str, Tensor] = {}
    for name in names:
        if name in step_sums:
            total = step_sums[name].view(n_reps, n_pairs)
        else:
            alpha, center = return_coefficients(name, n, mean, sum_sq_dev)
            total = weighted_scores.view(n_reps, n_pairs) * alpha[:, None]
            if name != "reinforce":
                total = total - (alpha * center)[:, None] * scores.view(n_reps, n_pairs)
        estimate = setup.subtract_policy_part(total / n)
        out[name] = estimate.view(n_reps, n_states, n_actions)
    return {name: out[name] for name in estimators if name in out}


def _merge_moments(
    count: Tensor, mean: Tensor, sum_sq_dev: Tensor, group: Tensor, values: Tensor
) -> None:
    """Fold ``values`` (grouped by the sorted ``group`` ids) into running moments, in place.

    Chan, Golub and LeVeque's pairwise update for the count ``n``, mean and sum of squared
    deviations ``M2`` of each group: for old ``(n_a, mean_a, M2_a)`` and new
    ``(n_b, mean_b, M2_b)``, with ``delta = mean_b - mean_a`` and ``n = n_a + n_b``::

        mean = mean_a + delta n_b / n,   M2 = M2_a + M2_b + delta^2 n_a n_b / n.
    """
    first = int(group[0])
    local = group - first
    n_groups = int(local[-1]) + 1
    n_b = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, local, torch.ones_like(values))
    mean_b = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, local, values) / n_b
    m2_b = torch.zeros(n_groups, dtype=values.dtype).index_add_(
        0, local, (values - mean_b[local]).square()
    )
    part = slice(first, first + n_groups)
    n_a, mean_a = count[part], mean[part]
    total = n_a + n_b
    delta = mean_b - mean_a
    sum_sq_dev[part] += m2_b + delta.square() * n_a * n_b / total
    mean[part] = mean_a + delta * n_b / total
    count[part] = total
