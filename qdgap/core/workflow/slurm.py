"""qdgap commands as one Slurm job array, through ``submitit``.

Generic plumbing, no science: the caller hands over a list of qdgap argv lists
(``["train", "--seed", "3", ...]``), one per array task, each labelled by a
*member* (a seed, a run name). Task i runs ``python -m qdgap <argv>`` with the
Python that submitted it, or ``apptainer run --nv IMAGE <argv>`` when the
resources name an image. submitit's runner itself runs on the submitting
Python, so that environment must be visible on the compute nodes (it is, on a
shared home or project file system).

Everything this module writes lives in one folder, by convention
``<runs>/.slurm/`` (``slurm_folder``):

    .slurm/job_<ID>.json    one record per submitted array: resources, task -> member, commands
    .slurm/logs/            submitit's sbatch script, pickles and per-task stdout/stderr

Where the tasks stand (completed, failed, lost) is ``workflow.slurm_states``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import write_text_atomic
from qdgap.core.workflow import slurm_partition

log = logging.getLogger(__name__)

Member = int | str  # what a task stands for: a seed, a run name

SLURM_DIRNAME: Final[str] = ".slurm"
LOGS_DIRNAME: Final[str] = "logs"
RECORD_FORMAT: Final[str] = "qdgap.slurm_array"
RECORD_VERSION: Final[int] = 1

# Keys of the JSON record .slurm/job_<ID>.json
_K_FORMAT: Final[str] = "format"  # str | RECORD_FORMAT
_K_VERSION: Final[str] = "version"  # int | RECORD_VERSION
_K_JOB_ID: Final[str] = "job_id"  # str | Slurm's id of the array job
_K_SUBMITTED: Final[str] = "submitted"  # str | ISO 8601 UTC time of submission
_K_PREVIOUS: Final[str] = "resubmits"  # str or null | the array whose failed tasks this reruns
_K_ARRAY: Final[str] = "array"  # bool | false for one task, which submitit sends as a plain job
_K_RESOURCES: Final[str] = "resources"  # dict | SlurmResources fields
_K_CWD: Final[str] = "cwd"  # str | working folder of every task
_K_TASKS: Final[str] = "tasks"  # list of {task, member, argv, command}
_K_TASK: Final[str] = "task"  # int | array index
_K_MEMBER: Final[str] = "member"  # int or str | what the task stands for
_K_ARGV: Final[str] = "argv"  # list[str] | the qdgap arguments
_K_COMMAND: Final[str] = "command"  # list[str] | the full command line the task runs
_K_SIZED: Final[str] = "sized"  # list[str] | options qdgap chose from the partition (--cpus, --mem, --time)
_K_SIZING: Final[str] = "sizing"  # str | the line that said what was chosen; "" if nothing was
_K_PARTITION: Final[str] = "partition"  # dict or null | the partition's limits and nodes when submitted


# --------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class SlurmResources:
    """What every task of the array asks Slurm for, and how it runs.

    Attributes:
        partition: Slurm partition (``--partition``); the cluster's default if None.
        account: account to charge (``--account``); the user's default if None.
        time_min: wall-time limit per task, minutes; None: ``usual_time_min``, at most the
            partition's MaxTime.
        cpus_per_task: CPU cores per task; None: ``slurm_partition.USUAL_CPUS``, at most one node's.
        gpus_per_task: GPUs per task; 0 for none.
        mem_gb: memory per task (per node), GB (Slurm's G, 1024 MB); None: the CPUs' share of one
            node's memory (Slurm's default where the partition cannot be asked).
        image: Apptainer image; each task then runs ``apptainer run --nv IMAGE <argv>``.
        max_parallel: most tasks running at once (the array's ``%`` throttle); no limit if None.
        job_name: Slurm job name.
        usual_time_min: what a task of this command usually needs, minutes: the time asked for when
            ``time_min`` is None.
    """

    partition: str | None = None
    account: str | None = None
    time_min: int | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int = 0
    mem_gb: float | None = None
    image: Path | None = None
    max_parallel: int | None = None
    job_name: str = "qdgap"
    usual_time_min: int = 60

    def __post_init__(self) -> None:
        for name in ("partition", "account", "job_name"):
            value = getattr(self, name)
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise QdgapError(f"Slurm {name} {value!r}: expected a non-empty name without spaces")
        for name, low in (("time_min", 1), ("cpus_per_task", 1), ("gpus_per_task", 0), ("usual_time_min", 1)):
            value = getattr(self, name)
            if value is None and name in ("time_min", "cpus_per_task"):
                continue  # sized from the partition when submitted
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise QdgapError(f"Slurm {name.replace('_', '-')} {value!r}: expected a whole number >= {low}")
        if self.max_parallel is not None and (
            isinstance(self.max_parallel, bool) or not isinstance(self.max_parallel, int) or self.max_parallel < 1
        ):
            raise QdgapError(f"Slurm max-parallel {self.max_parallel!r}: expected a whole number >= 1")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0):
            raise QdgapError(f"Slurm mem {self.mem_gb!r}: expected a positive number of GB")
        if self.image is not None:
            object.__setattr__(self, "image", Path(self.image).expanduser().absolute())

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["image"] = None if self.image is None else str(self.image)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> SlurmResources:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("image") is not None:
            known["image"] = Path(str(known["image"]))
        return cls(**known)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Submitted arrays and task states
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrayOptions:
    """``--backend slurm`` as a command takes it: what each task asks for, and whether to follow the
    array to its end (``--wait``) or only print its sbatch script (``--dry-run``)."""

    resources: SlurmResources
    wait: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class ArrayJob:
    """One submitted job array, as recorded in ``<folder>/job_<job_id>.json``.

    Attributes:
        job_id: Slurm's id of the array; task i is ``<job_id>_<i>``.
        members: member of each task, by array index.
        argvs: qdgap arguments of each task, by array index.
        commands: full command line each task runs, by array index.
        folder: the ``.slurm`` folder holding the record and the logs.
        resources: what the array asked for.
        cwd: working folder of every task.
        submitted: ISO 8601 UTC time of submission.
        resubmits: id of the array whose failed tasks this one reruns, if any.
        array: False for a single task, which submitit submits as a plain job (id
            ``<job_id>``, not ``<job_id>_0``).
        sized: the options qdgap chose from the partition (``--cpus``, ``--mem``, ``--time``).
        sizing: the line that said what was chosen; "" if nothing was.
        partition: the partition's limits and nodes at submission (``Partition.to_json``); None
            when Slurm could not be asked.
    """

    job_id: str
    members: tuple[Member, ...]
    argvs: tuple[tuple[str, ...], ...]
    commands: tuple[tuple[str, ...], ...]
    folder: Path
    resources: SlurmResources
    cwd: Path
    submitted: str
    resubmits: str | None = None
    array: bool = True
    sized: tuple[str, ...] = ()
    sizing: str = ""
    partition: dict | None = field(default=None, compare=False)

    @property
    def tasks(self) -> dict[int, Member]:
        """Array index -> member."""
        return dict(enumerate(self.members))

    @property
    def record_path(self) -> Path:
        return _record_path(self.folder, self.job_id)

    def task_job_id(self, task: int) -> str:
        return f"{self.job_id}_{task}" if self.array else self.job_id


def slurm_folder(out: str | os.PathLike) -> Path:
    """Where arrays submitted for output folder ``out`` keep their records: ``out/.slurm``."""
    return Path(out) / SLURM_DIRNAME


def task_command(argv: Sequence[str], *, image: str | os.PathLike | None = None) -> list[str]:
    """The command line one task runs for qdgap arguments ``argv``.

    ``[sys.executable, "-m", "qdgap", *argv]`` (the submitting environment), or
    ``["apptainer", "run", "--nv", IMAGE, *argv]`` with an image.
    """
    if image is not None:
        return ["apptainer", "run", "--nv", str(image), *argv]
    return [sys.executable, "-m", "qdgap", *argv]


@dataclass(frozen=True)
class Fitted:
    """A request checked against its partition, with what was left unset sized from it.

    Attributes:
        resources: the request, every value set (``time_min``, ``cpus_per_task``; ``mem_gb`` too
            when the partition could be asked).
        sized: the options qdgap chose (``--cpus``, ``--mem``, ``--time``).
        sizing: one line saying what was chosen and from what; "" if nothing was.
        partition: the partition as Slurm described it; None when Slurm could not be asked.
    """

    resources: SlurmResources
    sized: tuple[str, ...] = ()
    sizing: str = ""
    partition: slurm_partition.Partition | None = None


def fit_resources(resources: SlurmResources) -> Fitted:
    """Check ``resources`` against the partition Slurm describes now, and size what was not given.

    Without ``scontrol`` (not on a cluster) nothing is checked: the unset values take their usual
    sizes and sbatch has the last word.

    Raises:
        QdgapError: an unknown partition or account, or a request over the partition's limits or
            over what any one of its nodes offers: one line naming the option, value and limit.
    """
    part = slurm_partition.query(resources.partition)
    sizing = slurm_partition.size_request(
        part,
        cpus=resources.cpus_per_task,
        mem_gb=resources.mem_gb,
        gpus=resources.gpus_per_task,
        time_min=resources.time_min,
        usual_time_min=resources.usual_time_min,
    )
    if part is not None:
        accounts = slurm_partition.query_accounts() if resources.account is not None else None
        slurm_partition.check_request(
            part, cpus=sizing.cpus, mem_gb=sizing.mem_gb, gpus=resources.gpus_per_task, time_min=sizing.time_min,
            account=resources.account, accounts=accounts,
        )  # fmt: skip
        if part.state != "UP" or (part.nodes and not any(n.up for n in part.nodes)):
            log.warning("Slurm partition %s is %s with no node up: the array waits until it comes back", part.name,
                        part.state)  # fmt: skip
    fitted = replace(resources, time_min=sizing.time_min, cpus_per_task=sizing.cpus, mem_gb=sizing.mem_gb)
    return Fitted(fitted, sizing.chosen, sizing.line, part)


def _check_commands(
    commands: Sequence[Sequence[str]], members: Sequence[Member] | None
) -> tuple[tuple[tuple[str, ...], ...], tuple[Member, ...]]:
    if not commands:
        raise QdgapError("nothing to submit: the job array would have no task")
    if any(isinstance(argv, str) or not argv for argv in commands):
        raise QdgapError("each Slurm task needs a non-empty list of qdgap arguments")
    argvs = tuple(tuple(str(a) for a in argv) for argv in commands)
    labels = tuple(range(len(argvs))) if members is None else tuple(members)
    if len(labels) != len(argvs):
        raise QdgapError(f"{len(labels)} members for {len(argvs)} commands: give one member per command")
    if len(set(labels)) != len(labels):
        raise QdgapError(f"members must be unique, got {list(labels)}")
    return argvs, labels


def _sbatch_parameters(resources: SlurmResources, lines: Sequence[str]) -> dict[str, object]:
    """submitit SlurmExecutor parameters (Slurm's own names) for ``resources``."""
    params: dict[str, object] = {
        "job_name": resources.job_name,
        "time": resources.time_min,
        "cpus_per_task": resources.cpus_per_task,
        "setup": list(lines),
    }
    if resources.partition is not None:
        params["partition"] = resources.partition
    if resources.account is not None:
        params["account"] = resources.account
    if resources.gpus_per_task:
        params["gpus_per_task"] = resources.gpus_per_task
    if resources.mem_gb is not None:
        mem = resources.mem_gb
        params["mem"] = f"{int(mem)}GB" if float(mem).is_integer() else f"{int(round(mem * 1024))}MB"
    if resources.max_parallel is not None:
        params["array_parallelism"] = resources.max_parallel
    return params


def _setup_lines(full: Sequence[Sequence[str]], members: Sequence[Member], cwd: Path) -> list[str]:
    """Lines run before submitit's runner: a readable list of what each task runs, and threads."""
    lines = [f"# qdgap job array: {len(full)} tasks, in {shlex.quote(str(cwd))}"]
    lines += [
        f"# task {i} (member {m}): {shlex.join(cmd)}" for i, (m, cmd) in enumerate(zip(members, full, strict=True))
    ]
    # Torch and BLAS use the cores Slurm gave the task, not the node's.
    lines.append("export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}")
    from qdgap.core.common.numerics import REPRODUCIBLE_ENV, THREADS_ENV, reproducible_requested, reproducible_threads

    if reproducible_requested():  # said in the script, not only inherited: some sites submit with --export=NONE
        lines.append(f"export {REPRODUCIBLE_ENV}=1 {THREADS_ENV}={reproducible_threads()}")
    return lines


def _runner_command(logs: Path) -> str:
    # What submitit's SlurmExecutor runs for an array (SlurmExecutor._submitit_command_str).
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(logs))])


def dry_run(
    commands: Sequence[Sequence[str]],
    *,
    folder: str | os.PathLike,
    resources: SlurmResources,
    members: Sequence[Member] | None = None,
    cwd: str | os.PathLike | None = None,
) -> str:
    """The sbatch script ``submit`` would send, without submitting or writing anything.

    Args:
        commands: qdgap arguments of each task, e.g. ``[["train", "--seed", "0"], ...]``.
        folder: the ``.slurm`` folder the array would use.
        resources: what each task asks for.
        members: label of each task; array indices if None.
        cwd: working folder of the tasks; the current one if None.

    Returns:
        The script text: ``#SBATCH`` lines (array range, resources), the command of
        every task (as comments) and submitit's runner line. A single task is a
        plain job, without ``--array``, as submitit sends it.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    argvs, labels = _check_commands(commands, members)
    fitted = fit_resources(resources)
    logs = Path(folder).absolute() / LOGS_DIRNAME
    work = Path(cwd or os.getcwd()).absolute()
    full = [task_command(a, image=resources.image) for a in argvs]
    lines = _setup_lines(full, labels, work)
    if fitted.sizing:
        lines.insert(1, f"# {fitted.sizing}")
    params = _sbatch_parameters(fitted.resources, lines)
    return _make_sbatch_string(
        command=_runner_command(logs),
        folder=logs,
        map_count=len(argvs) if len(argvs) > 1 else None,
        **params,
    )


# --------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------
def _require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "srun", "squeue") if shutil.which(tool) is None]
    if missing:
        raise QdgapError(
            f"{missing[0]} not found: the slurm backend must run where Slurm's commands are "
            "(a cluster's login node); use --backend local here"
        )


def _submit_array(logs: Path, params: Mapping[str, object], fns: Sequence[Callable[[], str]]) -> str:
    """Submit ``fns`` as one array through submitit; returns the array's job id."""
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    executor = submitit.SlurmExecutor(folder=logs)
    executor.update_parameters(**params)
    try:
        # submitit prints a refused sbatch's whole stderr; it comes back below as one line of the error.
        with contextlib.redirect_stderr(io.StringIO()):
            jobs = executor.submit_array(list(fns))
    except FailedSubmissionError as exc:  # sbatch said something without a job id
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise QdgapError(f"sbatch gave no job id: {first}") from exc
    except (FailedJobError, subprocess.CalledProcessError, OSError) as exc:
        # sbatch's stderr; its last line says why (e.g. "Invalid partition name specified").
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise QdgapError(f"sbatch refused the job array: {lines[-1] if lines else exc}") from exc
    return jobs[0].job_id.split("_", 1)[0]


def submit(
    commands: Sequence[Sequence[str]],
    *,
    folder: str | os.PathLike,
    resources: SlurmResources,
    members: Sequence[Member] | None = None,
    cwd: str | os.PathLike | None = None,
    resubmits: str | None = None,
) -> ArrayJob:
    """Submit the commands as ONE Slurm job array and record it in ``folder``.

    Args:
        commands: qdgap arguments of each task, e.g. ``[["train", "--seed", "0"], ...]``.
        folder: the ``.slurm`` folder (``slurm_folder(runs)``); created if missing. It must be
            on a file system the compute nodes share.
        resources: what each task asks for.
        members: label of each task (seeds, run names); array indices if None.
        cwd: working folder of the tasks (relative paths in ``commands`` resolve there);
            the current one if None.
        resubmits: id of the array whose failed tasks this reruns (recorded only).

    Returns:
        The submitted array: job id, task -> member, commands; saved as
        ``folder/job_<id>.json``.

    Raises:
        QdgapError: Slurm's commands are missing, the image does not exist, the request does not
            fit the partition (``fit_resources``: nothing is submitted or written then), or sbatch
            refused.
    """
    from submitit.helpers import CommandFunction

    argvs, labels = _check_commands(commands, members)
    _require_slurm()
    if resources.image is not None and not resources.image.is_file():
        raise QdgapError(f"{resources.image}: Apptainer image not found (build it with `make sif`)")
    fitted = fit_resources(resources)
    resources = fitted.resources
    folder = Path(folder).absolute()
    logs = folder / LOGS_DIRNAME
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QdgapError(f"{folder}: cannot create the Slurm folder ({exc.strerror})") from exc
    work = Path(cwd or os.getcwd()).absolute()
    full = [task_command(a, image=resources.image) for a in argvs]
    lines = _setup_lines(full, labels, work)
    if fitted.sizing:
        lines.insert(1, f"# {fitted.sizing}")
    params = _sbatch_parameters(resources, lines)
    fns = [CommandFunction(cmd, verbose=True, cwd=work) for cmd in full]

    job_id = _submit_array(logs, params, fns)
    job = ArrayJob(
        job_id=job_id,
        members=labels,
        argvs=argvs,
        commands=tuple(tuple(c) for c in full),
        folder=folder,
        resources=resources,
        cwd=work,
        submitted=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        resubmits=resubmits,
        array=len(argvs) > 1,
        sized=fitted.sized,
        sizing=fitted.sizing,
        partition=None if fitted.partition is None else fitted.partition.to_json(),
    )
    _save_record(job)
    log.info("submitted job array %s: %d tasks (record %s)", job_id, len(argvs), job.record_path)
    return job


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------
def _record_path(folder: Path, job_id: str) -> Path:
    return Path(folder) / f"job_{job_id}.json"


def _save_record(job: ArrayJob) -> None:
    record = {
        _K_FORMAT: RECORD_FORMAT,
        _K_VERSION: RECORD_VERSION,
        _K_JOB_ID: job.job_id,
        _K_SUBMITTED: job.submitted,
        _K_PREVIOUS: job.resubmits,
        _K_ARRAY: job.array,
        _K_RESOURCES: job.resources.to_json(),
        _K_SIZED: list(job.sized),
        _K_SIZING: job.sizing,
        _K_PARTITION: job.partition,
        _K_CWD: str(job.cwd),
        _K_TASKS: [
            {_K_TASK: i, _K_MEMBER: m, _K_ARGV: list(a), _K_COMMAND: list(c)}
            for i, (m, a, c) in enumerate(zip(job.members, job.argvs, job.commands, strict=True))
        ],
    }
    write_text_atomic(job.record_path, json.dumps(record, indent=1) + "\n")


def _load_record(path: Path) -> ArrayJob:
    try:
        data = json.loads(path.read_text())
        if data.get(_K_FORMAT) != RECORD_FORMAT:
            raise ValueError(f"format is {data.get(_K_FORMAT)!r}")
        tasks = sorted(data[_K_TASKS], key=lambda t: t[_K_TASK])
        return ArrayJob(
            job_id=str(data[_K_JOB_ID]),
            members=tuple(t[_K_MEMBER] for t in tasks),
            argvs=tuple(tuple(t[_K_ARGV]) for t in tasks),
            commands=tuple(tuple(t[_K_COMMAND]) for t in tasks),
            folder=path.parent.absolute(),
            resources=SlurmResources.from_json(data[_K_RESOURCES]),
            cwd=Path(data[_K_CWD]),
            submitted=str(data[_K_SUBMITTED]),
            resubmits=data.get(_K_PREVIOUS),
            array=bool(data.get(_K_ARRAY, True)),
            sized=tuple(data.get(_K_SIZED, ())),
            sizing=str(data.get(_K_SIZING, "")),
            partition=data.get(_K_PARTITION),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QdgapError(f"{path}: not a readable qdgap Slurm record ({exc})") from exc


def load_jobs(folder: str | os.PathLike) -> list[ArrayJob]:
    """Every array recorded in ``folder``, oldest first; [] if none."""
    folder = Path(folder)
    jobs = [_load_record(p) for p in folder.glob("job_*.json")] if folder.is_dir() else []

    def order(job: ArrayJob) -> tuple[str, int]:
        return job.submitted, int(job.job_id) if job.job_id.isdigit() else 0

    return sorted(jobs, key=order)


def previous_array(folder: str | os.PathLike, members) -> str | None:
    """The newest recorded array in ``folder`` that ran any of ``members``: what a new array for them reruns."""
    wanted = {str(m) for m in members}
    earlier = [j.job_id for j in load_jobs(folder) if wanted & {str(m) for m in j.members}]
    return earlier[-1] if earlier else None
