"""A sweep is one thing to upload and to browse: ``python -m pglab_jobs.sync SWEEP_DIR``.

Each job of a sweep logs its own offline W&B run (``<job>/wandb/offline-run-*``), so a
sweep holds many run folders. This command

* **uploads** every one of them: ``wandb sync RUN_DIR`` per run, ``--parallel`` at a time
  (default 4), each path passed as one argument (no shell glob: an override holding a path,
  a space or a comma is safe). Runs of earlier attempts (``wandb/superseded/``) are left
  out. The report's run (``analysis.report ... --wandb --out <sweep>/report``) is under the
  sweep too and goes with it. Needs ``wandb login`` (or ``WANDB_API_KEY``) and the network;
  ``--dry-run`` only prints the commands;
* **links** the runs into one folder W&B's local viewer reads, ``<sweep>/wandb/`` (a
  relative symbolic link per run, the same as each job adds when it finishes), so
  ``wandb leet <sweep>/wandb`` browses the whole sweep offline. ``--link-only`` does just
  this.

    python -m pglab_jobs.sync outputs/multirun/cartpole/my_sweep            # upload
    python -m pglab_jobs.sync outputs/multirun/cartpole/my_sweep --dry-run  # show commands
    python -m pglab_jobs.sync outputs/multirun/cartpole/my_sweep --link-only
    wandb leet outputs/multirun/cartpole/my_sweep/wandb                      # browse offline

Exit status 0 when every run synced, 1 when one failed (its output's tail is printed), 2
for a usage error (a path that is not a directory, no offline run under it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: The sweep-level folder of links W&B's local viewer opens (``wandb leet <sweep>/wandb``).
BROWSE_DIR = "wandb"
SUPERSEDED = "superseded"  # pglab_jobs.job sets the runs of earlier attempts aside here
RUN_PREFIXES = ("offline-run-",)  # online runs (wandb/run-*) are uploaded already


def _is_run_dir(path: Path) -> bool:
    return path.name.startswith(RUN_PREFIXES) and any(path.glob("run-*.wandb"))


def offline_run_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """Every offline run folder under ``sweep_dir``, sorted; links and superseded runs are
    not entered (the browse folder's links point at runs found anyway)."""
    found = []
    for folder, dirnames, _ in os.walk(sweep_dir):  # followlinks=False
        here = Path(folder)
        if _is_run_dir(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(
            d for d in dirnames if d != SUPERSEDED and not os.path.islink(here / d)
        )
    return sorted(found)


def link_run(browse_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Link ``run_dir`` into ``browse_dir`` (relative link named after the run); drop links
    whose run is gone (a re-run job's earlier run, set aside). Returns the link."""
    browse_dir, run_dir = Path(browse_dir), Path(run_dir)
    browse_dir.mkdir(parents=True, exist_ok=True)
    for entry in browse_dir.iterdir():
        if entry.is_symlink() and not entry.exists():
            entry.unlink(missing_ok=True)
    link = browse_dir / run_dir.name
    target = os.path.relpath(run_dir.resolve(), browse_dir.resolve())
    if link.is_symlink() and os.readlink(link) == target:
        return link
    draft = browse_dir / f".{run_dir.name}.{os.getpid()}"
    draft.unlink(missing_ok=True)
    os.symlink(target, draft)
    os.replace(draft, link)  # atomic: two jobs finishing together never see half a link
    return link


def link_sweep(sweep_dir: str | os.PathLike) -> tuple[Path, list[Path]]:
    """Link every run of the sweep into ``<sweep>/wandb/``; returns the folder and runs."""
    runs = offline_run_dirs(sweep_dir)
    browse = Path(sweep_dir) / BROWSE_DIR
    for run in runs:
        link_run(browse, run)
    return browse, runs


def sync_command(
    wandb_command: Sequence[str], run_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """``[*wandb_command, "sync", *extra, RUN_DIR]``: the path is one argument."""
    return [*wandb_command, "sync", *extra, str(run_dir)]


def _run(command: list[str]) -> tuple[list[str], int, str]:
    proc = subprocess.run(command, capture_output=True, text=True)
    return command, proc.returncode, (proc.stdout + proc.stderr).strip()


def sync_runs(
    runs: Sequence[Path],
    wandb_command: Sequence[str],
    parallel: int = 4,
    extra: Sequence[str] = (),
) -> list[tuple[list[str], int, str]]:
    """Run ``wandb sync`` on every run, ``parallel`` at a time; ``(command, rc, output)``."""
    commands = [sync_command(wandb_command, run, extra) for run in runs]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(_run, commands))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pglab_jobs.sync",
        description="Upload every offline W&B run of a sweep (wandb sync, in parallel) and "
        "link them into <sweep>/wandb/ for `wandb leet`.",
    )
    parser.add_argument("sweeps", nargs="+", help="sweep directories (or any parent)")
    parser.add_argument("--parallel", type=int, default=4, help="syncs at a time (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--link-only", action="store_true", help="only build <sweep>/wandb/")
    parser.add_argument("--project", help="upload into this W&B project (wandb sync -p)")
    parser.add_argument("--entity", help="upload under this W&B entity (wandb sync -e)")
    parser.add_argument(
        "--wandb-command",
        default=None,
        help="the W&B CLI to run (default: this Python's `python -m wandb`)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    runs: list[Path] = []
    for sweep in args.sweeps:
        if not Path(sweep).is_dir():
            print(f"error: sweep directory {sweep} does not exist", file=sys.stderr)
            return 2
        browse, found = link_sweep(sweep)
        if not found:
            print(f"error: no offline W&B run under {sweep}", file=sys.stderr)
            return 2
        print(
            f"{len(found)} runs under {sweep}; browse offline: wandb leet {shlex.quote(str(browse))}"
        )
        runs.extend(found)
    if args.link_only:
        return 0
    wandb_command = (
        shlex.split(args.wandb_command) if args.wandb_command else [sys.executable, "-m", "wandb"]
    )
    extra = [
        *(["-p", args.project] if args.project else []),
        *(["-e", args.entity] if args.entity else []),
    ]
    if args.dry_run:
        for run in runs:
            print(shlex.join(sync_command(wandb_command, run, extra)))
        return 0
    start = time.perf_counter()
    outcomes = sync_runs(runs, wandb_command, parallel=args.parallel, extra=extra)
    failed = [(command, rc, out) for command, rc, out in outcomes if rc != 0]
    for command, rc, out in failed:
        print(f"failed ({rc}): {shlex.join(command)}\n  {out[-500:]}", file=sys.stderr)
    print(
        f"synced {len(runs) - len(failed)} of {len(runs)} runs in "
        f"{time.perf_counter() - start:.1f} s ({args.parallel} at a time)"
        + (f", {len(failed)} failed" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
