"""A real pglab multirun through Hydra's submitit_slurm launcher on the SLURM test cluster.

`make test` (scripts/run_tests.sh) starts a one-node cluster and exports SLURM_CONF;
without one these tests skip with the reason.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import PARTITION, SLURM_SKIP_REASON, run_app
from pglab_jobs import storage

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
        "hydra/launcher=batched_slurm",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.shards=2",
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
