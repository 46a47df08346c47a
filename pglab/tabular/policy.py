"""Tabular softmax policies: one free logit per (state, action) pair.

The policy is ``pi_theta(a | s) = exp(theta[s, a]) / sum_b exp(theta[s, b])`` with logits
``theta`` of shape ``[S, A]``. Its score function, used by every likelihood-ratio
estimator, is ``d log pi(a|s) / d theta[s', b] = 1[s' = s] (1[b = a] - pi(b | s))``.

Everything here is float64 and on the CPU, to match :class:`pglab.tabular.mdp.TabularMDP`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pglab import checks

__all__ = ["LOGIT_KINDS", "check_logits", "entropy", "initial_logits", "softmax_policy"]

#: The ``kind`` values accepted by :func:`initial_logits`.
LOGIT_KINDS = ("uniform", "random", "near_deterministic")


def _as_float64(logits: Any) -> torch.Tensor:
    """float64 view of ``logits``; keeps the autograd graph when given a tensor."""
    if isinstance(logits, torch.Tensor):
        return logits.to(dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(logits, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"logits must be a numeric [S, A] array, got {logits!r}: {error}"
        ) from None


def check_logits(logits: Any, n_states: int, n_actions: int) -> torch.Tensor:
    """Validate logits ``theta`` against an MDP's sizes and return them as float64.

    Args:
        logits: ``[S, A]`` numbers (tensor, numpy array or nested list). A tensor that
            requires grad stays in the autograd graph.
        n_states: ``S`` of the MDP.
        n_actions: ``A`` of the MDP.

    Returns:
        ``[S, A]`` float64 tensor.

    Raises:
        ValueError: if the shape is not ``[S, A]`` (naming both shapes) or an entry is not
            finite (naming its index and value).
    """
    theta = _as_float64(logits)
    if tuple(theta.shape) != (n_states, n_actions):
        raise ValueError(
            f"logits has shape {list(theta.shape)}, expected [S, A] = [{n_states}, {n_actions}] "
            "(n_states, n_actions of the MDP)"
        )
    finite = torch.isfinite(theta.detach())
    if not bool(finite.all()):
        s, a = (int(i) for i in torch.nonzero(~finite)[0])
        raise ValueError(f"logits[{s}, {a}] is {theta[s, a].item()}; logits must be finite")
    return theta


def softmax_policy(logits: Any) -> torch.Tensor:
    """Action probabilities of the tabular softmax policy.

    ``pi(a | s) = softmax(theta[s])_a = exp(theta[s, a] - max_b theta[s, b]) / Z(s)``
    (the max is subtracted for stability, which leaves the result unchanged).

    Args:
        logits: ``[S, A]`` float logits ``theta`` (any real dtype; arrays are converted).

    Returns:
        ``[S, A]`` float64 tensor whose rows sum to 1. Differentiable in ``logits``.
    """
    theta = _as_float64(logits)
    if theta.dim() != 2:
        raise ValueError(f"logits must have shape [S, A], got shape {list(theta.shape)}")
    return torch.softmax(theta, dim=-1)


def entropy(policy: Any) -> torch.Tensor:
    """Per-state entropy ``H(s) = -sum_a pi(a|s) log pi(a|s)`` in nats (with ``0 log 0 = 0``).

    Args:
        policy: ``[S, A]`` action probabilities (e.g. from :func:`softmax_policy`).

    Returns:
        ``[S]`` float64 tensor, each entry in ``[0, log A]``.
    """
    probabilities = _as_float64(policy)
    if probabilities.dim() != 2:
        raise ValueError(f"policy must have shape [S, A], got shape {list(probabilities.shape)}")
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)


def initial_logits(
    n_states: int,
    n_actions: int,
    kind: str = "random",
    scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Starting logits ``theta_0`` for a tabular softmax policy.

    ========================  ====================================================================
    kind                      ``theta_0[s, a]``
    ========================  ====================================================================
    ``"uniform"``             ``0`` (``pi`` uniform; ``scale`` and ``seed`` are ignored)
    ``"random"``              ``scale * z[s, a]``, ``z`` i.i.d. standard normal
    ``"near_deterministic"``  ``scale`` for one uniformly drawn action ``a*(s)`` per state, else
                              ``0``, so ``pi(a*(s)|s) = e^scale / (e^scale + A - 1)``
                              (``scale = 5``: 0.993 with ``A = 2``, 0.980 with ``A = 4``)
    ========================  ====================================================================

    Args:
        n_states: ``S >= 1``.
        n_actions: ``A >= 1``.
        kind: one of :data:`LOGIT_KINDS`.
        scale: a finite number ``>= 0``.
        seed: seeds a fresh ``torch.Generator`` (CPU), so equal arguments give equal logits
            regardless of the global torch RNG state.

    Returns:
        ``[S, A]`` float64 tensor.
    """
    n_states = checks.positive_int("n_states", n_states)
    n_actions = checks.positive_int("n_actions", n_actions)
    checks.one_of("logits kind", kind, LOGIT_KINDS)
    scale = checks.real("scale", scale, 0.0)
    seed = checks.seed("seed", seed)

    shape = (n_states, n_actions)
    generator = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "random":
        return scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    # near_deterministic
    favoured = torch.randint(0, shape[1], (shape[0],), generator=generator)
    logits = torch.zeros(shape, dtype=torch.float64)
    logits[torch.arange(shape[0]), favoured] = scale
    return logits
