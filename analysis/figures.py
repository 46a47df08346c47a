"""Figures from summarised result tables (seaborn styling, no pyplot state).

Each function takes a tidy, already summarised DataFrame (from :mod:`analysis.stats` or
:mod:`analysis.report`) and returns a ``matplotlib.figure.Figure``; nothing is computed
from raw runs here, so a figure shows exactly the numbers of the table printed beside it.
Figures are built on ``Figure`` objects rather than ``pyplot``, so no global figure list
grows and any backend works; save with ``fig.savefig(path)``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

PANEL_SIZE = (4.2, 3.4)  # inches per facet
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")  # one per hue level, cycled
MAX_COLUMNS = 4


@contextmanager
def style():
    """seaborn's whitegrid style for the figures built inside, without touching global state."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def palette(levels: Sequence, numeric: bool = False) -> dict:
    """Level -> colour: ``colorblind`` for categories, ``viridis`` (ordered) for numbers."""
    levels = list(levels)
    name = "viridis" if numeric else "colorblind"
    colours = sns.color_palette(name, n_colors=max(len(levels), 1))
    return dict(zip(levels, colours, strict=False))


def levels(series: pd.Series) -> list:
    """The distinct non-missing values of ``series``, sorted."""
    return sorted(series.dropna().unique().tolist())


def fmt(value) -> str:
    """A value as a label: floats in ``%g`` form (``0.001``, ``1e-05``), a list or tuple as
    ``[a, b]`` of its formatted items, others as ``str``."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float | np.floating) else str(value)


class PlainLogFormatter(ticker.LogFormatterSciNotation):
    """Log-axis labels as plain numbers ("0.1", "4", "100") where matplotlib labels a tick."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def set_log(ax: Axes, axis: str) -> None:
    """Log scale on ``axis`` ("x" or "y") with plain-number tick labels."""
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(PlainLogFormatter())
    target.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def suptitle(fig: Figure, text: str) -> None:
    """Figure title wrapped to the figure's width."""
    width = max(int(fig.get_figwidth() * 11), 40)
    fig.suptitle(textwrap.fill(text, width), fontsize="medium")


def _facet_figure(
    n_panels: int, n_rows_per_panel: int = 1, sharey: bool | str = False
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with ``n_panels`` facets (wrapped at MAX_COLUMNS).

    Returns the figure and an axes array ``[n_rows_per_panel * panel_rows, columns]``.
    """
    columns = min(max(n_panels, 1), MAX_COLUMNS)
    panel_rows = int(np.ceil(max(n_panels, 1) / columns))
    rows = panel_rows * n_rows_per_panel
    fig = Figure(
        figsize=(PANEL_SIZE[0] * columns + 1.8, PANEL_SIZE[1] * rows + 0.6), layout="constrained"
    )
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False, sharey=sharey))
    for extra in range(n_panels, panel_rows * columns):  # hide unused wrapped panels
        for k in range(n_rows_per_panel):
            axes[(extra // columns) * n_rows_per_panel + k, extra % columns].set_visible(False)
    return fig, axes


def _panel_axes(axes: np.ndarray, index: int, row: int, n_rows_per_panel: int) -> Axes:
    columns = axes.shape[1]
    return axes[(index // columns) * n_rows_per_panel + row, index % columns]


def _draw_lines(
    ax: Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    colours: dict,
    ci: tuple[str, str] | None,
    style: str = "-",
    marker: bool = True,
    errorbars: bool = True,
    dodge: float = 0.0,
) -> None:
    """One line per hue level, with a CI band (``fill_between``) or error bars.

    ``dodge`` > 0 shifts hue level i by the factor 10^(dodge · (i − centre)) along a log
    x axis so that error bars at the same x do not hide each other (tables keep exact x).
    """
    centre_index = (len(colours) - 1) / 2
    for index, level in enumerate(colours):
        part = frame[frame[hue] == level].sort_values(x)
        if part.empty:
            continue
        colour = colours[level]
        xs = part[x].to_numpy(float) * 10 ** (dodge * (index - centre_index))
        ax.plot(
            xs,
            part[y],
            style,
            color=colour,
            lw=1.6,
            markersize=4,
            marker=MARKERS[index % len(MARKERS)] if marker else None,
        )
        if ci is None:
            continue
        low, high = part[ci[0]].to_numpy(float), part[ci[1]].to_numpy(float)
        if errorbars:
            ok = np.isfinite(low) & np.isfinite(high)
            centre = part[y].to_numpy(float)[ok]
            yerr = np.vstack(
                [np.clip(centre - low[ok], 0, None), np.clip(high[ok] - centre, 0, None)]
            )
            ax.errorbar(
                xs[ok],
                centre,
                yerr=yerr,
                fmt="none",
                ecolor=colour,
                elinewidth=1.2,
                capsize=3,
            )
        else:
            ax.fill_between(xs, low, high, color=colour, alpha=0.2, lw=0)


def _legend(
    fig: Figure,
    colours: dict,
    title: str,
    extra: Sequence[tuple[str, dict]] = (),
    labels: dict | None = None,
    marker: bool = True,
) -> None:
    handles = [
        Line2D(
            [],
            [],
            color=c,
            lw=1.6,
            markersize=4,
            marker=MARKERS[index % len(MARKERS)] if marker else None,
        )
        for index, c in enumerate(colours.values())
    ]
    names = [(labels or {}).get(level, fmt(level)) for level in colours]
    for name, kwargs in extra:
        handles.append(Line2D([], [], **kwargs))
        names.append(name)
    fig.legend(handles, names, title=title, loc="outside right center", frameon=False)


@dataclass(frozen=True)
class Row:
    """One row of panels in :func:`facet_lines`: the column drawn and how.

    Attributes:
        y: the column drawn against ``FacetSpec.x``.
        ci: ``(low_column, high_column)`` drawn as error bars (``FacetSpec.errorbars``) or
            a band; ``None`` for no interval.
        label: the y-axis label (default ``y``).
        log: a log y axis.
    """

    y: str
    ci: tuple[str, str] | None = None
    label: str = ""
    log: bool = False


@dataclass(frozen=True)
class FacetSpec:
    """What :func:`facet_lines` draws: one panel per ``facet`` level, one colour per ``hue``.

    Attributes:
        facet, x, hue: columns of the frame.
        rows: one :class:`Row` per y column, stacked as rows of panels under each facet.
        xlabel: the x-axis label (default ``x``). logx: a log x axis.
        title: the figure title.
        hue_title: the legend title (default ``hue``); hue_labels: legend text per level.
        facet_title: the facet's name in panel titles (default ``facet``).
        numeric_hue: an ordered (viridis) palette for numeric hue levels.
        errorbars: error bars with markers (few x values) rather than bands (curves).
    """

    facet: str
    x: str
    hue: str
    rows: tuple[Row, ...]
    xlabel: str = ""
    logx: bool = False
    title: str = ""
    hue_title: str | None = None
    hue_labels: Mapping | None = None
    facet_title: str | None = None
    numeric_hue: bool = False
    errorbars: bool = True


Decorate = Callable[[Axes, object, int], list[tuple[str, dict]] | None]


def _draw_panel(ax: Axes, part: pd.DataFrame, spec: FacetSpec, row: Row, colours: dict) -> None:
    _draw_lines(
        ax,
        part,
        spec.x,
        row.y,
        spec.hue,
        colours,
        row.ci,
        errorbars=spec.errorbars,
        marker=spec.errorbars,
        dodge=0.012 if (spec.logx and spec.errorbars and row.ci is not None) else 0.0,
    )
    if spec.logx:
        set_log(ax, "x")
    elif pd.api.types.is_integer_dtype(part[spec.x]):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if row.log:
        set_log(ax, "y")
    ax.set_xlabel(spec.xlabel or spec.x)
    ax.set_ylabel(row.label or row.y)


def facet_lines(frame: pd.DataFrame, spec: FacetSpec, decorate: Decorate | None = None) -> Figure:
    """Lines of each ``spec.rows`` column against ``spec.x``: one panel per facet level and
    row, one colour per hue level.

    Args:
        frame: tidy summary, one row per (facet, hue, x) with the rows' columns and CI pairs.
        spec: what to draw (:class:`FacetSpec`).
        decorate: called as ``decorate(ax, facet_level, row_index)`` to add reference lines;
            it may return extra legend entries ``[(label, Line2D kwargs)]``.
    """
    facets = levels(frame[spec.facet])
    colours = palette(levels(frame[spec.hue]), numeric=spec.numeric_hue)
    extra: dict[str, dict] = {}
    with style():
        fig, axes = _facet_figure(len(facets), n_rows_per_panel=len(spec.rows))
        for index, level in enumerate(facets):
            part = frame[frame[spec.facet] == level]
            for row_index, row in enumerate(spec.rows):
                ax = _panel_axes(axes, index, row_index, len(spec.rows))
                _draw_panel(ax, part, spec, row, colours)
                if decorate is not None:
                    for name, kwargs in decorate(ax, level, row_index) or []:
                        extra.setdefault(name, kwargs)
                ax.set_title(f"{spec.facet_title or spec.facet} = {fmt(level)}", fontsize="medium")
        _legend(
            fig,
            colours,
            spec.hue_title or spec.hue,
            extra=list(extra.items()),
            labels=dict(spec.hue_labels) if spec.hue_labels else None,
            marker=spec.errorbars,
        )
        if spec.title:
            suptitle(fig, spec.title)
    return fig


def reference_power_line(
    ax: Axes, x: np.ndarray, anchor: tuple[float, float], power: float = -1.0
) -> None:
    """Draw ``y = anchor_y · (x / anchor_x)^power`` (dashed grey) over the range of ``x``."""
    xs = np.geomspace(np.min(x), np.max(x), 50)
    ax.plot(xs, anchor[1] * (xs / anchor[0]) ** power, "--", color="0.4", lw=1.2)


def heatmap(
    table: pd.DataFrame,
    *,
    row: str,
    col: str,
    value: str,
    annot: pd.DataFrame | None = None,
    annot_format: str = ".3g",
    title: str = "",
    cbar_label: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    facet: str | None = None,
) -> Figure:
    """Heatmap of ``value`` over (``row``, ``col``), optionally one panel per ``facet``.

    Args:
        table: one row per cell (``facet``, ``row``, ``col``) with column ``value``.
        annot: optional text per cell, same grid (``row`` × ``col``) as the pivot of ``table``
            (a column named ``value + "_text"`` in ``table`` is used when given as None and
            present).
    """
    facets = levels(table[facet]) if facet else [None]
    text_column = f"{value}_text"
    with style():
        fig, axes = _facet_figure(len(facets))
        for index, level in enumerate(facets):
            part = table if level is None else table[table[facet] == level]
            grid = (
                part.pivot_table(
                    index=row, columns=col, values=value, aggfunc="first", dropna=False
                )
                .sort_index()
                .sort_index(axis=1)
            )
            labels = None
            if annot is not None:
                labels = annot
            elif text_column in part.columns:
                labels = (
                    part.pivot_table(
                        index=row, columns=col, values=text_column, aggfunc="first", dropna=False
                    )
                    .reindex(index=grid.index, columns=grid.columns)
                    .fillna("")
                )
            ax = _panel_axes(axes, index, 0, 1)
            sns.heatmap(
                grid,
                ax=ax,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                square=False,
                linewidths=0.5,
                annot=labels.to_numpy() if labels is not None else True,
                fmt="" if labels is not None else annot_format,
                cbar_kws={"label": cbar_label or value},
            )
            ax.invert_yaxis()  # small N at the bottom, like a phase diagram
            ax.set_xticklabels([fmt(v) for v in grid.columns])
            ax.set_yticklabels([fmt(v) for v in grid.index], rotation=0)
            ax.set_xlabel(col)
            ax.set_ylabel(row)
            if level is not None:
                ax.set_title(f"{facet} = {fmt(level)}", fontsize="medium")
        if title:
            suptitle(fig, title)
    return fig
