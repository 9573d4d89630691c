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

from qdgap.core.data.trajectory import write_trajectory
from qdgap.core.workflow import slurm, slurm_states
from qdgap.testing.synthetic import synthetic_trajectory

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
    states = slurm_states.wait(job, poll_s=1, timeout_s=300, progress=finished.append)

    assert [s.state for s in states] == ["COMPLETED", "COMPLETED"], [(s.state, s.message) for s in states]
    assert sum(finished) == 2
    for s in states:
        assert s.job_id == f"{job.job_id}_{s.task}"
        out = s.stdout.read_text()
        assert "30, 0-29 fs" in out and "frames" in out, out  # `data info` ran on the file
    assert slurm.load_jobs(folder)[-1] == job


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
    states = slurm_states.wait(job, poll_s=1, timeout_s=300)
    assert [s.state for s in states] == ["COMPLETED", "FAILED"]
    assert "later.h5" in states[1].message
    assert [s.member for s in [s for s in states if s.failed]] == ["late"]

    shutil.copy(traj_h5, later)  # mend the cause, then rerun only the failed member
    failed = [s for s in states if s.failed]
    again = slurm.submit(
        [job.argvs[s.task] for s in failed], folder=folder, resources=RESOURCES, members=["late"], cwd=tmp_path
    )
    assert again.members == ("late",)
    assert [s.state for s in slurm_states.wait(again, poll_s=1, timeout_s=300)] == ["COMPLETED"]
    assert {m: s.state for m, s in slurm_states.member_states(folder).items()} == {
        "good": "COMPLETED",
        "late": "COMPLETED",
    }


# --------------------------------------------------------------------------
# predict and FNA as job arrays: one task per member x block of frames, merged by the submitter
# --------------------------------------------------------------------------
SLURM_OPTS = ("--backend", "slurm", "--wait", "--cpus", "1", "--mem", "1", "--time", "5", "--device", "cpu")
FNA_OPTS = ("--every", "12", "--bootstrap", "200")  # 9 of the 108 unseen frames


def _datasets(path):
    import h5py

    with h5py.File(path, "r") as h5:
        return {k: h5[k][()] for k in h5}, dict(h5.attrs)


def _assert_same_results(local, merged):
    """Every dataset of ``merged`` equals ``local``'s to float32 rounding (eV, meV)."""
    import numpy as np

    a, _ = _datasets(local)
    b, _ = _datasets(merged)
    assert sorted(a) == sorted(b)
    for k in a:
        if a[k].dtype.kind == "f":
            # float32 rounding of ~2 eV gaps: 1e-5 eV; meV and the statistics made from them: 1e-2.
            atol = 1e-5 if k.endswith("_ev") else 1e-2
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=atol, err_msg=k)
        else:
            assert np.array_equal(a[k], b[k]), k


@pytest.fixture
def fast_poll(monkeypatch):
    from qdgap.core.workflow import part_array

    monkeypatch.setattr(part_array, "POLL_S", 1.0)


def test_slurm_predict_array_matches_local_run(slurm_cluster, fast_poll, run_cli, tmp_path, tiny_runs, synthetic_h5):
    from qdgap.core.analysis import parts

    common = ("--runs", tiny_runs, "--data", synthetic_h5)
    local = tmp_path / "local" / "predictions.h5"
    assert run_cli("--quiet", "predict", *common, "-o", local, "--device", "cpu").exit_code == 0
    out = tmp_path / "array" / "predictions.h5"
    r = run_cli("--quiet", "predict", *common, "-o", out, *SLURM_OPTS, "--frames-per-task", "60")
    assert r.exit_code == 0, r.stderr

    _assert_same_results(local, out)
    job = slurm.load_jobs(slurm.slurm_folder(parts.parts_folder(out)))[-1]
    assert job.members == ("0:0", "0:1", "1:0", "1:1")  # 2 members x 2 blocks of the 108 unseen frames
    _, attrs = _datasets(out)
    assert attrs["slurm_jobs"] == job.job_id and attrs["slurm_parts"] == 4 and attrs["frames_per_task"] == 60
    status = run_cli("status", out)
    assert status.exit_code == 0 and "4 done (merged)" in status.stdout, status.stdout


def test_slurm_fna_killed_part_is_resubmitted_alone(
    slurm_cluster, fast_poll, monkeypatch, run_cli, tmp_path, tiny_runs, synthetic_h5
):
    from qdgap.core.analysis import parts

    common = ("--runs", tiny_runs, "--data", synthetic_h5, *FNA_OPTS)
    local = tmp_path / "local" / "fna.h5"
    assert run_cli("--quiet", "fna", *common, "-o", local, "--device", "cpu").exit_code == 0
    out = tmp_path / "array" / "fna.h5"
    # The task of part 1:0 kills itself (SIGKILL) with its part complete but not yet renamed into place.
    monkeypatch.setenv("QDGAP_TEST_KILL", "write/fna-seed1-b0.npz@1")
    r = run_cli("--quiet", "fna", *common, "-o", out, *SLURM_OPTS, "--frames-per-task", "5")
    assert r.exit_code == 2 and "1 of 4 fna part(s) failed (1:0)" in r.stderr, r.stderr
    assert "nothing merged" in r.stderr and "killed?" in r.stdout
    assert not out.exists() and not (out.parent / "average_rmse_results.csv").exists()
    first = slurm.load_jobs(slurm.slurm_folder(parts.parts_folder(out)))[-1]
    assert list(parts.parts_folder(out).glob(".fna-seed1-b0.npz.*.tmp"))  # killed between write and rename

    monkeypatch.delenv("QDGAP_TEST_KILL")
    r = run_cli("--quiet", "fna", *common, "-o", out, *SLURM_OPTS, "--frames-per-task", "5")
    assert r.exit_code == 0, r.stderr
    again = slurm.load_jobs(slurm.slurm_folder(parts.parts_folder(out)))[-1]
    assert again.job_id != first.job_id and again.members == ("1:0",)  # only the missing part ran again
    assert first.resubmits is None and again.resubmits == first.job_id  # the record says what it reruns
    assert not list(parts.parts_folder(out).glob(".*.tmp"))  # the rerun cleared the killed write
    _assert_same_results(local, out)
    _, attrs = _datasets(out)
    assert attrs["slurm_jobs"] == f"{first.job_id},{again.job_id}"
    with open(local.parent / "average_rmse_results.csv") as a, open(out.parent / "average_rmse_results.csv") as b:
        assert [ln.split(",")[0] for ln in a][:5] == [ln.split(",")[0] for ln in b][:5]  # same top atoms


def test_slurm_unknown_partition_is_one_line(slurm_cluster, run_cli, tmp_path, tiny_runs, synthetic_h5):
    out = tmp_path / "predictions.h5"
    r = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--backend", "slurm",
                "--partition", "no-such-partition")  # fmt: skip
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sbatch refused the job array" in lines[0] and "partition" in lines[0].lower(), lines
    assert not out.exists()
