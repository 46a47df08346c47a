"""One self-contained HTML report (plus PNG and SVG/PDF figures) from stored results.

    python -m analysis.report RESULTS_DIR... --out DIR [--confidence 0.95] [--level 0.05]
                              [--vector svg|pdf] [--resamples 2000]

RESULTS_DIR is any mix of job, sweep or output directories (see :mod:`analysis.load`).
Writes ``DIR/report.html`` (figures embedded as base64 PNG, captions, the numbers as
HTML tables), ``DIR/figures/<name>.png`` and ``.svg`` (or ``.pdf``), and
``DIR/tables/<name>.csv``. Sections appear only for the experiments present; exit status
1 when jobs were found but none could be loaded, 2 when nothing was found.

Layout: one module per experiment's section (:mod:`~analysis.report.estimator`,
:mod:`~analysis.report.calibration`, :mod:`~analysis.report.gym` (one section per env
id), :mod:`~analysis.report.ascent`) over :mod:`analysis.figures`, the shared pieces in
:mod:`~analysis.report.common` (sections, cells, seed counts), the HTML in
:mod:`~analysis.report.render`, assembly in :mod:`~analysis.report.build` and the
command line in :mod:`~analysis.report.cli`.

Uncertainty: every interval resamples runs (seeds), never episodes (see
:mod:`analysis.stats`); each caption states the level and the number of seeds, and cells
with fewer seeds than the others of their table are listed, not dropped. Cells pool
seeds only: a config key that differs between runs of the same identity splits the
cells and is named (:func:`analysis.report.common.design_keys`).
"""

from analysis.report.build import build_report
from analysis.report.cli import main

__all__ = ["build_report", "main"]
