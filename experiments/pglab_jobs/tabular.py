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


def build_parameters(policy: LogitsSettings, mdp: TabularMDP) -> torch.Tensor:
    """The ascent's initial parameters: :func:`build_logits` ``[S, A]``, or for an MDP with
    features ``[S, A, d]`` (``mdp.features``) θ_0 ``[d]`` drawn the same way (as one row
    of ``d``: uniform 0, random scale·N(0,1), near_deterministic scale at one drawn
    coordinate). The estimator studies always use the tabular logits."""
    if mdp.features is None:
        return build_logits(policy, mdp)
    d = int(mdp.features.shape[2])
    return tabular_policy.initial_logits(
        1, d, kind=policy.kind, scale=policy.scale, seed=policy.seed
    ).reshape(d)
