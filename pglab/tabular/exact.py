"""The exact oracle: values, occupancies, return and policy gradient of a tabular MDP.

For a tabular softmax policy ``pi = softmax(theta)`` on a finite-horizon
:class:`~pglab.tabular.mdp.TabularMDP` everything the estimators try to measure can be computed
exactly by dynamic programming, in float64:

* backward (Bellman) recursion, ``V_T = 0``::

      Q_t(s, a) = r(s, a) + gamma * sum_{s'} P(s' | s, a) V_{t+1}(s')
      V_t(s)    = sum_a pi(a | s) Q_t(s, a)

* forward recursion for the state distribution, ``d_0 = rho``::

      d_{t+1}(s') = sum_{s, a} d_t(s) pi(a | s) P(s' | s, a)

* the objective ``J(theta) = sum_s rho(s) V_0(s) = E[sum_{t<T} gamma^t r(s_t, a_t)]``;

* the finite-horizon policy-gradient theorem. With ``d pi(a|s) / d theta[s, b] =
  pi(a|s) (1[a = b] - pi(b|s))``::

      dJ / d theta[s, b] = sum_{t=0}^{T-1} gamma^t d_t(s) pi(b | s) (Q_t(s, b) - V_t(s)).

Terminal states are absorbing with zero reward, so ``Q_t = V_t = 0`` there and they add
nothing to the gradient; their probability mass stays in ``d_t``, so ``sum_s d_t(s) = 1``.

Costs: ``O(T nnz(P))`` time, where ``nnz(P) <= S^2 A`` counts the non-zero transition
probabilities (sparse ``P`` is handled by gathering its non-zeros); Taxi (``S = 501``,
``A = 6``, ``T = 200``) takes 0.02-0.15 s on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pglab import checks
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import check_logits, softmax_policy
from pglab.threads import thread_invariant

__all__ = [
    "GRADIENT_METHODS",
    "ExactSolution",
    "expected_return",
    "optimal_return",
    "optimal_solution",
    "policy_gradient",
    "solve",
]

#: The ``method`` values accepted by :func:`policy_gradient`.
GRADIENT_METHODS = ("theorem", "autograd")

# Use the sparse (gather / index_add) path when at most this fraction of P is non-zero.
_SPARSE_DENSITY = 0.1


@dataclass(frozen=True)
class ExactSolution:
    """Everything the oracle knows about one policy on one MDP (all float64, CPU).

    Attributes:
        policy: ``[S, A]`` ``pi(a | s) = softmax(theta[s])_a``.
        values: ``[T+1, S]`` ``V_t(s) = E[sum_{k=t}^{T-1} gamma^{k-t} r_k | s_t = s]``,
            with ``V_T = 0``.
        q_values: ``[T, S, A]`` ``Q_t(s, a) = r(s, a) + gamma sum_{s'} P(s'|s,a) V_{t+1}(s')``.
        occupancy: ``[T, S]`` ``d_t(s) = P(s_t = s)`` (undiscounted; terminal mass included,
            so each row sums to 1).
        expected_return: ``J = sum_s rho(s) V_0(s)``.
        gradient: ``[S, A]`` ``dJ/dtheta`` by the policy-gradient theorem.
    """

    policy: torch.Tensor
    values: torch.Tensor
    q_values: torch.Tensor
    occupancy: torch.Tensor
    expected_return: float
    gradient: torch.Tensor

    @property
    def advantages(self) -> torch.Tensor:
        """``[T, S, A]`` ``A_t(s, a) = Q_t(s, a) - V_t(s)``."""
        return self.q_values - self.values[:-1, :, None]


class _Dynamics:
    """``P`` as a linear map, stored sparsely when most entries are zero.

    ``expect(v)[s, a] = sum_{s'} P(s'|s,a) v(s')`` and
    ``push(x)[s'] = sum_{s,a} x(s, a) P(s'|s,a)``. Gymnasium models have a handful of
    successors per ``(s, a)`` (Taxi: 3006 of 1.5 million entries), where gathering the
    non-zeros is ~50x faster than dense matrix-vector products.
    """

    def __init__(self, mdp: TabularMDP) -> None:
        self.n_states, self.n_actions = mdp.n_states, mdp.n_actions
        flat = mdp.transitions.reshape(self.n_states * self.n_actions, self.n_states)
        nonzero = flat != 0
        self.sparse = int(nonzero.sum()) <= _SPARSE_DENSITY * flat.numel()
        if self.sparse:
            self.rows, self.cols = torch.nonzero(nonzero, as_tuple=True)  # (s*A + a, s')
            self.probs = flat[self.rows, self.cols]
        else:
            self.flat = flat  # [S*A, S]

    def expect(self, values: torch.Tensor) -> torch.Tensor:
        """``[S]`` -> ``[S, A]``: ``E[v(s') | s, a]``."""
        if self.sparse:
            out = torch.zeros(self.n_states * self.n_actions, dtype=torch.float64)
            out.index_add_(0, self.rows, self.probs * values.index_select(0, self.cols))
        else:
            out = self.flat @ values
        return out.reshape(self.n_states, self.n_actions)

    def push(self, state_action: torch.Tensor) -> torch.Tensor:
        """``[S, A]`` -> ``[S]``: mass of ``x(s, a)`` moved one step forward."""
        flat_mass = state_action.reshape(-1)
        if self.sparse:
            out = torch.zeros(self.n_states, dtype=torch.float64)
            return out.index_add_(0, self.cols, self.probs * flat_mass.index_select(0, self.rows))
        return flat_mass @ self.flat


def _logits_for(mdp: TabularMDP, logits: Any) -> torch.Tensor:
    """The public entry points' one check: ``mdp`` is an MDP and ``logits`` fit it."""
    checks.instance("mdp", mdp, TabularMDP)
    return check_logits(logits, mdp.n_states, mdp.n_actions)


def _backward(
    mdp: TabularMDP, policy: torch.Tensor, dynamics: _Dynamics | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bellman recursion: ``(V [T+1, S], Q [T, S, A])`` for a fixed policy (no autograd)."""
    dynamics = _Dynamics(mdp) if dynamics is None else dynamics
    values = torch.zeros(mdp.horizon + 1, mdp.n_states, dtype=torch.float64)
    q_values = torch.empty(mdp.horizon, mdp.n_states, mdp.n_actions, dtype=torch.float64)
    for t in range(mdp.horizon - 1, -1, -1):
        # Q_t(s, a) = r(s, a) + gamma sum_s' P(s'|s,a) V_{t+1}(s')
        q_values[t] = mdp.rewards + mdp.gamma * dynamics.expect(values[t + 1])
        # V_t(s) = sum_a pi(a|s) Q_t(s, a)
        values[t] = (policy * q_values[t]).sum(dim=-1)
    return values, q_values


def _forward(
    mdp: TabularMDP, policy: torch.Tensor, dynamics: _Dynamics | None = None
) -> torch.Tensor:
    """State distributions ``d_t(s) = P(s_t = s)``, ``[T, S]``."""
    dynamics = _Dynamics(mdp) if dynamics is None else dynamics
    occupancy = torch.empty(mdp.horizon, mdp.n_states, dtype=torch.float64)
    occupancy[0] = mdp.initial
    for t in range(mdp.horizon - 1):
        # d_{t+1}(s') = sum_{s,a} d_t(s) pi(a|s) P(s'|s,a)
        occupancy[t + 1] = dynamics.push(occupancy[t, :, None] * policy)
    return occupancy


def _discounts(mdp: TabularMDP) -> torch.Tensor:
    """``[T]`` ``gamma^t`` (with ``0^0 = 1``)."""
    return mdp.gamma ** torch.arange(mdp.horizon, dtype=torch.float64)


@thread_invariant
def solve(mdp: TabularMDP, logits: Any) -> ExactSolution:
    """Exact values, occupancies, return and gradient of ``softmax(logits)`` on ``mdp``.

    Args:
        mdp: the MDP.
        logits: ``[S, A]`` real logits ``theta`` (tensor, array or list); validated against
            ``mdp`` (shape and finiteness) before any work.

    Returns:
        :class:`ExactSolution`; the gradient uses the policy-gradient theorem
        ``dJ/dtheta[s, b] = sum_t gamma^t d_t(s) pi(b|s) (Q_t(s, b) - V_t(s))``.
    """
    return _solve(mdp, _logits_for(mdp, logits).detach())


def _solve(mdp: TabularMDP, theta: torch.Tensor) -> ExactSolution:
    """:func:`solve` for checked, detached float64 logits ``[S, A]``."""
    policy = softmax_policy(theta)
    dynamics = _Dynamics(mdp)
    values, q_values = _backward(mdp, policy, dynamics)
    occupancy = _forward(mdp, policy, dynamics)
    advantages = q_values - values[:-1, :, None]  # [T, S, A]
    weights = _discounts(mdp)[:, None] * occupancy  # [T, S]  gamma^t d_t(s)
    gradient = policy * torch.einsum("ts,tsa->sa", weights, advantages)
    return ExactSolution(
        policy=policy,
        values=values,
        q_values=q_values,
        occupancy=occupancy,
        expected_return=float(mdp.initial @ values[0]),
        gradient=gradient,
    )


@thread_invariant
def expected_return(mdp: TabularMDP, logits: Any) -> float:
    """``J(theta) = sum_s rho(s) V_0(s)`` by the backward recursion (float64)."""
    return _expected_return(mdp, _logits_for(mdp, logits).detach())


def _expected_return(mdp: TabularMDP, theta: torch.Tensor) -> float:
    values, _ = _backward(mdp, softmax_policy(theta))
    return float(mdp.initial @ values[0])


def _autograd_gradient(mdp: TabularMDP, theta: torch.Tensor) -> torch.Tensor:
    """``dJ/dtheta`` by reverse-mode differentiation of the Bellman recursion.

    Shares no code with the theorem path beyond ``softmax``: it never forms ``d_t`` or
    advantages, it only differentiates ``J = rho . V_0``.
    """
    leaf = theta.detach().clone().requires_grad_(True)
    policy = torch.softmax(leaf, dim=-1)
    value = torch.zeros(mdp.n_states, dtype=torch.float64)
    for _ in range(mdp.horizon):
        # V_t(s) = sum_a pi(a|s) [r(s,a) + gamma sum_s' P(s'|s,a) V_{t+1}(s')]
        q_value = mdp.rewards + mdp.gamma * torch.einsum("sat,t->sa", mdp.transitions, value)
        value = (policy * q_value).sum(dim=-1)
    objective = mdp.initial @ value
    (gradient,) = torch.autograd.grad(objective, leaf)
    return gradient


@thread_invariant
def policy_gradient(mdp: TabularMDP, logits: Any, method: str = "theorem") -> torch.Tensor:
    """Exact ``dJ/dtheta``, ``[S, A]`` float64.

    Args:
        mdp: the MDP.
        logits: ``[S, A]`` logits ``theta``.
        method: ``"theorem"`` (policy-gradient theorem, as in :func:`solve`) or
            ``"autograd"`` (reverse-mode autodiff through the backward Bellman recursion,
            an independent code path used to cross-check the theorem).
    """
    checks.one_of("gradient method", method, GRADIENT_METHODS)
    theta = _logits_for(mdp, logits)
    if method == "autograd":
        return _autograd_gradient(mdp, theta)
    return _solve(mdp, theta.detach()).gradient


@thread_invariant
def optimal_solution(mdp: TabularMDP) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal values and a greedy optimal (time-dependent, deterministic) policy.

    Backward induction, ``V*_T = 0``::

        Q*_t(s, a) = r(s, a) + gamma sum_{s'} P(s'|s,a) V*_{t+1}(s'),  V*_t(s) = max_a Q*_t(s, a).

    Returns:
        ``(values [T+1, S] float64, actions [T, S] int64)`` where ``actions[t, s]`` is an
        argmax of ``Q*_t(s, .)`` (the lowest action index among ties). The optimum over all
        policies may be non-stationary; a stationary softmax policy can reach at most
        ``optimal_return(mdp)``.
    """
    return _optimal_solution(checks.instance("mdp", mdp, TabularMDP))


def _optimal_solution(mdp: TabularMDP) -> tuple[torch.Tensor, torch.Tensor]:
    dynamics = _Dynamics(mdp)
    values = torch.zeros(mdp.horizon + 1, mdp.n_states, dtype=torch.float64)
    actions = torch.empty(mdp.horizon, mdp.n_states, dtype=torch.int64)
    for t in range(mdp.horizon - 1, -1, -1):
        q_values = mdp.rewards + mdp.gamma * dynamics.expect(values[t + 1])
        # argmax returns the first maximal index, so ties go to the lowest action.
        actions[t] = torch.argmax(q_values, dim=-1)
        values[t] = q_values.gather(1, actions[t, :, None]).squeeze(1)
    return values, actions


def optimal_return(mdp: TabularMDP) -> float:
    """``J* = sum_s rho(s) V*_0(s)``, the best expected return of any policy."""
    values, _ = optimal_solution(mdp)
    return float(mdp.initial @ values[0])


def _deterministic_logits(mdp: TabularMDP, actions: torch.Tensor) -> torch.Tensor:
    """Logits of the deterministic policy a(s): 0 on a(s), -1000 elsewhere (exp(-1000) = 0)."""
    logits = torch.full((mdp.n_states, mdp.n_actions), -1000.0, dtype=torch.float64)
    logits[torch.arange(mdp.n_states), actions] = 0.0
    return logits


@thread_invariant
def best_stationary_policy(
    mdp: TabularMDP, max_steps: int = 200, max_switch_trials: int = 8
) -> tuple[float, torch.Tensor]:
    """The best *stationary* deterministic policy found by local search, and its return.

    A stationary softmax policy (what :func:`solve` evaluates and the ascent optimises)
    cannot in general reach ``optimal_return(mdp)``, whose optimum may depend on t; e.g.
    slippery FrozenLake 4x4 (T = 100): J* = 0.74419, best stationary 0.74016. This returns
    a reference a stationary policy can reach:

    1. start from a(s) = actions*[0, s], the non-stationary optimum's greedy actions at t = 0;
    2. stationary policy improvement: with Q_t, d_t of the current policy, switch every
       visited state to argmax_a sum_t gamma^t d_t(s) Q_t(s, a) (the occupancy-weighted
       action value, the coordinate the policy gradient favours); keep it if J increases;
    3. otherwise try switching single states, largest gain first (at most
       ``max_switch_trials``), keeping the first that increases J; stop when none does
       (or after ``max_steps`` accepted steps).

    J increases strictly at every accepted step, so the search ends at a policy no single
    switch improves. The result is exact for single-state MDPs (bandits: argmax r) and a
    lower bound on sup over stationary policies in general (a stochastic stationary policy
    can do better in rare cases, so J(theta) may exceed it slightly). Cost: a few
    :func:`solve` calls (milliseconds for the zoo's small MDPs).

    Returns:
        ``(J, actions [S] int64)``.
    """
    checks.instance("mdp", mdp, TabularMDP)
    _, optimal_actions = _optimal_solution(mdp)
    actions = optimal_actions[0].clone()
    best = _expected_return(mdp, _deterministic_logits(mdp, actions))
    discounts = _discounts(mdp)[:, None]
    for _ in range(max_steps):
        solution = _solve(mdp, _deterministic_logits(mdp, actions))
        occupancy = (discounts * solution.occupancy)[:, :, None]  # [T, S, 1]
        score = (occupancy * solution.q_values).sum(0)  # [S, A]: sum_t gamma^t d_t(s) Q_t(s, a)
        visited = solution.occupancy.sum(0) > 0
        greedy = torch.where(visited, score.argmax(-1), actions)
        gain = score.max(-1).values - score.gather(1, actions[:, None]).squeeze(1)
        candidates = []
        if not torch.equal(greedy, actions):
            candidates.append(greedy)
        for s in torch.argsort(gain, descending=True)[:max_switch_trials].tolist():
            if gain[s] > 0 and visited[s] and greedy[s] != actions[s]:
                single = actions.clone()
                single[s] = greedy[s]
                candidates.append(single)
        for candidate in candidates:
            value = _expected_return(mdp, _deterministic_logits(mdp, candidate))
            if value > best + 1e-12 * max(1.0, abs(best)):
                best, actions = value, candidate
                break
        else:
            break
    return best, actions


def best_stationary_return(mdp: TabularMDP) -> float:
    """J of :func:`best_stationary_policy`: the best return a stationary policy is known to
    reach (<= ``optimal_return(mdp)``, the non-stationary optimum)."""
    return best_stationary_policy(mdp)[0]
