"""Typed settings → tabular objects, shared by the tabular apps (estimator study, calibration,
tabular ascent). The settings are checked already (:mod:`pglab_jobs.config`)."""

from __future__ import annotations

import torch

from pglab.tabular import policy as tabular_policy
from pglab.tabular.mdp import TabularMDP
from pglab_jobs.config import LogitsSettings


def build_logits(policy: LogitsSettings, mdp: TabularMDP) -> torch.Tensor:
    """Initial softmax logits θ [S, A] from ``policy.kind``, ``policy.scale``, ``policy.seed``."""
    return tabular_policy.initial_logits(
        mdp.n_states, mdp.n_actions, kind=policy.kind, scale=policy.scale, seed=policy.seed
    )
