"""Verdict calibration: how often the estimator study's verdicts are wrong, measured.

The estimator study (``experiments/estimator_variance.py``) gives, per (MDP, estimator,
N), a p-value for H0: E ĝ_N = ∇J and a confidence interval of the relative bias
‖E ĝ_N − ∇J‖/‖∇J‖ (``pglab.stats.gradient_estimate_metrics``). Both rest on
approximations (a bootstrap-t calibration, an effective-sample-size gate), so this app
re-runs the same study cell ``n_studies`` times with independent seeds, at the study's own
defaults (K batches, bootstrap resamples, confidence), and stores every verdict. Where
theory gives the truth (``pglab.estimators.known_relative_bias``: 0 for unbiased
estimators, exactly 1/N for ``baseline_batch_mean``), the report turns the rows into

* the test's **size**: how often an unbiased estimator is rejected (should be ≤ the level);
* its **power**: how often a biased estimator is rejected;
* the interval's **coverage** of the true relative bias (should be ≈ the confidence);
* how often the data could not decide ("insufficient data"),

each with its Monte-Carlo standard error. The flagship calibration sweeps every zoo MDP:

    python experiments/calibration.py -m experiment=calibration hydra/launcher=joblib

Writes ``<run_dir>/calibration.parquet``: one row per (estimator, N, study).
"""

from __future__ import annotations

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from pglab_jobs.cli import preflight
from pglab_jobs.config import CalibrationSettings, validate_calibration
from pglab_jobs.job import JobContext, JobOutput, run_job
from pglab_jobs.tabular import build_logits

from pglab.tabular import calibration, exact


def calibrate(ctx: JobContext) -> JobOutput:
    settings: CalibrationSettings = ctx.settings  # checked by validate_calibration
    names = list(settings.estimator)
    batch_sizes = sorted(settings.n_trajectories)
    n_repetitions = settings.n_repetitions
    n_studies = settings.n_studies
    n_resamples = settings.n_resamples
    seed = settings.seed
    mdp = settings.mdp.built
    logits = build_logits(settings.policy, mdp)
    true_gradient = exact.solve(mdp, logits).gradient.flatten()

    rows = []
    with ctx.progress(len(batch_sizes) * n_studies, f"{mdp.name}: calibration") as bar:
        for n in batch_sizes:
            for study in range(n_studies):
                rows.extend(
                    {"mdp": mdp.name, **row}
                    for row in calibration.study_verdicts(
                        mdp,
                        logits,
                        true_gradient,
                        n,
                        study,
                        names,
                        n_repetitions=n_repetitions,
                        seed=seed,
                        confidence=settings.confidence,
                        n_resamples=n_resamples,
                    )
                )
                bar.update(1, postfix=f"N={n}")

    table = pd.DataFrame(rows)
    table["seed"] = seed
    table["gamma"] = mdp.gamma
    table["n_repetitions"] = n_repetitions
    table["confidence"] = settings.confidence
    level = 1.0 - settings.confidence
    unbiased = table[table["known_relative_bias"] == 0.0]
    decided = unbiased[unbiased["p_value"].notna()]
    summary = {
        "n_rows": len(table),
        "size_overall": float((decided["p_value"] < level).mean()) if len(decided) else np.nan,
        "decided_fraction": float(table["p_value"].notna().mean()),
    }
    return JobOutput(tables={"calibration": table}, summary=summary)


@hydra.main(version_base="1.3", config_path="../conf", config_name="calibration")
def main(cfg: DictConfig) -> str:
    return run_job(cfg, "calibration", calibrate, validate=validate_calibration)


if __name__ == "__main__":
    preflight("calibration", validate_calibration)
    main()
