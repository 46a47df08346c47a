"""Throughput of tabular sampling + per-trajectory REINFORCE gradients, pglab vs the obvious code.

Workload: Garnet MDP (S=20, A=4, branching 3, T=50), softmax policy with random logits,
N=100 000 trajectories; the output is the ``[N, S, A]`` float64 tensor of per-trajectory
REINFORCE gradients ``g_i = R_i sum_t grad log pi(a_t|s_t)``.

* ``pglab``: :func:`pglab.tabular.estimates.sample_gradients` (alias tables, blocked, in-cache
  per-step work, one float64 uniform per step).
* ``baseline``: :func:`baseline_sample_gradients` below, the straightforward torch code:
  per step, gather the policy row and the transition row of every trajectory, ``cumsum``
  them and invert the CDF with ``torch.searchsorted`` (one float64 uniform each for the
  action and the next state); then one ``scatter_add`` of visit counts. Its correctness
  (same law as pglab, same gradients on the same paths) is tested in
  ``tests/test_sampling.py``.

``--transition-rewards`` gives the same Garnet per-transition rewards
``R(s, a, s') ~ U(0, 1)`` (``TabularMDP.transition_rewards``; ``r`` is their expectation),
so both samplers pay the realized ``R(s_t, a_t, s_{t+1})``: the cost of realized rewards.

Both run in the same process, for each thread count in ``--threads`` (default 1 and 2):
one warm-up call, then ``--repeats`` timed calls; best and median are reported as
trajectory-steps per second (``N * T / seconds``, the ``[N, S, A]`` result included).
Target: pglab >= 2.5x the baseline. pglab's entry points compute on one torch thread
whatever the setting (:mod:`pglab.threads`: numbers independent of the thread count), so
``--threads`` changes the baseline only. The max |z| of each implementation's mean gradient
against the exact one (80 coordinates) is printed as a sanity check (Bonferroni
threshold at familywise 1e-3: 4.4).

    .venv/bin/python benchmarks/bench_tabular_sampling.py [--threads 1,2] [--repeats 5]
        [--transition-rewards]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from pglab.tabular import estimates, exact, zoo
from pglab.tabular.mdp import TabularMDP
from pglab.tabular.policy import initial_logits, softmax_policy
from pglab.tabular.sampling import TrajectoryBatch

TARGET_RATIO = 2.5


def baseline_sample_trajectories(
    mdp: TabularMDP, policy: Tensor, n_trajectories: int, generator: torch.Generator
) -> TrajectoryBatch:
    """``N`` trajectories by per-step inverse-CDF sampling: the first code a reader writes.

    Per step: gather the rows ``pi(.|s_t)`` ``[N, A]`` and ``P(.|s_t, a_t)`` ``[N, S]``,
    ``cumsum`` them and invert with ``searchsorted(right=True)`` (so a probability-0 entry
    is never chosen), one float64 uniform per draw. Terminal steps are masked as in pglab.
    The reward is ``R(s_t, a_t, s_{t+1})`` if the MDP has ``transition_rewards``, else
    ``r(s_t, a_t)``, as in pglab. A different random stream from pglab: the two agree in
    distribution only.
    """
    n_states, horizon = mdp.n_states, mdp.horizon
    live = ~mdp.terminal

    def draw(probabilities: Tensor) -> Tensor:
        u = torch.rand(probabilities.shape[0], 1, generator=generator, dtype=torch.float64)
        cdf = torch.cumsum(probabilities, dim=1)
        index = torch.searchsorted(cdf, u, right=True).squeeze(1)
        return index.clamp_(max=probabilities.shape[1] - 1)  # u >= cdf[-1] by round-off

    states, actions, rewards = [], [], []
    s = draw(mdp.initial.expand(n_trajectories, n_states))
    realized = mdp.transition_rewards
    for _ in range(horizon):
        a = draw(policy[s])  # a_t ~ pi(.|s_t)
        states.append(s)
        actions.append(a)
        next_s = draw(mdp.transitions[s, a])  # s_{t+1} ~ P(.|s_t, a_t)
        paid = mdp.rewards[s, a] if realized is None else realized[s, a, next_s]
        rewards.append(paid * live[s])
        s = next_s
    states_nt = torch.stack(states, dim=1)  # [N, T]
    return TrajectoryBatch(
        states=states_nt,
        actions=torch.stack(actions, dim=1),
        rewards=torch.stack(rewards, dim=1),
        mask=live[states_nt],
    )


def reinforce_from_trajectories(mdp: TabularMDP, policy: Tensor, batch: TrajectoryBatch) -> Tensor:
    """``g_i = R_i (n_i(s, a) - pi(a|s) n_i(s))`` ``[N, S, A]``, ``n_i`` from one scatter_add."""
    n, horizon = batch.states.shape
    n_states, n_actions = mdp.n_states, mdp.n_actions
    returns = batch.rewards @ (mdp.gamma ** torch.arange(horizon, dtype=torch.float64))  # R_i
    counts = torch.zeros(n, n_states * n_actions, dtype=torch.float64)
    counts.scatter_add_(1, batch.states * n_actions + batch.actions, batch.mask.to(torch.float64))
    counts = counts.view(n, n_states, n_actions)
    score = counts - policy * counts.sum(dim=-1, keepdim=True)  # sum_t grad log pi
    return score * returns[:, None, None]


def baseline_sample_gradients(
    mdp: TabularMDP, logits: Tensor, n_trajectories: int, seed: int = 0
) -> Tensor:
    """Per-trajectory REINFORCE gradients ``[N, S, A]`` float64, the straightforward way."""
    policy = softmax_policy(logits)
    generator = torch.Generator().manual_seed(seed)
    batch = baseline_sample_trajectories(mdp, policy, n_trajectories, generator)
    return reinforce_from_trajectories(mdp, policy, batch)


def workload(seed: int = 0, transition_rewards: bool = False) -> tuple[TabularMDP, Tensor]:
    """The benchmark MDP (Garnet S=20, A=4, b=3, T=50, gamma=1) and logits (random, scale 1).

    ``transition_rewards=True``: the same Garnet with ``R(s, a, s') ~ U(0, 1)`` (seeded by
    ``seed``), so samples pay realized rewards.
    """
    mdp = zoo.garnet(n_states=20, n_actions=4, branching=3, seed=seed, horizon=50, gamma=1.0)
    if transition_rewards:
        generator = torch.Generator().manual_seed(seed)
        realized = torch.rand(20, 4, 20, generator=generator, dtype=torch.float64)
        mdp = mdp.replace(rewards=realized, name=mdp.name + "+R(s,a,s')")
    return mdp, initial_logits(20, 4, kind="random", scale=1.0, seed=seed)


def time_calls(fn: Callable[[int], Tensor], repeats: int) -> list[float]:
    fn(0)  # warm-up
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        fn(repeat + 1)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trajectories", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        default="1,2",
        help="comma-separated torch.set_num_threads values; each runs both implementations "
        "(pglab itself always computes on one thread, see pglab.threads: the setting moves "
        "the baseline only)",
    )
    parser.add_argument(
        "--transition-rewards",
        action="store_true",
        help="give the Garnet per-transition rewards R(s, a, s'), paid as realized rewards",
    )
    args = parser.parse_args()
    thread_counts = [int(value) for value in args.threads.split(",")]
    mdp, logits = workload(transition_rewards=args.transition_rewards)
    n, horizon = args.n_trajectories, mdp.horizon
    steps = n * horizon
    implementations = {
        "pglab": lambda seed: estimates.sample_gradients(mdp, logits, n, "reinforce", seed),
        "baseline": lambda seed: baseline_sample_gradients(mdp, logits, n, seed),
    }
    truth = exact.policy_gradient(mdp, logits)
    print(f"workload: {mdp.name}, T={horizon}, N={n}; torch {torch.__version__}")
    summary = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        print(f"threads={torch.get_num_threads()}:")
        rates = {}
        for name, fn in implementations.items():
            # sanity: both estimate the exact gradient (max |z| over the S*A coordinates)
            gradients = fn(0)
            z = (gradients.mean(0) - truth) / (gradients.std(0) / n**0.5)
            del gradients
            times = time_calls(fn, args.repeats)
            best, median = min(times), statistics.median(times)
            rates[name] = steps / best / 1e6
            print(
                f"  {name:8s} best {best * 1e3:7.1f} ms  median {median * 1e3:7.1f} ms  "
                f"-> {rates[name]:5.1f} M traj-steps/s (median {steps / median / 1e6:5.1f}); "
                f"max|z| vs exact gradient {float(z.abs().max()):.2f}"
            )
        ratio = rates["pglab"] / rates["baseline"]
        verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
        summary.append(
            f"pglab: {rates['pglab']:.1f} M traj-steps/s | baseline: {rates['baseline']:.1f} M "
            f"| ratio {ratio:.2f}x (target >= {TARGET_RATIO}x: {verdict}) | threads={threads}"
        )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
