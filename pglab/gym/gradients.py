"""From per-step weights Psi to parameter gradients of an autodiff softmax policy.

Every estimator in :mod:`pglab.estimators` has the same form: trajectory i contributes

    g_i = sum_t Psi_{i,t} grad_theta log pi_theta(a_{i,t} | s_{i,t}),

and the batch estimate of grad J(theta) is ghat_N = (1/N) sum_i g_i. For a policy written
in PyTorch the cheapest way to get ghat_N is to differentiate a *surrogate loss*

    L(theta) = -(1/N) sum_i sum_t mask_{i,t} Psi_{i,t} log pi_theta(a_{i,t} | s_{i,t}),

holding Psi fixed (it depends on rewards, not on theta): then -grad L = ghat_N, so a
minimiser stepping along -grad L performs gradient *ascent* theta <- theta + alpha ghat_N.

Shapes follow :class:`pglab.gym.rollouts.EpisodeBatch`: N episodes padded to a common length
T, with ``mask [N, T]`` (bool) marking the real steps. Padded steps never contribute.
Gradients are in the policy's parameter dtype (float32 by default). Nothing here is random.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from pglab import checks
from pglab.threads import thread_invariant

__all__ = [
    "flat_grad",
    "flat_params",
    "grad_variance",
    "per_episode_gradients",
    "surrogate_loss",
    "welford_variance",
]


def _as_weights(weights: Any, mask: Tensor, dtype: torch.dtype) -> Tensor:
    w = torch.as_tensor(weights).detach()
    if w.shape != mask.shape:
        raise ValueError(
            f"weights has shape {tuple(w.shape)}, expected the mask's shape {tuple(mask.shape)}"
        )
    return w.to(dtype=dtype, device=mask.device)


def _check_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    obs, actions, mask = batch.observations, batch.actions, batch.mask.bool()
    if obs.dim() != 3 or actions.shape != mask.shape or obs.shape[:2] != mask.shape:
        raise ValueError(
            f"batch shapes observations={tuple(obs.shape)}, actions={tuple(actions.shape)}, "
            f"mask={tuple(mask.shape)}; expected [N, T, obs_dim], [N, T], [N, T]"
        )
    if mask.shape[0] == 0:
        raise ValueError("batch has N=0 episodes, expected N >= 1")
    return obs, actions, mask


@thread_invariant
def surrogate_loss(policy: nn.Module, batch: Any, weights: Tensor) -> Tensor:
    """Surrogate L(theta) whose negative gradient is the estimate ghat_N.

    L(theta) = -(1/N) sum_{i,t} mask_{i,t} Psi_{i,t} log pi_theta(a_{i,t} | s_{i,t})

    Args:
        policy: a :class:`pglab.gym.policies.CategoricalPolicy` (anything with
            ``log_prob(obs [M, obs_dim], actions [M]) -> [M]``).
        batch: an :class:`pglab.gym.rollouts.EpisodeBatch` (``observations [N, T, obs_dim]``,
            ``actions [N, T]``, ``mask [N, T]`` bool).
        weights: Psi ``[N, T]`` (tensor or array), treated as constants (detached).

    Returns:
        Scalar tensor in the policy dtype, differentiable in the policy parameters.
        ``-grad L`` is the gradient-ascent direction ghat_N.

    ``log pi`` is evaluated once, on the M = sum(mask) real steps only (the [N, T] grid is
    flattened and the padding dropped), so padding costs nothing.
    """
    obs, actions, mask = _check_batch(batch)
    n_episodes = mask.shape[0]
    log_pi = policy.log_prob(obs[mask], actions[mask])  # [M]
    w = _as_weights(weights, mask, log_pi.dtype)[mask]  # [M]
    return -(w * log_pi).sum() / n_episodes


@thread_invariant
def per_episode_gradients(
    policy: nn.Module, batch: Any, weights: Tensor, chunk_size: int = 32
) -> Tensor:
    """Per-episode gradient vectors g_i = sum_t mask_{i,t} Psi_{i,t} grad log pi(a_{i,t}|s_{i,t}).

    Computed with ``torch.func``: ``grad`` of one episode's weighted log-likelihood, mapped
    over episodes with ``vmap`` (each episode padded to T, the mask zeroing padded steps),
    ``chunk_size`` episodes at a time to bound memory (about chunk_size x T activations).
    The policy's ``forward`` must return logits (log pi = log_softmax(logits)).

    Args:
        policy: the policy network; its parameters are not modified.
        batch: an :class:`pglab.gym.rollouts.EpisodeBatch`.
        weights: Psi ``[N, T]``.
        chunk_size: episodes per vmapped call, >= 1.

    Returns:
        ``[N, P]`` tensor in the parameter dtype, P the number of parameters, laid out as
        the concatenation of the flattened tensors of ``policy.named_parameters()`` (the
        same order as :func:`flat_grad` / :func:`flat_params`). The row mean equals
        ``-grad surrogate_loss`` up to float rounding.
    """
    chunk_size = checks.positive_int("chunk_size", chunk_size)
    obs, actions, mask = _check_batch(batch)
    names = [name for name, p in policy.named_parameters() if p.requires_grad]
    params = {name: p.detach() for name, p in policy.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in policy.named_buffers()}
    dtype = next(iter(params.values())).dtype
    # Padded steps get weight 0 and observation 0, so that even NaN padding cannot leak
    # into the gradient (0 * NaN would be NaN).
    w_all = torch.where(mask, _as_weights(weights, mask, dtype), 0.0)
    obs = torch.where(mask.unsqueeze(-1), obs, torch.zeros((), dtype=obs.dtype))

    def episode_objective(
        p: dict[str, Tensor], ob: Tensor, act: Tensor, w: Tensor, m: Tensor
    ) -> Tensor:
        # sum_t mask_t Psi_t log pi(a_t | s_t) for one episode: ob [T, obs_dim], act/w/m [T]
        logits = functional_call(policy, (p, buffers), (ob,))
        log_pi = torch.log_softmax(logits, dim=-1).gather(-1, act.long().unsqueeze(-1))
        return torch.where(m, w * log_pi.squeeze(-1), torch.zeros_like(w)).sum()

    if _is_linear_stack(policy, names):
        return _linear_stack_per_episode(policy, obs, actions, w_all, mask, chunk_size)
    per_episode = vmap(grad(episode_objective), in_dims=(None, 0, 0, 0, 0))
    rows = []
    for start in range(0, mask.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        g = per_episode(params, obs[sl], actions[sl], w_all[sl], mask[sl])
        rows.append(torch.cat([g[name].reshape(g[name].shape[0], -1) for name in names], dim=1))
    return torch.cat(rows, dim=0)


def _is_linear_stack(policy: nn.Module, names: list[str]) -> bool:
    """A :class:`CategoricalPolicy`: ``layers`` of ``nn.Linear`` with an element-wise
    ``_activation`` between them, every parameter trainable."""
    from pglab.gym.policies import CategoricalPolicy

    if type(policy) is not CategoricalPolicy:
        return False
    expected = [
        f"layers.{i}.{kind}" for i in range(len(policy.layers)) for kind in ("weight", "bias")
    ]
    return names == expected


def _linear_stack_per_episode(
    policy: nn.Module, obs: Tensor, actions: Tensor, w_all: Tensor, mask: Tensor, chunk_size: int
) -> Tensor:
    """Per-episode gradients of a linear stack by one backward to the layer outputs.

    The objective sum_{i,t} Psi_{i,t} log pi(a_{i,t} | s_{i,t}) is a sum over steps, and
    step (i, t) reaches layer l only through its own pre-activation z_{l,i,t}, so one
    backward gives every delta_{l,i,t} = d objective / d z_{l,i,t}; then
    grad_{W_l} g_i = sum_t delta_{l,i,t} x_{l-1,i,t}^T (a batched product over t) and
    grad_{b_l} g_i = sum_t delta_{l,i,t}. Padded steps have Psi = 0 and observation 0, so
    their deltas are exactly 0. Same maths as the ``vmap(grad)`` route, about ten times
    fewer operator calls; rows agree to float rounding (tests/test_gradients.py).
    """
    layers = list(policy.layers)
    dtype = layers[-1].weight.dtype
    activation = policy._activation
    rows = []
    for start in range(0, mask.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        x = obs[sl].to(dtype)
        inputs, outputs = [], []
        with torch.enable_grad():
            for i, layer in enumerate(layers):
                inputs.append(x)
                z = F.linear(x, layer.weight.detach(), layer.bias.detach()).requires_grad_()
                outputs.append(z)
                x = activation(z) if i < len(layers) - 1 else z
            log_pi = torch.log_softmax(x, dim=-1).gather(-1, actions[sl].long().unsqueeze(-1))
            objective = (w_all[sl] * log_pi.squeeze(-1)).sum()
            deltas = torch.autograd.grad(objective, outputs)
        parts = []
        for x_in, delta in zip(inputs, deltas, strict=True):
            n = delta.shape[0]
            parts.append(torch.bmm(delta.transpose(1, 2), x_in.detach()).reshape(n, -1))
            parts.append(delta.sum(dim=1))
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


def flat_grad(params: Iterable[Tensor]) -> Tensor:
    """Concatenate ``p.grad`` of every parameter into one vector ``[P]``.

    A parameter whose ``.grad`` is ``None`` (not reached by the loss) contributes zeros.
    """
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    if not parts:
        raise ValueError("params is empty, expected at least one tensor")
    return torch.cat(parts)


def flat_params(params: Iterable[Tensor]) -> Tensor:
    """Concatenate the parameter values into one detached vector ``[P]``."""
    parts = [p.detach().reshape(-1) for p in params]
    if not parts:
        raise ValueError("params is empty, expected at least one tensor")
    return torch.cat(parts)


@thread_invariant
def grad_variance(per_episode: Tensor) -> float:
    """Estimated total variance of the batch mean, tr Cov(ghat_N), from per-episode gradients.

    With g_1..g_N i.i.d. (rows of ``per_episode [N, P]``) and ghat_N their mean,
    Cov(ghat_N) = Cov(g) / N, so the unbiased estimate is

        tr Cov(ghat_N) ~= (1/N) sum_p s_p^2,  s_p^2 = (1/(N-1)) sum_i (g_{i,p} - gbar_p)^2.

    Computed in float64. Note: for estimators whose weights couple episodes (batch-mean
    or leave-one-out baselines, normalisation) the g_i are not independent and this is
    the usual plug-in approximation. Requires N >= 2.

    The s_p^2 come from :func:`welford_variance` (numpy, ~20x faster here than
    ``torch.var(dim=0)``, which computes the same recurrence; equal to it bit for bit for
    P >= :data:`WELFORD_MIN_COLUMNS`, tested), the sum over p from torch.
    """
    if per_episode.dim() != 2:
        raise ValueError(f"per_episode has shape {tuple(per_episode.shape)}, expected [N, P]")
    n = per_episode.shape[0]
    if n < 2:
        raise ValueError(f"per_episode has N={n} rows, expected N >= 2 for a sample variance")
    g = per_episode.detach().to(torch.float64)
    if g.shape[1] < WELFORD_MIN_COLUMNS:
        return float(g.var(dim=0, unbiased=True).sum() / n)
    return float(torch.from_numpy(welford_variance(g.numpy())).sum() / n)


#: :func:`grad_variance` uses :func:`welford_variance` from this many columns on (torch
#: reduces narrower tensors along another path, whose last bits differ).
WELFORD_MIN_COLUMNS = 8


def welford_variance(g: np.ndarray) -> np.ndarray:
    """Unbiased sample variance of each column of ``g [N, P]`` (N >= 2): ``[P]``.

    Welford's recurrence over the rows, vectorised over the columns: with mean_1 = g_1,
    M_1 = 0 and for i = 2..N, d = g_i - mean_{i-1}, mean_i = mean_{i-1} + d / i,
    M_i = M_{i-1} + d (g_i - mean_i); then s^2 = M_N / (N - 1). Numerically stable (no
    sum of squares), and the recurrence ``torch.var(dim=0)`` runs per column on CPU.
    """
    mean = np.array(g[0], dtype=np.float64)
    m2 = np.zeros_like(mean)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf propagate, as in torch
        for i in range(1, g.shape[0]):
            row = g[i]
            delta = row - mean
            mean += delta / (i + 1)
            m2 += delta * (row - mean)
        return m2 / (g.shape[0] - 1)
