"""Exact step-size control on a tabular MDP: Fisher information, natural gradient, TRPO,
and the fitted convergence rates of exact ascent.

Parameterisation. A softmax policy either with one free logit per state-action pair
(``features=None``, ``theta`` the ``[S, A]`` logits, as in :mod:`pglab.tabular.policy`) or
with features (``theta [d]``, ``logits = phi theta``, :mod:`pglab.tabular.features`). The
score is ``psi(s, a) = grad_theta log pi(a|s) = phi(s, a) - sum_b pi(b|s) phi(s, b)``
(one-hot ``phi`` for the tabular case).

Fisher information of the trajectory distribution. An episode ``tau = (s_0, a_0, ...)``
has ``grad log P_theta(tau) = sum_t psi(s_t, a_t)`` (the dynamics do not depend on
``theta``); the cross terms ``t != t'`` vanish because ``E[psi(s_t, a_t) | s_0..s_t] = 0``,
so::

    F(theta) = E[grad log P(tau) grad log P(tau)^T]
             = sum_{t=0}^{T-1} sum_{s non-terminal} d_t(s) sum_a pi(a|s) psi(s, a) psi(s, a)^T
             = sum_s w(s) Cov_{a ~ pi(.|s)}[phi(s, a)],    w(s) = sum_t d_t(s) [s not terminal].

``d_t`` are the oracle's occupancies (:func:`pglab.tabular.exact.solve`). Convention:
*undiscounted* (``d_t``, not ``gamma^t d_t``): ``F`` is the Fisher of the distribution of
episodes whatever ``gamma`` is (Kakade's 2001 discounted-occupancy Fisher differs when
``gamma < 1``). Terminal states are excluded: an episode takes no decision there (the
samplers mask those steps), so they are not part of ``tau``. ``w(s)`` is the expected
number of decisions taken in ``s``; ``L = sum_s w(s)`` the expected episode length.

Natural gradient ``x = F^dagger grad J`` (Moore-Penrose pseudo-inverse: the softmax is
invariant to adding a constant to a state's logits, so ``F`` is singular). Tabular
closed form: ``F`` is block-diagonal, ``F_s = w(s) (diag pi_s - pi_s pi_s^T)``, and
``grad J[s, a] = pi(a|s) sum_t gamma^t d_t(s) A_t(s, a)``, so with every ``pi(a|s) > 0``::

    x[s, a] = Abar(s, a) - (1/A) sum_b Abar(s, b),   Abar(s, a) = sum_t gamma^t d_t(s) A_t(s, a) / w(s)

(``F_s Abar(s) = grad J[s]`` because ``sum_a grad J[s, a] = 0``; subtracting the mean
projects onto the orthogonal complement of ``F_s``'s null space ``span(1)``, which is what
the pseudo-inverse returns; ``x[s] = 0`` where ``w(s) = 0``). On a one-state bandit
(``T = 1``) this is ``x = r - mean(r)``, so NPG ``theta <- theta + eta x`` is
``theta_a <- theta_a + eta (r_a - J)`` up to the constant shift ``eta (J - mean(r))``:
``pi_k(a) ~ pi_0(a) exp(k eta r_a)``. With features, ``x = pinv(F) grad J`` by an
eigendecomposition (``rcond``: eigenvalues below ``rcond * max`` count as zero).

KL between successive policies: the *mean over the states the old policy visits*::

    KLbar(theta, theta') = (1/L) sum_s w(s) KL(pi_theta(.|s) || pi_theta'(.|s)),

the expectation of what :mod:`pglab.gym.training` records (the mean over a batch's real
states; ``L KLbar`` is the KL between the two trajectory distributions). To second
order ``KLbar(theta, theta + D) = D^T F D / (2 L) + O(|D|^3)``, the quadratic model TRPO
uses.

Sampled NPG and TRPO (``sampled_*``): the same quantities from one batch of N trajectories
and nothing exact. ``Fhat = (1/N) sum_{s,a} n(s, a) psi(s, a) psi(s, a)^T`` from the batch's
decision counts ``n(s, a)`` (unbiased for ``F``), ``x = (Fhat + lambda I)^-1 ghat`` by a
dense solve, and for TRPO the mean KL over the batch's decisions and its importance-sampled
surrogate in place of the exact KL and J.

Everything is float64 on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pglab import checks
from pglab.tabular import exact
from pglab.tabular.features import check_features, check_theta, feature_logits, scores
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import check_logits

__all__ = [
    "EXACT_RULES",
    "ExactIterates",
    "LinearRateFit",
    "SAMPLED_DAMPING",
    "NaturalGradient",
    "SublinearRateFit",
    "TRPOStep",
    "TRPOTrial",
    "exact_iterates",
    "fisher_matrix",
    "fit_linear_rate",
    "fit_sublinear_rate",
    "mean_kl",
    "natural_gradient",
    "npg_step",
    "sampled_fisher",
    "sampled_mean_kl",
    "sampled_natural_direction",
    "sampled_surrogate",
    "sampled_trpo_step",
    "state_weights",
    "tabular_natural_direction",
    "trpo_step",
]

#: The update rules :func:`exact_iterates` runs.
EXACT_RULES = ("pg", "npg", "trpo")

#: Default relative cut-off of :func:`natural_gradient`'s pseudo-inverse (features only).
DEFAULT_RCOND = 1e-12

#: Default damping lambda of the sampled solve ``(Fhat + lambda I) x = ghat``: the gym NPG's
#: (:class:`pglab.gym.updates.NPGConfig`).
SAMPLED_DAMPING = 1e-3


# ---------------------------------------------------------------------------------------
# Parameters: logits [S, A] or theta [d] with features [S, A, d]
# ---------------------------------------------------------------------------------------
def _params(
    mdp: TabularMDP, theta: Any, features: Any
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(theta, phi or None, logits [S, A])`` for checked inputs (theta copied)."""
    checks.instance("mdp", mdp, TabularMDP)
    if features is None:
        logits = check_logits(theta, mdp.n_states, mdp.n_actions).detach().clone()
        return logits, None, logits
    phi = check_features(features, mdp.n_states, mdp.n_actions)
    vector = check_theta(theta, int(phi.shape[2]))
    return vector, phi, feature_logits(phi, vector)


def _logits(phi: torch.Tensor | None, theta: torch.Tensor) -> torch.Tensor:
    return theta if phi is None else feature_logits(phi, theta)


def _gradient(phi: torch.Tensor | None, solution: exact.ExactSolution) -> torch.Tensor:
    """``grad_theta J`` in the shape of theta."""
    if phi is None:
        return solution.gradient
    return torch.einsum("sa,sak->k", solution.gradient, phi)


def state_weights(mdp: TabularMDP, solution: exact.ExactSolution) -> torch.Tensor:
    """``w(s) = sum_t d_t(s) [s not terminal]``, the expected number of decisions in ``s``;
    ``[S]`` float64. Its sum is the expected episode length ``L``."""
    weights = solution.occupancy.sum(dim=0)
    return torch.where(mdp.terminal, 0.0, weights)


def _one_hot(mdp: TabularMDP) -> torch.Tensor:
    eye = torch.eye(mdp.n_states * mdp.n_actions, dtype=torch.float64)
    return eye.reshape(mdp.n_states, mdp.n_actions, -1)


def _fisher(
    mdp: TabularMDP, phi: torch.Tensor | None, solution: exact.ExactSolution
) -> torch.Tensor:
    phi = _one_hot(mdp) if phi is None else phi
    psi = scores(phi, solution.policy)  # [S, A, d]
    weights = state_weights(mdp, solution)[:, None] * solution.policy  # [S, A] w(s) pi(a|s)
    return torch.einsum("sa,sak,sal->kl", weights, psi, psi)


def fisher_matrix(mdp: TabularMDP, theta: Any, features: Any = None) -> torch.Tensor:
    """Exact Fisher information of the trajectory distribution (module docstring).

    ``F = sum_s w(s) sum_a pi(a|s) psi(s, a) psi(s, a)^T``.

    Args:
        mdp: the MDP.
        theta: ``[S, A]`` logits (``features=None``) or ``[d]`` parameters.
        features: ``None`` or ``[S, A, d]``.

    Returns:
        ``[d, d]`` symmetric positive semi-definite float64; ``d = S A`` for logits, indexed
        ``s A + a`` (``theta.reshape(-1)`` order).
    """
    vector, phi, logits = _params(mdp, theta, features)
    return _fisher(mdp, phi, exact.solve(mdp, logits))


@dataclass(frozen=True)
class NaturalGradient:
    """The natural gradient at one ``theta`` and what it was computed from.

    Attributes:
        direction: ``x = F^dagger grad J`` in the shape of theta (``[S, A]`` or ``[d]``).
        gradient: ``grad J`` in the same shape.
        solution: the oracle's :class:`~pglab.tabular.exact.ExactSolution` at theta.
        expected_length: ``L = sum_s w(s)``, expected decisions per episode.
        quadratic: ``x^T F x = grad J^T x`` (``>= 0``), so the quadratic model of the mean
            KL of the step ``beta x`` is ``beta^2 quadratic / (2 L)``.
    """

    direction: torch.Tensor
    gradient: torch.Tensor
    solution: exact.ExactSolution
    expected_length: float
    quadratic: float


def _natural(
    mdp: TabularMDP, phi: torch.Tensor | None, logits: torch.Tensor, rcond: float
) -> NaturalGradient:
    solution = exact.solve(mdp, logits)
    weights = state_weights(mdp, solution)  # [S]
    gradient = _gradient(phi, solution)
    if phi is None:
        # Abar(s, a) = sum_t gamma^t d_t(s) A_t(s, a) / w(s); x = Abar - mean_a Abar
        discounts = mdp.gamma ** torch.arange(mdp.horizon, dtype=torch.float64)
        weighted = torch.einsum("t,ts,tsa->sa", discounts, solution.occupancy, solution.advantages)
        visited = weights > 0
        mean_advantage = torch.where(
            visited[:, None], weighted / torch.where(visited, weights, 1.0)[:, None], 0.0
        )
        direction = mean_advantage - mean_advantage.mean(dim=-1, keepdim=True)
    else:
        fisher = _fisher(mdp, phi, solution)
        pinv = torch.linalg.pinv(fisher, rtol=rcond, hermitian=True)
        direction = pinv @ gradient
    quadratic = max(float((gradient * direction).sum()), 0.0)
    return NaturalGradient(
        direction=direction,
        gradient=gradient,
        solution=solution,
        expected_length=float(weights.sum()),
        quadratic=quadratic,
    )


def natural_gradient(
    mdp: TabularMDP, theta: Any, features: Any = None, rcond: float = DEFAULT_RCOND
) -> NaturalGradient:
    """Exact natural gradient ``x = F^dagger grad J`` (module docstring).

    Args:
        mdp: the MDP.
        theta: ``[S, A]`` logits (``features=None``: the closed form per state, ``O(T S A)``
            after the oracle) or ``[d]`` parameters (``pinv`` of the ``[d, d]`` Fisher).
        features: ``None`` or ``[S, A, d]``.
        rcond: relative eigenvalue cut-off of the pseudo-inverse (features only), in (0, 1).
    """
    rcond = checks.real("rcond", rcond, 0.0, 1.0, low_open=True, high_open=True)
    _, phi, logits = _params(mdp, theta, features)
    return _natural(mdp, phi, logits, rcond)


def npg_step(
    mdp: TabularMDP,
    theta: Any,
    step_size: float,
    features: Any = None,
    rcond: float = DEFAULT_RCOND,
) -> torch.Tensor:
    """One exact natural-gradient step ``theta + eta F^dagger grad J`` (a new tensor)."""
    step_size = checks.positive_real("step_size", step_size)
    rcond = checks.real("rcond", rcond, 0.0, 1.0, low_open=True, high_open=True)
    vector, phi, logits = _params(mdp, theta, features)
    return vector + step_size * _natural(mdp, phi, logits, rcond).direction


def _mean_kl(
    mdp: TabularMDP,
    solution_old: exact.ExactSolution,
    logits_old: torch.Tensor,
    logits_new: torch.Tensor,
) -> float:
    weights = state_weights(mdp, solution_old)
    log_old = torch.log_softmax(logits_old, dim=-1)
    log_new = torch.log_softmax(logits_new, dim=-1)
    # KL(pi_old(.|s) || pi_new(.|s)) = sum_a pi_old (log pi_old - log pi_new), 0 log 0 = 0
    per_state = torch.where(
        solution_old.policy > 0, solution_old.policy * (log_old - log_new), 0.0
    ).sum(-1)
    length = float(weights.sum())
    if length <= 0.0:  # every episode starts in a terminal state: no decision is ever taken
        return 0.0
    return float((weights * per_state).sum()) / length


def mean_kl(mdp: TabularMDP, theta_old: Any, theta_new: Any, features: Any = None) -> float:
    """Exact ``KLbar(theta_old, theta_new) = (1/L) sum_s w_old(s) KL(pi_old(.|s) || pi_new(.|s))``,
    the mean over the states the old policy visits (module docstring), in nats."""
    _, phi, logits_old = _params(mdp, theta_old, features)
    _, _, logits_new = _params(mdp, theta_new, features)
    solution = exact.solve(mdp, logits_old)
    return _mean_kl(mdp, solution, logits_old, logits_new)


def tabular_natural_direction(
    logits: Any, gradient: Any, weights: Any, damping: float = 0.0
) -> torch.Tensor:
    """``x = (F + lambda I)^dagger g`` for a tabular softmax policy and any state weights.

    The Fisher of a tabular softmax is block-diagonal, ``F_s = c(s) (diag pi_s - pi_s
    pi_s^T)``, for state weights ``c(s) >= 0``: ``c = w`` (:func:`state_weights`) gives the
    exact trajectory Fisher, and ``c(s) = n_s / N`` with ``n_s`` the number of decisions
    taken in ``s`` by N sampled trajectories gives its unbiased estimate from a batch
    (the action expectation done exactly, as :class:`pglab.gym.updates.FisherOperator`
    does). (``tabular_ascent``'s sampled NPG uses :func:`sampled_fisher` instead, the
    batch's empirical outer products with the actions sampled too.) Per state, with
    every ``pi(a|s) > 0``:

    * ``lambda = 0``: ``x_s = g_s / (c(s) pi_s) - mean_a(g_s / (c(s) pi_s))`` (the
      pseudo-inverse, exact when ``sum_a g_s = 0``, true of any softmax gradient and
      of its sampled estimates); ``x_s = 0`` where ``c(s) = 0``;
    * ``lambda > 0``: Sherman-Morrison with ``D = c diag(pi) + lambda I``:
      ``x_s = D^-1 g + c D^-1 pi (pi^T D^-1 g) / (1 - c pi^T D^-1 pi)``.

    Args:
        logits: ``[S, A]`` logits of the policy.
        gradient: ``[S, A]`` ``g`` (exact ``grad J`` or a sampled ``ghat``).
        weights: ``[S]`` ``c(s) >= 0``.
        damping: ``lambda >= 0``.

    Returns:
        ``[S, A]`` float64.
    """
    damping = checks.real("damping", damping, 0.0)
    shape = tuple(torch.as_tensor(logits).shape)
    if len(shape) != 2:
        raise checks.ConfigError(f"logits must have shape [S, A], got {list(shape)}")
    n_states, n_actions = shape
    theta = check_logits(logits, n_states, n_actions).detach()
    g = check_logits(gradient, n_states, n_actions).detach()
    c = torch.as_tensor(weights, dtype=torch.float64).detach()
    if tuple(c.shape) != (n_states,) or not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
        raise checks.ConfigError(
            f"weights must be [S] = [{n_states}] finite numbers >= 0, got shape {list(c.shape)}"
        )
    pi = torch.softmax(theta, dim=-1)
    if damping == 0.0:
        visited = (c > 0)[:, None]
        scaled = torch.where(visited, g / torch.where(visited, c[:, None] * pi, 1.0), 0.0)
        return scaled - scaled.mean(dim=-1, keepdim=True)
    inverse = 1.0 / (c[:, None] * pi + damping)  # D^-1, [S, A]
    d_g = inverse * g
    d_pi = inverse * pi
    numerator = (pi * d_g).sum(-1, keepdim=True)  # pi^T D^-1 g
    denominator = 1.0 - c[:, None] * (pi * d_pi).sum(-1, keepdim=True)  # > 0 for lambda > 0
    return d_g + c[:, None] * d_pi * numerator / denominator


@dataclass(frozen=True)
class TRPOTrial:
    """One candidate of the line search: ``theta + fraction * beta * x``."""

    fraction: float
    kl: float
    improvement: float
    accepted: bool


@dataclass(frozen=True)
class TRPOStep:
    """Result of :func:`trpo_step`.

    Attributes:
        theta: the new parameters (the old ones, copied, when no candidate was accepted).
        accepted: whether a candidate passed both checks.
        kl: exact mean KL of the taken step (0 when none was accepted).
        improvement: ``J(theta_new) - J(theta_old)`` (0 when none was accepted).
        max_step: ``beta = sqrt(2 delta L / x^T F x)``, the step along ``x`` whose
            quadratic KL model equals ``delta`` (0 when ``grad J = 0``).
        step_norm: ``||theta_new - theta_old||_2``.
        trials: every candidate tried, in order.
    """

    theta: torch.Tensor
    accepted: bool
    kl: float
    improvement: float
    max_step: float
    step_norm: float
    trials: tuple[TRPOTrial, ...] = field(default_factory=tuple)


def trpo_step(
    mdp: TabularMDP,
    theta: Any,
    max_kl: float,
    features: Any = None,
    backtrack: float = 0.5,
    max_backtracks: int = 10,
    rcond: float = DEFAULT_RCOND,
) -> TRPOStep:
    """One exact TRPO step: maximise ``J`` subject to ``KLbar(theta, theta') <= delta``.

    1. natural direction ``x = F^dagger grad J`` (:func:`natural_gradient`);
    2. largest step of the quadratic model, ``KLbar ~ beta^2 x^T F x / (2 L) = delta``:
       ``beta = sqrt(2 delta L / x^T F x)``;
    3. backtracking line search over ``theta + backtrack^j beta x``, ``j = 0 ..
       max_backtracks``: the first candidate with exact ``KLbar <= delta`` *and* exact
       ``J(theta') > J(theta)`` is taken; if none passes, theta is kept.

    Args:
        mdp: the MDP.
        theta: ``[S, A]`` logits or ``[d]`` parameters with ``features [S, A, d]``.
        max_kl: ``delta > 0``, in nats (mean over visited states).
        backtrack: shrink factor in (0, 1).
        max_backtracks: ``>= 0`` shrinks after the full step.
        rcond: see :func:`natural_gradient`.
    """
    max_kl = checks.positive_real("max_kl", max_kl)
    backtrack = checks.real("backtrack", backtrack, 0.0, 1.0, low_open=True, high_open=True)
    max_backtracks = checks.integer("max_backtracks", max_backtracks, minimum=0)
    rcond = checks.real("rcond", rcond, 0.0, 1.0, low_open=True, high_open=True)
    vector, phi, logits = _params(mdp, theta, features)
    return _trpo(mdp, vector, phi, logits, max_kl, backtrack, max_backtracks, rcond)


def _trpo(
    mdp: TabularMDP,
    vector: torch.Tensor,
    phi: torch.Tensor | None,
    logits: torch.Tensor,
    max_kl: float,
    backtrack: float,
    max_backtracks: int,
    rcond: float,
) -> TRPOStep:
    natural = _natural(mdp, phi, logits, rcond)
    if natural.quadratic <= 0.0 or natural.expected_length <= 0.0:
        return TRPOStep(vector.clone(), False, 0.0, 0.0, 0.0, 0.0, ())
    beta = math.sqrt(2.0 * max_kl * natural.expected_length / natural.quadratic)
    j_old = natural.solution.expected_return
    return _line_search(
        vector,
        natural.direction,
        phi,
        beta,
        max_kl,
        backtrack,
        max_backtracks,
        kl_of=lambda candidate_logits: _mean_kl(mdp, natural.solution, logits, candidate_logits),
        improvement_of=lambda candidate_logits: (
            exact.expected_return(mdp, candidate_logits) - j_old
        ),
    )


def _line_search(
    theta: torch.Tensor,
    direction: torch.Tensor,
    features: torch.Tensor | None,
    beta: float,
    max_kl: float,
    backtrack: float,
    max_backtracks: int,
    kl_of: Any,
    improvement_of: Any,
) -> TRPOStep:
    """TRPO's backtracking over ``theta + backtrack^j beta x``, ``j = 0 .. max_backtracks``:
    the first candidate with ``kl_of(logits') <= max_kl`` and ``improvement_of(logits') > 0``
    is taken; if none passes, theta is kept (exact and sampled TRPO differ only in the two
    functions)."""
    trials = []
    for j in range(max_backtracks + 1):
        fraction = backtrack**j
        candidate = theta + fraction * beta * direction
        candidate_logits = _logits(features, candidate)
        kl = kl_of(candidate_logits)
        improvement = improvement_of(candidate_logits)
        accepted = kl <= max_kl and improvement > 0.0
        trials.append(TRPOTrial(fraction, kl, improvement, accepted))
        if accepted:
            step_norm = float((candidate - theta).norm())
            return TRPOStep(candidate, True, kl, improvement, beta, step_norm, tuple(trials))
    return TRPOStep(theta.clone(), False, 0.0, 0.0, beta, 0.0, tuple(trials))


# ---------------------------------------------------------------------------------------
# Sampled NPG and TRPO: the Fisher, the KL and the surrogate from one batch of N trajectories
# ---------------------------------------------------------------------------------------
def sampled_fisher(
    policy: torch.Tensor, counts: torch.Tensor, n_trajectories: int, features: Any = None
) -> torch.Tensor:
    """Empirical Fisher of N sampled trajectories, ``[d, d]`` float64.

    ``Fhat = (1/N) sum_i sum_t psi(s_it, a_it) psi(s_it, a_it)^T
           = (1/N) sum_{s,a} n(s, a) psi(s, a) psi(s, a)^T``,

    with ``psi(s, a) = phi(s, a) - sum_b pi(b|s) phi(s, b)`` (one-hot ``phi``: ``e_a - pi(.|s)``
    in row s) and ``n(s, a)`` the real decisions ``(s, a)`` the batch took
    (:func:`pglab.tabular.estimates.sample_gradients_and_visits`). Unbiased:
    ``E[n(s, a)] / N = w(s) pi(a|s)``, so ``E[Fhat] = F`` (:func:`fisher_matrix`).

    Args:
        policy: ``[S, A]`` pi(a|s) the batch was drawn with.
        counts: ``[S, A]`` n(s, a) (float64, >= 0).
        n_trajectories: N >= 1.
        features: ``None`` (one-hot: ``d = S A``, indexed ``s A + a``) or ``[S, A, d]``.
    """
    n_states, n_actions = policy.shape
    phi = (
        torch.eye(n_states * n_actions, dtype=torch.float64).reshape(n_states, n_actions, -1)
        if features is None
        else features
    )
    psi = scores(phi, policy)  # [S, A, d]
    return torch.einsum("sa,sak,sal->kl", counts / n_trajectories, psi, psi)


def sampled_natural_direction(
    fisher: torch.Tensor, gradient: torch.Tensor, damping: float
) -> torch.Tensor:
    """``x = (Fhat + lambda I)^-1 ghat`` by a dense float64 solve, in the shape of ``ghat``.

    ``lambda > 0``: ``torch.linalg.solve`` (``Fhat + lambda I`` is positive definite).
    ``lambda = 0``: the minimum-norm least-squares solution ``pinv(Fhat) ghat`` (``Fhat``
    is singular: the softmax ignores a constant added to a state's logits, and states the
    batch never visited have zero rows).
    """
    flat = gradient.reshape(-1).to(torch.float64)
    matrix = fisher.to(torch.float64)
    if damping > 0.0:
        eye = torch.eye(matrix.shape[0], dtype=torch.float64)
        x = torch.linalg.solve(matrix + damping * eye, flat)
    else:
        x = torch.linalg.pinv(matrix, rtol=DEFAULT_RCOND, hermitian=True) @ flat
    return x.reshape(gradient.shape)


def sampled_mean_kl(
    counts: torch.Tensor, logits_old: torch.Tensor, logits_new: torch.Tensor
) -> float:
    """Mean KL over the batch's sampled states, nats:

    ``KLhat = sum_s n(s) KL(pi_old(.|s) || pi_new(.|s)) / sum_s n(s)``, ``n(s) = sum_a n(s, a)``,

    i.e. the mean over the batch's real decisions of each visited state's KL (closed form
    per state, as :mod:`pglab.gym.updates` computes it from the batch's logits). 0 for an
    empty batch (no decision taken).
    """
    visits = counts.sum(dim=-1)  # [S]
    total = float(visits.sum())
    if total <= 0.0:
        return 0.0
    log_old = torch.log_softmax(logits_old, dim=-1)
    log_new = torch.log_softmax(logits_new, dim=-1)
    pi_old = log_old.exp()
    per_state = torch.where(pi_old > 0, pi_old * (log_old - log_new), 0.0).sum(-1)
    return float((visits * per_state).sum()) / total


def sampled_surrogate(
    gradient_logits: torch.Tensor, logits_old: torch.Tensor, logits_new: torch.Tensor
) -> float:
    """Improvement of the batch's importance-sampled surrogate, ``Lhat(theta') - Lhat(theta)``.

    ``Lhat(theta') = (1/N) sum_i sum_t [pi'(a_it|s_it) / pi(a_it|s_it)] Psi_it``. Grouped by
    ``(s, a)`` it is ``(1/N) sum_{s,a} C(s, a) rho(s, a)`` with ``C(s, a) = sum_{i,t} Psi_it
    1[(s_it, a_it) = (s, a)]`` and ``rho = pi'/pi``; adding ``c_s pi(.|s)`` to row s of ``C``
    changes nothing (``sum_a pi (rho - 1) = 0``), so ``C / N`` may be replaced by the batch
    gradient in logits ``ghat[s, a] = (C(s, a) - pi(a|s) sum_b C(s, b)) / N``:

    ``Lhat(theta') - Lhat(theta) = sum_{s,a} ghat[s, a] (rho(s, a) - 1)`` (exactly), whose
    gradient at ``theta' = theta`` is ``ghat``.

    Args:
        gradient_logits: ``[S, A]`` ``ghat`` in logits (before any feature chain rule).
        logits_old, logits_new: ``[S, A]``.
    """
    ratio = torch.exp(torch.log_softmax(logits_new, -1) - torch.log_softmax(logits_old, -1))
    return float((gradient_logits * (ratio - 1.0)).sum())


def sampled_trpo_step(
    theta: torch.Tensor,
    gradient_logits: torch.Tensor,
    counts: torch.Tensor,
    n_trajectories: int,
    max_kl: float,
    features: Any = None,
    damping: float = SAMPLED_DAMPING,
    backtrack: float = 0.5,
    max_backtracks: int = 10,
) -> TRPOStep:
    """One sampled TRPO step from one batch of N trajectories (nothing exact is used).

    1. ``x = (Fhat + lambda I)^-1 ghat`` (:func:`sampled_fisher`,
       :func:`sampled_natural_direction`), ``ghat`` in theta's space;
    2. the sampled quadratic model of the batch's mean KL, ``KLhat(theta + beta x) ~
       beta^2 x^T Fhat x / (2 Lhat)`` with ``Lhat = sum n(s, a) / N`` the batch's decisions
       per episode: ``beta = sqrt(2 delta Lhat / x^T Fhat x)``;
    3. backtracking over ``theta + backtrack^j beta x``, ``j = 0 .. max_backtracks``: the
       first candidate with :func:`sampled_mean_kl` ``<= delta`` *and* a positive
       :func:`sampled_surrogate` improvement is taken; if none passes, theta is kept.

    The exact KL and exact J of the oracle are not consulted (a sampled method has neither);
    :func:`pglab.tabular.ascent.tabular_ascent` records the exact KL only as a diagnostic.
    ``TRPOStep.kl`` is the sampled mean KL of the taken step and ``improvement`` its
    surrogate improvement; trials carry the same.

    Args:
        theta: ``[S, A]`` logits (``features=None``) or ``[d]``.
        gradient_logits: ``[S, A]`` the batch's ``ghat`` in logits.
        counts: ``[S, A]`` the batch's decisions n(s, a).
        n_trajectories: N.
        max_kl: delta > 0 (nats, mean over the batch's decisions).
        features: ``None`` or ``[S, A, d]``.
        damping: lambda >= 0.
        backtrack, max_backtracks: as :func:`trpo_step`.
    """
    logits = _logits(features, theta)
    policy = torch.softmax(logits, dim=-1)
    fisher = sampled_fisher(policy, counts, n_trajectories, features)
    g = (
        gradient_logits
        if features is None
        else torch.einsum("sa,sak->k", gradient_logits, features)
    )
    direction = sampled_natural_direction(fisher, g, damping)
    flat = direction.reshape(-1)
    quadratic = float(flat @ fisher @ flat)  # x^T Fhat x
    length = float(counts.sum()) / n_trajectories  # Lhat
    if not quadratic > 0.0 or length <= 0.0 or not math.isfinite(quadratic):
        return TRPOStep(theta.clone(), False, 0.0, 0.0, 0.0, 0.0, ())
    beta = math.sqrt(2.0 * max_kl * length / quadratic)
    return _line_search(
        theta,
        direction,
        features,
        beta,
        max_kl,
        backtrack,
        max_backtracks,
        kl_of=lambda candidate_logits: sampled_mean_kl(counts, logits, candidate_logits),
        improvement_of=lambda candidate_logits: sampled_surrogate(
            gradient_logits, logits, candidate_logits
        ),
    )


# ---------------------------------------------------------------------------------------
# Exact iterates and fitted rates
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExactIterates:
    """``K`` exact updates from ``theta_0``.

    Attributes:
        thetas: ``[K+1, ...]`` ``theta_0 .. theta_K`` (shape of theta per row).
        returns: ``[K+1]`` ``J(theta_k)``.
        kls: ``[K]`` exact ``KLbar(theta_k, theta_{k+1})``.
        step_norms: ``[K]`` ``||theta_{k+1} - theta_k||_2``.
    """

    thetas: torch.Tensor
    returns: torch.Tensor
    kls: torch.Tensor
    step_norms: torch.Tensor


def exact_iterates(
    mdp: TabularMDP,
    theta0: Any,
    rule: str,
    step: float,
    n_iterations: int,
    features: Any = None,
    rcond: float = DEFAULT_RCOND,
) -> ExactIterates:
    """Run ``n_iterations`` exact updates of one rule.

    ==========  ===================================================================
    rule        ``theta_{k+1}``                               ``step`` is
    ==========  ===================================================================
    ``pg``      ``theta_k + eta grad J(theta_k)``              ``eta``
    ``npg``     ``theta_k + eta F^dagger grad J(theta_k)``     ``eta``
    ``trpo``    :func:`trpo_step` (defaults otherwise)         ``delta`` (nats)
    ==========  ===================================================================
    """
    checks.one_of("rule", rule, EXACT_RULES)
    step = checks.positive_real("step", step)
    n_iterations = checks.positive_int("n_iterations", n_iterations)
    rcond = checks.real("rcond", rcond, 0.0, 1.0, low_open=True, high_open=True)
    vector, phi, logits = _params(mdp, theta0, features)
    thetas, returns, kls, norms = [vector.clone()], [], [], []
    for _ in range(n_iterations):
        if rule == "trpo":
            result = _trpo(mdp, vector, phi, logits, step, 0.5, 10, rcond)
            returns.append(exact.expected_return(mdp, logits))
            new, kl = result.theta, result.kl
        else:
            if rule == "pg":
                solution = exact.solve(mdp, logits)
                direction = _gradient(phi, solution)
            else:
                natural = _natural(mdp, phi, logits, rcond)
                solution, direction = natural.solution, natural.direction
            returns.append(solution.expected_return)
            new = vector + step * direction
            kl = _mean_kl(mdp, solution, logits, _logits(phi, new))
        kls.append(kl)
        norms.append(float((new - vector).norm()))
        vector, logits = new, _logits(phi, new)
        thetas.append(vector.clone())
    returns.append(exact.expected_return(mdp, logits))
    return ExactIterates(
        thetas=torch.stack(thetas),
        returns=torch.tensor(returns, dtype=torch.float64),
        kls=torch.tensor(kls, dtype=torch.float64),
        step_norms=torch.tensor(norms, dtype=torch.float64),
    )


def _gaps(suboptimality: Sequence[float] | torch.Tensor | np.ndarray) -> np.ndarray:
    gaps = np.asarray(
        suboptimality.detach().cpu().numpy()
        if isinstance(suboptimality, torch.Tensor)
        else suboptimality,
        dtype=np.float64,
    )
    if gaps.ndim != 1:
        raise checks.ConfigError(f"suboptimality must be 1-d [K], got shape {list(gaps.shape)}")
    return gaps


def _window(gaps: np.ndarray, start: int, stop: int | None) -> tuple[np.ndarray, np.ndarray]:
    stop = len(gaps) if stop is None else stop
    iterations = np.arange(len(gaps))[start:stop]
    window = gaps[start:stop]
    if len(window) < 2:
        raise checks.ConfigError(
            f"the fit window [{start}, {stop}) holds {len(window)} points, expected >= 2"
        )
    if not np.all(np.isfinite(window)) or np.any(window <= 0):
        bad = int(np.nonzero(~(np.isfinite(window) & (window > 0)))[0][0]) + start
        raise checks.ConfigError(
            f"suboptimality[{bad}] is {float(gaps[bad])!r}; a rate fit needs finite gaps > 0 "
            "(end the window before the gap reaches round-off)"
        )
    return iterations.astype(np.float64), window


@dataclass(frozen=True)
class SublinearRateFit:
    """Least-squares fit ``log gap_t = intercept + slope log t`` over a window of iterations.

    Attributes:
        slope: the fitted exponent (``-1`` for a ``C/t`` rate).
        intercept: the fitted ``log C`` at slope ``slope``.
        constant: ``t gap_t`` at the window's last iterate, the estimate of
            ``C = lim t gap_t`` when ``slope = -1``.
    """

    slope: float
    intercept: float
    constant: float


def fit_sublinear_rate(
    suboptimality: Sequence[float] | torch.Tensor | np.ndarray,
    start: int = 1,
    stop: int | None = None,
) -> SublinearRateFit:
    """Fit ``gap_t ~ C t^slope`` to the gaps ``J* - J(theta_t)``, ``t = start .. stop-1``.

    ``suboptimality[t]`` is the gap at iterate ``t`` (``t = 0`` the start, which a log-log
    fit cannot use; ``start >= 1``). Exact softmax PG on a bandit has ``slope -> -1`` and
    ``t gap_t -> C``: for ``A`` arms, the asymptotic ODE ``dx_a/dt = -eta x_a (x_a + sum_b
    x_b)`` of ``x_a = pi(a)/pi(a*) (r* - r_a)`` has the solution ``x_a = 1/(eta A t)``, so
    ``C = (A - 1)/(A eta)`` (``2/(3 eta)`` for three arms; Mei et al. 2020).
    """
    start = checks.positive_int("start", start)
    iterations, window = _window(_gaps(suboptimality), start, stop)
    slope, intercept = np.polyfit(np.log(iterations), np.log(window), 1)
    return SublinearRateFit(
        slope=float(slope),
        intercept=float(intercept),
        constant=float(iterations[-1] * window[-1]),
    )


@dataclass(frozen=True)
class LinearRateFit:
    """Least-squares fit ``log gap_t = intercept + slope t``.

    Attributes:
        slope: ``d log gap / dt`` (< 0 when converging).
        intercept: fitted ``log gap_0``.
        contraction: ``exp(slope)``, the factor the gap shrinks by per iteration.
    """

    slope: float
    intercept: float
    contraction: float


def fit_linear_rate(
    suboptimality: Sequence[float] | torch.Tensor | np.ndarray,
    start: int = 0,
    stop: int | None = None,
) -> LinearRateFit:
    """Fit ``gap_t ~ exp(intercept + slope t)`` over ``t = start .. stop-1``.

    Exact NPG on a bandit has ``pi_k(a) ~ pi_0(a) exp(k eta r_a)``, so the gap is
    dominated by the closest arm and contracts by ``exp(-eta Delta)`` per step,
    ``Delta = r* - max_{a != a*} r_a``.
    """
    start = checks.integer("start", start, minimum=0)
    iterations, window = _window(_gaps(suboptimality), start, stop)
    slope, intercept = np.polyfit(iterations, np.log(window), 1)
    return LinearRateFit(
        slope=float(slope), intercept=float(intercept), contraction=float(math.exp(slope))
    )
