"""Stochastic policies over a finite action set: pi_theta(a | s) = softmax(f_theta(s))_a.

A :class:`CategoricalPolicy` maps a batch of observations ``[B, obs_dim]`` (float32) to
logits ``[B, n_actions]``; everything else (probabilities, log-probabilities, entropy,
sampling) is derived from those logits. Two logit networks are provided by
:func:`make_policy`:

===========  ======================================================================
kind         logits f_theta(s)
===========  ======================================================================
``linear``   W s + b, with W ``[n_actions, obs_dim]`` (linear softmax / Gibbs policy)
``mlp``      W_L g(... g(W_1 s + b_1) ...) + b_L, g the activation (tanh by default)
===========  ======================================================================

Sampling is exact and driven only by the ``torch.Generator`` passed in, so a rollout is
a deterministic function of (policy parameters, generator state, environment seed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pglab import checks

__all__ = ["ACTIVATIONS", "POLICY_KINDS", "CategoricalPolicy", "make_policy"]

# Element-wise nonlinearities g between hidden layers, applied functionally (calling
# nn.Module objects costs several microseconds each, which matters in rollout loops).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}
POLICY_KINDS: tuple[str, ...] = ("mlp", "linear")


class CategoricalPolicy(nn.Module):
    """Softmax policy pi(a | s) = exp(l_a(s)) / sum_b exp(l_b(s)) over ``n_actions`` actions.

    The logit network is a stack of ``nn.Linear`` layers (``self.layers``) with
    ``activation`` between them:
    ``hidden_sizes=()`` gives the linear softmax policy l(s) = W s + b. Parameters are
    float32 unless ``dtype`` says otherwise. Construction uses PyTorch's default (global-RNG)
    initialisation; use :func:`make_policy` for a seeded initialisation that leaves the
    global RNG alone.

    Shapes: every method accepts observations ``[..., obs_dim]`` (any leading batch shape,
    typically ``[B, obs_dim]`` or ``[N, T, obs_dim]``) and returns ``[...]`` or
    ``[..., n_actions]``. Observations of another floating dtype are cast to the parameter
    dtype.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (),
        activation: str = "tanh",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.obs_dim = checks.positive_int("obs_dim", obs_dim)
        self.n_actions = checks.integer("n_actions", n_actions, minimum=2)
        self.hidden_sizes = tuple(
            checks.positive_int(f"hidden_sizes[{i}]", h) for i, h in enumerate(hidden_sizes)
        )
        checks.one_of("activation", activation, tuple(ACTIVATIONS))
        self.activation = activation
        self._activation = ACTIVATIONS[activation]
        widths = (self.obs_dim, *self.hidden_sizes, self.n_actions)
        self.layers = nn.ModuleList(
            nn.Linear(w_in, w_out, dtype=dtype) for w_in, w_out in itertools.pairwise(widths)
        )

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters (float32 by default)."""
        return self.output_layer.weight.dtype

    @property
    def output_layer(self) -> nn.Linear:
        """The last ``nn.Linear``, producing the logits (the layer ``init_scale`` scales)."""
        layer = self.layers[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, obs: Tensor) -> Tensor:
        """Logits l(s): ``[..., obs_dim]`` -> ``[..., n_actions]`` in the parameter dtype."""
        *hidden, last = self.layers
        x = obs if obs.dtype == last.weight.dtype else obs.to(last.weight.dtype)
        for layer in hidden:
            x = self._activation(F.linear(x, layer.weight, layer.bias))
        return F.linear(x, last.weight, last.bias)

    def probs(self, obs: Tensor) -> Tensor:
        """pi(. | s) = softmax(l(s)): ``[..., obs_dim]`` -> ``[..., n_actions]``, rows sum to 1."""
        return torch.softmax(self(obs), dim=-1)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log pi(a | s) = l_a(s) - logsumexp_b l_b(s).

        ``obs [..., obs_dim]`` and integer ``actions [...]`` (same leading shape) -> ``[...]``.
        Differentiable in the parameters; this is the term whose gradient is the score
        function grad log pi(a | s) used by REINFORCE.
        """
        log_pi = torch.log_softmax(self(obs), dim=-1)
        return log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, obs: Tensor) -> Tensor:
        """H(pi(. | s)) = -sum_a pi(a | s) log pi(a | s) in nats: ``[..., obs_dim]`` -> ``[...]``."""
        log_pi = torch.log_softmax(self(obs), dim=-1)
        return -(log_pi.exp() * log_pi).sum(dim=-1)

    def sample(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        """Draw a ~ pi(. | s) independently for every row: ``[..., obs_dim]`` -> ``[...]`` int64.

        Exactly one uniform U ~ U[0, 1) per row is drawn from ``generator`` (the only source
        of randomness), so results are reproducible given the generator state.

        * Two actions: pi(1 | s) = sigmoid(l_1 - l_0), and a = 1[U < sigmoid(l_1 - l_0)]
          has exactly that law (P(U < p) = p for U uniform).
        * n actions (inverse CDF): with C_k = sum_{j<=k} pi(j | s), a = #{k < n-1 : C_k <= U},
          so P(a >= k) = P(U >= C_{k-1}) = 1 - C_{k-1} and P(a = k) = pi(k | s). The last
          cumulative value is never compared, so rounding of C_{n-1} away from 1 cannot
          produce an out-of-range action.

        Both are exact up to floating-point resolution: probabilities are computed in the
        parameter dtype and a float32 U takes values k 2^-24, so each action probability is
        realised to within about 6e-8. ``torch.distributions.Categorical.sample`` is avoided
        (an order of magnitude slower for small batches). No gradient is recorded; the
        module's forward hooks are not called.
        """
        with torch.no_grad():
            # forward() directly: skips nn.Module.__call__ (hooks), a few microseconds per
            # call in the rollout loop.
            logits = self.forward(obs)
            u = torch.rand(
                logits.shape[:-1], generator=generator, dtype=logits.dtype, device=logits.device
            )
            if self.n_actions == 2:
                return (u < torch.sigmoid(logits[..., 1] - logits[..., 0])).long()
            cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
            return (cdf[..., :-1] <= u.unsqueeze(-1)).sum(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self.obs_dim}, n_actions={self.n_actions}, "
            f"hidden_sizes={self.hidden_sizes}, activation={self.activation!r}"
        )


def make_policy(
    kind: str,
    obs_dim: int,
    n_actions: int,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str = "tanh",
    init_scale: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> CategoricalPolicy:
    """Build a seeded :class:`CategoricalPolicy`.

    Args:
        kind: ``"mlp"`` (hidden layers ``hidden_sizes`` with ``activation``) or ``"linear"``
            (logits = W s + b; ``hidden_sizes`` and ``activation`` are ignored).
        obs_dim: observation length; n_actions: number of discrete actions (>= 2).
        hidden_sizes: widths of the MLP's hidden layers, default (64, 64).
        activation: one of :data:`ACTIVATIONS` (``tanh``, ``relu``, ``elu``, ...).
        init_scale: multiplies the output layer's initial weight and bias. ``0`` gives
            logits identically 0, i.e. the uniform policy pi(a | s) = 1 / n_actions exactly.
        seed: seeds a private ``torch.Generator`` used for every initial value; the global
            torch RNG state is left exactly as it was.
        dtype: parameter dtype, float32 by default.

    Initialisation: every layer's weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (PyTorch's ``nn.Linear`` default law), drawn layer by layer from ``Generator(seed)``;
    the output layer's values are then multiplied by ``init_scale``.
    """
    checks.one_of("policy kind", kind, POLICY_KINDS)
    init_scale = checks.real("init_scale", init_scale)
    seed = checks.seed("seed", seed)
    if not dtype.is_floating_point:
        raise checks.ConfigError(f"dtype must be a floating dtype, got {dtype}")
    sizes = tuple(hidden_sizes) if kind == "mlp" else ()
    # nn.Linear's constructor initialises from the global RNG; fork_rng restores that
    # state afterwards, and every value is then overwritten from the private generator.
    with torch.random.fork_rng(devices=[]):
        policy = CategoricalPolicy(obs_dim, n_actions, sizes, activation, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in policy.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        policy.output_layer.weight.mul_(init_scale)
        policy.output_layer.bias.mul_(init_scale)
    return policy
