"""Load stored job results (``metadata.json`` + parquet) into tidy DataFrames.

Reads the layout declared in :mod:`pglab.schema` (and described in ``docs/results.md``)
and nothing else: this module never imports training code (``pglab.schema`` is
dependency-free). Give it any mix of single-run directories, multirun sweep directories
or parents of either; every directory below them holding a ``metadata.json`` is one job.

    results = load_results(["outputs/multirun/estimator_variance/default"])
    results.estimator            # one row per (job, estimator, N), swept config as columns
    results.skipped              # [(path, reason), ...] for jobs that were not loaded

Rules (each one checked by ``tests/test_analysis_load.py``):

* a job is loaded when its status is finished (``pglab.schema.FINISHED_STATUSES``) and
  every file in ``result_files`` reads and holds the columns its :class:`~pglab.schema.Table`
  requires (identity, index and ``columns``); otherwise the whole job is skipped and
  listed with its reason (a :class:`ResultFileWarning` for a damaged or wrong file);
* files written before a schema change are mapped to the current names on load
  (:func:`upgrade_table`: the gradient-quality table's ``n_trajectories`` used to be the
  batch N and ``train_n_trajectories`` the training N);
* a directory that holds result tables or a ``job_status.json`` but no ``metadata.json``
  (its metadata lost) is listed as skipped, never silently left out;
* the same job (same ``job_hash``) found twice is loaded once: the copy with the latest
  ``finished_at`` wins, ties go to the smallest path;
* config keys that vary across the loaded jobs of one experiment become columns (nested
  keys flattened with dots, e.g. ``policy.kind``); a key whose name a table already uses
  is left to the table when the two agree in every job, and is added as ``config.<key>``
  when they differ (``n_trajectories`` in the estimator table is the row's N, the config
  holds the whole list). :attr:`Results.design` names these columns per table: the report
  splits cells by them (see ``analysis.report.cells``);
* rows are sorted by the table's identity and index columns, then by job directory, so
  the same inputs give identical tables whatever their order.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pglab.schema import (
    ADDED_COLUMNS,
    EXPERIMENTS,
    FINISHED_STATUSES,
    JOB_STATUS_FILE,
    METADATA_FILE,
    NON_SEMANTIC_KEYS,
    Experiment,
)

# (experiment, parquet stem) -> attribute of Results, from pglab.schema
TABLES: dict[tuple[str, str], str] = {
    (e.name, t.stem): t.name for e in EXPERIMENTS.values() for t in e.tables
}
# Results attribute -> (experiment, its Table): identity then index columns give the sort order
TABLE_SPECS = {t.name: (e, t) for e in EXPERIMENTS.values() for t in e.tables}
SORT_KEYS: dict[str, tuple[str, ...]] = {
    name: e.sort_keys(t.stem) for name, (e, t) in TABLE_SPECS.items()
}
RESULT_STEMS = frozenset(t.stem for e in EXPERIMENTS.values() for t in e.tables)

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
    """A result or metadata file could not be read or breaks the schema; its job was skipped."""


@dataclass
class Results:
    """Every table of every loaded job, concatenated.

    Attributes:
        estimator: estimator study, one row per (job, estimator, N) (``results.parquet``).
        calibration: verdict calibration, one row per (job, estimator, N, study)
            (``calibration.parquet``).
        cartpole_history, cartpole_summary, gradient_quality: gymnasium training tables
            (any ``env_id``; the experiment is called ``cartpole``).
        ascent_history, ascent_summary: tabular ascent tables.
        other: tables of experiments or stems the schema does not know,
            keyed ``"<experiment>/<stem>"``.
        runs: one row per loaded job (``RUN_COLUMNS`` plus the varying config keys).
        design: per table name, the columns that hold config keys varying across the
            loaded jobs of its experiment (the seed left out), in sorted order.
        skipped: ``(path, reason)`` for every job found but not loaded, in path order;
            a reason starts with its kind (``status 'failed'``, ``schema mismatch``, ...).
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
    design: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every non-empty table by name (known tables first, in schema order)."""
        out = {name: getattr(self, name) for name in TABLES.values()}
        out.update(self.other)
        return {name: frame for name, frame in out.items() if not frame.empty}


def skip_kind(reason: str) -> str:
    """The kind of a skip reason: its text before the first ``:`` (``"duplicate"`` for copies)."""
    if reason.startswith("duplicate of "):
        return "duplicate"
    return reason.split(":", 1)[0]


def skipped_summary(skipped: list[tuple[str, str]]) -> str:
    """``"6 status 'failed', 4 schema mismatch"``: skip counts by kind, most frequent first."""
    counts: dict[str, int] = {}
    for _, reason in skipped:
        counts[skip_kind(reason)] = counts.get(skip_kind(reason), 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{n} {kind}" for kind, n in ordered)


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


def find_orphan_dirs(searched: Iterable[str]) -> list[Path]:
    """Directories that look like jobs (a ``<table>.parquet`` of the schema or a
    ``job_status.json``) but hold no ``metadata.json``; job directories are not entered."""
    markers = {JOB_STATUS_FILE, *(f"{stem}.parquet" for stem in RESULT_STEMS)}
    orphans: set[Path] = set()
    for root in map(Path, searched):
        for dirpath, dirnames, filenames in os.walk(root):
            if METADATA_FILE in filenames:
                dirnames[:] = []  # a job: its own files are checked when it is read
            elif markers.intersection(filenames):
                orphans.add(Path(dirpath))
            dirnames.sort()
    return sorted(orphans)


def _skip(skipped: list[tuple[str, str]], path: Path, reason: str, warn: bool = True) -> None:
    if warn:
        warnings.warn(f"skipping job {path}: {reason}", ResultFileWarning, stacklevel=3)
    skipped.append((str(path), reason))


def _read_table(file: Path | io.BytesIO) -> pd.DataFrame:
    frame = pd.read_parquet(file)
    for column in frame.columns:  # array cells (e.g. true_gradient) -> tuples: hashable, comparable
        if (
            frame[column].dtype == object
            and frame[column].map(lambda v: isinstance(v, list | np.ndarray)).any()
        ):
            frame[column] = frame[column].map(_hashable)
    return frame


def upgrade_table(experiment: str, stem: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Map a table written under an older schema to the current column names.

    ``cartpole/gradient_quality`` before the schema module: ``n_trajectories`` was the
    batch N and ``train_n_trajectories`` the training N; now ``n_trajectories`` is the
    training N (an identity column, as in every table) and ``batch_n_trajectories`` the
    batch N.

    ``cartpole`` and ``tabular_ascent`` before issue 10 (update rules): no ``update``
    identity column (every run was ``update="pg"``) and no per-step diagnostics
    (``step_norm``, ...; NaN: not recorded); :data:`pglab.schema.ADDED_COLUMNS` gives the
    values filled in, each only where the table requires it and lacks it. Other tables
    are returned unchanged.
    """
    added = ADDED_COLUMNS.get(experiment)
    if added and stem in {t.stem for t in EXPERIMENTS[experiment].tables}:
        spec = EXPERIMENTS[experiment]
        required = {*spec.identity, *spec.table(stem).columns}
        fill = {k: v for k, v in added.items() if k in required and k not in frame.columns}
        if fill:
            frame = frame.assign(**fill)
    if (
        (experiment, stem) == ("cartpole", "gradient_quality")
        and "train_n_trajectories" in frame.columns
        and "batch_n_trajectories" not in frame.columns
    ):
        return frame.rename(
            columns={
                "n_trajectories": "batch_n_trajectories",
                "train_n_trajectories": "n_trajectories",
            }
        )
    return frame


def upgrade_config(experiment: str, config: dict[str, Any]) -> dict[str, Any]:
    """A job's config written before issue 10 as the current one: ``cartpole`` and
    ``tabular_ascent`` runs without an ``update`` group ran ``update=pg``, whose group is
    ``{"name": "pg"}`` (so old and new pg runs pool into the same cells)."""
    if experiment in ADDED_COLUMNS and "update" not in config:
        return {**config, "update": {"name": ADDED_COLUMNS[experiment]["update"]}}
    return config


def missing_columns(experiment: Experiment, stem: str, frame: pd.DataFrame) -> list[str]:
    """Columns table ``stem`` of ``experiment`` must hold (identity, index, columns) but lacks."""
    table = experiment.table(stem)
    required = dict.fromkeys([*experiment.identity, *table.index, *table.columns])
    return [column for column in required if column not in frame.columns]


def _read_metadata(
    job_dir: Path, skipped: list[tuple[str, str]], files: Mapping[str, bytes] | None = None
) -> dict | None:
    meta_file = job_dir / METADATA_FILE
    try:
        if files is not None and METADATA_FILE not in files:
            raise OSError(f"{METADATA_FILE} is not in the bundle")
        text = meta_file.read_text() if files is None else files[METADATA_FILE].decode()
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    except (OSError, ValueError) as error:
        reason = (
            f"unreadable {METADATA_FILE}: cannot read {meta_file} ({type(error).__name__}: {error})"
        )
        _skip(skipped, job_dir, reason)
        return None
    status = meta.get("status")
    if status not in FINISHED_STATUSES:
        reason = f"status {status!r}"
        if meta.get("error"):
            reason += f": {meta['error']}"
        _skip(skipped, job_dir, reason, warn=False)
        return None
    return meta


def _read_result(
    job_dir: Path, name: str, experiment: str, files: Mapping[str, bytes] | None = None
) -> tuple[str, pd.DataFrame | str]:
    """``(stem, table)`` or ``(stem, reason)`` for result file ``name`` of a job (read from
    ``files``, a bundle's contents by name, when given)."""
    file = job_dir / name
    stem = Path(name).name.removesuffix(".parquet")
    if not (file.is_file() if files is None else name in files):
        return stem, f"missing result file: {file} is listed in {METADATA_FILE} but does not exist"
    try:
        frame = upgrade_table(
            experiment, stem, _read_table(file if files is None else io.BytesIO(files[name]))
        )
    except Exception as error:  # pyarrow raises several types for a damaged file
        return stem, f"unreadable result file: cannot read {file} ({type(error).__name__}: {error})"
    spec = EXPERIMENTS.get(experiment)
    if spec is not None and (experiment, stem) in TABLES:
        missing = missing_columns(spec, stem, frame)
        if missing:
            listed = ", ".join(missing[:8]) + (
                f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            )
            return stem, (
                f"schema mismatch: {file} lacks column(s) {listed} that "
                f"pglab.schema requires of {experiment}/{stem}"
            )
    return stem, frame


def _read_job(
    job_dir: Path, skipped: list[tuple[str, str]], files: Mapping[str, bytes] | None = None
) -> tuple[dict, dict] | None:
    """``(metadata, {stem: table})`` for a finished, valid job, else ``None`` (recorded).

    ``files``: the job's files by name (a W&B run's bundle) instead of ``job_dir``'s."""
    meta = _read_metadata(job_dir, skipped, files)
    if meta is None:
        return None
    tables: dict[str, pd.DataFrame] = {}
    for name in meta.get("result_files") or []:
        stem, table = _read_result(job_dir, name, str(meta.get("experiment")), files)
        if isinstance(table, str):
            _skip(skipped, job_dir, table)
            return None
        tables[stem] = table
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

    Keys under ``pglab.schema.NON_SEMANTIC_KEYS`` (output paths, logger, threads, ...)
    are left out: they say where and how a job ran, not what it computed.
    """
    keys = sorted({key for config in configs for key in config})
    out = []
    for key in keys:
        if key.split(".")[0] in NON_SEMANTIC_KEYS:
            continue
        values = {
            json.dumps(config.get(key, "<absent>"), sort_keys=True, default=str)
            for config in configs
        }
        if len(values) > 1:
            out.append(key)
    return out


def _column_equals(column: pd.Series, value: Any) -> bool:
    """Whether every cell of ``column`` equals ``value`` (element by element, any types)."""
    try:
        return all(bool(_hashable(cell) == value) for cell in column)
    except (TypeError, ValueError):  # e.g. an array compared with a scalar
        return False


def _sort_rows(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    by = [key for key in keys if key in frame.columns] + ["run_dir", "_row"]
    try:
        frame = frame.sort_values(by, kind="mergesort", na_position="last")
    except TypeError:  # mixed types in an identity column: fall back to job order
        frame = frame.sort_values(["run_dir", "_row"], kind="mergesort")
    return frame.drop(columns="_row").reset_index(drop=True)


def _collect_jobs(
    paths: Iterable[str | os.PathLike],
) -> tuple[list[tuple[Path, dict, dict]], list[tuple[str, str]], list[str]]:
    job_dirs, searched = find_job_dirs(paths)
    orphans = find_orphan_dirs(searched)
    if not job_dirs and not orphans:
        raise ValueError(
            f"no results found: no {METADATA_FILE} under {', '.join(searched) or '(no paths)'}"
        )
    skipped: list[tuple[str, str]] = []
    for orphan in orphans:
        held = sorted(p.name for p in orphan.iterdir() if p.suffix == ".parquet")
        _skip(
            skipped,
            orphan,
            f"no {METADATA_FILE}: the directory holds {', '.join(held) or JOB_STATUS_FILE} "
            f"but its metadata is gone, so its config and status are unknown",
        )
    jobs = []
    for job_dir in job_dirs:
        loaded = _read_job(job_dir, skipped)
        if loaded is not None:
            jobs.append((job_dir, *loaded))
    return _dedupe(jobs, skipped), skipped, searched


def _table_frames(
    jobs: list[tuple[Path, dict, dict]], varying: dict[str, list[str]], flat: dict[str, dict]
) -> tuple[dict[str, list[pd.DataFrame]], dict[str, tuple[str, ...]]]:
    """Per table name: one frame per job with the swept config keys as columns."""
    collected: dict[str, list[tuple[dict[str, Any], pd.DataFrame]]] = {}
    for job_dir, meta, tables in jobs:
        experiment = str(meta.get("experiment"))
        swept = {key: flat[str(job_dir)].get(key) for key in varying[experiment]}
        for stem, table in sorted(tables.items()):
            name = TABLES.get((experiment, stem), f"{experiment}/{stem}")
            frame = table.copy()
            if "seed" not in frame.columns:
                frame["seed"] = meta.get("seed")
            frame["job_hash"] = meta.get("job_hash")
            frame["sweep_name"] = meta.get("sweep_name")
            frame["run_dir"] = str(job_dir)
            frame["_row"] = np.arange(len(frame))
            collected.setdefault(name, []).append((swept, frame))
    pieces: dict[str, list[pd.DataFrame]] = {}
    design: dict[str, tuple[str, ...]] = {}
    for name, items in collected.items():
        # A swept key the table already has as a column: when the column equals the config
        # value in every job it is the same quantity (skip it); otherwise it means something
        # else (the estimator table's N per row vs the config's list of N): config.<key>.
        renamed = {
            key
            for swept, frame in items
            for key, value in swept.items()
            if key in frame.columns and not _column_equals(frame[key], value)
        }
        columns: set[str] = set()
        for swept, frame in items:
            for key, value in swept.items():
                column = f"config.{key}" if key in renamed else key
                if key != "seed":
                    columns.add(column)
                if key in frame.columns and key not in renamed:
                    continue
                frame[column] = [value] * len(frame)
            pieces.setdefault(name, []).append(frame)
        design[name] = tuple(sorted(columns))
    return pieces, design


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Results:
    """Load every job under ``paths`` into a :class:`Results` (see the module docstring).

    Args:
        paths: one path or several; each a job directory, a sweep directory or any parent.
    Raises:
        ValueError: a path does not exist, or nothing that looks like a job was found.
    Warns:
        ResultFileWarning: for each job skipped because a file in it could not be read,
            breaks the schema, or has no metadata.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    jobs, skipped, searched = _collect_jobs(paths)
    return _assemble(jobs, skipped, searched)


def load_bundles(
    bundles: Iterable[tuple[str, Mapping[str, bytes]]], searched: list[str]
) -> Results:
    """Load jobs from their files held elsewhere than a job directory (a W&B run's bundle).

    Args:
        bundles: ``(where, {file name: bytes})`` per job: ``metadata.json`` and the result
            files it lists; ``where`` (e.g. the W&B run) names the job in skip reasons.
        searched: the inputs, for :attr:`Results.searched`.
    Each job is loaded under the job directory its metadata records (``run_dir``), as
    :func:`load_results` would load it from there, so both give the same tables. The rules
    of the module docstring apply (status, schema, duplicates).
    """
    jobs, skipped = [], []
    for where, files in bundles:
        loaded = _read_job(Path(where), skipped, files)
        if loaded is not None:
            meta = loaded[0]
            jobs.append((Path(str(meta.get("run_dir") or where)), *loaded))
    return _assemble(_dedupe(jobs, skipped), skipped, list(searched))


def _assemble(
    jobs: list[tuple[Path, dict, dict]], skipped: list[tuple[str, str]], searched: list[str]
) -> Results:
    """:class:`Results` from loaded ``(job_dir, metadata, {stem: table})`` jobs."""
    flat = {
        str(d): flatten_config(
            upgrade_config(str(meta.get("experiment")), meta.get("config") or {})
        )
        for d, meta, _ in jobs
    }
    experiments = sorted({str(meta.get("experiment")) for _, meta, _ in jobs})
    varying = {
        exp: varying_keys(
            [flat[str(d)] for d, meta, _ in jobs if str(meta.get("experiment")) == exp]
        )
        for exp in experiments
    }
    run_rows = [
        {
            **{col: _hashable(meta.get(col)) for col in RUN_COLUMNS},
            "run_dir": str(job_dir),
            **{key: flat[str(job_dir)].get(key) for key in varying[str(meta.get("experiment"))]},
        }
        for job_dir, meta, _ in jobs
    ]
    pieces, design = _table_frames(jobs, varying, flat)
    results = Results(skipped=sorted(skipped), searched=searched, design=design)
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
