"""Where the tasks of a qdgap Slurm array stand: completed, failed (with why), running, pending (and why), or lost.

A task's state comes from its submitit result pickle when there is one
(success or the error it raised), else from ``squeue`` (which still knows
finished jobs for slurmctld's ``MinJobAge``), else from ``sacct`` where
accounting is enabled; a task that left the queue without a result is ``LOST``.
A pending task carries Slurm's reason (``squeue %r``), said in plain words by
``reason_text``; ``never_starts`` tells the reasons waiting cannot mend, on which
``wait`` cancels the array. Arrays are submitted and recorded by ``workflow.slurm``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qdgap.core.common.errors import QdgapError
from qdgap.core.workflow.slurm import LOGS_DIRNAME, ArrayJob, Member, load_jobs
from qdgap.core.workflow.slurm_partition import run_query

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
PENDING: Final[str] = "PENDING"
_QUEUED: Final[frozenset[str]] = frozenset({PENDING, "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"})
_RUNNING: Final[frozenset[str]] = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT"})

# Slurm's pending reasons (squeue %r) in plain words. Those in _NEVER cannot resolve by waiting:
# the job asks for more than its partition, QOS or association ever allows.
_REASONS: Final[dict[str, str]] = {
    "None": "not yet looked at by the scheduler",
    "Priority": "other jobs come first",
    "Resources": "waiting for free CPUs, memory or GPUs",
    "JobHeldUser": "held by its user; `scontrol release JOBID` lets it go",
    "JobHeldAdmin": "held (`scontrol hold`); `scontrol release JOBID` lets it go",
    "Dependency": "waiting for the jobs it depends on",
    "BeginTime": "its start time has not come",
    "Reservation": "waiting for its reservation",
    "Licenses": "waiting for licenses",
    "JobArrayTaskLimit": "the array's --max-parallel throttle",
    "PartitionDown": "its partition is down (an administrator must bring it up)",
    "PartitionInactive": "its partition is inactive (an administrator must bring it up)",
    "NodeDown": "a node it needs is down",
    "ReqNodeNotAvail": "the nodes it may use are down, drained or reserved",
    "PartitionConfig": "it asks for more than the partition's nodes have (CPUs, memory, GPUs or nodes)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "its --time is over the partition's MaxTime",
    "BadConstraints": "no node can meet its constraints",
    "InvalidAccount": "its account is not valid here",
    "InvalidQOS": "its QOS is not valid here",
    "DependencyNeverSatisfied": "a job it depends on failed",
    "AssociationTimeLimit": "its --time is over its association's limit",
    "QOSTimeLimit": "its --time is over its QOS's limit",
}
_NEVER: Final[frozenset[str]] = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "DependencyNeverSatisfied",
        "AssociationTimeLimit",
        "QOSTimeLimit",
    }
)


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
        reason: Slurm's reason code for a pending task (``Resources``, ``JobHeldAdmin``, ...); else "".
    """

    task: int
    member: Member
    job_id: str
    state: str
    message: str
    stdout: Path
    stderr: Path
    reason: str = ""

    @property
    def pending(self) -> bool:
        return self.state in _QUEUED

    @property
    def running(self) -> bool:
        return self.state in _RUNNING

    @property
    def finished(self) -> bool:
        return self.state == COMPLETED or self.failed

    @property
    def failed(self) -> bool:
        return self.state in _FAILED_STATES or self.state.startswith("CANCELLED")


# --------------------------------------------------------------------------
# Commands and the sbatch script


def parse_states(text: str, job: ArrayJob) -> dict[int, tuple[str, str]]:
    """``<job>_<task>|STATE[|REASON]`` lines (``<job>|...`` for a plain job) -> {task: (state, reason)}.

    Other jobs, job steps (``<job>.batch``) and unexpanded ranges (``<job>_[0-3]``) are skipped; the
    reason is "" where the line has none.
    """
    out: dict[int, tuple[str, str]] = {}
    for line in text.splitlines():
        jid, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        main, _, task = jid.partition("_")
        if not state.strip() or main != job.job_id:
            continue
        value = (state.split()[0], reason.strip())  # "CANCELLED by 0" -> "CANCELLED"
        if job.array and task.isdigit():
            out[int(task)] = value
        elif not job.array and not task:
            out[0] = value
    return out


def _squeue_states(job: ArrayJob) -> dict[int, tuple[str, str]] | None:
    """(state, pending reason) of the array's tasks slurmctld still knows (queued, running, recently ended).

    None when squeue could not be asked; {} when the job is no longer known.
    """
    proc = run_query(["squeue", "--noheader", "--array", "--states=all", "--jobs", job.job_id, "--format=%i|%T|%r"])
    if proc is None:
        return None
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return {}  # purged after MinJobAge
        log.warning("squeue: %s", proc.stderr.strip() or f"exit {proc.returncode}")
        return None
    return parse_states(proc.stdout, job)


def _sacct_states(job: ArrayJob) -> dict[int, tuple[str, str]]:
    """Final states from Slurm's accounting; {} where accounting is off or unreachable."""
    if shutil.which("sacct") is None:
        return {}
    proc = run_query(["sacct", "--noheader", "--parsable2", "--jobs", job.job_id, "--format=JobID,State"])
    if proc is None or proc.returncode != 0:
        return {}
    return parse_states(proc.stdout, job)


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
        reason = ""
        if outcome is not None:
            state, message = outcome
        elif queued is not None and i in queued:
            (state, reason), message = queued[i], ""
        else:
            if accounted is None:
                accounted = _sacct_states(job)
            state = accounted.get(i, (LOST if queued is not None else UNKNOWN, ""))[0]
            message = f"ended without a result; see {paths.stderr}" if state == LOST else ""
        if state in _FAILED_STATES and state not in (FAILED, LOST) and not message:
            message = f"Slurm ended it: {state}"
            if reason and reason != "None":
                message += f" while pending ({reason}: {reason_text(reason)})"
        reason = reason if state in _QUEUED else ""
        states.append(TaskState(i, member, job.task_job_id(i), state, message, paths.stdout, paths.stderr, reason))
    return states


# --------------------------------------------------------------------------
# Pending reasons and the array at a glance


def reason_text(reason: str) -> str:
    """Slurm's pending reason code in plain words (the code itself when it is not known here)."""
    code = reason.split(",")[0].strip()  # "ReqNodeNotAvail, UnavailableNodes:n1" -> "ReqNodeNotAvail"
    if code in _REASONS:
        return _REASONS[code]
    if code.startswith(("QOS", "Assoc")):
        scope = "QOS" if code.startswith("QOS") else "association"
        if _per_job_limit(code):
            return f"it asks for more than its {scope} allows any one job ({code})"
        return f"its {scope}'s limit on running jobs or resources is reached; it starts when others end ({code})"
    return code or "no reason given"


def _per_job_limit(code: str) -> bool:
    # QOSMaxCpuPerJobLimit, AssocMaxWallDurationPerJobLimit, QOSMinCpuNotSatisfied, ...: the job alone is
    # over the limit, so no amount of waiting helps; Grp*, *PerUser*, *PerAccount* limits clear as other jobs end.
    return "PerJob" in code or "NotSatisfied" in code or code.startswith(("QOSMin", "AssocMin"))


def never_starts(reason: str, *, node_up: Callable[[], bool | None] = lambda: None) -> str | None:
    """Why a task pending for ``reason`` can never start, in plain words; None when waiting may help.

    Args:
        reason: Slurm's pending reason (``squeue %r``).
        node_up: whether any node of the job's partition is up (None: unknown); asked only for
            ``ReqNodeNotAvail``, which cannot resolve while no node is up.
    """
    code = reason.split(",")[0].strip()
    if code in _NEVER or (code.startswith(("QOS", "Assoc")) and _per_job_limit(code)):
        return reason_text(code)
    if code == "ReqNodeNotAvail" and node_up() is False:
        return "no node of its partition is up (all down or drained)"
    return None


def never_starting(job: ArrayJob, states: list[TaskState]) -> tuple[TaskState, str] | None:
    """The first pending task of ``job`` that can never start, with why in plain words; None if none."""
    from qdgap.core.workflow import slurm_partition

    up: list[bool | None] = []  # Slurm asked at most once, and only for ReqNodeNotAvail

    def node_up() -> bool | None:
        if not up:
            up.append(slurm_partition.any_node_up(job.resources.partition))
        return up[0]

    for s in states:
        why = never_starts(s.reason, node_up=node_up) if s.pending else None
        if why:
            return s, why
    return None


def pending_note(task: TaskState) -> str:
    """Why a pending task waits, for a status table: ``JobHeldAdmin: held by ...``, or ``cannot start: ...``."""
    if not task.pending or not task.reason:
        return ""
    code = task.reason.split(",")[0].strip()
    why = never_starts(code)
    if why:
        return f"{code}: cannot start: {why}"
    return _reason_words(code).replace("JOBID", task.job_id.split("_")[0])


def _reason_words(code: str) -> str:
    """``Resources: waiting for ...``; Slurm's ``None`` (not yet scheduled) without its code, which reads oddly."""
    return reason_text(code) if code == "None" else f"{code}: {reason_text(code)}"


def describe(job: ArrayJob, states: list[TaskState]) -> str:
    """The array at a glance, one line: ``job array 12 (4 tasks): 2 pending (Resources: ...), 1 running, 1 done``."""
    pending: dict[str, int] = {}
    for s in states:
        if s.pending:
            key = s.reason.split(",")[0].strip() if s.reason else ""
            pending[key] = pending.get(key, 0) + 1
    parts = []
    for reason, n in pending.items():
        why = f" ({_reason_words(reason)})" if reason else ""
        parts.append(f"{n} pending{why.replace('JOBID', job.job_id)}")
    counts = (
        ("running", sum(s.running for s in states)),
        ("done", sum(s.state == COMPLETED for s in states)),
        ("failed", sum(s.failed for s in states)),
        ("unknown", sum(s.state == UNKNOWN for s in states)),
    )
    parts += [f"{n} {what}" for what, n in counts if n]
    other = len(states) - sum(pending.values()) - sum(n for _, n in counts)
    if other:
        parts.append(f"{other} other")
    kind = "job array" if job.array else "job"
    return f"{kind} {job.job_id} ({len(states)} task{'s' if len(states) != 1 else ''}): {', '.join(parts)}"


def cancel(job: ArrayJob) -> None:
    """Cancel every task of ``job`` still queued or running (``scancel``); a failure is logged."""
    proc = run_query(["scancel", job.job_id])
    if proc is not None and proc.returncode != 0:
        log.warning("scancel %s: %s", job.job_id, proc.stderr.strip() or f"exit {proc.returncode}")


def wait(
    job: ArrayJob,
    *,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    progress: Callable[[int], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> list[TaskState]:
    """Follow ``job`` until every task has finished (completed or failed), saying where it stands.

    A task pending for a reason waiting cannot mend (``never_starts``: over the partition's limits,
    a per-job QOS or association limit, no node up) cancels the whole array at the first look that
    sees it.

    Args:
        job: the submitted array.
        poll_s: seconds between looks at Slurm.
        timeout_s: give up after this many seconds; never if None.
        progress: called with the number of tasks newly finished at each look.
        report: called with ``describe``'s line whenever it changes (and at the first look).

    Returns:
        The final state of every task, by array index.

    Raises:
        QdgapError: the array can never start (cancelled, the reason in plain words), or
            ``timeout_s`` passed with tasks still unfinished.
    """
    start = time.monotonic()
    seen = 0
    said = ""
    while True:
        states = task_states(job)
        done = sum(s.finished for s in states)
        if progress is not None and done > seen:
            progress(done - seen)
        line = describe(job, states)
        if line != said:
            if report is not None:
                report(line)
            else:
                log.info("%s", line)
            said = line
        seen = done
        if done == len(states):
            return states
        stuck = never_starting(job, states)
        if stuck is not None:
            task, why = stuck
            cancel(job)
            raise QdgapError(
                f"Slurm job {task.job_id} can never start: {why} ({task.reason.split(',')[0]}); cancelled "
                f"{'job array' if job.array else 'job'} {job.job_id}. Ask for less (--cpus, --mem, --time, --gpus), "
                "or name another --partition or --account"
            )
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
