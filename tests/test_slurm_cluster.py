"""Tests against a real SLURM cluster.

``make test`` (scripts/run_tests.sh) starts a one-node cluster (scripts/slurm/start.sh) and
exports SLURM_CONF; without one these tests skip with the reason.  They prove the two paths pglab
relies on: plain ``sbatch`` and submitit's SLURM executor (which Hydra's ``submitit_slurm``
launcher drives: it pickles the task and submits a job array).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PARTITION, SLURM_SKIP_REASON

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(SLURM_SKIP_REASON is not None, reason=SLURM_SKIP_REASON or ""),
]


def _job_info(x: int) -> dict:
    """Runs inside the SLURM job."""
    return {
        "square": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "python": sys.executable,
    }


@pytest.fixture
def executor(tmp_path):
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    # Tests are not importable from the job's working directory: ship this module by value,
    # as a real app's task function would be shipped by reference to an importable module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(
        slurm_partition=PARTITION, timeout_min=5, cpus_per_task=1, mem_gb=1, nodes=1
    )
    try:
        yield ex
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.timeout(120)
def test_sbatch_wait_runs_job_and_writes_output(tmp_path):
    out = tmp_path / "job-%j.out"
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            f"--partition={PARTITION}",
            "--job-name=pglab-smoke",
            "--time=2",
            f"--output={out}",
            f"--chdir={tmp_path}",
            "--wrap",
            "echo pglab-ok job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION; pwd",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"sbatch failed ({proc.returncode}): {proc.stderr}"
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), proc.stdout
    text = (tmp_path / f"job-{job_id}.out").read_text()
    assert f"pglab-ok job={job_id} partition={PARTITION}" in text
    assert str(tmp_path) in text


@pytest.mark.timeout(180)
def test_submitit_runs_python_function_on_slurm(executor):
    job = executor.submit(_job_info, 7)
    assert job.job_id.isdigit()
    result = job.result()  # raises with the job's stderr if it failed
    assert result["square"] == 49
    assert result["job_id"] == job.job_id
    # The job ran the same interpreter (the venv's) as the submitter: submitit's default python.
    assert Path(result["python"]).resolve() == Path(sys.executable).resolve()


@pytest.mark.timeout(120)
def test_submitit_reports_job_that_died_without_result(executor):
    """A job that dies before writing its result must raise, not hang the caller forever.

    submitit learns that from `sacct`; the test cluster has no slurmdbd, so this exercises the
    sacct shim that scripts/slurm/start.sh installs (on a real cluster sacct answers itself).
    """
    import submitit

    executor.update_parameters(slurm_setup=["exit 3"])  # the job fails before python starts
    job = executor.submit(_job_info, 1)
    job._results_timeout_s = 1  # default: wait 15 s for a result file that will never come
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="FAILED"):
        job.result()


@pytest.mark.timeout(180)
def test_submitit_job_array(executor):
    """Hydra's submitit launcher submits a multirun as one job array (executor.map_array)."""
    jobs = executor.map_array(_job_info, [2, 3])
    results = [j.result() for j in jobs]
    assert [r["square"] for r in results] == [4, 9]
    assert sorted(r["array_task"] for r in results) == ["0", "1"]
