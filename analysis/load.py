"""Load stored job results (``metadata.json`` + parquet) into tidy DataFrames.

Reads the layout described in ``docs/results.md`` and nothing else: this module never
imports training code. Give it any mix of single-run directories, multirun sweep
directories or parents of either; every directory below them holding a
``metadata.json`` is one job.

    results = load_results(["outputs/multirun/estimator_variance/default"])
    results.estimator            # one row per (job, estimator, N), swept config as columns
    results.skipped              # [(path, reason), ...] for jobs that were not loaded

Rules (each one checked by ``tests/test_analysis_load.py``):

* a job is loaded when its status is ``complete`` or ``diverged`` and every file in
  ``result_files`` reads; a failed or running job is skipped with its reason;
* an unreadable ``metadata.json`` or result file skips the whole job with a
  :class:`ResultFileWarning` that names the file;
* the same job (same ``job_hash``) found twice is loaded once: the copy with the latest
  ``finished_at`` wins, ties go to the smallest path;
* config keys that vary across the loaded jobs of one experiment become columns (nested
  keys flattened with dots, e.g. ``policy.kind``); a key whose name a table already uses
  is left to the table when the two agree in every job, and is added as ``config.<key>``
  when they differ (``n_trajectories`` in the estimator table is the row's N, the config
  holds the whole list);
* rows are sorted by the table's identity columns, then by job directory, so the same
  inputs give identical tables whatever their order.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METADATA_FILE = "metadata.json"
FINISHED_STATUSES = ("complete", "diverged")
# Config keys that say where and how a job reported, not what it computed (they match
# experiments/pglab_jobs/metadata.py NON_SEMANTIC_KEYS); they never become columns.
NON_SEMANTIC_PREFIXES = ("paths", "logger", "sweep_name", "progress", "resume", "hydra")

# (experiment, parquet stem) -> attribute of Results
TABLES: dict[tuple[str, str], str] = {
    ("estimator_variance", "results"): "estimator",
    ("calibration", "calibration"): "calibration",
    ("cartpole", "history"): "cartpole_history",
    ("cartpole", "summary"): "cartpole_summary",
    ("cartpole", "gradient_quality"): "gradient_quality",
    ("tabular_ascent", "history"): "ascent_history",
    ("tabular_ascent", "summary"): "ascent_summary",
}

# Identity columns per table, in sort order (those absent from a table are ignored).
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "estimator": ("mdp", "estimator", "n_trajectories", "seed"),
    "calibration": ("mdp", "estimator", "n_trajectories", "seed", "study"),
    "cartpole_history": (
        "env_id",
        "estimator",
        "n_trajectories",
        "step_size",
        "optimizer",
        "seed",
        "iteration",
    ),
    "cartpole_summary": ("env_id", "estimator", "n_trajectories", "step_size", "optimizer", "seed"),
    "gradient_quality": (
        "env_id",
        "estimator",
        "step_size",
        "optimizer",
        "seed",
        "checkpoint_iteration",
        "n_trajectories",
        "batch",
    ),
    "ascent_history": ("mdp", "gradient", "n_trajectories", "step_size", "seed", "iteration"),
    "ascent_summary": ("mdp", "gradient", "n_trajectories", "step_size", "seed"),
}

RUN_COLUMNS = (
    "run_dir",
    "experiment",
    "status",
    "job_hash",
    "sweep_name",
    "seed",
    "git_commit",
    "git_dirty",
    "hostname",
    "started_at",
    "finished_at",
    "wall_time_s",
    "overrides",
    "result_files",
)


class ResultFileWarning(UserWarning):
    """A result or metadata file could not be read; its job was skipped."""


@dataclass
class Results:
    """Every table of every loaded job, concatenated.

    Attributes:
        estimator: estimator study, one row per (job, estimator, N) (``results.parquet``).
        calibration: verdict calibration, one row per (job, estimator, N, study)
            (``calibration.parquet``).
        cartpole_history, cartpole_summary, gradient_quality: CartPole tables.
        ascent_history, ascent_summary: tabular ascent tables.
        other: tables of experiments or stems this loader does not know,
            keyed ``"<experiment>/<stem>"``.
        runs: one row per loaded job (``RUN_COLUMNS`` plus the varying config keys).
        skipped: ``(path, reason)`` for every job found but not loaded, in path order.
        searched: the input paths, resolved.
    Tables with no data are empty DataFrames.
    """

    estimator: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    cartpole_history: pd.DataFrame = field(default_factory=pd.DataFrame)
    cartpole_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    gradient_quality: pd.DataFrame = field(default_factory=pd.DataFrame)
    ascent_history: pd.DataFrame = field(default_factory=pd.DataFrame)
    ascent_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    other: dict[str, pd.DataFrame] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every non-empty table by name (known tables first, in ``TABLES`` order)."""
        out = {name: getattr(self, name) for name in TABLES.values()}
        out.update(self.other)
        return {name: frame for name, frame in out.items() if not frame.empty}


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"policy": {"kind": "mlp"}}`` -> ``{"policy.kind": "mlp"}``; lists become tuples."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple | np.ndarray):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def find_job_dirs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Every directory holding a ``metadata.json`` under ``paths`` (resolved, sorted, unique).

    Returns ``(job_dirs, searched)``. A path may be a job directory, any parent of job
    directories, or a ``metadata.json`` file. Raises ``ValueError`` for a path that does
    not exist (a typo should not pass as "no results").
    """
    found: set[Path] = set()
    searched: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        searched.append(str(path))
        if not path.exists():
            raise ValueError(f"results path {raw!s} does not exist (resolved to {path})")
        if path.is_file():
            if path.name == METADATA_FILE:
                found.add(path.parent)
            continue
        found.update(meta.parent for meta in path.rglob(METADATA_FILE))
    return sorted(found), searched


def _warn_skip(skipped: list[tuple[str, str]], path: Path, reason: str) -> None:
    warnings.warn(f"skipping job {path}: {reason}", ResultFileWarning, stacklevel=3)
    skipped.append((str(path), reason))


def _read_table(file: Path) -> pd.DataFrame:
    frame = pd.read_parquet(file)
    for column in frame.columns:  # array cells (e.g. true_gradient) -> tuples: hashable, comparable
        if (
            frame[column].dtype == object
            and frame[column].map(lambda v: isinstance(v, list | np.ndarray)).any()
        ):
            frame[column] = frame[column].map(_hashable)
    return frame


def _read_job(job_dir: Path, skipped: list[tuple[str, str]]) -> tuple[dict, dict] | None:
    """``(metadata, {stem: table})`` for a finished, readable job, else ``None`` (recorded)."""
    meta_file = job_dir / METADATA_FILE
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    except (OSError, ValueError) as error:
        _warn_skip(skipped, job_dir, f"cannot read {meta_file} ({type(error).__name__}: {error})")
        return None
    status = meta.get("status")
    if status not in FINISHED_STATUSES:
        reason = f"status {status!r}"
        if meta.get("error"):
            reason += f": {meta['error']}"
        skipped.append((str(job_dir), reason))
        return None
    tables: dict[str, pd.DataFrame] = {}
    for name in meta.get("result_files") or []:
        file = job_dir / name
        if not file.is_file():
            _warn_skip(skipped, job_dir, f"result file {file} listed in metadata.json is missing")
            return None
        try:
            tables[Path(name).name.removesuffix(".parquet")] = _read_table(file)
        except Exception as error:  # pyarrow raises several types for a damaged file
            _warn_skip(skipped, job_dir, f"cannot read {file} ({type(error).__name__}: {error})")
            return None
    return meta, tables


def _dedupe(
    jobs: list[tuple[Path, dict, dict]], skipped: list[tuple[str, str]]
) -> list[tuple[Path, dict, dict]]:
    """One job per ``job_hash``: latest ``finished_at``, then smallest path."""
    by_hash: dict[str, list[tuple[Path, dict, dict]]] = {}
    for job in jobs:
        by_hash.setdefault(str(job[1].get("job_hash") or job[0]), []).append(job)
    kept = []
    for copies in by_hash.values():
        copies.sort(key=lambda job: (-_timestamp(job[1].get("finished_at")), str(job[0])))
        kept.append(copies[0])
        for dup in copies[1:]:
            skipped.append(
                (
                    str(dup[0]),
                    f"duplicate of {copies[0][0]} (same job_hash {copies[0][1].get('job_hash')})",
                )
            )
    return sorted(kept, key=lambda job: str(job[0]))


def _timestamp(value: Any) -> float:
    try:
        return pd.Timestamp(value).timestamp()
    except (TypeError, ValueError):
        return float("-inf")


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value differs between ``configs`` (or is absent in some).

    Keys under ``NON_SEMANTIC_PREFIXES`` (output paths, logger, ...) are left out.
    """
    keys = sorted({key for config in configs for key in config})
    out = []
    for key in keys:
        if key.split(".")[0] in NON_SEMANTIC_PREFIXES:
            continue
        values = {
            json.dumps(config.get(key, "<absent>"), sort_keys=True, default=str)
            for config in configs
        }
        if len(values) > 1:
            out.append(key)
    return out


def _column_equals(column: pd.Series, value: Any) -> bool:
    try:
        return bool((column.map(_hashable) == value).all()) if len(column) else True
    except (TypeError, ValueError):
        return False


def _sort_rows(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    by = [key for key in keys if key in frame.columns] + ["run_dir", "_row"]
    try:
        frame = frame.sort_values(by, kind="mergesort", na_position="last")
    except TypeError:  # mixed types in an identity column: fall back to job order
        frame = frame.sort_values(["run_dir", "_row"], kind="mergesort")
    return frame.drop(columns="_row").reset_index(drop=True)


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Results:
    """Load every job under ``paths`` into a :class:`Results` (see the module docstring).

    Args:
        paths: one path or several; each a job directory, a sweep directory or any parent.
    Raises:
        ValueError: a path does not exist, or no job directory was found under any path.
    Warns:
        ResultFileWarning: for each job skipped because a file in it could not be read.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    job_dirs, searched = find_job_dirs(paths)
    if not job_dirs:
        raise ValueError(
            f"no results found: no {METADATA_FILE} under {', '.join(searched) or '(no paths)'}"
        )
    skipped: list[tuple[str, str]] = []
    jobs = []
    for job_dir in job_dirs:
        loaded = _read_job(job_dir, skipped)
        if loaded is not None:
            jobs.append((job_dir, *loaded))
    jobs = _dedupe(jobs, skipped)

    flat_configs = {str(d): flatten_config(meta.get("config") or {}) for d, meta, _ in jobs}
    experiments = sorted({str(meta.get("experiment")) for _, meta, _ in jobs})
    varying = {
        exp: varying_keys(
            [flat_configs[str(d)] for d, meta, _ in jobs if str(meta.get("experiment")) == exp]
        )
        for exp in experiments
    }

    collected: dict[str, list[tuple[dict, dict[str, Any], pd.DataFrame]]] = {}
    run_rows = []
    for job_dir, meta, tables in jobs:
        experiment = str(meta.get("experiment"))
        config = flat_configs[str(job_dir)]
        swept = {key: config.get(key) for key in varying[experiment]}
        run_rows.append(
            {
                **{col: _hashable(meta.get(col)) for col in RUN_COLUMNS},
                "run_dir": str(job_dir),
                **swept,
            }
        )
        for stem, table in sorted(tables.items()):
            name = TABLES.get((experiment, stem), f"{experiment}/{stem}")
            frame = table.copy()
            if "seed" not in frame.columns:
                frame["seed"] = meta.get("seed")
            frame["job_hash"] = meta.get("job_hash")
            frame["sweep_name"] = meta.get("sweep_name")
            frame["run_dir"] = str(job_dir)
            frame["_row"] = np.arange(len(frame))
            collected.setdefault(name, []).append((meta, swept, frame))

    pieces: dict[str, list[pd.DataFrame]] = {}
    for name, items in collected.items():
        # A swept key the table already has as a column: when the column equals the config
        # value in every job it is the same quantity (skip it); otherwise it means something
        # else (the estimator table's N per row vs the config's list of N): config.<key>.
        renamed = set()
        for _, swept, frame in items:
            for key, value in swept.items():
                if key in frame.columns and not _column_equals(frame[key], value):
                    renamed.add(key)
        for _, swept, frame in items:
            for key, value in swept.items():
                if key in frame.columns and key not in renamed:
                    continue
                column = f"config.{key}" if key in renamed else key
                frame[column] = [value] * len(frame)
            pieces.setdefault(name, []).append(frame)

    results = Results(skipped=sorted(skipped), searched=searched)
    for name, frames in pieces.items():
        frames = [f for f in frames if not f.empty]
        if not frames:
            continue
        table = _sort_rows(pd.concat(frames, ignore_index=True), SORT_KEYS.get(name, ()))
        if name in SORT_KEYS:
            setattr(results, name, table)
        else:
            results.other[name] = table
    results.other = dict(sorted(results.other.items()))
    results.runs = pd.DataFrame(
        run_rows,
        columns=list(
            dict.fromkeys([*RUN_COLUMNS, *(k for exp in experiments for k in varying[exp])])
        ),
    )
    return results
