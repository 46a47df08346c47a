"""Lock-step training with stacked updates against the same batch updating run by run.

Both sides train the same runs in one ``train_lockstep`` call, one after the other in this
process: the issue-11 grid's shape (N in {1, 2, 5}, alpha in {1e-4, 1e-3}, ``--seeds``
seeds, ``--steps`` env steps each; 64-64 tanh MLP, REINFORCE, ``variance_every=10``).
The baseline is the same code with stacking switched off (every run updates at once
through its own ``Learner``, as before stacked updates existed). Printed per side: wall
time, updates, vector steps, real env steps per second, and for the stacked side the
number of stacked calls and their mean size; then the speed-up (baseline / stacked).

    python benchmarks/bench_lockstep.py
    python benchmarks/bench_lockstep.py --seeds 5 --steps 100000
"""

from __future__ import annotations

import argparse
import time

from pglab.collapse import CollapseConfig, CollapseDetector
from pglab.gym import lockstep, policies, stacked
from pglab.gym.training import TrainConfig


def make_runs(seeds: int, steps: int) -> list[lockstep.LockstepRun]:
    runs = []
    for n in (1, 2, 5):
        for alpha in (1e-4, 1e-3):
            for seed in range(seeds):
                config = TrainConfig(
                    n_trajectories=n,
                    step_size=alpha,
                    seed=seed,
                    max_iterations=None,
                    max_env_steps=steps,
                    variance_every=10,
                )
                policy = policies.make_policy("mlp", 4, 2, (64, 64), "tanh", seed=seed)
                runs.append(
                    lockstep.LockstepRun(config, policy, CollapseDetector(CollapseConfig()))
                )
    return runs


def side(seeds: int, steps: int, stacking: bool) -> tuple[float, int, int, int, list[int]]:
    sizes: list[int] = []
    pg_step, stacks = stacked.pg_step, lockstep.stacks_updates

    def counting(flat, layout, batch, activation):
        sizes.append(flat.shape[0])
        return pg_step(flat, layout, batch, activation)

    stacked.pg_step = counting
    if not stacking:
        lockstep.stacks_updates = lambda config, policy: False
    seen = {"vector": 0}
    try:
        runs = make_runs(seeds, steps)
        start = time.perf_counter()
        out = lockstep.train_lockstep(
            runs, report=lambda p: seen.update(vector=p.vector_steps), report_every_s=1e9
        )
        wall = time.perf_counter() - start
    finally:
        stacked.pg_step, lockstep.stacks_updates = pg_step, stacks
    updates = sum(len(o.history) for o in out)
    env_steps = sum(o.history[-1]["env_steps"] for o in out)
    return wall, updates, seen["vector"], env_steps, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    walls = {}
    for name, stacking in (("one by one", False), ("stacked", True)):
        wall, updates, vector, env_steps, sizes = side(args.seeds, args.steps, stacking)
        walls[name] = wall
        extra = (
            f"  {len(sizes)} stacked calls, mean {sum(sizes) / len(sizes):.1f} runs"
            if sizes
            else ""
        )
        print(
            f"{name:10s} {6 * args.seeds} runs  {wall:6.1f} s  {updates} updates  "
            f"{vector} vector steps  {env_steps / wall / 1e3:6.1f} k env-steps/s{extra}"
        )
    print(f"speed-up stacked vs one by one: {walls['one by one'] / walls['stacked']:.2f}x")


if __name__ == "__main__":
    main()
