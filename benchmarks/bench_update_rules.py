"""Cost of one NPG / TRPO update against a plain-PG gradient on the same CartPole batch.

Workload: the default policy ``make_policy("mlp", 4, 2)`` (64-64 tanh, float32, seed 0,
4610 parameters) and one batch of N complete CartPole-v1 episodes from it (N = 10 and
N = 100, collector and action seed 0), with ``reward_to_go`` weights. For each N the same
process times, interleaved over ``--repeats`` rounds (medians reported):

* ``pg gradient``: what one plain-PG iteration of :func:`pglab.gym.training.train` spends
  on the gradient: ``surrogate_loss`` + ``backward`` + ``flat_grad`` (``ghat``);
* ``npg update``: :func:`pglab.gym.updates.npg_update` (its own ``ghat``, the Fisher
  operator's set-up, 10 CG iterations of Fisher-vector products, the step, the KL);
* ``trpo update``: :func:`pglab.gym.updates.trpo_update` (the same plus the backtracking
  line search: one forward pass over the batch per candidate);

each with the Fisher estimated on every 5th real state (``fisher_stride=5``, the
default, as OpenAI baselines' TRPO) and on all of them (``fisher_stride=1``);
``--strides`` picks others. Parameters
are restored before every timed update, so every repeat does the same work.

Reported: best and median milliseconds per call, throughput (real steps of the batch per
second, best), and the issue's figure, *extra* / gradient, where extra = update -
gradient is what the rule adds to a plain-PG iteration (Fisher-vector products, CG, the
line search, the KL of the step), from the best times (each case's cost without
interference from other processes; on a shared machine medians of sub-millisecond
calls swing by 2-3x between runs) and from the medians. Target (issue 10): extra <= 3x
the gradient at N = 10 and N = 100.

    .venv/bin/python benchmarks/bench_update_rules.py [--repeats 30] [--threads 1]
        [--n 10,100] [--strides 5,1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from pglab import estimators
from pglab.gym import updates
from pglab.gym.gradients import flat_grad, flat_params, surrogate_loss
from pglab.gym.policies import make_policy
from pglab.gym.rollouts import RolloutCollector

TARGET = 3.0


def _timer(function: Callable[[], object], before: Callable[[], None]) -> Callable[[], float]:
    def run() -> float:
        before()
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    return run


def bench(n_trajectories: int, repeats: int, strides: tuple[int, ...]) -> None:
    policy = make_policy("mlp", 4, 2, seed=0)
    params = [p for p in policy.parameters() if p.requires_grad]
    with RolloutCollector("CartPole-v1", n_trajectories, seed=0) as collector:
        batch = collector.collect(policy, torch.Generator().manual_seed(0))
    weights = estimators.step_weights(batch.rewards, batch.mask, "reward_to_go")
    n_steps = batch.n_steps
    theta = flat_params(params)

    def restore() -> None:
        updates._set_flat(params, theta)
        for p in params:
            p.grad = None

    def gradient() -> torch.Tensor:
        surrogate_loss(policy, batch, weights).backward()
        return flat_grad(params)

    cases: dict[str, Callable[[], float]] = {"pg gradient": _timer(gradient, restore)}
    for stride in strides:
        npg = updates.NPGConfig(step_size=0.01, fisher_stride=stride)
        trpo = updates.TRPOConfig(max_kl=0.01, fisher_stride=stride)
        cases[f"npg update (stride {stride})"] = _timer(
            lambda c=npg: updates.npg_update(policy, batch, weights, c), restore
        )
        cases[f"trpo update (stride {stride})"] = _timer(
            lambda c=trpo: updates.trpo_update(policy, batch, weights, c), restore
        )
    for run in cases.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():  # interleaved: load hits every case alike
            times[name].append(run())
    restore()
    info = updates.trpo_update(policy, batch, weights, updates.TRPOConfig(max_kl=0.01))
    restore()

    base_best = min(times["pg gradient"])
    base_median = statistics.median(times["pg gradient"])
    print(
        f"\nN = {n_trajectories}: M = {n_steps} real steps (mean episode length "
        f"{n_steps / n_trajectories:.1f}), {theta.numel()} parameters; TRPO took "
        f"{int(info.extras['backtracks'])} backtracks at delta = 0.01"
    )
    print(
        f"{'case':<26}{'best ms':>9}{'median ms':>11}{'steps/s':>10}"
        f"{'extra/grad best':>17}{'median':>8}"
    )
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        line = f"{name:<26}{1e3 * best:>9.3f}{1e3 * median:>11.3f}{n_steps / best:>10.0f}"
        if name != "pg gradient":
            extra_best = (best - base_best) / base_best
            extra_median = (median - base_median) / base_median
            verdict = "ok" if extra_best <= TARGET else f"> {TARGET:g}x"
            line += f"{extra_best:>16.2f}x{extra_median:>7.2f}x  {verdict}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=str, default="10,100", help="comma-separated N values")
    parser.add_argument(
        "--strides", type=str, default="5,1", help="comma-separated fisher_stride values"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} interleaved repeats"
    )
    for n in (int(x) for x in args.n.split(",")):
        bench(n, args.repeats, tuple(int(k) for k in args.strides.split(",")))


if __name__ == "__main__":
    main()
