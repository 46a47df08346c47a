"""Figures from summarised result tables (seaborn styling, no pyplot state).

Each function takes a tidy, already summarised DataFrame (from :mod:`analysis.stats` or
:mod:`analysis.report`) and returns a ``matplotlib.figure.Figure``; nothing is computed
from raw runs here, so a figure shows exactly the numbers of the table printed beside it.
Figures are built on ``Figure`` objects rather than ``pyplot``, so no global figure list
grows and any backend works; save with ``fig.savefig(path)``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from contextlib import contextmanager

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


def _levels(series: pd.Series) -> list:
    return sorted(series.dropna().unique().tolist())


def _fmt(value) -> str:
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
    names = [(labels or {}).get(level, _fmt(level)) for level in colours]
    for name, kwargs in extra:
        handles.append(Line2D([], [], **kwargs))
        names.append(name)
    fig.legend(handles, names, title=title, loc="outside right center", frameon=False)


def facet_lines(
    frame: pd.DataFrame,
    *,
    facet: str,
    x: str,
    y: str | Sequence[str],
    hue: str,
    ci: tuple[str, str] | Sequence[tuple[str, str] | None] | None = None,
    ylabel: str | Sequence[str] = "",
    xlabel: str = "",
    logx: bool = False,
    logy: bool | Sequence[bool] = False,
    title: str = "",
    hue_title: str | None = None,
    hue_labels: dict | None = None,
    facet_title: str | None = None,
    numeric_hue: bool = False,
    errorbars: bool = True,
    decorate: Callable[[Axes, object, int], list[tuple[str, dict]] | None] | None = None,
) -> Figure:
    """Lines of ``y`` against ``x``, one panel per ``facet`` level, one colour per ``hue``.

    Args:
        frame: tidy summary, one row per (facet, hue, x) with columns ``y`` and the CI pair.
        y: one column, or several to stack as rows of panels (each facet gets one per y);
            ``ci``, ``ylabel`` and ``logy`` then take one entry per y.
        ci: ``(low_column, high_column)`` drawn as error bars with markers (``errorbars``,
            for a few x values) or as a band without markers (for curves).
        facet_title: the facet's name in panel titles (default ``facet``).
        decorate: called as ``decorate(ax, facet_level, y_index)`` to add reference lines;
            it may return extra legend entries ``[(label, Line2D kwargs)]``.
    """
    ys = [y] if isinstance(y, str) else list(y)
    cis = [ci] if ci is None or isinstance(ci[0], str) else list(ci)
    cis = cis * len(ys) if len(cis) == 1 else cis
    ylabels = [ylabel] if isinstance(ylabel, str) else list(ylabel)
    ylabels = ylabels * len(ys) if len(ylabels) == 1 else ylabels
    logys = [logy] if isinstance(logy, bool) else list(logy)
    logys = logys * len(ys) if len(logys) == 1 else logys
    facets = _levels(frame[facet])
    colours = palette(_levels(frame[hue]), numeric=numeric_hue)
    extra: dict[str, dict] = {}
    with style():
        fig, axes = _facet_figure(len(facets), n_rows_per_panel=len(ys))
        for index, level in enumerate(facets):
            part = frame[frame[facet] == level]
            for row, column in enumerate(ys):
                ax = _panel_axes(axes, index, row, len(ys))
                _draw_lines(
                    ax,
                    part,
                    x,
                    column,
                    hue,
                    colours,
                    cis[row],
                    errorbars=errorbars,
                    marker=errorbars,
                    dodge=0.012 if (logx and errorbars and cis[row] is not None) else 0.0,
                )
                if decorate is not None:
                    for name, kwargs in decorate(ax, level, row) or []:
                        extra.setdefault(name, kwargs)
                if logx:
                    set_log(ax, "x")
                elif pd.api.types.is_integer_dtype(frame[x]):
                    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
                if logys[row]:
                    set_log(ax, "y")
                ax.set_title(f"{facet_title or facet} = {_fmt(level)}", fontsize="medium")
                ax.set_xlabel(xlabel or x)
                ax.set_ylabel(ylabels[row] or column)
        _legend(
            fig,
            colours,
            hue_title or hue,
            extra=list(extra.items()),
            labels=hue_labels,
            marker=errorbars,
        )
        if title:
            suptitle(fig, title)
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
    fmt: str = ".3g",
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
    facets = _levels(table[facet]) if facet else [None]
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
                fmt="" if labels is not None else fmt,
                cbar_kws={"label": cbar_label or value},
            )
            ax.invert_yaxis()  # small N at the bottom, like a phase diagram
            ax.set_xticklabels([_fmt(v) for v in grid.columns])
            ax.set_yticklabels([_fmt(v) for v in grid.index], rotation=0)
            ax.set_xlabel(col)
            ax.set_ylabel(row)
            if level is not None:
                ax.set_title(f"{facet} = {_fmt(level)}", fontsize="medium")
        if title:
            suptitle(fig, title)
    return fig
