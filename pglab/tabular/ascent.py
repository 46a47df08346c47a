"""Gradient ascent on a tabular MDP: the exact counterpart of :mod:`pglab.gym.training`.

Policy: tabular softmax pi_theta(a|s) = softmax(theta[s])_a, logits theta ``[S, A]``
float64. Update, for k = 0 .. K-1:

    theta_{k+1} = theta_k + alpha * ghat_k

with ghat_k either the exact gradient dJ/dtheta(theta_k) from the oracle
(``gradient="exact"``, :func:`pglab.tabular.exact.solve`) or the mean of N sampled per-trajectory
gradients of a named estimator (``gradient=<estimator>``,
:func:`pglab.tabular.estimates.sample_gradients`). Because J(theta_k) is computed exactly at
every iteration, the learning curve carries no evaluation noise: only the update is
stochastic.

Randomness: with an estimator, iteration k draws its trajectories with the seed
``iteration_seed(seed, k)`` (a ``numpy.random.SeedSequence`` spawned from (seed, k)), so
iterations are independent, reproducible, and a run can be replayed from any iteration.

Update rules (``update=``, issue 10; :mod:`pglab.tabular.natural`). With
``gradient="exact"`` they use the exact J, gradient and Fisher of the oracle:

==========  ==========================================================  ===============
update      theta_{k+1}                                                 ``step_size``
==========  ==========================================================  ===============
``pg``      ``theta_k + alpha ghat_k`` (exact or sampled ghat)          alpha
``npg``     ``theta_k + eta F^dagger grad J`` (:func:`natural.npg_step`)  eta
``trpo``    :func:`natural.trpo_step`: mean KL <= delta, exact line     delta (nats)
            search on KL and J (``backtrack``, ``max_backtracks``)
==========  ==========================================================  ===============

With a sampled gradient (``gradient=<estimator>``) ``npg`` and ``trpo`` use only the
iteration's N trajectories (no extra sampling, so a seed still fixes the run): the
empirical Fisher ``Fhat = (1/N) sum_i sum_t psi_it psi_it^T`` of the same trajectories as
``ghat`` (:func:`natural.sampled_fisher`), ``x = (Fhat + lambda I)^-1 ghat`` by a dense
float64 solve (``damping`` = lambda), then

* ``npg``: ``theta_{k+1} = theta_k + eta x``;
* ``trpo``: :func:`natural.sampled_trpo_step`, the step along x whose *sampled* quadratic
  KL model equals delta, then a line search on the batch's mean KL over its sampled
  states and the batch's importance-sampled surrogate (never the exact KL or J).

``ppo`` is refused (:func:`check_update`): it needs minibatch epochs over a sampled batch
and its own optimiser; run it with ``experiments/cartpole.py``.

Feature policies: an MDP with ``features`` ``[S, A, d]`` (:attr:`TabularMDP.features`,
e.g. ``zoo.short_corridor``) is ascended in ``theta [d]`` with
``logits = phi theta`` (:mod:`pglab.tabular.features`); ``logits0`` is then ``theta_0 [d]``.
A sampled gradient is mapped by the chain rule, ``ghat_theta = sum_{s,a} ghat[s, a]
phi(s, a)`` (exact for every estimator: ``grad_theta log pi = phi^T grad_logits log pi``).

Divergence: a non-finite gradient or non-finite new logits end the run cleanly with
``status="diverged"`` and collapse reason ``"non_finite"`` (the logits stay at their last
finite value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pglab import checks, estimators
from pglab.collapse import CollapseConfig, CollapseDetector
from pglab.result import TrainResult
from pglab.tabular import estimates, exact, natural
from pglab.tabular.features import check_theta, feature_logits
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import check_logits, entropy
from pglab.threads import thread_invariant

__all__ = [
    "GRADIENT_EXACT",
    "UPDATE_RULES",
    "check_update",
    "iteration_seed",
    "optimal_action_mask",
    "tabular_ascent",
    "tabular_collapse_config",
]

GRADIENT_EXACT = "exact"
#: The update rules :func:`tabular_ascent` runs (PPO: :mod:`pglab.gym.updates` only).
UPDATE_RULES: tuple[str, ...] = natural.EXACT_RULES  # ("pg", "npg", "trpo")


def check_update(update: str, gradient: str) -> str:
    """``update`` if :func:`tabular_ascent` builds it with ``gradient``, else ConfigError.

    ``pg``, ``npg`` and ``trpo`` run with the exact gradient and with every estimator
    (sampled npg/trpo: module docstring). ``ppo`` is not built here: it needs several
    minibatch epochs over a sampled batch with its own optimiser (out of scope for tabular
    ascent); run it with ``experiments/cartpole.py``.
    """
    if update == "ppo":
        raise checks.ConfigError(
            f"update=ppo (gradient={gradient}) is not built for tabular ascent (PPO runs "
            "minibatch epochs over a sampled batch with its own optimiser; run it with "
            "experiments/cartpole.py); tabular ascent takes update=pg|npg|trpo"
        )
    return checks.one_of("update", update, UPDATE_RULES)


def iteration_seed(seed: int, iteration: int) -> int:
    """Seed of iteration ``iteration``'s sampled gradient: 63 bits from SeedSequence([seed, k])."""
    state = np.random.SeedSequence([int(seed), int(iteration)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@thread_invariant
def optimal_action_mask(mdp: TabularMDP, rel_tol: float = 1e-9) -> torch.Tensor:
    """``[T, S, A]`` bool: action a is optimal at (t, s), i.e. Q*_t(s, a) >= V*_t(s) - tol.

    Q*_t(s, a) = r(s, a) + gamma sum_{s'} P(s'|s, a) V*_{t+1}(s') from
    :func:`pglab.tabular.exact.optimal_solution`; ties (within tol = rel_tol * max(1, max|V*|))
    are all optimal, so a state where every action is equally good counts as optimal
    whatever the policy does.
    """
    values, _ = exact.optimal_solution(mdp)
    return _optimal_action_mask(mdp, values, rel_tol)


def _optimal_action_mask(mdp: TabularMDP, values: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """:func:`optimal_action_mask` from the optimal values ``V*`` ``[T+1, S]``."""
    n_states, n_actions = mdp.n_states, mdp.n_actions
    flat = mdp.transitions.reshape(n_states * n_actions, n_states)
    next_values = values[1:] @ flat.T  # [T, S*A]: sum_{s'} P(s'|s,a) V*_{t+1}(s')
    q_star = mdp.rewards + mdp.gamma * next_values.reshape(mdp.horizon, n_states, n_actions)
    tol = rel_tol * max(1.0, float(values.abs().max()))
    return q_star >= values[:-1, :, None] - tol


@thread_invariant
def tabular_collapse_config(
    mdp: TabularMDP, window: int = 10, stationary_return: float | None = None
) -> CollapseConfig:
    """Collapse thresholds on the MDP's own return scale.

    With J_u the return of the uniform policy (theta = 0) and J*_stat the best return of a
    stationary policy (:func:`pglab.tabular.exact.best_stationary_return`; NOT the non-stationary
    optimum J*, which a stationary softmax policy may never reach), let
    J_mid = J_u + (J*_stat - J_u) / 2, "half-way from random to the reachable optimum":

    * ``poor_return = J_mid``: a near-deterministic policy (mean entropy < 0.05 nats over
      the last ``window`` iterations) whose J has stayed at or below J_mid is *stuck*: it
      locked in suboptimal actions and the saturated softmax's gradient vanishes. A run
      that ends near J*_stat is therefore never collapsed at the end (J > J_mid);
    * ``window_episodes = window``: the ascent feeds one exact J(theta_k) per iteration
      (``n_episodes = 1``), so the window is ``window`` iterations;
    * dips: ``min_peak = J_mid`` if J_mid > 0, else ``inf`` (the dip count compares
      against a positive peak), ``drop_fraction = 0.5``;
    * ``entropy_threshold = 0.05``.

    ``stationary_return``: J*_stat if already computed (``None``: computed here).
    """
    checks.instance("mdp", mdp, TabularMDP)
    if stationary_return is None:
        stationary_return = exact.best_stationary_return(mdp)
    return _collapse_config(mdp, window, stationary_return)


def _collapse_config(mdp: TabularMDP, window: int, stationary_return: float) -> CollapseConfig:
    """:func:`tabular_collapse_config` on checked inputs."""
    uniform = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    j_uniform = exact._expected_return(mdp, uniform)
    j_mid = j_uniform + 0.5 * (stationary_return - j_uniform)
    return CollapseConfig(
        window_episodes=window,
        poor_return=j_mid,
        entropy_threshold=0.05,
        drop_fraction=0.5,
        min_peak=j_mid if j_mid > 0 else math.inf,
    )


def _trpo_outcome(step: Any, max_backtracks: int) -> tuple[torch.Tensor, float, float]:
    """``(theta_{k+1}, accepted, backtracks)`` of a TRPO line search (exact or sampled):
    1/0 whether a step was accepted (theta stays otherwise) and the shrinks it took."""
    backtracks = len(step.trials) - 1 if step.accepted else max_backtracks
    return step.theta, float(step.accepted), float(backtracks)


@thread_invariant
def tabular_ascent(
    mdp: TabularMDP,
    logits0: Any,
    step_size: float,
    n_iterations: int,
    gradient: str = GRADIENT_EXACT,
    n_trajectories: int | None = None,
    seed: int = 0,
    detector: CollapseDetector | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    update: str = "pg",
    backtrack: float = 0.5,
    max_backtracks: int = 10,
    damping: float = natural.SAMPLED_DAMPING,
) -> TrainResult:
    """Gradient ascent theta <- theta + alpha ghat on a tabular softmax policy.

    Args:
        mdp: the MDP; with ``mdp.features`` the policy is the feature policy of
            ``theta [d]`` (module docstring).
        logits0: initial logits theta_0 ``[S, A]``, or ``theta_0 [d]`` when the MDP has
            features (copied; never modified).
        step_size: the rule's step (alpha, eta, or delta in nats for trpo), finite and > 0.
        n_iterations: K >= 1 updates.
        gradient: ``"exact"`` or an estimator name from ``estimators.ESTIMATORS``.
        n_trajectories: N >= 1 trajectories per iteration; required for an estimator,
            ignored for ``"exact"`` (which samples nothing).
        seed: base seed of the sampled gradients (see :func:`iteration_seed`).
        detector: collapse detector; ``None`` uses ``tabular_collapse_config(mdp)``
            (thresholds relative to the best stationary return).
        callback: called with each iteration's metrics dict.
        update: ``"pg"``, ``"npg"`` or ``"trpo"`` (module docstring; :func:`check_update`).
        backtrack, max_backtracks: TRPO's line search (:func:`natural.trpo_step`,
            :func:`natural.sampled_trpo_step`).
        damping: lambda >= 0 of the sampled solve ``(Fhat + lambda I) x = ghat`` (sampled
            ``npg``/``trpo`` only; the exact rules use the pseudo-inverse).

    Returns:
        :class:`pglab.result.TrainResult` with ``return_key="expected_return"`` and
        ``final_params={"logits": theta_K}`` (with features: ``{"theta": theta_K,
        "logits": phi theta_K}``). history[k] describes theta_k and the step
        taken from it:

        * ``iteration``: k.
        * ``expected_return``: exact J(theta_k).
        * ``optimal_return``: J*, the best return of ANY policy (possibly non-stationary);
          ``suboptimality``: J* - J(theta_k), against that upper bound, which a stationary
          softmax policy may never reach (FrozenLake 4x4: J* = 0.74419, best stationary
          0.74016), so it need not go to 0.
        * ``stationary_return``: J*_stat, the best return of a stationary policy
          (:func:`pglab.tabular.exact.best_stationary_return`); ``suboptimality_stationary``:
          J*_stat - J(theta_k), the gap a stationary policy can close (it goes to 0 when
          the ascent converges to the best stationary policy; slightly negative if a
          stochastic stationary policy beats the deterministic reference).
        * ``entropy``: occupancy-weighted mean entropy over real decisions,
          sum_t sum_{s not terminal} d_t(s) H(s) / sum_t sum_{s not terminal} d_t(s), nats;
          the analogue of CartPole's mean over the batch's states (fed to the detector).
        * ``entropy_states``: plain mean of H(s) over non-terminal states.
        * ``p_optimal``: probability that a real decision is optimal,
          sum_t sum_{s not terminal} d_t(s) pi(A*_t(s)|s) / sum_t sum_{s not terminal} d_t(s),
          where A*_t(s) is the set of optimal actions at (t, s) (:func:`optimal_action_mask`)
          and d_t the exact occupancy under pi_k. 1 means the policy only ever takes
          optimal actions. NaN if only terminal states are reachable.
        * ``grad_norm``: ||ghat_k||_2; ``exact_grad_norm``: ||dJ/dtheta(theta_k)||_2 (in
          theta's space: ``[d]`` with features).
        * ``kl``: exact mean KL(pi_k || pi_{k+1}) over the states pi_k visits
          (:func:`natural.mean_kl`), for every rule and gradient, sampled ones included
          (there a diagnostic only: sampled TRPO bounds the batch's sampled mean KL);
          ``step_norm``: ||theta_{k+1} - theta_k||_2 (both NaN when no update was applied).
        * ``backtracks``, ``accepted``: TRPO's shrinks taken and 1/0 whether a step was
          accepted (theta stays otherwise); NaN for the other rules.
        * ``collapsed`` (the detector's verdict as of iteration k: stuck over the last
          window, or diverged; cleared when a stuck run climbs out), ``diverged``.

        ``result.collapse`` and ``summary()["collapsed"]`` are the verdict at the END of
        the run (see :mod:`pglab.collapse`).

    Raises:
        ValueError: before any work, for a bad step size, iteration count, gradient name,
            trajectory count or logits.
    """
    checks.instance("mdp", mdp, TabularMDP)
    step_size = checks.positive_real("step_size", step_size)
    n_iterations = checks.positive_int("n_iterations", n_iterations)
    if gradient != GRADIENT_EXACT:
        checks.one_of("gradient", gradient, (GRADIENT_EXACT, *estimators.ESTIMATORS))
        n_trajectories = checks.positive_int("n_trajectories", n_trajectories)
    seed = checks.seed("seed", seed)
    check_update(update, gradient)
    backtrack = checks.real("backtrack", backtrack, 0.0, 1.0, low_open=True, high_open=True)
    max_backtracks = checks.integer("max_backtracks", max_backtracks, minimum=0)
    damping = checks.real("damping", damping, 0.0)
    phi = mdp.features
    if phi is None:
        theta = check_logits(logits0, mdp.n_states, mdp.n_actions).detach().clone()
    else:
        theta = check_theta(logits0, int(phi.shape[2])).detach().clone()
    if detector is not None:
        checks.instance("detector", detector, CollapseDetector)

    # From here on every input is checked: the oracle and the sampler trust them.
    optimal_values, _ = exact._optimal_solution(mdp)
    j_star = float(mdp.initial @ optimal_values[0])
    j_stationary = exact.best_stationary_return(mdp)
    if detector is None:
        detector = CollapseDetector(_collapse_config(mdp, 10, j_stationary))
    detector.reset()

    optimal = _optimal_action_mask(mdp, optimal_values, 1e-9).to(torch.float64)  # [T, S, A]
    live = (~mdp.terminal).to(torch.float64)  # [S]
    history: list[dict[str, Any]] = []
    status = "complete"

    for k in range(n_iterations):
        logits = theta if phi is None else feature_logits(phi, theta)
        solution = exact._solve(mdp, logits)
        pi = solution.policy  # [S, A]
        weight = solution.occupancy * live  # [T, S]: d_t(s) on real decisions
        total = float(weight.sum())
        h = entropy(pi)  # [S]
        ent = float((weight * h).sum() / total) if total > 0 else math.nan
        ent_states = float((h * live).sum() / live.sum()) if live.sum() > 0 else math.nan
        p_opt = float((weight * (optimal * pi).sum(-1)).sum() / total) if total > 0 else math.nan
        exact_gradient = solution.gradient
        if phi is not None:  # chain rule through logits = phi theta
            exact_gradient = torch.einsum("sa,sak->k", solution.gradient, phi)

        counts = None  # [S*A] decisions of the batch, for the sampled Fisher (npg, trpo)
        if gradient == GRADIENT_EXACT:
            g = exact_gradient
        else:
            if update != "pg":
                counts = torch.zeros(mdp.n_states * mdp.n_actions, dtype=torch.float64)
            samples = estimates._sample_gradients(
                mdp, logits, n_trajectories, gradient, iteration_seed(seed, k), counts
            )
            g = torch.as_tensor(samples, dtype=torch.float64).mean(dim=0)  # [S, A]
            g_logits = g
            if phi is not None:
                g = torch.einsum("sa,sak->k", g, phi)

        finite = bool(torch.isfinite(g).all())
        kl = step_norm = backtracks = accepted = math.nan
        if finite:
            if update == "pg":
                new_theta = theta + step_size * g  # theta_{k+1} = theta_k + alpha ghat_k
            elif counts is not None and update == "npg":
                # x = (Fhat + lambda I)^-1 ghat from the same N trajectories as ghat
                fisher = natural.sampled_fisher(
                    solution.policy, counts.view_as(pi), n_trajectories, phi
                )
                x = natural.sampled_natural_direction(fisher, g, damping)
                new_theta = theta + step_size * x  # theta_{k+1} = theta_k + eta x
            elif counts is not None:
                step = natural.sampled_trpo_step(
                    theta,
                    g_logits,
                    counts.view_as(pi),
                    n_trajectories,
                    step_size,
                    features=phi,
                    damping=damping,
                    backtrack=backtrack,
                    max_backtracks=max_backtracks,
                )
                new_theta, accepted, backtracks = _trpo_outcome(step, max_backtracks)
            elif update == "npg":
                new_theta = natural.npg_step(mdp, theta, step_size, features=phi)
            else:
                step = natural.trpo_step(
                    mdp,
                    theta,
                    step_size,
                    features=phi,
                    backtrack=backtrack,
                    max_backtracks=max_backtracks,
                )
                new_theta, accepted, backtracks = _trpo_outcome(step, max_backtracks)
            finite = bool(torch.isfinite(new_theta).all())
            if finite:
                new_logits = new_theta if phi is None else feature_logits(phi, new_theta)
                kl = natural._mean_kl(mdp, solution, logits, new_logits)
                step_norm = float((new_theta - theta).norm())
                theta = new_theta

        collapse = detector.update(k, solution.expected_return, ent, finite, n_episodes=1)
        metrics = {
            "iteration": k,
            "expected_return": solution.expected_return,
            "optimal_return": j_star,
            "suboptimality": j_star - solution.expected_return,
            "stationary_return": j_stationary,
            "suboptimality_stationary": j_stationary - solution.expected_return,
            "entropy": ent,
            "entropy_states": ent_states,
            "p_optimal": p_opt,
            "grad_norm": float(g.norm()),
            "exact_grad_norm": float(exact_gradient.norm()),
            "kl": kl,
            "step_norm": step_norm,
            "backtracks": backtracks,
            "accepted": accepted,
            "collapsed": collapse.collapsed,
            "diverged": not finite,
        }
        history.append(metrics)
        if callback is not None:
            callback(metrics)
        if not finite:
            status = "diverged"
            break

    return TrainResult(
        history=history,
        status=status,
        collapse=detector.status,
        final_params=(
            {"logits": theta.clone()}
            if phi is None
            else {"theta": theta.clone(), "logits": feature_logits(phi, theta)}
        ),
        return_key="expected_return",
    )
