"""The report as one W&B run (``python -m analysis.report ... --wandb``), offline by default.

=============  ==========================================================================
project        ``--wandb-project`` (default ``pglab``, as ``logger.project``)
group          ``--wandb-group``, else the jobs' own group when they share one (the sweep:
               ``sweep_name``, or for the default sweep the id its jobs recorded in
               ``<sweep_dir>/.pglab-wandb-group``); else none
job_type       ``report``
name           ``report <group>`` (or ``report``)
history        one row: ``figures/<name>`` a ``wandb.Image`` per figure (PNG) the report
               wrote, ``tables/<name>`` a ``wandb.Table`` per CSV table it wrote
artifact       ``report-<group>`` of type ``report``: ``report.html`` and ``tables/*.csv``
summary        ``n_jobs``, ``n_skipped``, ``n_figures``, ``n_tables``
config         the report's inputs and options
=============  ==========================================================================

Offline runs go to ``<out>/wandb/offline-run-*`` (upload: ``wandb sync <that folder>``).
Like the jobs' runs, W&B never costs the local report: an error here is one warning line.
This module reads only what the report wrote; it never imports training code.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import Results

#: Where a default sweep records its W&B group (``pglab_jobs.naming.GROUP_FILE``; the two
#: are checked equal by tests/test_wandb_report.py).
GROUP_FILE = ".pglab-wandb-group"
DEFAULT_SWEEP = "default"
JOB_TYPE = "report"
MODES = ("offline", "online")


def job_groups(results: Results) -> list[str]:
    """The W&B groups of the loaded jobs (``pglab_jobs.naming.sweep_group``), sorted."""
    groups = set()
    for run_dir, sweep_name in zip(
        results.runs["run_dir"], results.runs["sweep_name"], strict=True
    ):
        if sweep_name is None or (isinstance(sweep_name, float) and pd.isna(sweep_name)):
            continue  # a single run has no group
        if sweep_name != DEFAULT_SWEEP:
            groups.add(str(sweep_name))
            continue
        try:
            recorded = (Path(run_dir).parent / GROUP_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if recorded:
            groups.add(recorded)
    return sorted(groups)


def written_since(folder: Path, pattern: str, since: float) -> list[Path]:
    """Files matching ``pattern`` in ``folder`` written at or after ``since`` (this build's)."""
    return sorted(p for p in folder.glob(pattern) if p.stat().st_mtime >= since)


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.\-]", "_", name)


def log_report(
    out: str | os.PathLike,
    results: Results,
    figures: Iterable[Path],
    tables: Iterable[Path],
    *,
    project: str = "pglab",
    entity: str | None = None,
    group: str | None = None,
    mode: str = "offline",
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Log the report written in ``out`` as one W&B run (module table).

    Args:
        out: the report directory (``report.html``, ``figures/``, ``tables/``).
        figures, tables: the PNG and CSV files this build wrote.
        group: ``None``: the jobs' shared group (:func:`job_groups`), if any.
    Returns:
        ``{"run_dir", "group", "images", "tables", "sync"}``: the offline run's folder,
        the group used, the keys logged and the ``wandb sync`` command (offline).
    """
    if mode not in MODES:
        raise ValueError(f"--wandb-mode must be one of {MODES}, got {mode!r}")
    import wandb

    out = Path(out)
    if group is None:
        groups = job_groups(results)
        group = groups[0] if len(groups) == 1 else None
    figures, tables = list(figures), list(tables)
    run = wandb.init(
        project=project,
        entity=entity,
        group=group,
        job_type=JOB_TYPE,
        name=f"report {group}" if group else "report",
        config=config or {},
        dir=str(out),
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    try:
        row: dict[str, Any] = {}
        for png in figures:
            row[f"figures/{_key(png.stem)}"] = wandb.Image(str(png), caption=png.stem)
        for csv in tables:
            frame = pd.read_csv(csv)
            row[f"tables/{_key(csv.stem)}"] = wandb.Table(dataframe=frame)
        run.log(row)
        run.summary.update(
            {
                "n_jobs": len(results.runs),
                "n_skipped": len(results.skipped),
                "n_figures": len(figures),
                "n_tables": len(tables),
            }
        )
        artifact = wandb.Artifact(_key(f"report-{group or project}"), type=JOB_TYPE)
        artifact.add_file(str(out / "report.html"), name="report.html")
        for csv in tables:
            artifact.add_file(str(csv), name=f"tables/{csv.name}")
        run.log_artifact(artifact)
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
        # finish() returns before W&B's service has written the whole log; the command
        # ends here, so wait for it: the run is complete when "wandb sync" is printed
        wandb.teardown()
    return {
        "run_dir": run_dir,
        "group": group,
        "images": sorted(k for k in row if k.startswith("figures/")),
        "tables": sorted(k for k in row if k.startswith("tables/")),
        "sync": f"wandb sync {shlex.quote(str(run_dir))}" if mode == "offline" else None,
    }
