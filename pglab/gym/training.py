"""The REINFORCE update loop on a gymnasium environment.

One iteration k:

1. collect N episodes with pi_{theta_k}                        (``RolloutCollector.collect``)
2. per-step weights Psi_{i,t} from the rewards                 (``estimators.step_weights``)
3. surrogate L = -(1/N) sum_{i,t} Psi_{i,t} log pi(a_{i,t}|s_{i,t});  ghat_N = -grad L
                                                               (``gradients.surrogate_loss``)
4. ascent step theta_{k+1} = theta_k + alpha ghat_N           (``optimizer="sgd"``)
5. metrics: returns, entropy and KL(pi_k || pi_{k+1}) on the batch's states, gradient norm,
   optionally the gradient variance, and the collapse detector's verdict (stuck now?).

Update rules (``TrainConfig.update``, issue 10): ``"pg"`` is steps 3-4 above; ``"npg"``,
``"trpo"`` and ``"ppo"`` replace them by :class:`pglab.gym.updates.UpdateRule` (built once
per run), which forms ghat_N from the same batch and weights, updates the policy in place
and reports the KL, the step's norm and its diagnostics (``step_size`` is then eta, delta
or PPO's learning rate). Every rule's row records ``kl`` and ``step_norm``.

Only ``"sgd"`` is the textbook rule; ``"momentum"``, ``"adam"``, ``"rmsprop"`` and
``"adagrad"`` apply ``torch.optim.SGD(momentum=...)`` / ``Adam`` / ``RMSprop`` / ``Adagrad``
(torch defaults) with learning rate alpha to the same surrogate, for comparison.

:class:`Learner` holds one run's state and does steps 2-5 for one batch at a time;
:func:`train` feeds it from a collector, :mod:`pglab.gym.lockstep` from a shared vector
environment (many runs in lock-step, each run's numbers unchanged).

Divergence: the loss, the gradient and the parameters are checked for NaN/inf every
iteration (parameters also at the start of each iteration, so a value changed from
outside, e.g. by the callback, is caught before it reaches the sampler). The first
non-finite value ends the run *cleanly*: ``train`` returns with ``status="diverged"``,
collapse reason ``"non_finite"``, and the history up to and including that iteration.
A step the parameters' dtype cannot hold (a float16 policy with a large step size; the
update would be inf) ends the run the same way, with the parameters left as they were.
To test this path, set ``TrainConfig.inject_nan_at = k``: at iteration k the gradient is
overwritten with NaN before the check, as a numerical blow-up would do (the parameters
are then left at their last finite value).

Randomness: actions are sampled from ``torch.Generator().manual_seed(config.seed)``;
environment resets are seeded by the collector's own ``seed``. Same config, same initial
policy and same collector seed give the same run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pglab import checks, estimators
from pglab.collapse import CollapseConfig, CollapseDetector
from pglab.gym import updates
from pglab.gym.gradients import (
    flat_grad,
    flat_params,
    grad_variance,
    per_episode_gradients,
    surrogate_loss,
)
from pglab.gym.policies import CategoricalPolicy
from pglab.gym.rollouts import RolloutCollector
from pglab.result import TrainResult
from pglab.threads import thread_invariant

__all__ = [
    "MAX_STEP_SIZE",
    "OPTIMIZERS",
    "RECORDED_EXTRAS",
    "TABULAR_ONLY_ESTIMATORS",
    "UPDATE_CONFIGS",
    "TrainConfig",
    "TrainResult",
    "train",
]

#: ``optimizer=`` of ``update="pg"``: the textbook step (``sgd``), heavy-ball momentum, and
#: the adaptive learning rates (per-coordinate steps scaled by a running gradient size):
#: ``adam``, ``rmsprop`` (``torch.optim.RMSprop``, smoothing 0.99, eps 1e-8) and ``adagrad``
#: (``torch.optim.Adagrad``, eps 1e-10), all with their torch defaults and learning rate alpha.
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop", "adagrad")
#: Largest step size per optimizer: the parameters are float32, and a step above float32's
#: maximum cannot even be applied (``p.add_`` refuses it). Adam's first step is
#: ``alpha / (1 - beta1) = 10 alpha`` (bias correction, default ``beta1 = 0.9``), hence
#: 3.4e37 (just below float32's maximum / 10). RMSprop's first step is
#: ``alpha g / sqrt((1 - 0.99) g^2) = 10 alpha`` per coordinate (and never more: its running
#: mean of g^2 is at least 0.01 g_k^2), hence the same bound; Adagrad's steps are
#: ``alpha g_k / sqrt(sum_j g_j^2) <= alpha``.
MAX_STEP_SIZE: dict[str, float] = {
    "sgd": checks.FLOAT32_MAX,
    "momentum": checks.FLOAT32_MAX,
    "adam": 3.4e37,
    "rmsprop": 3.4e37,
    "adagrad": checks.FLOAT32_MAX,
}
# Estimators that need exact tabular values and therefore cannot run on a gym environment.
TABULAR_ONLY_ESTIMATORS: tuple[str, ...] = ("baseline_value",)
#: Rule-specific diagnostics of :class:`pglab.gym.updates.UpdateInfo` recorded per
#: iteration (NaN where the rule does not report one; ``update="pg"`` reports none).
RECORDED_EXTRAS: tuple[str, ...] = ("backtracks", "accepted", "clip_fraction")
#: The sub-config type of each non-pg update rule.
UPDATE_CONFIGS: dict[str, type] = {
    "npg": updates.NPGConfig,
    "trpo": updates.TRPOConfig,
    "ppo": updates.PPOConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a REINFORCE run (besides the initial policy).

    Attributes:
        env_id: gymnasium id, used by the caller to build the collector (recorded here so
            the config describes the run).
        n_trajectories: N, episodes per iteration (>= 1).
        step_size: alpha > 0, at most :data:`MAX_STEP_SIZE` of the optimizer (float32's
            maximum; a tenth of it for Adam and RMSprop, whose first step is 10 alpha).
        estimator: a name in ``estimators.ESTIMATORS`` other than ``"baseline_value"``.
        gamma: discount in [0, 1] used by the estimator's weights.
        optimizer: ``"sgd"`` (theta <- theta + alpha ghat, stateless), ``"momentum"``
            (heavy-ball SGD with ``momentum``), or the adaptive ``"adam"``, ``"rmsprop"``,
            ``"adagrad"`` (:data:`OPTIMIZERS`).
        momentum: momentum coefficient in [0, 1) for ``optimizer="momentum"``.
        max_iterations: stop after this many iterations (``None``: no limit).
        max_env_steps: do not start a new iteration once this many real environment steps
            (sum of episode lengths) have been used (``None``: no limit). The last batch
            may overshoot. At least one of the two budgets must be set.
        variance_every: every k-th iteration (k = 0, k, 2k, ...) compute tr Cov(ghat_N)
            from per-episode gradients (0 = never; it costs a vmapped backward pass).
            A sample variance needs two episodes, so with N = 1 it stays NaN (a grid over
            N that includes 1 still runs).
        deterministic_threshold: a state counts as near-deterministic when
            max_a pi(a|s) >= this; in (0, 1].
        seed: seeds the action-sampling generator.
        inject_nan_at: testing hook; at this iteration the gradient is replaced by NaN
            (``None``: never).
        stop_on_collapse: end the run the first time the detector says it is stuck
            (``status`` is still ``"complete"`` unless it diverged). Default ``False``:
            full curves (a stuck run may still climb out).
        update: the update rule, a name in ``pglab.gym.updates.UPDATE_RULES``: ``"pg"``
            (the gradient step above, with ``optimizer``), ``"npg"``, ``"trpo"`` or
            ``"ppo"`` (:mod:`pglab.gym.updates`). For the other rules ``step_size`` is the
            rule's step parameter: eta of NPG, delta (the mean-KL bound, nats) of TRPO,
            the learning rate of PPO; ``optimizer`` must stay ``"sgd"`` (PPO's own
            optimiser is ``update_config.optimizer``).
        update_config: the rule's other keys, an :class:`~pglab.gym.updates.NPGConfig`,
            :class:`~pglab.gym.updates.TRPOConfig` or :class:`~pglab.gym.updates.PPOConfig`
            matching ``update`` (its own step field is replaced by ``step_size``);
            ``None``: the rule's defaults. Must be ``None`` for ``update="pg"``.
    """

    env_id: str = "CartPole-v1"
    n_trajectories: int = 10
    step_size: float = 0.01
    estimator: str = "reinforce"
    gamma: float = 1.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    max_iterations: int | None = 200
    max_env_steps: int | None = None
    variance_every: int = 0
    deterministic_threshold: float = 0.99
    seed: int = 0
    inject_nan_at: int | None = None
    stop_on_collapse: bool = False
    update: str = "pg"
    update_config: Any = None

    def validate(self) -> None:
        """Raise :class:`pglab.checks.ConfigError` naming the first invalid field and its value.

        ``step_size`` must also be at most :data:`MAX_STEP_SIZE` of the optimizer: the
        parameters are float32, and a larger step cannot even be applied.
        """
        checks.instance("env_id", self.env_id, str)
        checks.positive_int("n_trajectories", self.n_trajectories)
        limit = MAX_STEP_SIZE.get(self.optimizer, checks.FLOAT32_MAX)
        checks.positive_real("step_size", self.step_size, maximum=limit)
        if self.estimator in TABULAR_ONLY_ESTIMATORS:
            raise checks.ConfigError(
                f"estimator={self.estimator!r} needs exact tabular values and only runs on a "
                "TabularMDP (pglab.tabular.ascent); choose another estimator for a gym environment"
            )
        estimators.check_estimator(self.estimator)
        checks.discount("gamma", self.gamma)
        checks.one_of("optimizer", self.optimizer, OPTIMIZERS)
        checks.real("momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.max_iterations is None and self.max_env_steps is None:
            raise checks.ConfigError(
                "max_iterations=None and max_env_steps=None: set at least one budget"
            )
        if self.max_iterations is not None:
            checks.positive_int("max_iterations", self.max_iterations)
        if self.max_env_steps is not None:
            checks.positive_int("max_env_steps", self.max_env_steps)
        checks.integer("variance_every", self.variance_every, minimum=0)
        checks.probability("deterministic_threshold", self.deterministic_threshold, open_low=True)
        checks.seed("seed", self.seed)
        if self.inject_nan_at is not None:
            checks.integer("inject_nan_at", self.inject_nan_at, minimum=0)
        checks.boolean("stop_on_collapse", self.stop_on_collapse)
        checks.one_of("update", self.update, updates.UPDATE_RULES)
        if self.update != "pg" and self.optimizer != "sgd":
            raise checks.ConfigError(
                f"optimizer={self.optimizer!r} applies to update='pg' only; update="
                f"{self.update!r} takes its own steps (PPO's optimiser is its config's optimizer)"
            )
        if self.update == "pg":
            if self.update_config is not None:
                raise checks.ConfigError(
                    f"update_config={self.update_config!r} but update='pg' takes none"
                )
        elif self.update_config is not None:
            checks.instance("update_config", self.update_config, UPDATE_CONFIGS[self.update])
            self.update_config.validate()

    def make_collector(
        self, seed: int | None = None, max_episode_steps: int | None = None
    ) -> RolloutCollector:
        """The collector of this run, built from the config's ``env_id`` and ``n_trajectories``
        (the one owner of both; :func:`train` checks that a collector agrees with them).

        ``seed``: environment-reset seed, ``None`` for the config's ``seed``;
        ``max_episode_steps``: time limit, ``None`` for the environment's own.
        """
        return RolloutCollector(
            self.env_id,
            self.n_trajectories,
            seed=self.seed if seed is None else seed,
            max_episode_steps=max_episode_steps,
        )


def _check_collector(config: TrainConfig, collector: Any) -> None:
    """The collector plays the config's env and N: the config is what gets recorded."""
    env_id = getattr(collector, "env_id", None)
    if env_id != config.env_id:
        raise checks.ConfigError(
            f"collector.env_id={env_id!r} but config.env_id={config.env_id!r}: the run would "
            "train on the collector's env and record the config's; build the collector from "
            "the config (TrainConfig.make_collector)"
        )
    n = getattr(collector, "n_trajectories", None)
    if n != config.n_trajectories:
        raise checks.ConfigError(
            f"collector.n_trajectories={n!r} but config.n_trajectories={config.n_trajectories}: "
            "each batch must hold the config's N episodes (the estimator's N and the collapse "
            "window's episode count); build the collector from the config "
            "(TrainConfig.make_collector)"
        )


def _all_finite(tensors: list[Tensor]) -> bool:
    if len(tensors) == 1:
        return bool(torch.isfinite(tensors[0]).all())
    return bool(torch.isfinite(torch.cat([t.detach().reshape(-1) for t in tensors])).all())


def _median(values: Tensor) -> float:
    """``float(values.quantile(0.5))`` (the midpoint for even N) at a tenth of the cost:
    quantile sorts and interpolates with ``lerp`` at weight 0 or 0.5; so does this."""
    if bool(torch.isnan(values).any()):
        return math.nan
    ordered = values.sort().values
    n = ordered.shape[0]
    below, weight = (n - 1) // 2, 0.5 * ((n - 1) % 2)
    above = min(below + 1, n - 1)
    return float(torch.lerp(ordered[below], ordered[above], weight))


def _make_optimizer(config: TrainConfig, params: list[Tensor]) -> torch.optim.Optimizer | None:
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=config.step_size, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.step_size)
    # rmsprop: v <- 0.99 v + 0.01 g^2, theta <- theta - alpha g / (sqrt(v) + eps)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.step_size)
    # adagrad: G <- G + g^2, theta <- theta - alpha g / (sqrt(G) + eps)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=config.step_size)
    return None  # "sgd": the explicit update below


@thread_invariant
def train(
    config: TrainConfig,
    policy: nn.Module,
    collector: Any,
    detector: CollapseDetector | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run REINFORCE-style gradient ascent; ``policy`` is updated in place.

    Args:
        config: the run's settings (validated first; ``ValueError`` before any work).
        policy: a :class:`pglab.gym.policies.CategoricalPolicy` for the collector's spaces.
        collector: a :class:`pglab.gym.rollouts.RolloutCollector` (``collect(policy, generator)
            -> EpisodeBatch``) for ``config.env_id`` playing ``config.n_trajectories``
            episodes per batch (:meth:`TrainConfig.make_collector` builds one); a
            collector for another env or another N is refused before any work, since the
            run would silently train on it while recording the config's.
        detector: collapse detector; ``None`` uses ``CollapseDetector(CollapseConfig())``
            (CartPole defaults). Its state is reset at the start. Its window is in
            episodes and each iteration counts ``config.n_trajectories`` of them.
        callback: called with each iteration's metrics dict, right after it is recorded.

    Returns:
        :class:`TrainResult`. Each history entry has:

        ``iteration`` (0-based), ``env_steps`` (cumulative real steps, sum of episode
        lengths), ``env_steps_total`` (cumulative steps the collector reports, including
        any it discarded), ``wall_time`` (seconds since the start), ``sps``
        (env_steps / wall_time), ``return_mean``, ``return_median``, ``return_min``,
        ``return_max`` (undiscounted episode returns of the batch), ``length_mean``,
        ``loss``, ``grad_norm`` (||ghat_N||_2), ``entropy`` (mean over the batch's real
        states of H(pi_k(.|s)), nats), ``kl`` (mean over the same states of
        KL(pi_k(.|s) || pi_{k+1}(.|s)), computed after the update; NaN if the run
        diverged before updating), ``step_norm`` (``||theta_{k+1} - theta_k||_2``; NaN if
        no update was applied), ``backtracks``, ``accepted`` (TRPO's line search: shrinks
        taken, 1/0), ``clip_fraction`` (PPO) (NaN for rules that do not report them),
        ``frac_deterministic`` (fraction of those states with
        max_a pi_k(a|s) >= ``deterministic_threshold``), ``grad_variance``
        (tr Cov(ghat_N) estimate, NaN when not computed this iteration), ``collapsed``
        (the detector's verdict as of this iteration: stuck over the trailing window, or
        diverged; it is cleared again when a stuck run climbs out) and ``diverged``.

        A non-finite loss or gradient at iteration k records row k (with ``grad_norm`` and
        ``kl`` non-finite / NaN), skips the update and stops. Non-finite parameters after
        the update, or a step their dtype cannot hold (its update would overflow), record
        row k and stop (``final_params`` then holds them, resp. the unchanged ones). Parameters
        found non-finite at the *start* of iteration k (changed from outside, e.g. by the
        callback) stop the run before sampling: no row k, collapse onset k.
    """
    config.validate()
    _check_collector(config, collector)
    learner = Learner(config, policy, detector, callback)
    while learner.wants_batch():
        learner.learn(collector.collect(policy, learner.generator))
    return learner.result()


class Learner:
    """One run's iterations, fed one batch at a time: steps 2-5 of the module docstring.

    :func:`train` drives a Learner with its collector; :mod:`pglab.gym.lockstep` drives
    many (one per run) from one shared vector environment. Either way a run sees the same
    sequence of (batch, update), so its numbers depend only on its own config and seed.

    ``generator`` is the run's action-sampling generator (``Generator(config.seed)``).
    Call :meth:`wants_batch` before collecting each batch (budget and parameter checks),
    :meth:`learn` with it, and :meth:`result` at the end. ``config`` must be validated.
    """

    def __init__(
        self,
        config: TrainConfig,
        policy: nn.Module,
        detector: CollapseDetector | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if detector is None:
            detector = CollapseDetector(CollapseConfig())
        checks.instance("detector", detector, CollapseDetector)
        detector.reset()
        self.config, self.policy, self.detector, self.callback = config, policy, detector, callback
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(config, self.params)
        self.rule = None
        if config.update != "pg":
            self.rule = updates.make_update_rule(
                config.update, policy, config.step_size, config.update_config, seed=config.seed
            )
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.history: list[dict[str, Any]] = []
        self.status = "complete"
        self.env_steps = 0
        self.env_steps_total = 0
        self.iteration = 0
        self.done = False
        self._start = time.perf_counter()

    def budget_used(self) -> float:
        """The share of its budget the run has used, in [0, 1]: the larger of
        ``iteration / max_iterations`` and ``env_steps / max_env_steps`` (over the budgets
        set; the run stops at whichever is spent first)."""
        config = self.config
        shares = [0.0]
        if config.max_iterations is not None:
            shares.append(self.iteration / config.max_iterations)
        if config.max_env_steps is not None:
            shares.append(self.env_steps / config.max_env_steps)
        return min(max(shares), 1.0)

    def wants_batch(self, params_finite: bool | None = None) -> bool:
        """Whether the run goes on: budget left, no stop yet, parameters still finite
        (``params_finite``: the caller has just checked them; ``None``: check here)."""
        config = self.config
        if self.done:
            return False
        if config.max_iterations is not None and self.iteration >= config.max_iterations:
            self.done = True
        elif config.max_env_steps is not None and self.env_steps >= config.max_env_steps:
            self.done = True
        elif not (_all_finite(self.params) if params_finite is None else params_finite):
            # e.g. changed from outside between iterations
            self.status = "diverged"
            self.detector.update(self.iteration, math.nan, math.nan, finite=False)
            self.done = True
        return not self.done

    def result(self) -> TrainResult:
        final_params = {
            name: p.detach().cpu().clone() for name, p in self.policy.named_parameters()
        }
        return TrainResult(self.history, self.status, self.detector.status, final_params)

    def count_steps(self, real: int, total: int) -> None:
        """Add a batch's real env steps (sum of episode lengths) and the steps its
        collector played (wasted ones included) to the run's counters."""
        self.env_steps += real
        self.env_steps_total += total

    def learn(self, batch: Any) -> None:
        """Steps 2-5 on one batch of N episodes played with the current policy."""
        config, policy, params = self.config, self.policy, self.params
        optimizer, rule, iteration = self.optimizer, self.rule, self.iteration
        mask = batch.mask.bool()
        self.count_steps(int(mask.sum()), int(batch.env_steps))
        returns = torch.as_tensor(batch.returns, dtype=torch.float64)

        # 2. per-step weights Psi [N, T]
        weights = torch.as_tensor(
            estimators.step_weights(batch.rewards, batch.mask, config.estimator, gamma=config.gamma)
        )

        # pi_k on the batch's real states, for entropy / determinism / KL
        obs_real = batch.observations[mask]
        # pg on a CategoricalPolicy: one forward serves both pi_k and the surrogate below
        # (surrogate_loss computes the same log_softmax(policy(obs_real)), operation for
        # operation, so the numbers are those of two separate forwards)
        shared = rule is None and type(policy).log_prob is CategoricalPolicy.log_prob
        with torch.set_grad_enabled(shared):
            log_pi_all = torch.log_softmax(policy(obs_real), dim=-1)  # [M, A]
        with torch.no_grad():
            log_pi_old = log_pi_all.detach()
            pi_old = log_pi_old.exp()
            # H(pi(.|s)) = -sum_a pi log pi, with 0 log 0 = 0
            entropy = float(torch.special.entr(pi_old).sum(-1).mean())
            frac_det = float(
                (pi_old.max(-1).values >= config.deterministic_threshold).double().mean()
            )

        # optional: per-episode gradients at theta_k -> tr Cov(ghat_N)
        variance = math.nan
        measure = config.variance_every > 0 and iteration % config.variance_every == 0
        if measure and config.n_trajectories >= 2:
            variance = grad_variance(per_episode_gradients(policy, batch, weights))

        extras = dict.fromkeys(RECORDED_EXTRAS, math.nan)
        step_norm = math.nan
        kl = math.nan
        if rule is None:
            # 3. surrogate loss and its gradient: grad L = -ghat_N
            for p in params:
                p.grad = None
            if shared:
                # L = -(1/N) sum_{real steps} Psi log pi(a|s), as gradients.surrogate_loss
                w = torch.as_tensor(weights).detach().to(dtype=log_pi_all.dtype)[mask]
                taken = batch.actions[mask].long().unsqueeze(-1)
                loss = -(w * log_pi_all.gather(-1, taken).squeeze(-1)).sum() / mask.shape[0]
            else:
                loss = surrogate_loss(policy, batch, weights)
            loss.backward()
            if config.inject_nan_at is not None and iteration == config.inject_nan_at:
                for p in params:
                    p.grad.fill_(math.nan)  # testing hook: simulate a numerical blow-up
            grad_vec = flat_grad(params)
            grad_norm = float(grad_vec.norm())
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_vec).all())

            # 4. ascent step theta <- theta + alpha ghat_N
            if finite:
                theta_old = flat_params(params)
                try:
                    if optimizer is None:
                        with torch.no_grad():
                            for p in params:
                                p.add_(p.grad, alpha=-config.step_size)  # theta - alpha grad L
                    else:
                        optimizer.step()
                except RuntimeError as error:
                    # e.g. a float16 policy: the step itself overflows the parameters' dtype
                    # (the update would be inf). The run has diverged; keep what it recorded.
                    if "overflow" not in str(error):
                        raise
                    finite = False
                if finite:
                    step_norm = float((flat_params(params) - theta_old).norm())
                finite = finite and _all_finite(params)
                if finite:
                    with torch.no_grad():
                        log_pi_new = torch.log_softmax(policy(obs_real), dim=-1)
                    # KL(pi_k || pi_{k+1}), mean over the batch's states, as every rule records
                    kl = updates.batch_kl(log_pi_old, log_pi_new)
        else:
            # 3-4. the rule computes ghat_N itself and updates the policy in place; the
            # surrogate's value (at theta_k) is recorded as for pg
            with torch.no_grad():
                loss = surrogate_loss(policy, batch, weights)
            grad_norm = math.nan
            finite = bool(torch.isfinite(loss))
            if config.inject_nan_at is not None and iteration == config.inject_nan_at:
                finite = False  # testing hook: a blow-up before the update, which is skipped
            if finite:
                info = rule(batch, weights)
                grad_norm, kl, step_norm = info.grad_norm, info.kl, info.step_norm
                for name in RECORDED_EXTRAS:
                    extras[name] = float(info.extras.get(name, math.nan))
                finite = math.isfinite(kl) and _all_finite(params)

        self.record(
            returns=(
                float(returns.mean()),
                _median(returns),  # midpoint for even N
                float(returns.min()),
                float(returns.max()),
            ),
            length_mean=float(mask.sum(dim=1).double().mean()),
            loss=float(loss.detach()),
            grad_norm=grad_norm,
            entropy=entropy,
            kl=kl,
            step_norm=step_norm,
            extras=extras,
            frac_deterministic=frac_det,
            grad_variance=variance,
            finite=finite,
        )

    def record(
        self,
        *,
        returns: tuple[float, float, float, float],
        length_mean: float,
        loss: float,
        grad_norm: float,
        entropy: float,
        kl: float,
        step_norm: float,
        frac_deterministic: float,
        grad_variance: float,
        finite: bool,
        extras: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Step 5's bookkeeping for the iteration whose numbers are given (computed by
        :meth:`learn`, or for many runs at once by :func:`pglab.gym.stacked.pg_step`): the
        collapse detector, the history row, the run's status, then the callback. ``returns``
        is the batch's episode returns' (mean, median, min, max), the median the midpoint
        for even N; the env-step counters must already include this batch
        (:meth:`count_steps`). Returns the row."""
        config, detector, iteration = self.config, self.detector, self.iteration
        return_mean, return_median, return_min, return_max = returns
        collapse = detector.update(
            iteration, return_mean, entropy, finite, n_episodes=config.n_trajectories
        )
        wall = time.perf_counter() - self._start
        env_steps = self.env_steps
        metrics = {
            "iteration": iteration,
            "env_steps": env_steps,
            "env_steps_total": self.env_steps_total,
            "wall_time": wall,
            "sps": env_steps / wall if wall > 0 else math.nan,
            "return_mean": return_mean,
            "return_median": return_median,
            "return_min": return_min,
            "return_max": return_max,
            "length_mean": length_mean,
            "loss": loss,
            "grad_norm": grad_norm,
            "entropy": entropy,
            "kl": kl,
            "step_norm": step_norm,
            **(extras or dict.fromkeys(RECORDED_EXTRAS, math.nan)),
            "frac_deterministic": frac_deterministic,
            "grad_variance": grad_variance,
            "collapsed": collapse.collapsed,
            "diverged": not finite,
        }
        self.history.append(metrics)
        self.iteration += 1
        if not finite:
            self.status = "diverged"
            self.done = True
        elif config.stop_on_collapse and collapse.collapsed:
            self.done = True
        if self.callback is not None:
            self.callback(metrics)
        return metrics
