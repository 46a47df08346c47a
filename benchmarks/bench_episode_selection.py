"""Episode selection: one episode per copy (what pglab does) against M = N/k copies each
playing k consecutive episodes, on CartPole-v1 with the lock-step per-step code.

A batch is N complete episodes of the current policy. Today every one of N copies plays
one episode and the batch ends when the longest has, so a copy that ended early steps on
masked until then (~78 % of copy-steps at N = 1024 for a fresh policy). The alternative
fixes the counted episodes when they start: copy c plays episodes c, c + M, ..., all k of
them kept whatever their lengths, so the batch is still N i.i.d. episodes of the policy
(no episode is selected by its length or by the order of finishing: unbiased). It uses
k x fewer copies but more vector steps (the longest copy's sum of k lengths, not the
longest single episode): fewer wasted copy-steps, more per-step overhead.

Both sides run here, one after the other, with the code lock-step training uses per
vector step (:class:`pglab.gym.lockstep.PolicyStack` forward + sampling,
:class:`pglab.gym.cartpole_physics.CartPoleCopies`), a fresh 64-64 tanh policy (the
grid's starting point, where episode lengths vary most relative to their mean) and
``--batches`` batches per setting. Printed per (N, k): vector steps and copy-steps per
batch, the share of copy-steps that are real, wall time per batch, and the speed-up
against k = 1 measured in the same run.

    python benchmarks/bench_episode_selection.py
    python benchmarks/bench_episode_selection.py --sizes 1024 --ks 1 2 4 8 --batches 5
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from pglab.gym import lockstep
from pglab.gym.cartpole_physics import CartPoleCopies
from pglab.gym.policies import make_policy


def play_batch(
    stack: lockstep.PolicyStack, inner, n: int, k: int, rng: np.random.Generator
) -> tuple[int, int, np.ndarray]:
    """N = ``n`` episodes on n // k copies, k consecutive episodes each; returns (vector
    steps, copy-steps, the N episode lengths)."""
    m = n // k
    copies = CartPoleCopies(inner, m)
    copies.state[:] = rng.uniform(lockstep.RESET_LOW, lockstep.RESET_HIGH, size=(4, m))
    obs = copies.state.T.astype(np.float32)
    left = np.full(m, k)  # episodes each copy still has to finish
    running = np.ones(m, dtype=np.bool_)
    length = np.zeros(m, dtype=np.int64)
    lengths: list[np.ndarray] = []
    steps = 0
    while running.any():
        u = rng.random(m, dtype=np.float32)
        draws = (np.log(u) - np.log1p(-u)).reshape(1, m)
        actions = stack.sample(obs.reshape(1, m, 4), draws).reshape(m)
        obs, _, terminated = copies.step(actions, running)
        steps += 1
        length += 1
        ended = running & (terminated | (length >= 500))
        if ended.any():
            idx = np.flatnonzero(ended)
            lengths.append(length[idx].copy())
            left[idx] -= 1
            again = idx[left[idx] > 0]  # start the copy's next counted episode
            copies.state[:, again] = rng.uniform(
                lockstep.RESET_LOW, lockstep.RESET_HIGH, size=(4, again.size)
            )
            obs[again] = copies.state[:, again].T.astype(np.float32)
            length[idx] = 0
            running[idx[left[idx] == 0]] = False
    return steps, steps * m, np.concatenate(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 256, 1024])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = gym.make_vec("CartPole-v1", 1, vectorization_mode="vector_entry_point")
    stack = lockstep.PolicyStack([make_policy("mlp", 4, 2, (64, 64), "tanh", seed=0)])
    print(
        f"{'N':>5} {'k':>3} {'copies':>6} {'vector steps':>12} {'copy-steps':>10} "
        f"{'real':>5} {'ms/batch':>9} {'speed-up':>8}  mean return"
    )
    for n in args.sizes:
        base = None
        for k in args.ks:
            if n % k:
                continue
            rng = np.random.default_rng(0)
            play_batch(stack, env.unwrapped, n, k, rng)  # warm-up
            start = time.perf_counter()
            runs = [play_batch(stack, env.unwrapped, n, k, rng) for _ in range(args.batches)]
            wall = (time.perf_counter() - start) / args.batches
            base = wall if k == 1 else base
            vector = np.mean([r[0] for r in runs])
            copy_steps = np.mean([r[1] for r in runs])
            real = np.mean([r[2].sum() / r[1] for r in runs])
            mean_return = np.mean([r[2].mean() for r in runs])
            speed = f"{base / wall:7.2f}x" if base else "       -"
            print(
                f"{n:5d} {k:3d} {n // k:6d} {vector:12.0f} {copy_steps:10.0f} "
                f"{real:5.0%} {wall * 1e3:9.1f} {speed}  {mean_return:.1f}"
            )
    env.close()


if __name__ == "__main__":
    main()
