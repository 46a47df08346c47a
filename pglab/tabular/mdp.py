"""Finite-horizon tabular MDPs: the object every exact and sampled computation runs on.

A :class:`TabularMDP` is the tuple ``(P, r, rho, T, gamma, terminal)``, optionally with
the per-transition rewards ``R``:

==================  =============  =======  =============================================
attribute           shape          dtype    meaning
==================  =============  =======  =============================================
transitions         ``[S, A, S]``  float64  ``P(s' | s, a)``; every row ``P[s, a, :]``
                                            sums to 1
rewards             ``[S, A]``     float64  expected immediate reward ``r(s, a)``
transition_rewards  ``[S, A, S]``  float64  realized reward ``R(s, a, s')`` of the step
                    or ``None``             ``s -> s'``; ``None``: it is ``r(s, a)``
initial             ``[S]``        float64  start distribution ``rho(s) = P(s_0 = s)``
horizon             scalar         int      ``T >= 1``, the number of decisions
gamma               scalar         float    discount ``gamma`` in ``[0, 1]``
terminal            ``[S]``        bool     absorbing states with zero reward
==================  =============  =======  =============================================

The objective of a policy ``pi`` is the expected discounted return over ``T`` decisions::

    J(pi) = E[ sum_{t=0}^{T-1} gamma^t r(s_t, a_t) ],  s_0 ~ rho, a_t ~ pi(.|s_t),
                                                        s_{t+1} ~ P(.|s_t, a_t).

Expected and realized rewards. ``J``, ``V``, ``Q`` and ``grad J`` depend on the rewards only
through ``r(s, a) = sum_{s'} P(s' | s, a) R(s, a, s')``, which is what the exact oracle
uses. A sampled trajectory, however, is paid the realized ``R(s_t, a_t, s_{t+1})`` (as the
real environment pays it), so sampled returns, and the variance of any estimator built
on them, are those of the environment. When ``R`` depends on ``s'`` (FrozenLake pays 1 only
when the slip lands on the goal), paying ``r`` instead would understate that variance.
``transition_rewards`` is kept whenever ``R(s, a, s')`` is given; without it the realized
reward is ``r(s, a)`` itself.

Terminal states are absorbing (``P[s, a, s] = 1``) and pay nothing (``r(s, a) = 0``) under
every action, so once an episode reaches one, the remaining steps add zero to ``J``. Those
steps are not part of the trajectory: samplers mask them out, and the exact oracle gets
``Q = V = 0`` there for free.

Construction validates every field and raises :class:`ValueError` naming the field, the
index and the offending value before anything is stored. Inputs may be lists, numpy arrays
or tensors; the MDP keeps its own float64 copies, so later changes to the caller's arrays
do not leak in.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pglab import checks
from pglab.threads import thread_invariant

__all__ = [
    "MAX_FILE_ENTRIES",
    "MAX_NPZ_BYTES",
    "MAX_YAML_BYTES",
    "PROBABILITY_TOLERANCE",
    "REWARD_TOLERANCE",
    "TabularMDP",
]

#: Absolute tolerance for "is a probability distribution": entries may be as low as
#: ``-PROBABILITY_TOLERANCE`` (they are then clipped to 0) and sums may miss 1 by at most
#: this much.
PROBABILITY_TOLERANCE = 1e-8

#: Relative tolerance for "``rewards`` is the expectation of ``transition_rewards``":
#: ``|r(s, a) - sum_s' P(s'|s,a) R(s,a,s')| <= REWARD_TOLERANCE * (1 + max_s' |R(s,a,s')|)``.
REWARD_TOLERANCE = 1e-9

#: Most entries one array of an MDP file may declare: ``S A S <= 5e7`` for
#: ``transitions``, 400 MB as float64 (checking it makes a few more copies of that size).
#: :meth:`TabularMDP.from_file` checks every array's declared shape against it before it
#: builds any array, so a small file cannot ask for gigabytes.
MAX_FILE_ENTRIES = 50_000_000
#: Largest ``.npz`` MDP file: two ``[S, A, S]`` float64 tables at :data:`MAX_FILE_ENTRIES`
#: take 800 MB.
MAX_NPZ_BYTES = 2**30
#: Largest ``.yaml`` MDP file (16 MiB). YAML is for MDPs written by hand: PyYAML parses
#: about 0.5 MB/s and holds ~16 bytes per byte of text; write larger MDPs as ``.npz``.
MAX_YAML_BYTES = 2**24

_REQUIRED_FILE_KEYS = ("horizon", "initial", "transitions", "rewards")
_OPTIONAL_FILE_KEYS = (
    "name",
    "gamma",
    "terminal",
    "states",
    "actions",
    "transition_rewards",
    "features",
)


def _fmt(value: float) -> str:
    """Short, unambiguous rendering of a number for error messages."""
    return f"{float(value):.12g}"


def _index(flat_index: int, shape: Sequence[int]) -> str:
    """``[3, 1]`` style rendering of a multi-index from a flat position."""
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat_index, tuple(shape))) + "]"


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def _to_float64(field: str, value: Any) -> torch.Tensor:
    """A float64 tensor that shares no memory with ``value``; ValueError if not numeric."""
    try:
        if isinstance(value, torch.Tensor):
            if value.is_complex():
                raise TypeError("complex")
            tensor = value.detach().to(device="cpu", dtype=torch.float64).clone()
        else:
            array = np.array(value, dtype=np.float64)  # np.array copies
            tensor = torch.from_numpy(array)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{field} must be a numeric array (list, numpy array or tensor); "
            f"could not convert a {type(value).__name__}: {error}"
        ) from None
    return tensor


def _check_finite(field: str, tensor: torch.Tensor) -> None:
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        flat = int(torch.nonzero(bad.reshape(-1))[0])
        value = tensor.reshape(-1)[flat].item()
        raise ValueError(
            f"{field}{_index(flat, tensor.shape)} is {value}; all entries must be finite"
        )


def _check_distribution(field: str, tensor: torch.Tensor, tol: float) -> torch.Tensor:
    """Check that the last axis of ``tensor`` holds distributions; return it clipped at 0."""
    _check_finite(field, tensor)
    negative = tensor < -tol
    if bool(negative.any()):
        flat = int(torch.nonzero(negative.reshape(-1))[0])
        value = tensor.reshape(-1)[flat].item()
        raise ValueError(
            f"{field}{_index(flat, tensor.shape)} is {_fmt(value)}; probabilities must be "
            f">= 0 (tolerance {tol:g})"
        )
    sums = tensor.sum(dim=-1)
    off = (sums - 1.0).abs() > tol
    if bool(off.any()):
        flat = int(torch.nonzero(off.reshape(-1))[0])
        total = sums.reshape(-1)[flat].item()
        where = _index(flat, sums.shape) if sums.dim() > 0 else ""
        raise ValueError(f"{field}{where} sums to {_fmt(total)}, expected 1 (tolerance {tol:g})")
    return tensor.clamp_min(0.0)


def _check_expected_rewards(
    rewards: torch.Tensor, transitions: torch.Tensor, transition_rewards: torch.Tensor
) -> None:
    """ValueError unless ``rewards[s, a] = sum_s' P(s'|s,a) R(s,a,s')`` within tolerance."""
    expected = (transitions * transition_rewards).sum(dim=-1)
    scale = 1.0 + transition_rewards.abs().amax(dim=-1)
    off = (rewards - expected).abs() > REWARD_TOLERANCE * scale
    if bool(off.any()):
        s, a = (int(i) for i in torch.nonzero(off)[0])
        raise ValueError(
            f"rewards[{s}, {a}] is {_fmt(rewards[s, a].item())} but "
            f"sum_s' transitions[{s}, {a}, s'] * transition_rewards[{s}, {a}, s'] is "
            f"{_fmt(expected[s, a].item())}; rewards must be the expectation of "
            f"transition_rewards (tolerance {REWARD_TOLERANCE:g} * (1 + max |R|))"
        )


class TabularMDP:
    """A finite-horizon MDP with ``S`` states and ``A`` actions, stored as float64 tensors.

    Args:
        transitions: ``[S, A, S]`` transition probabilities ``P(s' | s, a)``. Entries must be
            finite and ``>= -1e-8`` (tiny negatives are clipped to 0) and every row
            ``transitions[s, a]`` must sum to 1 within ``1e-8``.
        rewards: expected rewards ``r(s, a)`` with shape ``[S, A]``, or per-transition
            rewards ``R(s, a, s')`` with shape ``[S, A, S]``, which are reduced to
            ``r(s, a) = sum_{s'} P(s' | s, a) R(s, a, s')``; the ``[S, A, S]`` form is
            also kept as ``transition_rewards`` (it is shorthand for passing it there).
            Must be finite.
        initial: ``[S]`` start distribution ``rho``.
        horizon: ``T``, the number of decisions per episode; an ``int >= 1``.
        gamma: discount factor in ``[0, 1]``; ``J = E[sum_t gamma^t r_t]``.
        terminal: optional ``[S]`` boolean mask of terminal states (default: none). Every
            terminal ``s`` must be absorbing (``P[s, a, s] = 1`` for all ``a``) with zero
            reward (``r(s, a) = 0`` for all ``a``).
        name: a label used in ``repr`` and in stored results.
        state_names: optional ``S`` labels (e.g. ``"start"``), kept for display and files.
        action_names: optional ``A`` labels (e.g. ``"left"``).
        transition_rewards: optional ``[S, A, S]`` realized rewards ``R(s, a, s')``, paid by
            the samplers on the step ``s -> s'``. Must be finite; with it, ``rewards`` must
            be ``[S, A]`` and equal ``sum_{s'} P(s' | s, a) R(s, a, s')`` within
            ``REWARD_TOLERANCE * (1 + max_{s'} |R(s, a, s')|)`` (``rewards`` is then kept as
            given, so the exact oracle sees exactly the ``r`` it was given). Terminal
            ``s`` must have ``R(s, a, s') = 0`` wherever ``P(s' | s, a) > 0``. Entries
            with ``P(s' | s, a) = 0`` are never paid and are kept as given.
        features: optional ``[S, A, d]`` finite feature vectors ``phi(s, a)`` (``d >= 1``)
            of a linear-softmax policy ``pi(a|s) = softmax_a(theta . phi(s, a))``
            (:mod:`pglab.tabular.features`); ``None`` (default): the policy is the
            tabular softmax with one logit per ``(s, a)``. They describe the policy class
            the MDP is meant for, not its dynamics: the oracle and the samplers ignore them.

    Raises:
        ValueError: on any malformed field, naming the field, the index and the value, e.g.
            ``transitions[3, 1] sums to 0.97, expected 1 (tolerance 1e-08)``.

    Attributes ``transitions``, ``rewards``, ``transition_rewards``, ``initial`` and
    ``terminal`` are private copies (float64 / bool, on the CPU); treat them as read-only.
    """

    transitions: torch.Tensor
    rewards: torch.Tensor
    transition_rewards: torch.Tensor | None
    initial: torch.Tensor
    horizon: int
    gamma: float
    terminal: torch.Tensor
    name: str
    state_names: tuple[str, ...] | None
    action_names: tuple[str, ...] | None
    features: torch.Tensor | None

    @thread_invariant
    def __init__(
        self,
        transitions: Any,
        rewards: Any,
        initial: Any,
        horizon: int,
        gamma: float = 1.0,
        terminal: Any = None,
        name: str = "custom",
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
        transition_rewards: Any = None,
        features: Any = None,
    ) -> None:
        tol = PROBABILITY_TOLERANCE

        # --- scalars -------------------------------------------------------------------
        checks.instance("name", name, str)
        horizon = checks.positive_int("horizon", horizon)
        gamma = checks.discount("gamma", gamma)

        # --- transitions ---------------------------------------------------------------
        p = _to_float64("transitions", transitions)
        if p.dim() != 3 or p.shape[0] != p.shape[2] or p.shape[0] == 0 or p.shape[1] == 0:
            raise ValueError(
                f"transitions must have shape [S, A, S] with S, A >= 1, got shape {_shape(p.shape)}"
            )
        n_states, n_actions = int(p.shape[0]), int(p.shape[1])
        p = _check_distribution("transitions", p, tol)

        # --- rewards: r(s, a) and, if given, R(s, a, s') -------------------------------
        sas = (n_states, n_actions, n_states)
        r = _to_float64("rewards", rewards)
        big_r: torch.Tensor | None = None
        big_r_field = "transition_rewards"
        if tuple(r.shape) == sas:
            _check_finite("rewards", r)
            if transition_rewards is not None:
                raise ValueError(
                    "rewards has shape [S, A, S] and transition_rewards is given too; give "
                    "R(s, a, s') once (rewards as [S, A] r(s, a) alongside it, or only one of them)"
                )
            big_r, big_r_field = r, "rewards"
            r = (p * big_r).sum(dim=-1)
        elif tuple(r.shape) == (n_states, n_actions):
            _check_finite("rewards", r)
            if transition_rewards is not None:
                big_r = _to_float64("transition_rewards", transition_rewards)
                if tuple(big_r.shape) != sas:
                    raise ValueError(
                        f"transition_rewards has shape {_shape(big_r.shape)}, expected "
                        f"[S, A, S] = {_shape(sas)} (from transitions)"
                    )
                _check_finite("transition_rewards", big_r)
                # r = E[R] is checked after the terminal states (their error says more)
        else:
            raise ValueError(
                f"rewards has shape {_shape(r.shape)}, expected [S, A] = "
                f"{_shape((n_states, n_actions))} or [S, A, S] = {_shape(sas)} (from transitions)"
            )

        # --- initial -------------------------------------------------------------------
        rho = _to_float64("initial", initial)
        if tuple(rho.shape) != (n_states,):
            raise ValueError(
                f"initial has shape {_shape(rho.shape)}, expected [S] = [{n_states}] "
                "(from transitions)"
            )
        rho = _check_distribution("initial", rho, tol)

        # --- terminal ------------------------------------------------------------------
        if terminal is None:
            term = torch.zeros(n_states, dtype=torch.bool)
        else:
            term_array = np.array(
                terminal.detach().cpu().numpy() if isinstance(terminal, torch.Tensor) else terminal
            )
            if term_array.dtype != np.bool_:
                raise ValueError(
                    f"terminal must be a boolean mask of shape [S] = [{n_states}], got dtype "
                    f"{term_array.dtype} (to give state indices, build the mask first)"
                )
            if term_array.shape != (n_states,):
                raise ValueError(
                    f"terminal has shape {_shape(term_array.shape)}, expected [S] = "
                    f"[{n_states}] (from transitions)"
                )
            term = torch.from_numpy(term_array.copy())
        for s in torch.nonzero(term).flatten().tolist():
            for a in range(n_actions):
                stay = p[s, a, s].item()
                if abs(stay - 1.0) > tol:
                    raise ValueError(
                        f"transitions[{s}, {a}, {s}] is {_fmt(stay)} but state {s} is terminal; "
                        "terminal states must be absorbing (P[s, a, s] = 1 for every action)"
                    )
                reward = r[s, a].item()
                if reward != 0.0:
                    raise ValueError(
                        f"rewards[{s}, {a}] is {_fmt(reward)} but state {s} is terminal; "
                        "terminal states must give zero reward"
                    )
                if big_r is not None:
                    paid = (p[s, a] > 0) & (big_r[s, a] != 0)
                    if bool(paid.any()):
                        target = int(torch.nonzero(paid)[0])
                        raise ValueError(
                            f"{big_r_field}[{s}, {a}, {target}] is "
                            f"{_fmt(big_r[s, a, target].item())} but state {s} is terminal; "
                            "terminal states must give zero reward"
                        )

        if big_r is not None and big_r_field == "transition_rewards":
            _check_expected_rewards(r, p, big_r)

        # --- names ---------------------------------------------------------------------
        states = self._check_names("state_names", state_names, n_states)
        actions = self._check_names("action_names", action_names, n_actions)

        # --- features phi(s, a) [S, A, d] ----------------------------------------------
        phi = None
        if features is not None:
            phi = _to_float64("features", features)
            if phi.dim() != 3 or tuple(phi.shape[:2]) != (n_states, n_actions) or phi.shape[2] < 1:
                raise ValueError(
                    f"features must have shape [S, A, d] = [{n_states}, {n_actions}, d >= 1], "
                    f"got shape {_shape(phi.shape)}"
                )
            if not bool(torch.isfinite(phi).all()):
                bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(phi))[0])
                raise ValueError(f"features{list(bad)} = {float(phi[bad])} is not finite")

        self.transitions = p
        self.rewards = r
        self.transition_rewards = big_r
        self.initial = rho
        self.horizon = horizon
        self.gamma = gamma
        self.terminal = term
        self.name = name
        self.state_names = states
        self.action_names = actions
        self.features = phi

    @staticmethod
    def _check_names(field: str, names: Sequence[str] | None, n: int) -> tuple[str, ...] | None:
        if names is None:
            return None
        if isinstance(names, str):
            raise ValueError(f"{field} must be a sequence of {n} strings, got the string {names!r}")
        names = tuple(names)
        if len(names) != n:
            raise ValueError(f"{field} has {len(names)} entries, expected {n}")
        for i, label in enumerate(names):
            if not isinstance(label, str):
                raise ValueError(f"{field}[{i}] is {label!r}; names must be strings")
        return names

    # --- sizes and display -------------------------------------------------------------
    @property
    def n_states(self) -> int:
        """``S``, the number of states (including any added terminal state)."""
        return int(self.transitions.shape[0])

    @property
    def n_actions(self) -> int:
        """``A``, the number of actions, the same in every state."""
        return int(self.transitions.shape[1])

    def __repr__(self) -> str:
        n_terminal = int(self.terminal.sum())
        return (
            f"TabularMDP(name={self.name!r}, n_states={self.n_states}, "
            f"n_actions={self.n_actions}, horizon={self.horizon}, gamma={self.gamma!r}, "
            f"n_terminal={n_terminal})"
        )

    def replace(self, **changes: Any) -> TabularMDP:
        """A validated copy with some constructor arguments changed, e.g. ``horizon=50``.

        Rewards: new ``rewards`` alone replace the whole reward model (an ``[S, A]`` array
        drops ``transition_rewards``; an ``[S, A, S]`` one becomes it). New
        ``transition_rewards`` alone recompute ``r`` from them (``None`` drops them and
        keeps ``r``). New ``transitions`` with the rewards unchanged recompute ``r`` from
        the kept ``R(s, a, s')`` if there is one (else ``r`` is kept as it is).
        """
        fields = {
            "transitions": self.transitions,
            "rewards": self.rewards,
            "transition_rewards": self.transition_rewards,
            "initial": self.initial,
            "horizon": self.horizon,
            "gamma": self.gamma,
            "terminal": self.terminal,
            "name": self.name,
            "state_names": self.state_names,
            "action_names": self.action_names,
            "features": self.features,
        }
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"replace() got unknown field(s) {unknown}; known: {sorted(fields)}")
        fields.update(changes)
        new_r, new_big_r = "rewards" in changes, "transition_rewards" in changes
        if new_r and not new_big_r:
            fields["transition_rewards"] = None  # a new reward model
        elif new_big_r and not new_r:
            if fields["transition_rewards"] is not None:  # r = sum_s' P R, P possibly new
                fields["rewards"], fields["transition_rewards"] = fields["transition_rewards"], None
            # None: drop R and keep r as it is
        elif not new_r and "transitions" in changes and self.transition_rewards is not None:
            fields["rewards"], fields["transition_rewards"] = self.transition_rewards, None
        return TabularMDP(**fields)

    # --- gymnasium ---------------------------------------------------------------------
    @classmethod
    def from_gymnasium(
        cls,
        env: Any,
        horizon: int | None = None,
        gamma: float = 1.0,
        name: str | None = None,
        **make_kwargs: Any,
    ) -> TabularMDP:
        """Build the MDP of a gymnasium toy-text environment from its model ``env.unwrapped.P``.

        Args:
            env: a gymnasium environment object, or an id string such as ``"FrozenLake-v1"``
                (then made with ``gymnasium.make(env, **make_kwargs)`` and closed again).
            horizon: ``T``; defaults to ``env.spec.max_episode_steps`` (the ``TimeLimit`` the
                registry puts on the env). A ValueError is raised if neither exists, e.g. for
                ``CliffWalking-v1``, which has no time limit.
            gamma: discount factor in ``[0, 1]``.
            name: label; defaults to ``env.spec.id`` (or the class name without a spec).

        How the model is read. ``P[s][a]`` is a list of ``(prob, next_state, reward,
        terminated)`` outcomes (toy-text convention, used by FrozenLake, CliffWalking and
        Taxi). Then

        * ``P(s' | s, a)`` sums the probabilities of all outcomes landing in ``s'``
          (FrozenLake lists the same next state twice when a slip hits a wall);
        * ``r(s, a) = sum_outcomes prob * reward`` is the expected reward, including the
          reward of the step that terminates;
        * ``R(s, a, s')`` (``transition_rewards``), the reward the env pays on the step
          ``s -> s'``, is the probability-weighted mean reward of the outcomes landing in
          ``s'`` (after the terminal routing below). It is kept only when it depends on
          ``s'`` for some ``(s, a)`` (FrozenLake slippery: 1 only when the slip lands on
          G; CliffWalking slippery); when every outcome of each ``(s, a)`` pays the same
          (deterministic envs, Taxi) realized and expected rewards coincide and
          ``transition_rewards`` is ``None``. Outcomes that land in the same ``s'`` with
          different rewards (slippery CliffWalking: a cliff fall and a wall bump both end
          on the start state) are merged into their mean, the one thing an ``[S, A, S]``
          reward cannot keep;
        * ``initial`` is ``env.unwrapped.initial_state_distrib`` (FrozenLake, Taxi and
          CliffWalking all define it; CliffWalking puts all mass on its start state 36).

        Termination. An outcome with ``terminated=True`` ends the episode, so it must lead
        to a terminal (absorbing, zero-reward) state:

        * if the landing state ``s'`` is already absorbing with zero reward under every
          action in ``P`` (FrozenLake's holes and goal), ``s'`` itself is marked terminal;
        * otherwise (CliffWalking's goal 47 and Taxi's drop-off states still carry ordinary
          dynamics in ``P``) the outcome is routed to **one extra absorbing terminal state
          with index S**, appended after the env's states. The MDP then has ``S + 1``
          states, so logits have ``S + 1`` rows; env observations ``0..S-1`` keep their
          indices, and the extra state has ``rho = 0``.

        Time limits are not terminations: the ``TimeLimit`` truncation is what ``horizon``
        models.

        Returns:
            A validated :class:`TabularMDP` (float64).
        """
        owns_env = isinstance(env, str)
        if owns_env:
            import gymnasium

            env = gymnasium.make(env, **make_kwargs)
        elif make_kwargs:
            raise ValueError(
                f"make_kwargs {sorted(make_kwargs)} only apply when env is an id string"
            )
        try:
            return cls._from_gymnasium_env(env, horizon=horizon, gamma=gamma, name=name)
        finally:
            if owns_env:
                env.close()

    @classmethod
    def _from_gymnasium_env(
        cls, env: Any, horizon: int | None, gamma: float, name: str | None
    ) -> TabularMDP:
        unwrapped = env.unwrapped
        spec = getattr(env, "spec", None)
        env_name = spec.id if spec is not None else type(unwrapped).__name__
        model = getattr(unwrapped, "P", None)
        if not isinstance(model, dict):
            raise ValueError(
                f"env {env_name} has no tabular model env.unwrapped.P "
                "(dict state -> action -> [(prob, next_state, reward, terminated)])"
            )
        n_states = int(getattr(unwrapped.observation_space, "n", len(model)))
        n_actions = int(getattr(unwrapped.action_space, "n", len(model[0])))
        if horizon is None:
            horizon = getattr(spec, "max_episode_steps", None) if spec is not None else None
            if horizon is None:
                raise ValueError(
                    f"horizon: env {env_name} has no max_episode_steps (no TimeLimit); "
                    "pass horizon=..."
                )
        initial_env = getattr(unwrapped, "initial_state_distrib", None)
        if initial_env is None:
            raise ValueError(
                f"initial: env {env_name} has no initial_state_distrib attribute; "
                "build the TabularMDP by hand"
            )

        # Flatten the outcome lists into columns (one Python pass; the rest is vectorised).
        rows_s, rows_a, probs, nexts, rewards, dones = [], [], [], [], [], []
        for s in range(n_states):
            for a in range(n_actions):
                for prob, next_state, reward, terminated in model[s][a]:
                    rows_s.append(s)
                    rows_a.append(a)
                    probs.append(prob)
                    nexts.append(next_state)
                    rewards.append(reward)
                    dones.append(terminated)
        rows_s_np = np.asarray(rows_s, dtype=np.int64)
        rows_a_np = np.asarray(rows_a, dtype=np.int64)
        probs_np = np.asarray(probs, dtype=np.float64)
        nexts_np = np.asarray(nexts, dtype=np.int64)
        rewards_np = np.asarray(rewards, dtype=np.float64)
        dones_np = np.asarray(dones, dtype=bool) & (probs_np > 0)

        # States that are absorbing with zero reward under every action, as P stands.
        live = probs_np > 0
        leaves = live & (nexts_np != rows_s_np)
        pays = live & (rewards_np != 0)
        absorbing = np.ones(n_states, dtype=bool)
        absorbing[rows_s_np[leaves | pays]] = False

        landing = np.zeros(n_states, dtype=bool)
        landing[nexts_np[dones_np]] = True
        terminal_env = landing & absorbing
        needs_extra = bool((dones_np & ~terminal_env[nexts_np]).any())
        n_total = n_states + 1 if needs_extra else n_states

        targets = nexts_np.copy()
        if needs_extra:
            targets[dones_np & ~terminal_env[nexts_np]] = n_states

        transitions = np.zeros((n_total, n_actions, n_total), dtype=np.float64)
        np.add.at(transitions, (rows_s_np, rows_a_np, targets), probs_np)
        expected_reward = np.zeros((n_total, n_actions), dtype=np.float64)
        np.add.at(expected_reward, (rows_s_np, rows_a_np), probs_np * rewards_np)
        # R(s, a, s'): mean reward of the outcomes landing in s' (where P(s'|s,a) > 0)
        weighted = np.zeros((n_total, n_actions, n_total), dtype=np.float64)
        np.add.at(weighted, (rows_s_np, rows_a_np, targets), probs_np * rewards_np)
        reached = transitions > 0
        transition_rewards = np.zeros_like(weighted)
        np.divide(weighted, transitions, out=transition_rewards, where=reached)
        # where all those outcomes pay the same reward, take it exactly (no round-off)
        lowest = np.full_like(weighted, np.inf)
        highest = np.full_like(weighted, -np.inf)
        live_rows = (rows_s_np[live], rows_a_np[live], targets[live])
        np.minimum.at(lowest, live_rows, rewards_np[live])
        np.maximum.at(highest, live_rows, rewards_np[live])
        single = reached & (lowest == highest)
        transition_rewards[single] = lowest[single]
        scale = 1.0 + np.abs(transition_rewards).max(axis=-1)
        spread = np.abs(transition_rewards - expected_reward[..., None])
        state_dependent = bool((reached & (spread > REWARD_TOLERANCE * scale[..., None])).any())
        terminal = np.zeros(n_total, dtype=bool)
        terminal[:n_states] = terminal_env
        if needs_extra:
            terminal[n_states] = True
            transitions[n_states, :, n_states] = 1.0
        initial = np.zeros(n_total, dtype=np.float64)
        initial[:n_states] = np.asarray(initial_env, dtype=np.float64)

        return cls(
            transitions=transitions,
            rewards=expected_reward,
            initial=initial,
            horizon=horizon,
            gamma=gamma,
            terminal=terminal,
            name=name if name is not None else env_name,
            transition_rewards=transition_rewards if state_dependent else None,
        )

    # --- files -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> TabularMDP:
        """Load an MDP from a ``.yaml``/``.yml`` or ``.npz`` file.

        YAML: a mapping with these keys (lists are nested plain lists)::

            name: two_state            # optional str, default: the file name without suffix
            horizon: 3                 # required int >= 1, T
            gamma: 1.0                 # optional float in [0, 1], default 1.0
            initial: [1.0, 0.0]        # required [S], rho
            transitions:               # required [S][A][S], P(s'|s,a)
              - [[1.0, 0.0], [0.0, 1.0]]
              - [[0.0, 1.0], [0.0, 1.0]]
            rewards:                   # required [S][A] r(s,a), or [S][A][S] R(s,a,s')
              - [1.0, 0.0]
              - [2.0, 0.0]
            transition_rewards: ...    # optional [S][A][S] R(s,a,s'), with rewards [S][A]
            terminal: [3]              # optional: state indices, or [S] booleans
            states: [start, goal]      # optional [S] state names
            actions: [stay, go]        # optional [A] action names
            features: ...              # optional [S][A][d] phi(s,a) of a feature policy

        Rewards ``[S][A][S]`` are the realized ``R(s, a, s')``: they become
        ``transition_rewards`` and ``r`` is their expectation. ``transition_rewards`` with
        ``rewards`` ``[S][A]`` says the same with ``r`` spelled out (it must be the
        expectation; this is what :meth:`to_file` writes).

        NPZ: the same names as arrays (``numpy.savez``): ``transitions`` ``[S, A, S]``,
        ``rewards`` ``[S, A]`` or ``[S, A, S]``, ``initial`` ``[S]``, 0-d ``horizon``
        (int) and ``gamma`` (float), and optionally 0-d string ``name``, ``terminal``
        (``[S]`` bool or 1-d int indices), ``states`` / ``actions`` (1-d strings),
        ``transition_rewards`` ``[S, A, S]``. The file is read with ``allow_pickle=False``.

        Unknown keys are an error (they are usually typos). A missing required key raises
        ValueError naming the key and the file; the contents are then validated exactly as
        in the constructor.

        Size limits, checked before any array is built: the file is at most
        :data:`MAX_NPZ_BYTES` (1 GiB) or :data:`MAX_YAML_BYTES` (16 MiB), and every array
        declares at most :data:`MAX_FILE_ENTRIES` (5e7) entries, e.g. ``S A S`` for
        ``transitions``: the ``.npy`` headers inside an ``.npz`` are read without loading
        the arrays, and YAML lists are counted (repeated aliases included) before they are
        converted. The error names the array, its shape and the limit.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            import yaml

            _check_file_size(path, MAX_YAML_BYTES, "write large MDPs as .npz")
            with path.open("r", encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
            if not isinstance(data, dict):
                raise ValueError(
                    f"{path}: expected a YAML mapping with keys {list(_REQUIRED_FILE_KEYS)}, "
                    f"got {type(data).__name__}"
                )
            for key, value in data.items():
                if isinstance(value, list):
                    _check_declared_size(path, str(key), *_nested_shape(path, str(key), value))
        elif suffix == ".npz":
            _check_file_size(path, MAX_NPZ_BYTES, "")
            _check_npz_headers(path)
            with np.load(path, allow_pickle=False) as archive:
                data = {key: archive[key] for key in archive.files}
            for key in ("name", "horizon", "gamma"):
                if key in data:
                    data[key] = data[key].item()
            for key in ("states", "actions"):
                if key in data:
                    data[key] = [str(label) for label in data[key].tolist()]
        else:
            raise ValueError(f"{path}: unknown MDP file suffix {path.suffix!r}; use .yaml or .npz")

        missing = [key for key in _REQUIRED_FILE_KEYS if key not in data]
        if missing:
            raise ValueError(f"{path}: missing required key {missing[0]!r} (missing: {missing})")
        unknown = sorted(set(data) - set(_REQUIRED_FILE_KEYS) - set(_OPTIONAL_FILE_KEYS))
        if unknown:
            raise ValueError(
                f"{path}: unknown key {unknown[0]!r}; allowed keys are "
                f"{list(_REQUIRED_FILE_KEYS + _OPTIONAL_FILE_KEYS)}"
            )

        transitions = data["transitions"]
        terminal = data.get("terminal")
        if terminal is not None:
            n_states = len(transitions)
            terminal = _terminal_mask(terminal, n_states)
        return cls(
            transitions=transitions,
            rewards=data["rewards"],
            initial=data["initial"],
            horizon=data["horizon"],
            gamma=data.get("gamma", 1.0),
            terminal=terminal,
            name=data.get("name", path.stem),
            state_names=data.get("states"),
            action_names=data.get("actions"),
            transition_rewards=data.get("transition_rewards"),
            features=data.get("features"),
        )

    def to_file(self, path: str | Path) -> None:
        """Write the MDP to ``.yaml``/``.yml`` or ``.npz`` in the format of :meth:`from_file`.

        Rewards are written as the expected ``r(s, a)`` (``[S][A]``), plus
        ``transition_rewards`` ``[S][A][S]`` when the MDP has them; terminal states as a
        list of indices. Floats are written with full precision, so ``from_file`` gives back
        an identical MDP.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        terminal_indices = torch.nonzero(self.terminal).flatten().tolist()
        if suffix in (".yaml", ".yml"):
            import yaml

            data: dict[str, Any] = {
                "name": self.name,
                "horizon": self.horizon,
                "gamma": self.gamma,
                "initial": self.initial.tolist(),
                "transitions": self.transitions.tolist(),
                "rewards": self.rewards.tolist(),
            }
            if self.transition_rewards is not None:
                data["transition_rewards"] = self.transition_rewards.tolist()
            if terminal_indices:
                data["terminal"] = terminal_indices
            if self.state_names is not None:
                data["states"] = list(self.state_names)
            if self.action_names is not None:
                data["actions"] = list(self.action_names)
            if self.features is not None:
                data["features"] = self.features.tolist()
            with path.open("w", encoding="utf-8") as handle:
                yaml.safe_dump(data, handle, sort_keys=False, default_flow_style=None)
        elif suffix == ".npz":
            arrays: dict[str, np.ndarray] = {
                "name": np.array(self.name),
                "horizon": np.array(self.horizon, dtype=np.int64),
                "gamma": np.array(self.gamma, dtype=np.float64),
                "initial": self.initial.numpy(),
                "transitions": self.transitions.numpy(),
                "rewards": self.rewards.numpy(),
                "terminal": self.terminal.numpy(),
            }
            if self.transition_rewards is not None:
                arrays["transition_rewards"] = self.transition_rewards.numpy()
            if self.state_names is not None:
                arrays["states"] = np.array(self.state_names, dtype=np.str_)
            if self.action_names is not None:
                arrays["actions"] = np.array(self.action_names, dtype=np.str_)
            if self.features is not None:
                arrays["features"] = self.features.numpy()
            with path.open("wb") as handle:
                np.savez(handle, **arrays)
        else:
            raise ValueError(f"{path}: unknown MDP file suffix {path.suffix!r}; use .yaml or .npz")


def _terminal_mask(terminal: Any, n_states: int) -> np.ndarray:
    """Turn a file's ``terminal`` entry (indices or ``[S]`` booleans) into a bool mask."""
    values = np.asarray(terminal)
    if values.dtype == np.bool_:
        return values
    values = values.reshape(-1)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"terminal must be a list of state indices or of {n_states} booleans, got {terminal!r}"
        )
    mask = np.zeros(n_states, dtype=bool)
    for position, index in enumerate(values.tolist()):
        if not 0 <= index < n_states:
            raise ValueError(
                f"terminal[{position}] is {index}, not a state index in [0, {n_states - 1}]"
            )
        mask[index] = True
    return mask


# --- file size limits --------------------------------------------------------------------
def _check_file_size(path: Path, limit: int, hint: str) -> None:
    size = path.stat().st_size
    if size > limit:
        advice = f"; {hint}" if hint else ""
        raise ValueError(
            f"{path}: the file has {size} bytes, more than the {limit} bytes an MDP "
            f"{path.suffix} file may have{advice}"
        )


def _check_declared_size(path: Path, key: str, shape: Sequence[int], entries: int) -> None:
    """ValueError unless an array of ``entries`` entries (shape ``shape``) fits the limit."""
    if entries > MAX_FILE_ENTRIES:
        raise ValueError(
            f"{path}: {key} has shape {_shape(shape)} ({entries} entries); an array of an MDP "
            f"file may have at most MAX_FILE_ENTRIES = {MAX_FILE_ENTRIES} entries "
            f"(S*A*S <= {MAX_FILE_ENTRIES:.0e}, {8 * MAX_FILE_ENTRIES // 10**6} MB as float64)"
        )


def _check_npz_headers(path: Path) -> None:
    """Check every array of an ``.npz`` against the limits from its ``.npy`` header alone.

    An ``.npz`` is a zip of ``.npy`` files; each starts with a header declaring its shape
    and dtype, read here without reading (or decompressing) the data.
    """
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not a valid .npz file ({error})") from None
    with archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if info.filename.endswith(".npy"):
                with archive.open(info) as handle:
                    try:
                        version = npy.read_magic(handle)
                        reader = readers.get(version)
                        if reader is None:
                            raise ValueError(f"unsupported .npy format version {version}")
                        shape, _, dtype = reader(handle)
                    except ValueError as error:
                        raise ValueError(
                            f"{path}: {key} is not a valid .npy array ({error})"
                        ) from None
                entries = math.prod(shape)
                _check_declared_size(path, key, shape, entries)
                if entries * dtype.itemsize > 8 * MAX_FILE_ENTRIES:
                    raise ValueError(
                        f"{path}: {key} has shape {_shape(shape)} of dtype {dtype} "
                        f"({entries * dtype.itemsize} bytes); an array of an MDP file may hold "
                        f"at most {8 * MAX_FILE_ENTRIES} bytes"
                    )
            # any member (an array, or something np.load would read whole) is bounded too
            byte_limit = 8 * MAX_FILE_ENTRIES + 2**16  # the data plus a header
            if info.file_size > byte_limit:
                raise ValueError(
                    f"{path}: {key} holds {info.file_size} bytes uncompressed; an entry of an "
                    f"MDP .npz file may hold at most {byte_limit} bytes"
                )


def _nested_shape(path: Path, key: str, value: list) -> tuple[list[int], int]:
    """(shape along the first elements, number of scalar leaves) of nested YAML lists.

    Leaves are counted per reference, as ``np.array`` would copy them: a list that YAML
    aliases ``k`` times counts ``k`` times. Each distinct list is visited once, so the
    cost is bounded by the size of the file, however many aliases multiply it.
    """
    counts: dict[int, int] = {}
    open_lists: set[int] = set()
    stack: list[tuple[list, bool]] = [(value, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in counts:
            continue
        if children_done:
            open_lists.discard(id(node))
            counts[id(node)] = sum(counts[id(c)] if isinstance(c, list) else 1 for c in node)
            continue
        open_lists.add(id(node))
        stack.append((node, True))
        for child in node:
            if isinstance(child, list) and id(child) not in counts:
                if id(child) in open_lists:
                    raise ValueError(f"{path}: {key} contains itself (a recursive YAML alias)")
                stack.append((child, False))
    shape = []  # no cycles (checked above), so this walk ends
    node: Any = value
    while isinstance(node, list):
        shape.append(len(node))
        node = node[0] if node else None
    return shape, counts[id(value)]
