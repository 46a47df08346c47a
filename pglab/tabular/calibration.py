"""Calibration of the estimator study's verdicts: re-run a study cell many times, keep each verdict.

One *study cell* is what the estimator study computes for one (MDP, policy, N): ``K``
batch estimates ``ghat_N`` of every estimator on shared trajectories
(:func:`pglab.tabular.estimates.batch_estimates`) and their metrics against the exact gradient
(:func:`pglab.stats.gradient_estimate_metrics`): a p-value for ``H0: E ghat_N = grad J``
and a confidence interval of ``||E ghat_N - grad J|| / ||grad J||``. Repeating the cell
with independent seeds and comparing each verdict with the truth theory gives
(:func:`pglab.estimators.known_relative_bias`) measures the verdicts' error rates:

* size = P(reject | unbiased), power = P(reject | biased),
* coverage = P(interval contains the true relative bias),

each a binomial proportion over ``n_studies`` repetitions, with Monte-Carlo standard
error ``sqrt(p (1 - p) / n)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pglab import estimators, stats
from pglab.tabular import estimates
from pglab.tabular.mdp import TabularMDP

__all__ = ["VERDICT_KEYS", "study_seed", "study_verdicts"]

#: Keys of :func:`pglab.stats.gradient_estimate_metrics` kept per study: the verdicts and
#: what they rest on.
VERDICT_KEYS = (
    "p_value",
    "relative_bias",
    "relative_bias_ci_low",
    "relative_bias_ci_high",
    "effective_batches",
    "test_statistic",
)


def study_seed(seed: int, n_trajectories: int, study: int) -> int:
    """Seed of one study cell: 63 bits of ``numpy.random.SeedSequence([seed, N, study])``."""
    state = np.random.SeedSequence([seed, n_trajectories, study]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def study_verdicts(
    mdp: TabularMDP,
    logits: Any,
    true_gradient: Any,
    n_trajectories: int,
    study: int,
    names: Sequence[str],
    n_repetitions: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    n_resamples: int = 2000,
) -> Iterator[dict[str, Any]]:
    """The verdicts of study cell number ``study`` at batch size ``N``, one dict per estimator.

    Args:
        mdp, logits: the MDP and the ``[S, A]`` softmax logits ``theta``.
        true_gradient: ``[S * A]`` exact ``grad J(theta)`` (:func:`pglab.tabular.exact.solve`).
        n_trajectories: ``N``. study: index of the repetition (seeds it).
        names: estimators (:data:`pglab.estimators.ESTIMATORS`).
        n_repetitions: ``K`` batches per cell. seed: the calibration's base seed.
        confidence, n_resamples: passed to :func:`pglab.stats.gradient_estimate_metrics`.

    Yields:
        ``{"estimator", "n_trajectories", "study", "known_relative_bias", *VERDICT_KEYS}``.
        Trajectories and the bootstrap are both seeded by
        :func:`study_seed` ``(seed, N, study)``, so a row does not depend on the grid.
    """
    cell_seed = study_seed(seed, n_trajectories, study)
    batches = estimates.batch_estimates(
        mdp, logits, n_trajectories, n_repetitions, names, seed=cell_seed
    )
    for name in names:
        metrics = stats.gradient_estimate_metrics(
            batches[name].reshape(n_repetitions, -1),
            true_gradient,
            confidence=confidence,
            seed=cell_seed,
            n_resamples=n_resamples,
            constant=estimators.is_constant(name, n_trajectories),
        )
        yield {
            "estimator": name,
            "n_trajectories": n_trajectories,
            "study": study,
            "known_relative_bias": estimators.known_relative_bias(name, n_trajectories, mdp.gamma),
            **{key: metrics[key] for key in VERDICT_KEYS},
        }
