"""What every report section is made of: figures, tables, the cells they count, and phrases.

A section never counts seeds on its own: every table whose rows are cells is added with
:meth:`Section.add_cells`, which records the number of runs per cell from that very
table; captions (``seeds_phrase``) and the report's under-seeded list
(:func:`under_seeded`) read those counts, so the three always agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.figure import Figure

from analysis import figures
from pglab.schema import Experiment


@dataclass
class FigureOut:
    name: str  # file stem, unique within the report
    figure: Figure
    caption: str


@dataclass
class TableOut:
    name: str  # file stem of tables/<name>.csv, unique within the report
    caption: str
    frame: pd.DataFrame


@dataclass
class CellCount:
    """Runs per cell of one table: the cell columns ``by`` and ``n_seeds`` per cell."""

    table: str
    by: list[str]
    counts: pd.DataFrame


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[FigureOut] = field(default_factory=list)
    tables: list[TableOut] = field(default_factory=list)
    counts: list[CellCount] = field(default_factory=list)

    def add_figure(self, name: str, figure: Figure, caption: str) -> None:
        self.figures.append(FigureOut(name, figure, caption))

    def add_table(self, name: str, caption: str, frame: pd.DataFrame) -> None:
        self.tables.append(TableOut(name, caption, frame))

    def add_cells(
        self, name: str, caption: str, frame: pd.DataFrame, by: Sequence[str], n: str = "n_seeds"
    ) -> None:
        """Add a table with one row per cell ``by`` whose column ``n`` counts its runs."""
        self.add_table(name, caption, frame)
        by = [c for c in by if c in frame.columns]
        counts = frame[[*by, n]].rename(columns={n: "n_seeds"}).reset_index(drop=True)
        self.counts.append(CellCount(name, by, counts))


def seeds_phrase(n_seeds: pd.Series | Sequence[int]) -> str:
    """``"5 seeds per cell"`` or ``"3–5 seeds per cell"`` from per-cell seed counts."""
    counts = pd.Series(n_seeds, dtype=float).dropna()
    if counts.empty:
        return "no seeds"
    low, high = int(counts.min()), int(counts.max())
    unit = "seed" if high == 1 else "seeds"
    return f"{low} {unit} per cell" if low == high else f"{low}–{high} seeds per cell"


def ci_phrase(confidence: float) -> str:
    return f"{confidence:.0%} CI"


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Those of ``columns`` that ``frame`` has and that take more than one value in it."""
    return [c for c in columns if c in frame.columns and frame[c].map(repr).nunique() > 1]


def slug(text: str) -> str:
    """``"[reinforce, reward_to_go]"`` -> ``"reinforce-reward-to-go"``: for file names."""
    kept = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in text)
    return "-".join(part for part in kept.split("-") if part)


def split_by(
    frame: pd.DataFrame, columns: Sequence[str]
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """``(label, slug, part)`` per combination of the ``columns`` that vary in ``frame``.

    One part (label ``""``) when none varies, so figures are never pooled across, say,
    two optimizers or two budgets.
    """
    split = varying(frame, columns)
    if not split:
        yield "", "", frame
        return
    for _, part in frame.groupby(split, sort=True, dropna=False):
        values = [part[c].iloc[0] for c in split]
        label = ", ".join(f"{c} = {figures.fmt(v)}" for c, v in zip(split, values, strict=True))
        yield label, "_" + "_".join(slug(figures.fmt(v)) for v in values), part


def with_context(title: str, label: str) -> str:
    return f"{title} ({label})" if label else title


def caption_context(label: str) -> str:
    return f" {label}." if label else ""


def design_keys(frame: pd.DataFrame, experiment: Experiment, design: Sequence[str]) -> list[str]:
    """Config columns that split cells: they vary among runs that agree in every identity key.

    A cell pools the seeds of runs whose configs agree in every other key. ``design`` (from
    :attr:`analysis.load.Results.design`) holds every config column that varies across the
    loaded jobs; most vary only with the identity (``mdp.gamma`` with ``mdp``) and change
    nothing, but one that varies among runs of the same identity (two sweeps differing
    only in budget) would pool different designs: it becomes a cell key, shown in labels.
    """
    base = [c for c in experiment.identity if c != "seed" and c in frame.columns]
    out = []
    for column in design:
        if column in experiment.identity or column not in frame.columns or frame.empty:
            continue
        values = frame[column].map(repr)
        spread = values.groupby([frame[b].map(repr) for b in base]).nunique() if base else None
        if (spread.max() if spread is not None else values.nunique()) > 1:
            out.append(column)
    return out


def cell_text(row: pd.Series, by: Sequence[str]) -> str:
    return ", ".join(f"{c}={figures.fmt(row[c])}" for c in by)


def under_seeded(sections: Sequence[Section]) -> pd.DataFrame:
    """Cells with fewer runs than the best-seeded cell of the same table (every section).

    One row per cell: a cell counted by several tables (returns and collapse) names them
    all in ``table``.
    """
    found: dict[tuple[str, int, int], list[str]] = {}
    for section in sections:
        for count in section.counts:
            if count.counts.empty:
                continue
            expected = int(count.counts["n_seeds"].max())
            for _, cell in count.counts[count.counts["n_seeds"] < expected].iterrows():
                key = (cell_text(cell, count.by), int(cell["n_seeds"]), expected)
                found.setdefault(key, []).append(count.table)
    rows = [
        {"table": ", ".join(tables), "cell": cell, "n_seeds": n, "expected": expected}
        for (cell, n, expected), tables in found.items()
    ]
    return pd.DataFrame(rows, columns=["table", "cell", "n_seeds", "expected"])
