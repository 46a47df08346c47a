"""Batches of exactly N complete episodes from a discrete-action gymnasium environment.

:class:`RolloutCollector` runs N copies of an environment side by side in one gymnasium
vector environment. Every call to :meth:`RolloutCollector.collect` resets all N copies and
plays exactly one episode in each, so a batch holds N independent episodes
tau_i = (s_0, a_0, r_1, s_1, a_1, ..., r_T_i) drawn from the current policy pi_theta,
the samples the Monte-Carlo estimate

    grad U(theta) ~= (1/N) sum_i [sum_t grad log pi_theta(a_t | s_t)] R(tau_i)

needs. Because the batch size N is fixed in advance and every environment copy
contributes exactly one episode, long and short episodes are never selected against:
the N episodes are i.i.d. draws from the policy's episode distribution.

Episode ends
------------
An episode ends at the first step where the environment reports ``terminated`` (a
terminal state of the MDP, e.g. the pole fell) or ``truncated`` (the time limit
``max_episode_steps`` was reached, 500 for CartPole-v1). The two are kept apart:
``EpisodeBatch.terminated[i]`` is False for a truncated episode, whose last state is
*not* terminal, so a user can bootstrap from a value estimate there. REINFORCE simply
uses the observed rewards. If both flags are set on the same step, the episode counts
as terminated.

Autoreset and wasted steps
--------------------------
Gymnasium vector environments keep stepping every copy. Once copy i has ended its
episode it is given a dummy action (0) and everything it returns is discarded (with
gymnasium's next-step autoreset, its next step is a reset step with reward 0 and both
flags False; later steps belong to a new, unwanted episode). Those steps are masked out
and counted in ``EpisodeBatch.env_steps`` only. The loop stops at the step where the
last of the N episodes ends, and the next ``collect`` starts from a full ``reset``, so
every batch begins with N fresh episodes whatever the autoreset mode.

Cost
----
Per vector step: one ``env.step`` on all N copies, one ``policy.sample`` on the copies
still running (the MLP forward dominates, so finished copies are not evaluated), and a
few vectorised copies into preallocated time-major buffers (doubled when an episode
outgrows them). A batch takes T = max_i len_i vector steps, so with very unequal episode
lengths most executed steps are masked; ``EpisodeBatch.env_steps`` accounts for them.

Seeding and reproducibility
---------------------------
The first ``collect`` resets with ``seed`` (gymnasium seeds copy j with ``seed + j`` for
``SyncVectorEnv``, and one stream for the whole of ``CartPoleVectorEnv``); later calls
reset with ``seed=None`` and continue those streams. Actions are drawn only from the
``torch.Generator`` passed to ``collect``. Hence two collectors built with the same
arguments, fed the same sequence of (policy parameters, generator state), return
identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from pglab import checks
from pglab.gym.policies import CategoricalPolicy
from pglab.threads import thread_invariant

__all__ = ["EpisodeBatch", "RolloutCollector", "env_dims"]

# Rows of time allocated at first; buffers double whenever an episode runs longer.
_INITIAL_CAPACITY = 128


@dataclass
class EpisodeBatch:
    """N complete episodes, padded to the longest one (length T) and masked.

    Step t of episode i is the transition (s_t, a_t, r_{t+1}): ``observations[i, t]`` is the
    state the action ``actions[i, t]`` was taken in and ``rewards[i, t]`` is the reward that
    followed. The state reached after the last action is not stored.

    Attributes:
        observations: ``[N, T, obs_dim]`` float32, 0 where masked.
        actions: ``[N, T]`` int64, 0 where masked.
        rewards: ``[N, T]`` float32, 0 where masked.
        mask: ``[N, T]`` bool, True exactly on ``t < lengths[i]``.
        lengths: ``[N]`` int64, number of actions in episode i (>= 1); T = max(lengths).
        terminated: ``[N]`` bool, True if episode i ended in a terminal state, False if it was
            truncated by the time limit.
        env_steps: number of single-environment steps the vector environment executed for
            this batch, wasted steps after an episode's end included (= T * N here).
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    lengths: Tensor
    terminated: Tensor
    env_steps: int

    @property
    def returns(self) -> Tensor:
        """R(tau_i) = sum_t r_{t+1}, the undiscounted return of each episode: ``[N]`` float32."""
        return self.rewards.sum(dim=1)

    @property
    def n_trajectories(self) -> int:
        """N, the number of episodes."""
        return int(self.lengths.shape[0])

    @property
    def n_steps(self) -> int:
        """Number of real (unmasked) steps, sum_i lengths[i]."""
        return int(self.lengths.sum())


def _env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    checks.instance("env_id", env_id, str)
    try:
        return gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(
            f"env_id={env_id!r} is not a registered gymnasium environment ({exc})"
        ) from exc


def env_dims(env_id: str, **make_kwargs: Any) -> tuple[int, int]:
    """(obs_dim, n_actions) of ``env_id``, refusing what a categorical policy cannot play.

    Builds one copy (``gym.make(env_id, **make_kwargs)``); the action space must be
    ``Discrete(n)`` with n >= 2 actions numbered from 0 and the observation space a flat Box.
    """
    probe = gym.make(env_id, **make_kwargs)
    action_space, observation_space = probe.action_space, probe.observation_space
    probe.close()
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(
            f"env_id={env_id!r} has action space {action_space}; RolloutCollector needs a "
            "Discrete action space (categorical policies only)"
        )
    if int(action_space.start) != 0 or int(action_space.n) < 2:
        raise ValueError(
            f"env_id={env_id!r} has action space {action_space}; expected Discrete(n) with "
            "n >= 2 actions numbered from 0"
        )
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"env_id={env_id!r} has observation space {observation_space}; "
            "RolloutCollector needs a flat Box observation space [obs_dim]"
        )
    return int(observation_space.shape[0]), int(action_space.n)


class RolloutCollector:
    """Collects exactly ``n_trajectories`` complete episodes per call (see the module doc).

    Args:
        env_id: a registered gymnasium id with a ``Discrete`` action space and a flat ``Box``
            observation space (CartPole-v1, Acrobot-v1, MountainCar-v0, ...).
        n_trajectories: N, the number of episodes per batch (= number of environment copies).
        seed: seed of the first reset; later batches continue the environments' RNG streams.
        max_episode_steps: time limit; ``None`` keeps the registered one (500 for
            CartPole-v1). Every episode must end, so an environment with neither is refused.
        env_kwargs: extra keyword arguments for the environment constructor.
        vectorization_mode: ``None`` (default) picks ``"vector_entry_point"`` when the id has
            one and ``"sync"`` otherwise; either can be forced (e.g. ``"sync"`` to compare
            backends; both give episodes of the same law, not the same random draws).

    The vector environment is gymnasium's own vectorised implementation when the id has a
    vector entry point (``CartPoleVectorEnv`` for CartPole-v1, stepping all copies in
    numpy at once), otherwise a ``SyncVectorEnv`` stepping the copies one by one in Python.
    Call :meth:`close` (or use the collector as a context manager) to release it.
    """

    def __init__(
        self,
        env_id: str,
        n_trajectories: int,
        seed: int = 0,
        max_episode_steps: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        vectorization_mode: str | None = None,
    ) -> None:
        spec = _env_spec(env_id)
        n_trajectories = checks.positive_int("n_trajectories", n_trajectories)
        seed = checks.integer("seed", seed, minimum=0)
        if max_episode_steps is not None:
            max_episode_steps = checks.positive_int("max_episode_steps", max_episode_steps)
        if env_kwargs is not None:
            checks.instance("env_kwargs", env_kwargs, dict)
        time_limit = max_episode_steps if max_episode_steps is not None else spec.max_episode_steps
        if time_limit is None:
            raise ValueError(
                f"env_id={env_id!r} has no registered time limit; pass max_episode_steps so "
                "that every episode ends"
            )
        if vectorization_mode is None:
            vectorization_mode = "sync" if spec.vector_entry_point is None else "vector_entry_point"
        checks.one_of("vectorization_mode", vectorization_mode, ("vector_entry_point", "sync"))
        if vectorization_mode == "vector_entry_point" and spec.vector_entry_point is None:
            raise ValueError(
                f"vectorization_mode='vector_entry_point' but env_id={env_id!r} has no vector "
                "entry point; use 'sync' or None"
            )
        kwargs = dict(env_kwargs or {})

        # Check the spaces on one cheap copy before building N of them.
        obs_dim, n_actions = env_dims(env_id, max_episode_steps=int(time_limit), **kwargs)

        self.env_id = env_id
        self.n_trajectories = int(n_trajectories)
        self.seed = int(seed)
        self.max_episode_steps = int(time_limit)
        self._obs_dim = obs_dim
        self._n_actions = n_actions
        self.vectorization_mode = vectorization_mode
        if vectorization_mode == "vector_entry_point":
            self.env = gym.make_vec(
                env_id,
                self.n_trajectories,
                vectorization_mode="vector_entry_point",
                max_episode_steps=self.max_episode_steps,
                **kwargs,
            )
        else:
            self.env = gym.make_vec(
                env_id,
                self.n_trajectories,
                vectorization_mode="sync",
                # Observations are copied into our buffer at once, so no defensive copy.
                vector_kwargs={"copy": False},
                max_episode_steps=self.max_episode_steps,
                **kwargs,
            )
        self._first_reset = True
        # Leading rows of the buffers that the last batch wrote (None: possibly all of them).
        self._dirty_rows: int | None = 0
        # Time-major buffers [capacity, N, ...], reused across batches; step t is one
        # contiguous row. Batches are copied out of them, so batches never alias them.
        capacity = min(self.max_episode_steps, _INITIAL_CAPACITY)
        n = self.n_trajectories
        self._allocate(
            torch.zeros(capacity, n, self._obs_dim, dtype=torch.float32),
            torch.zeros(capacity, n, dtype=torch.int64),
            torch.zeros(capacity, n, dtype=torch.float32),
        )

    @property
    def obs_dim(self) -> int:
        """Length of an observation vector."""
        return self._obs_dim

    @property
    def n_actions(self) -> int:
        """Number of discrete actions."""
        return self._n_actions

    def _allocate(self, obs_buf: Tensor, act_buf: Tensor, rew_buf: Tensor) -> None:
        self._obs_buf, self._act_buf, self._rew_buf = obs_buf, act_buf, rew_buf
        # numpy views of the same memory: np.copyto from the environment's arrays is
        # several times faster than torch's copy_ (CartPoleVectorEnv returns a transposed
        # array) and converts float64 rewards/observations on the fly.
        self._obs_np, self._act_np, self._rew_np = obs_buf.numpy(), act_buf.numpy(), rew_buf.numpy()

    def _grow(self) -> None:
        """Double the time capacity of the buffers, keeping their contents."""
        grown = []
        for buf in (self._obs_buf, self._act_buf, self._rew_buf):
            new = torch.zeros((2 * buf.shape[0], *buf.shape[1:]), dtype=buf.dtype)
            new[: buf.shape[0]] = buf
            grown.append(new)
        self._allocate(*grown)

    def _play(
        self,
        obs: np.ndarray,
        policy: CategoricalPolicy,
        generator: torch.Generator,
        lengths: np.ndarray,
        terminated: np.ndarray,
    ) -> int:
        """Step all copies from the reset observations ``obs`` until every episode has ended.

        Fills the time-major buffers, ``lengths`` and ``terminated`` in place and returns T,
        the number of vector steps taken (= the longest episode). Observations and actions
        are written only for copies still running, into buffers zeroed first, so they need
        no masking afterwards. Hot loop: attributes are bound to locals, and work per step
        is a handful of vectorised numpy calls (cheaper per call than torch indexing).
        """
        env_step, sample = self.env.step, policy.sample
        obs_buf = self._obs_buf
        obs_np, act_np, rew_np = self._obs_np, self._act_np, self._rew_np
        capacity = act_np.shape[0]
        # Zero what the last batch wrote (everything if it was interrupted): copies whose
        # episode has ended keep observation 0 and the dummy action 0.
        obs_buf[: self._dirty_rows].zero_()
        self._act_buf[: self._dirty_rows].zero_()
        self._dirty_rows = None  # until this batch ends normally
        running: np.ndarray | None = None  # ascending indices still running; None: all
        t = 0
        while True:
            if t == capacity:
                self._grow()
                obs_buf = self._obs_buf
                obs_np, act_np, rew_np = self._obs_np, self._act_np, self._rew_np
                capacity = act_np.shape[0]
            obs_t, act_t = obs_np[t], act_np[t]
            if running is None:
                np.copyto(obs_t, obs, casting="unsafe")  # s_t
                act_t[:] = sample(obs_buf[t], generator).numpy()  # a_t ~ pi(. | s_t)
            else:  # the policy only sees the copies whose episode is still running
                rows = np.asarray(obs[running], dtype=np.float32)  # a fresh copy
                obs_t[running] = rows
                act_t[running] = sample(torch.from_numpy(rows), generator).numpy()
            obs, reward, term, trunc, _ = env_step(act_t)
            np.copyto(rew_np[t], reward, casting="unsafe")  # r_{t+1}, masked in collect
            t += 1
            # Episode ends among the running copies only (finished copies have autoreset).
            ended = term | trunc if running is None else term[running] | trunc[running]
            if ended.any():
                if running is None:
                    ended_idx, running = np.flatnonzero(ended), np.flatnonzero(~ended)
                else:
                    ended_idx, running = running[ended], running[~ended]
                lengths[ended_idx] = t
                terminated[ended_idx] = term[ended_idx]
                if running.size == 0:
                    self._dirty_rows = t
                    return t
            if t >= self.max_episode_steps:
                n_running = self.n_trajectories if running is None else running.size
                raise RuntimeError(
                    f"{self.env_id}: {n_running} episode(s) still running after "
                    f"max_episode_steps={self.max_episode_steps} steps; the environment does "
                    "not enforce its time limit"
                )

    @thread_invariant
    def collect(self, policy: CategoricalPolicy, generator: torch.Generator) -> EpisodeBatch:
        """Play one episode in each of the N environment copies with ``policy``.

        Actions come from ``policy.sample(obs, generator)``, evaluated only on the copies
        whose episode is still running (finished copies get the dummy action 0 and are
        masked). Runs under ``torch.no_grad``; the policy must live on the CPU.

        Returns:
            An :class:`EpisodeBatch` of N complete episodes, T = longest episode.
        """
        checks.instance("policy", policy, CategoricalPolicy)
        if policy.obs_dim != self._obs_dim or policy.n_actions != self._n_actions:
            raise ValueError(
                f"policy has obs_dim={policy.obs_dim}, n_actions={policy.n_actions}; "
                f"{self.env_id} needs obs_dim={self._obs_dim}, n_actions={self._n_actions}"
            )
        if policy.output_layer.weight.device.type != "cpu":
            raise ValueError(
                f"policy lives on {policy.output_layer.weight.device}; rollouts run on the CPU"
            )
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got {generator!r}")

        n = self.n_trajectories
        seed = self.seed if self._first_reset else None
        obs, _ = self.env.reset(seed=seed)
        self._first_reset = False
        lengths = np.zeros(n, dtype=np.int64)
        terminated = np.zeros(n, dtype=np.bool_)
        with torch.no_grad():
            t = self._play(obs, policy, generator, lengths, terminated)

        lengths_t = torch.from_numpy(lengths)
        mask = torch.arange(t).unsqueeze(0) < lengths_t.unsqueeze(1)  # [N, T]
        return EpisodeBatch(
            # Fresh [N, T, ...] copies of the time-major buffers (clone, not contiguous(),
            # which may return a view of the reused buffer when N or T is 1). Observations
            # and actions are already 0 where masked (see _play); rewards are not.
            observations=self._obs_buf[:t]
            .transpose(0, 1)
            .clone(memory_format=torch.contiguous_format),
            actions=self._act_buf[:t].T.clone(memory_format=torch.contiguous_format),
            rewards=torch.where(mask, self._rew_buf[:t].T, 0.0),
            mask=mask,
            lengths=lengths_t,
            terminated=torch.from_numpy(terminated),
            env_steps=t * n,
        )

    def close(self) -> None:
        """Release the vector environment."""
        self.env.close()

    def __enter__(self) -> RolloutCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
