"""A real Slurm job array: two ``qdgap data info`` tasks on the cluster ``.ci/slurm-up.sh`` starts.

Skips where no Slurm answers; under CI (``CI=true``), where ``.ci/run`` starts the
cluster first, a missing Slurm fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from qdgap.core import slurm
from qdgap.core.data import write_trajectory
from qdgap.core.synthetic import synthetic_trajectory

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

_UP_STATES = ("idle", "mix", "alloc", "comp")


def _no_slurm_reason() -> str | None:
    """Why no Slurm cluster can take jobs here, or None when one can."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm's commands (sinfo, sbatch) are not installed"
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip() or proc.returncode}"
    if not any(line.strip().rstrip("*~#") in _UP_STATES for line in proc.stdout.splitlines()):
        return f"no Slurm node is up (sinfo: {proc.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    reason = _no_slurm_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no Slurm cluster: {reason}; .ci/run must run .ci/slurm-up.sh first")
    pytest.skip(f"no Slurm cluster ({reason}); start one with `sudo bash .ci/slurm-up.sh`")


@pytest.fixture
def traj_h5(tmp_path):
    path = tmp_path / "traj.h5"
    write_trajectory(synthetic_trajectory(30, seed=1), path)
    return path


# Small enough for the CI node; tasks run as the submitting user (root in CI) in tmp_path,
# which the local slurmd can write.
RESOURCES = slurm.SlurmResources(time_min=5, cpus_per_task=1, mem_gb=1, job_name="qdgap-test")


def test_slurm_array_runs_both_tasks(slurm_cluster, tmp_path, traj_h5):
    folder = slurm.slurm_folder(tmp_path / "runs")
    argv = ["data", "info", str(traj_h5)]
    job = slurm.submit([argv, argv], folder=folder, resources=RESOURCES, members=[0, 1], cwd=tmp_path)
    assert job.array and job.tasks == {0: 0, 1: 1}
    assert job.commands[0][:3] == (sys.executable, "-m", "qdgap")  # the venv's Python

    finished: list[int] = []
    states = slurm.wait(job, poll_s=1, timeout_s=300, progress=finished.append)

    assert [s.state for s in states] == ["COMPLETED", "COMPLETED"], [(s.state, s.message) for s in states]
    assert sum(finished) == 2
    for s in states:
        assert s.job_id == f"{job.job_id}_{s.task}"
        out = s.stdout.read_text()
        assert "30, 0-29 fs" in out and "frames" in out, out  # `data info` ran on the file
    assert slurm.load_job(folder) == job


def test_slurm_failed_task_is_resubmitted_alone(slurm_cluster, tmp_path, traj_h5):
    folder = tmp_path / ".slurm"
    later = tmp_path / "later.h5"
    job = slurm.submit(
        [["data", "info", str(traj_h5)], ["data", "info", str(later)]],
        folder=folder,
        resources=RESOURCES,
        members=["good", "late"],
        cwd=tmp_path,
    )
    states = slurm.wait(job, poll_s=1, timeout_s=300)
    assert [s.state for s in states] == ["COMPLETED", "FAILED"]
    assert "later.h5" in states[1].message
    assert [s.member for s in slurm.failed_tasks(job, states)] == ["late"]

    shutil.copy(traj_h5, later)  # mend the cause, then rerun only the failed member
    again = slurm.resubmit_failed(job, states=states)
    assert again is not None and again.members == ("late",) and again.resubmits == job.job_id
    assert [s.state for s in slurm.wait(again, poll_s=1, timeout_s=300)] == ["COMPLETED"]
    assert {m: s.state for m, s in slurm.member_states(folder).items()} == {
        "good": "COMPLETED",
        "late": "COMPLETED",
    }
