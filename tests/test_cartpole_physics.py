"""CartPoleCopies steps CartPole bit for bit as gymnasium's CartPoleVectorEnv does."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pglab.gym.cartpole_physics import CartPoleCopies


@pytest.mark.parametrize("kwargs", [{}, {"sutton_barto_reward": True}])
@pytest.mark.parametrize("integrator", ["euler", "semi-implicit euler"])
def test_every_step_equals_gymnasiums_until_the_copy_first_ends(kwargs, integrator):
    n, steps = 257, 400
    env = gym.make_vec("CartPole-v1", n, vectorization_mode="vector_entry_point", **kwargs)
    inner = env.unwrapped
    inner.kinematics_integrator = integrator
    obs, _ = env.reset(seed=3)
    copies = CartPoleCopies(inner, n)
    copies.state[:] = inner.state
    rng = np.random.default_rng(0)
    alive = np.ones(n, dtype=np.bool_)  # not ended yet in either (gym autoresets after)
    checked = 0
    for _ in range(steps):
        action = rng.integers(0, 2, size=n)
        obs, reward, terminated, truncated, _ = env.step(action)
        mine, my_reward, my_terminated = copies.step(action, alive)
        # exact equality (array_equal, no tolerance) on every copy still in its episode
        assert np.array_equal(mine[alive], obs[alive])
        assert np.array_equal(my_reward[alive], reward[alive])
        assert np.array_equal(my_terminated[alive], terminated[alive])
        assert np.array_equal(copies.state[:, alive], inner.state[:, alive])
        checked += int(alive.sum())
        alive &= ~(terminated | truncated)
    assert checked > 5 * n  # episodes of random play last ~22 steps: many steps compared
    env.close()


def test_unused_copies_never_overflow():
    # A copy no episode uses falls over and is put back to rest: its state stays bounded
    # over 10^5 steps (free explicit Euler on a spinning pole grows without bound).
    env = gym.make_vec("CartPole-v1", 4, vectorization_mode="vector_entry_point")
    copies = CartPoleCopies(env.unwrapped, 4)
    live = np.zeros(4, dtype=np.bool_)
    with np.errstate(all="raise"):
        for t in range(100_000):
            obs, _, _ = copies.step(np.full(4, t % 3 == 0, dtype=np.int64), live)
    assert np.all(np.abs(copies.state) < 100)
    env.close()
