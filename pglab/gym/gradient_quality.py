"""How close is a batch gradient estimate to the true gradient? (Ilyas et al., 2020)

At a fixed policy pi_theta (a checkpoint) the true policy gradient grad J(theta) is unknown
on a gymnasium environment, so it is replaced by a *reference gradient* averaged over a
very large number M of episodes, and batch estimates from N << M episodes are compared
with it, as in Ilyas et al. (2020), "A closer look at deep policy gradients", Sec. 3.

Per-episode gradient (see :mod:`pglab.gym.gradients`):

    g_i = sum_t Psi_{i,t} grad_theta log pi_theta(a_{i,t} | s_{i,t})          [P]

Reference (:func:`reference_gradient`), over M i.i.d. episodes and a per-episode
estimator (``reinforce`` or ``reward_to_go``, both unbiased for grad J):

    ghat_ref = (1/M) sum_i g_i,     SE_j = s_j / sqrt(M),
    s_j^2 = (1/(M-1)) sum_i (g_{i,j} - ghat_ref_j)^2                       (per coordinate j)

and its own noise level ``relative_se`` = ||SE|| / ||ghat_ref|| = sqrt(tr Cov(g) / M) /
||ghat_ref||. Batch quality (:func:`batch_gradient_quality`), for a fresh batch of N
episodes and any estimator (batch-coupled baselines included):

    ghat_N = -grad L,  L the surrogate of :func:`pglab.gym.gradients.surrogate_loss`
    cosine         = <ghat_N, ghat_ref> / (||ghat_N|| ||ghat_ref||)
    relative_error = ||ghat_N - ghat_ref|| / ||ghat_ref||

For an unbiased estimator with per-episode covariance Cov(g), batches independent of the
reference give E[relative_error^2 | ghat_ref] = (tr Cov(g) / N + ||grad J - ghat_ref||^2) /
||ghat_ref||^2 (a biased estimator adds its squared bias ||E ghat_N - grad J||^2 to the
numerator). The second term is ``relative_se**2`` on average: the reference is good enough
for a batch size N when ``relative_se**2`` is small against tr Cov(g) / (N ||ghat_ref||^2).

Seeding: the episodes are a deterministic function of (policy, ``seed``). Reference and
batches draw from different streams, derived with ``numpy.random.SeedSequence``:
``[seed, 0, chunk size]`` for the reference's chunks and ``[seed, 1, N, chunk size]`` for
the batches of size N. Each stream gives the environment-reset seed of a
:class:`pglab.gym.rollouts.RolloutCollector` and the seed of the ``torch.Generator`` sampling
the actions, so the reference and the batches (and batches of different N) use
statistically independent random numbers, even for equal ``seed``. (For environments
without a vector entry point, gymnasium seeds copy j with env_seed + j; two 32-bit
env_seeds overlap within n copies with probability ~ 2n / 2^32, and even then the action
streams differ.) ``chunk_episodes`` is part of the key: changing it changes the episodes.
Everything runs on the CPU; every accumulation is in float64, the gradients themselves
are in the policy dtype (float32 by default).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pglab import checks, estimators
from pglab.gym.gradients import per_episode_gradients, surrogate_loss
from pglab.gym.policies import CategoricalPolicy
from pglab.gym.rollouts import EpisodeBatch, RolloutCollector
from pglab.gym.training import TABULAR_ONLY_ESTIMATORS
from pglab.threads import thread_invariant

__all__ = [
    "PER_EPISODE_ESTIMATORS",
    "ReferenceGradient",
    "batch_episodes",
    "batch_gradient_quality",
    "reference_episodes",
    "reference_gradient",
]

# Estimators whose weights Psi_{i,t} depend on episode i alone, so that the g_i are i.i.d.
# and (1/M) sum_i g_i with SE s / sqrt(M) is a valid reference (batch-coupled baselines and
# normalisation make the g_i dependent and the SE formula wrong).
PER_EPISODE_ESTIMATORS: tuple[str, ...] = ("reinforce", "reward_to_go")

# Per-episode gradients are computed on blocks of this many episodes of similar length
# (sorted by length, each block trimmed to its longest episode): memory ~ block x P, and
# far less padding than one [N, T] grid (CartPole at init: mean length ~22, T ~110).
_BLOCK_EPISODES = 256

_REFERENCE_STREAM = 0
_BATCH_STREAM = 1


@dataclass(frozen=True)
class ReferenceGradient:
    """A large-batch estimate of grad J(theta) with its per-coordinate standard error.

    Attributes:
        mean: ghat_ref = (1/M) sum_i g_i, ``[P]`` float64, parameters flattened in
            ``policy.named_parameters()`` order (as :func:`pglab.gym.gradients.flat_grad`).
        standard_error: SE_j = s_j / sqrt(M), ``[P]`` float64, s_j the sample standard
            deviation (divisor M - 1) of coordinate j of the per-episode gradients.
        n_episodes: M.
        estimator: the per-episode estimator that gave the g_i.
        gamma: its discount.
        n_steps: real environment steps in the M episodes, sum_i T_i.
    """

    mean: Tensor
    standard_error: Tensor
    n_episodes: int
    estimator: str = "reward_to_go"
    gamma: float = 1.0
    n_steps: int = 0

    @property
    def relative_se(self) -> float:
        """||SE|| / ||ghat_ref|| = sqrt(tr Cov(g) / M) / ||ghat_ref||: the reference's own noise.

        Its square is, on average, the reference's contribution to a batch's squared
        relative error (see the module doc). ``inf`` if ghat_ref = 0.
        """
        norm = float(self.mean.norm())
        return float(self.standard_error.norm()) / norm if norm > 0 else math.inf

    @property
    def trace_covariance(self) -> float:
        """tr Cov(g) ~= sum_j s_j^2 = M ||SE||^2, the total per-episode variance (unbiased).

        A batch of N episodes of the same estimator has E||ghat_N - grad J||^2 = tr Cov(g) / N.
        """
        return float(self.n_episodes * (self.standard_error**2).sum())


def _stream_seeds(seed: int, *key: int) -> tuple[int, int]:
    """(environment seed < 2**32, 63-bit generator seed) for the stream ``[seed, *key]``."""
    words = np.random.SeedSequence([seed, *key]).generate_state(3, dtype=np.uint32)
    env_seed = int(words[0])
    generator_seed = (int(words[1]) << 31) ^ int(words[2])  # < 2**63, a valid manual_seed
    return env_seed, generator_seed


def _split_sizes(total: int, size: int) -> list[tuple[int, int]]:
    """[(chunk size, number of chunks)] covering ``total`` with chunks of ``size`` and a rest."""
    full, rest = divmod(total, size)
    return [(n, k) for n, k in ((size, full), (rest, 1)) if n > 0 and k > 0]


def _collect_chunks(
    policy: CategoricalPolicy,
    env_id: str,
    sizes: list[tuple[int, int]],
    seed: int,
    key: tuple[int, ...],
    max_episode_steps: int | None,
) -> Iterator[EpisodeBatch]:
    """Yield the batches of ``sizes``: one collector (and generator) per chunk size.

    Chunks of size n come from ``RolloutCollector(env_id, n, env_seed)`` called repeatedly
    (later calls continue the environments' RNG streams) with a ``torch.Generator`` seeded
    by the same ``SeedSequence([seed, *key, n])`` stream.
    """
    for n, count in sizes:
        env_seed, generator_seed = _stream_seeds(seed, *key, n)
        generator = torch.Generator().manual_seed(generator_seed)
        with RolloutCollector(
            env_id, n, seed=env_seed, max_episode_steps=max_episode_steps
        ) as collector:
            for _ in range(count):
                yield collector.collect(policy, generator)


def _sub_batch(batch: EpisodeBatch, index: Tensor) -> EpisodeBatch:
    """The episodes ``index`` of ``batch``, padded to their own longest length."""
    lengths = batch.lengths[index]
    t = int(lengths.max())
    return EpisodeBatch(
        observations=batch.observations[index, :t],
        actions=batch.actions[index, :t],
        rewards=batch.rewards[index, :t],
        mask=batch.mask[index, :t],
        lengths=lengths,
        terminated=batch.terminated[index],
        env_steps=t * int(index.numel()),
    )


@dataclass
class _Moments:
    """Running count, mean and sum of squared deviations M2 of vectors, float64 (Chan et al.)."""

    count: int
    mean: Tensor
    m2: Tensor

    def add(self, rows: Tensor) -> None:
        """Merge the rows ``[n, P]``: mean_ab = mean_a + d n_b / n, M2_ab = M2_a + M2_b + d^2 n_a n_b / n."""
        rows = rows.to(torch.float64)
        n_b = rows.shape[0]
        mean_b = rows.mean(dim=0)
        m2_b = ((rows - mean_b) ** 2).sum(dim=0)
        n = self.count + n_b
        delta = mean_b - self.mean  # d
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / n)
        self.count = n


def _check_collection(
    policy: Any, n_episodes: Any, name: str, minimum: int, seed: Any, chunk: Any, limit: Any
) -> tuple[int, int, int, int | None]:
    """The checks every public entry point makes before playing an episode: ``(n_episodes,
    seed, chunk_episodes, max_episode_steps)`` as ints."""
    checks.instance("policy", policy, CategoricalPolicy)
    n_episodes = checks.integer(name, n_episodes, minimum=minimum)
    seed = checks.integer("seed", seed, minimum=0)
    chunk = checks.positive_int("chunk_episodes", chunk)
    if limit is not None:
        limit = checks.positive_int("max_episode_steps", limit)
    return n_episodes, seed, chunk, limit


def reference_episodes(
    policy: CategoricalPolicy,
    env_id: str,
    n_episodes: int = 100_000,
    seed: int = 0,
    chunk_episodes: int = 4096,
    max_episode_steps: int | None = None,
) -> Iterator[EpisodeBatch]:
    """The M episodes :func:`reference_gradient` averages over, in batches of <= chunk_episodes.

    ``floor(M / chunk)`` batches of ``chunk_episodes`` episodes, then one of the remaining
    ``M mod chunk`` (if any), from the reference stream of ``seed`` (module doc). The same
    arguments and policy parameters give the same episodes, so a caller can recompute the
    reference from them. Arguments are validated at once (``ValueError``).
    """
    n_episodes, seed, chunk_episodes, max_episode_steps = _check_collection(
        policy, n_episodes, "n_episodes", 1, seed, chunk_episodes, max_episode_steps
    )
    return _reference_episodes(policy, env_id, n_episodes, seed, chunk_episodes, max_episode_steps)


def _reference_episodes(
    policy: CategoricalPolicy,
    env_id: str,
    n_episodes: int,
    seed: int,
    chunk_episodes: int,
    max_episode_steps: int | None,
) -> Iterator[EpisodeBatch]:
    sizes = _split_sizes(n_episodes, chunk_episodes)
    return _collect_chunks(policy, env_id, sizes, seed, (_REFERENCE_STREAM,), max_episode_steps)


def batch_episodes(
    policy: CategoricalPolicy,
    env_id: str,
    n_trajectories: int,
    n_batches: int,
    seed: int = 0,
    chunk_episodes: int = 4096,
    max_episode_steps: int | None = None,
) -> Iterator[EpisodeBatch]:
    """The ``n_batches`` fresh batches of N episodes that :func:`batch_gradient_quality` scores.

    Drawn from the batch stream of (``seed``, N) (module doc), independent of the
    reference's episodes: ``k = max(1, chunk_episodes // N)`` batches are collected at once
    (one vector environment of k N copies) and split in order, each batch padded to its own
    longest episode. Arguments are validated at once (``ValueError``).
    """
    n, seed, chunk_episodes, max_episode_steps = _check_collection(
        policy, n_trajectories, "n_trajectories", 1, seed, chunk_episodes, max_episode_steps
    )
    n_batches = checks.positive_int("n_batches", n_batches)
    return _batch_episodes(policy, env_id, n, n_batches, seed, chunk_episodes, max_episode_steps)


def _batch_episodes(
    policy: CategoricalPolicy,
    env_id: str,
    n: int,
    n_batches: int,
    seed: int,
    chunk_episodes: int,
    max_episode_steps: int | None,
) -> Iterator[EpisodeBatch]:
    per_collect = max(1, chunk_episodes // n)
    sizes = [(k * n, count) for k, count in _split_sizes(n_batches, per_collect)]
    chunks = _collect_chunks(policy, env_id, sizes, seed, (_BATCH_STREAM, n), max_episode_steps)
    return (
        _sub_batch(chunk, torch.arange(start, start + n))
        for chunk in chunks
        for start in range(0, chunk.n_trajectories, n)
    )


@thread_invariant
def reference_gradient(
    policy: CategoricalPolicy,
    env_id: str,
    n_episodes: int = 100_000,
    estimator: str = "reward_to_go",
    gamma: float = 1.0,
    seed: int = 0,
    chunk_episodes: int = 4096,
    max_episode_steps: int | None = None,
) -> ReferenceGradient:
    """Large-batch reference gradient ghat_ref = (1/M) sum_i g_i and its standard error.

    Args:
        policy: the checkpoint pi_theta (not modified; its ``.grad`` fields are untouched).
        env_id: gymnasium id, e.g. ``"CartPole-v1"``.
        n_episodes: M >= 2 (a sample variance needs two episodes); 10^5 by default.
        estimator: ``"reward_to_go"`` (default: unbiased, lower variance than REINFORCE) or
            ``"reinforce"``; only estimators whose weights depend on one episode are
            allowed (:data:`PER_EPISODE_ESTIMATORS`), since the SE assumes i.i.d. g_i.
        gamma: discount in [0, 1] of the estimator's weights.
        seed: non-negative integer; the episodes are :func:`reference_episodes` with it.
        chunk_episodes: episodes collected at once (one vector environment of that size).
        max_episode_steps: time limit, ``None`` for the environment's own.

    Returns:
        :class:`ReferenceGradient` with ``mean`` and ``standard_error`` ``[P]`` float64.

    Raises:
        ValueError: naming the first invalid argument, before any episode is played.

    Memory is bounded by one chunk of episodes plus 256 x P per-episode gradients: the mean
    and the per-coordinate sum of squared deviations are merged block by block in float64
    (Chan et al.'s pairwise update: the same as accumulating sum g and sum g^2, without
    their cancellation), and the ``[M, P]`` matrix is never held. Per-episode gradients
    come from :func:`pglab.gym.gradients.per_episode_gradients` on blocks of 256 episodes of
    similar length, each trimmed to its longest episode (much less padding).
    """
    n_episodes, seed, chunk_episodes, max_episode_steps = _check_collection(
        policy, n_episodes, "n_episodes", 2, seed, chunk_episodes, max_episode_steps
    )
    gamma = checks.discount("gamma", gamma)
    if estimator not in PER_EPISODE_ESTIMATORS:
        estimators.check_estimator(estimator)  # an unknown name gets the registry's message
        raise checks.ConfigError(
            f"estimator={estimator!r} couples the episodes of a batch, so the reference's "
            f"standard error would be wrong; use one of {list(PER_EPISODE_ESTIMATORS)}"
        )

    n_params = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    zeros = torch.zeros(n_params, dtype=torch.float64)
    moments = _Moments(0, zeros, zeros.clone())
    n_steps = 0
    chunks = _reference_episodes(
        policy, env_id, n_episodes, seed, chunk_episodes, max_episode_steps
    )
    for batch in chunks:
        n_steps += batch.n_steps
        # Psi [n, T], per episode (rewards float32, mask bool: as step_weights would check)
        weights = estimators._step_weights(batch.rewards, batch.mask, estimator, gamma, None)
        order = torch.argsort(batch.lengths, stable=True)
        for start in range(0, order.numel(), _BLOCK_EPISODES):
            index = order[start : start + _BLOCK_EPISODES]
            block = _sub_batch(batch, index)
            block_weights = weights[index, : block.mask.shape[1]]
            g = per_episode_gradients(policy, block, block_weights, chunk_size=_BLOCK_EPISODES)
            moments.add(g)  # g: [n, P] rows g_i

    # SE_j = s_j / sqrt(M), s_j^2 = M2_j / (M - 1)
    standard_error = (moments.m2 / (moments.count - 1)).sqrt() / math.sqrt(moments.count)
    return ReferenceGradient(
        mean=moments.mean,
        standard_error=standard_error,
        n_episodes=moments.count,
        estimator=estimator,
        gamma=gamma,
        n_steps=n_steps,
    )


@thread_invariant
def batch_gradient_quality(
    policy: CategoricalPolicy,
    env_id: str,
    reference: ReferenceGradient,
    batch_sizes: Sequence[int],
    n_batches: int,
    estimator: str,
    gamma: float = 1.0,
    seed: int = 0,
    max_episode_steps: int | None = None,
    chunk_episodes: int = 4096,
) -> list[dict[str, Any]]:
    """Compare fresh N-episode estimates ghat_N with the reference, for each N.

    For each N in ``batch_sizes`` the batches b = 0, ..., ``n_batches`` - 1 are
    :func:`batch_episodes` (fresh, independent of the reference and of the other batches).
    Each batch's weights Psi come from ``estimators.step_weights`` on that batch alone (so
    a batch-coupled baseline sees exactly its N episodes), and ghat_N = -grad L with L the
    :func:`pglab.gym.gradients.surrogate_loss`.

    Args:
        policy: the checkpoint (the one the reference was computed for; not modified).
        env_id: gymnasium id.
        reference: from :func:`reference_gradient` for the same policy.
        batch_sizes: the N values, each >= 1.
        n_batches: batches per N, >= 1.
        estimator: any name of :mod:`pglab.estimators` usable on sampled episodes (not
            ``baseline_value``, which needs exact tabular values).
        gamma: discount in [0, 1]; seed: non-negative integer.
        max_episode_steps: time limit, ``None`` for the environment's own.
        chunk_episodes: episodes collected at once (bounds memory).

    Returns:
        One dict per (N, b), in order: ``n_trajectories`` (N), ``batch`` (b), ``estimator``,
        ``cosine`` = cos(ghat_N, ghat_ref), ``relative_error`` = ||ghat_N - ghat_ref|| /
        ||ghat_ref||, ``grad_norm`` = ||ghat_N||, ``n_steps`` (real steps in the batch).
        Computed in float64 from the gradient in the policy dtype. ``cosine`` is NaN when
        ghat_N = 0 (e.g. ``baseline_batch_mean`` with N = 1, whose Psi is exactly 0).

    Raises:
        ValueError: naming the first invalid argument, before any episode is played.
    """
    checks.instance("policy", policy, CategoricalPolicy)
    checks.instance("reference", reference, ReferenceGradient)
    if isinstance(batch_sizes, str | bytes) or not isinstance(batch_sizes, Sequence):
        raise checks.ConfigError(
            f"batch_sizes must be a sequence of positive integers, got {batch_sizes!r}"
        )
    checks.non_empty("batch_sizes", batch_sizes)
    sizes = [checks.positive_int(f"batch_sizes[{k}]", n) for k, n in enumerate(batch_sizes)]
    n_batches, seed, chunk_episodes, max_episode_steps = _check_collection(
        policy, n_batches, "n_batches", 1, seed, chunk_episodes, max_episode_steps
    )
    gamma = checks.discount("gamma", gamma)
    estimators.check_estimator(estimator)
    if estimator in TABULAR_ONLY_ESTIMATORS:
        raise checks.ConfigError(
            f"estimator={estimator!r} needs exact tabular values and cannot run on a "
            "gymnasium environment; choose another estimator"
        )
    params = [p for p in policy.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    if reference.mean.shape != (n_params,):
        raise ValueError(
            f"reference.mean has shape {tuple(reference.mean.shape)}, but the policy has "
            f"P={n_params} parameters: the reference belongs to another policy"
        )
    ref = reference.mean.to(torch.float64)
    ref_norm = float(ref.norm())

    rows: list[dict[str, Any]] = []
    for n in sizes:
        batches = _batch_episodes(
            policy, env_id, n, n_batches, seed, chunk_episodes, max_episode_steps
        )
        for b, batch in enumerate(batches):
            # Psi [N, T], coupled within this batch only
            weights = estimators._step_weights(batch.rewards, batch.mask, estimator, gamma, None)
            with torch.enable_grad():  # also under a caller's torch.no_grad()
                loss = surrogate_loss(policy, batch, weights)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            g_hat = -torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            ).to(torch.float64)  # ghat_N = -grad L
            norm = float(g_hat.norm())
            cosine = (
                float(g_hat @ ref) / (norm * ref_norm) if norm > 0 and ref_norm > 0 else math.nan
            )
            error = float((g_hat - ref).norm()) / ref_norm if ref_norm > 0 else math.nan
            rows.append(
                {
                    "n_trajectories": n,
                    "batch": b,
                    "estimator": estimator,
                    "cosine": cosine,
                    "relative_error": error,
                    "grad_norm": norm,
                    "n_steps": batch.n_steps,
                }
            )
    return rows
