"""The command line: ``python -m analysis.report RESULTS_DIR... --out DIR``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from analysis.load import load_results, skipped_summary
from analysis.report.build import build_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Figures and a self-contained HTML report from pglab result directories.",
    )
    parser.add_argument("results", nargs="+", help="job, sweep or output directories")
    parser.add_argument("--out", required=True, help="directory for report.html, figures/, tables/")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level (default 0.95)")
    parser.add_argument(
        "--level",
        type=float,
        default=0.05,
        help="level of the unbiasedness test verdicts (default 0.05)",
    )
    parser.add_argument(
        "--vector",
        choices=("svg", "pdf"),
        default="svg",
        help="vector format written beside each PNG (default svg)",
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 with a report; 2 for a usage error or no results at all; 1 when jobs
    were found but none could be loaded (one line naming the counts of each skip reason)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.confidence < 1:
        parser.error(f"--confidence must be in (0, 1), got {args.confidence}")
    if not 0 < args.level < 1:
        parser.error(f"--level must be in (0, 1), got {args.level}")
    if args.resamples < 100:
        parser.error(f"--resamples must be >= 100, got {args.resamples}")
    try:  # a missing path or no results is a usage error, not a crash: message, exit 2
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            results = load_results(args.results)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if results.runs.empty:
        print(
            f"error: 0 jobs loaded, {len(results.skipped)} skipped: "
            f"{skipped_summary(results.skipped)} (no report written)",
            file=sys.stderr,
        )
        return 1
    report = build_report(
        results,
        args.out,
        confidence=args.confidence,
        level=args.level,
        vector_format=args.vector,
        n_resamples=args.resamples,
    )
    print(f"report: {report} ({len(results.runs)} jobs, {len(results.skipped)} skipped)")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
