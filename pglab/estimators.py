"""Score-function (REINFORCE-family) policy-gradient estimators, as per-step weights.

Every estimator here has the same shape. Trajectory ``i`` contributes

    g_i = sum_t Psi_{i,t} grad_theta log pi_theta(a_{i,t} | s_{i,t}),

and the batch estimate of ``grad J`` is ``ghat_N = (1/N) sum_i g_i``. The estimators differ
only in the weights ``Psi_{i,t}``. Notation: ``m_{i,t}`` the mask (step ``t`` is part of
episode ``i``), ``r_{i,t}`` the reward the environment paid on step ``t`` (on a tabular
MDP the realized ``R(s_t, a_t, s_{t+1})`` when the MDP has ``transition_rewards``, else
``r(s_t, a_t)``; see :mod:`pglab.sampling`), ``gamma`` the discount,

    R_i = sum_t gamma^t r_{i,t}                         discounted return,
    G_{i,t} = sum_{t' >= t} gamma^(t' - t) r_{i,t'}     return from step t on (G_T = 0).

==================================  ==============================================  ========
estimator                           Psi_{i,t}  (times m_{i,t})                      unbiased
==================================  ==============================================  ========
``reinforce``                       ``R_i``                                         yes
``reward_to_go``                    ``gamma^t G_{i,t} = sum_{t'>=t} gamma^t' r``    yes
``reward_to_go_dropped_discount``   ``G_{i,t}``                                     gamma=1
``baseline_batch_mean``             ``R_i - (1/N) sum_j R_j``                       no
``baseline_leave_one_out``          ``R_i - (1/(N-1)) sum_{j != i} R_j``            yes
``baseline_value``                  ``gamma^t (G_{i,t} - V_t(s_{i,t}))``            yes
``normalized``                      ``(R_i - mean_j R_j) / (std_j R_j + 1e-8)``     no
==================================  ==============================================  ========

Why each is (un)biased:

* ``reinforce``: ``grad J = E[R(tau) grad log P_theta(tau)]`` (log-derivative trick) and
  ``grad log P_theta(tau) = sum_t grad log pi(a_t|s_t)``: the dynamics do not depend on
  theta.
* ``reward_to_go``: causality. For ``t' < t``, ``E[r_t' grad log pi(a_t|s_t)] = 0``
  because, given the history up to ``s_t``, ``E_{a_t ~ pi}[grad log pi(a_t|s_t)] =
  sum_a grad pi(a|s_t) = grad 1 = 0``. Dropping those terms from ``reinforce`` keeps the
  mean.
* ``reward_to_go_dropped_discount``: drops the ``gamma^t`` in front of ``G_t``, as many
  implementations do. Its mean is ``sum_t E[G_t grad log pi(a_t|s_t)]``, the gradient of
  an objective that weights every time step's state distribution equally, not of
  ``J = E[sum_t gamma^t r_t]``; biased for ``gamma < 1`` (Thomas, 2014, "Bias in natural
  actor-critic algorithms"). Identical to ``reward_to_go`` when ``gamma = 1``.
* ``baseline_batch_mean``: with ``S_i = sum_t grad log pi(a_{i,t}|s_{i,t})``,
  ``ghat_N = (1/N) sum_i S_i (R_i - (1/N) sum_j R_j)
  = (1/N)(1 - 1/N) sum_i S_i R_i - (1/N^2) sum_i sum_{j != i} S_i R_j``.
  For ``j != i`` the trajectories are independent and ``E[S_i] = 0``, so
  ``E[S_i R_j] = E[S_i] E[R_j] = 0``; hence ``E[ghat_N] = (1 - 1/N) grad J``. The
  baseline contains ``R_i`` itself. ``N = 1`` gives exactly 0.
* ``baseline_leave_one_out``: the baseline ``b_i = (1/(N-1)) sum_{j != i} R_j`` is
  independent of trajectory ``i``, so ``E[S_i b_i] = E[S_i] E[b_i] = 0``. Algebraically
  ``Psi = N/(N-1) (R_i - mean_j R_j)``, the batch-mean weights rescaled by ``N/(N-1)``,
  which removes the ``(1 - 1/N)`` factor. For ``N = 1`` there is no other trajectory and
  the baseline is defined as 0 (the estimator is then ``reinforce``).
* ``baseline_value``: ``gamma^t G_t`` is ``reward_to_go``, and
  ``E[gamma^t V_t(s_t) grad log pi(a_t|s_t)] = 0`` because ``V_t(s_t)`` does not depend on
  ``a_t``. ``V_t`` is the exact, time-indexed value of the current policy
  (:func:`pglab.exact.solve`), an oracle a real agent does not have.
* ``normalized``: dividing by the batch's own standard deviation rescales the gradient by
  a random factor correlated with the returns, and the centring has the batch-mean bias.
  For large ``N`` its mean tends to ``grad J / std(R)``, not ``grad J``. ``std`` is the
  population standard deviation ``sqrt((1/N) sum_j (R_j - mean)^2)`` and ``1e-8``
  (:data:`NORMALIZED_EPS`) keeps a batch of equal returns finite (its weights are then 0).

The tabular softmax score. With ``pi = softmax(theta)`` and ``theta`` of shape ``[S, A]``,
``d log pi(a|s) / d theta[s', b] = 1[s' = s] (1[b = a] - pi(b|s))``. So

    g_i[s, b] = C_i[s, b] - pi(b|s) sum_a C_i[s, a],
    C_i[s, a] = sum_t Psi_{i,t} 1[s_{i,t} = s, a_{i,t} = a],

computed with one scatter-add of the weights per block of trajectories.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pglab import exact
from pglab.mdp import TabularMDP
from pglab.sampling import TrajectorySampler, block_size_for, check_n_trajectories
from pglab.tabular_policy import check_logits, softmax_policy

__all__ = [
    "ESTIMATORS",
    "NORMALIZED_EPS",
    "UNBIASED_ESTIMATORS",
    "batch_estimates",
    "check_estimator",
    "discounted_returns",
    "is_constant",
    "known_relative_bias",
    "return_weights",
    "rewards_to_go",
    "sample_gradients",
    "step_weights",
]

ESTIMATORS: tuple[str, ...] = (
    "reinforce",
    "reward_to_go",
    "reward_to_go_dropped_discount",
    "baseline_batch_mean",
    "baseline_leave_one_out",
    "baseline_value",
    "normalized",
)

#: Estimators whose mean is exactly ``grad J`` for every ``N`` and ``gamma``.
UNBIASED_ESTIMATORS: tuple[str, ...] = (
    "reinforce",
    "reward_to_go",
    "baseline_leave_one_out",
    "baseline_value",
)

#: ``eps`` in the denominator of ``normalized``: ``(R_i - mean) / (std + eps)``.
NORMALIZED_EPS = 1e-8

# Estimators with Psi_{i,t} = m_{i,t} w_i, w_i = alpha (R_i - c) (one weight per trajectory),
# and the subset whose (alpha, c) depend on the whole batch.
_RETURN_ESTIMATORS = ("reinforce", "baseline_batch_mean", "baseline_leave_one_out", "normalized")
_BATCH_COUPLED = ("baseline_batch_mean", "baseline_leave_one_out", "normalized")


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def check_estimator(name: str) -> str:
    """Return ``name`` if it is in :data:`ESTIMATORS`; else ValueError listing the known ones."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known estimators: {list(ESTIMATORS)}")
    return name


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise ValueError(f"gamma must be a real number in [0, 1], got {gamma!r}")
    if not (math.isfinite(float(gamma)) and 0.0 <= float(gamma) <= 1.0):
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    return float(gamma)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return int(seed)


def _check_rewards_mask(rewards: Any, mask: Any) -> tuple[Tensor, Tensor]:
    r = torch.as_tensor(rewards)
    if not r.is_floating_point():
        raise ValueError(f"rewards must have a floating dtype, got {r.dtype}")
    if r.dim() < 2:
        raise ValueError(f"rewards must have shape [..., N, T], got shape {list(r.shape)}")
    m = torch.as_tensor(mask, device=r.device)
    if m.shape != r.shape:
        raise ValueError(
            f"mask has shape {list(m.shape)}, expected the rewards' shape {list(r.shape)}"
        )
    return r, m if m.dtype == torch.bool else m != 0


def is_constant(estimator: str, n_trajectories: int) -> bool:
    """Whether ``ghat_N`` of ``estimator`` is a constant (not random) at batch size ``N``.

    True only for ``baseline_batch_mean`` and ``normalized`` at ``N = 1``: the one return
    minus the batch mean is exactly 0, so the estimate is identically 0 (a 100% bias when
    ``grad J != 0``). :func:`pglab.stats.gradient_estimate_metrics` then takes the ``K``
    equal values as the mean itself.
    """
    check_estimator(estimator)
    return n_trajectories == 1 and estimator in ("baseline_batch_mean", "normalized")


def known_relative_bias(estimator: str, n_trajectories: int, gamma: float) -> float:
    """``||E ghat_N - grad J|| / ||grad J||`` where theory gives it, else NaN.

    0 for the unbiased estimators (and ``reward_to_go_dropped_discount`` when
    ``gamma = 1``, where it equals ``reward_to_go``); exactly ``1/N`` for
    ``baseline_batch_mean`` (``E ghat_N = (1 - 1/N) grad J``, the module docstring); 1 for
    ``normalized`` at ``N = 1`` (identically 0). The calibration study measures the bias
    intervals' coverage against these values.
    """
    check_estimator(estimator)
    if estimator in UNBIASED_ESTIMATORS or (
        estimator == "reward_to_go_dropped_discount" and gamma == 1.0
    ):
        return 0.0
    if estimator == "baseline_batch_mean":
        return 1.0 / n_trajectories
    if estimator == "normalized" and n_trajectories == 1:
        return 1.0
    return math.nan


# ---------------------------------------------------------------------------------------
# Returns and weights
# ---------------------------------------------------------------------------------------
def _discounts(horizon: int, gamma: float, like: Tensor) -> Tensor:
    """``[T]`` ``gamma^t`` in ``like``'s dtype and device (``0^0 = 1``)."""
    steps = torch.arange(horizon, dtype=like.dtype, device=like.device)
    return torch.pow(torch.tensor(gamma, dtype=like.dtype, device=like.device), steps)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``R_i = sum_t gamma^t m_{i,t} r_{i,t}``.

    Args:
        rewards: ``[..., N, T]`` floating rewards (masked entries are ignored).
        mask: ``[..., N, T]`` bool (or 0/1), True on real steps.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``[..., N]`` in the dtype and device of ``rewards``.
    """
    gamma = _check_gamma(gamma)
    r, m = _check_rewards_mask(rewards, mask)
    return (torch.where(m, r, 0.0) * _discounts(r.shape[-1], gamma, r)).sum(dim=-1)


def rewards_to_go(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_{i,t} = sum_{t' >= t} gamma^(t' - t) m_{i,t'} r_{i,t'}`` by ``G_t = r_t + gamma G_{t+1}``.

    Args:
        rewards: ``[..., N, T]`` floating rewards (masked entries are ignored).
        mask: ``[..., N, T]`` bool (or 0/1).
        gamma: discount in ``[0, 1]``.

    Returns:
        ``[..., N, T]`` in the dtype and device of ``rewards`` (undiscounted by ``gamma^t``:
        multiply by ``gamma^t`` for the discounted-from-0 version).
    """
    gamma = _check_gamma(gamma)
    r, m = _check_rewards_mask(rewards, mask)
    return _rewards_to_go(torch.where(m, r, 0.0), gamma)


def _rewards_to_go(masked_rewards: Tensor, gamma: float) -> Tensor:
    to_go = torch.empty_like(masked_rewards)
    horizon = masked_rewards.shape[-1]
    if horizon == 0:
        return to_go
    to_go[..., -1] = masked_rewards[..., -1]
    for t in range(horizon - 2, -1, -1):
        # G_t = r_t + gamma G_{t+1}
        torch.add(masked_rewards[..., t], to_go[..., t + 1], alpha=gamma, out=to_go[..., t])
    return to_go


def _return_coefficients(
    estimator: str, n_trajectories: int, mean: Tensor, sum_sq_dev: Tensor
) -> tuple[Tensor, Tensor]:
    """``(alpha, c)`` with ``w_i = alpha (R_i - c)`` for a return-based estimator.

    Args:
        estimator: one of ``reinforce``, ``baseline_batch_mean``,
            ``baseline_leave_one_out``, ``normalized``.
        n_trajectories: ``N``, the batch size.
        mean: ``[...]`` batch mean of the returns ``(1/N) sum_j R_j``.
        sum_sq_dev: ``[...]`` ``sum_j (R_j - mean)^2``.

    This is the single definition of the batch-coupled weights, used both by
    :func:`return_weights` (whole batch in memory) and :func:`batch_estimates` (batch
    statistics accumulated over chunks).
    """
    one, zero = torch.ones_like(mean), torch.zeros_like(mean)
    n = n_trajectories
    if estimator == "reinforce":
        return one, zero
    if n == 1 and estimator in ("baseline_batch_mean", "normalized"):
        # R_1 - mean = 0 exactly; computing alpha (sum R S - c sum S) would leave round-off
        # (times 1/eps = 1e8 for normalized) instead of the exact zero.
        return zero, zero
    if estimator == "baseline_batch_mean":
        return one, mean
    if estimator == "baseline_leave_one_out":
        if n == 1:  # no other trajectory: baseline 0
            return one, zero
        # R_i - (N mean - R_i)/(N-1) = N/(N-1) (R_i - mean)
        return one * (n / (n - 1)), mean
    if estimator == "normalized":
        std = (sum_sq_dev / n).sqrt()  # population std
        return 1.0 / (std + NORMALIZED_EPS), mean
    raise AssertionError(estimator)


def return_weights(returns: Tensor, estimator: str) -> Tensor:
    """Per-trajectory weights ``w_i`` of the return-based estimators (``Psi_{i,t} = w_i``).

    Args:
        returns: ``[..., N]`` discounted returns ``R_i`` of one batch (the last axis); any
            floating dtype and device.
        estimator: ``reinforce`` (``w_i = R_i``), ``baseline_batch_mean``
            (``R_i - mean``), ``baseline_leave_one_out`` (``N/(N-1) (R_i - mean)``, or
            ``R_i`` when ``N = 1``) or ``normalized`` (``(R_i - mean)/(std + 1e-8)``).

    Returns:
        ``[..., N]`` weights, same dtype and device.
    """
    check_estimator(estimator)
    if estimator not in _RETURN_ESTIMATORS:
        raise ValueError(
            f"estimator {estimator!r} has per-step weights; return_weights supports "
            f"{list(_RETURN_ESTIMATORS)} (use step_weights)"
        )
    r = torch.as_tensor(returns)
    if not r.is_floating_point() or r.dim() < 1:
        raise ValueError(
            f"returns must be a floating [..., N] tensor, got {r.dtype} {list(r.shape)}"
        )
    n = r.shape[-1]
    if n == 0:
        return r.clone()
    mean = r.mean(dim=-1)
    sum_sq_dev = (r - mean[..., None]).square().sum(dim=-1)
    alpha, center = _return_coefficients(estimator, n, mean, sum_sq_dev)
    return alpha[..., None] * (r - center[..., None])


def step_weights(
    rewards: Tensor,
    mask: Tensor,
    estimator: str,
    gamma: float = 1.0,
    values: Tensor | None = None,
) -> Tensor:
    """Per-step weights ``Psi_{i,t}`` of an estimator (see the module table).

    Args:
        rewards: ``[..., N, T]`` floating rewards ``r_{i,t}``; entries where ``mask`` is
            False are ignored. The second-to-last axis is the batch: the batch-coupled
            estimators (``baseline_batch_mean``, ``baseline_leave_one_out``,
            ``normalized``) couple the ``N`` trajectories along it; leading axes are
            independent batches.
        mask: ``[..., N, T]`` bool (or 0/1), True on the episode's real steps.
        estimator: a name in :data:`ESTIMATORS`.
        gamma: discount ``gamma`` in ``[0, 1]``.
        values: ``[..., N, T]`` ``V_t(s_{i,t})``; required by ``baseline_value`` and
            ignored by the others.

    Returns:
        ``[..., N, T]`` weights in the dtype and device of ``rewards``, exactly 0 where
        ``mask`` is False. Nothing here is random.

    Raises:
        ValueError: unknown estimator, ``gamma`` outside ``[0, 1]``, non-floating rewards,
            mismatched shapes, or missing ``values`` for ``baseline_value``.
    """
    check_estimator(estimator)
    gamma = _check_gamma(gamma)
    r, m = _check_rewards_mask(rewards, mask)
    v = None
    if estimator == "baseline_value":
        if values is None:
            raise ValueError("estimator 'baseline_value' needs values [..., N, T] = V_t(s_t)")
        v = torch.as_tensor(values, device=r.device).to(r.dtype)
        if v.shape != r.shape:
            raise ValueError(
                f"values has shape {list(v.shape)}, expected the rewards' shape {list(r.shape)}"
            )

    masked = torch.where(m, r, 0.0)
    discounts = _discounts(r.shape[-1], gamma, r)  # [T] gamma^t
    if estimator in _RETURN_ESTIMATORS:
        returns = (masked * discounts).sum(dim=-1)  # R_i
        weights = return_weights(returns, estimator)  # w_i
        return torch.where(m, weights[..., None], 0.0)
    to_go = _rewards_to_go(masked, gamma)  # G_t
    if estimator == "reward_to_go_dropped_discount":
        psi = to_go  # G_t
    elif estimator == "reward_to_go":
        psi = discounts * to_go  # gamma^t G_t
    else:  # baseline_value
        psi = discounts * (to_go - v)  # gamma^t (G_t - V_t(s_t))
    return torch.where(m, psi, 0.0)


# ---------------------------------------------------------------------------------------
# Tabular sampled gradients
# ---------------------------------------------------------------------------------------
class _Setup:
    """Validated inputs and the per-theta work shared by sample_gradients and batch_estimates."""

    def __init__(self, mdp: TabularMDP, logits: Any, names: Sequence[str], seed: Any) -> None:
        if not isinstance(mdp, TabularMDP):
            raise ValueError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
        self.seed = _check_seed(seed)
        theta = check_logits(logits, mdp.n_states, mdp.n_actions).detach()
        self.mdp = mdp
        self.policy = softmax_policy(theta)  # [S, A]
        self.n_states, self.n_actions, self.horizon = mdp.n_states, mdp.n_actions, mdp.horizon
        # V_t(s) as a flat table indexed by t S + s, for baseline_value.
        self.values = None
        if "baseline_value" in names:
            self.values = exact.solve(mdp, theta).values[:-1].reshape(-1)  # [T*S]
            self.time_offset = torch.arange(self.horizon) * self.n_states  # [T]
        self.sampler = TrajectorySampler(mdp, self.policy)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_values(self, states: Tensor) -> Tensor:
        """``[n, T]`` ``V_t(s_{i,t})``."""
        assert self.values is not None
        return self.values[states + self.time_offset]

    def subtract_policy_part(self, counts: Tensor) -> Tensor:
        """``g[.., s, b] = C[.., s, b] - pi(b|s) sum_a C[.., s, a]``, in place on ``[.., S*A]``."""
        grid = counts.view(*counts.shape[:-1], self.n_states, self.n_actions)
        grid.addcmul_(grid.sum(dim=-1, keepdim=True), self.policy, value=-1.0)
        return counts


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
    n = check_n_trajectories(n_trajectories)
    setup = _Setup(mdp, logits, (estimator,), seed)
    n_states, n_actions, horizon, gamma = setup.n_states, setup.n_actions, mdp.horizon, mdp.gamma
    n_pairs = n_states * n_actions
    out = torch.empty(n, n_pairs, dtype=torch.float64)
    per_trajectory = estimator in _RETURN_ESTIMATORS
    coupled = estimator in _BATCH_COUPLED
    returns = torch.empty(n, dtype=torch.float64) if coupled else None
    block = min(n, block_size_for(horizon))
    pairs = torch.empty(block, horizon, dtype=torch.int64)
    score_weights = torch.empty(block, horizon, dtype=torch.float64)
    discounts = _discounts(horizon, gamma, out)

    visits = torch.empty(block, n_states, dtype=torch.float64)
    minus_policy = -setup.policy  # [S, A]
    start = 0
    for batch in setup.sampler.blocks(n, setup.generator, block):
        rows = batch.n_trajectories
        stop = start + rows
        sa = torch.add(batch.actions, batch.states, alpha=n_actions, out=pairs[:rows])  # s A + a
        if per_trajectory:
            # Psi_{i,t} = m_{i,t} w_i: scatter the mask (the score), scale rows by w_i below.
            weights = score_weights[:rows].copy_(batch.mask)
        else:
            values = setup.state_values(batch.states) if estimator == "baseline_value" else None
            weights = step_weights(batch.rewards, batch.mask, estimator, gamma, values)
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
        out.mul_(return_weights(returns, estimator)[:, None])
    return out.view(n, n_states, n_actions)


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
            picks :func:`pglab.sampling.block_size_for` ``(T)`` (~2.6e5 trajectory-steps).
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
        raise ValueError(
            f"estimators must be a sequence of names, got {estimators!r}; "
            f"e.g. ['reinforce']; known: {list(ESTIMATORS)}"
        )
    if len(estimators) == 0:
        raise ValueError(f"estimators is empty; choose from {list(ESTIMATORS)}")
    names = list(dict.fromkeys(check_estimator(name) for name in estimators))
    n = check_n_trajectories(n_trajectories)
    n_reps = check_n_trajectories(n_repetitions, "n_repetitions")
    chunk = None
    if max_trajectories_per_chunk is not None:
        chunk = check_n_trajectories(max_trajectories_per_chunk, "max_trajectories_per_chunk")
    setup = _Setup(mdp, logits, names, seed)
    if chunk is None:
        chunk = block_size_for(mdp.horizon)
    n_states, n_actions, horizon, gamma = setup.n_states, setup.n_actions, mdp.horizon, mdp.gamma
    n_pairs = n_states * n_actions

    def zeros() -> Tensor:
        return torch.zeros(n_reps * n_pairs, dtype=torch.float64)

    step_names = [name for name in names if name not in _RETURN_ESTIMATORS]
    return_names = [name for name in names if name in _RETURN_ESTIMATORS]
    coupled = any(name in _BATCH_COUPLED for name in return_names)
    step_sums = {name: zeros() for name in step_names}  # sum_i g_i, flat [K * S*A]
    weighted_scores = zeros() if return_names else None  # sum_i R_i S_i
    scores = zeros() if coupled else None  # sum_i S_i
    count = torch.zeros(n_reps, dtype=torch.float64)  # returns' running statistics
    mean = torch.zeros(n_reps, dtype=torch.float64)
    sum_sq_dev = torch.zeros(n_reps, dtype=torch.float64)

    block = min(n * n_reps, chunk)
    index = torch.empty(block, horizon, dtype=torch.int64)
    mask_weights = torch.empty(block, horizon, dtype=torch.float64)
    discounts = _discounts(horizon, gamma, mean)
    start = 0
    for batch in setup.sampler.blocks(n * n_reps, setup.generator, block):
        rows = batch.n_trajectories
        rep = torch.arange(start, start + rows) // n  # [rows] repetition of each trajectory
        # flat accumulator index  k S A + s A + a
        idx = torch.add(batch.actions, batch.states, alpha=n_actions, out=index[:rows])
        idx.add_((rep * n_pairs)[:, None])
        flat_idx = idx.view(-1)
        for name in step_names:
            values = setup.state_values(batch.states) if name == "baseline_value" else None
            psi = step_weights(batch.rewards, batch.mask, name, gamma, values)
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
            alpha, center = _return_coefficients(name, n, mean, sum_sq_dev)
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
