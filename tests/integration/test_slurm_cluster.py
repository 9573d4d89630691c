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

from qdgap.core.common.errors import QdgapError
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
    assert len(lines) == 1 and "--partition no-such-partition: no such Slurm partition; the cluster has" in lines[0], (
        lines
    )
    assert not out.exists()


# --------------------------------------------------------------------------
# The request against the partition; defaults that fit; the waiting made visible
# --------------------------------------------------------------------------
SHORT = "qdgap-test-short"  # a partition with MaxTime=10, made for one test and deleted after it


def _scontrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def short_partition(slurm_cluster):
    """Partition ``qdgap-test-short`` on the cluster's nodes, MaxTime 10 minutes (``scontrol create``); deleted after."""
    nodes = subprocess.run(["sinfo", "--noheader", "--format=%N"], capture_output=True, text=True, timeout=30).stdout
    _scontrol("delete", f"PartitionName={SHORT}")  # left by an interrupted run
    made = _scontrol("create", f"PartitionName={SHORT}", f"Nodes={nodes.split()[0]}", "MaxTime=10", "State=UP")
    assert made.returncode == 0, made.stderr
    yield SHORT
    _scontrol("delete", f"PartitionName={SHORT}")


def _records(out):
    from qdgap.core.analysis import parts

    return slurm.load_jobs(slurm.slurm_folder(parts.parts_folder(out)))


def test_slurm_more_cpus_than_a_node_has_is_refused_before_submission(
    slurm_cluster, run_cli, tmp_path, tiny_runs, synthetic_h5
):
    out = tmp_path / "predictions.h5"
    r = run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--backend", "slurm",
                "--wait", "--cpus", "64")  # fmt: skip
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--cpus 64: no node of partition" in lines[0] and "the largest has" in lines[0], lines
    assert _records(out) == [] and not out.exists()  # nothing submitted


def test_slurm_time_over_the_partition_maxtime_is_refused(
    slurm_cluster, short_partition, run_cli, tmp_path, tiny_runs, synthetic_h5
):
    out = tmp_path / "fna.h5"
    r = run_cli("--quiet", "fna", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--backend", "slurm",
                "--partition", short_partition, "--time", "30", "--cpus", "1")  # fmt: skip
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"--time 30: over partition {short_partition}'s MaxTime of 10 min" in lines[0], lines
    assert _records(out) == []


def test_slurm_defaults_fit_the_node_and_run_to_the_end(
    slurm_cluster, short_partition, fast_poll, run_cli, tmp_path, tiny_runs, synthetic_h5
):
    out = tmp_path / "predictions.h5"
    r = run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--backend", "slurm",
                "--wait", "--device", "cpu", "--partition", short_partition)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    (job,) = _records(out)
    node = job.partition["nodes"][0]
    # No --cpus/--mem/--time: all of one node's CPUs (at most 4), its memory in proportion, the usual
    # 60 min cut to the partition's MaxTime.
    assert job.sized == ("--cpus", "--mem", "--time")
    assert job.resources.cpus_per_task == min(4, node["cpus"]) and job.resources.time_min == 10
    assert job.resources.mem_gb * 1024 <= node["mem_mb"]
    assert f"Slurm partition {short_partition}: its largest node" in r.stdout and job.sizing in r.stdout
    assert f"job array {job.job_id} (2 tasks): 2 done" in r.stdout
    assert out.is_file()


def test_slurm_array_that_can_never_start_is_cancelled_with_its_reason(slurm_cluster, monkeypatch, tmp_path, traj_h5):
    """What the checks before submission prevent, where they cannot see (here: turned off): 64 CPUs on a
    2-CPU node pend for PartitionConfig; the wait cancels the array at once and says why."""
    from qdgap.core.workflow import slurm_partition

    monkeypatch.setattr(slurm_partition, "query", lambda name: None)
    argv = ["data", "info", str(traj_h5)]
    res = slurm.SlurmResources(time_min=5, cpus_per_task=64, mem_gb=1, job_name="qdgap-test")
    job = slurm.submit([argv, argv], folder=tmp_path / ".slurm", resources=res, cwd=tmp_path)
    lines: list[str] = []
    with pytest.raises(QdgapError) as exc:
        slurm_states.wait(job, poll_s=1, timeout_s=60, report=lines.append)
    assert "can never start" in str(exc.value) and "(PartitionConfig)" in str(exc.value), str(exc.value)
    assert any("pending (PartitionConfig" in ln for ln in lines), lines
    states = slurm_states.task_states(job)
    assert all(s.state == "CANCELLED" for s in states), [(s.state, s.reason) for s in states]


def test_slurm_held_array_shows_its_reason_and_finishes_after_release(slurm_cluster, tmp_path, tiny_runs, synthetic_h5):
    """`predict --backend slurm --wait` in its own process; the array is held by hand (`scontrol hold`):
    the command and `qdgap status` say so, and once released the array runs and the command ends well."""
    import threading
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # Fill the node first, so that the array is still pending when it is held.
    blocker = subprocess.run(["sbatch", "--parsable", "--job-name=qdgap-test-blocker", "--cpus-per-task",
                              _node_cpus(), "--time=5", "--output=/dev/null", "--wrap", "sleep 120"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip().split(";")[0]  # fmt: skip
    out = tmp_path / "predictions.h5"
    command = [sys.executable, "-m", "qdgap", "--quiet", "predict", "--runs", str(tiny_runs), "--data",
               str(synthetic_h5), "-o", str(out), "--backend", "slurm", "--wait", "--device", "cpu", "--cpus", "1",
               "--mem", "1", "--time", "5"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not _records(out) and time.monotonic() < deadline:
            time.sleep(0.5)
        (job,) = _records(out)
        assert _scontrol("hold", job.job_id).returncode == 0
        subprocess.run(["scancel", blocker], timeout=30, check=False)
        while not any("JobHeld" in ln for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.5)
        status = subprocess.run([sys.executable, "-m", "qdgap", "status", str(out)], capture_output=True, text=True,
                                env=env, timeout=120)  # fmt: skip
        assert _scontrol("release", job.job_id).returncode == 0
        proc.wait(timeout=300)
    finally:
        subprocess.run(["scancel", blocker], timeout=30, check=False)
        if proc.poll() is None:
            proc.kill()
            for j in _records(out):  # only the array this test submitted
                subprocess.run(["scancel", j.job_id], timeout=30, check=False)
    reader.join(timeout=10)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    held = [ln for ln in lines if f"job array {job.job_id} (2 tasks): 2 pending (JobHeld" in ln]
    assert held and "scontrol release" in held[0], lines
    assert "JobHeld" in status.stdout, status.stdout
    assert lines.index(held[0]) < max(i for i, ln in enumerate(lines) if "2 done" in ln)
    assert out.is_file()


def _node_cpus() -> str:
    text = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%c"], capture_output=True, text=True, timeout=30)
    return text.stdout.split()[0]
