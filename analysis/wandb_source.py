"""Weights & Biases runs as tidy DataFrames: offline run files, or a project via the API.

Local parquet (:mod:`analysis.load`) is the primary source; these readers serve runs that
only exist in W&B, in the same shape for both sources:

=========  ==================================================================
runs       one row per run: ``run_id, name, group, job_type, project, state``, ...
config     one row per run: ``run_id`` + the config flattened with dots
summary    one row per run: ``run_id`` + the final summary flattened with dots
history    one row per (run, logged step): ``run_id, _step`` + each logged key
metrics    one row per ``define_metric``: ``run_id, name, glob_name, step_metric``
           (offline runs only; e.g. ``glob_name="*"``, ``step_metric="env_steps"``)
table/KEY  offline runs only: every ``wandb.Table`` logged under KEY (e.g. the
           estimator study's ``results``), rows of all runs with a ``run_id`` column
skipped    ``path, reason`` for offline files that could not be read
=========  ==================================================================

Offline runs (``wandb/offline-run-*/run-*.wandb``) are read in-process (:func:`read_records`,
about 10 ms per run): the file is W&B's transaction log, a LevelDB-style log (a 7-byte
``:W&B`` header, then 32 KiB blocks of chunks with a 7-byte header each: CRC-32C, length,
type ``FULL``/``FIRST``/``MIDDLE``/``LAST``) whose payloads are ``wandb.proto``
``Record`` messages. wandb 0.31 ships no Python reader of it (only ``wandb leet inspect
--json FILE``, a subprocess of about 1 s per run); the records are given the shape that
command prints. The records used are ``run`` (initial config, name, group, job_type),
``config`` (later config updates), ``history`` (``item``: the logged keys, ``step.num``),
``summary`` (``update`` / ``remove``), ``metric`` (``define_metric``: ``name`` or
``glob_name``, ``step_metric``), ``files`` (files saved to the run), ``artifact``
(name, type, the manifest's paths) and ``exit``
(``exit_code``). W&B writes non-finite floats as ``NaN``, ``Infinity``, ``-Infinity``;
they are decoded back to floats.

A pglab job attaches its own results to its run (:data:`JOB_BUNDLE`, a zip of its
``metadata.json`` and parquet files, in the run's ``files/``): :func:`load_wandb_results`
reads them back into the same :class:`analysis.load.Results` as the parquet loader, from
offline run directories or from a project through the API.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import ResultFileWarning, Results, flatten_config, load_bundles

NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
METRIC_COLUMNS = ["run_id", "name", "glob_name", "step_metric"]
RUN_COLUMNS = [
    "run_id",
    "name",
    "group",
    "job_type",
    "project",
    "state",
    "exit_code",
    "start_time",
    "path",
]


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, Mapping):
        return {key: _decode(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten nested keys with dots, dropping W&B's private ``_wandb`` entry."""
    return flatten_config({k: v for k, v in values.items() if k != "_wandb"})


SUPERSEDED_DIR = "superseded"  # where a re-run job sets aside its earlier offline runs


def find_offline_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``run-*.wandb`` file under ``paths`` (files or directories), sorted, unique.

    Directories are searched recursively, following links (a sweep's ``wandb/`` folder
    links to its jobs' runs; each run is found once, by its real path), except
    ``wandb/superseded/``: the runs of earlier attempts of a job that was run again (a
    file passed explicitly is kept).
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.exists():
            raise ValueError(f"W&B path {raw!s} does not exist (resolved to {path})")
        if path.is_file():
            found.add(path)
            continue
        seen: set[str] = set()
        for folder, dirnames, filenames in os.walk(path, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a link loop, or a run reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if d != SUPERSEDED_DIR]
            found.update(
                Path(real) / name
                for name in filenames
                if name.startswith("run-") and name.endswith(".wandb")
            )
    return sorted(found)


#: The transaction log's file header: magic ``:W&B``, ident 0xBEE1 (little-endian), version 0.
LOG_HEADER = b":W&B\xe1\xbe\x00"
LOG_BLOCK = 32 * 1024  # LevelDB log block size: a chunk never crosses a block boundary
CHUNK_HEADER = 7  # CRC-32C (4 bytes), payload length (2, little-endian), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def log_payloads(data: bytes) -> Iterator[bytes]:
    """The records of a W&B transaction log (the bytes of a ``.wandb`` file), in order.

    Chunks are reassembled (``FIRST`` + ``MIDDLE``... + ``LAST``); a truncated last record
    (a run still writing, or killed) ends the iteration. CRCs are not checked: a damaged
    record fails to parse instead. Raises ``ValueError`` for a file without the W&B header.
    """
    if not data.startswith(LOG_HEADER):
        raise ValueError(f"not a W&B transaction log (header {data[:7]!r})")
    offset, pending = len(LOG_HEADER), bytearray()
    while offset + CHUNK_HEADER <= len(data):
        room = LOG_BLOCK - offset % LOG_BLOCK
        if room < CHUNK_HEADER:  # the block's tail is zero padding
            offset += room
            continue
        length = int.from_bytes(data[offset + 4 : offset + 6], "little")
        kind = data[offset + 6]
        start = offset + CHUNK_HEADER
        if kind == 0 and length == 0:  # zero padding (preallocated tail)
            offset += room
            continue
        if start + length > len(data):
            return
        payload = data[start : start + length]
        offset = start + length
        if kind == FULL:
            yield bytes(payload)
        elif kind == FIRST:
            pending = bytearray(payload)
        elif kind in (MIDDLE, LAST):
            pending += payload
            if kind == LAST:
                yield bytes(pending)
                pending = bytearray()


def _json_value(text: str) -> Any:
    return json.loads(text) if text else None  # json reads NaN, Infinity, -Infinity


def _nest(target: dict, item: Any) -> None:
    """Put a ``{key | nested_key, value_json}`` item into ``target`` (nested keys nested)."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            return
    target[keys[-1]] = _json_value(item.value_json)


def _items(items: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        _nest(out, item)
    return out


def _removed(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"key": i.key} if i.key else {"nested_key": list(i.nested_key)} for i in items]


def _record_dict(record: Any) -> dict[str, Any] | None:
    """One ``wandb.proto`` ``Record`` in the shape ``wandb leet inspect --json`` prints."""
    kind = record.WhichOneof("record_type")
    if kind == "run":
        run = record.run
        body = {
            "run_id": run.run_id,
            "display_name": run.display_name,
            "run_group": run.run_group,
            "job_type": run.job_type,
            "project": run.project,
            "entity": run.entity,
            "tags": list(run.tags),
            "start_time": run.start_time.ToJsonString() if run.HasField("start_time") else None,
            "config": {"update": _items(run.config.update)},
        }
    elif kind in ("config", "summary"):
        message = getattr(record, kind)
        body = {"update": _items(message.update), "remove": _removed(message.remove)}
    elif kind == "history":
        body = {"item": _items(record.history.item), "step": {"num": record.history.step.num}}
    elif kind == "metric":
        metric = record.metric
        body = {"name": metric.name, "glob_name": metric.glob_name}
        body["step_metric"] = metric.step_metric
    elif kind == "files":
        body = {"files": [{"path": f.path} for f in record.files.files]}
    elif kind == "artifact":
        artifact = record.artifact
        body = {
            "name": artifact.name,
            "type": artifact.type,
            "files": [entry.path for entry in artifact.manifest.contents],
        }
    elif kind == "exit":
        body = {"exit_code": record.exit.exit_code}
    else:
        return None
    return {"type": kind, kind: body}


def read_records(file: str | os.PathLike) -> list[dict]:
    """The records of one ``.wandb`` file that :func:`records_to_frames` uses, in order.

    Raises ``RuntimeError`` for a file that is not a W&B log or holds no run record.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = Path(file).read_bytes()
    records = []
    try:
        for payload in log_payloads(data):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            as_dict = _record_dict(record)
            if as_dict is not None:
                records.append(as_dict)
    except (ValueError, DecodeError) as error:
        raise RuntimeError(f"{file}: {error}") from error
    if not any(record["type"] == "run" for record in records):
        raise RuntimeError(f"{file} holds no run record ({len(records)} records read)")
    return records


def records_to_frames(records: list[dict], path: str = "") -> dict[str, Any]:
    """One run's records -> ``{"run", "config", "summary", "history", "metrics", "files",
    "artifacts"}``.

    Config and summary are replayed in record order (``update`` merges, ``remove``
    deletes), so they hold the run's final state; history keeps one dict per step;
    ``metrics`` holds one ``{"name", "glob_name", "step_metric"}`` per ``define_metric``
    ``files`` the paths saved to the run (relative to its ``files/``) and ``artifacts``
    one ``{"name", "type", "files"}`` per logged artifact.
    """
    run: dict[str, Any] = {"path": path}
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict] = []
    metrics: list[dict] = []
    files: list[str] = []
    artifacts: list[dict] = []
    for record in records:
        kind = record.get("type")
        body = record.get(kind) or {}
        if kind == "run":
            run.update(
                run_id=body.get("run_id"),
                name=body.get("display_name"),
                group=body.get("run_group"),
                job_type=body.get("job_type"),
                project=body.get("project"),
                start_time=body.get("start_time"),
            )
            config.update(_decode((body.get("config") or {}).get("update") or {}))
        elif kind in ("config", "summary"):
            target = config if kind == "config" else summary
            target.update(_decode(body.get("update") or {}))
            for removed in body.get("remove") or []:
                key = removed.get("key") if isinstance(removed, dict) else removed
                if key is None and isinstance(removed, dict) and removed.get("nested_key"):
                    key = ".".join(removed["nested_key"])
                target.pop(key, None)
        elif kind == "history":
            item = _decode(body.get("item") or {})
            step = (body.get("step") or {}).get("num", item.get("_step"))
            history.append({**item, "_step": step})
        elif kind == "metric":
            metrics.append({key: body.get(key) or None for key in METRIC_COLUMNS[1:]})
        elif kind == "files":
            files.extend(f["path"] for f in body.get("files") or [] if f.get("path"))
        elif kind == "artifact":
            artifacts.append(body)
        elif kind == "exit":
            run["exit_code"] = body.get("exit_code", 0)
    run["state"] = (
        "finished"
        if run.get("exit_code") == 0
        else "failed"
        if "exit_code" in run
        else "running or crashed"
    )
    return {
        "run": run,
        "config": config,
        "summary": summary,
        "history": history,
        "metrics": metrics,
        "files": list(dict.fromkeys(files)),
        "artifacts": artifacts,
    }


def logged_tables(run: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The ``wandb.Table`` files a run logged, by key, read from ``<run_dir>/files/``.

    A logged table appears in the summary as ``{"_type": "table-file", "path": ...}``;
    the file is JSON ``{"columns": [...], "data": [[...], ...]}``.
    """
    tables = {}
    flat = _flat(run["summary"])  # the log writes "results._type"; the API nests it
    for type_key, value in sorted(flat.items()):
        if not type_key.endswith("._type") or value != "table-file":
            continue
        key = type_key.removesuffix("._type")
        if flat.get(f"{key}.path"):
            file = Path(run_dir) / "files" / flat[f"{key}.path"]
            content = json.loads(file.read_text())
            frame = pd.DataFrame(_decode(content["data"]), columns=content["columns"])
            frame.insert(0, "run_id", run["run"].get("run_id"))
            tables[key] = frame
    return tables


def _frames(runs: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Per-run dicts -> the ``runs``/``config``/``summary``/``history`` DataFrames."""
    runs = sorted(runs, key=lambda r: (str(r["run"].get("run_id")), str(r["run"].get("path"))))
    table = pd.DataFrame([r["run"] for r in runs])
    table = table.reindex(
        columns=[*RUN_COLUMNS, *[c for c in table.columns if c not in RUN_COLUMNS]]
    )
    config = pd.DataFrame([{"run_id": r["run"]["run_id"], **_flat(r["config"])} for r in runs])
    summary = pd.DataFrame([{"run_id": r["run"]["run_id"], **_flat(r["summary"])} for r in runs])
    history_rows = [
        {"run_id": r["run"]["run_id"], **_flat(row)} for r in runs for row in r["history"]
    ]
    history = pd.DataFrame(history_rows)
    if not history.empty:
        history = history.sort_values(["run_id", "_step"], kind="mergesort").reset_index(drop=True)
        front = ["run_id", "_step"]
        history = history[front + sorted(c for c in history.columns if c not in front)]
    for name, frame in (("config", config), ("summary", summary)):
        if not frame.empty:
            ordered = ["run_id", *sorted(c for c in frame.columns if c != "run_id")]
            if name == "config":
                config = frame[ordered]
            else:
                summary = frame[ordered]
    metrics = pd.DataFrame(
        [{"run_id": r["run"]["run_id"], **m} for r in runs for m in r.get("metrics", [])],
        columns=METRIC_COLUMNS,
    )
    return {
        "runs": table,
        "config": config,
        "summary": summary,
        "history": history,
        "metrics": metrics,
    }


def load_wandb_offline(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
) -> dict[str, pd.DataFrame]:
    """Read offline W&B runs under ``paths`` into ``runs``/``config``/``summary``/``history``.

    Args:
        paths: ``.wandb`` files, ``offline-run-*`` directories, or any parent directory
            (e.g. a sweep directory whose jobs each hold ``wandb/offline-run-*``).
    Returns:
        the frames of the module docstring: ``runs``, ``config``, ``summary``,
        ``history``, one ``table/<key>`` per logged table key, and ``skipped``.
    Raises:
        ValueError: a path does not exist, or no ``run-*.wandb`` file is under any path.
    Warns:
        ResultFileWarning: for each file the W&B CLI could not read (skipped).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    files = find_offline_runs(paths)
    if not files:
        raise ValueError(f"no W&B run files (run-*.wandb) under {', '.join(map(str, paths))}")
    runs, skipped = [], []
    tables: dict[str, list[pd.DataFrame]] = {}
    for file in files:
        try:
            run = records_to_frames(read_records(file), path=str(file))
            run_tables = logged_tables(run, file.parent)
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            warnings.warn(f"skipping W&B run file {file}: {error}", ResultFileWarning, stacklevel=2)
            skipped.append({"path": str(file), "reason": str(error)})
            continue
        runs.append(run)
        for key, frame in run_tables.items():
            tables.setdefault(key, []).append(frame)
    frames = (
        _frames(runs)
        if runs
        else {name: pd.DataFrame() for name in ("runs", "config", "summary", "history", "metrics")}
    )
    for key, parts in sorted(tables.items()):
        frames[f"table/{key}"] = (
            pd.concat(parts, ignore_index=True)
            .sort_values("run_id", kind="mergesort")
            .reset_index(drop=True)
        )
    frames["skipped"] = pd.DataFrame(skipped, columns=["path", "reason"])
    return frames


def load_wandb_project(
    entity: str,
    project: str,
    api: Any = None,
    filters: dict | None = None,
    history_samples: int = 100_000,
) -> dict[str, pd.DataFrame]:
    """Read the runs of an online W&B project through ``wandb.Api()``.

    Args:
        entity, project: the project's path ``entity/project``.
        api: an object with ``runs(path, filters=...)`` (default: ``wandb.Api()``; tests
            pass recorded responses). Each run needs ``id``, ``name``, ``group``,
            ``job_type``, ``state``, ``config`` (dict), ``summary`` (mapping) and
            ``history(samples=..., pandas=True)`` (a DataFrame).
        filters: W&B's MongoDB-style run filter, e.g. ``{"group": "my_sweep"}``.
        history_samples: passed to ``run.history``; W&B *samples* a history longer than
            this, so for exact curves prefer the local parquet files.
    Returns:
        ``runs``, ``config``, ``summary``, ``history`` as for :func:`load_wandb_offline`.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    runs = []
    for run in api.runs(f"{entity}/{project}", filters=filters):
        summary = getattr(run, "summary", {}) or {}
        summary = dict(getattr(summary, "_json_dict", summary))
        history = run.history(samples=history_samples, pandas=True)
        rows = (
            []
            if history is None or len(history) == 0
            else [
                {k: v for k, v in row.items() if not (isinstance(v, float) and pd.isna(v))}
                for row in history.to_dict(orient="records")
            ]
        )
        runs.append(
            {
                "run": {
                    "run_id": getattr(run, "id", None) or run.name,
                    "name": run.name,
                    "group": getattr(run, "group", None),
                    "job_type": getattr(run, "job_type", None),
                    "project": project,
                    "state": getattr(run, "state", None),
                    "path": f"{entity}/{project}/{getattr(run, 'id', run.name)}",
                },
                "config": dict(run.config),
                "summary": {k: v for k, v in summary.items() if not k.startswith("_wandb")},
                "history": [
                    {**row, "_step": row.get("_step", index)} for index, row in enumerate(rows)
                ],
            }
        )
    if not runs:
        raise ValueError(
            f"no runs in W&B project {entity}/{project}"
            + (f" matching {filters}" if filters else "")
        )
    return _frames(runs)


#: The job's results as one file of its W&B run (``pglab_jobs.tracking.JOB_BUNDLE``; the
#: two names are checked equal by tests/test_wandb_report.py).
JOB_BUNDLE = "pglab-job.zip"
REPORT_JOB_TYPE = "report"  # the report's own run (analysis.report --wandb) holds no job


def read_bundle(data: bytes | str | os.PathLike) -> dict[str, bytes]:
    """A job bundle (zip bytes or its path) -> ``{file name: bytes}``."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with zipfile.ZipFile(source) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    return sorted({file.parent for file in find_offline_runs(paths)})


def offline_bundles(
    paths: Iterable[str | os.PathLike],
) -> tuple[list[tuple[str, dict[str, bytes]]], list[tuple[str, str]]]:
    """``(run_dir, bundle)`` for every offline run under ``paths`` that carries one, and
    ``(run_dir, reason)`` for the job runs that do not (report runs are left out)."""
    bundles, missing = [], []
    for run_dir in _run_dirs(paths):
        bundle = run_dir / "files" / JOB_BUNDLE
        try:
            bundles.append((str(run_dir), read_bundle(bundle)))
            continue
        except FileNotFoundError:
            reason = f"no {JOB_BUNDLE}: the run holds no job results (logged before issue 12?)"
        except (OSError, zipfile.BadZipFile) as error:
            reason = f"unreadable {JOB_BUNDLE}: {type(error).__name__}: {error}"
        try:
            (log_file,) = run_dir.glob("run-*.wandb")
            job_type = records_to_frames(read_records(log_file))["run"].get("job_type")
        except (ValueError, RuntimeError, OSError):
            job_type = None
        if job_type != REPORT_JOB_TYPE:
            missing.append((str(run_dir), reason))
    return bundles, missing


def project_bundles(
    path: str, api: Any = None, filters: dict | None = None
) -> tuple[list[tuple[str, dict[str, bytes]]], list[tuple[str, str]]]:
    """As :func:`offline_bundles`, for the runs of W&B project ``path`` (``entity/project``)
    through the API: each run's :data:`JOB_BUNDLE` is downloaded into a temporary folder.

    ``api`` needs ``runs(path, filters=...)``; a run needs ``id``, ``job_type`` and
    ``file(name)`` whose ``download(root=..., replace=True)`` writes ``root/name``.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    bundles, missing = [], []
    with tempfile.TemporaryDirectory(prefix="pglab-wandb-") as tmp:
        for run in api.runs(path, filters=filters):
            if getattr(run, "job_type", None) == REPORT_JOB_TYPE:
                continue
            where = f"{path}/{getattr(run, 'id', run.name)}"
            root = Path(tmp) / str(getattr(run, "id", run.name))
            try:
                handle = run.file(JOB_BUNDLE).download(root=str(root), replace=True)
                if hasattr(handle, "close"):
                    handle.close()
                bundles.append((where, read_bundle(root / JOB_BUNDLE)))
            except Exception as error:  # the API raises its own types for a missing file
                missing.append((where, f"no {JOB_BUNDLE}: {type(error).__name__}: {error}"))
    return bundles, missing


def load_wandb_results(
    source: str | os.PathLike, api: Any = None, filters: dict | None = None
) -> Results:
    """The :class:`analysis.load.Results` of the jobs whose W&B runs are at ``source``.

    Args:
        source: a local path (a sweep directory, a ``wandb/`` folder, an ``offline-run-*``
            directory: every run below it), else a W&B project ``entity/project`` read
            through the API (``api``, ``filters`` as for :func:`project_bundles`).
    Each run's :data:`JOB_BUNDLE` is loaded through :func:`analysis.load.load_bundles`,
    the schema, checks and row order of :func:`analysis.load.load_results`, so a report
    built from these equals the one built from the job directories. Runs without a
    bundle are listed in ``skipped``.
    Raises:
        ValueError: ``source`` is neither an existing path nor ``entity/project``, or it
            holds no run.
    """
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        if not find_offline_runs([local]):
            raise ValueError(f"--from-wandb {text}: no W&B run files (run-*.wandb) under it")
        bundles, missing = offline_bundles([local])
        searched = [str(local.resolve())]
    elif text.count("/") == 1 and all(text.split("/")):
        bundles, missing = project_bundles(text, api=api, filters=filters)
        if not bundles and not missing:
            raise ValueError(f"--from-wandb {text}: no runs in W&B project {text}")
        searched = [f"wandb:{text}"]
    else:
        raise ValueError(
            f"--from-wandb {text}: not an existing path, nor a W&B project ENTITY/PROJECT"
        )
    results = load_bundles(bundles, searched)
    results.skipped = sorted([*results.skipped, *missing])
    return results
