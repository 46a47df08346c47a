"""Exact-gradient ascent of R runs on ONE tabular MDP, advanced together.

Every run r = 0 .. R-1 has its own initial parameters, step size ``alpha_r``, iteration
budget ``K_r`` and collapse detector, and takes the plain exact policy-gradient step of
:func:`pglab.tabular.ascent.tabular_ascent` (``gradient="exact"``, ``update="pg"``)::

    theta^r_{k+1} = theta^r_k + alpha_r dJ/dtheta(theta^r_k).

One iteration of all live runs is one set of tensor calls on stacked parameters: logits
``[R, S, A]`` (with ``mdp.features`` ``phi [S, A, d]``: ``theta [R, d]`` and
``logits[r, s, a] = sum_k phi[s, a, k] theta[r, k]``). The oracle of
:mod:`pglab.tabular.exact`, batched (``pi`` ``[R, S, A]``, ``V`` ``[R, T+1, S]``, ``Q``
``[R, T, S, A]``, ``d`` ``[R, T, S]``)::

    Q^r_t(s, a)   = r(s, a) + gamma sum_{j<K} p[sa, j] V^r_{t+1}(succ[sa, j])
    V^r_t(s)      = sum_a pi^r(a|s) Q^r_t(s, a)
    d^r_{t+1}(s') = sum_{j<K'} d^r_t(s_j) pi^r(a_j|s_j) q[s', j],   (s_j, a_j) = pred[s', j]
    dJ/dtheta^r[s, a] = pi^r(a|s) sum_t gamma^t d^r_t(s) (Q^r_t(s, a) - V^r_t(s))

with ``P`` stored as padded successor lists (``succ``, ``p``: ``[S A, K]``, the non-zero
``P(s'|s, a)`` of each (s, a) in increasing s', padded with probability 0) and padded
predecessor lists (``pred``, ``q``: ``[S, K']``), :class:`BatchedDynamics`; ``Q_t`` takes
one gather, product and sum (the reward rides along as the coefficient of a constant 1),
``d_{t+1}`` another (``pi q`` along the lists is formed once per policy). The history
rows carry the metrics of :func:`~pglab.tabular.ascent.tabular_ascent`, with the same
meaning (entropy, p_optimal, exact KL between successive policies, step norm, ...).

Bit-identity: a run's numbers do not depend on the batch it runs in (its size, its order,
runs that leave it). The run index is the leading dimension of every tensor and each
run's block is contiguous; every product is element-wise (no matrix product across runs:
a BLAS kernel may block or vectorise the rows of a product differently for another R);
every reduction runs within one run's block, over the same dimensions whatever R; the
element-wise transcendental op ``xlogy`` (entropy) works on per-run blocks padded to a
multiple of :data:`PAD` elements, so a value's position in SIMD lanes and tails does not
depend on R (``softmax`` / ``log_softmax`` work row by row). A single run is this code
with R = 1; its numbers agree with :func:`~pglab.tabular.ascent.tabular_ascent` to float64
rounding, not bit for bit (another summation order in ``P``'s products). Runs compute
single-threaded (:func:`pglab.threads.thread_invariant`).

Cost per iteration: ``O(T (S A K + S K'))`` per run in ~8 T tensor calls for the whole
batch (the one-by-one oracle: ~12 T calls per run); small MDPs (the zoo) are call-bound,
so R runs cost little more than one (``benchmarks/bench_tabular_batched.py``: chain, 20
runs, 14x faster than one by one).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pglab import checks
from pglab.collapse import CollapseDetector
from pglab.result import TrainResult
from pglab.tabular import exact
from pglab.tabular.ascent import _collapse_config, _optimal_action_mask
from pglab.tabular.features import check_theta
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import check_logits
from pglab.threads import thread_invariant

__all__ = [
    "MAX_ELEMENTS",
    "PAD",
    "AscentProgress",
    "AscentRun",
    "BatchedDynamics",
    "BatchedSolution",
    "batched_solve",
    "batched_tabular_ascent",
    "exact_pg_ascent",
]

log = logging.getLogger(__name__)

#: Most elements of one stacked ``[R, T, S, A]`` tensor (32 MiB): a larger batch is
#: advanced in chunks of runs, one after another (a run's numbers do not change).
MAX_ELEMENTS = 1 << 22

#: Each run's block of an element-wise transcendental op is padded to a multiple of this
#: many elements (AVX-512 float64 loops step by 8 or 16; 64 leaves room).
PAD = 64


@dataclass(frozen=True)
class AscentRun:
    """One run of a batch: ``theta_0`` (logits ``[S, A]``, or ``[d]`` with features),
    ``alpha`` (finite, > 0), ``K`` iterations, its collapse detector (``None``: the
    default of :func:`~pglab.tabular.ascent.tabular_ascent`) and per-iteration callback."""

    logits0: Any
    step_size: float
    n_iterations: int
    detector: CollapseDetector | None = None
    callback: Callable[[dict[str, Any]], None] | None = None


class BatchedDynamics:
    """``P``, ``r`` and ``gamma`` as padded lists (module docstring), for ``[R, ...]``.

    ``q_values(v)[r, s*A + a] = sum_{j<=K} c[sa, j] v[r, succ[sa, j]]``, where ``v`` is
    ``V_{t+1}`` ``[R, S]`` with a column of ones appended (``[R, S+1]``), ``succ[sa, K] =
    S`` and ``c[sa, :] = (gamma p[sa, :], r(s, a))``: ``Q_t`` in one gather, one product
    and one sum. ``push(d, flow)[r, s'] = sum_{j<K'} d[r, pred_state[s', j]] flow[r, s', j]``
    with ``flow = pi[pred] q`` (:meth:`flow`, once per policy): ``d_{t+1}`` likewise.
    Every sum runs along one run's row.
    """

    def __init__(self, mdp: TabularMDP) -> None:
        n_states, n_actions = mdp.n_states, mdp.n_actions
        self.n_states, self.n_actions = n_states, n_actions
        flat = mdp.transitions.reshape(n_states * n_actions, n_states)
        succ, succ_p = _padded_lists(flat)  # [S*A, K]
        ones = torch.full((succ.shape[0], 1), n_states, dtype=succ.dtype)
        self.succ = torch.cat([succ, ones], dim=1).contiguous()  # [S*A, K+1]
        scaled = succ_p if mdp.gamma == 1.0 else mdp.gamma * succ_p
        self.coef = torch.cat([scaled, mdp.rewards.reshape(-1, 1)], dim=1).contiguous()
        self.pred, self.pred_p = _padded_lists(flat.T.contiguous())  # [S, K'] of s*A + a
        self.pred_state = torch.div(self.pred, n_actions, rounding_mode="floor")

    def q_values(self, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``[R, S+1]`` (``V_{t+1}``, then 1) -> ``out`` ``[R, S*A]``: ``Q_t`` per run."""
        return torch.sum(values[:, self.succ] * self.coef, dim=-1, out=out)

    def flow(self, policy: torch.Tensor) -> torch.Tensor:
        """``[R, S, A]`` -> ``[R, S, K']``: ``pi(a|s) P(s'|s, a)`` along the lists."""
        return policy.view(policy.shape[0], -1)[:, self.pred] * self.pred_p

    def push(self, occupancy: torch.Tensor, flow: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``d_t`` ``[R, S]`` -> ``out`` ``[R, S]``: ``d_{t+1}`` per run."""
        return torch.sum(occupancy[:, self.pred_state] * flow, dim=-1, out=out)


def _padded_lists(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column indices of each row's non-zeros (increasing) and their values, ``[rows, K]``
    with ``K`` the most non-zeros in a row; shorter rows are padded with value 0."""
    nonzero = matrix != 0
    width = max(int(nonzero.sum(1).max()), 1)
    order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :width]
    return order.contiguous(), matrix.gather(1, order).contiguous()


@dataclass(frozen=True)
class BatchedSolution:
    """:class:`pglab.tabular.exact.ExactSolution` of R policies (all float64, run first).

    Attributes:
        policy: ``[R, S, A]``; values: ``[R, T+1, S]``; q_values: ``[R, T, S, A]`` (these
        two are views of time-major tensors); occupancy: ``[R, T, S]``; expected_return:
        ``[R]`` ``J^r = sum_s rho(s) V^r_0(s)``; gradient: ``[R, S, A]`` ``dJ/dlogits``
        (policy-gradient theorem).
    """

    policy: torch.Tensor
    values: torch.Tensor
    q_values: torch.Tensor
    occupancy: torch.Tensor
    expected_return: torch.Tensor
    gradient: torch.Tensor


@thread_invariant
def batched_solve(mdp: TabularMDP, logits: Any) -> BatchedSolution:
    """Exact values, occupancies, returns and gradients of ``softmax(logits[r])`` on ``mdp``.

    Args:
        mdp: the MDP.
        logits: ``[R, S, A]`` finite logits (one policy per leading index).
    """
    checks.instance("mdp", mdp, TabularMDP)
    theta = torch.as_tensor(logits, dtype=torch.float64)
    if theta.dim() != 3 or theta.shape[0] < 1:
        raise ValueError(f"logits has shape {list(theta.shape)}, expected [R, S, A] with R >= 1")
    theta = torch.stack([check_logits(x, mdp.n_states, mdp.n_actions) for x in theta])
    return _batched_solve(mdp, theta.detach().contiguous(), BatchedDynamics(mdp))


def _batched_solve(
    mdp: TabularMDP, logits: torch.Tensor, dynamics: BatchedDynamics
) -> BatchedSolution:
    """:func:`batched_solve` on checked, contiguous ``[R, S, A]`` float64 logits.

    The recursions run time-major (``V_t`` of all runs is one contiguous ``[R, S]``); the
    sum over t of the gradient, and the returned occupancy, are run-major again so each
    run's reductions stay within its own contiguous block.
    """
    n_runs, horizon = logits.shape[0], mdp.horizon
    n_states, n_actions = mdp.n_states, mdp.n_actions
    policy = torch.softmax(logits, dim=-1)  # row by row: [R, S, A]
    # V_t of all runs, with a column of ones (the reward's coefficient), [T+1, R, S+1]
    extended = torch.zeros(horizon + 1, n_runs, n_states + 1, dtype=torch.float64)
    extended[:, :, n_states] = 1.0
    values = extended[:, :, :n_states]
    q_values = torch.empty(horizon, n_runs, n_states, n_actions, dtype=torch.float64)
    for t in range(horizon - 1, -1, -1):
        # Q_t(s, a) = r(s, a) + gamma sum_s' P(s'|s,a) V_{t+1}(s')
        dynamics.q_values(extended[t + 1], out=q_values[t].view(n_runs, -1))
        # V_t(s) = sum_a pi(a|s) Q_t(s, a)
        torch.sum(policy * q_values[t], dim=-1, out=values[t])
    occupancy = torch.empty(horizon, n_runs, n_states, dtype=torch.float64)
    occupancy[0] = mdp.initial
    flow = dynamics.flow(policy)
    for t in range(horizon - 1):
        # d_{t+1}(s') = sum_{s,a} d_t(s) pi(a|s) P(s'|s,a)
        dynamics.push(occupancy[t], flow, out=occupancy[t + 1])
    advantages = q_values - values[:-1, :, :, None]  # [T, R, S, A]
    weights = exact._discounts(mdp)[:, None, None] * occupancy  # [T, R, S]  gamma^t d_t(s)
    weighted = (weights[..., None] * advantages).transpose(0, 1).contiguous()  # [R, T, S, A]
    gradient = policy * weighted.sum(1)  # sum over t within each run's block
    expected_return = (mdp.initial * values[0]).sum(-1)  # [R]
    return BatchedSolution(
        policy=policy,
        values=values.transpose(0, 1),
        q_values=q_values.transpose(0, 1),
        occupancy=occupancy.transpose(0, 1).contiguous(),
        expected_return=expected_return,
        gradient=gradient,
    )


def _padded_xlogy(policy: torch.Tensor) -> torch.Tensor:
    """``xlogy(pi, pi)`` ``[R, S, A]``, computed on per-run blocks padded to :data:`PAD`."""
    n_runs = policy.shape[0]
    size = policy[0].numel()
    width = -(-size // PAD) * PAD
    block = torch.zeros(n_runs, width, dtype=torch.float64)  # xlogy(0, 0) = 0 in the padding
    block[:, :size] = policy.reshape(n_runs, size)
    return torch.special.xlogy(block, block)[:, :size].reshape(policy.shape)


def _feature_logits(phi_flat: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``[S*A, d], [R, d] -> [R, S*A]``: ``sum_k phi[sa, k] theta[r, k]`` (product and sum
    within each run's rows; no matrix product across runs)."""
    return (phi_flat * theta[:, None, :]).sum(-1)


def _run_norms(x: torch.Tensor) -> torch.Tensor:
    """``[R, ...]`` -> ``[R]``: ``||x[r]||_2`` of each run's block."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def _per_run_all_finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)


def _check_runs(mdp: TabularMDP, runs: Sequence[AscentRun]) -> list[torch.Tensor]:
    """Each run's checked ``theta_0`` (a copy); ValueError naming the run and field."""
    phi = mdp.features
    thetas = []
    for r, run in enumerate(runs):
        checks.instance(f"runs[{r}]", run, AscentRun)
        checks.positive_real(f"runs[{r}].step_size", run.step_size)
        checks.positive_int(f"runs[{r}].n_iterations", run.n_iterations)
        if run.detector is not None:
            checks.instance(f"runs[{r}].detector", run.detector, CollapseDetector)
        try:
            if phi is None:
                theta = check_logits(run.logits0, mdp.n_states, mdp.n_actions)
            else:
                theta = check_theta(run.logits0, int(phi.shape[2]))
        except ValueError as error:
            raise type(error)(f"runs[{r}].logits0: {error}") from None
        thetas.append(theta.detach().clone())
    return thetas


@dataclass(frozen=True)
class AscentProgress:
    """Passed to ``batched_tabular_ascent``'s ``report``: the batch so far."""

    runs: int
    finished: int
    iterations: int  # ascent steps taken, summed over the runs
    wall_time: float
    #: the least share of its iterations any unfinished run has taken (1.0 once all have
    #: ended); see :class:`pglab.gym.lockstep.Progress`
    budget_used: float = 0.0


@thread_invariant
def batched_tabular_ascent(
    mdp: TabularMDP,
    runs: Sequence[AscentRun],
    on_result: Callable[[int, TrainResult | BaseException], None] | None = None,
    report: Callable[[AscentProgress], None] | None = None,
    report_every_s: float = 10.0,
) -> list[TrainResult | BaseException]:
    """Exact policy-gradient ascent of every run in ``runs`` on ``mdp``, advanced together.

    Each run's result is the :class:`~pglab.result.TrainResult` of
    :func:`pglab.tabular.ascent.tabular_ascent` with ``gradient="exact"``, ``update="pg"``
    (same history keys and meanings; ``backtracks`` and ``accepted`` NaN), equal to it to
    float64 rounding and bit for bit equal to the same run in any other batch.

    A run leaves the batch when its budget is used up, when it diverges (a non-finite
    gradient or new parameters: its last row has ``diverged`` True, status
    ``"diverged"``), or when its callback raises (that exception is its result);
    ``on_result(r, outcome)`` is called as soon as run r has ended (an exception it raises
    is logged, the batch goes on); ``report(progress)`` about every ``report_every_s``
    seconds and once at the end. ``KeyboardInterrupt`` stops everything. Runs whose
    stacked ``[R, T, S, A]`` would exceed :data:`MAX_ELEMENTS` go in chunks of runs, one
    chunk after another (bounded memory; the numbers are the same).

    Raises:
        ValueError: before any work, for a bad run (naming ``runs[r].<field>``).
    """
    checks.instance("mdp", mdp, TabularMDP)
    thetas = _check_runs(mdp, runs)
    if not runs:
        return []
    phi = mdp.features
    phi_flat = None if phi is None else phi.reshape(mdp.n_states * mdp.n_actions, -1)
    phi_t = None if phi_flat is None else phi_flat.T.contiguous()  # [d, S*A]

    optimal_values, _ = exact._optimal_solution(mdp)
    j_star = float(mdp.initial @ optimal_values[0])
    j_stationary = exact.best_stationary_return(mdp)
    detectors = [
        run.detector
        if run.detector is not None
        else CollapseDetector(_collapse_config(mdp, 10, j_stationary))
        for run in runs
    ]
    for detector in detectors:
        detector.reset()
    optimal = _optimal_action_mask(mdp, optimal_values, 1e-9).to(torch.float64)  # [T, S, A]
    live = (~mdp.terminal).to(torch.float64)  # [S]
    live_count = live.sum()
    n_live = float(live_count)
    dynamics = BatchedDynamics(mdp)

    outcomes: list[TrainResult | BaseException | None] = [None] * len(runs)
    histories: list[list[dict[str, Any]]] = [[] for _ in runs]
    start = last_report = time.perf_counter()

    def progress() -> AscentProgress:
        finished = sum(outcome is not None for outcome in outcomes)
        done = sum(len(history) for history in histories)
        shares = [
            len(history) / run.n_iterations
            for run, history, outcome in zip(runs, histories, outcomes, strict=True)
            if outcome is None
        ]
        used = min(shares, default=1.0)
        return AscentProgress(len(runs), finished, done, time.perf_counter() - start, used)

    def logits_of(params: torch.Tensor) -> torch.Tensor:
        if phi_flat is None:
            return params
        return _feature_logits(phi_flat, params).view(-1, mdp.n_states, mdp.n_actions)

    def end(r: int, status: str, final: torch.Tensor | BaseException) -> None:
        if isinstance(final, BaseException):
            outcomes[r] = final
        else:
            params = (
                {"logits": final.clone()}
                if phi_flat is None
                else {"theta": final.clone(), "logits": logits_of(final[None])[0].clone()}
            )
            outcomes[r] = TrainResult(
                history=histories[r],
                status=status,
                collapse=detectors[r].status,
                final_params=params,
                return_key="expected_return",
            )
        if on_result is not None:
            try:
                on_result(r, outcomes[r])
            except Exception as error:  # the caller's bookkeeping must not stop the batch
                log.warning("on_result for run %d failed: %s", r, error)

    # Runs of one chunk share the stacked tensors ([R, T, S, A] at most MAX_ELEMENTS).
    chunk = max(1, MAX_ELEMENTS // (mdp.horizon * mdp.n_states * mdp.n_actions))
    for first in range(0, len(runs), chunk):
        active = list(range(first, min(len(runs), first + chunk)))  # row i is run active[i]
        theta = torch.stack([thetas[r] for r in active]).contiguous()  # [R, S, A] or [R, d]
        alpha = torch.tensor([float(runs[r].step_size) for r in active], dtype=torch.float64)
        alpha = alpha.view(-1, *([1] * (theta.dim() - 1)))
        k = 0
        while active:
            logits = logits_of(theta)
            solution = _batched_solve(mdp, logits, dynamics)
            pi = solution.policy  # [R, S, A]
            weight = solution.occupancy * live  # [R, T, S]: d_t(s) on real decisions
            total = weight.sum((1, 2))  # [R]
            h = -_padded_xlogy(pi).sum(-1)  # [R, S] entropy per state
            ent = (weight * h[:, None, :]).sum((1, 2)) / total
            ent_states = (h * live).sum(-1) / live_count
            p_opt = (weight * (optimal * pi[:, None]).sum(-1)).sum((1, 2)) / total
            g = solution.gradient  # [R, S, A]
            if phi_t is not None:  # chain rule through logits = phi theta: [R, d]
                flat = g.reshape(g.shape[0], -1)  # [R, S*A]
                g = (flat[:, None, :] * phi_t).sum(-1)
            finite_g = _per_run_all_finite(g)
            new_theta = theta + alpha * g  # theta_{k+1} = theta_k + alpha ghat_k
            finite = finite_g & _per_run_all_finite(new_theta)
            new_logits = logits_of(new_theta)
            kl = _batched_mean_kl(mdp, solution, logits, new_logits)
            step_norm = _run_norms(new_theta - theta)
            grad_norm = _run_norms(g)

            rows = zip(
                active,
                solution.expected_return.tolist(),
                ent.tolist(),
                ent_states.tolist(),
                p_opt.tolist(),
                grad_norm.tolist(),
                finite.tolist(),
                kl.tolist(),
                step_norm.tolist(),
                total.tolist(),
                strict=True,
            )
            keep: list[int] = []
            for i, (r, j, e, e_states, p, norm, ok, d_kl, d_theta, mass) in enumerate(rows):
                collapse = detectors[r].update(k, j, e if mass > 0 else math.nan, ok, n_episodes=1)
                metrics = {
                    "iteration": k,
                    "expected_return": j,
                    "optimal_return": j_star,
                    "suboptimality": j_star - j,
                    "stationary_return": j_stationary,
                    "suboptimality_stationary": j_stationary - j,
                    "entropy": e if mass > 0 else math.nan,
                    "entropy_states": e_states if n_live > 0 else math.nan,
                    "p_optimal": p if mass > 0 else math.nan,
                    "grad_norm": norm,
                    "exact_grad_norm": norm,
                    "kl": d_kl if ok else math.nan,
                    "step_norm": d_theta if ok else math.nan,
                    "backtracks": math.nan,
                    "accepted": math.nan,
                    "collapsed": collapse.collapsed,
                    "diverged": not ok,
                }
                histories[r].append(metrics)
                callback = runs[r].callback
                if callback is not None:
                    try:
                        callback(metrics)
                    except Exception as error:  # this run leaves the batch, the others go on
                        end(r, "failed", error)
                        continue
                if not ok:
                    end(r, "diverged", theta[i])
                elif k + 1 >= runs[r].n_iterations:
                    end(r, "complete", new_theta[i])
                else:
                    keep.append(i)
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long)
                new_theta = new_theta.index_select(0, index)
                alpha = alpha.index_select(0, index)
                active = [active[i] for i in keep]
            theta = new_theta.contiguous()
            k += 1
            if report is not None and time.perf_counter() - last_report >= report_every_s:
                last_report = time.perf_counter()
                report(progress())
    if report is not None:
        report(progress())
    return [outcome for outcome in outcomes if outcome is not None]


def _batched_mean_kl(
    mdp: TabularMDP, solution: BatchedSolution, logits_old: torch.Tensor, logits_new: torch.Tensor
) -> torch.Tensor:
    """``[R]`` exact mean KL(pi_old || pi_new) over the states pi_old visits, per run
    (:func:`pglab.tabular.natural.mean_kl`): ``sum_s w(s) KL_s / sum_s w(s)`` with
    ``w(s) = sum_t d_t(s)`` on non-terminal states; 0 when no decision is ever taken."""
    weights = torch.where(mdp.terminal, 0.0, solution.occupancy.sum(1))  # [R, S]
    log_old = torch.log_softmax(logits_old, dim=-1)
    log_new = torch.log_softmax(logits_new, dim=-1)
    per_state = torch.where(solution.policy > 0, solution.policy * (log_old - log_new), 0.0)
    length = weights.sum(-1)
    kl = (weights * per_state.sum(-1)).sum(-1) / length
    return torch.where(length > 0, kl, 0.0)


def exact_pg_ascent(
    mdp: TabularMDP,
    logits0: Any,
    step_size: float,
    n_iterations: int,
    detector: CollapseDetector | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """One run through :func:`batched_tabular_ascent` (R = 1): the numbers it has in any
    batch. Its callback's exception is raised."""
    run = AscentRun(logits0, step_size, n_iterations, detector, callback)
    (outcome,) = batched_tabular_ascent(mdp, [run])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
