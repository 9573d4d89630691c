"""Slurm job arrays without a cluster: the sbatch script, resources, records and task states.

Submission goes through submitit for real, against stand-in ``sbatch``/``squeue``
scripts on PATH (``fake_slurm``), so these run anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import stat
import sys
import time
import types
from pathlib import Path

import pytest
from submitit.core.utils import cloudpickle_dump

from qdgap.core.common.errors import QdgapError
from qdgap.core.workflow import slurm, slurm_states

_SYSTEM_PATH = os.environ.get("PATH", os.defpath)  # before _no_real_cluster empties it
TRAIN = [["train", "--seed", str(s), "--data", "traj.h5", "-o", "runs"] for s in (3, 4)]


def _exe(path: Path, text: str) -> None:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture(autouse=True)
def _no_real_cluster(tmp_path, monkeypatch):
    """No Slurm command on PATH unless a test puts its stand-ins there (``fake_slurm``), so a cluster
    running beside the tests (CI starts one) never answers these."""
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/srun/squeue/scontrol/sinfo/scancel stand-ins: sbatch saves the script and answers job ids
    100, 101, ...; squeue prints the lines of ``squeue.txt`` (``<job>_<task>|STATE[|REASON]``);
    scontrol prints ``partitions.txt`` (``scontrol show partition --oneliner``), or fails when there is
    none (Slurm not answering); sinfo prints ``nodes.txt`` (``%N|%c|%m|%G|%t``); scancel notes its
    arguments in ``cancelled.txt``."""
    cat, cp = shutil.which("cat", path=_SYSTEM_PATH), shutil.which("cp", path=_SYSTEM_PATH)
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
    _exe(bin_dir / "scontrol", f"[ -f {state}/partitions.txt ] || exit 1; {cat} {state}/partitions.txt\n")
    _exe(bin_dir / "sinfo", f"[ -f {state}/nodes.txt ] && {cat} {state}/nodes.txt; exit 0\n")
    _exe(bin_dir / "scancel", f'echo "$@" >> {state}/cancelled.txt\n')
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
    from qdgap.cli.ui import setup_logging

    setup_logging(quiet=False, debug=False)  # what the CLI shows by default, whatever ran before
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


# --------------------------------------------------------------------------
# The request against the partition, before anything is submitted
# --------------------------------------------------------------------------
@pytest.fixture
def two_cpu_partition(fake_slurm):
    """The stand-ins describe the CI cluster: partition debug (default, no MaxTime) and short (MaxTime
    10 min), one node of 2 CPUs and 21694 MB (text captured from `.ci/slurm-up.sh`'s Slurm 22.05)."""
    from tests.unit.test_slurm_partition import SCONTROL, SINFO

    (fake_slurm / "partitions.txt").write_text(SCONTROL)
    (fake_slurm / "nodes.txt").write_text(SINFO)
    return fake_slurm


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"cpus_per_task": 64}, "--cpus 64: no node of partition debug (1 node) has that many; the largest has 2 CPUs"),
        ({"partition": "short", "time_min": 30}, "--time 30: over partition short's MaxTime of 10 min"),
        ({"mem_gb": 64}, "--mem 64: no node of partition debug (1 node) has that much"),
        ({"partition": "gpu"}, "--partition gpu: no such Slurm partition; the cluster has debug, short"),
    ],
)
def test_submit_refuses_what_the_partition_cannot_run_before_submitting(
    tmp_path, two_cpu_partition, resources, message
):
    folder = tmp_path / "runs" / ".slurm"
    with pytest.raises(QdgapError) as exc:
        slurm.submit(TRAIN, folder=folder, resources=slurm.SlurmResources(**resources), members=[3, 4])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
    assert not list(two_cpu_partition.glob("script_*.sh"))  # sbatch never ran
    assert not folder.exists()  # nothing written


def test_submit_sizes_what_was_not_given_from_the_partition_and_records_it(tmp_path, two_cpu_partition):
    folder = tmp_path / ".slurm"
    job = slurm.submit(TRAIN, folder=folder, resources=slurm.SlurmResources(usual_time_min=120), members=[3, 4])
    sent = (two_cpu_partition / "script_100.sh").read_text()
    for flag in ("--cpus-per-task=2", "--mem=21694MB", "--time=120"):
        assert f"#SBATCH {flag}" in sent, flag
    assert job.sized == ("--cpus", "--mem", "--time")
    assert job.sizing.startswith("Slurm partition debug: its largest node localhost has 2 CPUs, 21.2 GB")
    assert job.sizing in sent  # the script says it too
    record = json.loads(job.record_path.read_text())
    assert record["resources"]["cpus_per_task"] == 2 and record["resources"]["time_min"] == 120
    assert record["sized"] == ["--cpus", "--mem", "--time"] and record["sizing"] == job.sizing
    assert record["partition"]["name"] == "debug" and record["partition"]["nodes"][0]["cpus"] == 2
    assert slurm.load_jobs(folder)[-1] == job

    # Time over the short partition's MaxTime is cut to it when not given; given values are kept.
    short = slurm.submit(TRAIN, folder=folder, resources=slurm.SlurmResources(partition="short", cpus_per_task=1,
                                                                              mem_gb=1))  # fmt: skip
    assert short.resources.time_min == 10 and short.sized == ("--time",)
    assert "#SBATCH --cpus-per-task=1" in (two_cpu_partition / "script_101.sh").read_text()


def test_dry_run_shows_the_sized_request(tmp_path, two_cpu_partition):
    text = slurm.dry_run(TRAIN, folder=tmp_path, resources=slurm.SlurmResources(partition="short"))
    assert "#SBATCH --cpus-per-task=2" in text and "#SBATCH --time=10" in text
    assert "chose --cpus 2 --mem 21.2 --time 10 per task" in text


# --------------------------------------------------------------------------
# Following an array: where it stands, one line per change; a job that can never start is cancelled
# --------------------------------------------------------------------------
def test_reason_text_and_which_reasons_never_resolve():
    assert "held" in slurm_states.reason_text("JobHeldAdmin")
    assert slurm_states.never_starts("Resources") is None
    assert slurm_states.never_starts("JobHeldUser") is None
    assert slurm_states.never_starts("Priority") is None
    assert "MaxTime" in slurm_states.never_starts("PartitionTimeLimit")
    assert "more than the partition's nodes have" in slurm_states.never_starts("PartitionConfig")
    assert slurm_states.never_starts("PartitionNodeLimit") is not None
    # QOS and association limits: per job, waiting cannot help; on a group's or user's running jobs, it can.
    assert "QOSMaxWallDurationPerJobLimit" in slurm_states.never_starts("QOSMaxWallDurationPerJobLimit")
    assert slurm_states.never_starts("AssocMaxCpuPerJobLimit") is not None
    assert slurm_states.never_starts("QOSMinCpuNotSatisfied") is not None
    assert slurm_states.never_starts("AssocGrpCpuLimit") is None
    assert slurm_states.never_starts("QOSMaxJobsPerUserLimit") is None
    assert "starts when others end" in slurm_states.reason_text("AssocGrpCpuLimit")
    # ReqNodeNotAvail can never resolve only while no node of the partition is up.
    busy = "ReqNodeNotAvail, UnavailableNodes:n1"
    assert slurm_states.never_starts(busy, node_up=lambda: True) is None
    assert slurm_states.never_starts(busy, node_up=lambda: None) is None
    assert "no node" in slurm_states.never_starts(busy, node_up=lambda: False)


def test_squeue_states_carry_the_pending_reason(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    text = "100_0|PENDING|JobHeldAdmin\n100_1|RUNNING|None\n100_[2-3]|PENDING|Priority\n99_0|PENDING|Resources\n"
    assert slurm_states.parse_states(text, job) == {0: ("PENDING", "JobHeldAdmin"), 1: ("RUNNING", "None")}
    (fake_slurm / "squeue.txt").write_text(text)
    states = slurm_states.task_states(job)
    assert [(s.state, s.reason) for s in states] == [("PENDING", "JobHeldAdmin"), ("RUNNING", "")]
    assert slurm_states.describe(job, states) == (
        "job array 100 (2 tasks): 1 pending (JobHeldAdmin: held (`scontrol hold`); `scontrol release 100` lets it "
        "go), 1 running"
    )
    assert (
        slurm_states.pending_note(states[0])
        == "JobHeldAdmin: held (`scontrol hold`); `scontrol release 100` lets it go"
    )
    fresh = dataclasses.replace(states[0], reason="None")  # just submitted: Slurm says "None"
    assert slurm_states.describe(job, [fresh]).endswith("1 pending (not yet looked at by the scheduler)")


def test_wait_says_each_change_once(tmp_path, fake_slurm, monkeypatch):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    squeue = fake_slurm / "squeue.txt"
    squeue.write_text("100_0|PENDING|JobHeldUser\n100_1|PENDING|JobHeldUser\n")
    lines: list[str] = []
    looks = iter(
        [
            lambda: None,  # the same state once more: nothing said
            lambda: squeue.write_text("100_0|RUNNING|None\n100_1|PENDING|Resources\n"),
            lambda: (_result(job, 0, "success", ""), squeue.write_text("100_1|RUNNING|None\n")),
            lambda: _result(job, 1, "success", ""),
        ]
    )

    # Each look at Slurm is followed by a sleep: the stand-in sleep moves the array on by one step.
    clock = types.SimpleNamespace(monotonic=time.monotonic, sleep=lambda _s: next(looks, lambda: None)())
    monkeypatch.setattr(slurm_states, "time", clock)
    states = slurm_states.wait(job, poll_s=0, report=lines.append)
    assert [s.state for s in states] == ["COMPLETED", "COMPLETED"]
    assert [ln.split(": ", 1)[1] for ln in lines] == [
        "2 pending (JobHeldUser: held by its user; `scontrol release 100` lets it go)",
        "1 pending (Resources: waiting for free CPUs, memory or GPUs), 1 running",
        "1 running, 1 done",
        "2 done",
    ]


def test_wait_cancels_an_array_that_can_never_start(tmp_path, fake_slurm):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources())
    (fake_slurm / "squeue.txt").write_text("100_0|PENDING|PartitionConfig\n100_1|PENDING|PartitionConfig\n")
    lines: list[str] = []
    with pytest.raises(QdgapError) as exc:
        slurm_states.wait(job, poll_s=0, report=lines.append)
    message = str(exc.value)
    assert message.startswith(
        "Slurm job 100_0 can never start: it asks for more than the partition's nodes have (CPUs, memory, GPUs "
        "or nodes) (PartitionConfig); cancelled job array 100."
    )
    assert "\n" not in message
    assert (fake_slurm / "cancelled.txt").read_text().split() == ["100"]
    assert lines == [
        f"job array 100 (2 tasks): 2 pending (PartitionConfig: {slurm_states.reason_text('PartitionConfig')})"
    ]


def test_wait_cancels_when_no_node_of_the_partition_is_up(tmp_path, two_cpu_partition):
    job = slurm.submit(TRAIN, folder=tmp_path, resources=slurm.SlurmResources(cpus_per_task=1, mem_gb=1))
    (two_cpu_partition / "squeue.txt").write_text("100_0|PENDING|ReqNodeNotAvail, UnavailableNodes:localhost\n")
    (two_cpu_partition / "nodes.txt").write_text("localhost|2|21694|(null)|drain\n")
    with pytest.raises(QdgapError, match="no node of its partition is up"):
        slurm_states.wait(job, poll_s=0)
    (two_cpu_partition / "nodes.txt").write_text("localhost|2|21694|(null)|mix\n")  # up again: waiting may help
    (two_cpu_partition / "squeue.txt").write_text("100_0|PENDING|ReqNodeNotAvail, UnavailableNodes:localhost\n")
    assert slurm_states.never_starting(job, slurm_states.task_states(job)) is None


def test_status_rows_say_why_a_task_waits(tmp_path, fake_slurm):
    from qdgap.core.workflow import part_array
    from qdgap.core.workflow.ensemble import ensemble_status

    runs = tmp_path / "runs"
    slurm.submit(TRAIN, folder=slurm.slurm_folder(runs), resources=slurm.SlurmResources(), members=[3, 4])
    (fake_slurm / "squeue.txt").write_text("100_0|PENDING|JobHeldUser\n100_1|PENDING|PartitionTimeLimit\n")
    rows = {r.seed: r for r in ensemble_status(runs)}
    assert rows[3].state == "pending" and rows[3].message == (
        "Slurm 100_0: JobHeldUser: held by its user; `scontrol release 100` lets it go"
    )
    assert (
        rows[4].message == "Slurm 100_1: PartitionTimeLimit: cannot start: its --time is over the partition's MaxTime"
    )

    parts = tmp_path / ".p.h5.parts"
    slurm.submit(TRAIN, folder=slurm.slurm_folder(parts), resources=slurm.SlurmResources(), members=["0:0", "1:0"])
    (fake_slurm / "squeue.txt").write_text("101_0|PENDING|Resources\n101_1|RUNNING|None\n")
    states = {s.part: s for s in part_array.part_states(parts)}
    assert (states["0:0"].state, states["0:0"].message) == (
        "pending",
        "Resources: waiting for free CPUs, memory or GPUs",
    )
    assert (states["1:0"].state, states["1:0"].message) == ("running", "")
