"""What a job's W&B run is called: its group (the sweep), its short name and its tags.

===========  ===========================================================================
group        the sweep: ``sweep_name`` when one is given; for the default sweep
             (``sweep_name=default``, which every ad-hoc multirun of an app shares) a
             readable id unique to the sweep directory, ``<task>-default-<UTC start>``,
             e.g. ``cartpole-default-20261202-041503``, recorded in
             ``<sweep_dir>/.pglab-wandb-group`` (:data:`GROUP_FILE`) by the first job so
             every job of the sweep, and a re-run of it, shares it. Single runs: no group.
name         short and per app, e.g. ``N=10 α=1e-3 seed=0`` (CartPole, update=pg),
             ``trpo N=10 δ=0.01 seed=0``, ``chain seed=0`` (estimator study), followed by
             every other override of the job (``estimator=reinforce``; a path override
             by its file name), so names differ within a sweep.
tags         the experiment, ``logger.tags``, then each override (``n_trajectories=10``),
             cut to W&B's 64 characters.
config       the resolved config plus ``pglab.job`` (the job directory's name, the full
             override string) and ``pglab.overrides`` (the override list).
===========  ===========================================================================
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pglab.schema import NON_SEMANTIC_KEYS

#: Where a default sweep records its W&B group (read back by analysis.report's --wandb).
GROUP_FILE = ".pglab-wandb-group"
DEFAULT_SWEEP = "default"
MAX_TAG = 64  # W&B refuses longer tags
MAX_VALUE = 24  # characters of an override value kept in a run name
#: The symbol of ``step_size`` under each update rule (as in the progress bar).
STEP_SYMBOL = {"pg": "α", "npg": "η", "trpo": "δ", "ppo": "lr"}


def short_value(value: Any) -> str:
    """``0.001`` -> ``1e-3``, ``0.05`` -> ``0.05``, ``/x/y.yaml`` -> ``y.yaml``, lists joined."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{float(mantissa):g}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(short_value(v) for v in value)
    text = str(value)
    if "/" in text:
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _parse(override: str) -> tuple[str, str] | None:
    """``"+a.b=1"`` -> ``("a.b", "1")``; deletions and Hydra's own groups -> ``None``."""
    if "=" not in override or override.startswith("~"):
        return None
    key, value = override.lstrip("+").split("=", 1)
    if key.startswith("hydra") or key == "experiment":
        return None
    if key.split(".")[0].split("/")[0] in NON_SEMANTIC_KEYS:
        return None
    return key, value


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _core(experiment: str, config: dict[str, Any]) -> tuple[list[str], set[str]]:
    """The app's own name parts and the config keys they already show."""
    seed = f"seed={config.get('seed')}"
    if experiment == "cartpole":
        rule = str(_get(config, "update.name") or "pg")
        symbol = STEP_SYMBOL.get(rule, "step")
        parts = [] if rule == "pg" else [rule]
        parts += [
            f"N={config.get('n_trajectories')}",
            f"{symbol}={short_value(config.get('step_size'))}",
            seed,
        ]
        return parts, {"n_trajectories", "step_size", "seed", "update", "update.name"}
    if experiment == "tabular_ascent":
        rule = str(_get(config, "update.name") or "pg")
        gradient = str(config.get("gradient"))
        parts = [str(_get(config, "mdp.name")), gradient]
        parts += [] if rule == "pg" else [rule]
        if gradient != "exact":
            parts.append(f"N={config.get('n_trajectories')}")
        parts += [f"{STEP_SYMBOL.get(rule, 'step')}={short_value(config.get('step_size'))}"]
        parts += [] if gradient == "exact" else [seed]
        return parts, {"mdp", "gradient", "update", "n_trajectories", "step_size", "seed"}
    if experiment in ("estimator_variance", "calibration"):
        return [str(_get(config, "mdp.name")), seed], {"mdp", "mdp.name", "seed"}
    return [seed], {"seed"}


def run_name(experiment: str, config: dict[str, Any], overrides: list[str]) -> str:
    """The run's short name (module table): the app's parts, then the other overrides."""
    parts, shown = _core(experiment, config)
    for override in overrides:
        parsed = _parse(override)
        if parsed is None or parsed[0] in shown:
            continue
        key, value = parsed
        parts.append(f"{key.rsplit('.', 1)[-1]}={short_value(_number(value))}")
    return " ".join(parts)


def run_tags(experiment: str, tags: list[str], overrides: list[str]) -> list[str]:
    """The experiment, ``logger.tags``, then each override, unique, each <= 64 characters."""
    out = [experiment, *map(str, tags), *overrides]
    return list(dict.fromkeys(t if len(t) <= MAX_TAG else t[: MAX_TAG - 1] + "…" for t in out))


def run_config(config: dict[str, Any], job: str, overrides: list[str]) -> dict[str, Any]:
    """The config W&B records: the resolved config plus the job's full overrides."""
    return {**config, "pglab": {"job": job, "overrides": list(overrides)}}


def sweep_group(sweep_name: str | None, sweep_dir: str | os.PathLike | None) -> str | None:
    """The W&B group of a job (module table); ``None`` for a single run."""
    if sweep_dir is None:
        return None
    if sweep_name and sweep_name != DEFAULT_SWEEP:
        return str(sweep_name)
    sweep_dir = Path(sweep_dir)
    record = sweep_dir / GROUP_FILE
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    group = f"{sweep_dir.parent.name}-{sweep_dir.name}-{stamp}"
    # The first job of the sweep writes it (complete, then linked into place: a job
    # reading it never sees it half written); every other job, and a re-run, reads it.
    draft = sweep_dir / f"{GROUP_FILE}.{os.getpid()}"
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        draft.write_text(group + "\n", encoding="utf-8")
        os.link(draft, record)
        return group
    except FileExistsError:
        pass
    except OSError:
        return group
    finally:
        draft.unlink(missing_ok=True)
    try:
        recorded = record.read_text(encoding="utf-8").strip()
    except OSError:
        return group
    return recorded or group
