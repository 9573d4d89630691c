"""A predict or FNA run as one Slurm job array: one task per part, then a merge.

The command that submits (``qdgap predict --backend slurm``, ``qdgap fna --backend slurm``)
plans the parts (``core/analysis/parts.py``: member x block of frames), submits one array task for each
part without a file, queue entry or running task, and, once every part has its file, merges them
into the result a one-process run writes. Task i runs the same command with ``--part SEED:BLOCK``,
which computes and writes only that part. A rerun of the same command after a failure
resubmits only the missing parts; ``--wait`` follows the arrays and merges.

The arrays are recorded where the parts live, ``<output folder>/.<output name>.parts/.slurm/``,
so ``qdgap status OUTPUT`` shows the parts as ``ensemble status`` shows members.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from qdgap.core.analysis import parts as pt
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.hooks import Hooks
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.store.runs import Member
from qdgap.core.workflow import slurm, slurm_states

log = logging.getLogger(__name__)

POLL_S: Final[float] = 5.0  # seconds between looks at Slurm while following an array


def task_argv(kind: str, part: pt.Part, *, options: Mapping[str, object], frames_per_task: int | None) -> list[str]:
    """The qdgap arguments of the array task that computes ``part``.

    Args:
        kind: ``predict`` or ``fna``.
        part: the part.
        options: the command's options that decide the part's frames and values, by option name
            without dashes (``runs``, ``data``, ``output``, ``frames``, ``mask``, ...); None is left
            out, True becomes a bare flag, False is left out, paths are made absolute.
        frames_per_task: the block size; None for one block per member.
    """
    argv = ["--quiet", kind]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, str(Path(value).absolute()) if isinstance(value, Path) else str(value)]
    argv += ["--part", part.name]
    if frames_per_task is not None:
        argv += ["--frames-per-task", str(frames_per_task)]
    return argv


@dataclass(frozen=True)
class PartState:
    """Where one part stands (a row of ``qdgap status OUTPUT``).

    Attributes:
        part: ``SEED:BLOCK``.
        state: done (its file is there), pending, running, failed or missing.
        job_id: Slurm id of its latest task; "" if never submitted.
        message: why it failed, when it did; why it waits, when pending (Slurm's reason).
    """

    part: str
    state: str
    job_id: str = ""
    message: str = ""


def part_states(folder: str | os.PathLike, plan: Sequence[pt.Part] | None = None) -> list[PartState]:
    """Each part's state, from its file and the latest Slurm task that computed it.

    Args:
        folder: the parts folder (``parts.parts_folder(output)``).
        plan: the parts to report; the parts of every recorded array and every part file if None.
    """
    folder = Path(folder)
    tasks = slurm_states.member_states(slurm.slurm_folder(folder)) if folder.is_dir() else {}
    files = {}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        kind, _, rest = path.stem.partition("-seed")
        seed, _, block = rest.partition("-b")
        if seed.isdigit() and block.isdigit():
            files[f"{int(seed)}:{int(block)}"] = path
    if plan is None:
        names = sorted({*files, *(str(m) for m in tasks)}, key=_part_order)
    else:
        names = [p.name for p in plan]
    rows = []
    for name in names:
        task = tasks.get(name)
        job = task.job_id if task is not None else ""
        if name in files:
            rows.append(PartState(name, "done", job))
        elif task is None:
            rows.append(PartState(name, "missing"))
        elif task.pending:
            rows.append(PartState(name, "pending", job, slurm_states.pending_note(task)))
        elif task.running or task.state == slurm_states.UNKNOWN:
            rows.append(PartState(name, "running", job))
        elif task.failed:
            rows.append(PartState(name, "failed", job, task.message or task.state))
        else:  # COMPLETED without a file: the task ran but wrote nothing
            rows.append(PartState(name, "failed", job, f"ended {task.state} without its part file; see {task.stderr}"))
    return rows


def _part_order(name: str) -> tuple[int, int]:
    seed, _, block = name.partition(":")
    return (int(seed), int(block or 0)) if seed.isdigit() and (block or "0").isdigit() else (1 << 62, 0)


@dataclass(frozen=True)
class ArrayRun:
    """What one ``--backend slurm`` command did.

    Attributes:
        total: parts of the run.
        done: parts with their file when the command ended.
        submitted: the array submitted now, if any.
        skipped: parts already queued or running in an earlier array, not submitted again.
        unfinished: parts still queued or running when the command ended.
        failed: parts whose latest task failed or ended without its file, with why.
        merged: the merged result once every part is there; None otherwise.
        script: the sbatch script, for ``dry_run``.
        waited: ids of the arrays followed to their end.
    """

    total: int
    done: int
    submitted: slurm.ArrayJob | None = None
    skipped: tuple[str, ...] = ()
    unfinished: tuple[str, ...] = ()
    failed: tuple[PartState, ...] = ()
    merged: pt.Merged | None = None
    script: str = ""
    waited: tuple[str, ...] = ()


def run_array(
    kind: str,
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    output: Path,
    options: Mapping[str, object],
    frames_per_task: int | None,
    resources: slurm.SlurmResources,
    mode: str = "",
    wait: bool = False,
    dry_run: bool = False,
    cwd: Path | None = None,
    poll_s: float | None = None,
    progress: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> ArrayRun:
    """Submit the missing parts of a predict or FNA run as one array; merge once all are there.

    Args:
        kind: ``predict`` or ``fna``.
        members: the ensemble.
        traj: the trajectory.
        frames: (F,) int64, every chosen frame.
        output: the result file (``predictions.h5``, ``fna.h5``); the parts go beside it.
        options: the command options every task repeats (``task_argv``).
        frames_per_task: block size in frames; None for one task per member.
        resources: what each task asks Slurm for.
        mode: FNA mask.
        wait: follow the arrays (this one and earlier ones still running) to their end, then merge.
        dry_run: return the sbatch script of the missing parts; submit and write nothing.
        cwd: working folder of the tasks; the current one if None.
        poll_s: seconds between looks at Slurm while waiting; ``POLL_S`` if None.
        progress: called with the number of parts newly finished while waiting.
        say: called with one line for the user: what was sized and submitted (as soon as it is), and
            where each followed array stands whenever that changes.

    Returns:
        What was submitted, what is still busy or failed, and the merged result when complete.

    Raises:
        QdgapError: bad ``frames_per_task``, a part file from other inputs, a request that does not
            fit the partition or that sbatch refused (nothing submitted), or an array that can never
            start (cancelled); nothing is merged then.
    """
    pt.check_frames_per_task(frames_per_task)
    frames = np.asarray(frames, dtype=np.int64)
    plan = pt.plan_parts(kind, [m.seed for m in members], len(frames), frames_per_task)
    folder = pt.parts_folder(output)
    check = dict(members=members, traj=traj, frames=frames, frames_per_task=frames_per_task, mode=mode)
    found = pt.done_parts(plan, folder, **check)  # a part from other inputs stops here, before any submission
    todo = [p for p in plan if p not in found]
    argv_of = {p: task_argv(kind, p, options=options, frames_per_task=frames_per_task) for p in todo}
    if dry_run:
        script = ""
        if todo:
            script = slurm.dry_run(
                [argv_of[p] for p in todo],
                folder=slurm.slurm_folder(folder),
                resources=resources,
                members=[p.name for p in todo],
                cwd=cwd,
            )
        return ArrayRun(total=len(plan), done=len(found), script=script)
    states = {s.part: s for s in part_states(folder, todo)} if todo else {}
    skipped = [p for p in todo if states[p.name].state in ("pending", "running")]
    submit = [p for p in todo if p not in skipped]
    job = None
    if submit:
        job = slurm.submit(
            [argv_of[p] for p in submit],
            folder=slurm.slurm_folder(folder),
            resources=resources,
            members=[p.name for p in submit],
            cwd=cwd,
            resubmits=slurm.previous_array(slurm.slurm_folder(folder), [p.name for p in submit]),
        )
        if say is not None:
            if job.sizing:
                say(job.sizing)
            say(f"submitted job array {job.job_id}: {len(job.members)} of {len(plan)} {kind} part(s) of {output}")
    waited: list[str] = []
    if wait:
        jobs = _arrays_of(folder, {states[p.name].job_id for p in skipped}) + ([job] if job is not None else [])
        for j in jobs:
            slurm_states.wait(j, poll_s=POLL_S if poll_s is None else poll_s, progress=progress, report=say)
            waited.append(j.job_id)
    found = pt.done_parts(plan, folder, **check)
    common = dict(total=len(plan), submitted=job, skipped=tuple(p.name for p in skipped), waited=tuple(waited))
    if len(found) < len(plan):
        missing = [p for p in plan if p not in found]
        if not wait:  # everything missing was just submitted or is queued: nothing has failed yet
            return ArrayRun(done=len(found), unfinished=tuple(p.name for p in missing), **common)
        rest = part_states(folder, missing)
        return ArrayRun(
            done=len(found),
            unfinished=tuple(s.part for s in rest if s.state in ("pending", "running")),
            failed=tuple(s for s in rest if s.state in ("failed", "missing")),
            **common,
        )
    merged = pt.merge_parts(kind, members, traj, frames, frames_per_task=frames_per_task, folder=folder, mode=mode)
    return ArrayRun(done=len(found), merged=merged, **common)


def _arrays_of(folder: Path, task_ids: set[str]) -> list[slurm.ArrayJob]:
    """The recorded arrays that hold the Slurm tasks ``task_ids`` (``<array>_<i>`` or ``<job>``)."""
    ids = {t.split("_", 1)[0] for t in task_ids if t}
    return [j for j in slurm.load_jobs(slurm.slurm_folder(folder)) if j.job_id in ids]


def check_not_mixed(*, part: str | None, backend: str, frames_per_task: int | None, wait: bool, dry_run: bool) -> None:
    """Refuse option mixes: ``--part`` is a task's own option; the Slurm ones need ``--backend slurm``.

    Raises:
        QdgapError: one line naming the options.
    """
    pt.check_frames_per_task(frames_per_task)
    if part is not None and backend == "slurm":
        raise QdgapError("--part computes one part here (what an array task runs); it does not go with --backend slurm")
    if part is None and backend != "slurm" and (frames_per_task is not None or wait or dry_run):
        raise QdgapError("--frames-per-task, --wait and --dry-run belong to --backend slurm")


def compute_one(kind: str, part: str, members, traj, frames, output: Path, frames_per_task, *, hooks: Hooks, **kwargs):
    """What an array task runs: compute part ``SEED:BLOCK`` of ``output`` and write its file beside it.

    Returns:
        (the part's name, its file, its number of frames).
    """
    which = pt.parse_part(kind, part)
    sub = pt.block_frames(frames, which.block, frames_per_task)
    total = len(sub) * (traj.num_atoms + 1 if kind == "fna" else 1)
    with hooks.progress(f"{kind} part {which.name}", total, unit="masked" if kind == "fna" else "frame") as advance:
        path = pt.compute_part(
            which, members, traj, frames, frames_per_task=frames_per_task, folder=pt.parts_folder(output),
            progress=advance, **kwargs,
        )  # fmt: skip
    return which.name, path, len(sub)


def follow(
    kind, members, traj, frames, output, options, frames_per_task, resources, *, wait, dry_run, hooks: Hooks, mode=""
):
    """``run_array`` as a command runs it: say what was submitted and where things stand.

    Returns:
        The merged parts once all are there, else None (after saying why).

    Raises:
        QdgapError: parts failed (named, with why); nothing is merged.
    """
    n_parts = len(members) * pt.num_blocks(len(frames), frames_per_task)
    with hooks.progress(f"slurm {kind} ({n_parts} parts)", n_parts, unit="part") as advance:
        run = run_array(
            kind, members, traj, frames, output=output, options=options, frames_per_task=frames_per_task,
            resources=resources, mode=mode, wait=wait, dry_run=dry_run, progress=advance, say=hooks.say,
        )  # fmt: skip
    if dry_run:
        hooks.say(run.script or f"{output}: nothing to submit, all {run.total} parts done")
        return None
    if run.skipped:
        hooks.say(f"{output}: {len(run.skipped)} part(s) already queued or running; not submitted again")
    if run.failed:
        for s in run.failed:
            hooks.say(f"  part {s.part}: {s.state} {s.job_id} — {s.message}")
        first = run.failed[0]
        raise QdgapError(
            f"{len(run.failed)} of {run.total} {kind} part(s) failed ({', '.join(s.part for s in run.failed[:5])}): "
            f"{first.message or first.state}; nothing merged, rerun the same command to resubmit only those"
        )
    if run.merged is None:
        hooks.say(
            f"{run.done} of {run.total} parts done; follow them with `qdgap status {output}`, then rerun this "
            "command to merge them (failed parts are resubmitted)"
        )
        return None
    return run.merged


def merged_attrs(merged: pt.Merged, frames_per_task: int | None) -> dict:
    """The attrs a merged result records: its arrays, parts and block size."""
    from qdgap.core.common import schema

    return {
        schema.ATTR_SLURM_JOBS: ",".join(merged.job_ids),
        schema.ATTR_SLURM_PARTS: merged.num_parts,
        schema.ATTR_FRAMES_PER_TASK: frames_per_task or 0,
    }
