"""Slurm job arrays without a cluster: the sbatch script, resources, records and task states.

Submission goes through submitit for real, against stand-in ``sbatch``/``squeue``
scripts on PATH (``fake_slurm``), so these run anywhere.
"""

from __future__ import annotations

import json
import shlex
import shutil
import stat
import sys
from pathlib import Path

import pytest
from submitit.core.utils import cloudpickle_dump

from qdgap.core.common.errors import QdgapError
from qdgap.core.workflow import slurm, slurm_states

TRAIN = [["train", "--seed", str(s), "--data", "traj.h5", "-o", "runs"] for s in (3, 4)]


def _exe(path: Path, text: str) -> None:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/srun/squeue stand-ins: sbatch saves the script and answers job ids 100, 101, ...;
    squeue prints the lines of ``squeue.txt`` (``<job>_<task>|STATE``)."""
    cat, cp = shutil.which("cat"), shutil.which("cp")
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    state = tmp_path / "fakeslurm"
    state.mkdir()
    (state / "next_id").write_text("100")
    (state / "squeue.txt").write_text("")
    _exe(
        bin_dir / "sbatch",
        f'd={state}; id=$({cat} $d/next_id); {cp} "$1" $d/script_$id.sh; '
        f'echo $((id + 1)) > $d/next_id; echo "Submitted batch job $id"\n',
    )
    _exe(bin_dir / "squeue", f"{cat} {state}/squeue.txt\n")
    _exe(bin_dir / "srun", "exit 0\n")
    monkeypatch.setenv("PATH", str(bin_dir))  # only these: no sacct (accounting off), no real Slurm
    return state


def _result(job: slurm.ArrayJob, task: int, outcome: str, payload: str) -> None:
    """Write the result pickle submitit's runner leaves for a finished task."""
    cloudpickle_dump((outcome, payload), job.folder / "logs" / f"{job.task_job_id(task)}_0_result.pkl")


# --------------------------------------------------------------------------
# Resources and the sbatch script
# --------------------------------------------------------------------------
def test_dry_run_names_array_range_resources_and_commands(tmp_path):
    res = slurm.SlurmResources(
        partition="gpu", account="chem", time_min=90, cpus_per_task=4, gpus_per_task=1, mem_gb=16
    )
    text = slurm.dry_run(TRAIN, folder=tmp_path / ".slurm", resources=res, members=[3, 4])
    for flag in (
        "--array=0-1",
        "--partition=gpu",
        "--account=chem",
        "--time=90",
        "--cpus-per-task=4",
        "--gpus-per-task=1",
        "--mem=16GB",
    ):
        assert f"#SBATCH {flag}" in text, flag
    for seed, argv in zip((3, 4), TRAIN, strict=True):
        line = shlex.join([sys.executable, "-m", "qdgap", *argv])
        assert f"member {seed}): {line}" in text
    assert "apptainer" not in text
    assert not (tmp_path / ".slurm").exists()  # a dry run writes nothing


def test_dry_run_throttle_and_fractional_memory(tmp_path):
    res = slurm.SlurmResources(max_parallel=1, mem_gb=2.5)
    text = slurm.dry_run(TRAIN * 2, folder=tmp_path, resources=res)
    assert "#SBATCH --array=0-3%1" in text
    assert "#SBATCH --mem=2560MB" in text
    assert "--partition" not in text and "--gpus" not in text


def test_dry_run_image_wraps_command_in_apptainer(tmp_path):
    res = slurm.SlurmResources(image=tmp_path / "qdgap.sif", gpus_per_task=1)
    text = slurm.dry_run(TRAIN, folder=tmp_path, resources=res)
    image = tmp_path / "qdgap.sif"
    assert f"apptainer run --nv {image} train --seed 3 --data traj.h5 -o runs" in text
    assert f"{sys.executable} -m qdgap" not in text


def test_task_command_uses_this_python():
    assert slurm.task_command(["data", "info", "t.h5"]) == [
        sys.executable,
        "-m",
        "qdgap",
        "data",
        "info",
        "t.h5",
    ]
    assert slurm.task_command(["train"], image="/x/q.sif") == [
        "apptainer",
        "run",
        "--nv",
        "/x/q.sif",
        "train",
    ]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"time_min": 0}, "time-min"),
        ({"cpus_per_task": 0}, "cpus-per-task"),
        ({"gpus_per_task": -1}, "gpus-per-task"),
        ({"cpus_per_task": 1.5}, "cpus-per-task"),
        ({"mem_gb": 0}, "mem"),
        ({"max_parallel": 0}, "max-parallel"),
        ({"partition": "two words"}, "partition"),
        ({"account": ""}, "account"),
    ],
)
def test_resources_reject_bad_values(kwargs, fragment):
    with pytest.raises(QdgapError, match=fragment) as exc:
        slurm.SlurmResources(**kwargs)
    assert "\n" not in str(exc.value)


def test_dry_run_rejects_bad_command_lists(tmp_path):
    res = slurm.SlurmResources()
    with pytest.raises(QdgapError, match="no task"):
        slurm.dry_run([], folder=tmp_path, resources=res)
    with pytest.raises(QdgapError, match="list of qdgap arguments"):
        slurm.dry_run(["train --seed 1"], folder=tmp_path, resources=res)
    with pytest.raises(QdgapError, match="one member per command"):
        slurm.dry_run(TRAIN, folder=tmp_path, resources=res, members=[1])
    with pytest.raises(QdgapError, match="unique"):
        slurm.dry_run(TRAIN, folder=tmp_path, resources=res, members=[1, 1])


def test_submit_without_sbatch_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QdgapError, match="sbatch not found") as exc:
        slurm.submit(TRAIN, folder=tmp_path / ".slurm", resources=slurm.SlurmResources())
    assert "\n" not in str(exc.value)
    assert not (tmp_path / ".slurm").exists()


def test_submit_rejects_missing_image(tmp_path, fake_slurm):
    res = slurm.SlurmResources(image=tmp_path / "nope.sif")
    with pytest.raises(QdgapError, match="nope.sif: Apptainer image not found"):
        slurm.submit(TRAIN, folder=tmp_path / ".slurm", resources=res)


def test_sbatch_refusal_is_a_one_line_error(tmp_path, fake_slurm):
    _exe(
        fake_slurm.parent / "fakebin" / "sbatch",
        "echo 'sbatch: error: invalid partition specified: gpux' >&2\n"
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\n"
        "exit 1\n",
    )
    res = slurm.SlurmResources(partition="gpux")
    with pytest.raises(QdgapError, match="Invalid partition name specified") as exc:
        slurm.submit(TRAIN, folder=tmp_path / ".slurm", resources=res)
    assert "\n" not in str(exc.value)
    assert not list((tmp_path / ".slurm").glob("job_*.json"))


# --------------------------------------------------------------------------
# Submission records and failed-task bookkeeping
# --------------------------------------------------------------------------
def test_submit_records_the_array(tmp_path, fake_slurm):
    folder = slurm.slurm_folder(tmp_path / "runs")
    res = slurm.SlurmResources(partition="cpu", time_min=5)
    job = slurm.submit(TRAIN, folder=folder, resources=res, members=[3, 4], cwd=tmp_path)
    assert job.job_id == "100" and job.tasks == {0: 3, 1: 4} and job.array
    assert job.record_path == folder / "job_100.json"
    record = json.loads(job.record_path.read_text())
    assert record["format"] == "qdgap.slurm_array" and record["job_id"] == "100"
    assert [t["member"] for t in record["tasks"]] == [3, 4]
    assert record["tasks"][1]["argv"] == TRAIN[1]
    assert slurm.load_jobs(folder)[-1] == job
    # What sbatch received is what dry_run shows.
    sent = (fake_slurm / "script_100.sh").read_text()
    assert sent == slurm.dry_run(TRAIN, folder=folder, resources=res, members=[3, 4], cwd=tmp_path)


def test_failed_tasks_are_reported_by_member_and_resubmitted_alone(tmp_path, fake_slurm):
    folder = tmp_path / ".slurm"
    argvs = [["train", "--seed", str(s)] for s in (10, 11, 12, 13)]
    job = slurm.submit(argvs, folder=folder, resources=slurm.SlurmResources(), members=[10, 11, 12, 13])
    _result(job, 0, "success", "trained")
    error = "submitit.core.utils.FailedJobError: qdgap: error: x.h5: no such file"
    trace = f"Traceback (most recent call last):\n  ...\n{error}\n"
    _result(job, 1, "error", trace)
    (fake_slurm / "squeue.txt").write_text("100_2|TIMEOUT\n100_3|RUNNING\n")

    states = slurm_states.task_states(job)
    assert [s.state for s in states] == ["COMPLETED", "FAILED", "TIMEOUT", "RUNNING"]
    assert states[1].message == "qdgap: error: x.h5: no such file"
    assert "TIMEOUT" in states[2].message
    assert [s.finished for s in states] == [True, True, True, False]
    assert [s.member for s in [s for s in states if s.failed]] == [11, 12]

    # What `ensemble train` does on a rerun: submit the failed members again (with more time), one new array.
    failed = [s for s in states if s.failed]
    new = slurm.submit(
        [argvs[s.task] for s in failed],
        folder=folder,
        resources=slurm.SlurmResources(time_min=240),
        members=[s.member for s in failed],
    )
    assert new.job_id == "101" and new.members == (11, 12) and new.argvs == (tuple(argvs[1]), tuple(argvs[2]))
    sent = (fake_slurm / "script_101.sh").read_text()
    assert "#SBATCH --array=0-1" in sent and "#SBATCH --time=240" in sent
    assert "train --seed 11" in sent and "train --seed 12" in sent and "--seed 10" not in sent

    # The newest attempt of each member wins.
    (fake_slurm / "squeue.txt").write_text("100_3|COMPLETED\n101_0|PENDING\n101_1|RUNNING\n")
    _result(job, 3, "success", "")
    latest = slurm_states.member_states(folder)
    assert {m: s.state for m, s in latest.items()} == {
        10: "COMPLETED",
        11: "PENDING",
        12: "RUNNING",
        13: "COMPLETED",
    }
    assert latest[11].job_id == "101_0"


def test_killed_command_says_so_and_names_its_log(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    # What the runner leaves when the command died of SIGKILL: the error without any stderr line.
    _result(job, 0, "error", "Traceback (most recent call last):\n  ...\nsubmitit.core.utils.FailedJobError\n")
    state = slurm_states.task_states(job)[0]
    assert state.state == "FAILED" and "killed?" in state.message and str(state.stderr) in state.message


def test_sbatch_refusal_does_not_print_sbatch_stderr(tmp_path, fake_slurm, capsys):
    bin_dir = fake_slurm.parent / "fakebin"
    _exe(bin_dir / "sbatch", "echo 'sbatch: error: invalid partition specified: nope' >&2\n"
         "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1\n")  # fmt: skip
    with pytest.raises(QdgapError) as exc:
        slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources(partition="nope"))
    assert str(exc.value) == (
        "sbatch refused the job array: sbatch: error: Batch job submission failed: Invalid partition name specified"
    )
    assert capsys.readouterr().err == ""  # the one line above is all the user sees


def test_task_without_result_gone_from_queue_is_lost(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    (fake_slurm / "squeue.txt").write_text("100_1|PENDING\n")
    states = slurm_states.task_states(job)
    assert [s.state for s in states] == ["LOST", "PENDING"]
    assert states[0].failed and str(states[0].stderr) in states[0].message


def test_unanswered_squeue_gives_unknown_not_failed(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    _exe(
        fake_slurm.parent / "fakebin" / "squeue",
        "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n",
    )
    assert [s.state for s in slurm_states.task_states(job)] == ["UNKNOWN", "UNKNOWN"]
    assert not any(s.failed for s in slurm_states.task_states(job))


def test_single_task_is_a_plain_job(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN[:1], folder=tmp_path, resources=slurm.SlurmResources(), members=[3])
    assert not job.array and job.task_job_id(0) == "100"
    assert "--array" not in (fake_slurm / "script_100.sh").read_text()
    (fake_slurm / "squeue.txt").write_text("100|RUNNING\n100.batch|RUNNING\n")
    assert slurm_states.task_states(job)[0].state == "RUNNING"
    _result(job, 0, "error", "boom")
    assert slurm_states.task_states(job)[0].state == "FAILED"
    assert [j.array for j in slurm.load_jobs(tmp_path) if j.job_id == "100"] == [False]


def test_wait_reports_progress_until_all_finish(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    _result(job, 0, "success", "")
    (fake_slurm / "squeue.txt").write_text("100_1|RUNNING\n")
    with pytest.raises(QdgapError, match="1 of 2 tasks unfinished"):
        slurm_states.wait(job, poll_s=0.01, timeout_s=0.05)
    _result(job, 1, "error", "boom")
    done: list[int] = []
    states = slurm_states.wait(job, poll_s=0.01, progress=done.append)
    assert sum(done) == 2 and [s.state for s in states] == ["COMPLETED", "FAILED"]


def test_load_jobs_without_records_is_empty(tmp_path):
    assert slurm.load_jobs(tmp_path) == []
    assert slurm.load_jobs(tmp_path / "missing") == []


def test_an_array_records_the_array_it_reruns(tmp_path, fake_slurm):
    """``resubmits``: the newest earlier array that ran any of the members; None for members never run."""
    folder = tmp_path / ".slurm"
    first = slurm.submit([["train", "--seed", "0"], ["train", "--seed", "1"]], folder=folder,
                         resources=slurm.SlurmResources(), members=[0, 1])  # fmt: skip
    assert slurm.previous_array(folder, [1]) == first.job_id
    assert slurm.previous_array(folder, [2]) is None
    again = slurm.submit([["train", "--seed", "1"]], folder=folder, resources=slurm.SlurmResources(), members=[1],
                         resubmits=slurm.previous_array(folder, [1]))  # fmt: skip
    assert slurm.load_jobs(folder)[-1].resubmits == first.job_id == again.resubmits
    assert slurm.previous_array(folder, [0, 1]) == again.job_id  # the newest attempt
