"""Config → tabular objects, shared by the tabular apps (estimator study, tabular ascent)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from pglab import estimators
from pglab.tabular import policy as tabular_policy
from pglab.tabular import zoo
from pglab.tabular.mdp import TabularMDP
from pglab_jobs.validate import as_list, choice

POLICY_KINDS = ("random", "uniform", "near_deterministic")


def build_mdp(mdp_cfg: DictConfig) -> TabularMDP:
    """``zoo.make(mdp.name, **the other mdp keys)``; the zoo validates the MDP."""
    params = OmegaConf.to_container(mdp_cfg, resolve=True)
    name = params.pop("name")
    return zoo.make(name, **params)


def build_logits(policy_cfg: DictConfig, mdp: TabularMDP) -> torch.Tensor:
    """Initial softmax logits θ [S, A] from ``policy.kind``, ``policy.scale``, ``policy.seed``."""
    choice("policy.kind", policy_cfg.kind, POLICY_KINDS)
    return tabular_policy.initial_logits(
        mdp.n_states,
        mdp.n_actions,
        kind=policy_cfg.kind,
        scale=float(policy_cfg.scale),
        seed=int(policy_cfg.seed),
    )


def selected_estimators(value) -> list[str]:
    """``estimator`` config value (``all``, a name or a list) → validated estimator names."""
    names = list(estimators.ESTIMATORS) if value == "all" else as_list(value)
    for name in names:
        estimators.check_estimator(name)
    return names
