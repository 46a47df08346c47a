"""Feature-based (linear-softmax) policies on a tabular MDP, and the short corridor.

A feature policy scores every state-action pair with a feature vector and one shared
parameter vector ``theta`` of length ``d``::

    logits[s, a] = theta . phi(s, a),      pi_theta(a | s) = softmax_a(logits[s, .]),

with features ``phi`` of shape ``[S, A, d]`` (float64). One-hot features,
``phi(s, a) = e_{s A + a}`` (``d = S A``, :func:`one_hot_features`), give
``logits = theta.reshape(S, A)``: the tabular softmax of :mod:`pglab.tabular.policy` exactly.
Fewer features than state-action pairs tie states together (the short corridor's two
features give every state the same policy).

Exact return and gradient come from the tabular oracle (:mod:`pglab.tabular.exact`) by the
chain rule through ``logits = phi theta``::

    J(theta)      = J_tab(phi theta)
    grad_theta J  = sum_{s, a} dJ_tab/dlogits[s, a] * phi[s, a, :]                  [d]
                  = sum_t gamma^t sum_s d_t(s) sum_a pi(a|s) A_t(s, a) phi(s, a),

with ``dJ_tab/dlogits`` the policy-gradient theorem of :func:`pglab.tabular.exact.solve`.
The score is ``grad_theta log pi(a|s) = phi(s, a) - sum_b pi(b|s) phi(s, b)``
(:func:`scores`).

Everything is float64 on the CPU, like :class:`~pglab.tabular.mdp.TabularMDP`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pglab import checks
from pglab.tabular import exact
from pglab.tabular.mdp import TabularMDP

__all__ = [
    "FeatureSolution",
    "check_features",
    "check_theta",
    "corridor_return",
    "feature_expected_return",
    "feature_gradient",
    "feature_logits",
    "feature_policy",
    "feature_solve",
    "one_hot_features",
    "scores",
    "short_corridor",
    "CORRIDOR_OPTIMAL_P",
    "CORRIDOR_OPTIMAL_RETURN",
]

#: Sutton & Barto, Example 13.1: the best probability of "right", ``p* = 2 - sqrt(2)``.
CORRIDOR_OPTIMAL_P = 2.0 - math.sqrt(2.0)
#: ... and its value from the start state, ``J(p*) = -(6 + 4 sqrt(2)) = -11.657``.
CORRIDOR_OPTIMAL_RETURN = -(6.0 + 4.0 * math.sqrt(2.0))


def _as_float64(field: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise checks.ConfigError(
            f"{field} must be a numeric array, got {value!r}: {error}"
        ) from None


def check_features(features: Any, n_states: int, n_actions: int) -> torch.Tensor:
    """Validate features ``phi`` against an MDP's sizes; return them as ``[S, A, d]`` float64.

    Raises:
        ConfigError: wrong rank or leading shape (naming both shapes), ``d = 0``, or a
            non-finite entry (naming its index).
    """
    phi = _as_float64("features", features)
    if phi.dim() != 3 or tuple(phi.shape[:2]) != (n_states, n_actions) or phi.shape[2] == 0:
        raise checks.ConfigError(
            f"features has shape {list(phi.shape)}, expected [S, A, d] = "
            f"[{n_states}, {n_actions}, d] with d >= 1 (n_states, n_actions of the MDP)"
        )
    finite = torch.isfinite(phi)
    if not bool(finite.all()):
        s, a, k = (int(i) for i in torch.nonzero(~finite)[0])
        raise checks.ConfigError(
            f"features[{s}, {a}, {k}] is {phi[s, a, k].item()}; features must be finite"
        )
    return phi


def check_theta(theta: Any, n_features: int) -> torch.Tensor:
    """Validate parameters ``theta`` ``[d]``; return them as float64 (a new tensor)."""
    vector = _as_float64("theta", theta)
    if tuple(vector.shape) != (n_features,):
        raise checks.ConfigError(
            f"theta has shape {list(vector.shape)}, expected [d] = [{n_features}] (the features' d)"
        )
    if not bool(torch.isfinite(vector).all()):
        k = int(torch.nonzero(~torch.isfinite(vector))[0])
        raise checks.ConfigError(f"theta[{k}] is {vector[k].item()}; theta must be finite")
    return vector.clone()


def one_hot_features(n_states: int, n_actions: int) -> torch.Tensor:
    """``[S, A, S A]`` one-hot features ``phi(s, a) = e_{s A + a}``: ``phi theta`` is
    ``theta.reshape(S, A)``, the tabular softmax."""
    n_states = checks.positive_int("n_states", n_states)
    n_actions = checks.positive_int("n_actions", n_actions)
    eye = torch.eye(n_states * n_actions, dtype=torch.float64)
    return eye.reshape(n_states, n_actions, n_states * n_actions)


def feature_logits(features: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``logits[s, a] = sum_k phi[s, a, k] theta[k]``: ``[S, A, d], [d] -> [S, A]``
    (differentiable in ``theta``; no checks, for checked inputs)."""
    return torch.einsum("sak,k->sa", features, theta)


def feature_policy(features: Any, theta: Any) -> torch.Tensor:
    """``pi(a | s) = softmax_a(theta . phi(s, a))``, ``[S, A]`` float64, rows summing to 1."""
    phi = _as_float64("features", features)
    if phi.dim() != 3:
        raise checks.ConfigError(f"features must have shape [S, A, d], got {list(phi.shape)}")
    vector = check_theta(theta, int(phi.shape[2]))
    return torch.softmax(feature_logits(phi, vector), dim=-1)


def scores(features: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Score vectors ``grad_theta log pi(a|s) = phi(s, a) - sum_b pi(b|s) phi(s, b)``.

    Args:
        features: ``[S, A, d]``.
        policy: ``[S, A]`` the policy's probabilities.

    Returns:
        ``[S, A, d]`` float64.
    """
    mean = torch.einsum("sa,sak->sk", policy, features)  # phi_bar(s) = E_pi[phi(s, a)]
    return features - mean[:, None, :]


@dataclass(frozen=True)
class FeatureSolution:
    """The oracle's answer for a feature policy (all float64).

    Attributes:
        theta: ``[d]`` the parameters.
        logits: ``[S, A]`` ``phi theta``.
        solution: the tabular :class:`~pglab.tabular.exact.ExactSolution` of ``logits``
            (policy, ``V_t``, ``Q_t``, ``d_t``, ``J``, ``dJ/dlogits``).
        gradient: ``[d]`` ``grad_theta J = sum_{s,a} dJ/dlogits[s, a] phi[s, a, :]``.
    """

    theta: torch.Tensor
    logits: torch.Tensor
    solution: exact.ExactSolution
    gradient: torch.Tensor

    @property
    def expected_return(self) -> float:
        """``J(theta)``."""
        return self.solution.expected_return


def _checked(mdp: TabularMDP, features: Any, theta: Any) -> tuple[torch.Tensor, torch.Tensor]:
    checks.instance("mdp", mdp, TabularMDP)
    phi = check_features(features, mdp.n_states, mdp.n_actions)
    return phi, check_theta(theta, int(phi.shape[2]))


def feature_solve(mdp: TabularMDP, features: Any, theta: Any) -> FeatureSolution:
    """Exact ``J``, ``grad_theta J`` (and the whole tabular solution) of a feature policy.

    Args:
        mdp: the MDP (``S`` states, ``A`` actions).
        features: ``[S, A, d]`` ``phi``.
        theta: ``[d]`` parameters.
    """
    phi, vector = _checked(mdp, features, theta)
    logits = feature_logits(phi, vector)
    solution = exact.solve(mdp, logits)
    gradient = torch.einsum("sa,sak->k", solution.gradient, phi)
    return FeatureSolution(theta=vector, logits=logits, solution=solution, gradient=gradient)


def feature_expected_return(mdp: TabularMDP, features: Any, theta: Any) -> float:
    """``J(theta) = J_tab(phi theta)`` (backward recursion, float64)."""
    phi, vector = _checked(mdp, features, theta)
    return exact.expected_return(mdp, feature_logits(phi, vector))


def feature_gradient(mdp: TabularMDP, features: Any, theta: Any) -> torch.Tensor:
    """``grad_theta J = sum_{s,a} dJ/dlogits[s, a] phi[s, a, :]``, ``[d]`` float64."""
    return feature_solve(mdp, features, theta).gradient


# ---------------------------------------------------------------------------------------
# Sutton & Barto, Example 13.1: the short corridor with switched actions
# ---------------------------------------------------------------------------------------
def corridor_return(p: float) -> float:
    """Closed-form value of the start state of the (infinite-horizon) short corridor.

    With ``p`` the probability of ``right`` in every state, the values ``v1, v2, v3`` of the
    three non-terminal states solve (``-1`` per step, the middle state swapped)::

        v1 = -1 + p v2 + (1 - p) v1
        v2 = -1 + p v1 + (1 - p) v3
        v3 = -1 + (1 - p) v2           (right from state 3 reaches the goal)

    whose solution is ``v1 = 2 (p - 2) / (p (1 - p))`` for ``0 < p < 1`` (``-inf`` at the
    ends: the agent never arrives). Maximised at ``p* = 2 - sqrt(2)``, where
    ``v1 = -(6 + 4 sqrt(2)) = -11.657``.
    """
    p = checks.probability("p", p)
    if p in (0.0, 1.0):
        return -math.inf
    return 2.0 * (p - 2.0) / (p * (1.0 - p))


def short_corridor(horizon: int = 200, gamma: float = 1.0) -> tuple[TabularMDP, torch.Tensor]:
    """The short corridor with switched actions (Sutton & Barto 2018, Example 13.1).

    ==========  ============================================================================
    States      ``0, 1, 2`` along a corridor, ``3 = goal`` (terminal)
    Actions     ``0 = left``, ``1 = right``
    Start       state 0 with probability 1
    Rewards     ``-1`` on every step from a non-terminal state
    Episode     ends on reaching the goal, or after ``horizon`` decisions
    Features    ``phi(s, right) = [1, 0]``, ``phi(s, left) = [0, 1]`` for every ``s``, so
                every state has the same policy, ``p = pi(right) = sigmoid(theta_0 - theta_1)``
    ==========  ============================================================================

    Transitions (deterministic):

    =====  ===================  ===================
    state  left                 right
    =====  ===================  ===================
    0      0 (wall)             1
    1      2 (swapped)          0 (swapped)
    2      1                    3 (goal)
    =====  ===================  ===================

    Why: the agent cannot tell the states apart, and any deterministic policy never
    reaches the goal (always right sticks between 0 and 1, always left at the wall of 0),
    so the best policy is stochastic: ``p* = 2 - sqrt(2) = 0.5858`` with value
    ``-(6 + 4 sqrt(2)) = -11.657`` (:func:`corridor_return`), a case only a policy that
    shares parameters across states can express.

    Horizon: the textbook task has no time limit. With ``horizon = T`` the return misses
    only the episodes still running after ``T`` steps; at ``p*`` the probability of still
    running decays like ``0.899^t`` (the spectral radius of the transient chain), so the
    default ``T = 200`` matches the textbook value to 6.6e-9 (measured: 2.8e-4 at
    ``T = 100``, 1.5e-13 at 300; the oracle's cost grows linearly in ``T``). Policies close to deterministic keep
    episodes longer (the radius tends to 1 as ``p`` tends to 0 or 1), and there the
    finite-horizon ``J`` is above the textbook value. ``gamma`` is 1 in the textbook.

    Returns:
        ``(mdp, features [4, 2, 2])``; the MDP also carries them (``mdp.features``).
    """
    horizon = checks.positive_int("horizon", horizon)
    left, right = 0, 1
    goal = 3
    moves = {0: {left: 0, right: 1}, 1: {left: 2, right: 0}, 2: {left: 1, right: goal}}
    transitions = torch.zeros(4, 2, 4, dtype=torch.float64)
    for s, by_action in moves.items():
        for a, s_next in by_action.items():
            transitions[s, a, s_next] = 1.0
    transitions[goal, :, goal] = 1.0
    rewards = torch.full((4, 2), -1.0, dtype=torch.float64)
    rewards[goal] = 0.0
    terminal = np.array([False, False, False, True])
    features = torch.zeros(4, 2, 2, dtype=torch.float64)
    features[:, right, 0] = 1.0
    features[:, left, 1] = 1.0
    mdp = TabularMDP(
        transitions=transitions,
        rewards=rewards,
        initial=[1.0, 0.0, 0.0, 0.0],
        horizon=horizon,
        gamma=gamma,
        terminal=terminal,
        name="short_corridor",
        state_names=("s1", "s2_swapped", "s3", "goal"),
        action_names=("left", "right"),
        features=features,
    )
    return mdp, features
