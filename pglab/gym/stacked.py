"""One REINFORCE step for k runs at once, on stacked parameters (one set of tensor calls).

A lock-step batch (:mod:`pglab.gym.lockstep`) plays many runs of one MLP policy
architecture; each run updates after its own N episodes. Updating them one by one costs
about 1-2 ms of Python and tensor-call overhead per run and update, the same for N = 1 as
for N = 50, which made that overhead the floor of a whole grid. :func:`pg_step` does the
update of ``update="pg", optimizer="sgd"`` for k runs together: every tensor call is made
once for all k runs, and run j's numbers do not depend on the other runs.

For run j with parameters theta_j (layer l: ``weights_t[l][j]`` ``[in, out]``, the
transposed ``nn.Linear`` weight, and ``biases[l][j]`` ``[1, out]``) and its batch's real
steps m = 1..S_j packed into P_j rows:

    L_j       = -(1/N_j) sum_m Psi_m log pi_j(a_m | s_m)          (the surrogate)
    ghat_j    = -grad L_j                                          (one backward for all j)
    theta_j' = theta_j - alpha_j * grad L_j  =  theta_j + alpha_j ghat_j

and, over the S_j real states: the entropy mean_m H(pi_j(.|s_m)), the fraction of states
with max_a pi_j(a|s_m) >= the run's threshold, KL(pi_j || pi_j') = mean_m sum_a
pi_j (log pi_j - log pi_j'), ||ghat_j||_2 and ||theta_j' - theta_j||_2: exactly what
:class:`pglab.gym.training.Learner` records for the same rule (the same formulas; the
last bits differ from the Learner's route, which sums in another order).

Batch-independent by construction
---------------------------------
Run j's numbers must be the same bits whether it is updated alone (k = 1) or with any
other runs. Three rules make that hold (tested in ``tests/test_stacked.py``):

* **Canonical shapes.** Run j's steps are padded to ``P_j = padded_steps(S_j)`` rows (a
  fixed ladder of multiples of 64; padding rows have observation 0, weight 0 and count
  for nothing). P_j depends only on the run's own batch, and only runs with equal P are
  stacked, so every slice of every call has the same shape whatever k is.
* **Slice-wise kernels.** Layers are ``torch.baddbmm`` (one matrix product per slice),
  reductions run within a slice (``sum`` over a run's own rows), and the backward pass
  of these is again per-slice ``bmm`` and ``sum``.
* **Whole vectors for element-wise transcendentals** (tanh, exp, log): a run's block of
  ``P x width`` values is a multiple of 64, so torch's vectorised loop covers every value
  and no value falls in the scalar tail, whose last bits can differ. The step itself is a multiplication and a subtraction (each correctly rounded; no
  fused multiply-add).

tanh and relu policies (the ones the presets use) take the same step in numpy instead
(:func:`_pg_step_numpy`): the same formulas, one numpy call where torch made one, at a
fifth to a half of the cost per call for the small calls lock-step makes most (measured:
0.31 against 0.59 ms for 3 runs of 64 rows, 1.05 against 2.03 ms for 8 runs of 128; equal
from ~1024 rows); ``numpy.matmul`` calls the BLAS once per slice, reductions run within
a slice, and numpy's exp, log and tanh give an element the same bits wherever it sits,
so the rules above hold there too, without the 64-value blocks (tested the same way).
Which route a run takes depends on its activation only. The numpy route's backward also
gives :func:`per_episode_gradients` (the episodes of one batch as the slices, one
parameter vector shared), which lock-step uses for ``variance_every``.

Non-finite values are per run: a run whose loss or gradient is not finite keeps its
parameters (``finite`` 0), one whose new parameters are not finite reports ``finite`` 0
with the new parameters (as the Learner does), and neither disturbs the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from pglab.threads import thread_invariant

__all__ = [
    "NUMBERS",
    "ROW_LADDER",
    "ROW_STEP",
    "Layout",
    "StackedBatch",
    "all_finite",
    "padded_steps",
    "per_episode_gradients",
    "pg_step",
]

#: Canonical row counts up to 2048: multiples of 64 spaced at most 2x apart (small calls
#: cost little more per row, and fewer rungs let more runs share a call). Above 2048 calls
#: hold few runs anyway (``MAX_STACKED_ROWS``), and their cost is arithmetic, so
#: :func:`padded_steps` rounds up to a multiple of :data:`ROW_STEP` (<= 25 % padding).
ROW_LADDER: tuple[int, ...] = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
#: Above the ladder, padded row counts are multiples of this.
ROW_STEP = 512
#: The columns of :func:`pg_step`'s numbers, in order.
NUMBERS: tuple[str, ...] = (
    "loss",
    "grad_norm",
    "entropy",
    "frac_deterministic",
    "kl",
    "step_norm",
    "finite",
)


#: A tensor or a numpy array (:meth:`Layout.views` serves both).
ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)


def padded_steps(n_steps: int) -> int:
    """P: the rows a batch of ``n_steps`` real steps occupies (the next rung of
    :data:`ROW_LADDER`, beyond it the next multiple of :data:`ROW_STEP`)."""
    for rung in ROW_LADDER:
        if n_steps <= rung:
            return rung
    return -(-n_steps // ROW_STEP) * ROW_STEP


class Layout:
    """Where each layer of an MLP policy sits in a run's flat parameter vector ``[n]``.

    Layer l occupies ``in_l * out_l`` values for its transposed weight (row-major
    ``[in, out]``) followed by ``out_l`` for its bias, layers in order; so ``flat [k, n]``
    gives the views ``weights_t[l] [k, in, out]`` and ``biases[l] [k, 1, out]`` that
    ``torch.baddbmm`` takes, and a whole update is a handful of calls on ``[k, n]``.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        self.widths = tuple(int(w) for w in widths)
        self.slices: list[tuple[int, int, int, int]] = []  # (weight start, in, out, bias start)
        offset = 0
        for w_in, w_out in itertools.pairwise(self.widths):
            self.slices.append((offset, w_in, w_out, offset + w_in * w_out))
            offset += w_in * w_out + w_out
        self.size = offset

    def views(self, flat: ArrayT) -> tuple[list[ArrayT], list[ArrayT]]:
        """``(weights_t, biases)`` views of ``flat [k, n]`` (a tensor or a numpy array)."""
        k = flat.shape[0]
        weights = [flat[:, a : a + i * o].reshape(k, i, o) for a, i, o, _ in self.slices]
        biases = [flat[:, b : b + o].reshape(k, 1, o) for _, _, o, b in self.slices]
        return weights, biases


@dataclass
class StackedBatch:
    """k runs' batches packed into equal shapes (P rows each; float tensors in the
    parameters' dtype).

    Attributes:
        observations: ``[k, P, obs_dim]``, 0 on padding rows.
        actions: ``[k, P]`` int64, 0 on padding rows.
        weights: ``[k, P]`` Psi of each real step, 0 on padding rows.
        real: ``[k, P]`` 1 on real steps, 0 on padding rows.
        n_trajectories: ``[k]`` N_j, the surrogate's divisor.
        step_size: ``[k]`` alpha_j.
        threshold: ``[k]`` the near-deterministic threshold of each run.
        poison: ``[k]`` bool, replace the run's gradient by NaN (``TrainConfig.inject_nan_at``).
    """

    observations: Tensor
    actions: Tensor
    weights: Tensor
    real: Tensor
    n_trajectories: Tensor
    step_size: Tensor
    threshold: Tensor
    poison: Tensor


def all_finite(rows: Tensor) -> Tensor:
    """``[k]`` bool: whether every value of row j of ``rows [k, n]`` is finite. (0 x v is 0
    for finite v and NaN for inf or NaN, so the row sum of ``0 x rows`` is 0 exactly when
    all are finite: two calls, against five inside ``isfinite(rows).all(1)``.)"""
    return (rows * 0).sum(1) == 0


def _forward(
    flat: Tensor, layout: Layout, x: Tensor, activation: Callable[[Tensor], Tensor]
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``(log pi [k, P, A], layer inputs, hidden pre-activations)`` of
    l = W_L g(... g(W_1 s + b_1) ...) + b_L, pi = softmax(l)."""
    weights, biases = layout.views(flat)
    inputs, pre = [], []
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        inputs.append(x)
        x = torch.baddbmm(b, x, w)
        if i < last:
            pre.append(x)
            x = activation(x)
    return torch.log_softmax(x, dim=-1), inputs, pre


def _activation_backward(
    grad: Tensor, pre: Tensor, activation: Callable[[Tensor], Tensor]
) -> Tensor:
    """dL/d(pre-activation) from dL/d(activation output), through autograd (tanh and relu,
    whose derivatives are written out, take the numpy route)."""
    with torch.enable_grad():
        z = pre.detach().requires_grad_(True)
        (result,) = torch.autograd.grad(activation(z), z, grad)
    return result


@thread_invariant
def pg_step(
    flat: Tensor,
    layout: Layout,
    batch: StackedBatch,
    activation: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """The ``pg``/``sgd`` step of k runs: ``(new flat parameters [k, n], numbers [k, 7])``.

    ``flat`` ``[k, n]`` (:class:`Layout`) is not modified. ``numbers`` (float64) has the
    columns of :data:`NUMBERS`; ``kl`` and ``step_norm`` are NaN for a run whose update was
    not applied, ``finite`` is 1.0 or 0.0 (loss, gradient and new parameters all finite).
    tanh and relu run in numpy (:func:`_pg_step_numpy`), other activations in torch
    (:func:`_pg_step_torch`); the maths is the same. Runs with one torch and one BLAS
    thread (:mod:`pglab.threads`: a threaded OpenBLAS sums the weight gradients in
    another order).
    """
    if activation is torch.tanh or activation is torch.relu:
        new, numbers = _pg_step_numpy(
            flat.numpy(),
            layout,
            batch.observations.numpy(),
            batch.actions.numpy(),
            batch.weights.numpy(),
            batch.real.numpy(),
            batch.n_trajectories.numpy(),
            batch.step_size.numpy(),
            batch.threshold.numpy(),
            batch.poison.numpy(),
            "tanh" if activation is torch.tanh else "relu",
        )
        return torch.from_numpy(new), torch.from_numpy(numbers)
    return _pg_step_torch(flat, layout, batch, activation)


def _numpy_forward(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    x: np.ndarray,
    activation: str,
    rows: int,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``(log pi [k, P, A], layer inputs, hidden outputs)`` in numpy (see :func:`_forward`).

    Every slice's real rows lie within its first ``rows``: the activation runs on those
    only, and the hidden outputs of rows ``rows..P`` (padding in every slice) are set to 0.
    The matrix products still take all P rows (canonical shapes keep every row's bits), and
    a padding row's values only ever meet a weight of 0, so any finite values there leave
    every real number as it was."""
    inputs, outputs = [], []
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        inputs.append(x)
        z = np.matmul(x, w)
        z += b
        if i < last:
            head = z[:, :rows]
            if activation == "tanh":
                np.tanh(head, out=head)
            else:
                np.maximum(head, 0, out=head)
            z[:, rows:] = 0
            outputs.append(z)
        x = z
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)), inputs, outputs


def _numpy_backward(
    weights: list[np.ndarray],
    inputs: list[np.ndarray],
    outputs: list[np.ndarray],
    grad_z: np.ndarray,
    activation: str,
) -> np.ndarray:
    """``[k, n]``: the gradient, in the layout's order, of a loss whose derivative by the
    logits is ``grad_z [k, P, A]``, back through the layers of :func:`_numpy_forward`
    (per layer dL/dW = input^T dL/dz, dL/db = sum over rows of dL/dz, dL/d(input) =
    dL/dz W^T through the activation)."""
    k = grad_z.shape[0]
    parts: list[np.ndarray] = []
    for i in range(len(weights) - 1, -1, -1):
        parts.append(grad_z.sum(1))  # dL/db_i [k, out]
        parts.append(np.matmul(inputs[i].transpose(0, 2, 1), grad_z).reshape(k, -1))
        if i > 0:
            grad_h = np.matmul(grad_z, weights[i].transpose(0, 2, 1))
            out = outputs[i - 1]
            if activation == "tanh":
                grad_z = grad_h * (1 - out * out)  # tanh' = 1 - tanh^2
            else:
                grad_z = np.where(out > 0, grad_h, 0)
    return np.concatenate(parts[::-1], axis=1)


@thread_invariant
def per_episode_gradients(
    flat: np.ndarray,
    layout: Layout,
    observations: np.ndarray,
    actions: np.ndarray,
    psi: np.ndarray,
    activation: str,
) -> np.ndarray:
    """Per-episode gradients g_i = sum_t Psi_{i,t} grad log pi(a_{i,t} | s_{i,t}) of one
    tanh or relu policy: ``[N, n]`` in the layout's order.

    ``flat [n]`` the policy's parameters (:class:`Layout`); ``observations [N, T, d]``,
    ``actions [N, T]`` and ``psi [N, T]`` one episode per row, 0 on padding steps (where
    a step's weight 0 makes it count for nothing). The step's own backward
    (:func:`_numpy_backward`) with the episodes as the slices and the one parameter
    vector shared by all, so each g_i is a function of episode i and the shapes only;
    the same maths as :func:`pglab.gym.gradients.per_episode_gradients` (other summation
    orders, so other last bits) at about a fifth of its cost for the small batches of
    ``variance_every``.
    """
    n_episodes, steps = actions.shape
    shared = np.broadcast_to(flat, (n_episodes, flat.shape[0]))
    with np.errstate(all="ignore"):
        weights, biases = layout.views(shared)
        log_pi, inputs, outputs = _numpy_forward(weights, biases, observations, activation, steps)
        chosen = np.zeros_like(log_pi)
        np.put_along_axis(chosen, actions[..., None], 1.0, axis=-1)
        # g_i = -dL_i/dtheta for L_i = -sum_t Psi_t log pi(a_t|s_t)
        grad_z = (np.exp(log_pi) - chosen) * psi[..., None]
        return -_numpy_backward(weights, inputs, outputs, grad_z, activation)


def _pg_step_numpy(
    flat: np.ndarray,
    layout: Layout,
    observations: np.ndarray,
    actions: np.ndarray,
    psi: np.ndarray,
    real: np.ndarray,
    n_trajectories: np.ndarray,
    step_size: np.ndarray,
    threshold: np.ndarray,
    poison: np.ndarray,
    activation: str,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_pg_step_torch` in numpy, for a tanh or relu policy (arrays as the fields of
    :class:`StackedBatch`; ``flat`` ``[k, n]``). Returns ``(new [k, n], numbers [k, 7])``."""
    count = real.sum(1)
    # rows past the last real row of any slice are padding in every slice, and the
    # activations skip them (lock-step packs each run's steps first: in its calls of 64
    # rows, the most common, that skips a third of the tanh work)
    used = np.flatnonzero(real.any(0))
    rows = int(used[-1]) + 1 if used.size else 0
    with np.errstate(all="ignore"):  # non-finite values are reported per run, not raised
        weights, biases = layout.views(flat)
        log_pi, inputs, outputs = _numpy_forward(weights, biases, observations, activation, rows)
        pi = np.exp(log_pi)
        chosen = np.zeros_like(log_pi)  # 1[a = a_m]
        np.put_along_axis(chosen, actions[..., None], 1.0, axis=-1)
        coef = psi / n_trajectories[:, None]  # Psi_m / N
        loss = -(coef * (log_pi * chosen).sum(-1)).sum(1)  # [k]
        grad_z = (pi - chosen) * coef[..., None]  # dL/dlogits [k, P, A]
        grad = _numpy_backward(weights, inputs, outputs, grad_z, activation)
        if poison.any():
            grad[poison] = np.nan
        finite = np.isfinite(loss) & np.isfinite(grad).all(1)
        grad_norm = np.sqrt((grad * grad).sum(1))

        # theta' = theta - alpha * grad L, only where the loss and gradient are finite
        new = flat - step_size[:, None] * grad
        change = new - flat
        step_norm = np.sqrt((change * change).sum(1))
        if not finite.all():
            new = np.where(finite[:, None], new, flat)
            step_norm = np.where(finite, step_norm, np.nan)
        finite &= np.isfinite(new).all(1)

        entropy = -pi * np.log(pi)  # H = -sum_a pi log pi, with 0 log 0 = 0
        entropy[pi == 0] = 0
        near = pi.max(-1) >= threshold[:, None]
        new_weights, new_biases = layout.views(new)
        log_pi_new, _, _ = _numpy_forward(new_weights, new_biases, observations, activation, rows)
        terms = np.where(pi > 0, pi * (log_pi - log_pi_new), 0)
        per_state = np.stack([entropy.sum(-1), near.astype(flat.dtype), terms.sum(-1)], 1)
        means = (per_state * real[:, None]).sum(-1) / count[:, None]  # [k, 3] over real states
        kl = means[:, 2]
        if not finite.all():
            kl = np.where(finite, kl, np.nan)
        numbers = np.stack(
            [loss, grad_norm, means[:, 0], means[:, 1], kl, step_norm, finite], axis=1
        ).astype(np.float64)
    return new, numbers


def _pg_step_torch(
    flat: Tensor,
    layout: Layout,
    batch: StackedBatch,
    activation: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """:func:`pg_step` in torch (any activation).

    The gradient is the surrogate's, by hand (one backward pass through the layers):
    dL/dl_{m,a} = (Psi_m / N) (pi(a|s_m) - 1[a = a_m]); per layer dL/dW = input^T dL/dz,
    dL/db = sum over rows of dL/dz, and dL/d(input) = dL/dz W^T through the activation.
    """
    real = batch.real
    count = real.sum(1)
    dtype = flat.dtype
    with torch.no_grad():
        log_pi, inputs, pre = _forward(flat, layout, batch.observations, activation)
        pi = log_pi.exp()
        # 1[a = a_m] [k, P, A] (one_hot without its range checks, which cost more here)
        chosen = torch.zeros_like(log_pi).scatter_(-1, batch.actions.unsqueeze(-1), 1.0)
        coef = batch.weights / batch.n_trajectories.view(-1, 1)  # Psi_m / N
        loss = -(coef * (log_pi * chosen).sum(-1)).sum(1)  # [k]
        grad_z = (pi - chosen) * coef.unsqueeze(-1)  # dL/dlogits [k, P, A]
        weights, _ = layout.views(flat)
        parts: list[Tensor] = []
        for i in range(len(weights) - 1, -1, -1):
            parts.append(grad_z.sum(1))  # dL/db_i [k, out]
            parts.append(torch.bmm(inputs[i].transpose(1, 2), grad_z).flatten(1))  # dL/dW_i^T
            if i > 0:
                grad_h = torch.bmm(grad_z, weights[i].transpose(1, 2))
                grad_z = _activation_backward(grad_h, pre[i - 1], activation)
        grad = torch.cat(parts[::-1], dim=1)  # [k, n] in the layout's order
        if bool(batch.poison.any()):
            grad = torch.where(batch.poison.view(-1, 1), torch.nan, grad)
        finite = torch.isfinite(loss) & all_finite(grad)
        # The selections below only matter for a run that is not finite; when every run
        # is, they are skipped (the same values, fewer calls).
        every = bool(finite.all())
        grad_norm = torch.linalg.vector_norm(grad, dim=1)

        # theta' = theta - alpha * grad L, only where the loss and gradient are finite
        apply = finite.view(-1, 1)
        new = flat - batch.step_size.view(-1, 1) * grad
        step_norm = torch.linalg.vector_norm(new - flat, dim=1)
        if not every:
            new = torch.where(apply, new, flat)
            step_norm = torch.where(finite, step_norm, torch.nan)
        finite &= all_finite(new)

        entropy = (torch.special.entr(pi).sum(-1) * real).sum(1) / count
        near = (pi.max(-1).values >= batch.threshold.view(-1, 1)).to(dtype)
        frac_det = (near * real).sum(1) / count

        log_pi_new, _, _ = _forward(new, layout, batch.observations, activation)
        terms = torch.where(pi > 0, pi * (log_pi - log_pi_new), 0.0).sum(-1)
        kl = (terms * real).sum(1) / count
        if not bool(finite.all()):
            kl = torch.where(finite, kl, torch.nan)

        numbers = torch.stack(
            [loss, grad_norm, entropy, frac_det, kl, step_norm, finite.to(dtype)], dim=1
        ).double()
    return new, numbers
