"""Lock-step training (pglab.gym.lockstep): a run's numbers do not depend on its batch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import digests_under_blas_threads

from pglab.gym.lockstep import (
    LockstepRun,
    PolicyStack,
    group_key,
    padded_rows,
    train_lockstep,
    unbatchable_reason,
)
from pglab.gym.policies import make_policy
from pglab.gym.training import TrainConfig
from pglab.gym.updates import NPGConfig, PPOConfig

# Columns that measure wall-clock time, the only ones allowed to differ between two runs.
CLOCK = ["wall_time", "sps"]


def _run(n, step_size, seed, steps=1500, max_iterations=None, **changes) -> LockstepRun:
    config = TrainConfig(
        n_trajectories=n,
        step_size=step_size,
        seed=seed,
        max_iterations=max_iterations,
        max_env_steps=steps,
        variance_every=2,
        **changes,
    )
    return LockstepRun(config, make_policy("mlp", 4, 2, hidden_sizes=(16, 16), seed=seed))


def _same(a, b) -> bool:
    ha = pd.DataFrame(a.history).drop(columns=CLOCK)
    hb = pd.DataFrame(b.history).drop(columns=CLOCK)
    same_history = ha.equals(hb)
    same_params = all(torch.equal(a.final_params[k], b.final_params[k]) for k in a.final_params)
    return same_history and same_params and a.status == b.status


SPECS = [
    dict(n=1, step_size=1e-3, seed=0),
    dict(n=2, step_size=1e-2, seed=1),
    dict(n=5, step_size=1e-3, seed=2, optimizer="adam"),
    dict(n=8, step_size=1e-2, seed=3, update="npg", update_config=NPGConfig()),
    dict(n=3, step_size=1e-3, seed=4, update="ppo", update_config=PPOConfig(epochs=2)),
    dict(n=4, step_size=1e-3, seed=5, estimator="reward_to_go"),
]


def test_a_run_is_bit_identical_alone_and_in_any_batch():
    alone = [train_lockstep([_run(**spec)])[0] for spec in SPECS]
    together = train_lockstep([_run(**spec) for spec in SPECS])
    reversed_pair = train_lockstep([_run(**SPECS[2]), _run(**SPECS[0])])
    for a, b, spec in zip(alone, together, SPECS, strict=True):
        assert _same(a, b), spec
    assert _same(alone[0], reversed_pair[1]) and _same(alone[2], reversed_pair[0])
    # and each run did real work: several updates, real episodes
    for result in alone:
        assert len(result.history) >= 3 and result.history[-1]["env_steps"] >= 1500


def test_runs_that_ended_leave_the_batch_and_results_keep_the_callers_order():
    # The batch plays the runs with the most vector steps first and, once the runs after
    # some point have all ended, steps and evaluates only the runs before it. Neither may
    # change a number or the order results are reported in.
    specs = [
        dict(n=5, steps=400, seed=1),
        dict(n=1, steps=3000, seed=2),
        dict(n=2, steps=800, seed=3),
    ]
    ended = []
    out = train_lockstep(
        [_run(step_size=1e-2, **spec) for spec in specs],
        on_result=lambda r, outcome: ended.append((r, outcome)),
    )
    assert [r for r, _ in ended] == [0, 2, 1]  # shortest budget (in vector steps) first
    assert all(out[r] is outcome for r, outcome in ended)
    for result, spec in zip(out, specs, strict=True):
        assert _same(result, train_lockstep([_run(step_size=1e-2, **spec)])[0]), spec


def test_runs_of_other_row_counts_or_architectures_are_refused_together():
    with pytest.raises(ValueError, match="differ"):
        train_lockstep([_run(1, 1e-3, 0), _run(9, 1e-3, 0)])  # M = 8 vs 16
    assert padded_rows(1) == padded_rows(8) == 8 and padded_rows(9) == 16
    assert padded_rows(1, (64, 64)) == 8 and padded_rows(1, (10,)) == 32
    a, b = _run(1, 1e-3, 0), _run(2, 1e-3, 0)
    assert group_key(a.config, a.policy) == group_key(b.config, b.policy)
    assert unbatchable_reason("Acrobot-v1") is not None
    assert unbatchable_reason("CartPole-v1") is None


def test_a_diverging_run_and_a_failing_run_leave_the_others_untouched():
    diverging = _run(2, 1e-3, 7, inject_nan_at=1)

    def fail(metrics):
        if metrics["iteration"] == 2:
            raise OSError("disk full while logging")

    failing = _run(2, 1e-3, 8)
    failing.callback = fail
    healthy = _run(2, 1e-3, 9)
    out = train_lockstep([diverging, failing, healthy])
    assert out[0].status == "diverged" and len(out[0].history) == 2
    assert out[0].history[-1]["diverged"]
    assert isinstance(out[1], OSError)
    assert _same(out[2], train_lockstep([_run(2, 1e-3, 9)])[0])


def test_stack_samples_actions_with_the_policys_probabilities():
    # a = #{k < A-1 : C_k <= U} has P(a = k) = pi(k|s); with 20000 draws per state the
    # frequency's standard error is <= 0.0036, so |freq - pi| < 5 SE (z = 5) must hold.
    policy = make_policy("mlp", 4, 3, hidden_sizes=(8,), seed=3, init_scale=3.0)
    stack = PolicyStack([policy, make_policy("mlp", 4, 3, hidden_sizes=(8,), seed=4)])
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(4, 4, generator=generator)
    draws = 20000
    obs = torch.zeros(2, draws, 4)
    obs[0] = states.repeat(draws // 4, 1)
    u = torch.rand(2, draws, generator=generator)
    actions = torch.from_numpy(stack.sample(obs.numpy(), u.numpy())[0]).view(-1, 4)
    pi = policy.probs(states).detach()
    for s in range(4):
        freq = torch.bincount(actions[:, s], minlength=3).double() / (draws / 4)
        se = torch.sqrt(pi[s].double() * (1 - pi[s].double()) / (draws / 4))
        assert torch.all((freq - pi[s].double()).abs() < 5 * se + 1e-12), (freq, pi[s])
    # logits equal the module's forward to float32 rounding (other summation order)
    logits = torch.from_numpy(stack.logits(obs[:, :8].numpy())[0])
    assert torch.allclose(logits, policy(obs[0, :8]), atol=1e-5)


_LOGITS_DIGEST = """
import hashlib, numpy as np, torch
from pglab.gym.lockstep import PolicyStack
from pglab.gym.policies import make_policy
from pglab.threads import single_thread
stack = PolicyStack([make_policy("mlp", 4, 2, (64, 64), seed=s) for s in range(3)])
obs = np.random.default_rng(0).standard_normal((3, 1024, 4)).astype(np.float32)
with single_thread():  # as inside train_lockstep
    print(hashlib.sha256(stack.logits(obs).tobytes()).hexdigest())
"""


def test_the_numpy_forward_does_not_depend_on_openblas_threads():
    # numpy's matmul threads inside OpenBLAS for large slices (1024 rows here; below
    # ~4 x 65536 multiply-adds it stays on one thread), and on some CPUs a threaded gemm
    # gives other last bits (seen on this project's machines: equal on one, not on
    # another). train_lockstep runs under thread_invariant, which holds the BLAS to one
    # thread, so the bits must not depend on what the environment asks for.
    assert len(digests_under_blas_threads(_LOGITS_DIGEST)) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_numpy_kernels_of_the_step_do_not_depend_on_position(dtype):
    # PolicyStack.logits and CartPoleCopies rely on these: np.tanh, exp, sin and cos give
    # every element the same bits alone, in any slice and strided; a slice of a stacked
    # matmul equals that slice's own matmul (exact equality, no tolerance).
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4099) * 3).astype(dtype)
    for f in (np.tanh, np.exp, np.sin, np.cos):
        whole = f(x)
        for start in range(0, 40, 3):
            for length in range(1, 70, 5):
                assert np.array_equal(f(x[start : start + length]), whole[start : start + length])
        assert np.array_equal(f(x[1::3]), whole[1::3])
        assert np.array_equal(np.array([f(v) for v in x[:300]]), whole[:300])
    a = rng.standard_normal((7, 8, 64)).astype(dtype)
    flat = rng.standard_normal((7, 64 * 64 + 5)).astype(dtype)
    w = flat[:, 5:].reshape(7, 64, 64)  # views with an offset, like Layout.views
    stacked = np.matmul(a, w)
    for r in range(7):
        assert np.array_equal(np.matmul(a[r : r + 1], w[r : r + 1])[0], stacked[r])
        assert np.array_equal(a[r] @ np.ascontiguousarray(w[r]), stacked[r])


def test_episode_starts_are_the_runs_own_draws_from_cartpoles_reset_law(monkeypatch):
    # Every batch starts from s_0 ~ U(-0.05, 0.05)^4 per copy drawn from the run's
    # default_rng(seed): the batch's first observations are exactly those draws (float32).
    # (optimizer="momentum" updates through Learner.learn, which sees the EpisodeBatch;
    # stacked runs start their batches through the same code.)
    from pglab.gym import lockstep

    seen = []
    learn = lockstep.Learner.learn
    monkeypatch.setattr(
        lockstep.Learner, "learn", lambda self, batch: (seen.append(batch), learn(self, batch))
    )
    run = _run(100, 1e-4, 11, steps=None, max_iterations=2, optimizer="momentum")
    train_lockstep([run])
    rng = np.random.default_rng(11)
    for batch in seen:
        expected = rng.uniform(-0.05, 0.05, size=(4, 100)).T.astype(np.float32)
        assert np.array_equal(batch.observations[:, 0].numpy(), expected)
    assert len(seen) == 2


def test_odd_widths_and_activations_stay_bit_identical_in_batches_of_any_size():
    # hidden width 10 with elu: rows are padded to M = 32 so that M x 10 is a multiple of
    # 64 and the element-wise activation never runs a tail; batches of 1, 2 and 3 runs.
    def run(seed):
        config = TrainConfig(
            n_trajectories=3, step_size=1e-2, seed=seed, max_iterations=8, variance_every=3
        )
        policy = make_policy("mlp", 4, 2, hidden_sizes=(10,), activation="elu", seed=seed)
        return LockstepRun(config, policy)

    alone = [train_lockstep([run(s)])[0] for s in range(3)]
    pair = train_lockstep([run(1), run(2)])
    trio = train_lockstep([run(2), run(0), run(1)])
    assert _same(alone[1], pair[0]) and _same(alone[2], pair[1])
    assert _same(alone[2], trio[0]) and _same(alone[0], trio[1]) and _same(alone[1], trio[2])


def test_stacked_updates_share_calls_and_when_they_happen_changes_no_number(monkeypatch):
    # pg/sgd runs wait for each other and update in one stacked call (k > 1 here); how long
    # they wait (MAX_WAIT, FLUSH_SHARE) changes which runs share a call, never the numbers.
    from pglab.gym import lockstep, stacked

    sizes = []
    step = stacked.pg_step

    def counting(flat, layout, batch, activation):
        sizes.append(flat.shape[0])
        return step(flat, layout, batch, activation)

    monkeypatch.setattr(stacked, "pg_step", counting)
    specs = [
        dict(n=1, step_size=1e-3, seed=0),
        dict(n=2, step_size=1e-2, seed=1),
        dict(n=4, step_size=1e-3, seed=5, estimator="reward_to_go"),
        dict(n=3, step_size=1e-3, seed=6, estimator="baseline_batch_mean"),
    ]
    alone = [train_lockstep([_run(**spec)])[0] for spec in specs]
    assert max(sizes) == 1
    for wait, share in ((0, 1.0), (50, 1.0), (8, 0.5)):
        monkeypatch.setattr(lockstep, "MAX_WAIT", wait)
        monkeypatch.setattr(lockstep, "FLUSH_SHARE", share)
        sizes.clear()
        together = train_lockstep([_run(**spec) for spec in specs])
        if wait > 0:
            assert max(sizes) > 1, (wait, share)
        for a, b, spec in zip(alone, together, specs, strict=True):
            assert _same(a, b), (spec, wait, share)


def test_runs_waiting_longer_than_an_episode_keep_their_steps(monkeypatch):
    # A waiting run's steps stay in the ring buffers until its update reads them. With a
    # 12-step time limit (most episodes are cut) and waits of up to 40 vector steps (the
    # adam run updates at once and keeps playing, so the others wait the longest), a
    # buffer sized to one episode would be overwritten while runs wait: the batch's
    # numbers would then differ from the lone runs'.
    from pglab.gym import lockstep

    specs = [
        dict(n=1, step_size=1e-2, seed=0),
        dict(n=2, step_size=1e-2, seed=1),
        dict(n=3, step_size=1e-3, seed=6, estimator="reward_to_go"),
        dict(n=2, step_size=1e-3, seed=2, optimizer="adam"),  # never waits: the others do
    ]
    alone = [train_lockstep([_run(**spec, steps=400)], max_episode_steps=12)[0] for spec in specs]
    assert any(not row["return_max"] < 12 for row in alone[0].history)  # cut at the limit
    monkeypatch.setattr(lockstep, "MAX_WAIT", 40)
    monkeypatch.setattr(lockstep, "FLUSH_SHARE", 1.0)
    together = train_lockstep([_run(**spec, steps=400) for spec in specs], max_episode_steps=12)
    for a, b, spec in zip(alone, together, specs, strict=True):
        assert _same(a, b), spec


def test_every_gym_estimator_discount_and_policy_shape_stacks_bit_identically():
    # Runs that differ in estimator, gamma, N, step size, policy shape (linear, 64-64) and
    # dtype share stacked updates (weights computed in shared estimator calls) and still
    # equal their lone runs bit for bit.
    from pglab.estimators import ESTIMATORS
    from pglab.gym.training import TABULAR_ONLY_ESTIMATORS

    def run(i, estimator, policy_kind="mlp", dtype=torch.float32):
        config = TrainConfig(
            n_trajectories=1 + i % 3,
            step_size=1e-3 * (1 + i % 2),
            seed=i,
            estimator=estimator,
            gamma=0.99 if i % 2 else 1.0,
            max_iterations=None,
            max_env_steps=600,
            variance_every=3,
        )
        policy = make_policy(policy_kind, 4, 2, hidden_sizes=(16, 16), seed=i, dtype=dtype)
        return LockstepRun(config, policy)

    names = [e for e in ESTIMATORS if e not in TABULAR_ONLY_ESTIMATORS]
    specs = [(i, name) for i, name in enumerate(names)] + [(len(names), "reinforce")]
    alone = [train_lockstep([run(i, name)])[0] for i, name in specs]
    together = train_lockstep([run(i, name) for i, name in specs])
    for a, b, spec in zip(alone, together, specs, strict=True):
        assert _same(a, b), spec
        assert len(a.history) >= 3 and all(math.isfinite(r["loss"]) for r in a.history)
    # a linear policy and a float64 policy form their own groups; each alone == together
    for kind, dtype in (("linear", torch.float32), ("mlp", torch.float64)):
        solo = [train_lockstep([run(i, "reward_to_go", kind, dtype)])[0] for i in range(3)]
        group = train_lockstep([run(i, "reward_to_go", kind, dtype) for i in range(3)])
        assert all(_same(a, b) for a, b in zip(solo, group, strict=True)), (kind, dtype)


def test_progress_reports_the_least_budget_share_of_the_unfinished_runs():
    # The batch ends with its slowest run, so the progress carries the least share of its
    # budget any unfinished run has used (the batch ETA extrapolates from it). Each run's
    # share only grows and the set shrinks, so it never decreases; it is at most the mean
    # share (env steps over the summed budgets); 1.0 once every run has ended.
    specs = [dict(n=1, steps=600, seed=0), dict(n=5, steps=1500, seed=1)]
    seen = []
    train_lockstep(
        [_run(**spec, step_size=1e-3) for spec in specs], report=seen.append, report_every_s=0.0
    )
    shares = [p.budget_used for p in seen]
    assert len(shares) > 10
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(shares, shares[1:], strict=False))
    total = sum(spec["steps"] for spec in specs)
    assert all(p.budget_used <= p.env_steps / total for p in seen if p.finished == 0)
    assert shares[-1] == 1.0 and seen[-1].finished == 2
    assert 0.0 < shares[len(shares) // 2] < 1.0
