"""pglab: measure, rather than assume, what policy-gradient theory says.

The ``pglab`` package holds the mathematics only. It imports neither Hydra nor W&B and
writes no result files; ``experiments/`` wires it to configs and trackers, and
``analysis/`` reads what the experiments stored. Its folders are its two worlds:

==========================  ==============================================================
``pglab.tabular``           finite MDPs with an exact oracle: ``mdp``, ``zoo``, ``exact``,
                            ``policy``, ``sampling``, ``estimates``, ``ascent``,
                            ``calibration``
``pglab.gym``               discrete-action gymnasium envs: ``policies``, ``rollouts``,
                            ``gradients``, ``training``, ``gradient_quality``
shared                      ``estimators`` (the weights Psi of every estimator), ``stats``
                            (bias, variance, the unbiasedness test), ``collapse`` (the
                            detector), ``result`` (a run's outcome), ``checks`` (input
                            checks), ``threads`` (numbers independent of the thread
                            count), ``schema`` (the stored tables, dependency-free)
==========================  ==============================================================

The main entry points are importable from here (``pglab.train``, ``pglab.solve``, ...);
they load on first use, so ``import pglab.schema`` stays free of torch and gymnasium.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; loaded on first attribute access (PEP 562).
_ENTRY_POINTS = {
    # tabular world
    "TabularMDP": "pglab.tabular.mdp",
    "make_mdp": "pglab.tabular.zoo",
    "solve": "pglab.tabular.exact",
    "sample_gradients": "pglab.tabular.estimates",
    "batch_estimates": "pglab.tabular.estimates",
    "tabular_ascent": "pglab.tabular.ascent",
    # gymnasium world
    "make_policy": "pglab.gym.policies",
    "RolloutCollector": "pglab.gym.rollouts",
    "TrainConfig": "pglab.gym.training",
    "train": "pglab.gym.training",
    # shared
    "ESTIMATORS": "pglab.estimators",
    "gradient_estimate_metrics": "pglab.stats",
    "CollapseConfig": "pglab.collapse",
    "CollapseDetector": "pglab.collapse",
    "TrainResult": "pglab.result",
}
_ALIASES = {"make_mdp": "make"}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pglab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
