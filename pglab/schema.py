"""The result contract, declared once: what every experiment stores and how rows are named.

``experiments/`` writes by it and ``analysis/`` reads by it; ``docs/results.md`` is
checked against it (``tests/test_schema.py``). This module is dependency-free (standard
library only), so importing it pulls in neither torch nor Hydra.

A job directory holds ``metadata.json`` (:data:`METADATA_FILE`), ``job_status.json``
(:data:`JOB_STATUS_FILE`) and one ``<stem>.parquet`` per :class:`Table` of its
:class:`Experiment`. Every row of every table carries the experiment's identity columns
(the config keys that say which run it is), so tables from many jobs concatenate into one
tidy frame; a table's own ``index`` columns (iteration, N, study, ...) then name the row
within the job. Renaming or adding a column is a change here plus the code that computes
it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Written first (status ``running``) and last (final status); a job is finished only
#: once it says so.
METADATA_FILE = "metadata.json"
#: The latest attempt's status, read by the end-of-sweep summary.
JOB_STATUS_FILE = "job_status.json"
#: ``metadata.json`` statuses of a finished job (its results are complete and stored).
FINISHED_STATUSES = ("complete", "diverged")
#: Every status a job can record.
STATUSES = ("running", "complete", "diverged", "failed", "skipped")

#: Top-level config keys that say where and how a job runs and reports, not what it
#: computes. They do not enter the job hash (moving outputs, switching W&B off or changing
#: the thread count re-runs nothing: results do not depend on them), never become table
#: columns, and are left out of job directory names (conf/hydra/default.yaml, checked
#: against this list by tests/test_schema.py).
NON_SEMANTIC_KEYS = ("paths", "logger", "sweep_name", "progress", "resume", "threads")


@dataclass(frozen=True)
class Table:
    """One parquet file per job.

    Attributes:
        stem: file name without ``.parquet``.
        name: the attribute of ``analysis.load.Results`` that holds it.
        index: columns naming a row within one job, in sort order (empty: one row per job).
        columns: the other columns a valid file must hold (a file without them is skipped,
            with its reason, by the loader).
        description: one line for docs and error messages.
    """

    stem: str
    name: str
    index: tuple[str, ...]
    columns: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Experiment:
    """One app: its name, the config keys that identify a run, and its tables.

    Attributes:
        name: the app (``experiments/<name>.py``, ``conf/<name>.yaml``) and the
            ``experiment`` field of ``metadata.json``.
        identity: config keys copied as columns into every row of every table, in sort
            order; a report cell is one value of each (seeds pooled).
        context: identity columns that, when they vary, split a report section into
            separate figures rather than lines within one.
        tables: what each job writes.
    """

    name: str
    identity: tuple[str, ...]
    context: tuple[str, ...]
    tables: tuple[Table, ...]

    def table(self, stem: str) -> Table:
        for table in self.tables:
            if table.stem == stem:
                return table
        raise KeyError(f"experiment {self.name!r} has no table {stem!r}")

    def sort_keys(self, stem: str) -> tuple[str, ...]:
        """Identity then index columns of table ``stem``: the order its rows are sorted in."""
        return (*self.identity, *self.table(stem).index)


_RUN_SUMMARY = (
    "final_return",
    "auc",
    "best_return",
    "collapsed",
    "collapse_iteration",
    "collapse_reason",
    "first_collapse_iteration",
    "stuck_fraction",
    "dips",
    "dropped_at_end",
    "diverged",
    "status",
    "iterations",
    "env_steps",
)

ESTIMATOR_VARIANCE = Experiment(
    name="estimator_variance",
    identity=("mdp", "estimator", "seed"),
    context=("mdp",),
    tables=(
        Table(
            stem="results",
            name="estimator",
            index=("n_trajectories",),
            columns=(
                "n_repetitions",
                "gamma",
                "horizon",
                "n_states",
                "n_actions",
                "policy_kind",
                "bias_norm",
                "bias_noise_floor",
                "bias_norm_debiased",
                "bias_norm_ci_low",
                "bias_norm_ci_high",
                "relative_bias",
                "relative_bias_ci_low",
                "relative_bias_ci_high",
                "total_variance",
                "mse",
                "cosine_mean",
                "snr",
                "effective_batches",
                "test_statistic",
                "p_value",
                "true_gradient_norm",
                "true_return",
                "true_gradient",
            ),
            description="one row per (estimator, N): bias, variance, MSE, cosine, SNR, test",
        ),
    ),
)

CALIBRATION = Experiment(
    name="calibration",
    identity=("mdp", "estimator", "seed"),
    context=("mdp",),
    tables=(
        Table(
            stem="calibration",
            name="calibration",
            index=("n_trajectories", "study"),
            columns=(
                "known_relative_bias",
                "p_value",
                "test_statistic",
                "effective_batches",
                "relative_bias",
                "relative_bias_ci_low",
                "relative_bias_ci_high",
                "gamma",
                "n_repetitions",
                "confidence",
            ),
            description="one row per (estimator, N, study): a re-run study cell's verdict",
        ),
    ),
)

CARTPOLE = Experiment(
    name="cartpole",
    # update: the update rule (pg | npg | trpo | ppo, issue 10); step_size is that rule's
    # step parameter (alpha, eta, delta, PPO's learning rate), so rules split figures.
    identity=(
        "env_id",
        "estimator",
        "update",
        "n_trajectories",
        "step_size",
        "optimizer",
        "seed",
    ),
    context=("env_id", "estimator", "update", "optimizer"),
    tables=(
        Table(
            stem="history",
            name="cartpole_history",
            index=("iteration",),
            columns=(
                "env_steps",
                "env_steps_total",
                "wall_time",
                "return_mean",
                "return_median",
                "return_min",
                "return_max",
                "length_mean",
                "grad_norm",
                "entropy",
                "kl",
                "step_norm",
                "backtracks",
                "accepted",
                "clip_fraction",
                "frac_deterministic",
                "grad_variance",
                "collapsed",
            ),
            description="one row per iteration",
        ),
        Table(
            stem="summary",
            name="cartpole_summary",
            index=(),
            columns=(*_RUN_SUMMARY, "collapse_window_episodes", "collapse_window_iterations"),
            description="one row per run",
        ),
        Table(
            stem="gradient_quality",
            name="gradient_quality",
            # n_trajectories is the training N (an identity column, as in every table);
            # batch_n_trajectories is the N of the batches whose quality is measured.
            index=("checkpoint_iteration", "batch_n_trajectories", "batch"),
            columns=(
                "cosine",
                "relative_error",
                "reference_episodes",
                "reference_relative_se",
            ),
            description="one row per (checkpoint, batch N, batch): cosine to a reference",
        ),
    ),
)

TABULAR_ASCENT = Experiment(
    name="tabular_ascent",
    identity=("mdp", "gradient", "update", "n_trajectories", "step_size", "seed"),
    context=("mdp", "update"),
    tables=(
        Table(
            stem="history",
            name="ascent_history",
            index=("iteration",),
            columns=(
                "expected_return",
                "optimal_return",
                "suboptimality",
                "stationary_return",
                "suboptimality_stationary",
                "entropy",
                "p_optimal",
                "grad_norm",
                "kl",
                "step_norm",
                "backtracks",
                "accepted",
                "collapsed",
            ),
            description="one row per iteration, J evaluated exactly",
        ),
        Table(
            stem="summary",
            name="ascent_summary",
            index=(),
            columns=(
                *_RUN_SUMMARY,
                "optimal_return",
                "stationary_return",
                "final_suboptimality_stationary",
            ),
            description="one row per run",
        ),
    ),
)

#: Columns added by issue 10 (update rules), with the value a table written before it holds
#: implicitly: every earlier run was ``update="pg"``, and its per-step diagnostics were
#: not recorded (NaN). ``analysis.load`` fills them in on load.
ADDED_COLUMNS: dict[str, dict[str, object]] = {
    "cartpole": {
        "update": "pg",
        "step_norm": float("nan"),
        "backtracks": float("nan"),
        "accepted": float("nan"),
        "clip_fraction": float("nan"),
    },
    "tabular_ascent": {
        "update": "pg",
        "kl": float("nan"),
        "step_norm": float("nan"),
        "backtracks": float("nan"),
        "accepted": float("nan"),
    },
}

#: Every experiment, by name.
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (ESTIMATOR_VARIANCE, CALIBRATION, CARTPOLE, TABULAR_ASCENT)
}


def experiment(name: str) -> Experiment:
    """The :class:`Experiment` called ``name``; a clear error for an unknown one."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}") from None


def env_slug(env_id: str) -> str:
    """A short lowercase name for a gymnasium env id, for directories and W&B job types.

    ``"CartPole-v1"`` -> ``"cartpole"``, ``"Acrobot-v1"`` -> ``"acrobot"``,
    ``"ALE/Pong-v5"`` -> ``"ale-pong"``: the version suffix is dropped, ``/`` becomes ``-``.
    """
    base = env_id.rsplit("-v", 1)[0] if "-v" in env_id else env_id
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in base.lower()).strip("-")
