"""Each app's config, declared once and checked once at the boundary.

One frozen dataclass per app (:class:`EstimatorVarianceSettings`,
:class:`CalibrationSettings`, :class:`CartPoleSettings`, :class:`TabularAscentSettings`)
lists every key the app reads, its one-line doc and its check (:func:`key`, built on
:mod:`pglab.checks`); nested dataclasses are the config's groups (``budget``, ``policy``,
...). ``validate_<app>(cfg)`` reads the composed Hydra config into that dataclass, so
``ctx.settings`` holds plain, checked Python values and the app bodies check nothing
themselves. It runs twice on the same config: in the pre-flight (:mod:`pglab_jobs.cli`)
before Hydra creates any directory, and in ``run_job`` for every job (in a sweep a bad
value fails that job only).

Every error is a :class:`pglab.checks.ConfigError` with one line naming the key as users
type it (``budget.env_steps``, ``gradient_quality.checkpoints[1]``), the value and what
is allowed. The YAML files in ``conf/`` hold the defaults and nothing else:
``tests/test_config.py`` checks that every key of every composed default config is
declared here and every declared key has a default there. The keys that say where and how
a job runs (``paths``, ``logger``, the ``hydra`` node) belong to the job runtime
(:mod:`pglab_jobs.job`) and are not declared here. A key added on the command line with
``+key=value`` that no app declares is left alone (recorded, never read).

Importing this module registers the ``pglab_env_slug`` OmegaConf resolver
(``${pglab_env_slug:${env_id}}`` -> ``acrobot``), which conf/cartpole.yaml uses to name
output directories after the env; apps import this module before Hydra composes.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pglab import checks, estimators, schema
from pglab.checks import ConfigError
from pglab.gym import gradient_quality, policies, training, updates
from pglab.tabular import policy as tabular_policy
from pglab.tabular import zoo

__all__ = [
    "CalibrationSettings",
    "CartPoleSettings",
    "ConfigError",
    "EstimatorVarianceSettings",
    "TabularAscentSettings",
    "UPDATE_SETTINGS",
    "VALIDATORS",
    "declared_keys",
    "identity",
    "validate_calibration",
    "validate_cartpole",
    "validate_estimator_variance",
    "validate_tabular_ascent",
]

if not OmegaConf.has_resolver("pglab_env_slug"):
    OmegaConf.register_new_resolver("pglab_env_slug", schema.env_slug)


# ---------------------------------------------------------------------------------------
# Declaring keys
# ---------------------------------------------------------------------------------------
Check = Callable[[str, Any], Any]


def key(doc: str, check: Check) -> Any:
    """A config key: its one-line doc and ``check(dotted_name, value) -> typed value``."""
    return field(metadata={"doc": doc, "check": check})


def group(doc: str, settings: type) -> Any:
    """A nested group of keys (``budget.iterations``, ...), read into ``settings``."""
    return field(metadata={"doc": doc, "group": settings})


def _optional(check: Check) -> Check:
    """``check`` that also accepts ``null`` (None)."""

    def optional(name: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(name, value)
        except ConfigError as error:  # "... must be a positive integer or null, got 0"
            raise ConfigError(str(error).replace(", got ", " or null, got ", 1)) from None

    return optional


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _int_list(check: Check) -> Check:
    """A list (a single value is a list of one) whose items each pass ``check``."""

    def int_list(name: str, value: Any) -> tuple:
        items = checks.non_empty(name, value if isinstance(value, list | tuple) else [value])
        if len(items) == 1 and not isinstance(value, list | tuple):
            return (check(name, items[0]),)
        return tuple(check(f"{name}[{i}]", item) for i, item in enumerate(items))

    return int_list


def _sizes(name: str, value: Any) -> tuple[int, ...]:
    """Hidden-layer widths: a list of positive integers (may be empty)."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{name} must be a list of positive integers, got {value!r}")
    return tuple(checks.positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _non_negative_int(name: str, value: Any) -> int:
    return checks.integer(name, value, minimum=0)


def _real(name: str, value: Any) -> float:
    return checks.real(name, value)


def _non_negative(name: str, value: Any) -> float:
    return checks.real(name, value, 0.0)


def _peak(name: str, value: Any) -> float:
    """> 0; ``inf`` is allowed (it disables the dip count)."""
    if isinstance(value, float) and value == math.inf:
        return value
    return checks.positive_real(name, value)


def _choice(options: Sequence[str]) -> Check:
    def choice(name: str, value: Any) -> str:
        return checks.one_of(name, value, options)

    return choice


def _estimator_names(name: str, value: Any) -> tuple[str, ...]:
    """``all`` | one estimator name | a list of names."""
    if value == "all":
        return tuple(estimators.ESTIMATORS)
    items = checks.non_empty(name, value if isinstance(value, list | tuple) else [value])
    return tuple(checks.one_of(name, item, (*estimators.ESTIMATORS,)) for item in items)


def _step_size(name: str, value: Any) -> float:
    return checks.positive_real(name, value)


def _open_unit(name: str, value: Any) -> float:
    return checks.real(name, value, 0.0, 1.0, low_open=True, high_open=True)


def _half_open_unit(name: str, value: Any) -> float:
    return checks.real(name, value, 0.0, 1.0, high_open=True)


def _repetitions(name: str, value: Any) -> int:
    # a variance needs two batches
    return checks.integer(name, value, minimum=2)


# ---------------------------------------------------------------------------------------
# Reading a DictConfig into a declaration
# ---------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _get(node: DictConfig, name: str, dotted: str) -> Any:
    if name not in node and not OmegaConf.is_missing(node, name):
        raise ConfigError(f"{dotted} is missing from the config")
    if OmegaConf.is_missing(node, name):
        raise ConfigError(f"{dotted} is required (it has no default)")
    try:
        return _plain(node[name])
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f"{dotted} cannot be resolved: {message}") from None


def _read(settings: type, node: Any, prefix: str = "") -> Any:
    """``settings(**checked values)`` from the DictConfig ``node`` (keys under ``prefix``)."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{prefix.rstrip('.')} must be a group of keys, got {_plain(node)!r}")
    values = {}
    for item in dataclasses.fields(settings):
        if "doc" not in item.metadata:
            continue  # derived, not a config key
        dotted = f"{prefix}{item.name}"
        if "read" in item.metadata:  # a group with its own reader (mdp)
            values[item.name] = item.metadata["read"](node.get(item.name))
        elif "group" in item.metadata:
            child = node.get(item.name) if item.name in node else None
            if child is None:
                raise ConfigError(f"{dotted} is missing from the config")
            values[item.name] = _read(item.metadata["group"], child, f"{dotted}.")
        else:
            values[item.name] = item.metadata["check"](dotted, _get(node, item.name, dotted))
    return settings(**values)


def declared_keys(settings: type, prefix: str = "") -> dict[str, str]:
    """Every declared key of ``settings`` as ``{dotted key: one-line doc}`` (groups expanded)."""
    keys: dict[str, str] = {}
    for item in dataclasses.fields(settings):
        if "group" in item.metadata:
            keys.update(declared_keys(item.metadata["group"], f"{prefix}{item.name}."))
        elif "doc" in item.metadata:
            keys[f"{prefix}{item.name}"] = item.metadata["doc"]
    return keys


# ---------------------------------------------------------------------------------------
# Keys every app has
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Keys shared by every app (how a job runs, and its seed)."""

    task_name: str = key("directory name of the app's runs: <output_dir>/runs/<task_name>/", _text)
    sweep_name: str = key(
        "multiruns land in <output_dir>/multirun/<task_name>/<sweep_name>/", _text
    )
    resume: bool = key(
        "in a multirun, skip jobs whose results are already complete", checks.boolean
    )
    progress: bool = key("progress bar on a terminal, log lines otherwise", checks.boolean)
    threads: int = key(
        "torch intra-op threads (1 keeps parallel jobs off each other)", checks.positive_int
    )
    seed: int = key(
        "seeds every random draw of the job; same config + seed, same numbers", checks.seed
    )


# ---------------------------------------------------------------------------------------
# Tabular apps: an MDP and the softmax logits theta[s, a]
# ---------------------------------------------------------------------------------------
MDP_FILE_SUFFIXES = (".yaml", ".yml", ".npz")


@dataclass(frozen=True, kw_only=True)
class MDPSettings:
    """``mdp.name`` and the other ``mdp.*`` keys: the arguments of ``zoo.make(name, ...)``.

    The keys of each MDP are declared once, by its constructor in :mod:`pglab.tabular.zoo`
    (defaults in ``conf/mdp/<preset>.yaml``); the zoo checks their values. ``built`` is the
    MDP itself, made once here (cheap for the zoo) so a bad value fails before any work.
    """

    name: str
    params: dict[str, Any]
    built: Any = field(default=None, compare=False, repr=False)


def _mdp(node: Any) -> MDPSettings:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"mdp must be a group of keys (mdp=chain, mdp.horizon=10), got {node!r}")
    name = checks.one_of("mdp.name", _get(node, "name", "mdp.name"), zoo.available())
    constructor = getattr(zoo, name)
    known = list(inspect.signature(constructor).parameters)
    params: dict[str, Any] = {}
    for param in node:
        if param == "name":
            continue
        if param not in known:
            hint = checks.did_you_mean(str(param), known)
            raise ConfigError(
                f"mdp.{param} is not a parameter of mdp={name}{hint}; "
                f"it takes: {', '.join(known) or 'nothing'}"
            )
        if name == "file" and param == "path" and OmegaConf.is_missing(node, "path"):
            raise ConfigError(
                "mdp.path is required with mdp=file: a .yaml or .npz file "
                "(e.g. mdp.path=examples/mdps/two_state.yaml)"
            )
        params[str(param)] = _get(node, str(param), f"mdp.{param}")
    if name == "file":
        path = params.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"mdp.path must be the path of a .yaml or .npz file, got {path!r}")
        if Path(path).suffix.lower() not in MDP_FILE_SUFFIXES:
            raise ConfigError(f"mdp.path must be a .yaml, .yml or .npz file, got {path!r}")
        if not Path(path).is_file():
            raise ConfigError(f"mdp.path={path!r}: no such file")
    if "horizon" in params:
        params["horizon"] = _optional(checks.positive_int)("mdp.horizon", params["horizon"])
    if "gamma" in params:
        params["gamma"] = checks.discount("mdp.gamma", params["gamma"])
    try:
        built = zoo.make(name, **params)
    except (ValueError, TypeError, OSError) as error:  # ConfigError is a ValueError
        message = " ".join(str(error).split())
        # the zoo names its parameter ("slip must be ..."): name it as users type it
        if message.split(" ", 1)[0].split("=")[0] in known:
            raise ConfigError(f"mdp.{message}") from None
        raise ConfigError(f"mdp={name}: {message}") from None
    return MDPSettings(name=name, params=params, built=built)


@dataclass(frozen=True, kw_only=True)
class LogitsSettings:
    """The softmax logits theta[s, a] at which gradients are measured (or ascent starts)."""

    kind: str = key(
        "random (scale x N(0,1)) | uniform (theta = 0) | near_deterministic",
        _choice(tabular_policy.LOGIT_KINDS),
    )
    scale: float = key("scale of the random / near-deterministic logits, >= 0", _non_negative)
    seed: int = key("seed of the random logits", checks.seed)


@dataclass(frozen=True, kw_only=True)
class _TabularSettings(RunSettings):
    policy: LogitsSettings = group("initial softmax logits", LogitsSettings)
    mdp: MDPSettings = field(
        metadata={"doc": "the MDP: mdp=<preset>, mdp.<param>=value", "read": _mdp}
    )


# ---------------------------------------------------------------------------------------
# The update rule: update=pg|npg|trpo|ppo (conf/update/<name>.yaml), shared by the
# gym and tabular ascent apps; step_size (the app's key) is the rule's step parameter
# ---------------------------------------------------------------------------------------
def _rule_name(name: str, value: Any) -> str:
    return checks.one_of(name, value, updates.UPDATE_RULES)


def _kl_target(name: str, value: Any) -> float | None:
    return _optional(checks.positive_real)(name, value)


@dataclass(frozen=True, kw_only=True)
class PGUpdateSettings:
    """update=pg: theta <- theta + alpha g (with the app's optimizer); no other keys."""

    name: str = key("the update rule: pg | npg | trpo | ppo (conf/update/)", _rule_name)

    def core(self) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class NPGUpdateSettings(PGUpdateSettings):
    """update=npg: theta <- theta + eta (Fhat + lambda I)^-1 ghat (pglab.gym.updates)."""

    damping: float = key("lambda >= 0 added to the per-episode Fisher", _non_negative)
    cg_iterations: int = key("conjugate-gradient iterations", checks.positive_int)
    cg_tolerance: float = key("CG stops once |residual| <= this x |ghat|", _non_negative)
    kl_target: float | None = key(
        "null: step eta x; kappa > 0: the KL-normalised step (step_size unused)", _kl_target
    )
    fisher_stride: int = key("Fisher on every k-th state of the batch", checks.positive_int)

    def core(self) -> updates.NPGConfig:
        return updates.NPGConfig(
            damping=self.damping,
            cg_iterations=self.cg_iterations,
            cg_tolerance=self.cg_tolerance,
            kl_target=self.kl_target,
            fisher_stride=self.fisher_stride,
        )


@dataclass(frozen=True, kw_only=True)
class TRPOUpdateSettings(PGUpdateSettings):
    """update=trpo: mean KL <= delta (= step_size), backtracking line search."""

    damping: float = key("lambda >= 0 added to the mean-KL Fisher", _non_negative)
    cg_iterations: int = key("conjugate-gradient iterations", checks.positive_int)
    cg_tolerance: float = key("CG stops once |residual| <= this x |ghat|", _non_negative)
    backtrack: float = key("line-search shrink factor, in (0, 1)", _open_unit)
    max_backtracks: int = key("shrinks after the full step (>= 0)", _non_negative_int)
    fisher_stride: int = key("Fisher on every k-th state of the batch", checks.positive_int)

    def core(self) -> updates.TRPOConfig:
        return updates.TRPOConfig(
            damping=self.damping,
            cg_iterations=self.cg_iterations,
            cg_tolerance=self.cg_tolerance,
            backtrack=self.backtrack,
            max_backtracks=self.max_backtracks,
            fisher_stride=self.fisher_stride,
        )


@dataclass(frozen=True, kw_only=True)
class PPOUpdateSettings(PGUpdateSettings):
    """update=ppo: clipped surrogate, epochs x minibatches, its own optimiser."""

    clip: float = key("epsilon > 0 of the clipped ratio", checks.positive_real)
    epochs: int = key("passes over the batch per iteration", checks.positive_int)
    minibatches: int = key("minibatches per epoch", checks.positive_int)
    optimizer: str = key("PPO's own optimiser: adam | sgd", _choice(updates.PPO_OPTIMIZERS))

    def core(self) -> updates.PPOConfig:
        return updates.PPOConfig(
            clip=self.clip,
            epochs=self.epochs,
            minibatches=self.minibatches,
            optimizer=self.optimizer,
        )


#: update rule -> the settings of conf/update/<rule>.yaml
UPDATE_SETTINGS: dict[str, type] = {
    "pg": PGUpdateSettings,
    "npg": NPGUpdateSettings,
    "trpo": TRPOUpdateSettings,
    "ppo": PPOUpdateSettings,
}


def _update(node: Any) -> PGUpdateSettings:
    if not isinstance(node, DictConfig):
        raise ConfigError(
            f"update must be a group of keys (update=npg, update.damping=0.01), got {node!r}"
        )
    name = _rule_name("update.name", _get(node, "name", "update.name"))
    settings = UPDATE_SETTINGS[name]
    known = [f.name for f in dataclasses.fields(settings)]
    for param in node:
        if param not in known:
            hint = checks.did_you_mean(str(param), known)
            raise ConfigError(
                f"update.{param} is not a key of update={name}{hint}; it takes: {', '.join(known)}"
            )
    return _read(settings, node, "update.")


def _update_field(doc: str) -> Any:
    return field(metadata={"doc": doc, "read": _update})


# ---------------------------------------------------------------------------------------
# The apps
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class EstimatorVarianceSettings(_TabularSettings):
    """experiments/estimator_variance.py: bias / variance / MSE of every estimator vs N."""

    estimator: tuple[str, ...] = key("all | one estimator name | a list of names", _estimator_names)
    n_trajectories: tuple[int, ...] = key(
        "batch sizes N (a list of positive integers)", _int_list(checks.positive_int)
    )
    n_repetitions: int = key(
        "K independent batches per N (>= 2: a variance needs two)", _repetitions
    )
    confidence: float = key("level of the bias interval, in (0, 1)", _open_unit)
    n_resamples: int = key("bootstrap resamples of the test and the interval", checks.positive_int)


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings(EstimatorVarianceSettings):
    """experiments/calibration.py: re-run study cells n_studies times to calibrate verdicts."""

    n_studies: int = key("independent repetitions of each study cell", checks.positive_int)


GRADIENT_EXACT = "exact"


@dataclass(frozen=True, kw_only=True)
class TabularAscentSettings(_TabularSettings):
    """experiments/tabular_ascent.py: theta <- theta + alpha g on a tabular MDP, exact J."""

    gradient: str = key(
        "exact | an estimator name (the gradient each step uses)",
        _choice((GRADIENT_EXACT, *estimators.ESTIMATORS)),
    )
    n_trajectories: int = key("N per iteration when gradient is an estimator", checks.positive_int)
    step_size: float = key(
        "the rule's step: alpha (pg), eta (npg), delta in nats (trpo); finite and > 0",
        _step_size,
    )
    update: PGUpdateSettings = _update_field("the update rule: update=pg|npg|trpo (conf/update/)")
    n_iterations: int = key("number of updates", checks.positive_int)
    collapse_window: int = key(
        "trailing window (iterations) over which 'stuck' is judged", checks.positive_int
    )


@dataclass(frozen=True, kw_only=True)
class GymPolicySettings:
    """The categorical policy network on a gymnasium env."""

    kind: str = key("mlp | linear", _choice(policies.POLICY_KINDS))
    hidden_sizes: tuple[int, ...] = key("widths of the MLP's hidden layers", _sizes)
    activation: str = key(
        "tanh | relu | elu | gelu | silu | leaky_relu",
        _choice(tuple(policies.ACTIVATIONS)),
    )
    init_scale: float = key("multiplies the output layer's initial values (0: uniform)", _real)


@dataclass(frozen=True, kw_only=True)
class BudgetSettings:
    """Stop at whichever comes first; null disables one (at least one must be set)."""

    iterations: int | None = key("updates (null: no limit)", _optional(checks.positive_int))
    env_steps: int | None = key(
        "environment steps (null: no limit; the last batch may overshoot)",
        _optional(checks.positive_int),
    )


@dataclass(frozen=True, kw_only=True)
class CollapseSettings:
    """Thresholds of the collapse detector (pglab/collapse.py)."""

    window_episodes: int = key("trailing window in episodes", checks.positive_int)
    poor_return: float | None = key(
        "stuck: window mean return <= this (null disables)", _optional(_real)
    )
    entropy_threshold: float = key("... and window mean entropy < this (nats), >= 0", _non_negative)
    drop_fraction: float = key(
        "dips: windowed return < drop_fraction x its peak, in (0, 1]",
        lambda name, value: checks.probability(name, value, open_low=True),
    )
    min_peak: float = key("dips count once the windowed peak reached this (> 0, inf: never)", _peak)


def _reference_episodes(name: str, value: Any) -> int:
    return checks.integer(name, value, minimum=2)  # a standard error needs two episodes


@dataclass(frozen=True, kw_only=True)
class GradientQualitySettings:
    """Cosine / relative error of batch gradients to a large reference, at checkpoints."""

    enabled: bool = key("measure gradient quality at all", checks.boolean)
    checkpoints: tuple[int, ...] = key(
        "iterations at which to measure (0 = before the first update)",
        _int_list(_non_negative_int),
    )
    reference_episodes: int = key(
        "episodes M of the reference gradient (>= 2)", _reference_episodes
    )
    reference_estimator: str = key(
        "reinforce | reward_to_go (per-episode weights, so the SE holds)",
        _choice(gradient_quality.PER_EPISODE_ESTIMATORS),
    )
    batch_sizes: tuple[int, ...] = key(
        "batch sizes N whose quality is measured", _int_list(checks.positive_int)
    )
    n_batches: int = key("independent batches per N", checks.positive_int)


GYM_ESTIMATORS = tuple(
    e for e in estimators.ESTIMATORS if e not in training.TABULAR_ONLY_ESTIMATORS
)


def _gym_estimator(name: str, value: Any) -> str:
    if value in training.TABULAR_ONLY_ESTIMATORS:
        raise ConfigError(
            f"{name}={value!r} needs exact tabular values (tabular_ascent.py only); "
            f"choose one of: {', '.join(GYM_ESTIMATORS)}"
        )
    return checks.one_of(name, value, GYM_ESTIMATORS)


@functools.cache
def _env_ids() -> tuple[str, ...]:
    import gymnasium

    return tuple(gymnasium.registry)


def _env_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or value not in _env_ids():
        hint = checks.did_you_mean(str(value), _env_ids())
        raise ConfigError(
            f"{name}={value!r} is not a registered gymnasium environment{hint}; "
            "use a discrete-action env such as CartPole-v1 or Acrobot-v1"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class CartPoleSettings(RunSettings):
    """experiments/cartpole.py: REINFORCE on a discrete-action gymnasium env."""

    env_id: str = key("any discrete-action gymnasium env, e.g. Acrobot-v1", _env_id)
    max_episode_steps: int | None = key(
        "time limit (null: the env's own)", _optional(checks.positive_int)
    )
    n_trajectories: int = key("N: complete episodes per update", checks.positive_int)
    step_size: float = key(
        "the rule's step: alpha (pg), eta (npg), delta (trpo), learning rate (ppo); "
        "finite, > 0, <= the optimizer's float32 bound (checked with the optimizer below)",
        _step_size,
    )
    update: PGUpdateSettings = _update_field(
        "the update rule: update=pg|npg|trpo|ppo (conf/update/)"
    )
    estimator: str = key("the gradient estimator (not baseline_value)", _gym_estimator)
    gamma: float = key("discount inside the estimator, in [0, 1]", checks.discount)
    optimizer: str = key(
        "update=pg only: sgd | momentum | adam | rmsprop | adagrad", _choice(training.OPTIMIZERS)
    )
    momentum: float = key("used by optimizer=momentum, in [0, 1)", _half_open_unit)
    budget: BudgetSettings = group("when to stop", BudgetSettings)
    variance_every: int = key(
        "every k iterations, measure the gradient variance (0 = never)", _non_negative_int
    )
    deterministic_threshold: float = key(
        "a state is near-deterministic when max_a pi(a|s) >= this, in (0, 1]",
        lambda name, value: checks.probability(name, value, open_low=True),
    )
    policy: GymPolicySettings = group("the policy network", GymPolicySettings)
    collapse: CollapseSettings = group("the collapse detector", CollapseSettings)
    gradient_quality: GradientQualitySettings = group(
        "gradient quality at checkpoints", GradientQualitySettings
    )


def _check_cartpole(settings: CartPoleSettings) -> CartPoleSettings:
    if settings.update.name != "pg" and settings.optimizer != "sgd":
        raise ConfigError(
            f"optimizer={settings.optimizer} applies to update=pg only; update="
            f"{settings.update.name} takes its own steps"
            + (" (PPO's optimiser is update.optimizer)" if settings.update.name == "ppo" else "")
        )
    # Parameters are float32: a step above MAX_STEP_SIZE overflows on the first update
    # (float32's maximum for sgd/momentum/adagrad; Adam's and RMSprop's first step is ~10 alpha).
    limit = training.MAX_STEP_SIZE[settings.optimizer]
    if settings.step_size > limit:
        raise ConfigError(
            f"step_size must be <= {limit:g} with optimizer={settings.optimizer} "
            f"(float32 parameters), got {settings.step_size!r}"
        )
    budget = settings.budget
    if budget.iterations is None and budget.env_steps is None:
        raise ConfigError(
            "budget.iterations and budget.env_steps are both null: set at least one budget"
        )
    quality = settings.gradient_quality
    if quality.enabled and budget.iterations is not None and budget.env_steps is None:
        for index, checkpoint in enumerate(quality.checkpoints):
            if checkpoint > budget.iterations:
                raise ConfigError(
                    f"gradient_quality.checkpoints[{index}]={checkpoint} is after the last "
                    f"update (budget.iterations={budget.iterations}); use 0..{budget.iterations}"
                )
    return settings


# ---------------------------------------------------------------------------------------
# validate_<app>: what run_job(validate=...) and the pre-flight call
# ---------------------------------------------------------------------------------------
def validate_estimator_variance(cfg: DictConfig) -> EstimatorVarianceSettings:
    """The estimator study's settings, or ConfigError naming the first bad key."""
    return _read(EstimatorVarianceSettings, cfg)


def validate_calibration(cfg: DictConfig) -> CalibrationSettings:
    """The calibration's settings, or ConfigError naming the first bad key."""
    return _read(CalibrationSettings, cfg)


def _check_tabular_ascent(settings: TabularAscentSettings) -> TabularAscentSettings:
    """The update rules tabular_ascent builds (pglab.tabular.ascent.check_update)."""
    from pglab.tabular.ascent import check_update

    check_update(settings.update.name, settings.gradient)
    return settings


def validate_tabular_ascent(cfg: DictConfig) -> TabularAscentSettings:
    """The tabular ascent's settings, or ConfigError naming the first bad key."""
    return _check_tabular_ascent(_read(TabularAscentSettings, cfg))


def validate_cartpole(cfg: DictConfig) -> CartPoleSettings:
    """The gymnasium app's settings, or ConfigError naming the first bad key."""
    return _check_cartpole(_read(CartPoleSettings, cfg))


def identity(experiment: schema.Experiment, settings: Any, **computed: Any) -> dict[str, Any]:
    """The identity columns of ``experiment`` (:mod:`pglab.schema`), in its order: each the
    setting of that name, unless ``computed`` gives it (e.g. ``mdp=mdp.name``)."""
    row = {}
    for column in experiment.identity:
        if column in computed:
            row[column] = computed[column]
        elif hasattr(settings, column):
            row[column] = getattr(settings, column)
        else:
            raise KeyError(f"{experiment.name}: identity column {column!r} has no setting")
    return row


#: app name -> (settings class, validate function)
VALIDATORS: dict[str, tuple[type, Callable[[DictConfig], Any]]] = {
    "estimator_variance": (EstimatorVarianceSettings, validate_estimator_variance),
    "calibration": (CalibrationSettings, validate_calibration),
    "cartpole": (CartPoleSettings, validate_cartpole),
    "tabular_ascent": (TabularAscentSettings, validate_tabular_ascent),
}
