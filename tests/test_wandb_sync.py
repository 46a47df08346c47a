"""Issue 12: a sweep is one thing to sync (``python -m pglab_jobs.sync SWEEP``) and to
browse (``wandb leet SWEEP/wandb``). The network is stubbed by a fake ``wandb`` executable
on PATH that records how it was called; no account is needed."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_app
from pglab_jobs import sync

from analysis.report.cli import main as report_main
from analysis.wandb_source import load_wandb_offline

FAKE_WANDB = """#!{python}
import json, os, sys
with open(os.environ["FAKE_WANDB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
failing = os.environ.get("FAKE_WANDB_FAIL")
sys.exit(1 if failing and any(failing in a for a in sys.argv[1:]) else 0)
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A default sweep whose jobs hold a path override (``mdp.path=/...`` -> ``%2F``), one
    job re-run (its first run set aside in ``wandb/superseded``), and the report's run."""
    root = tmp_path_factory.mktemp("sync")
    mdp = REPO / "examples" / "mdps" / "two_state.yaml"
    common = (
        "mdp=file",
        f"mdp.path={mdp}",
        "n_trajectories=[2,20]",
        "n_repetitions=10",
        "n_resamples=200",
        "progress=false",
    )
    run_app("estimator_variance.py", "-m", f"paths.output_dir={root}", "seed=0,1", *common)
    run_app(
        "estimator_variance.py", "-m", f"paths.output_dir={root}", "seed=0", "resume=false", *common
    )
    sweep_dir = root / "multirun" / "estimator_variance" / "default"
    assert report_main([str(sweep_dir), "--out", str(sweep_dir / "report"), "--wandb"]) == 0
    return sweep_dir


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "wandb"
    exe.write_text(FAKE_WANDB.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_WANDB_LOG", str(log))
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _current_runs(sweep_dir: Path) -> list[Path]:
    jobs = sorted(p.parent for p in sweep_dir.glob("*/metadata.json"))
    runs = [run for job in jobs for run in job.glob("wandb/offline-run-*")]
    return sorted([*runs, *(sweep_dir / "report" / "wandb").glob("offline-run-*")])


def test_one_command_syncs_every_run_of_a_sweep(sweep, fake_wandb, capsys):
    runs = _current_runs(sweep)
    assert len(runs) == 3  # two jobs and the report
    assert any("%2F" in str(run) for run in runs)  # a path override is in the job's name
    superseded = list(sweep.glob("*/wandb/superseded/offline-run-*"))
    assert len(superseded) == 1
    code = sync.main(
        [str(sweep), "--wandb-command", "wandb", "--parallel", "2", "--project", "proj"]
    )
    assert code == 0
    calls = _calls(fake_wandb)
    # one `wandb sync -p proj RUN_DIR` per run, the path one argument; none for the
    # superseded run, none twice through the sweep's folder of links
    assert sorted(calls) == sorted(["sync", "-p", "proj", str(run)] for run in runs)
    assert "synced 3 of 3 runs" in capsys.readouterr().out


def test_a_failed_run_sync_fails_the_command(sweep, fake_wandb, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_WANDB_FAIL", "seed=1")
    assert sync.main([str(sweep), "--wandb-command", "wandb"]) == 1
    captured = capsys.readouterr()
    assert "synced 2 of 3 runs" in captured.out and "1 failed" in captured.out
    assert "failed (1):" in captured.err and "seed=1" in captured.err


def test_dry_run_prints_the_commands(sweep, capsys):
    assert sync.main([str(sweep), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if " sync " in line]
    assert len(commands) == 3
    assert all(line.startswith(f"{sys.executable} -m wandb sync ") for line in commands)


def test_the_sweep_folder_links_every_run_for_the_local_viewer(sweep):
    assert sync.main([str(sweep), "--link-only"]) == 0
    browse = sweep / sync.BROWSE_DIR
    links = sorted(browse.iterdir())
    # each job linked its run when it finished; sync adds the report's; the run set
    # aside when its job was re-run is no longer linked
    assert all(link.is_symlink() and link.resolve().is_dir() for link in links)
    assert sorted(link.resolve() for link in links) == [r.resolve() for r in _current_runs(sweep)]
    assert all(not os.path.isabs(os.readlink(link)) for link in links)  # the sweep can move
    # W&B's viewer and pglab's reader see the whole sweep through it
    frames = load_wandb_offline(browse)
    assert len(frames["runs"]) == 3
    assert sorted(frames["runs"]["job_type"]) == ["estimator_variance"] * 2 + ["report"]


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert sync.main([str(tmp_path / "nope")]) == 2
    assert "sweep directory" in capsys.readouterr().err
    assert sync.main([str(tmp_path)]) == 2
    assert f"no offline W&B run under {tmp_path}" in capsys.readouterr().err
