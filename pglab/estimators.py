"""Score-function (REINFORCE-family) policy-gradient estimators, as per-step weights.

Every estimator here has the same shape. Trajectory ``i`` contributes

    g_i = sum_t Psi_{i,t} grad_theta log pi_theta(a_{i,t} | s_{i,t}),

and the batch estimate of ``grad J`` is ``ghat_N = (1/N) sum_i g_i``. The estimators differ
only in the weights ``Psi_{i,t}``. Notation: ``m_{i,t}`` the mask (step ``t`` is part of
episode ``i``), ``r_{i,t}`` the reward the environment paid on step ``t`` (on a tabular
MDP the realized ``R(s_t, a_t, s_{t+1})`` when the MDP has ``transition_rewards``, else
``r(s_t, a_t)``; see :mod:`pglab.tabular.sampling`), ``gamma`` the discount,

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
  (:func:`pglab.tabular.exact.solve`), an oracle a real agent does not have.
* ``normalized``: dividing by the batch's own standard deviation rescales the gradient by
  a random factor correlated with the returns, and the centring has the batch-mean bias.
  For large ``N`` its mean tends to ``grad J / std(R)``, not ``grad J``. ``std`` is the
  population standard deviation ``sqrt((1/N) sum_j (R_j - mean)^2)`` and ``1e-8``
  (:data:`NORMALIZED_EPS`) keeps a batch of equal returns finite (its weights are then 0).

On a tabular MDP the per-trajectory gradients ``g_i`` are sampled by
:mod:`pglab.tabular.estimates`; on a gymnasium env by :mod:`pglab.gym.gradients`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pglab import checks

__all__ = [
    "ESTIMATORS",
    "NORMALIZED_EPS",
    "UNBIASED_ESTIMATORS",
    "check_estimator",
    "discounted_returns",
    "is_constant",
    "known_relative_bias",
    "return_weights",
    "rewards_to_go",
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
RETURN_ESTIMATORS = ("reinforce", "baseline_batch_mean", "baseline_leave_one_out", "normalized")
BATCH_COUPLED_ESTIMATORS = ("baseline_batch_mean", "baseline_leave_one_out", "normalized")


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def check_estimator(name: str) -> str:
    """Return ``name`` if it is in :data:`ESTIMATORS`; else ConfigError listing the known ones."""
    return checks.one_of("estimator", name, ESTIMATORS)


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
def discount_factors(horizon: int, gamma: float, like: Tensor) -> Tensor:
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
    gamma = checks.discount("gamma", gamma)
    r, m = _check_rewards_mask(rewards, mask)
    return (torch.where(m, r, 0.0) * discount_factors(r.shape[-1], gamma, r)).sum(dim=-1)


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
    gamma = checks.discount("gamma", gamma)
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


def return_coefficients(
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
    if estimator not in RETURN_ESTIMATORS:
        raise checks.ConfigError(
            f"estimator {estimator!r} has per-step weights; return_weights supports "
            f"{list(RETURN_ESTIMATORS)} (use step_weights)"
        )
    r = torch.as_tensor(returns)
    if not r.is_floating_point() or r.dim() < 1:
        raise ValueError(
            f"returns must be a floating [..., N] tensor, got {r.dtype} {list(r.shape)}"
        )
    return _return_weights(r, estimator)


def _return_weights(returns: Tensor, estimator: str) -> Tensor:
    """:func:`return_weights` on a checked floating ``[..., N]`` tensor and estimator name."""
    n = returns.shape[-1]
    if n == 0:
        return returns.clone()
    mean = returns.mean(dim=-1)
    sum_sq_dev = (returns - mean[..., None]).square().sum(dim=-1)
    alpha, center = return_coefficients(estimator, n, mean, sum_sq_dev)
    return alpha[..., None] * (returns - center[..., None])


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
    gamma = checks.discount("gamma", gamma)
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
    return _step_weights(r, m, estimator, gamma, v)


def _step_weights(
    rewards: Tensor, mask: Tensor, estimator: str, gamma: float, values: Tensor | None
) -> Tensor:
    """:func:`step_weights` on checked inputs: floating ``rewards``, bool ``mask`` of the same
    shape, a known ``estimator``, ``gamma`` in [0, 1] and, for ``baseline_value``, ``values``
    of the rewards' shape and dtype. For callers that validated them once (the samplers)."""
    masked = torch.where(mask, rewards, 0.0)
    discounts = discount_factors(rewards.shape[-1], gamma, rewards)  # [T] gamma^t
    if estimator in RETURN_ESTIMATORS:
        returns = (masked * discounts).sum(dim=-1)  # R_i
        weights = _return_weights(returns, estimator)  # w_i
        return torch.where(mask, weights[..., None], 0.0)
    to_go = _rewards_to_go(masked, gamma)  # G_t
    if estimator == "reward_to_go_dropped_discount":
        psi = to_go  # G_t
    elif estimator == "reward_to_go":
        psi = discounts * to_go  # gamma^t G_t
    else:  # baseline_value
        psi = discounts * (to_go - values)  # gamma^t (G_t - V_t(s_t))
    return torch.where(mask, psi, 0.0)
