"""The typed configs (pglab_jobs.config) and the pre-flight (pglab_jobs.cli), in process.

Configs are composed with Hydra's compose API from the real conf/ directory, exactly as the
apps compose them; the end-to-end command lines are in tests/test_experiment_apps.py.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig
from pglab_jobs import cli, config

from pglab import schema
from pglab.checks import FLOAT32_MAX, ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
APPS = tuple(config.VALIDATORS)
TWO_STATE_YAML = REPO / "examples" / "mdps" / "two_state.yaml"
#: Keys of the composed configs that belong to the job runtime, not to an app's settings.
RUNTIME_GROUPS = ("paths", "logger")


def composed(app: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(app, overrides=list(overrides))


def validate(app: str, *overrides: str):
    return config.VALIDATORS[app][1](composed(app, *overrides))


def flat_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    for name in node:
        value = node[name]
        dotted = f"{prefix}{name}"
        if isinstance(value, DictConfig):
            keys |= flat_keys(value, f"{dotted}.")
        else:
            keys.add(dotted)
    return keys


# ---------------------------------------------------------------------------------------
# The declaration matches conf/ and the schema
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("app", APPS)
def test_default_config_of_every_app_is_valid(app):
    settings = validate(app)
    assert type(settings) is config.VALIDATORS[app][0]
    assert settings.seed == 0 and settings.threads == 1


@pytest.mark.parametrize("app", APPS)
def test_every_key_in_conf_is_declared_and_every_declared_key_has_a_default(app):
    cfg = composed(app)
    in_yaml = {
        k
        for k in flat_keys(cfg)
        if k.split(".")[0] not in RUNTIME_GROUPS and k.split(".")[0] not in ("mdp", "update")
    }
    # mdp's keys are its zoo constructor's; update's are the chosen rule's (test below)
    declared = {
        k for k in config.declared_keys(config.VALIDATORS[app][0]) if k not in ("mdp", "update")
    }
    assert in_yaml == declared
    for doc in config.declared_keys(config.VALIDATORS[app][0]).values():
        assert doc and "\n" not in doc


@pytest.mark.parametrize("rule", sorted(config.UPDATE_SETTINGS))
def test_every_key_of_each_update_rule_file_is_declared_and_has_a_default(rule):
    """conf/update/<rule>.yaml holds exactly the keys of config.UPDATE_SETTINGS[rule]."""
    cfg = composed("cartpole", f"update={rule}")
    in_yaml = {k for k in flat_keys(cfg) if k.startswith("update.")}
    assert in_yaml == set(config.declared_keys(config.UPDATE_SETTINGS[rule], "update."))
    assert cfg["update"]["name"] == rule
    settings = validate("cartpole", f"update={rule}")
    assert type(settings.update) is config.UPDATE_SETTINGS[rule]
    for line in (CONF / "update" / f"{rule}.yaml").read_text().splitlines():
        if line and not line.startswith("#") and not line.startswith("name:"):
            assert "  # " in line, f"conf/update/{rule}.yaml: {line!r} has no one-line comment"


def test_update_settings_reach_the_core_configs():
    """The group file's values are the core's config (step field left to step_size)."""
    settings = validate("cartpole", "update=trpo", "step_size=0.02", "update.max_backtracks=3")
    core = settings.update.core()
    assert core.max_backtracks == 3 and core.backtrack == 0.5 and core.damping == 0.1
    assert validate("cartpole", "update=ppo").update.core().epochs == 4
    assert validate("cartpole").update.core() is None


@pytest.mark.parametrize(
    ("app", "overrides", "parts"),
    [
        ("cartpole", ("update=npg", "update.damping=-1"), ("update.damping", "-1")),
        ("cartpole", ("update=trpo", "update.backtrack=1"), ("update.backtrack", "(0, 1)")),
        ("cartpole", ("update=ppo", "update.optimizer=rmsprop"), ("update.optimizer",)),
        ("cartpole", ("update=npg", "optimizer=adam"), ("optimizer=adam", "update=pg only")),
        ("cartpole", ("update=npg", "+update.clip=0.1"), ("update.clip", "update=npg")),
        ("tabular_ascent", ("update=ppo",), ("update=ppo", "not built", "cartpole.py")),
        (
            "tabular_ascent",
            ("update=ppo", "gradient=reinforce"),
            ("update=ppo", "gradient=reinforce", "minibatch epochs", "cartpole.py"),
        ),
    ],
)
def test_bad_update_settings_give_one_line_naming_the_key(app, overrides, parts):
    with pytest.raises(ConfigError) as error:
        validate(app, *overrides)
    assert_one_line(error, *parts)


@pytest.mark.parametrize("app", ["cartpole", "tabular_ascent"])
def test_misspelled_update_rule_gets_a_did_you_mean_before_any_work(app):
    with pytest.raises(ConfigError) as error:
        cli.check_command_line(app, config.VALIDATORS[app][1], ["update=trp0"])
    assert_one_line(error, "update", "'trp0'", "did you mean 'trpo'")


@pytest.mark.parametrize("app", APPS)
def test_identity_columns_of_the_schema_are_settings(app):
    settings = validate(app)
    experiment = schema.experiment(app)
    # per row in the tabular studies; update is the rule's name (settings.update.name)
    computed = {"mdp": "chain", "estimator": "reinforce", "update": "pg"}
    row = config.identity(experiment, settings, **computed)
    assert tuple(row) == experiment.identity


@pytest.mark.parametrize("app", APPS)
def test_presets_named_in_configs_and_docstrings_exist(app):
    """A preset recommended in conf/<app>.yaml or the app's docstring must compose (one
    recommended `experiment=estimator_study`, which did not exist)."""
    text = (CONF / f"{app}.yaml").read_text() + (REPO / "experiments" / f"{app}.py").read_text()
    for name in set(re.findall(r"experiment=([A-Za-z0-9_]+)", text)):
        assert (CONF / "experiment" / f"{name}.yaml").is_file(), name
        cli.check_command_line(app, config.VALIDATORS[app][1], ["-m", f"experiment={name}"])


# ---------------------------------------------------------------------------------------
# Values: one line naming the key (as typed), the value and the rule
# ---------------------------------------------------------------------------------------
def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("app", APPS)
def test_fractional_seed_is_refused_in_every_app(app):
    """seed=1.7 used to run seed 1 in the tabular apps and record 1.7."""
    with pytest.raises(ConfigError) as error:
        validate(app, "seed=1.7")
    assert_one_line(error, "seed", "1.7", "integer")


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize(
    ("override", "parts"),
    [
        ("seed=abc", ("seed", "'abc'", "integer")),
        ("threads=abc", ("threads", "'abc'", "positive integer")),
        ("threads=0", ("threads", "0", "positive integer")),
        ("seed=-1", ("seed", "-1", ">= 0")),
        ("progress=maybe", ("progress", "'maybe'", "true or false")),
    ],
)
def test_run_keys_are_checked_in_every_app(app, override, parts):
    with pytest.raises(ConfigError) as error:
        validate(app, override)
    assert_one_line(error, *parts)


@pytest.mark.parametrize(
    ("app", "overrides", "parts"),
    [
        ("estimator_variance", ("mdp=file",), ("mdp.path is required", ".yaml or .npz")),
        ("estimator_variance", ("mdp=file", "mdp.path=x.txt"), ("mdp.path", "x.txt", ".npz")),
        (
            "estimator_variance",
            ("mdp=file", "mdp.path=/no/such.yaml"),
            ("/no/such.yaml", "no such"),
        ),
        ("estimator_variance", ("mdp.horizon=0",), ("mdp.horizon", "0")),
        ("estimator_variance", ("mdp.gamma=1.5",), ("mdp.gamma", "1.5", "[0, 1]")),
        ("estimator_variance", ("mdp.slip=2",), ("mdp.slip", "2")),
        ("estimator_variance", ("mdp=garnet", "mdp.n_states=0"), ("mdp.n_states", "0")),
        ("estimator_variance", ("mdp.name=chian",), ("mdp.name", "chian", "did you mean 'chain'")),
        ("estimator_variance", ("estimator=reinforse",), ("reinforse", "did you mean 'reinforce'")),
        ("estimator_variance", ("n_trajectories=[10,-1]",), ("n_trajectories[1]", "-1")),
        ("estimator_variance", ("n_trajectories=[]",), ("n_trajectories", "at least one")),
        ("estimator_variance", ("n_repetitions=1",), ("n_repetitions", ">= 2", "1")),
        ("estimator_variance", ("confidence=1",), ("confidence", "(0, 1)")),
        ("estimator_variance", ("policy.kind=greedy",), ("policy.kind", "greedy")),
        ("estimator_variance", ("policy.scale=-1",), ("policy.scale", "-1")),
        ("calibration", ("n_studies=0",), ("n_studies", "0")),
        ("calibration", ("n_trajectories=2.5",), ("n_trajectories", "2.5")),
        ("tabular_ascent", ("step_size=nan",), ("step_size", "nan")),
        ("tabular_ascent", ("step_size=0",), ("step_size", "> 0")),
        ("tabular_ascent", ("gradient=reinforse",), ("gradient", "did you mean 'reinforce'")),
        ("tabular_ascent", ("n_iterations=0",), ("n_iterations", "0")),
        ("tabular_ascent", ("collapse_window=1.5",), ("collapse_window", "1.5")),
        ("cartpole", ("step_size=1e39",), ("step_size", "1e+39", "3.40282e+38")),
        (
            "cartpole",
            ("step_size=1e38", "optimizer=adam"),
            ("step_size", "1e+38", "optimizer=adam"),
        ),
        ("cartpole", ("step_size=-1",), ("step_size", "-1")),
        (
            "cartpole",
            ("env_id=CartPol-v1",),
            ("env_id", "CartPol-v1", "did you mean 'CartPole-v1'"),
        ),
        ("cartpole", ("estimator=baseline_value",), ("baseline_value", "tabular")),
        ("cartpole", ("optimizer=lbfgs",), ("optimizer", "lbfgs", "sgd")),
        ("cartpole", ("momentum=1",), ("momentum", "[0, 1)")),
        ("cartpole", ("budget.iterations=0",), ("budget.iterations", "0")),
        ("cartpole", ("budget.env_steps=1.5",), ("budget.env_steps", "1.5")),
        (
            "cartpole",
            ("budget.iterations=null", "budget.env_steps=null"),
            ("budget.iterations", "budget.env_steps", "at least one"),
        ),
        ("cartpole", ("max_episode_steps=0",), ("max_episode_steps", "0")),
        ("cartpole", ("policy.hidden_sizes=[64,0]",), ("policy.hidden_sizes[1]", "0")),
        ("cartpole", ("policy.activation=sigmoid",), ("policy.activation", "sigmoid")),
        ("cartpole", ("collapse.window_episodes=0",), ("collapse.window_episodes", "0")),
        ("cartpole", ("collapse.entropy_threshold=-1",), ("collapse.entropy_threshold", "-1")),
        ("cartpole", ("collapse.drop_fraction=0",), ("collapse.drop_fraction", "(0, 1]")),
        ("cartpole", ("gradient_quality.checkpoints=[0,-1]",), ("checkpoints[1]", "-1")),
        (
            "cartpole",
            ("gradient_quality.enabled=true", "gradient_quality.checkpoints=[0,101]"),
            ("gradient_quality.checkpoints[1]=101", "budget.iterations=100"),
        ),
        ("cartpole", ("gradient_quality.reference_episodes=1",), ("reference_episodes", ">= 2")),
        (
            "cartpole",
            ("gradient_quality.reference_estimator=normalized",),
            ("gradient_quality.reference_estimator", "normalized"),
        ),
        ("cartpole", ("gradient_quality.batch_sizes=[1,0]",), ("batch_sizes[1]", "0")),
        ("cartpole", ("gradient_quality.n_batches=0",), ("gradient_quality.n_batches", "0")),
    ],
)
def test_bad_values_name_key_value_and_rule(app, overrides, parts):
    with pytest.raises(ConfigError) as error:
        validate(app, *overrides)
    assert_one_line(error, *parts)


def test_settings_are_plain_typed_values():
    settings = validate(
        "cartpole",
        "step_size=1",
        "policy.hidden_sizes=[8]",
        "collapse.min_peak=inf",
        "budget.iterations=null",
        "budget.env_steps=1000",
    )
    assert settings.step_size == 1.0 and isinstance(settings.step_size, float)
    assert settings.policy.hidden_sizes == (8,)
    assert settings.collapse.min_peak == math.inf
    assert (settings.budget.iterations, settings.budget.env_steps) == (None, 1000)
    assert not any(isinstance(v, DictConfig | ListConfig) for v in vars(settings).values())
    study = validate("estimator_variance", "estimator=reinforce", "n_trajectories=7")
    assert study.estimator == ("reinforce",) and study.n_trajectories == (7,)
    assert validate("estimator_variance").estimator == validate("calibration").estimator


def test_step_size_up_to_float32_max_is_accepted():
    assert validate("cartpole", f"step_size={FLOAT32_MAX!r}").step_size == FLOAT32_MAX


def test_mdp_is_built_once_by_the_settings():
    settings = validate("estimator_variance", "mdp=file", f"mdp.path={TWO_STATE_YAML}")
    assert settings.mdp.name == "file" and settings.mdp.built.n_states == 2


def test_env_slug_resolver_names_output_dirs_after_the_env():
    assert composed("cartpole").task_name == "cartpole"
    assert composed("cartpole", "env_id=Acrobot-v1").task_name == "acrobot"


# ---------------------------------------------------------------------------------------
# Pre-flight: structure of the command line
# ---------------------------------------------------------------------------------------
def preflight_error(app: str, *argv: str) -> str:
    with pytest.raises(ConfigError) as error:
        cli.check_command_line(app, config.VALIDATORS[app][1], list(argv))
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("app", "argv", "parts"),
    [
        ("cartpole", ["n_trajectorie=10"], ["'n_trajectorie'", "did you mean 'n_trajectories'"]),
        ("cartpole", ["-m", "n_trajectorie=1,2"], ["'n_trajectorie'", "'n_trajectories'"]),
        ("cartpole", ["budget.env_step=10"], ["'budget.env_step'", "'budget.env_steps'"]),
        ("cartpole", ["-m", "experiment=cartpole_smal"], ["cartpole_smal", "'cartpole_small'"]),
        ("cartpole", ["mdp=chain"], ["no config group 'mdp'"]),
        ("cartpole", ["-m", "experiment=calibration"], ["experiment=calibration", "'mdp'"]),
        ("estimator_variance", ["mdp=chian"], ["chian", "did you mean 'chain'"]),
        ("estimator_variance", ["-m", "mdp=chain,chian"], ["chian", "'chain'"]),
        ("estimator_variance", ["mdp.horizn=3"], ["'mdp.horizn'", "'mdp.horizon'"]),
        ("estimator_variance", ["mdp=garnet", "mdp.branchin=2"], ["mdp=garnet", "'mdp.branching'"]),
        ("tabular_ascent", ["hydra/launcher=jobllib"], ["jobllib", "did you mean 'joblib'"]),
        ("tabular_ascent", ["seed=1,2"], ["seed=1,2", "-m"]),
    ],
)
def test_preflight_names_unknown_keys_and_options(app, argv, parts):
    message = preflight_error(app, *argv)
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--cfg", "job", "n_trajectorie=1"],
        ["+note=hello"],
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra.job.chdir=true"],
        ["-m", "experiment=cartpole_grid", "hydra/launcher=joblib"],
        ["-m", "seed=0,1", "step_size=1e39"],  # values of a multirun: each job checks its own
    ],
)
def test_preflight_leaves_the_rest_to_hydra_and_the_jobs(argv):
    cli.check_command_line("cartpole", config.validate_cartpole, argv)  # no error


def test_preflight_of_a_single_run_returns_its_settings():
    settings = cli.check_command_line(
        "cartpole", config.validate_cartpole, ["n_trajectories=3", "+note=x"]
    )
    assert settings.n_trajectories == 3


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``python experiments/<app>.py ...`` command of the README, docs/, Makefile,
    conf/ and the apps' docstrings, as (app, argv)."""
    sources = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md"))]
    sources += sorted(CONF.glob("*.yaml")) + sorted((CONF / "experiment").glob("*.yaml"))
    sources += sorted((REPO / "experiments").glob("*.py"))
    commands = []
    for source in sources:
        text = source.read_text().replace("\\\n", " ")
        for app, rest in re.findall(r"python experiments/([a-z_]+)\.py([^\n`#]*)", text):
            argv = [a for a in shlex.split(rest.replace("$", "")) if a != "<partition>"]
            commands.append((app, [a for a in argv if not a.endswith("=<partition>")]))
    return commands


def test_every_documented_command_passes_preflight():
    """The README's commands keep working: pre-flight refuses none of them."""
    commands = documented_commands()
    assert len(commands) >= 15
    for app, argv in commands:
        cli.check_command_line(app, config.VALIDATORS[app][1], argv)
