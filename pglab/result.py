"""The outcome of one training run, in either world (gymnasium env or tabular MDP).

:func:`pglab.gym.training.train` and :func:`pglab.tabular.ascent.tabular_ascent` both
return a :class:`TrainResult`; its :meth:`TrainResult.summary` is the one-row summary
every experiment stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from pglab.collapse import CollapseStatus


@dataclass
class TrainResult:
    """Outcome of a run.

    Attributes:
        history: one metrics dict per iteration (see :func:`pglab.gym.training.train` for the keys).
        status: ``"complete"`` (budget used up or stopped on collapse) or ``"diverged"``
            (a non-finite loss, gradient or parameter ended the run).
        collapse: the collapse detector's status at the end of the run.
        final_params: ``{name: tensor}`` detached CPU copies of the final parameters
            (non-finite values possible when the parameters themselves diverged).
        return_key: the history key holding the per-iteration return
            (``"return_mean"`` for :func:`pglab.gym.training.train`, ``"expected_return"`` for :func:`pglab.tabular.ascent.tabular_ascent`).
    """

    history: list[dict[str, Any]]
    status: str
    collapse: CollapseStatus
    final_params: dict[str, Tensor] = field(default_factory=dict)
    return_key: str = "return_mean"

    def summary(self) -> dict[str, Any]:
        """Scalars describing the run.

        * ``final_return``: mean of the per-iteration return over the last min(10, K)
          iterations (K = number of iterations).
        * ``auc``: mean of the per-iteration return over all K iterations, i.e. the area
          under the learning curve (iteration axis) divided by K; comparable across runs
          with the same K.
        * ``best_return``: max per-iteration return.
        * ``collapsed``: the detector's verdict at the END of the run: stuck over the
          last window, or diverged (see :mod:`pglab.collapse`). A run that was stuck and
          climbed out is not collapsed.
        * ``collapse_iteration``: onset of the collapse the run ends in (``None`` if not
          collapsed); ``collapse_reason``: ``"stuck"``, ``"non_finite"`` or ``None``.
        * ``first_collapse_iteration``: onset of the first stuck stretch, even if the run
          later recovered (``None`` if never stuck).
        * ``stuck_fraction``: fraction of the K iterations whose status was collapsed.
        * ``dips``: recovered drops (windowed return below half its windowed peak, then
          back above it); ``dropped_at_end``: inside such a drop at the end.
        * ``diverged`` (status == "diverged"), ``iterations`` (K), ``env_steps`` (last
          cumulative value, if recorded).

        Return statistics are NaN for an empty history.
        """
        returns = [float(h[self.return_key]) for h in self.history]
        nan = math.nan
        return {
            "final_return": sum(returns[-10:]) / len(returns[-10:]) if returns else nan,
            "auc": sum(returns) / len(returns) if returns else nan,
            "best_return": max(returns) if returns else nan,
            "collapsed": self.collapse.collapsed,
            "collapse_iteration": self.collapse.iteration,
            "collapse_reason": self.collapse.reason,
            "first_collapse_iteration": self.collapse.first_onset,
            "stuck_fraction": (
                self.collapse.stuck_iterations / len(self.history) if self.history else nan
            ),
            "dips": self.collapse.dips,
            "dropped_at_end": self.collapse.dropped,
            "diverged": self.status == "diverged",
            "iterations": len(self.history),
            "env_steps": self.history[-1].get("env_steps") if self.history else 0,
        }
