"""Throughput of pglab's CartPole rollouts against reference loops, measured in one run.

Workload: batches of N = 1024 CartPole-v1 episodes from the default policy
``make_policy("mlp", 4, 2)`` (64-64 tanh, seed 0), the same policy object everywhere.

1. ``pglab``: ``RolloutCollector.collect`` (one complete episode per environment copy,
   masking, buffers). Counts only real (unmasked) steps, i.e. sum of episode lengths.
2. ``bare``: gymnasium's ``CartPoleVectorEnv`` (n = N) stepped in a plain loop, the same
   ``policy.sample`` (MLP forward on all N observations + sigmoid sampling) every step,
   no bookkeeping. Counts every step, autoreset steps included: an upper bound on what
   any rollout code built on this environment and policy can reach.
3. ``sync``: ``gym.make_vec(..., vectorization_mode="sync")`` (a Python loop over single
   environments) with the same policy, counting real steps (autoreset steps excluded).
   Measured on fewer copies and steps: its cost per step is per copy, so throughput,
   not total work, is compared. This steady-state loop never idles a copy, so it is an
   optimistic figure for Sync; for reference the benchmark also times
4. ``pglab-sync``: ``RolloutCollector(..., vectorization_mode="sync")`` on the same fewer
   copies, i.e. pglab's collector on the SyncVectorEnv backend (real steps).

Repeats are interleaved (pglab, bare, sync, pglab-sync, pglab, ...) so that load from
other processes hits all of them alike; figures are medians over repeats after warm-up.

Why pglab stays well below the bare loop in real steps/s: a batch keeps stepping all N
copies (a vector environment cannot step a subset) until the longest of the N episodes
ends. For this nearly uniform policy T is about 4.3x the mean length, so ~77% of the
executed environment steps are masked. Per *executed* step pglab is faster than the bare
loop (the MLP runs only on copies still playing); the "executed env steps" line shows it.
The gap is the masked tail, which shrinks as episode lengths even out (e.g. a policy that
reaches the 500-step limit). The "model" line gives the environment's share of a batch.

Run: ``.venv/bin/python benchmarks/bench_cartpole_rollouts.py [--n-envs 1024] [--threads 1]``.
One torch thread is the default, as in ``experiments/cartpole.py``: on a small machine
shared with other jobs, torch's intra-op thread pool can stall whole batches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

from pglab.policies import make_policy
from pglab.rollouts import RolloutCollector

ENV_ID = "CartPole-v1"


def time_pglab(collector: RolloutCollector, policy, generator) -> tuple[float, dict]:
    """One batch: (real steps / s, batch statistics)."""
    start = time.perf_counter()
    batch = collector.collect(policy, generator)
    elapsed = time.perf_counter() - start
    stats = {
        "mean_length": batch.lengths.double().mean().item(),
        "max_length": int(batch.lengths.max()),
        "real_steps": batch.n_steps,
        "env_steps": batch.env_steps,
        "seconds": elapsed,
    }
    return batch.n_steps / elapsed, stats


def time_bare(env, obs: np.ndarray, policy, generator, n_steps: int) -> tuple[float, np.ndarray]:
    """``n_steps`` vector steps of env + policy.sample on every row: (env steps / s, last obs)."""
    n_envs = env.num_envs
    start = time.perf_counter()
    for _ in range(n_steps):
        actions = policy.sample(torch.from_numpy(obs), generator)
        obs, _, _, _, _ = env.step(actions.numpy())
    elapsed = time.perf_counter() - start
    return n_steps * n_envs / elapsed, obs


def time_sync(env, obs: np.ndarray, policy, generator, n_steps: int, resetting: np.ndarray):
    """``n_steps`` SyncVectorEnv steps; counts steps that are not autoreset steps."""
    real = 0
    start = time.perf_counter()
    for _ in range(n_steps):
        actions = policy.sample(torch.from_numpy(obs).float(), generator)
        obs, _, terminated, truncated, _ = env.step(actions.numpy())
        real += int((~resetting).sum())  # a copy flagged last step spent this one resetting
        resetting = terminated | truncated
    elapsed = time.perf_counter() - start
    return real / elapsed, obs, resetting


def time_call(fn, repeats: int = 50) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, default=1024, help="N, episodes per batch")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    parser.add_argument("--bare-steps", type=int, default=100, help="vector steps per bare repeat")
    parser.add_argument("--sync-envs", type=int, default=64, help="copies in the Sync loop")
    parser.add_argument("--sync-steps", type=int, default=30, help="vector steps per Sync repeat")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads; 1 as in experiments/cartpole.py (0: torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    n = args.n_envs
    policy = make_policy("mlp", 4, 2, seed=args.seed)  # 64-64 tanh, default init
    generator = torch.Generator().manual_seed(args.seed)

    collector = RolloutCollector(ENV_ID, n, seed=args.seed)
    bare_env = gym.make_vec(ENV_ID, n, vectorization_mode="vector_entry_point")
    bare_obs, _ = bare_env.reset(seed=args.seed)
    sync_env = gym.make_vec(ENV_ID, args.sync_envs, vectorization_mode="sync")
    sync_obs, _ = sync_env.reset(seed=args.seed)
    sync_resetting = np.zeros(args.sync_envs, dtype=np.bool_)
    sync_collector = RolloutCollector(
        ENV_ID, args.sync_envs, seed=args.seed, vectorization_mode="sync"
    )

    pglab_sps, bare_sps, sync_sps, pglab_sync_sps, batch_stats = [], [], [], [], []
    for repeat in range(args.warmup + args.repeats):
        sps, stats = time_pglab(collector, policy, generator)
        b_sps, bare_obs = time_bare(bare_env, bare_obs, policy, generator, args.bare_steps)
        s_sps, sync_obs, sync_resetting = time_sync(
            sync_env, sync_obs, policy, generator, args.sync_steps, sync_resetting
        )
        ps_sps, _ = time_pglab(sync_collector, policy, generator)
        if repeat >= args.warmup:
            pglab_sync_sps.append(ps_sps)
            pglab_sps.append(sps)
            bare_sps.append(b_sps)
            sync_sps.append(s_sps)
            batch_stats.append(stats)

    pglab_med = statistics.median(pglab_sps)
    bare_med = statistics.median(bare_sps)
    sync_med = statistics.median(sync_sps)

    # Cost model: one vector step of the environment alone, and one policy.sample on N rows.
    zeros = np.zeros(n, dtype=np.int64)
    env_step_s = time_call(lambda: bare_env.step(zeros))
    obs_rows = torch.from_numpy(np.ascontiguousarray(bare_obs))
    sample_s = time_call(lambda: policy.sample(obs_rows, generator))

    mean_len = statistics.mean(s["mean_length"] for s in batch_stats)
    mean_max = statistics.mean(s["max_length"] for s in batch_stats)
    wasted = 1 - sum(s["real_steps"] for s in batch_stats) / sum(
        s["env_steps"] for s in batch_stats
    )
    mean_batch_s = statistics.median(s["seconds"] for s in batch_stats)
    executed_sps = statistics.median(s["env_steps"] / s["seconds"] for s in batch_stats)
    env_share = mean_max * env_step_s / mean_batch_s

    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, gymnasium {gym.__version__}"
    )
    print(
        f"workload: {ENV_ID}, N={n} episodes/batch, MLP 64-64 tanh (seed {args.seed}); "
        f"median of {args.repeats} repeats after {args.warmup} warm-up"
    )
    print(
        f"batches: mean episode length {mean_len:.1f}, mean longest {mean_max:.1f} "
        f"(T/mean = {mean_max / mean_len:.2f}), wasted env steps {wasted:.0%}, "
        f"{mean_batch_s * 1e3:.1f} ms/batch"
    )
    print(f"1. pglab RolloutCollector : {pglab_med / 1e6:7.3f} M real steps/s")
    print(f"2. bare CartPoleVectorEnv : {bare_med / 1e6:7.3f} M steps/s (n={n}, all steps)")
    print(f"3. SyncVectorEnv loop     : {sync_med / 1e6:7.3f} M real steps/s (n={args.sync_envs})")
    print(
        f"4. pglab on SyncVectorEnv : {statistics.median(pglab_sync_sps) / 1e6:7.3f} M real "
        f"steps/s (n={args.sync_envs}, same collector, sync backend)"
    )
    print(f"ratio pglab / bare = {pglab_med / bare_med:.2f}   (target >= 0.8)")
    print(
        f"   (pglab executed env steps incl. masked: {executed_sps / 1e6:.3f} M/s = "
        f"{executed_sps / bare_med:.2f}x bare: the gap is the masked tail, not bookkeeping)"
    )
    print(f"ratio pglab / sync = {pglab_med / sync_med:.1f}   (target >= 10)")
    print(
        f"model: env step (n={n}) {env_step_s * 1e6:.0f} us, policy.sample ({n} rows) "
        f"{sample_s * 1e6:.0f} us; environment alone takes {env_share:.0%} of a pglab batch "
        f"({mean_max:.0f} steps x {env_step_s * 1e6:.0f} us)"
    )
    collector.close()
    sync_collector.close()
    bare_env.close()
    sync_env.close()


if __name__ == "__main__":
    main()
