"""Pre-flight: catch a bad command line in one line, before Hydra creates anything.

Each app calls :func:`preflight` from ``if __name__ == "__main__":`` before its
``@hydra.main`` function; the CLI keys and Hydra's own behaviour are unchanged. It reads
the command line with Hydra's own argument parser and composes the config with Hydra's
compose API (same config directory, same overrides), then:

1. **Structure** (every run and every multirun): an override of a key the config does not
   have (``n_trajectorie=10``, ``mdp.horizn=3``), an option a config group does not have
   (``experiment=cartpole_smal``, ``mdp=chian``, one value of a sweep ``mdp=chain,chian``),
   a group the app does not use (``mdp=chain`` for cartpole.py) or a preset whose sweep
   names such a key: one line with a did-you-mean on stderr, exit status 2. Hydra would
   print 5-12 lines, and an optional group used to run the defaults on a misspelled preset.
2. **Values, single run** (no ``-m``): the composed config goes through the app's
   ``validate`` (:mod:`pglab_jobs.config`); a :class:`~pglab.checks.ConfigError` prints
   one line naming key, value and rule and exits 2. No output directory is created: Hydra
   has not started yet. A comma list without ``-m`` (``seed=1,2``) gets the same treatment.
3. **Values, multirun**: not checked here. Each job checks its own values in ``run_job``
   (the same ``validate``), so a bad value fails that job only, the sweep goes on and the
   end-of-sweep summary counts it. Validating every combination up front was rejected:
   a sweep's jobs are only known to its sweeper (``hydra.sweeper.params`` in presets,
   range/glob sweeps, other sweeper plugins), a 150-job grid would be composed 150 times
   before the first job starts, and a sweep of, say, step sizes where one value is out of
   range should still run the others and report the bad one, as any other failed job.
   A bad value of a key that is not swept fails every job the same way, each at once and
   before any work (nothing but the job's status file is written).

What pre-flight does not understand it leaves to Hydra: ``--help``, ``--hydra-help``,
``--cfg``, ``--info``, ``--shell-completion``, ``--config-path``/``--config-dir``,
``--experimental-rerun``, override syntax errors, ``hydra.*`` keys, ``+key=value`` /
``++key=value`` / ``~key`` overrides (their keys are new by intent) and any composition
error it cannot name in one line. Those run exactly as without pre-flight.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pglab.checks import ConfigError, did_you_mean

#: The apps' config directory in a checkout (experiments/pglab_jobs/cli.py -> conf/).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Exit status of a command-line error (argparse's).
EXIT_USAGE = 2
#: At most this many group combinations of a multirun are composed for the structure check.
MAX_COMPOSITIONS = 64

_PASS_THROUGH_FLAGS = (
    "help",
    "hydra_help",
    "cfg",
    "info",
    "shell_completion",
    "config_path",
    "config_dir",
    "experimental_rerun",
)


def preflight(
    config_name: str,
    validate: Callable[[DictConfig], Any],
    argv: list[str] | None = None,
) -> None:
    """Check the command line ``argv`` (default ``sys.argv[1:]``) of the app whose primary
    config is ``conf/<config_name>.yaml``; print one line and exit 2 on an error, return
    otherwise (then Hydra runs as usual).

    The config directory is the one ``@hydra.main(config_path="../conf")`` reads: ``conf/``
    beside the running app's folder (:data:`CONFIG_DIR` if there is none).
    """
    script_conf = Path(sys.argv[0]).resolve().parent.parent / "conf"
    config_dir = script_conf if script_conf.is_dir() else CONFIG_DIR
    try:
        check_command_line(
            config_name, validate, sys.argv[1:] if argv is None else argv, config_dir
        )
    except ConfigError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def check_command_line(
    config_name: str,
    validate: Callable[[DictConfig], Any],
    argv: list[str],
    config_dir: Path = CONFIG_DIR,
) -> Any:
    """The checks of :func:`preflight`, raising :class:`ConfigError`.

    Returns the validated settings of a single run, ``None`` when the values are left to
    the jobs (a multirun) or the command line is left to Hydra.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = get_args_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return None  # Hydra prints its own usage error
    if any(getattr(args, flag, None) for flag in _PASS_THROUGH_FLAGS):
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return None  # a syntax error: Hydra's message points at the character
    checker = _Checker(config_dir, args.config_name or config_name, overrides)
    return checker.run(validate, args.multirun)


class _Checker:
    def __init__(self, config_dir: Path, config_name: str, overrides: list) -> None:
        self.config_dir = config_dir
        self.config_name = config_name
        self.overrides = overrides

    def run(self, validate: Callable[[DictConfig], Any], multirun: bool) -> Any:
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        with initialize_config_dir(config_dir=str(self.config_dir), version_base="1.3"):
            self.loader = GlobalHydra.instance().config_loader()
            base = self._compose([], hydra=True)
            if base is None:
                return None
            self.choices = dict(base.hydra.runtime.choices)
            group_overrides = [o for o in self.overrides if self._is_group(o)]
            key_overrides = [o for o in self.overrides if not self._is_group(o)]
            for override in group_overrides:
                self._check_group_override(override)
            if not multirun:
                for override in self.overrides:
                    if override.is_sweep_override():
                        raise ConfigError(
                            f"{override.input_line} lists several values: add -m (--multirun) "
                            f"to sweep over them, or write {override.get_key_element()}=[...] "
                            "for one list value"
                        )
            for combination in self._group_combinations(group_overrides):
                composed = self._compose(combination, hydra=True)
                if composed is None:
                    return None  # Hydra will say why
                for override in key_overrides:
                    self._check_key_override(override, composed)
                if multirun:
                    self._check_preset_sweep(composed)
            if multirun:
                return None
            cfg = self._compose([o.input_line for o in self.overrides], hydra=False)
            if cfg is None:
                return None
            return validate(cfg)

    # -- composing -------------------------------------------------------------------
    def _compose(self, overrides: list[str], *, hydra: bool) -> DictConfig | None:
        from hydra import compose
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return compose(self.config_name, overrides=overrides, return_hydra_config=hydra)
        except (HydraException, OmegaConfBaseException):
            return None

    def _group_combinations(self, group_overrides: list) -> Iterable[list[str]]:
        choices = []
        for override in group_overrides:
            values = self._values(override)
            element = override.get_key_element()
            choices.append([f"{element}={value}" for value in values] or [override.input_line])
        combinations = itertools.product(*choices)
        return [list(c) for c in itertools.islice(combinations, MAX_COMPOSITIONS)]

    # -- groups ----------------------------------------------------------------------
    def _is_group(self, override) -> bool:
        name = override.key_or_group
        parent, _, child = name.rpartition("/")
        return child in self.loader.list_groups(parent)

    @staticmethod
    def _values(override) -> list[str]:
        if override.is_sweep_override():
            try:
                return list(override.sweep_string_iterator())
            except Exception:  # a glob or other sweep over options: the sweeper expands it
                return []
        value = override.value()
        return [] if value is None else [str(value)]

    def _check_group_override(self, override) -> None:
        group = override.key_or_group
        if not (override.is_add() or override.is_force_add() or override.is_delete()):
            if group not in self.choices:
                known = sorted(g for g in self.choices if not g.startswith("hydra"))
                raise ConfigError(
                    f"{override.input_line}: this app has no config group {group!r}"
                    f"{did_you_mean(group, known)}; its groups: {', '.join(known)}"
                )
        if override.is_delete():
            return
        options = self.loader.get_group_options(group)
        for value in self._values(override):
            if value not in options:
                raise ConfigError(
                    f"unknown {group} option {value!r} in {override.input_line}"
                    f"{did_you_mean(value, options)}; choose one of: {', '.join(options)}"
                )

    # -- keys ------------------------------------------------------------------------
    def _check_key_override(self, override, composed: DictConfig) -> None:
        if override.is_add() or override.is_force_add() or override.is_delete():
            return  # a new key (or a removal) by intent
        if override.package is not None:
            return
        self._check_key(override.key_or_group, override.input_line, composed)

    def _check_key(self, key: str, line: str, composed: DictConfig) -> None:
        if key == "hydra" or key.startswith("hydra."):
            return  # Hydra's own settings: Hydra checks them
        if _has_key(composed, key):
            return
        known = [k for k in _flat_keys(composed) if not k.startswith("hydra")]
        parent = key.rpartition(".")[0]
        choices = composed.hydra.runtime.choices
        if parent and parent in choices:
            where = f" of {parent}={choices[parent]}"
        else:
            where = ""
        raise ConfigError(f"unknown key {key!r}{where} in {line}{did_you_mean(key, known)}")

    def _check_preset_sweep(self, composed: DictConfig) -> None:
        """A preset's ``hydra.sweeper.params`` must name this app's groups and keys."""
        params = OmegaConf.select(composed, "hydra.sweeper.params", default=None)
        if not params:
            return
        preset = composed.hydra.runtime.choices.get("experiment")
        for name in params:
            line = f"hydra.sweeper.params.{name} of experiment={preset}"
            parent, _, child = str(name).rpartition("/")
            if child in self.loader.list_groups(parent):
                if name not in self.choices:
                    raise ConfigError(
                        f"{line}: sweeps config group {name!r}, which this app does not use; "
                        "is the preset meant for another app?"
                    )
            else:
                self._check_key(str(name), line, composed)


def _has_key(cfg: Any, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, DictConfig):
            if part not in node.keys():
                return False
            node = node._get_node(part)
        elif isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                return False
            node = node._get_node(int(part))
        else:
            return False
    return True


def _flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for name in cfg.keys():
            dotted = f"{prefix}{name}"
            keys.append(dotted)
            child = cfg._get_node(name)
            if isinstance(child, DictConfig) and not child._is_missing():
                keys.extend(_flat_keys(child, f"{dotted}."))
    return keys
