"""Sampled update rules with step-size control: NPG, TRPO and PPO on one batch of episodes.

Every rule here takes a :class:`pglab.gym.policies.CategoricalPolicy`, one
:class:`pglab.gym.rollouts.EpisodeBatch` of N episodes drawn from the current policy
``pi_old = pi_theta_old``, and the chosen estimator's per-step weights ``Psi [N, T]``
(:func:`pglab.estimators.step_weights`), updates the policy's parameters in place and
returns an :class:`UpdateInfo`. Notation: ``M = sum_i len_i`` real steps,
``s_m, a_m, Psi_m`` (``m = 1..M``) the flattened real steps, and::

    ghat = (1/N) sum_{i,t} Psi_{i,t} grad log pi(a_{i,t} | s_{i,t})        (= -grad surrogate_loss)

========  ==========================================================================
rule      update
========  ==========================================================================
``pg``    ``theta + alpha ghat``                                        (:func:`pg_update`)
``npg``   ``theta + eta x``, ``x = (Fhat + lambda I)^{-1} ghat`` by conjugate gradient;
          optionally KL-normalised, ``eta = sqrt(2 kappa / x^T Fbar x)``  (:func:`npg_update`)
``trpo``  natural direction, largest step of mean-KL model ``delta``, backtracking until
          the sampled mean KL is ``<= delta`` and the surrogate improves (:func:`trpo_update`)
``ppo``   clipped surrogate, ``epochs`` passes over ``minibatches`` of the M steps with
          its own optimiser                                            (:func:`ppo_update`)
========  ==========================================================================

Fisher information from the batch. The trajectory Fisher ``F = sum_t E[psi_t psi_t^T]``
(``psi = grad log pi(a|s)``, as in :mod:`pglab.tabular.natural`) is estimated on the
batch's states with the action expectation done exactly (the Hessian of the KL)::

    Fbar = (1/M) sum_m sum_a pi(a|s_m) psi(s_m, a) psi(s_m, a)^T          (mean over states)
    Fhat = (M/N) Fbar = (1/N) sum_{i,t} Cov_{a ~ pi(.|s_{i,t})}[psi]     (per episode)

``Fhat`` is unbiased for ``F``; ``Fbar`` is the curvature of the mean KL:
``mean_m KL(pi_old(.|s_m) || pi_theta+d(.|s_m)) = d^T Fbar d / 2 + O(|d|^3)``. Products
``Fbar v`` never form the ``P x P`` matrix (:class:`FisherOperator`): ``Fbar = J^T H J / M``
with ``J = d logits / d theta`` and ``H_m = diag(pi_m) - pi_m pi_m^T``, so
``Fbar v = J^T (H (J v)) / M``, one forward-mode and one reverse-mode pass through the
logit network per product, done by hand from cached activations for a
``CategoricalPolicy`` with ``tanh`` or ``relu`` (no autograd graph); for small batches the
``[M, P]`` factor ``B`` with ``Fbar = B^T B`` is built once instead (two matrix-vector
products each); any other policy gets double backpropagation of the mean KL.
``stride = k`` estimates ``Fbar`` on every k-th real state (OpenAI baselines' TRPO uses
every 5th), a k-fold saving.

Cost (``benchmarks/bench_update_rules.py``, CartPole, 64-64 MLP, N = 10 and 100): a
product on every 5th state costs ~0.15-0.4x a plain-PG gradient on the whole batch, so
the default 10 CG iterations plus the step's KL add 2-5x the gradient (spread between
runs on a shared 2-core machine) to the update's own ``ghat``, which shares one forward
pass with ``pi_old``; issue 10's target is 3x.

Damping: NPG solves ``(Fhat + lambda I) x = ghat`` (``lambda`` in the units of the
per-episode Fisher); TRPO solves ``(Fbar + lambda I) x = ghat`` (units of the mean-KL
curvature, default 0.1). The KL model of a step uses the undamped ``Fbar``.

Every update reports ``kl``, the mean over the batch's M real states of
``KL(pi_old(.|s) || pi_new(.|s))`` (what :mod:`pglab.gym.training` records), and
``step_norm = ||theta_new - theta_old||_2``, so steps of all rules read in the same units.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pglab import checks
from pglab.gym.gradients import flat_grad, flat_params

__all__ = [
    "PPO_OPTIMIZERS",
    "UPDATE_RULES",
    "FISHER_MODES",
    "JACOBIAN_BUDGET",
    "CGResult",
    "FisherOperator",
    "NPGConfig",
    "PPOConfig",
    "TRPOConfig",
    "UpdateInfo",
    "UpdateRule",
    "batch_kl",
    "conjugate_gradient",
    "make_ppo_optimizer",
    "make_update_rule",
    "npg_update",
    "pg_update",
    "ppo_update",
    "trpo_update",
]

UPDATE_RULES: tuple[str, ...] = ("pg", "npg", "trpo", "ppo")
PPO_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")

# d g(z) / dz from the activation's output h = g(z), for the hand-written products
_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": lambda h: 1.0 - h * h,
    "relu": lambda h: (h > 0).to(h.dtype),
}


# ---------------------------------------------------------------------------------------
# Configs and results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NPGConfig:
    """Natural policy gradient on a batch.

    Attributes:
        step_size: ``eta > 0``, the step along ``x = (Fhat + lambda I)^{-1} ghat``.
        damping: ``lambda >= 0``, added to the per-episode Fisher ``Fhat``.
        cg_iterations: conjugate-gradient iterations (>= 1).
        cg_tolerance: CG stops once ``||r|| <= cg_tolerance ||ghat||``.
        kl_target: ``None`` (plain step ``eta x``) or ``kappa > 0``: the KL-normalised
            step ``sqrt(2 kappa / x^T Fbar x) x``, whose quadratic mean-KL model is
            ``kappa`` (``step_size`` is then not used).
        fisher_stride: estimate ``Fbar`` on every k-th real state (``1``: all; the default
            5 is OpenAI baselines' TRPO subsampling, and what keeps an update within ~3x
            a plain-PG gradient, ``benchmarks/bench_update_rules.py``).
    """

    step_size: float = 0.1
    damping: float = 1e-3
    cg_iterations: int = 10
    cg_tolerance: float = 1e-10
    kl_target: float | None = None
    fisher_stride: int = 5

    def validate(self) -> NPGConfig:
        checks.positive_real("npg.step_size", self.step_size)
        checks.real("npg.damping", self.damping, 0.0)
        checks.positive_int("npg.cg_iterations", self.cg_iterations)
        checks.real("npg.cg_tolerance", self.cg_tolerance, 0.0)
        if self.kl_target is not None:
            checks.positive_real("npg.kl_target", self.kl_target)
        checks.positive_int("npg.fisher_stride", self.fisher_stride)
        return self


@dataclass(frozen=True)
class TRPOConfig:
    """TRPO on a batch.

    Attributes:
        max_kl: ``delta > 0``, bound on the sampled mean KL (nats per state).
        damping: ``lambda >= 0`` added to ``Fbar`` for the direction solve.
        cg_iterations, cg_tolerance, fisher_stride: as in :class:`NPGConfig`.
        backtrack: shrink factor of the line search, in (0, 1).
        max_backtracks: shrinks after the full step (>= 0); if none passes, theta stays.
    """

    max_kl: float = 0.01
    damping: float = 0.1
    cg_iterations: int = 10
    cg_tolerance: float = 1e-10
    backtrack: float = 0.5
    max_backtracks: int = 10
    fisher_stride: int = 5

    def validate(self) -> TRPOConfig:
        checks.positive_real("trpo.max_kl", self.max_kl)
        checks.real("trpo.damping", self.damping, 0.0)
        checks.positive_int("trpo.cg_iterations", self.cg_iterations)
        checks.real("trpo.cg_tolerance", self.cg_tolerance, 0.0)
        checks.real("trpo.backtrack", self.backtrack, 0.0, 1.0, low_open=True, high_open=True)
        checks.integer("trpo.max_backtracks", self.max_backtracks, minimum=0)
        checks.positive_int("trpo.fisher_stride", self.fisher_stride)
        return self


@dataclass(frozen=True)
class PPOConfig:
    """PPO (clipped surrogate) on a batch.

    Attributes:
        step_size: the optimiser's learning rate (> 0).
        clip: ``epsilon > 0``; ratios outside ``[1 - epsilon, 1 + epsilon]`` stop
            contributing gradient where clipping binds.
        epochs: passes over the batch (>= 1).
        minibatches: the M real steps are shuffled and split into this many nearly
            equal minibatches per epoch (>= 1; at most M are used).
        optimizer: ``"adam"`` (default betas and eps) or ``"sgd"`` (plain, no momentum).
    """

    step_size: float = 3e-4
    clip: float = 0.2
    epochs: int = 4
    minibatches: int = 4
    optimizer: str = "adam"

    def validate(self) -> PPOConfig:
        checks.positive_real("ppo.step_size", self.step_size, maximum=checks.FLOAT32_MAX)
        checks.positive_real("ppo.clip", self.clip)
        checks.positive_int("ppo.epochs", self.epochs)
        checks.positive_int("ppo.minibatches", self.minibatches)
        checks.one_of("ppo.optimizer", self.optimizer, PPO_OPTIMIZERS)
        return self


@dataclass
class UpdateInfo:
    """What one update did.

    Attributes:
        kl: mean over the batch's real states of ``KL(pi_old(.|s) || pi_new(.|s))`` (nats);
            NaN if the new parameters are not finite.
        step_norm: ``||theta_new - theta_old||_2`` over all parameters.
        grad_norm: ``||ghat||_2`` at ``theta_old`` (NaN where the rule does not form it).
        extras: rule-specific diagnostics (floats): ``cg_iterations``, ``cg_residual``
            (relative), ``quadratic_kl`` (the model's prediction), ``backtracks``,
            ``accepted`` (1/0), ``surrogate_improvement``, ``clip_fraction``, ...
    """

    kl: float
    step_norm: float
    grad_norm: float = math.nan
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CGResult:
    """Conjugate-gradient solution of ``A x = b``: ``x``, the iterations run and the final
    relative residual ``||b - A x|| / ||b||`` (the recursively updated one)."""

    x: Tensor
    iterations: int
    residual: float


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int = 10,
    tolerance: float = 1e-10,
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive (semi-)definite ``A`` given as ``matvec``.

    Hestenes-Stiefel CG from ``x_0 = 0``: ``r_0 = p_0 = b``; for k = 0, 1, ...::

        alpha = r.r / p.Ap,  x += alpha p,  r -= alpha Ap,  p = r + (r'.r' / r.r) p

    stopping after ``iterations`` steps or once ``||r|| <= tolerance ||b||``. In exact
    arithmetic it solves an n-dimensional SPD system in at most n steps, and on a
    singular PSD ``A`` with ``b`` in its range it converges to the minimum-norm solution.
    A curvature ``p.Ap <= 0`` (``b`` outside the range, or round-off) stops it early.

    Args:
        matvec: ``v [P] -> A v [P]``.
        b: ``[P]`` right-hand side (any floating dtype; the iteration runs in it).
        iterations: maximum steps (>= 1).
        tolerance: relative residual to stop at (>= 0).
    """
    iterations = checks.positive_int("iterations", iterations)
    tolerance = checks.real("tolerance", tolerance, 0.0)
    x = torch.zeros_like(b)
    b_norm = float(b.norm())
    if b_norm == 0.0 or not math.isfinite(b_norm):
        return CGResult(x, 0, 0.0 if b_norm == 0.0 else math.nan)
    r = b.clone()
    p = b.clone()
    rr = b_norm * b_norm
    stop = (tolerance * b_norm) ** 2
    done = 0
    for _ in range(iterations):
        ap = matvec(p)
        curvature = float(torch.dot(p, ap))
        if not curvature > 0:  # NaN too
            break
        alpha = rr / curvature
        x.add_(p, alpha=alpha)
        r.add_(ap, alpha=-alpha)
        done += 1
        rr_new = float(torch.dot(r, r))
        if rr_new <= stop:
            rr = rr_new
            break
        p.mul_(rr_new / rr).add_(r)
        rr = rr_new
    return CGResult(x, done, math.sqrt(rr) / b_norm)


# ---------------------------------------------------------------------------------------
# Fisher-vector products
# ---------------------------------------------------------------------------------------
def _params(policy: nn.Module) -> list[Tensor]:
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise checks.ConfigError("policy has no trainable parameters")
    return params


def _set_flat(params: list[Tensor], vector: Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n


def _split(params: list[Tensor], vector: Tensor) -> list[Tensor]:
    parts, offset = [], 0
    for p in params:
        n = p.numel()
        parts.append(vector[offset : offset + n].view_as(p))
        offset += n
    return parts


#: Fisher-vector-product methods of :class:`FisherOperator`.
FISHER_MODES: tuple[str, ...] = ("auto", "jacobian", "matrix_free", "autograd")

#: ``mode="auto"`` builds the explicit ``[M A, P]`` factor when it has at most this many
#: entries (2 MB in float32), i.e. for small batches, where the per-call overhead of the
#: matrix-free product's ~25 small tensor operations dominates its arithmetic. Larger
#: factors make each product memory-bound (measured on 2 cores: 1.6 ms for the 7.6 MB
#: factor of N = 10 CartPole episodes, against 0.6 ms matrix-free).
JACOBIAN_BUDGET = 500_000


class FisherOperator:
    """``v -> Fbar v`` at the policy's current parameters on given states.

    ``Fbar = (1/M) sum_m J_m^T H_m J_m``, ``H_m = diag(pi_m) - pi_m pi_m^T``, with ``J_m``
    the ``[A, P]`` Jacobian of the logits at state ``m`` (module docstring); equivalently
    the Hessian in ``theta'`` of ``mean_m KL(pi_theta(.|s_m) || pi_theta'(.|s_m))`` at
    ``theta' = theta``. The operator is frozen at construction: later changes to the
    parameters do not change it (``autograd`` mode excepted, which must not outlive them).

    Args:
        policy: the policy.
        observations: ``[M, obs_dim]`` states.
        stride: use every ``stride``-th state (>= 1).
        mode: how products are computed:

            ``"jacobian"``: ``Fbar = B^T B`` with the explicit factor
            ``B = C J / sqrt(M)`` ``[M A, P]``, ``C_m = diag(sqrt pi_m)(I - 1 pi_m^T)``
            (``C_m^T C_m = H_m``), built once by a hand-written backward pass; each product
            is two matrix-vector products. Memory ``M A P`` floats; with two actions
            ``H_m`` has rank one and ``B`` one row per state (``M P``).
            ``"matrix_free"``: ``J^T (H (J v)) / M`` by a hand-written forward-mode and
            reverse-mode pass over cached activations (two matrix products per layer each
            way, no autograd).
            ``"autograd"``: double backpropagation of the mean KL (any policy).
            ``"auto"`` (default): ``jacobian`` when ``M A P <= JACOBIAN_BUDGET``, else
            ``matrix_free``; ``autograd`` for a policy that is not a ``CategoricalPolicy``
            stack of biased ``nn.Linear`` layers with ``tanh`` or ``relu``.
    """

    def __init__(
        self, policy: nn.Module, observations: Tensor, stride: int = 1, mode: str = "auto"
    ) -> None:
        stride = checks.positive_int("stride", stride)
        checks.one_of("Fisher mode", mode, FISHER_MODES)
        if observations.dim() != 2 or observations.shape[0] == 0:
            raise checks.ConfigError(
                f"observations has shape {list(observations.shape)}, expected [M, obs_dim], M >= 1"
            )
        self.params = _params(policy)
        self.dim = sum(p.numel() for p in self.params)
        self._sizes = [p.numel() for p in self.params]
        self._shapes = [p.shape for p in self.params]
        obs = observations[::stride].detach()
        self.n_states = int(obs.shape[0])
        layers = getattr(policy, "layers", None)
        activation = getattr(policy, "activation", None)
        stack = (
            isinstance(layers, nn.ModuleList)
            and activation in _DERIVATIVES
            and all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in layers)
            and [id(p) for p in self.params]
            == [id(t) for layer in layers for t in (layer.weight, layer.bias)]
        )
        if mode == "auto":
            if not stack:
                mode = "autograd"
            else:
                rows = int(layers[-1].out_features)
                rows = 1 if rows == 2 else rows
                size = self.n_states * rows * self.dim
                mode = "jacobian" if size <= JACOBIAN_BUDGET else "matrix_free"
        elif mode != "autograd" and not stack:
            raise checks.ConfigError(
                f"Fisher mode {mode!r} needs a CategoricalPolicy of biased nn.Linear layers "
                f"with activation tanh or relu; use 'autograd' for {type(policy).__name__}"
            )
        self.mode = mode
        if mode == "autograd":
            self._setup_autograd(policy, obs)
        else:
            self._setup_stack(policy, obs)
            if mode == "jacobian":
                self._setup_jacobian()

    # --- hand-written products for a Linear stack --------------------------------------
    def _setup_stack(self, policy: nn.Module, obs: Tensor) -> None:
        layers = list(policy.layers)
        derivative = _DERIVATIVES[policy.activation]
        activation = policy._activation
        self._weights = [layer.weight.detach() for layer in layers]
        with torch.no_grad():
            x = obs.to(self._weights[0].dtype)
            inputs, slopes = [x], []
            for weight, layer in zip(self._weights[:-1], layers[:-1], strict=True):
                h = activation(torch.addmm(layer.bias.detach(), x, weight.T))
                slopes.append(derivative(h))
                inputs.append(h)
                x = h
            logits = torch.addmm(layers[-1].bias.detach(), x, self._weights[-1].T)
            self._probs = torch.softmax(logits, dim=-1)
        self._inputs, self._slopes = inputs, slopes

    def _setup_jacobian(self) -> None:
        n_states, n_actions = self._probs.shape
        pi = self._probs
        # B's rows for state m are C_m J_m / sqrt(M) with C_m^T C_m = H_m: the backward
        # pass seeded with the rows of C_m (gradients with respect to the logits)
        if n_actions == 2:
            # H_m = pi_0 pi_1 (e_1 - e_0)(e_1 - e_0)^T has rank one: one row per state
            c = (pi[:, 0] * pi[:, 1] / n_states).sqrt()
            g = torch.stack([-c, c], dim=-1)[:, None, :]  # [M, 1, 2]
        else:
            # C_m = diag(sqrt pi)(I - 1 pi^T): row a is sqrt(pi_a)(e_a - pi)
            eye = torch.eye(n_actions, dtype=pi.dtype)
            g = (pi.sqrt() / math.sqrt(n_states))[:, :, None] * (eye[None] - pi[:, None, :])
        rows = int(g.shape[1])
        factor = torch.empty(n_states, rows, self.dim, dtype=pi.dtype)
        offsets = [0]
        for size in self._sizes:
            offsets.append(offsets[-1] + size)
        for i in range(len(self._weights) - 1, -1, -1):
            x = self._inputs[i]  # [M, in]
            n_out, n_in = self._weights[i].shape
            weight_block = factor[:, :, offsets[2 * i] : offsets[2 * i + 1]]
            torch.mul(
                g[:, :, :, None],
                x[:, None, None, :],
                out=weight_block.view(n_states, rows, n_out, n_in),
            )
            factor[:, :, offsets[2 * i + 1] : offsets[2 * i + 2]] = g
            if i > 0:
                g = (g @ self._weights[i]) * self._slopes[i - 1][:, None, :]
        self._factor = factor.view(n_states * rows, self.dim)

    def _matrix_free_product(self, vector: Tensor) -> Tensor:
        parts = [
            t.view(shape) for t, shape in zip(vector.split(self._sizes), self._shapes, strict=True)
        ]
        n_layers = len(self._weights)
        # forward mode: d logits = J v (dz_i = dx_{i-1} W_i^T + x_{i-1} dW_i^T + db_i)
        dx = torch.addmm(parts[1], self._inputs[0], parts[0].T)
        for i in range(1, n_layers):
            dx = (self._slopes[i - 1] * dx).mm(self._weights[i].T)
            dx.addmm_(self._inputs[i], parts[2 * i].T).add_(parts[2 * i + 1])
        # H (J v) / M with H = diag(pi) - pi pi^T
        pi = self._probs
        g = pi * (dx - (pi * dx).sum(dim=-1, keepdim=True))
        g.mul_(1.0 / self.n_states)
        # reverse mode: J^T g
        out: list[Tensor] = [torch.empty(0)] * (2 * n_layers)
        for i in range(n_layers - 1, -1, -1):
            out[2 * i] = g.T.mm(self._inputs[i])
            out[2 * i + 1] = g.sum(dim=0)
            if i > 0:
                g = g.mm(self._weights[i]).mul_(self._slopes[i - 1])
        return torch.cat([t.reshape(-1) for t in out])

    # --- generic: Hessian of the mean KL by double backpropagation -----------------------
    def _setup_autograd(self, policy: nn.Module, obs: Tensor) -> None:
        log_pi = torch.log_softmax(policy(obs), dim=-1)
        log_old = log_pi.detach()
        kl = (log_old.exp() * (log_old - log_pi)).sum(dim=-1).mean()
        grads = torch.autograd.grad(kl, self.params, create_graph=True)
        self._kl_grad = torch.cat([g.reshape(-1) for g in grads])

    def _autograd_product(self, vector: Tensor) -> Tensor:
        grads = torch.autograd.grad(
            self._kl_grad @ vector, self.params, retain_graph=True, allow_unused=True
        )
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, self.params, strict=True)
            ]
        )

    def __call__(self, vector: Tensor) -> Tensor:
        """``Fbar v``: ``[P] -> [P]`` (a new tensor) in the parameter dtype (P = number of
        parameters, in ``policy.parameters()`` order, as :func:`pglab.gym.gradients.flat_grad`)."""
        if vector.shape != (self.dim,):
            raise checks.ConfigError(
                f"vector has shape {list(vector.shape)}, expected [P] = [{self.dim}]"
            )
        vector = vector.detach().to(self.params[0].dtype)
        if self.mode == "jacobian":
            return self._factor.T.mv(self._factor.mv(vector))
        if self.mode == "matrix_free":
            return self._matrix_free_product(vector)
        return self._autograd_product(vector)


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------
def _real_steps(batch: Any, weights: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(observations [M, obs_dim], actions [M], Psi [M])`` of the batch's real steps."""
    mask = batch.mask.bool()
    w = torch.as_tensor(weights).detach()
    if w.shape != mask.shape:
        raise checks.ConfigError(
            f"weights has shape {list(w.shape)}, expected the mask's shape {list(mask.shape)}"
        )
    return batch.observations[mask], batch.actions[mask], w[mask]


def batch_kl(log_pi_old: Tensor, log_pi_new: Tensor) -> float:
    """``mean_m sum_a pi_old (log pi_old - log pi_new)`` over rows ``[M, A]`` (0 log 0 = 0)."""
    pi_old = log_pi_old.exp()
    terms = torch.where(pi_old > 0, pi_old * (log_pi_old - log_pi_new), 0.0)
    return float(terms.sum(dim=-1).mean())


def _log_pi(policy: nn.Module, obs: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.log_softmax(policy(obs), dim=-1)


def _ghat(
    policy: nn.Module, params: list[Tensor], obs: Tensor, actions: Tensor, psi: Tensor, n: int
) -> tuple[Tensor, Tensor]:
    """``(ghat [P], log pi_old [M, A])`` from one forward and one backward pass.

    The loss is :func:`pglab.gym.gradients.surrogate_loss` term for term,
    ``-(1/N) sum_m Psi_m log pi(a_m|s_m)`` over the real steps (the same operations on the
    same rows), and its forward pass also yields the old policy's log-probabilities.
    """
    for p in params:
        p.grad = None
    log_pi = torch.log_softmax(policy(obs), dim=-1)
    taken = log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    loss = -(psi.to(taken.dtype) * taken).sum() / n
    loss.backward()
    gradient = -flat_grad(params)
    for p in params:
        p.grad = None
    return gradient, log_pi.detach()


def _finish(
    policy: nn.Module, obs: Tensor, log_old: Tensor, theta_old: Tensor, params: list[Tensor]
) -> tuple[float, float]:
    theta_new = flat_params(params)
    step_norm = float((theta_new - theta_old).norm())
    if not bool(torch.isfinite(theta_new).all()):
        return math.nan, step_norm
    return batch_kl(log_old, _log_pi(policy, obs)), step_norm


# ---------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------
def pg_update(policy: nn.Module, batch: Any, weights: Any, step_size: float) -> UpdateInfo:
    """Plain policy gradient ``theta <- theta + alpha ghat`` (what ``optimizer="sgd"`` of
    :func:`pglab.gym.training.train` does), with the same :class:`UpdateInfo`."""
    step_size = checks.positive_real("step_size", step_size, maximum=checks.FLOAT32_MAX)
    params = _params(policy)
    obs, actions, psi = _real_steps(batch, weights)
    theta_old = flat_params(params)
    gradient, log_old = _ghat(policy, params, obs, actions, psi, batch.mask.shape[0])
    _set_flat(params, theta_old + step_size * gradient)
    kl, step_norm = _finish(policy, obs, log_old, theta_old, params)
    return UpdateInfo(kl=kl, step_norm=step_norm, grad_norm=float(gradient.norm()))


def npg_update(policy: nn.Module, batch: Any, weights: Any, config: NPGConfig) -> UpdateInfo:
    """Natural policy gradient: ``theta <- theta + eta x``, ``x = (Fhat + lambda I)^{-1} ghat``.

    ``Fhat = (M/N) Fbar`` is the per-episode Fisher estimated on the batch's states
    (module docstring), so on a one-state bandit (``M = N``) this is the sampled
    counterpart of :func:`pglab.tabular.natural.npg_step`. ``x`` comes from
    ``config.cg_iterations`` steps of :func:`conjugate_gradient`. With
    ``config.kl_target = kappa`` the step is ``sqrt(2 kappa / x^T Fbar x) x`` instead.

    Extras: ``cg_iterations``, ``cg_residual``, ``quadratic_kl`` (``eta^2 x^T Fbar x / 2``),
    ``step_scale`` (the multiplier of ``x``).
    """
    config.validate()
    params = _params(policy)
    obs, actions, psi = _real_steps(batch, weights)
    theta_old = flat_params(params)
    gradient, log_old = _ghat(policy, params, obs, actions, psi, batch.mask.shape[0])
    fisher = FisherOperator(policy, obs, config.fisher_stride)
    scale = obs.shape[0] / batch.mask.shape[0]  # M / N: Fhat = (M/N) Fbar
    solve = conjugate_gradient(
        lambda v: fisher(v).mul_(scale).add_(v, alpha=config.damping),
        gradient,
        config.cg_iterations,
        config.cg_tolerance,
    )
    x = solve.x
    # x^T Fbar x without another product: CG's residual is orthogonal to its iterate, so
    # x^T (s Fbar + lambda I) x = x^T ghat, s = M/N
    curvature = max((float(torch.dot(x, gradient)) - config.damping * float(x @ x)) / scale, 0.0)
    if config.kl_target is not None:
        step = math.sqrt(2.0 * config.kl_target / curvature) if curvature > 0 else 0.0
    else:
        step = config.step_size
    _set_flat(params, theta_old + step * x)
    kl, step_norm = _finish(policy, obs, log_old, theta_old, params)
    extras = {
        "cg_iterations": float(solve.iterations),
        "cg_residual": solve.residual,
        "quadratic_kl": 0.5 * step**2 * curvature,
        "step_scale": step,
    }
    return UpdateInfo(kl, step_norm, float(gradient.norm()), extras)


def trpo_update(policy: nn.Module, batch: Any, weights: Any, config: TRPOConfig) -> UpdateInfo:
    """TRPO: maximise the surrogate subject to the sampled mean KL ``<= delta``.

    1. ``ghat``, and ``x = (Fbar + lambda I)^{-1} ghat`` by conjugate gradient;
    2. ``beta = sqrt(2 delta / x^T Fbar x)``: the step whose quadratic KL model is ``delta``;
    3. for ``j = 0 .. max_backtracks``: ``theta' = theta + backtrack^j beta x``; accept the
       first with ``mean_m KL(pi_old(.|s_m) || pi_theta'(.|s_m)) <= delta`` over the batch's
       M states *and* a positive improvement of the importance-weighted surrogate on the
       same batch::

           L(theta') - L(theta) = (1/N) sum_{i,t} Psi_{i,t} (pi_theta'(a|s) / pi_old(a|s) - 1),

       whose gradient at ``theta`` is ``ghat``. If none passes, theta is restored.

    Extras: ``cg_iterations``, ``cg_residual``, ``max_step`` (beta), ``backtracks`` (shrinks
    taken), ``accepted`` (1/0), ``surrogate_improvement``, ``expected_improvement``
    (``ghat . (step)``, the linear model), ``full_step_kl`` and ``full_step_improvement``
    (the first candidate's, accepted or not).
    """
    config.validate()
    params = _params(policy)
    obs, actions, psi = _real_steps(batch, weights)
    n_episodes = batch.mask.shape[0]
    theta_old = flat_params(params)
    gradient, log_old = _ghat(policy, params, obs, actions, psi, n_episodes)
    log_old_taken = log_old.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    psi = psi.to(log_old.dtype)
    fisher = FisherOperator(policy, obs, config.fisher_stride)
    solve = conjugate_gradient(
        lambda v: fisher(v).add_(v, alpha=config.damping),
        gradient,
        config.cg_iterations,
        config.cg_tolerance,
    )
    x = solve.x
    # x^T Fbar x = x^T ghat - lambda |x|^2 (CG's residual is orthogonal to its iterate)
    curvature = float(torch.dot(x, gradient)) - config.damping * float(x @ x)
    extras: dict[str, float] = {
        "cg_iterations": float(solve.iterations),
        "cg_residual": solve.residual,
        "accepted": 0.0,
        "backtracks": 0.0,
        "surrogate_improvement": 0.0,
    }
    if not (curvature > 0 and math.isfinite(curvature)):
        extras["max_step"] = 0.0
        return UpdateInfo(0.0, 0.0, float(gradient.norm()), extras)
    beta = math.sqrt(2.0 * config.max_kl / curvature)
    extras["max_step"] = beta
    for j in range(config.max_backtracks + 1):
        fraction = config.backtrack**j
        _set_flat(params, theta_old + fraction * beta * x)
        log_new = _log_pi(policy, obs)
        kl = batch_kl(log_old, log_new)
        log_new_taken = log_new.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(log_new_taken - log_old_taken)
        improvement = float((psi * (ratio - 1.0)).sum() / n_episodes)
        if j == 0:
            extras.update(full_step_kl=kl, full_step_improvement=improvement)
        if kl <= config.max_kl and improvement > 0:  # NaN fails both
            extras.update(
                accepted=1.0,
                backtracks=float(j),
                surrogate_improvement=improvement,
                expected_improvement=fraction * beta * float(torch.dot(gradient, x)),
            )
            step_norm = float((flat_params(params) - theta_old).norm())
            return UpdateInfo(kl, step_norm, float(gradient.norm()), extras)
    _set_flat(params, theta_old)
    extras["backtracks"] = float(config.max_backtracks)
    return UpdateInfo(0.0, 0.0, float(gradient.norm()), extras)


def make_ppo_optimizer(policy: nn.Module, config: PPOConfig) -> torch.optim.Optimizer:
    """PPO's own optimiser over the policy's parameters: ``Adam(lr)`` or plain ``SGD(lr)``.
    Create it once per run: Adam's moments carry over between updates."""
    config.validate()
    params = _params(policy)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.step_size)
    return torch.optim.SGD(params, lr=config.step_size)


def ppo_update(
    policy: nn.Module,
    batch: Any,
    weights: Any,
    config: PPOConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> UpdateInfo:
    """PPO's clipped-surrogate update on one batch.

    With ``rho_m(theta) = pi_theta(a_m|s_m) / pi_old(a_m|s_m)`` over the M real steps, each
    epoch shuffles the steps (``torch.randperm`` from ``generator``) and splits them into
    ``config.minibatches`` parts B of ``m_B`` steps; for each part the optimiser takes one
    step on::

        loss_B(theta) = -(1/N) (M/m_B) sum_{m in B} min(rho_m Psi_m, clip(rho_m, 1-eps, 1+eps) Psi_m).

    The factor ``M/m_B`` makes each minibatch gradient at ``theta_old`` an unbiased
    estimate of ``-ghat`` (the full-batch loss is ``-(1/N) sum_m rho_m Psi_m`` near
    ``theta_old``), so ``step_size`` is in the units of plain PG's ``alpha``. With
    ``eps -> inf``, one epoch, one minibatch and ``optimizer="sgd"``, the update is exactly
    ``theta + alpha ghat``: at ``theta_old``, ``rho = 1`` and ``grad rho = grad log pi``.

    Extras: ``clip_fraction`` (fraction of steps whose ratio was outside the clip range at
    their last minibatch step), ``optimizer_steps``.
    """
    config.validate()
    params = _params(policy)
    obs, actions, psi = _real_steps(batch, weights)
    n_episodes = batch.mask.shape[0]
    n_steps = int(obs.shape[0])
    log_old = _log_pi(policy, obs)
    log_old_taken = log_old.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    psi = psi.to(log_old.dtype)
    theta_old = flat_params(params)
    parts = min(config.minibatches, n_steps)
    low, high = 1.0 - config.clip, 1.0 + config.clip
    clipped = 0
    optimizer_steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(n_steps, generator=generator)
        clipped = 0
        for index in torch.tensor_split(order, parts):
            log_pi = torch.log_softmax(policy(obs[index]), dim=-1)
            taken = log_pi.gather(-1, actions[index].long().unsqueeze(-1)).squeeze(-1)
            ratio = torch.exp(taken - log_old_taken[index])
            weight = psi[index]
            objective = torch.minimum(ratio * weight, ratio.clamp(low, high) * weight)
            loss = -objective.sum() * (n_steps / (len(index) * n_episodes))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            optimizer_steps += 1
            clipped += int(((ratio < low) | (ratio > high)).sum())
    optimizer.zero_grad(set_to_none=True)
    kl, step_norm = _finish(policy, obs, log_old, theta_old, params)
    extras = {"clip_fraction": clipped / n_steps, "optimizer_steps": float(optimizer_steps)}
    return UpdateInfo(kl, step_norm, math.nan, extras)


# ---------------------------------------------------------------------------------------
# One object per run
# ---------------------------------------------------------------------------------------
class UpdateRule:
    """A named rule bound to one policy, holding its state across iterations (PPO's
    optimiser and minibatch generator); ``rule(batch, weights) -> UpdateInfo``."""

    def __init__(
        self,
        name: str,
        policy: nn.Module,
        step_size: float,
        npg: NPGConfig | None = None,
        trpo: TRPOConfig | None = None,
        ppo: PPOConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.name = checks.one_of("update", name, UPDATE_RULES)
        self.policy = policy
        self.step_size = checks.positive_real("step_size", step_size)
        self.npg = (npg or NPGConfig(step_size=step_size)).validate()
        self.trpo = (trpo or TRPOConfig(max_kl=step_size)).validate()
        self.ppo = (ppo or PPOConfig(step_size=step_size)).validate()
        self.optimizer = make_ppo_optimizer(policy, self.ppo) if name == "ppo" else None
        self.generator = torch.Generator().manual_seed(checks.seed("seed", seed))

    def __call__(self, batch: Any, weights: Any) -> UpdateInfo:
        if self.name == "pg":
            return pg_update(self.policy, batch, weights, self.step_size)
        if self.name == "npg":
            return npg_update(self.policy, batch, weights, self.npg)
        if self.name == "trpo":
            return trpo_update(self.policy, batch, weights, self.trpo)
        assert self.optimizer is not None
        return ppo_update(self.policy, batch, weights, self.ppo, self.optimizer, self.generator)


def make_update_rule(
    name: str,
    policy: nn.Module,
    step_size: float,
    config: NPGConfig | TRPOConfig | PPOConfig | None = None,
    seed: int = 0,
) -> UpdateRule:
    """:class:`UpdateRule` ``name`` for ``policy``. ``step_size`` is the rule's step
    parameter (alpha for pg, eta for npg, delta for trpo, the learning rate for ppo) and
    overrides the one in ``config`` (the rule's other keys)."""
    checks.one_of("update", name, UPDATE_RULES)
    step_size = checks.positive_real("step_size", step_size)
    if name == "npg":
        base = config if isinstance(config, NPGConfig) else NPGConfig()
        return UpdateRule(name, policy, step_size, npg=_with(base, step_size=step_size), seed=seed)
    if name == "trpo":
        base = config if isinstance(config, TRPOConfig) else TRPOConfig()
        return UpdateRule(name, policy, step_size, trpo=_with(base, max_kl=step_size), seed=seed)
    if name == "ppo":
        base = config if isinstance(config, PPOConfig) else PPOConfig()
        return UpdateRule(name, policy, step_size, ppo=_with(base, step_size=step_size), seed=seed)
    return UpdateRule(name, policy, step_size, seed=seed)


def _with(config: Any, **changes: Any) -> Any:
    return dataclasses.replace(config, **changes)
