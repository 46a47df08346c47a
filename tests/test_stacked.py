"""Stacked REINFORCE steps (pglab.gym.stacked): the Learner's numbers, for k runs at once,
each run's bits independent of the others."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import digests_under_blas_threads

from pglab import estimators
from pglab.gym import stacked
from pglab.gym.lockstep import PolicyStack
from pglab.gym.policies import ACTIVATIONS, make_policy
from pglab.gym.rollouts import EpisodeBatch
from pglab.gym.training import Learner, TrainConfig


def _random_batch(k, rows, hidden=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    layout = stacked.Layout((4, *hidden, 2))
    flat = torch.randn(k, layout.size, generator=g) * 0.3
    steps = torch.randint(1, rows + 1, (k,), generator=g)
    real = (torch.arange(rows)[None] < steps[:, None]).float()
    batch = stacked.StackedBatch(
        observations=torch.randn(k, rows, 4, generator=g) * real[..., None],
        actions=torch.randint(0, 2, (k, rows), generator=g) * real.long(),
        weights=torch.randn(k, rows, generator=g) * 30 * real,
        real=real,
        n_trajectories=torch.randint(1, 9, (k,), generator=g).float(),
        step_size=torch.rand(k, generator=g) * 1e-3,
        threshold=torch.full((k,), 0.99),
        poison=torch.zeros(k, dtype=torch.bool),
    )
    return flat, layout, batch


def _episodes(g, lengths, horizon, terminated):
    """An EpisodeBatch of random observations and actions, reward 1 per real step."""
    lengths = torch.tensor(lengths)
    n = lengths.shape[0]
    mask = torch.arange(horizon)[None] < lengths[:, None]
    return EpisodeBatch(
        observations=torch.randn(n, horizon, 4, generator=g) * mask[..., None],
        actions=torch.randint(0, 2, (n, horizon), generator=g) * mask,
        rewards=mask.float(),
        mask=mask,
        lengths=lengths,
        terminated=torch.tensor(terminated),
        env_steps=n * horizon,
    )


def _pick(flat, batch, index):
    index = torch.as_tensor(index)
    fields = {name: getattr(batch, name)[index] for name in batch.__dataclass_fields__}
    return flat[index], stacked.StackedBatch(**fields)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_a_runs_step_is_bit_identical_alone_and_in_any_stack(activation):
    # Run 3's new parameters and numbers, alone and inside stacks of other sizes and orders.
    fn = ACTIVATIONS[activation]
    for rows in (64, 192, 1024):
        flat, layout, batch = _random_batch(11, rows, seed=rows)
        full = stacked.pg_step(flat, layout, batch, fn)
        for index in ([3], [0, 3], [3, 5, 7], [10, 3], [*range(4, 11), 3], [3] * 5):
            sub_flat, sub_batch = _pick(flat, batch, index)
            out = stacked.pg_step(sub_flat, layout, sub_batch, fn)
            j = index.index(3)
            assert torch.equal(full[0][3], out[0][j]), (activation, rows, index)
            assert torch.equal(full[1][3], out[1][j]), (activation, rows, index)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("rows", [64, 192, 1024])
def test_the_numpy_route_takes_the_torch_routes_step(activation, rows):
    # tanh and relu policies step in numpy; the torch route (every other activation) is
    # the same maths. New parameters and numbers agree to float32 rounding (rtol 1e-5:
    # sums of up to ~1e3 terms of relative error 6e-8 each, in other orders), and the
    # non-finite cases end the same way: a poisoned run keeps its parameters (finite 0,
    # NaN norms and KL), an overflowing step reports finite 0 with its new parameters.
    fn = ACTIVATIONS[activation]
    flat, layout, batch = _random_batch(6, rows, hidden=(16, 10), seed=rows + 1)
    batch.poison[1] = True
    batch.step_size[2] = 3e38
    new_np, numbers_np = stacked.pg_step(flat, layout, batch, fn)
    new_t, numbers_t = stacked._pg_step_torch(flat, layout, batch, fn)
    finite = numbers_t[:, 6] == 1.0
    assert finite.tolist() == [True, False, False, True, True, True]
    assert torch.equal(numbers_np[:, 6], numbers_t[:, 6])
    assert torch.equal(torch.isnan(numbers_np), torch.isnan(numbers_t))
    assert torch.allclose(numbers_np.nan_to_num(), numbers_t.nan_to_num(), rtol=1e-5, atol=1e-7)
    assert torch.equal(new_np[1], flat[1]) and not torch.isfinite(new_np[2]).all()
    _assert_same_steps(flat, new_np, new_t, [0, 1, 3, 4, 5])


def _assert_same_steps(flat, new_a, new_b, keep):
    # Two routes to theta' = theta - alpha grad L: their gradients are sums in other
    # orders, so the steps agree to float32 rounding norm-wise (rtol 1e-5, as above), and
    # each route then rounds theta + step once (at most half an ulp of theta' per value:
    # eps/2 ||theta'|| per route). Not element-wise relative to theta': where a step
    # nearly cancels theta, theta' is small and its relative error large.
    eps = torch.finfo(flat.dtype).eps
    step_a, step_b = new_a[keep] - flat[keep], new_b[keep] - flat[keep]
    error = (step_a - step_b).norm(dim=1)
    bound = 1e-5 * step_b.norm(dim=1) + eps * new_b[keep].norm(dim=1)
    assert (error <= bound).all(), (error, bound)


def test_odd_hidden_widths_stay_bit_identical():
    # width 10: a run's block of P x 10 values is still a multiple of 64 (P is)
    flat, layout, batch = _random_batch(5, 128, hidden=(10,), seed=1)
    full = stacked.pg_step(flat, layout, batch, torch.tanh)
    for index in ([2], [4, 2, 0]):
        sub_flat, sub_batch = _pick(flat, batch, index)
        out = stacked.pg_step(sub_flat, layout, sub_batch, torch.tanh)
        j = index.index(2)
        assert torch.equal(full[0][2], out[0][j]) and torch.equal(full[1][2], out[1][j])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_step_is_sgd_on_the_surrogate_computed_by_autograd(activation):
    # theta' = theta - alpha grad L with L = -(1/N) sum Psi log pi(a|s), the gradient by
    # torch.autograd on the same forward: equal to float32 rounding (rtol 1e-5 on values
    # of order 1, from ~1e3 summed terms of relative error 6e-8 each).
    fn = ACTIVATIONS[activation]
    flat, layout, batch = _random_batch(3, 64, hidden=(16, 8), seed=5)
    new, numbers = stacked.pg_step(flat, layout, batch, fn)
    for j in range(3):
        theta = flat[j].clone().requires_grad_(True)
        weights, biases = layout.views(theta.unsqueeze(0))
        x = batch.observations[j : j + 1]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < len(weights) - 1:
                x = fn(x)
        log_pi = torch.log_softmax(x, -1)[0]
        taken = log_pi.gather(-1, batch.actions[j][:, None]).squeeze(-1)
        loss = -(batch.weights[j] * taken).sum() / batch.n_trajectories[j]
        loss.backward()
        expected = flat[j] - batch.step_size[j] * theta.grad
        assert torch.allclose(new[j], expected, rtol=1e-5, atol=1e-7)
        assert math.isclose(numbers[j, 0], loss.item(), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(numbers[j, 1], theta.grad.norm().item(), rel_tol=1e-5)


def test_numbers_match_the_learners_on_the_same_batch():
    # The Learner (one run, nn.Module route) and pg_step (stacked route) on one batch of
    # N = 3 episodes: every recorded number and the new parameters agree to float32
    # rounding (they sum in different orders, so bits may differ).
    g = torch.Generator().manual_seed(0)
    n, horizon = 3, 40
    batch = _episodes(g, [40, 17, 9], horizon, terminated=[False, True, True])
    mask = batch.mask
    config = TrainConfig(n_trajectories=n, step_size=1e-2, max_iterations=1, variance_every=0)
    policy = make_policy("mlp", 4, 2, hidden_sizes=(64, 64), seed=3)
    stack = PolicyStack([copy.deepcopy(policy)])
    learner = Learner(config, policy)
    learner.learn(batch)
    row = learner.history[0]

    psi = estimators.step_weights(batch.rewards, mask, "reinforce")
    rows = stacked.padded_steps(int(mask.sum()))
    packed = torch.zeros(1, rows, 4)
    actions = torch.zeros(1, rows, dtype=torch.long)
    weights = torch.zeros(1, rows)
    real = torch.zeros(1, rows)
    s = int(mask.sum())
    packed[0, :s] = batch.observations[mask]
    actions[0, :s] = batch.actions[mask]
    weights[0, :s] = psi[mask]
    real[0, :s] = 1
    step = stacked.StackedBatch(
        observations=packed,
        actions=actions,
        weights=weights,
        real=real,
        n_trajectories=torch.tensor([3.0]),
        step_size=torch.tensor([1e-2]),
        threshold=torch.tensor([0.99]),
        poison=torch.tensor([False]),
    )
    new, numbers = stacked.pg_step(stack.flat, stack.layout, step, torch.tanh)
    for name, value in zip(stacked.NUMBERS, numbers[0].tolist(), strict=True):
        if name == "finite":
            assert value == 1.0
        else:
            assert math.isclose(value, row[name], rel_tol=1e-4, abs_tol=1e-7), name
    stack.flat.copy_(new)
    stack.store_many([0])
    for name, p in stack_policy_params(stack, policy):
        assert torch.allclose(p, dict(policy.named_parameters())[name], rtol=1e-5, atol=1e-7)


def stack_policy_params(stack, like):
    """The stacked run 0's parameters as named tensors of a policy like ``like``."""
    out = copy.deepcopy(like)
    with torch.no_grad():
        for i, layer in enumerate(out.layers):
            layer.weight.copy_(stack.weights_t[i][0].T)
            layer.bias.copy_(stack.biases[i][0, 0])
    return list(out.named_parameters())


def test_a_poisoned_or_exploding_run_leaves_the_others_alone():
    flat, layout, batch = _random_batch(4, 64, seed=2)
    clean_new, clean_numbers = stacked.pg_step(flat, layout, batch, torch.tanh)
    batch.poison[1] = True  # gradient replaced by NaN: no update, finite 0
    batch.step_size[2] = 3e38  # finite gradient, overflowing step: finite 0, new params kept
    new, numbers = stacked.pg_step(flat, layout, batch, torch.tanh)
    assert torch.equal(new[1], flat[1]) and numbers[1, 6] == 0.0
    assert math.isnan(numbers[1, 1]) and math.isnan(numbers[1, 4]) and math.isnan(numbers[1, 5])
    assert numbers[2, 6] == 0.0 and not torch.isfinite(new[2]).all() and math.isnan(numbers[2, 4])
    for j in (0, 3):
        assert torch.equal(new[j], clean_new[j]) and torch.equal(numbers[j], clean_numbers[j])


def test_padded_steps_follow_the_ladder():
    assert stacked.padded_steps(1) == 64 and stacked.padded_steps(64) == 64
    assert stacked.padded_steps(65) == 128 and stacked.padded_steps(2048) == 2048
    assert stacked.padded_steps(2049) == 2560 and stacked.padded_steps(25000) == 25088
    assert all(p % 64 == 0 for p in stacked.ROW_LADDER)
    assert all(b / a <= 2 for a, b in zip(stacked.ROW_LADDER, stacked.ROW_LADDER[1:], strict=False))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_real_rows_anywhere_in_a_slice_take_the_same_step(activation):
    # The numpy route runs the activation only up to the last real row of any slice
    # (lock-step packs real rows first). A batch whose real rows are scattered must still
    # take the torch route's step (same tolerance as above: float32 rounding, rtol 1e-5).
    fn = ACTIVATIONS[activation]
    flat, layout, batch = _random_batch(4, 128, hidden=(16, 10), seed=7)
    g = torch.Generator().manual_seed(3)
    order = torch.stack([torch.randperm(128, generator=g) for _ in range(4)])
    fields = {
        name: torch.gather(
            value, 1, order if value.dim() == 2 else order[..., None].expand(-1, -1, 4)
        )
        if value.dim() >= 2
        else value
        for name, value in vars(batch).items()
    }
    scattered = stacked.StackedBatch(**fields)
    assert scattered.real[:, -16:].any()  # real rows reach the end
    new_np, numbers_np = stacked.pg_step(flat, layout, scattered, fn)
    new_t, numbers_t = stacked._pg_step_torch(flat, layout, scattered, fn)
    assert torch.allclose(numbers_np, numbers_t, rtol=1e-5, atol=1e-7)
    _assert_same_steps(flat, new_np, new_t, list(range(4)))


_STEP_DIGEST = """
import hashlib, torch
from pglab.gym import stacked
g = torch.Generator().manual_seed(0)
layout = stacked.Layout((4, 64, 64, 2))
k, rows = 2, 2048
batch = stacked.StackedBatch(
    observations=torch.randn(k, rows, 4, generator=g),
    actions=torch.randint(0, 2, (k, rows), generator=g),
    weights=torch.randn(k, rows, generator=g) * 30,
    real=torch.ones(k, rows),
    n_trajectories=torch.full((k,), 8.0),
    step_size=torch.full((k,), 1e-3),
    threshold=torch.full((k,), 0.99),
    poison=torch.zeros(k, dtype=torch.bool),
)
new, numbers = stacked.pg_step(torch.randn(k, layout.size, generator=g) * 0.3, layout, batch,
                               torch.tanh)
print(hashlib.sha256(new.numpy().tobytes() + numbers.numpy().tobytes()).hexdigest())
"""


def test_the_step_does_not_depend_on_openblas_threads():
    # The weight gradients input^T dL/dz sum over a batch's P rows; OpenBLAS on two
    # threads sums them in another order (measured: other bits for every P >= 128), and
    # its default is one thread per core. pg_step runs under thread_invariant, which
    # limits the BLAS to one thread, so the bits are the same whatever the environment
    # asks for (exact equality of the digests).
    assert len(digests_under_blas_threads(_STEP_DIGEST)) == 1


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_per_episode_gradients_in_numpy_are_the_autograd_ones(activation):
    # stacked.per_episode_gradients (lock-step's variance_every route) against
    # gradients.per_episode_gradients (torch) on one batch: the same g_i, up to float32
    # sums in other orders (norm-wise rtol 1e-5 per episode, as for the step above), with
    # torch's nn.Linear weights [out, in] laid out transposed as in stacked.Layout.
    from pglab.gym.gradients import per_episode_gradients

    policy = make_policy("mlp", 4, 2, hidden_sizes=(16, 10), activation=activation, seed=3)
    g = torch.Generator().manual_seed(5)
    n, t = 5, 40
    batch = _episodes(g, [40, 3, 17, 1, 25], t, terminated=[True] * n)
    psi = torch.randn(n, t, generator=g) * 20 * batch.mask
    expected = per_episode_gradients(policy, batch, psi)
    parts, at = [], 0
    for layer in policy.layers:
        out, inp = layer.weight.shape
        parts.append(
            expected[:, at : at + out * inp].reshape(n, out, inp).transpose(1, 2).flatten(1)
        )
        parts.append(expected[:, at + out * inp : at + out * inp + out])
        at += out * inp + out
    expected = torch.cat(parts, dim=1)
    stack = PolicyStack([policy])
    got = stacked.per_episode_gradients(
        stack.flat[0].numpy(),
        stack.layout,
        batch.observations.numpy(),
        batch.actions.numpy(),
        psi.numpy(),
        activation,
    )
    got = torch.from_numpy(got)
    assert got.shape == expected.shape
    error = (got - expected).norm(dim=1)
    assert (error <= 1e-5 * expected.norm(dim=1)).all(), error
