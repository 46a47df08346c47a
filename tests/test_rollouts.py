"""Tests for pglab.gym.rollouts: complete, correctly masked episodes that follow the env's law."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

import pglab.gym.rollouts as rollouts
from pglab.gym.policies import make_policy
from pglab.gym.rollouts import EpisodeBatch, RolloutCollector

# CartPole-v1 draws every component of the initial state from U(-0.05, 0.05).
RESET_BOUND = 0.05


def _collect(env_id: str, n: int, seed: int = 0, policy_seed: int = 0, **kwargs) -> EpisodeBatch:
    with RolloutCollector(env_id, n, seed=seed, **kwargs) as collector:
        policy = make_policy("mlp", collector.obs_dim, collector.n_actions, seed=policy_seed)
        return collector.collect(policy, torch.Generator().manual_seed(seed))


def _assert_well_formed(batch: EpisodeBatch, n: int, obs_dim: int, n_actions: int) -> None:
    """Shapes, dtypes and the masking contract of EpisodeBatch."""
    horizon = int(batch.lengths.max())
    assert batch.observations.shape == (n, horizon, obs_dim)
    assert batch.observations.dtype == torch.float32
    assert batch.actions.shape == (n, horizon) and batch.actions.dtype == torch.int64
    assert batch.rewards.shape == (n, horizon) and batch.rewards.dtype == torch.float32
    assert batch.mask.dtype == torch.bool and batch.lengths.dtype == torch.int64
    assert batch.terminated.shape == (n,) and batch.terminated.dtype == torch.bool
    assert (batch.lengths >= 1).all()
    expected_mask = torch.arange(horizon)[None, :] < batch.lengths[:, None]
    assert torch.equal(batch.mask, expected_mask)  # True on [0, len_i), False after
    assert (batch.observations[~batch.mask] == 0).all()
    assert (batch.actions[~batch.mask] == 0).all()
    assert (batch.rewards[~batch.mask] == 0).all()
    assert batch.actions.min() >= 0 and batch.actions.max() < n_actions
    assert batch.env_steps == horizon * n
    assert batch.n_steps == int(batch.lengths.sum())
    torch.testing.assert_close(batch.returns, batch.rewards.sum(1))


def test_cartpole_batch_is_n_complete_episodes() -> None:
    n = 64
    batch = _collect("CartPole-v1", n)
    _assert_well_formed(batch, n, obs_dim=4, n_actions=2)
    # CartPole pays +1 on every step, so each return equals the episode length.
    assert torch.equal(batch.returns, batch.lengths.float())
    # A nearly uniform policy never balances for 500 steps: all episodes terminate.
    assert batch.terminated.all() and batch.lengths.max() < 500
    assert (batch.observations[:, 0].abs() <= RESET_BOUND).all()


def test_episodes_follow_cartpole_dynamics_step_by_step() -> None:
    """Replay each recorded (s_t, a_t) in gymnasium's single-env CartPole.

    Setting the single env's state to s_t and applying a_t must give s_{t+1}, and the
    step at t = len_i - 1 must be the one that terminates. This pins down that observation
    t is the state action t was taken in, with no off-by-one and no stale actions.
    Tolerance: s_t is stored in float32 (relative rounding 2^-24 ~ 6e-8); one Euler step
    (tau = 0.02) multiplies that error by at most ~1 + tau * 20, so 1e-5 absolute is ample
    for states of size < 5.
    """
    batch = _collect("CartPole-v1", 32, seed=3)
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    for i in range(32):
        length = int(batch.lengths[i])
        for t in range(length):
            env.state = batch.observations[i, t].double().numpy()
            env.steps_beyond_terminated = None
            obs, reward, terminated, _, _ = env.step(int(batch.actions[i, t]))
            assert reward == batch.rewards[i, t] == 1.0
            assert terminated == (t == length - 1), (i, t, length)
            if t + 1 < length:
                np.testing.assert_allclose(obs, batch.observations[i, t + 1].numpy(), atol=1e-5)
    env.close()


def test_truncation_is_not_termination() -> None:
    """With a 20-step limit, episodes reaching 20 steps are truncated (terminated=False)."""
    limit = 20
    batch = _collect("CartPole-v1", 256, max_episode_steps=limit)
    _assert_well_formed(batch, 256, obs_dim=4, n_actions=2)
    assert batch.lengths.max() == limit
    # An episode shorter than the limit can only have ended by termination; a truncated
    # one has exactly `limit` steps. (Termination exactly at step 20 is also possible.)
    assert batch.terminated[batch.lengths < limit].all()
    assert (batch.lengths[~batch.terminated] == limit).all()
    n_truncated = int((~batch.terminated).sum())
    assert 0 < n_truncated < 256, "both kinds of episode end should occur"


def _gymnasium_random_returns(n: int) -> np.ndarray:
    """Returns of n CartPole-v1 episodes driven by gymnasium's own env.action_space.sample()."""
    env = gym.make("CartPole-v1")
    env.action_space.seed(21)
    env.reset(seed=22)
    returns = np.empty(n)
    for k in range(n):
        env.reset()
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += reward
            done = terminated or truncated
        returns[k] = total
    env.close()
    return returns


@pytest.mark.parametrize(("vectorization_mode", "n"), [(None, 2000), ("sync", 500)])
def test_uniform_policy_matches_gymnasium_random_actions(
    vectorization_mode: str | None, n: int
) -> None:
    """Mean return of the uniform policy vs gymnasium's own env with action_space.sample().

    If the collector is right, both samples are i.i.d. episodes of the same law (2000
    reference episodes; 2000 from CartPoleVectorEnv, 500 from the SyncVectorEnv backend).
    Welch's t statistic (SE from both samples' std) is then ~N(0, 1); |t| < 4 fails by
    chance with probability ~6e-5.
    """
    with RolloutCollector(
        "CartPole-v1", n, seed=11, vectorization_mode=vectorization_mode
    ) as collector:
        policy = make_policy("mlp", 4, 2, init_scale=0.0)  # logits = 0: pi(a|s) = 1/2
        ours = collector.collect(policy, torch.Generator().manual_seed(12)).returns.numpy()
    theirs = _gymnasium_random_returns(2000)
    t_stat = stats.ttest_ind(ours, theirs, equal_var=False).statistic
    assert abs(t_stat) < 4, (ours.mean(), theirs.mean(), t_stat)


def test_same_seeds_give_identical_batches_and_collects_continue_the_stream() -> None:
    policy = make_policy("mlp", 4, 2, seed=0)
    batches = []
    for _ in range(2):
        with RolloutCollector("CartPole-v1", 128, seed=5) as collector:
            generator = torch.Generator().manual_seed(6)
            batches.append([collector.collect(policy, generator) for _ in range(3)])
    for first, second in zip(*batches, strict=True):
        for field in ("observations", "actions", "rewards", "mask", "lengths", "terminated"):
            assert torch.equal(getattr(first, field), getattr(second, field)), field
        assert first.env_steps == second.env_steps
    # Later collects continue the RNG streams: new initial states and new episodes,
    # each collect starting from freshly reset environments.
    run = batches[0]
    assert not torch.equal(run[0].observations[:, 0], run[1].observations[:, 0])
    for batch in run:
        assert (batch.observations[:, 0].abs() <= RESET_BOUND).all()
    # A different environment seed gives different episodes.
    other = _collect("CartPole-v1", 128, seed=6)
    assert not torch.equal(other.observations[:, 0], run[0].observations[:, 0])


@pytest.mark.parametrize("n", [1, 3])
def test_batches_do_not_alias_the_reused_buffers(n: int) -> None:
    with RolloutCollector("CartPole-v1", n, seed=0) as collector:
        policy = make_policy("mlp", 4, 2)
        generator = torch.Generator().manual_seed(0)
        first = collector.collect(policy, generator)
        saved = {k: v.clone() for k, v in vars(first).items() if isinstance(v, torch.Tensor)}
        collector.collect(policy, generator)
    for name, value in saved.items():
        assert torch.equal(getattr(first, name), value), name
    assert first.observations.is_contiguous() and first.actions.is_contiguous()


def test_collect_leaves_global_torch_rng_alone() -> None:
    state = torch.get_rng_state()
    _collect("CartPole-v1", 16)
    assert torch.equal(torch.get_rng_state(), state)


def test_buffer_growth_does_not_change_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _collect("CartPole-v1", 64, seed=2)
    assert reference.lengths.max() > 8
    monkeypatch.setattr(rollouts, "_INITIAL_CAPACITY", 2)  # forces several doublings
    grown = _collect("CartPole-v1", 64, seed=2)
    for field in ("observations", "actions", "rewards", "lengths", "terminated"):
        assert torch.equal(getattr(reference, field), getattr(grown, field)), field


def test_acrobot_three_actions_via_sync_vector_env() -> None:
    limit = 30
    with RolloutCollector("Acrobot-v1", 8, seed=0, max_episode_steps=limit) as collector:
        assert collector.vectorization_mode == "sync"  # no vector entry point
        assert (collector.obs_dim, collector.n_actions) == (6, 3)
        policy = make_policy("mlp", 6, 3, seed=0)
        generator = torch.Generator().manual_seed(0)
        batch = collector.collect(policy, generator)
        again = collector.collect(policy, generator)
    _assert_well_formed(batch, 8, obs_dim=6, n_actions=3)
    _assert_well_formed(again, 8, obs_dim=6, n_actions=3)
    assert (batch.lengths <= limit).all()
    assert (batch.lengths[~batch.terminated] == limit).all()
    # Acrobot pays -1 per step until the goal is reached (reward 0 on that step).
    real = batch.rewards[batch.mask]
    assert ((real == -1) | (real == 0)).all()
    assert set(batch.actions[batch.mask].tolist()) == {0, 1, 2}


def test_policy_must_match_the_environment() -> None:
    with RolloutCollector("CartPole-v1", 4) as collector:
        with pytest.raises(ValueError, match="obs_dim"):
            collector.collect(make_policy("mlp", 6, 3), torch.Generator())
        with pytest.raises(ValueError, match="generator"):
            collector.collect(make_policy("mlp", 4, 2), None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"env_id": "NoSuchEnv-v0", "n_trajectories": 4}, "env_id='NoSuchEnv-v0'"),
        ({"env_id": "CartPole-v1", "n_trajectories": 0}, "n_trajectories"),
        ({"env_id": "CartPole-v1", "n_trajectories": -3}, "n_trajectories"),
        ({"env_id": "CartPole-v1", "n_trajectories": 2.5}, "n_trajectories"),
        ({"env_id": "CartPole-v1", "n_trajectories": 4, "seed": -1}, "seed"),
        ({"env_id": "CartPole-v1", "n_trajectories": 4, "max_episode_steps": 0}, "max_episode"),
        ({"env_id": "Pendulum-v1", "n_trajectories": 4}, r"Pendulum-v1.*Discrete action space"),
        ({"env_id": "FrozenLake-v1", "n_trajectories": 4}, "observation space"),
        (
            {"env_id": "CartPole-v1", "n_trajectories": 4, "vectorization_mode": "async"},
            "unknown vectorization_mode 'async'.*; choose one of: vector_entry_point, sync",
        ),
        (
            {
                "env_id": "Acrobot-v1",
                "n_trajectories": 4,
                "vectorization_mode": "vector_entry_point",
            },
            "no vector entry point",
        ),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RolloutCollector(**kwargs)
