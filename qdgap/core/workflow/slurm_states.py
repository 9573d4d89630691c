"""Where the tasks of a qdgap Slurm array stand: completed, failed (with why), running, or lost.

A task's state comes from its submitit result pickle when there is one
(success or the error it raised), else from ``squeue`` (which still knows
finished jobs for slurmctld's ``MinJobAge``), else from ``sacct`` where
accounting is enabled; a task that left the queue without a result is ``LOST``.
Arrays are submitted and recorded by ``workflow.slurm``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qdgap.core.common.errors import QdgapError
from qdgap.core.workflow.slurm import LOGS_DIRNAME, ArrayJob, Member, load_jobs

log = logging.getLogger(__name__)

# Slurm job states (squeue/sacct long names), plus LOST for "left the queue without a result".
COMPLETED: Final[str] = "COMPLETED"
FAILED: Final[str] = "FAILED"
LOST: Final[str] = "LOST"
UNKNOWN: Final[str] = "UNKNOWN"
_FAILED_STATES: Final[frozenset[str]] = frozenset(
    {
        FAILED,
        LOST,
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)
_COMMAND_FAILED: Final[str] = "submitit.core.utils.FailedJobError: "  # from CommandFunction
_TIMEOUT_S: Final[int] = 60  # for one squeue/sacct/sbatch call


@dataclass(frozen=True)
class TaskState:
    """Where one array task stands.

    Attributes:
        task: array index.
        member: what the task stands for.
        job_id: Slurm id of the task, ``<array id>_<index>``.
        state: a Slurm state name (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...),
            LOST (left the queue without a result) or UNKNOWN (Slurm did not answer).
        message: for a failed task, the last line of its error; else "".
        stdout: the task's stdout log.
        stderr: the task's stderr log.
    """

    task: int
    member: Member
    job_id: str
    state: str
    message: str
    stdout: Path
    stderr: Path

    @property
    def finished(self) -> bool:
        return self.state == COMPLETED or self.failed

    @property
    def failed(self) -> bool:
        return self.state in _FAILED_STATES or self.state.startswith("CANCELLED")


# --------------------------------------------------------------------------
# Commands and the sbatch script


def _run_query(command: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s: %s", command[0], exc)
        return None


def _parse_states(text: str, job: ArrayJob) -> dict[int, str]:
    """``<job>_<task>|STATE`` lines (``<job>|STATE`` for a plain job) -> {task: state}.

    Other jobs, job steps (``<job>.batch``) and unexpanded ranges (``<job>_[0-3]``) are skipped.
    """
    out: dict[int, str] = {}
    for line in text.splitlines():
        jid, _, state = line.strip().partition("|")
        main, _, task = jid.partition("_")
        if not state or main != job.job_id:
            continue
        if job.array and task.isdigit():
            out[int(task)] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        elif not job.array and not task:
            out[0] = state.split()[0]
    return out


def _squeue_states(job: ArrayJob) -> dict[int, str] | None:
    """States of the array's tasks slurmctld still knows (queued, running, recently ended).

    None when squeue could not be asked; {} when the job is no longer known.
    """
    proc = _run_query(["squeue", "--noheader", "--array", "--states=all", "--jobs", job.job_id, "--format=%i|%T"])
    if proc is None:
        return None
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return {}  # purged after MinJobAge
        log.warning("squeue: %s", proc.stderr.strip() or f"exit {proc.returncode}")
        return None
    return _parse_states(proc.stdout, job)


def _sacct_states(job: ArrayJob) -> dict[int, str]:
    """Final states from Slurm's accounting; {} where accounting is off or unreachable."""
    if shutil.which("sacct") is None:
        return {}
    proc = _run_query(["sacct", "--noheader", "--parsable2", "--jobs", job.job_id, "--format=JobID,State"])
    if proc is None or proc.returncode != 0:
        return {}
    return _parse_states(proc.stdout, job)


def _task_paths(job: ArrayJob, task: int):
    from submitit.core.utils import JobPaths

    return JobPaths(job.folder / LOGS_DIRNAME, job_id=job.task_job_id(task), task_id=0)


def _read_outcome(paths) -> tuple[str, str] | None:
    """(COMPLETED | FAILED, message) from submitit's result pickle, or None if there is none yet."""
    from submitit.core.utils import pickle_load

    if not paths.result_pickle.exists():
        return None
    try:
        outcome, payload = pickle_load(paths.result_pickle)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign pickle is "no result yet"
        log.debug("%s: unreadable (%s)", paths.result_pickle, exc)
        return None
    if outcome == "success":
        return COMPLETED, ""
    lines = [ln.strip() for ln in str(payload).splitlines() if ln.strip()]
    # The runner's traceback ends with the command's last stderr line (qdgap's one-line error).
    last = lines[-1] if lines else "failed"
    if last == _COMMAND_FAILED.rstrip(": "):
        # The command wrote nothing on stderr before it ended: killed by a signal (OOM killer, kill -9).
        return FAILED, f"the command died without an error message (killed?); see {paths.stderr}"
    return FAILED, last.removeprefix(_COMMAND_FAILED)


def task_states(job: ArrayJob) -> list[TaskState]:
    """The state of every task of ``job``, by array index."""
    # Ask the queue before reading results: a task gone from the queue has written its result.
    queued = _squeue_states(job)
    accounted: dict[int, str] | None = None
    states = []
    for i, member in enumerate(job.members):
        paths = _task_paths(job, i)
        outcome = _read_outcome(paths)
        if outcome is not None:
            state, message = outcome
        elif queued is not None and i in queued:
            state, message = queued[i], ""
        else:
            if accounted is None:
                accounted = _sacct_states(job)
            state = accounted.get(i, LOST if queued is not None else UNKNOWN)
            message = f"ended without a result; see {paths.stderr}" if state == LOST else ""
        if state in _FAILED_STATES and state not in (FAILED, LOST) and not message:
            message = f"Slurm ended it: {state}"
        states.append(TaskState(i, member, job.task_job_id(i), state, message, paths.stdout, paths.stderr))
    return states


def wait(
    job: ArrayJob,
    *,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[TaskState]:
    """Follow ``job`` until every task has finished (completed or failed).

    Args:
        job: the submitted array.
        poll_s: seconds between looks at Slurm.
        timeout_s: give up after this many seconds; never if None.
        progress: called with the number of tasks newly finished at each look.

    Returns:
        The final state of every task, by array index.

    Raises:
        QdgapError: ``timeout_s`` passed with tasks still unfinished.
    """
    start = time.monotonic()
    seen = 0
    while True:
        states = task_states(job)
        done = sum(s.finished for s in states)
        if progress is not None and done > seen:
            progress(done - seen)
        if done != seen:
            log.info("job array %s: %d of %d tasks finished", job.job_id, done, len(states))
        seen = done
        if done == len(states):
            return states
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise QdgapError(
                f"Slurm job {job.job_id}: {len(states) - done} of {len(states)} tasks unfinished "
                f"after {timeout_s:.0f} s; it goes on running (check it with squeue)"
            )
        time.sleep(poll_s)


def member_states(folder: str | os.PathLike) -> dict[Member, TaskState]:
    """Each member's latest attempt over every array recorded in ``folder`` (resubmissions win)."""
    latest: dict[Member, TaskState] = {}
    for job in load_jobs(folder):
        for state in task_states(job):
            latest[state.member] = state
    return latest
