"""Results do not depend on the BLAS / OpenMP / torch thread counts (issue 9).

A multithreaded reduction adds its terms in an order that depends on the thread count,
so before this was fixed the basic and joblib launchers stored numbers that differed by
~1e-16 for the same job hash (the bootstrap's ``counts @ values`` in pglab.stats, MKL
products and reductions in the exact oracle, the ascent and CartPole training). Each test
runs one computation in two fresh processes, one with every thread setting at 1 and one
at 2 (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``torch.set_num_threads``), and compares the bytes of the results. The workloads are
sized so that the thread counts did change the numbers before the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import hashlib, sys
import numpy as np
import torch

torch.set_num_threads(int(sys.argv[1]))
assert torch.get_num_threads() == int(sys.argv[1])


def as_bytes(x):
    if isinstance(x, torch.Tensor):
        return x.detach().numpy().tobytes()
    if isinstance(x, np.ndarray):
        return x.tobytes()
    if isinstance(x, dict):
        return b"".join(repr(k).encode() + as_bytes(v) for k, v in sorted(x.items()))
    if isinstance(x, (list, tuple)):
        return b"".join(as_bytes(v) for v in x)
    return repr(x).encode()


def show(name, value):
    print(name, hashlib.sha256(as_bytes(value)).hexdigest(), flush=True)
"""

STATS = """
from pglab.stats import gradient_estimate_metrics

rng = np.random.default_rng(0)
for k, d in [(500, 40), (300, 300), (1000, 16)]:
    skewed = rng.standard_gamma(0.3, size=(k, d))
    skewed[:, 1] += 0.05
    show(f"skewed {k}x{d}", gradient_estimate_metrics(skewed, np.zeros(d), seed=1))
    normal = rng.standard_normal((k, d))
    show(f"normal {k}x{d}", gradient_estimate_metrics(normal, np.zeros(d), seed=1))
"""

TABULAR = """
from pglab.tabular import ascent, estimates, exact, policy, zoo

mdp = zoo.make("taxi")
theta = policy.initial_logits(mdp.n_states, mdp.n_actions, "random", 1.0, 0)
show("policy_gradient autograd", exact.policy_gradient(mdp, theta, method="autograd"))
run = ascent.tabular_ascent(mdp, theta, 1.0, 3)
show("ascent exact", (run.history, run.final_params))
run = ascent.tabular_ascent(mdp, theta, 1.0, 3, gradient="reward_to_go", n_trajectories=50)
show("ascent reward_to_go", (run.history, run.final_params))
names = ["reinforce", "baseline_batch_mean", "baseline_value", "normalized"]
show("batch_estimates", estimates.batch_estimates(mdp, theta, 20, 30, names, seed=0))
"""

GYM = """
from pglab.gym import gradient_quality, policies, rollouts, training

config = training.TrainConfig(
    n_trajectories=64, step_size=0.01, estimator="reward_to_go", max_iterations=4,
    variance_every=1, seed=2,
)
with rollouts.RolloutCollector("CartPole-v1", 64, seed=2) as collector:
    policy = policies.make_policy("mlp", collector.obs_dim, collector.n_actions, seed=2)
    result = training.train(config, policy, collector)
timeless = [{k: v for k, v in row.items() if k not in ("wall_time", "sps")} for row in result.history]
show("train", (timeless, result.final_params, result.status))
policy = policies.make_policy("mlp", 4, 2, seed=1)
reference = gradient_quality.reference_gradient(
    policy, "CartPole-v1", n_episodes=2000, seed=1, chunk_episodes=1000
)
show("reference", (reference.mean, reference.standard_error))
rows = gradient_quality.batch_gradient_quality(
    policy, "CartPole-v1", reference, [50], 3, "normalized", seed=2
)
show("batch quality", rows)
"""


def _run(code: str, threads: int) -> str:
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRELUDE + code), str(threads)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _assert_same_for_1_and_2_threads(code: str) -> None:
    one, two = _run(code, 1), _run(code, 2)
    assert one.strip(), "no results printed"
    differing = [
        a.rsplit(" ", 1)[0]
        for a, b in zip(one.splitlines(), two.splitlines(), strict=True)
        if a != b
    ]
    assert not differing, f"differ between 1 and 2 threads: {differing}"


def test_gradient_estimate_metrics_do_not_depend_on_threads():
    _assert_same_for_1_and_2_threads(STATS)


def test_tabular_oracle_estimates_and_ascent_do_not_depend_on_threads():
    _assert_same_for_1_and_2_threads(TABULAR)


def test_cartpole_training_and_gradient_quality_do_not_depend_on_threads():
    _assert_same_for_1_and_2_threads(GYM)


def test_caller_thread_setting_is_restored():
    import torch

    from pglab.tabular import exact, zoo

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        exact.solve(zoo.two_state(), [[0.0, 0.0], [0.0, 0.0]])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 3])
def test_single_thread_inside_the_entry_points(threads):
    import torch

    from pglab.threads import single_thread, thread_invariant

    seen = []

    @thread_invariant
    def probe():
        seen.append(torch.get_num_threads())

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        probe()
        with single_thread():
            seen.append(torch.get_num_threads())
        assert seen == [1, 1] and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)


def test_batched_entry_points_run_single_threaded():
    # The batched ascent and the lock-step loop must run under thread_invariant like the
    # one-run entry points (a decorator left above an inserted definition once took it off
    # batched_tabular_ascent): their callbacks see one torch thread, whatever the caller set.
    import torch
    from threadpoolctl import threadpool_info

    from pglab.gym.lockstep import LockstepRun, train_lockstep
    from pglab.gym.policies import make_policy
    from pglab.gym.training import TrainConfig
    from pglab.tabular import zoo
    from pglab.tabular.batched_ascent import AscentRun, batched_tabular_ascent

    seen: list[int] = []
    blas: list[int] = []

    def record(metrics: dict) -> None:
        seen.append(torch.get_num_threads())
        blas.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

    mdp = zoo.make("chain")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        logits = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
        batched_tabular_ascent(mdp, [AscentRun(logits, 1.0, 2, callback=record)])
        config = TrainConfig(n_trajectories=2, step_size=0.01, max_iterations=2)
        policy = make_policy("mlp", 4, 2, hidden_sizes=(8,), seed=0)
        train_lockstep([LockstepRun(config, policy, callback=record)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [1] * 4
    assert blas and set(blas) == {1}  # numpy's OpenBLAS too (pglab/threads.py)
