"""Many CartPole runs in lock-step: one vector environment, one batched policy call per step.

A grid of R runs (any N, step size, seed, update rule, optimizer) of one policy
architecture is played on R x M CartPole copies stepped together
(:class:`pglab.gym.cartpole_physics.CartPoleCopies`: gymnasium's ``CartPoleVectorEnv``
arithmetic, bit for bit, without its per-step checks and autoreset): run r owns the M
copies ``r*M ... r*M + M - 1``, of which its first N_r play its episodes and the rest are
padding that steps along unused. Every vector step evaluates all R policies in one call
(stacked parameters, a numpy ``matmul`` per layer), draws each run's actions from that
run's own uniforms, and steps the copies once.

When a run's N episodes have all ended, it updates:

* ``update="pg"`` with ``optimizer="sgd"`` (the textbook rule; :func:`stacks_updates`):
  the run waits, and the waiting runs update together in one
  :func:`pglab.gym.stacked.pg_step` call per padded row count, when at least
  ``FLUSH_SHARE`` of the active runs wait, when the first of them has waited ``MAX_WAIT``
  vector steps, or when no run plays on. One update costs ~1 ms of tensor calls whatever
  N is, so stacking k runs divides that by about k (measured in
  ``benchmarks/bench_lockstep.py``); waiting costs vector steps, hence the bounds.
* any other rule or optimizer: at once, through its own
  :class:`pglab.gym.training.Learner` (the code :func:`pglab.gym.training.train` runs).

Then it starts its next batch on the next vector step. Waiting changes which runs share
a call, never a run's numbers.

Bit-identical per run
---------------------
A run's numbers do not depend on which other runs share its batch, or whether it runs
alone (R = 1, which is how the CartPole app plays a single run):

* **Episode starts** are drawn by the run itself: s_0 ~ U(-0.05, 0.05)^4 per copy (the
  law of CartPole's reset) from ``numpy.random.default_rng(seed)``, and written into the
  copies' state (their step counters cleared), so no run consumes another's random
  numbers. The dynamics are element-wise numpy, the same arithmetic in every column.
* **Actions** use U ~ U[0, 1) from the run's ``Learner.generator``, one per copy and step
  the run plays (``torch.rand(block, N)`` every ``UNIFORM_BLOCK`` of them; a waiting run
  uses none), with the law of
  :meth:`CategoricalPolicy.sample` (:meth:`PolicyStack.sample`). Element-wise
  transcendental kernels are *not* position-independent (measured: ``torch.sigmoid`` on a
  slice differs in the last bit from the same values inside a longer tensor, for 171 of
  399 slice lengths), so they only ever run on a run's own block (logit(U)); the batch
  sees exact operations (subtraction, comparison) and row-wise kernels.
* **Logits** come from ``numpy.matmul`` on ``[R, M, d]`` blocks (one BLAS call per
  slice). A matrix product's rows can depend on how many rows it is given (measured
  here), so every run pads its rows to M = :func:`padded_rows` (N rounded up to a
  multiple of 8, and so that M x width is a multiple of 64 for activations computed by
  torch) whether alone or in a batch, and only runs with the same M share a batch; a
  slice of a stacked ``matmul`` does not depend on the other slices, and numpy's tanh,
  exp, sin and cos give an element the same bits wherever it sits (tested).
* **Updates** are the run's own Learner on its own batch, or its slice of a stacked
  step, which does not depend on the other slices (:mod:`pglab.gym.stacked`: canonical
  padded shapes, slice-wise kernels).

``tests/test_lockstep.py`` checks the whole history and final parameters bit for bit
(alone vs in batches of other sizes and other runs). The env must have gymnasium's
``CartPoleVectorEnv`` as its vector entry point (its constants are read from one);
:func:`unbatchable_reason` says why anything else is not batched (other environments run
one by one with :class:`pglab.gym.rollouts.RolloutCollector`).

Cost per vector step: one ``matmul`` per layer over all runs, one comparison, one step of
the R x M copies and a few numpy copies into ring buffers of the last
``max_episode_steps + MAX_WAIT`` steps (a waiting run's steps stay there until its update);
per update, one gather of every waiting run's steps out of the buffers and the run's share
of a stacked call.
Failures are per run: a run whose update raises (or whose callback does) leaves the batch
with that error and the others go on; a diverged run ends as ``diverged`` as in ``train``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pglab import checks, estimators
from pglab.collapse import CollapseDetector
from pglab.gym import stacked
from pglab.gym.cartpole_physics import CartPoleCopies
from pglab.gym.gradients import grad_variance, per_episode_gradients
from pglab.gym.policies import ACTIVATIONS, CategoricalPolicy
from pglab.gym.rollouts import EpisodeBatch
from pglab.gym.training import Learner, TrainConfig
from pglab.result import TrainResult
from pglab.threads import thread_invariant

__all__ = [
    "ROW_BLOCK",
    "LockstepRun",
    "PolicyStack",
    "Progress",
    "group_key",
    "padded_rows",
    "train_lockstep",
    "unbatchable_reason",
]

log = logging.getLogger("pglab.lockstep")

#: Rows per run are padded to a multiple of this (see the module docstring).
ROW_BLOCK = 8
#: Steps of uniforms drawn per ``torch.rand`` call of a run.
UNIFORM_BLOCK = 256
#: A run waiting for a stacked update waits at most this many vector steps for others ...
#: (a vector step costs ~0.1-0.4 ms, a stacked call ~0.5 ms plus ~0.1 ms per run; on the
#: N in {1, 2, 5} part of cartpole_grid, 37 runs, waits of 4 to 32 steps and shares of
#: 0.25 to 0.7 all trained within this machine's +-10 % noise; 16 made the fewest calls)
MAX_WAIT = 16
#: ... or until this share of the batch's active runs waits (or none plays on).
FLUSH_SHARE = 0.5
#: At most this many rows (runs x padded steps) per stacked update call: bigger calls
#: leave the CPU caches and cost more per run (measured: 2048 rows per run cost 2.0 ms
#: per run in a call of 4 runs, 4.1 ms in a call of 32).
MAX_STACKED_ROWS = 8192
#: CartPole's reset law: every state variable ~ U(RESET_LOW, RESET_HIGH).
RESET_LOW, RESET_HIGH = -0.05, 0.05


def padded_rows(n_trajectories: int, hidden_sizes: Sequence[int] = ()) -> int:
    """M: the rows a run of N episodes occupies: N rounded up to a multiple of ROW_BLOCK,
    and further until M x h is a multiple of 64 for every hidden width h, so that the
    activation's element-wise kernel sees whole vectors only (no tail, whose last bits
    can differ) whatever the number of runs."""
    n = checks.positive_int("n_trajectories", n_trajectories)
    m = -(-n // ROW_BLOCK) * ROW_BLOCK
    while any((m * int(h)) % 64 for h in hidden_sizes):
        m += ROW_BLOCK
    return m


def _vector_env_class() -> type:
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    return CartPoleVectorEnv


def unbatchable_reason(env_id: str, policy: Any = None) -> str | None:
    """Why a run of ``env_id`` with ``policy`` cannot be played in lock-step, or ``None``."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        return f"env_id={env_id!r} is not registered ({error})"
    entry = spec.vector_entry_point
    cls = _vector_env_class()
    target = f"{cls.__module__}:{cls.__name__}"
    if entry != target and entry is not cls:
        return f"env_id={env_id!r} has no CartPoleVectorEnv vector entry point (it has {entry!r})"
    if policy is not None and not isinstance(policy, CategoricalPolicy):
        return f"policy is a {type(policy).__name__}, not a CategoricalPolicy"
    return None


def group_key(config: TrainConfig, policy: CategoricalPolicy, **env: Any) -> tuple:
    """Runs with equal keys can share a lock-step batch (same env, rows, architecture)."""
    return (
        config.env_id,
        tuple(sorted(env.items())),
        padded_rows(config.n_trajectories, policy.hidden_sizes),
        policy.obs_dim,
        policy.n_actions,
        policy.hidden_sizes,
        policy.activation,
        policy.dtype,
    )


def _numpy_activation(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The activation ``name`` on a numpy array ``x [R, M, h]``, ``f(x, live)``: in place
    and on the rows where ``live [R, M, 1]`` holds only, where numpy has it (tanh, relu;
    the other rows keep their pre-activation); through torch on every row otherwise."""
    if name == "tanh":
        return lambda x, live: np.tanh(x, out=x, where=live)
    if name == "relu":
        return lambda x, live: np.maximum(x, 0, out=x, where=live)
    torch_fn = ACTIVATIONS[name]
    return lambda x, live: torch_fn(torch.from_numpy(x)).numpy()


class PolicyStack:
    """R policies of one architecture evaluated together: logits ``[R, M, d] -> [R, M, A]``.

    Layer l of run r is kept transposed, ``weights_t[l][r] [in, out]``, with
    ``biases[l][r] [1, out]``, so a layer is one stacked matrix product plus the bias
    (numpy, :meth:`logits`); hidden layers apply the policies' activation. Both are views
    of ``flat [R, n]`` (:class:`stacked.Layout`), on which :func:`stacked.pg_step`
    updates many runs at once. :meth:`load_many` copies runs'
    current parameters in.
    """

    def __init__(self, policies: Sequence[CategoricalPolicy]) -> None:
        first = policies[0]
        for r, policy in enumerate(policies):
            checks.instance(f"policies[{r}]", policy, CategoricalPolicy)
            same = (policy.obs_dim, policy.n_actions, policy.hidden_sizes, policy.activation)
            if same != (first.obs_dim, first.n_actions, first.hidden_sizes, first.activation):
                raise ValueError(
                    f"policies[{r}] has (obs_dim, n_actions, hidden_sizes, activation)={same}; "
                    "a stack needs one architecture"
                )
            if policy.dtype != first.dtype:
                raise ValueError(f"policies[{r}] has dtype {policy.dtype}, not {first.dtype}")
        self.dtype = first.dtype
        self.n_actions = first.n_actions
        self.activation = ACTIVATIONS[first.activation]
        widths = (first.obs_dim, *first.hidden_sizes, first.n_actions)
        self.layout = stacked.Layout(widths)
        #: ``[R, n]``: every run's parameters, laid out by :class:`stacked.Layout`.
        self.flat = torch.zeros(len(policies), self.layout.size, dtype=self.dtype)
        self.weights_t, self.biases = self.layout.views(self.flat)
        # numpy views of the same memory, for the per-step forward (:meth:`logits`)
        self.np_dtype = self.flat.numpy().dtype
        self._np_weights = [w.numpy() for w in self.weights_t]
        self._np_biases = [b.numpy() for b in self.biases]
        self._np_activation = _numpy_activation(first.activation)
        #: "tanh" or "relu" where the stacked step runs in numpy, else None
        self.numpy_activation = first.activation if first.activation in ("tanh", "relu") else None
        # per run: its slots (views of flat) and its policy's parameters, in one order
        self._slots: list[list[Tensor]] = []
        self._params: list[list[Tensor]] = []
        for r, policy in enumerate(policies):
            self._slots.append([])
            self._params.append([])
            for i, layer in enumerate(policy.layers):
                self._slots[r] += [self.weights_t[i][r].T, self.biases[i][r, 0]]
                self._params[r] += [layer.weight, layer.bias]
        self.load_many(range(len(policies)))

    def _pairs(self, rs: Sequence[int]) -> tuple[list[Tensor], list[Tensor]]:
        slots: list[Tensor] = []
        params: list[Tensor] = []
        for r in rs:
            slots += self._slots[r]
            params += self._params[r]
        return slots, params

    def load_many(self, rs: Sequence[int]) -> None:
        """Copy the current parameters of the policies of runs ``rs`` into their slots."""
        slots, params = self._pairs(rs)
        with torch.no_grad():
            torch._foreach_copy_(slots, params)

    def store_many(self, rs: Sequence[int]) -> None:
        """Copy slots ``rs`` into their policies' parameters (the inverse of :meth:`load_many`)."""
        slots, params = self._pairs(rs)
        with torch.no_grad():
            torch._foreach_copy_(params, slots)

    def logits(self, obs: np.ndarray, live: np.ndarray | None = None) -> np.ndarray:
        """``[h, M, obs_dim] -> [h, M, A]`` (numpy, the parameters' dtype) for the first
        h <= R runs: l = W_L g(... g(W_1 s + b_1) ...) + b_L per run, on the rows where
        ``live`` ``[h, M, 1]`` (bool) holds, or every row.

        Rows that are not live get other values: tanh and relu skip them (lock-step
        passes the copies whose episode is running, at most 1 row in 8 at N = 1, and the
        tanh is the dearest call of a step). A row of a matrix product depends on that
        row alone, so the live rows' logits are the same either way.

        Computed in numpy on views of :attr:`flat`: a small stacked ``matmul`` and numpy's
        ``tanh`` cost ~30 us a step where torch's ``baddbmm`` and ``tanh`` cost ~100 us
        (measured at R = 15, M = 8, 64-64 tanh; torch's float32 tanh runs at ~3.5 ns an
        element here, numpy's at ~0.5). ``numpy.matmul`` on a stack calls the BLAS once per
        slice, so a run's rows depend on its own slice only; numpy's tanh is the same
        arithmetic at every position (both tested). Activations without a numpy twin
        (elu, gelu, silu, leaky_relu) run through torch on the whole array, which their
        64-aligned blocks (:func:`padded_rows`) keep position-independent."""
        x = obs.astype(self.np_dtype, copy=False)
        if live is None:
            live = np.ones((*x.shape[:2], 1), dtype=np.bool_)
        h = x.shape[0]  # the first h runs (all R, or fewer: see _play)
        last = len(self._np_weights) - 1
        for i, (w, b) in enumerate(zip(self._np_weights, self._np_biases, strict=True)):
            x = np.matmul(x, w[:h])
            x += b[:h]
            if i < last:
                x = self._np_activation(x, live)
        return x

    def draws(self, u: Tensor) -> np.ndarray:
        """What :meth:`sample` compares against, from U ~ U[0, 1): logit(U) = log U - log(1-U)
        for two actions, U itself otherwise. Called on each run's own block of uniforms, so
        its (element-wise, position-sensitive) arithmetic never sees another run's values."""
        if self.n_actions == 2:
            return (torch.log(u) - torch.log1p(-u)).numpy()
        return u.numpy()

    def sample(
        self, obs: np.ndarray, draws: np.ndarray, live: np.ndarray | None = None
    ) -> np.ndarray:
        """Actions ``[R, M]`` int64 with law softmax(logits), from ``draws`` ``[R, M]``
        (meaningful on the ``live`` rows, see :meth:`logits`).

        Two actions: a = 1[logit(U) < l_1 - l_0], i.e. U < sigmoid(l_1 - l_0) = pi(1|s),
        using only a subtraction and a comparison on the batch (exact, so a run's actions
        cannot depend on where its rows sit). More actions: the inverse CDF
        a = #{k < A-1 : C_k <= U}, C the cumulative softmax (row-wise, and numpy's exp is
        the same arithmetic at every position).
        """
        logits = self.logits(obs, live)
        if self.n_actions == 2:
            return (draws < logits[..., 1] - logits[..., 0]).astype(np.int64)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        cdf = np.cumsum(e / e.sum(axis=-1, keepdims=True), axis=-1)
        return (cdf[..., :-1] <= draws[..., None]).sum(axis=-1, dtype=np.int64)


@dataclass
class LockstepRun:
    """One run of a lock-step batch: its validated config, policy, detector and callback.

    ``seed`` seeds the run's episode starts (``config.seed`` when ``None``); the action
    uniforms come from ``Generator(config.seed)`` as in :func:`train`.
    """

    config: TrainConfig
    policy: CategoricalPolicy
    detector: CollapseDetector | None = None
    callback: Callable[[dict[str, Any]], None] | None = None
    seed: int | None = None


@dataclass
class Progress:
    """Passed to ``train_lockstep``'s ``report``: the batch so far."""

    runs: int
    finished: int
    env_steps: int  # real steps of all runs so far
    vector_steps: int
    wall_time: float
    #: f, the least share of its budget any unfinished run has used (1.0 once all have
    #: ended): the batch ends with its slowest run, so it needs about
    #: ``vector_steps * (1 - f) / f`` more vector steps (the batched launcher's ETA)
    budget_used: float = 0.0


@thread_invariant
def train_lockstep(
    runs: Sequence[LockstepRun],
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    report: Callable[[Progress], None] | None = None,
    report_every_s: float = 10.0,
    on_result: Callable[[int, TrainResult | BaseException], None] | None = None,
) -> list[TrainResult | BaseException]:
    """Train every run in ``runs`` in one lock-step batch; one result (or error) per run.

    All runs must share the env id, the padded row count M and the policy architecture
    (:func:`group_key`); each config is validated first (``ValueError`` before any work).
    ``report(progress)`` is called about every ``report_every_s`` seconds and at the end;
    ``on_result(r, outcome)`` as soon as run r has ended (so its results can be saved while
    the others go on; an exception it raises is logged and the batch goes on).
    A run whose update or callback raises gets that exception as its result and leaves
    the batch; ``KeyboardInterrupt`` stops everything.
    """
    if not runs:
        return []
    for r, run in enumerate(runs):
        checks.instance(f"runs[{r}]", run, LockstepRun)
        run.config.validate()
    first = runs[0].config
    reason = unbatchable_reason(first.env_id, runs[0].policy)
    if reason is not None:
        raise ValueError(reason)
    env_kwargs = dict(env_kwargs or {})
    keys = {group_key(run.config, run.policy) for run in runs}
    if len(keys) > 1:
        raise ValueError(
            f"runs differ in env, padded rows or architecture: {sorted(map(str, keys))}"
        )
    spec = gym.spec(first.env_id)
    time_limit = int(max_episode_steps or spec.max_episode_steps)
    m = padded_rows(first.n_trajectories, runs[0].policy.hidden_sizes)
    n_runs = len(runs)
    n_copies = n_runs * m

    env = gym.make_vec(
        first.env_id,
        n_copies,
        vectorization_mode="vector_entry_point",
        max_episode_steps=time_limit,
        **env_kwargs,
    )
    inner = env.unwrapped
    if not isinstance(inner, _vector_env_class()):
        env.close()
        raise ValueError(f"{first.env_id}: the vector env is {type(inner).__name__}")
    # Play the runs that will need the most vector steps first: a run that has ended
    # leaves the policy forward once every run after it has ended too (below). The order
    # changes no run's numbers (a run's slice never depends on the others).
    order = sorted(range(n_runs), key=lambda r: -_expected_vector_steps(runs[r].config))
    mapped = None
    if on_result is not None:
        report_result = on_result

        def mapped(i: int, outcome: TrainResult | BaseException) -> None:
            report_result(order[i], outcome)

    try:
        played = _play(
            [runs[r] for r in order], inner, m, time_limit, report, report_every_s, mapped
        )
    finally:
        env.close()
    outcomes: list[TrainResult | BaseException] = [RuntimeError("run never finished")] * n_runs
    for i, outcome in enumerate(played):
        outcomes[order[i]] = outcome
    return outcomes


def _expected_vector_steps(config: TrainConfig) -> float:
    """A rough guess of how many vector steps a run plays, only to order a batch's runs:
    env-step budget / N (one episode per copy), else iterations; unbounded runs first."""
    if config.max_env_steps is not None:
        return config.max_env_steps / config.n_trajectories
    if config.max_iterations is not None:
        return float(config.max_iterations)
    return math.inf


def stacks_updates(config: TrainConfig, policy: CategoricalPolicy) -> bool:
    """Whether a run's updates go through :func:`pglab.gym.stacked.pg_step` (many runs per
    call): ``update="pg"`` with ``optimizer="sgd"`` and a float32/float64 policy. Other runs
    update one by one with their :class:`Learner`."""
    return (
        config.update == "pg"
        and config.optimizer == "sgd"
        and policy.dtype in (torch.float32, torch.float64)
    )


@dataclass
class _Finished:
    """A run's finished batch awaiting its update; its steps are still in the ring buffers
    (vector steps ``started .. ended``, the run's first N copies) and are read, for every
    waiting run at once, when the update comes (:class:`_Steps`)."""

    lengths: np.ndarray  # [N] int64, its episodes' lengths
    started: int  # the vector step the batch began at
    ended: int  # the vector step its last episode ended at
    total_steps: int  # copies x vector steps the batch took
    variance: float
    real_steps: int  # sum of lengths


@dataclass
class _Steps:
    """The real steps of several waiting runs, run after run, episode-major: ``[S]`` rows.

    Run ``rs[j]``'s steps are rows ``first_step[j] : first_step[j] + n_steps[j]`` and its
    episodes ``first_episode[j] : ...`` of ``returns``."""

    observations: np.ndarray  # [S, obs_dim]
    actions: np.ndarray  # [S]
    rewards: np.ndarray  # [S]
    episode: np.ndarray  # [S] the step's episode within its run
    t_index: np.ndarray  # [S] the step's time within its episode
    returns: np.ndarray  # [E] float64, each episode's return (E: all runs' episodes)
    first_step: dict[int, int]  # run -> its first row
    first_episode: dict[int, int]  # run -> its first episode in ``returns``

    def rows_of(self, rs: Sequence[int], n_steps: Sequence[int]) -> np.ndarray:
        """The rows of runs ``rs`` (with ``n_steps`` real steps each), run after run."""
        counts = np.asarray(n_steps, dtype=np.int64)
        starts = np.array([self.first_step[r] for r in rs], dtype=np.int64)
        before = np.cumsum(counts) - counts
        return np.repeat(starts - before, counts) + np.arange(int(counts.sum()))


def _return_stats(returns: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, median, min, max) of ``[N]`` float64 returns; the median of an even N is the
    midpoint of the two middle values."""
    if returns.shape[0] == 1:  # all four are the one return (the same bits, fewer calls)
        value = float(returns[0])
        return value, value, value, value
    ordered = np.sort(returns)
    n = ordered.shape[0]
    median = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    return float(returns.mean()), float(median), float(ordered[0]), float(ordered[-1])


def _play(
    runs: Sequence[LockstepRun],
    inner: Any,
    m: int,
    time_limit: int,
    report: Callable[[Progress], None] | None,
    report_every_s: float,
    on_result: Callable[[int, TrainResult | BaseException], None] | None,
) -> list[TrainResult | BaseException]:
    n_runs = len(runs)
    n_copies = n_runs * m
    obs_dim = int(np.prod(inner.single_observation_space.shape))
    # The dynamics of every copy, without the env's checks and autoreset (bit-identical
    # to its step); every real episode start is written into copies.state below.
    copies = CartPoleCopies(inner, n_copies)
    copy_steps = np.zeros(n_copies, dtype=np.int64)  # steps into each copy's episode

    outcomes: list[TrainResult | BaseException | None] = [None] * n_runs
    learners: list[Learner | None] = [None] * n_runs
    stack = PolicyStack([run.policy for run in runs])
    ns = [run.config.n_trajectories for run in runs]
    rngs = [
        np.random.default_rng(run.config.seed if run.seed is None else run.seed) for run in runs
    ]
    stacking = [stacks_updates(run.config, run.policy) for run in runs]
    for r, run in enumerate(runs):
        try:
            learners[r] = Learner(run.config, run.policy, run.detector, run.callback)
        except Exception as error:  # a run that cannot even start leaves the batch
            outcomes[r] = error

    # Ring buffers over the last `cap` vector steps: a batch spans at most time_limit of
    # them and then waits at most MAX_WAIT more for its update, which reads it from here.
    cap = time_limit + MAX_WAIT + 1
    obs_log = np.zeros((cap, n_copies, obs_dim), dtype=np.float32)
    act_log = np.zeros((cap, n_copies), dtype=np.int64)
    rew_log = np.zeros((cap, n_copies), dtype=np.float32)
    obs = np.zeros((n_copies, obs_dim), dtype=np.float32)
    # Each run's next UNIFORM_BLOCK steps of draws, and how many of them it has used.
    uniforms = np.zeros((n_runs, UNIFORM_BLOCK, m), dtype=np.float32)
    cursor = np.full(n_runs, UNIFORM_BLOCK, dtype=np.int64)
    every_run = np.arange(n_runs)
    running = np.zeros(n_copies, dtype=np.bool_)
    live = running.reshape(n_runs, m, 1)  # a view: the rows whose actions are used
    lengths = np.zeros(n_copies, dtype=np.int64)
    terminated = np.zeros(n_copies, dtype=np.bool_)
    started = np.zeros(n_runs, dtype=np.int64)  # vector step at which each run's batch began
    active = np.zeros(n_runs, dtype=np.bool_)  # not ended yet
    playing = np.zeros(n_runs, dtype=np.bool_)  # active and not waiting for its update
    waiting: dict[int, _Finished] = {}  # stacked runs whose batch awaits its update
    # runs bound[0]..R-1 have all ended: the policy forward leaves them out
    bound = [n_runs]
    actions = np.zeros(n_copies, dtype=np.int64)  # an ended run's copies keep action 0
    full_horizon = stacked.padded_steps(time_limit)

    def begin(r: int, step: int) -> None:
        """Start run r's next batch at vector step ``step``: fresh episode starts."""
        cols = slice(r * m, r * m + ns[r])
        init = rngs[r].uniform(RESET_LOW, RESET_HIGH, size=(4, ns[r]))
        copies.state[:, cols] = init
        copy_steps[cols] = 0
        obs[cols] = init.T.astype(np.float32)
        running[cols] = True
        lengths[cols] = 0
        terminated[cols] = False
        started[r] = step
        active[r] = True
        playing[r] = True

    def stop(r: int, outcome: TrainResult | BaseException) -> None:
        outcomes[r] = outcome
        active[r] = False
        playing[r] = False
        running[r * m : (r + 1) * m] = False
        still = np.flatnonzero(active)
        bound[0] = int(still[-1]) + 1 if still.size else 0
        if on_result is not None:
            try:
                on_result(r, outcome)
            except Exception as error:  # the caller's bookkeeping must not stop the batch
                log.warning("on_result for run %d failed: %s", r, error)

    def next_or_stop(r: int, step: int) -> None:
        learner = learners[r]
        assert learner is not None
        if learner.wants_batch():
            begin(r, step)
        else:
            stop(r, learner.result())

    def episode_batch(r: int, step: int) -> EpisodeBatch:
        """Run r's N episodes as an :class:`EpisodeBatch` ``[N, T]``."""
        t = step - started[r] + 1
        rows = (started[r] + np.arange(t)) % cap
        cols = slice(r * m, r * m + ns[r])
        lengths_t = torch.from_numpy(lengths[cols].copy())
        mask = torch.arange(t).unsqueeze(0) < lengths_t.unsqueeze(1)  # [N, T]
        observations = torch.from_numpy(obs_log[rows, cols].transpose(1, 0, 2).copy())
        return EpisodeBatch(
            observations=torch.where(mask.unsqueeze(-1), observations, 0.0),
            actions=torch.where(mask, torch.from_numpy(act_log[rows, cols].T.copy()), 0),
            rewards=torch.where(mask, torch.from_numpy(rew_log[rows, cols].T.copy()), 0.0),
            mask=mask,
            lengths=lengths_t,
            terminated=torch.from_numpy(terminated[cols].copy()),
            env_steps=int(t) * ns[r],
        )

    def finish_batch(r: int, step: int) -> None:
        """Run r's N episodes all ended at vector step ``step``: learn now (its own
        Learner), or note what it needs to wait for a stacked update."""
        learner = learners[r]
        assert learner is not None
        try:
            if not stacking[r]:
                learner.learn(episode_batch(r, step))
                stack.load_many([r])
                next_or_stop(r, step + 1)
                return
            waiting[r] = finished(r, step)
            playing[r] = False
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            stop(r, error)

    def finished(r: int, step: int) -> _Finished:
        """Run r's batch ended at vector step ``step``: what its update needs besides the
        steps themselves (which stay in the ring buffers until then)."""
        config, learner = runs[r].config, learners[r]
        assert learner is not None
        lens = lengths[r * m : r * m + ns[r]].copy()
        variance = math.nan
        every = config.variance_every
        if every > 0 and learner.iteration % every == 0 and ns[r] >= 2:
            batch = episode_batch(r, step)
            psi = estimators.step_weights(batch.rewards, batch.mask, config.estimator, config.gamma)
            if stack.numpy_activation is None:
                per_episode = per_episode_gradients(runs[r].policy, batch, psi)
            else:  # the stacked step's own backward, episodes as slices (its parameters
                # are in flat[r]: loaded after every update)
                per_episode = torch.from_numpy(
                    stacked.per_episode_gradients(
                        stack.flat[r].numpy(),
                        stack.layout,
                        batch.observations.to(stack.dtype).numpy(),
                        batch.actions.numpy(),
                        torch.where(batch.mask, psi, 0.0).to(stack.dtype).numpy(),
                        stack.numpy_activation,
                    )
                )
            variance = grad_variance(per_episode)
        return _Finished(
            lengths=lens,
            started=int(started[r]),
            ended=step,
            total_steps=int(step - started[r] + 1) * ns[r],
            variance=variance,
            real_steps=int(lens.sum()),
        )

    def gather(rs: list[int]) -> _Steps:
        """The real steps of waiting runs ``rs`` out of the ring buffers, in one gather."""
        lens = np.concatenate([waiting[r].lengths for r in rs])  # [E]
        counts = np.array([ns[r] for r in rs], dtype=np.int64)
        e_started = np.repeat(np.array([waiting[r].started for r in rs]), counts)
        e_column = np.concatenate([np.arange(r * m, r * m + ns[r]) for r in rs])
        e_local = np.concatenate([np.arange(ns[r]) for r in rs])
        e_first = np.cumsum(lens) - lens  # each episode's first row
        t_index = np.arange(int(lens.sum())) - np.repeat(e_first, lens)
        rows = (np.repeat(e_started, lens) + t_index) % cap
        columns = np.repeat(e_column, lens)
        rewards = rew_log[rows, columns]
        run_episodes = np.cumsum(counts) - counts
        return _Steps(
            observations=obs_log[rows, columns],
            actions=act_log[rows, columns],
            rewards=rewards,
            episode=np.repeat(e_local, lens),
            t_index=t_index,
            returns=np.add.reduceat(rewards, e_first).astype(np.float64),
            first_step={r: int(e_first[e]) for r, e in zip(rs, run_episodes, strict=True)},
            first_episode={r: int(e) for r, e in zip(rs, run_episodes, strict=True)},
        )

    def step_weights(rs: list[int], steps: _Steps) -> np.ndarray:
        """Psi of every row of ``steps`` ``[S]``: one ``estimators.step_weights`` call per
        (estimator, gamma, N, T). T is the time limit for the return-based estimators
        (one vectorised sum over T) and the longest episode rounded up to
        :func:`stacked.padded_steps` for the others (a loop over T); either way a function
        of the run's own batch, and every operation is row-wise, so a run's weights do not
        depend on which runs share the call."""
        groups: dict[tuple, list[int]] = {}
        for r in rs:
            config = runs[r].config
            if config.estimator in estimators.RETURN_ESTIMATORS:
                horizon = full_horizon
            else:
                horizon = stacked.padded_steps(int(waiting[r].lengths.max()))
            key = (config.estimator, config.gamma, ns[r], horizon)
            groups.setdefault(key, []).append(r)
        psi = np.zeros(steps.rewards.shape, dtype=np.float32)
        for (estimator, gamma, n, horizon), members in groups.items():
            n_steps = [waiting[r].real_steps for r in members]
            rows = steps.rows_of(members, n_steps)
            run = np.repeat(np.arange(len(members)), n_steps)
            where = (run, steps.episode[rows], steps.t_index[rows])
            rewards = np.zeros((len(members), n, horizon), dtype=np.float32)
            mask = np.zeros(rewards.shape, dtype=np.bool_)
            rewards[where] = steps.rewards[rows]
            mask[where] = True
            weights = estimators.step_weights(
                torch.from_numpy(rewards), torch.from_numpy(mask), estimator, gamma
            ).numpy()
            psi[rows] = weights[where]
        return psi

    def update_waiting(step: int) -> None:
        """Update every waiting run, stacked by padded row count, and start their next batch."""
        rs = list(waiting)
        try:
            steps = gather(rs)
            weights = step_weights(rs, steps)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            for r in list(waiting):
                stop(r, error)
            waiting.clear()
            return
        by_rows: dict[int, list[int]] = {}
        for r, done in waiting.items():
            by_rows.setdefault(stacked.padded_steps(done.real_steps), []).append(r)
        for rows, group in sorted(by_rows.items()):
            chunk = max(1, MAX_STACKED_ROWS // rows)
            for i in range(0, len(group), chunk):
                update_stacked(group[i : i + chunk], rows, steps, weights, step)
        waiting.clear()

    def update_stacked(rs: list[int], rows: int, steps: _Steps, psi: np.ndarray, step: int) -> None:
        k, dtype = len(rs), stack.dtype
        n_steps = [waiting[r].real_steps for r in rs]
        source = steps.rows_of(rs, n_steps)
        run = np.repeat(np.arange(k), n_steps)
        where = (run, np.arange(source.shape[0]) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps))
        observations = np.zeros((k, rows, obs_dim), dtype=np.float32)
        actions = np.zeros((k, rows), dtype=np.int64)
        weights = np.zeros((k, rows), dtype=np.float32)
        real = np.zeros((k, rows), dtype=np.float32)
        observations[where] = steps.observations[source]
        actions[where] = steps.actions[source]
        weights[where] = psi[source]
        real[where] = 1.0
        configs = [runs[r].config for r in rs]
        iterations = [learners[r].iteration for r in rs]  # type: ignore[union-attr]
        batch = stacked.StackedBatch(
            observations=torch.from_numpy(observations).to(dtype),
            actions=torch.from_numpy(actions),
            weights=torch.from_numpy(weights).to(dtype),
            real=torch.from_numpy(real).to(dtype),
            n_trajectories=torch.tensor([c.n_trajectories for c in configs], dtype=dtype),
            step_size=torch.tensor([c.step_size for c in configs], dtype=dtype),
            threshold=torch.tensor([c.deterministic_threshold for c in configs], dtype=dtype),
            poison=torch.tensor(
                [c.inject_nan_at == i for c, i in zip(configs, iterations, strict=True)]
            ),
        )
        index = torch.tensor(rs)
        try:
            new, numbers = stacked.pg_step(stack.flat[index], stack.layout, batch, stack.activation)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            for r in rs:
                stop(r, error)
            return
        stack.flat[index] = new
        stack.store_many(rs)
        going = []
        for r, values in zip(rs, numbers.tolist(), strict=True):
            learner, done = learners[r], waiting[r]
            assert learner is not None
            loss, grad_norm, entropy, frac_det, kl, step_norm, finite = values
            first = steps.first_episode[r]
            try:
                learner.count_steps(done.real_steps, done.total_steps)
                learner.record(
                    returns=_return_stats(steps.returns[first : first + ns[r]]),
                    length_mean=float(done.lengths.mean()) if ns[r] > 1 else float(done.lengths[0]),
                    loss=loss,
                    grad_norm=grad_norm,
                    entropy=entropy,
                    kl=kl,
                    step_norm=step_norm,
                    frac_deterministic=frac_det,
                    grad_variance=done.variance,
                    finite=finite == 1.0,
                )
                going.append(r)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:
                stop(r, error)
        if not going:
            return
        stack.load_many(going)  # a callback may have changed a policy's parameters
        params_finite = stacked.all_finite(stack.flat[torch.tensor(going)]).tolist()
        for r, ok in zip(going, params_finite, strict=True):
            learner = learners[r]
            assert learner is not None
            if learner.wants_batch(params_finite=ok):
                begin(r, step + 1)
            else:
                stop(r, learner.result())

    for r in range(n_runs):
        if outcomes[r] is None:
            next_or_stop(r, 0)

    start = time.perf_counter()
    last_report = start
    copies_step = copies.step
    step = 0

    def progress() -> Progress:
        steps = sum(lr.env_steps for lr in learners if lr is not None)
        done = sum(o is not None for o in outcomes)
        shares = [
            lr.budget_used()
            for lr, outcome in zip(learners, outcomes, strict=True)
            if lr is not None and outcome is None
        ]
        used = min(shares, default=1.0)
        return Progress(n_runs, done, steps, step, time.perf_counter() - start, used)

    while active.any():
        for r in np.flatnonzero(playing & (cursor >= UNIFORM_BLOCK)):
            learner = learners[r]
            assert learner is not None
            uniforms[r, :, : ns[r]] = stack.draws(
                torch.rand(UNIFORM_BLOCK, ns[r], generator=learner.generator)
            )
            cursor[r] = 0
        h = bound[0]
        draws = uniforms[every_run[:h], np.minimum(cursor[:h], UNIFORM_BLOCK - 1)]
        row = step % cap
        obs_log[row] = obs
        actions[: h * m] = stack.sample(
            obs[: h * m].reshape(h, m, obs_dim), draws, live[:h]
        ).reshape(h * m)
        act_log[row] = actions
        # copies of ended runs past the bound stand still (none of them is running)
        next_obs, reward, term = copies_step(actions[: h * m], running[: h * m])
        copy_steps += 1
        cursor += playing
        rew_log[row, : h * m] = reward
        obs[: h * m] = next_obs
        ended = (term | (copy_steps[: h * m] >= time_limit)) & running[: h * m]
        if ended.any():
            idx = np.flatnonzero(ended)
            lengths[idx] = step - started[idx // m] + 1
            terminated[idx] = term[idx]
            running[idx] = False
            for r in np.unique(idx // m):
                if playing[r] and not running[r * m : (r + 1) * m].any():
                    finish_batch(int(r), step)
        if waiting and (
            not playing.any()
            or len(waiting) >= FLUSH_SHARE * int(active.sum())
            or step - next(iter(waiting.values())).ended >= MAX_WAIT
        ):
            update_waiting(step)
        step += 1
        if report is not None and time.perf_counter() - last_report >= report_every_s:
            last_report = time.perf_counter()
            report(progress())
    if report is not None:
        report(progress())
    return [o if o is not None else RuntimeError("run never finished") for o in outcomes]
