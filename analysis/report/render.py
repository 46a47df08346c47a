"""HTML for the report: tables, embedded figures, the page. No numbers are computed here."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

HTML_LONG_TABLE = 25  # rows; longer tables fold into <details>
HTML_MAX_ROWS = 400  # rows; longer tables are only linked (their CSV holds every row)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; }
table.numbers { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0 1.5em; }
table.numbers th, table.numbers td { border-bottom: 1px solid #ddd; padding: 2px 8px;
       text-align: right; }
table.numbers th { background: #f3f3f3; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5em 1em; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def escape(text: str) -> str:
    return html.escape(text)


def table_html(frame: pd.DataFrame, csv_name: str | None = None) -> str:
    """A DataFrame as an HTML table (long ones folded, very long ones only linked)."""
    if len(frame) > HTML_MAX_ROWS and csv_name:
        return (
            f"<p>{len(frame)} rows: too many to show here; every row is in "
            f'<a href="tables/{csv_name}.csv">tables/{csv_name}.csv</a>.</p>'
        )
    shown = frame.copy()
    for column in shown.columns:  # list-valued cells (e.g. a gradient) are not for tables
        if shown[column].map(lambda v: isinstance(v, tuple | list | np.ndarray)).any():
            shown = shown.drop(columns=column)
    text = shown.to_html(
        index=False,
        border=0,
        classes="numbers",
        na_rep="NaN",
        float_format=lambda v: f"{v:.4g}",
        escape=True,
    )
    if len(shown) > HTML_LONG_TABLE:
        return f"<details><summary>{len(shown)} rows (click to show)</summary>{text}</details>"
    return text


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def figure_html(name: str, png: bytes, number: int, caption: str, vector_format: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{encoded}">'
        f"<figcaption><b>Figure {number}.</b> {escape(caption)} "
        f'Files: <a href="figures/{name}.png">figures/{name}.png</a>, '
        f'<a href="figures/{name}.{vector_format}">figures/{name}.{vector_format}</a>.'
        f"</figcaption></figure>"
    )


def table_block(name: str, caption: str, frame: pd.DataFrame) -> str:
    return (
        f'<h3 id="table-{name}">{escape(name.replace("_", " "))}</h3>'
        f"<p>{escape(caption)} "
        f'(<a href="tables/{name}.csv">tables/{name}.csv</a>)</p>' + table_html(frame, name)
    )


def page(body: list[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>pglab report</title><style>"
        + CSS
        + "</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
