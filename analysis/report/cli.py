"""The command line: ``python -m analysis.report RESULTS_DIR... --out DIR``.

    python -m analysis.report SWEEP_DIR --out OUT                  # from the parquet results
    python -m analysis.report SWEEP_DIR --out OUT --wandb          # ... and log it to W&B
    python -m analysis.report --from-wandb SWEEP_DIR --out OUT     # from its offline W&B runs
    python -m analysis.report --from-wandb ENTITY/PROJECT --out OUT  # from W&B (the API)

``--from-wandb`` reads the results each job attached to its W&B run
(``analysis.wandb_source.load_wandb_results``) through the same schema and checks as the
parquet loader, so both give the same report. ``--wandb`` logs the report as one run
(``analysis.report.wandb_run``), offline unless ``--wandb-mode online``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

from analysis.load import load_results, skipped_summary
from analysis.report.build import build_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Figures and a self-contained HTML report from pglab result directories.",
    )
    parser.add_argument("results", nargs="*", help="job, sweep or output directories")
    parser.add_argument(
        "--from-wandb",
        metavar="PATH_OR_PROJECT",
        help="read the jobs from their W&B runs instead: a folder holding offline runs "
        "(a sweep directory) or a project ENTITY/PROJECT (the W&B API)",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log the report as a W&B run (job_type=report)"
    )
    parser.add_argument("--wandb-project", default="pglab", help="W&B project (default pglab)")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity (default: yours)")
    parser.add_argument(
        "--wandb-group", default=None, help="W&B group (default: the jobs' sweep, if one)"
    )
    parser.add_argument(
        "--wandb-mode",
        choices=("offline", "online"),
        default="offline",
        help="offline (default: no account or network; upload with wandb sync) or online",
    )
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
    if bool(args.results) == bool(args.from_wandb):
        parser.error(
            "give result directories or --from-wandb PATH_OR_PROJECT (one of the two), got "
            + (
                f"both ({' '.join(args.results)} and {args.from_wandb})"
                if args.results
                else "neither"
            )
        )
    try:  # a missing path or no results is a usage error, not a crash: message, exit 2
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            if args.from_wandb:
                from analysis.wandb_source import load_wandb_results

                results = load_wandb_results(args.from_wandb)
            else:
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
    started = time.time() - 1.0  # file times may be rounded to the second
    report = build_report(
        results,
        args.out,
        confidence=args.confidence,
        level=args.level,
        vector_format=args.vector,
        n_resamples=args.resamples,
    )
    print(f"report: {report} ({len(results.runs)} jobs, {len(results.skipped)} skipped)")
    if args.wandb:
        _log_to_wandb(args, results, report.parent, started)
    return 0


def _log_to_wandb(args: argparse.Namespace, results, out, started: float) -> None:
    """Log the report as a W&B run; a failure is one warning (the report stands)."""
    from analysis.report import wandb_run

    try:
        logged = wandb_run.log_report(
            out,
            results,
            wandb_run.written_since(out / "figures", "*.png", started),
            wandb_run.written_since(out / "tables", "*.csv", started),
            project=args.wandb_project,
            entity=args.wandb_entity,
            group=args.wandb_group,
            mode=args.wandb_mode,
            config={
                "inputs": results.searched,
                "confidence": args.confidence,
                "level": args.level,
                "resamples": args.resamples,
            },
        )
    except Exception as error:  # W&B must never cost the local report
        print(f"warning: W&B logging failed ({type(error).__name__}: {error})", file=sys.stderr)
        return
    group = f" in group {logged['group']}" if logged["group"] else ""
    print(
        f"W&B report run{group}: {len(logged['images'])} figures, {len(logged['tables'])} "
        f"tables, report.html -> {logged['run_dir']}"
    )
    if logged["sync"]:
        print(f"upload it: {logged['sync']}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
