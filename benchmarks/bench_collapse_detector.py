"""Validate the CartPole collapse detector against a 3B ground truth (B = 10^5 env steps).

    python benchmarks/bench_collapse_detector.py --jobs 2   # run the grid (resumable), then analyse
    python benchmarks/bench_collapse_detector.py --analyse-only
    python benchmarks/bench_collapse_detector.py --analyse-only --entropy-threshold 0.001

Grid (the default): N in {1, 2, 5, 10, 20} x alpha in {1e-4, 1e-3, 1e-2} x seeds 0..2,
raw-return REINFORCE with plain SGD on CartPole-v1 (the ``conf/cartpole.yaml`` defaults:
MLP 64-64 tanh policy, gamma = 1), every run to 3B = 3 x 10^5 env steps. Each finished run
appends its per-iteration curve (``iteration, env_steps, return_mean, entropy,
frac_deterministic, kl, grad_norm, diverged``) to ``results/collapse_validation/histories/``; a re-run
skips the runs already stored. Cost: 45 runs of 3 x 10^5 env steps, measured 44
CPU-minutes (sum of per-run wall times; N = 1 runs 2.5-3.5 min each, N = 20 runs 10 s) and
22 min of wall time with ``--jobs 2`` on 2 cores that were shared with other work.

Analysis: for every run,

* ``flagged_at_B``: the detector (``pglab.collapse``, the ``conf/cartpole.yaml`` defaults:
  100-episode window, poor return <= 30, mean entropy < 0.05) applied to the prefix of the
  curve up to B env steps (exactly what a run with budget B computes, same seeds): its
  verdict at the end of that prefix, ``collapsed``;
* ``stuck_at_3B`` (the ground truth, deliberately NOT the detector itself): the run
  diverged, or over its last 100 episodes at 3B the mean return is <= 22.1 (the mean of
  uniformly random play) and the mean fraction of near-deterministic visited states
  (max_a pi(a|s) >= 0.99) is >= 0.95;
* ``stuck_at_B``: the same ground-truth rule applied to the last 100 episodes before B.

It prints precision = P(stuck_at_3B | flagged_at_B) and recall =
P(flagged_at_B | stuck_at_B and stuck_at_3B), with counts and Clopper-Pearson 95 %
intervals, and the per-(N, alpha) counts of runs collapsed at B (the phase diagram).
Writes ``results/collapse_validation/runs.csv`` (one row per run).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

B = 100_000
HORIZON_FACTOR = 3
TRUTH_EPISODES = 100
RANDOM_RETURN = 22.1  # mean return of the uniform policy on CartPole-v1 (20 000 episodes)
TRUTH_FRAC_DETERMINISTIC = 0.95


def run_one(n: int, alpha: float, seed: int, env_steps: int) -> pd.DataFrame:
    import torch

    from pglab.collapse import CollapseConfig, CollapseDetector
    from pglab.gym import policies
    from pglab.gym.training import TrainConfig, train

    torch.set_num_threads(1)
    config = TrainConfig(
        n_trajectories=n,
        step_size=alpha,
        max_iterations=None,
        max_env_steps=env_steps,
        variance_every=0,
        seed=seed,
    )
    collector = config.make_collector()  # env and N from the config (seed: config.seed)
    policy = policies.make_policy("mlp", collector.obs_dim, collector.n_actions, seed=seed)
    start = time.perf_counter()
    try:
        result = train(config, policy, collector, detector=CollapseDetector(CollapseConfig()))
    finally:
        collector.close()
    keep = [
        "iteration",
        "env_steps",
        "return_mean",
        "entropy",
        "frac_deterministic",
        "kl",
        "grad_norm",
        "diverged",
    ]
    frame = pd.DataFrame(result.history)[keep]
    frame = frame.assign(n_trajectories=n, step_size=alpha, seed=seed)
    frame.attrs["wall_time"] = time.perf_counter() - start
    return frame


def _job(args: tuple[int, float, int, int, str]) -> tuple[str, float]:
    n, alpha, seed, env_steps, out = args
    frame = run_one(n, alpha, seed, env_steps)
    frame["wall_time"] = frame.attrs["wall_time"]
    path = Path(out) / f"N{n}_a{alpha:g}_s{seed}.parquet"
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp)
    os.replace(tmp, path)
    return path.name, frame.attrs["wall_time"]


def truth_stuck(frame: pd.DataFrame, n: int) -> bool:
    """Ground truth on a curve: diverged, or its last 100 episodes return <= 22.1 on
    average with >= 95 % near-deterministic visited states on average."""
    if bool(frame["diverged"].any()):
        return True
    last = frame.tail(-(-TRUTH_EPISODES // n))
    return bool(
        last["return_mean"].mean() <= RANDOM_RETURN
        and last["frac_deterministic"].mean() >= TRUTH_FRAC_DETERMINISTIC
    )


def prefix(frame: pd.DataFrame, budget: int) -> pd.DataFrame:
    """The iterations a run with ``max_env_steps=budget`` performs (same seeds, same
    draws): up to and including the first with cumulative env_steps >= budget."""
    reached = (frame["env_steps"] >= budget).to_numpy()
    end = int(reached.argmax()) + 1 if reached.any() else len(frame)
    return frame.iloc[:end]


def analyse_run(frame: pd.DataFrame, budget: int, config) -> dict:
    from pglab.collapse import detect_collapse

    n = int(frame["n_trajectories"].iloc[0])
    at_b = prefix(frame, budget)
    status = detect_collapse(
        at_b["return_mean"].tolist(),
        at_b["entropy"].tolist(),
        finite=(~at_b["diverged"]).tolist(),
        config=config,
        n_episodes=n,
    )
    window = -(-TRUTH_EPISODES // n)
    return {
        "n_trajectories": n,
        "step_size": float(frame["step_size"].iloc[0]),
        "seed": int(frame["seed"].iloc[0]),
        "flagged_at_B": status.collapsed,
        "reason_at_B": status.reason,
        "onset_at_B": status.iteration,
        "first_onset_at_B": status.first_onset,
        "dips_at_B": status.dips,
        "stuck_at_B": truth_stuck(at_b, n),
        "stuck_at_3B": truth_stuck(frame, n),
        "return_at_B": at_b["return_mean"].tail(window).mean(),
        "return_at_3B": frame["return_mean"].tail(window).mean(),
        "frac_det_at_B": at_b["frac_deterministic"].tail(window).mean(),
        "frac_det_at_3B": frame["frac_deterministic"].tail(window).mean(),
        "env_steps_at_3B": int(frame["env_steps"].iloc[-1]),
        "wall_time": float(frame["wall_time"].iloc[0]),
    }


def proportion(k: int, n: int, confidence: float = 0.95) -> str:
    """'k/n = p [lo, hi]' with the Clopper-Pearson interval (scipy's exact method)."""
    from scipy.stats import binomtest

    if n == 0:
        return "0/0 (undefined)"
    ci = binomtest(k, n).proportion_ci(confidence, method="exact")
    return f"{k}/{n} = {k / n:.2f}, 95 % CI [{ci.low:.2f}, {ci.high:.2f}]"


def analyse(hist_dir: Path, out: Path, budget: int, config) -> pd.DataFrame:
    rows = [
        analyse_run(pd.read_parquet(f), budget, config) for f in sorted(hist_dir.glob("*.parquet"))
    ]
    runs = pd.DataFrame(rows).sort_values(["n_trajectories", "step_size", "seed"])
    runs.to_csv(out / "runs.csv", index=False)
    flagged = runs["flagged_at_B"]
    truth = runs["stuck_at_3B"]
    both = runs["stuck_at_B"] & truth
    print(f"detector: {config}")
    print(f"{len(runs)} runs, B = {budget} env steps, ground truth at {HORIZON_FACTOR}B")
    print(
        f"flagged at B: {int(flagged.sum())}; stuck at 3B: {int(truth.sum())}; "
        f"stuck at B and 3B: {int(both.sum())}"
    )
    print(
        "precision P(stuck at 3B | flagged at B):",
        proportion(int((flagged & truth).sum()), int(flagged.sum())),
    )
    print(
        "recall P(flagged at B | stuck at B and 3B):",
        proportion(int((flagged & both).sum()), int(both.sum())),
    )
    print("false alarms (flagged at B, not stuck at 3B):")
    print(
        runs[flagged & ~truth][
            ["n_trajectories", "step_size", "seed", "return_at_B", "return_at_3B"]
        ].to_string(index=False)
    )
    print("misses (stuck at B and 3B, not flagged at B):")
    print(
        runs[~flagged & both][
            ["n_trajectories", "step_size", "seed", "return_at_B", "frac_det_at_B"]
        ].to_string(index=False)
    )
    table = runs.pivot_table(
        index="n_trajectories", columns="step_size", values="flagged_at_B", aggfunc="sum"
    )
    seeds = runs.groupby(["n_trajectories", "step_size"]).size().max()
    print(f"collapsed (stuck at the end of budget B) out of {seeds} seeds per cell:")
    print(table.to_string())
    truth_table = runs.pivot_table(
        index="n_trajectories", columns="step_size", values="stuck_at_3B", aggfunc="sum"
    )
    print(f"stuck at 3B (ground truth) out of {seeds}:")
    print(truth_table.to_string())
    print(f"CPU time of the stored runs: {runs['wall_time'].sum() / 60:.1f} min")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "collapse_validation"))
    parser.add_argument("--n", default="1,2,5,10,20")
    parser.add_argument("--alpha", default="1e-4,1e-3,1e-2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--budget", type=int, default=B)
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--window-episodes", type=int, default=None)
    parser.add_argument("--poor-return", type=float, default=None)
    parser.add_argument("--entropy-threshold", type=float, default=None)
    args = parser.parse_args()
    hist_dir = Path(args.out) / "histories"
    hist_dir.mkdir(parents=True, exist_ok=True)
    grid = list(
        itertools.product(
            [int(x) for x in args.n.split(",")],
            [float(x) for x in args.alpha.split(",")],
            [int(x) for x in args.seeds.split(",")],
        )
    )
    if not args.analyse_only:
        todo = [
            (n, a, s, HORIZON_FACTOR * args.budget, str(hist_dir))
            for n, a, s in grid
            if not (hist_dir / f"N{n}_a{a:g}_s{s}.parquet").exists()
        ]
        todo.sort(key=lambda job: job[0])  # slow small-N runs first
        print(f"{len(grid) - len(todo)} runs stored, {len(todo)} to run", flush=True)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(_job, job) for job in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                name, wall = fut.result()
                elapsed = time.perf_counter() - t0
                print(
                    f"[{i}/{len(todo)}] {name} {wall:.0f} s (elapsed {elapsed:.0f} s)", flush=True
                )
    from pglab.collapse import CollapseConfig

    overrides = {
        "window_episodes": args.window_episodes,
        "poor_return": args.poor_return,
        "entropy_threshold": args.entropy_threshold,
    }
    config = CollapseConfig(**{k: v for k, v in overrides.items() if v is not None})
    analyse(hist_dir, Path(args.out), args.budget, config)


if __name__ == "__main__":
    main()
