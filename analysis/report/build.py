"""Assemble the report: run each experiment's section, write figures, tables and the HTML."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analysis.load import Results, skipped_summary
from analysis.report import render
from analysis.report.ascent import ascent_section
from analysis.report.calibration import calibration_section
from analysis.report.common import Section, ci_phrase, under_seeded
from analysis.report.estimator import estimator_section
from analysis.report.gym import gym_sections
from analysis.report.stepsize import stepsize_sections

POOLING = (
    "Pooling: a cell pools the seeds of runs whose configs agree in every other key. A "
    "config key that differs between runs of the same identity (say two sweeps that differ "
    "only in budget) splits the cells: it is named in the section, in figure titles and in "
    "the tables, and each part is counted on its own. Seed counts in captions, tables and "
    "the under-seeded list come from the same cells."
)


def sections(results: Results, confidence: float, level: float, n_resamples: int) -> list[Section]:
    """One section per experiment present (one per env id for gymnasium training)."""
    out = []
    design = results.design
    if not results.estimator.empty:
        out.append(
            estimator_section(
                results.estimator, design.get("estimator", ()), confidence, level, n_resamples
            )
        )
    if not results.calibration.empty:
        out.append(
            calibration_section(
                results.calibration, design.get("calibration", ()), confidence, level
            )
        )
    text = {"confidence": confidence, "resamples": n_resamples}
    out.extend(
        gym_sections(
            results.cartpole_history,
            results.cartpole_summary,
            results.gradient_quality,
            design,
            text,
        )
    )
    out.extend(  # update rules compared on one phase diagram (issue 10)
        stepsize_sections(results.cartpole_history, results.cartpole_summary, design, text)
    )
    if not (results.ascent_history.empty and results.ascent_summary.empty):
        keys = sorted({*design.get("ascent_history", ()), *design.get("ascent_summary", ())})
        out.append(
            ascent_section(
                results.ascent_history, results.ascent_summary, keys, confidence, n_resamples
            )
        )
    return out


def _section_html(section: Section, out: Path, vector_format: str, first_number: int) -> list[str]:
    body = [f"<h2>{render.escape(section.title)}</h2>"]
    if section.intro:
        body.append(f"<p>{render.escape(section.intro)}</p>")
    for number, item in enumerate(section.figures, start=first_number):
        png = render.png_bytes(item.figure)
        (out / "figures" / f"{item.name}.png").write_bytes(png)
        item.figure.savefig(
            out / "figures" / f"{item.name}.{vector_format}",
            format=vector_format,
            metadata={"Date": None} if vector_format == "svg" else {"CreationDate": None},
        )
        body.append(render.figure_html(item.name, png, number, item.caption, vector_format))
    for table in section.tables:
        table.frame.to_csv(out / "tables" / f"{table.name}.csv", index=False)
        body.append(render.table_block(table.name, table.caption, table.frame))
    return body


def _overview_html(results: Results, confidence: float) -> str:
    runs = results.runs
    inputs = ", ".join(f"<code>{render.escape(p)}</code>" for p in results.searched)
    skipped = f" ({render.escape(skipped_summary(results.skipped))})" if results.skipped else ""
    parts = [
        f"<p>Inputs: {inputs}. {len(runs)} job(s) loaded, {len(results.skipped)} skipped"
        f"{skipped}. Intervals: {ci_phrase(confidence)}, bootstrap over seeds (runs) unless "
        f"a caption says otherwise. A percentile bootstrap over fewer than about five seeds "
        f"undercovers (with two seeds it spans their range); read such intervals as "
        f"descriptive.</p>",
        f"<p>{render.escape(POOLING)}</p>",
    ]
    if not runs.empty:
        overview = (
            runs.groupby(["experiment", "status"], dropna=False).size().rename("jobs").reset_index()
        )
        commits = sorted({str(c) for c in runs["git_commit"].dropna()})
        dirty = bool(runs["git_dirty"].fillna(False).astype(bool).any())
        listed = ", ".join(f"<code>{render.escape(c)}</code>" for c in commits) or "unknown"
        parts.append(render.table_html(overview))
        parts.append(
            f"<p>git commit(s): {listed}"
            f"{' (some jobs ran with uncommitted changes)' if dirty else ''}.</p>"
        )
    return "\n".join(parts)


def _under_seeded_html(built: list[Section], out: Path) -> list[str]:
    thin = under_seeded(built)
    body = ["<h2>Under-seeded cells</h2>"]
    if thin.empty:
        body.append("<p>None: every cell of each table has the same number of seeds.</p>")
        return body
    thin.to_csv(out / "tables" / "under_seeded_cells.csv", index=False)
    body.append(
        "<p class='warning'>These cells have fewer seeds than the best-seeded cell "
        "of their table: their means and intervals rest on fewer runs (shown, not "
        "dropped).</p>" + render.table_html(thin)
    )
    return body


def _skipped_html(results: Results, out: Path) -> list[str]:
    body = ["<h2>Skipped runs</h2>"]
    if not results.skipped:
        body.append("<p>None.</p>")
        return body
    skipped = pd.DataFrame(results.skipped, columns=["path", "reason"])
    skipped.to_csv(out / "tables" / "skipped_runs.csv", index=False)
    body.append(
        f"<p class='warning'>{len(skipped)} job(s) found but not loaded "
        f"({render.escape(skipped_summary(results.skipped))}).</p>" + render.table_html(skipped)
    )
    return body


def build_report(
    results: Results,
    out_dir: str | os.PathLike,
    confidence: float = 0.95,
    level: float = 0.05,
    vector_format: str = "svg",
    n_resamples: int = 2000,
) -> Path:
    """Write figures, tables and ``report.html`` for ``results`` into ``out_dir``.

    Args:
        results: from :func:`analysis.load.load_results`.
        confidence: level of every bootstrap CI. level: the unbiasedness-test level.
        vector_format: ``"svg"`` or ``"pdf"``, written beside each PNG.
    Returns:
        the path of ``report.html``.
    """
    if vector_format not in ("svg", "pdf"):
        raise ValueError(f"vector_format must be 'svg' or 'pdf', got {vector_format!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    built = sections(results, confidence, level, n_resamples)
    body = ["<h1>pglab report</h1>", _overview_html(results, confidence)]
    number = 1
    for section in built:
        body.extend(_section_html(section, out, vector_format, number))
        number += len(section.figures)
    if not built:
        body.append("<p>No table of a known experiment was loaded.</p>")
    body.extend(_under_seeded_html(built, out))
    body.extend(_skipped_html(results, out))
    report = out / "report.html"
    report.write_text(render.page(body), encoding="utf-8")
    return report
