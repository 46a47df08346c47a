"""A real pglab multirun through Hydra's submitit_slurm launcher on the SLURM test cluster.

`make test` (scripts/run_tests.sh) starts a one-node cluster and exports SLURM_CONF;
without one these tests skip with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import PARTITION, REPO, SLURM_SKIP_REASON, run_app
from pglab_jobs import storage

# hydra/launcher=batched_slurm on the test cluster: 2 shards of 1 CPU each.
BATCHED_SLURM = (
    "hydra/launcher=batched_slurm",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.shards=2",
)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(SLURM_SKIP_REASON is not None, reason=SLURM_SKIP_REASON or ""),
]


def test_cartpole_sweep_on_slurm_lands_every_job_and_resumes(tmp_path):
    args = (
        "-m",
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        f"paths.output_dir={tmp_path}",
        "sweep_name=slurm",
        "n_trajectories=2,4",
        "step_size=0.0001,0.001",
        "budget.iterations=5",
        "progress=false",
    )
    proc = run_app("cartpole.py", *args, timeout=300)
    assert "4 done" in proc.stdout, proc.stdout
    sweep = tmp_path / "multirun" / "cartpole" / "slurm"
    jobs = sorted(p.parent for p in sweep.rglob("metadata.json"))
    assert len(jobs) == 4
    cells = set()
    for job in jobs:
        assert storage.is_finished(job)
        meta = storage.read_metadata(job)
        summary = pd.read_parquet(job / "summary.parquet").iloc[0]
        cells.add((summary["n_trajectories"], summary["step_size"]))
        assert len(pd.read_parquet(job / "history.parquet")) == 5
        assert meta["hostname"]  # ran as a SLURM job, recorded like any other
        assert list((job / "wandb").glob("offline-run-*/run-*.wandb")), "one W&B run per job"
    assert cells == {(n, a) for n in (2, 4) for a in (0.0001, 0.001)}
    assert list((sweep / ".submitit").iterdir()), "submitit's job folders are in the sweep dir"

    again = run_app("cartpole.py", *args, timeout=300)
    assert "4 skipped" in again.stdout, again.stdout


def test_batched_sweep_on_slurm_runs_its_shards_as_slurm_jobs_with_the_same_numbers(tmp_path):
    # hydra/launcher=batched_slurm: 4 jobs dealt into 2 SLURM jobs, each training its share
    # in lock-step; every job lands with the numbers the basic launcher gives it.
    grid = (
        "n_trajectories=1,2",
        "step_size=0.0001,0.001",
        "budget.iterations=5",
        "progress=false",
        "sweep_name=batched",
    )
    args = (
        "-m",
        *BATCHED_SLURM,
        f"paths.output_dir={tmp_path / 'slurm'}",
        *grid,
    )
    proc = run_app("cartpole.py", *args, timeout=300)
    assert "4 done" in proc.stdout, proc.stdout
    sweep = tmp_path / "slurm" / "multirun" / "cartpole" / "batched"
    # one SLURM array job with one task per shard, each leaving submitit's result file
    assert len(list((sweep / ".submitit").rglob("*_result.pkl"))) == 2, "2 SLURM jobs"
    local = tmp_path / "local" / "multirun" / "cartpole" / "batched"
    run_app("cartpole.py", "-m", f"paths.output_dir={tmp_path / 'local'}", *grid, timeout=300)

    def histories(root):
        found = {}
        for path in root.rglob("history.parquet"):
            table = pd.read_parquet(path).drop(columns=["wall_time", "sps"])
            found[(table["n_trajectories"].iloc[0], table["step_size"].iloc[0])] = table
        return found

    on_slurm, alone = histories(sweep), histories(local)
    assert len(on_slurm) == 4 and on_slurm.keys() == alone.keys()
    for cell, table in on_slurm.items():
        assert table.equals(alone[cell]), cell
    for job in (p.parent for p in sweep.rglob("metadata.json")):
        assert storage.is_finished(job) and storage.read_metadata(job)["hostname"]
    again = run_app("cartpole.py", *args, timeout=300)
    assert "4 skipped" in again.stdout, again.stdout


def test_a_batched_slurm_shard_that_dies_fails_its_jobs_and_a_rerun_does_them(tmp_path):
    # Two jobs in two shards (dealt round-robin: job #1 to shard _1); the second shard's
    # process is killed (SIGKILL: a lost node or the OOM killer, no warning) as soon as its
    # job is open, while it trains (5*10^4 env steps at N = 2, ~4 s: some 20x the ~0.2 s
    # from "open" to the kill). The first job is short (3,000 env steps), so the sweep ends
    # as soon as the dead shard is noticed. The killed job ends failed, the other lands, the
    # sweep exits non-zero, and the same command then does only the missing job. (scancel
    # would not do: SLURM cancels a step with SIGTERM, which submitit ignores, and sends
    # SIGKILL KillWait = 5 s later, by which time a job this short may have finished.)
    args = (
        "-m",
        *BATCHED_SLURM,
        f"paths.output_dir={tmp_path}",
        "sweep_name=dies",
        "n_trajectories=2",
        "budget.iterations=null",
        "budget.env_steps=3000,50000",
        "progress=false",
        "logger=none",
    )
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "experiments" / "cartpole.py"), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sweep = tmp_path / "multirun" / "cartpole" / "dies"
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        # this sweep's second shard: the array task "<array id>_1" that submitit made a
        # folder for in this sweep (another test's shard may still be ending in the queue)
        ours = {path.name for path in sweep.glob(".submitit/*_1")}
        queue = subprocess.run(
            ["squeue", "-h", "-o", "%i %A %T"], capture_output=True, text=True
        ).stdout.split("\n")
        # (array task, its job id) of the running shards
        running = [line.split()[:2] for line in queue if line.endswith(" RUNNING")]
        victim = next((job for task, job in running if task in ours), None)
        time.sleep(0.2)
    assert victim is not None, "the second shard never ran"
    opened, deadline = False, time.monotonic() + 120
    while not opened and time.monotonic() < deadline and proc.poll() is None:
        metas = [storage.read_metadata(p) for p in sweep.glob("*env_steps=50000*/")]
        opened = any(meta and meta.get("status") == "running" for meta in metas)
        time.sleep(0.05)
    assert opened, "the second shard's job never opened"
    # the shard's own process: step 0 of its SLURM job (the batch script is step "batch")
    listed = subprocess.run(
        ["scontrol", "listpids", victim], capture_output=True, text=True, check=True
    ).stdout.split("\n")[1:]
    pids = [int(row.split()[0]) for row in listed if row.split()[2:3] == ["0"]]
    assert pids, listed
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    assert "1 done" in out and "1 failed" in out, out + err[-3000:]
    finished = [p.parent for p in sweep.rglob("metadata.json") if storage.is_finished(p.parent)]
    assert len(finished) == 1
    again = run_app("cartpole.py", *args, timeout=300)
    assert "1 done" in again.stdout and "1 skipped" in again.stdout, again.stdout
    finished = [p.parent for p in sweep.rglob("metadata.json") if storage.is_finished(p.parent)]
    assert len(finished) == 2
