"""Slurm arrays as the console shows them: the resources from the one option group, members submitted and
followed (``ensemble train``, ``finetune``), and the arrays of parts of ``predict`` and ``fna`` (submit,
follow, report, merge). What to submit is decided in core (``workflow.ensemble.members_to_submit``,
``workflow.part_array``)."""

from __future__ import annotations

from pathlib import Path

import typer

from qdgap.cli import ui


def split_backend(backend: str | None) -> tuple[str, str | None]:
    """``--backend`` -> (local or slurm, the model runtime or None for the default)."""
    from qdgap.core.deploy.export import BACKENDS

    if backend in ("local", "slurm"):
        return backend, None
    if backend is not None and backend not in BACKENDS:
        raise ui.usage_error(f"--backend must be one of {', '.join(BACKENDS)} or local, slurm; got {backend!r}")
    return "local", backend


def slurm_resources(array, job_name, partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel):
    """The Slurm resources of a ``--backend slurm`` run from the Slurm option group (checked before any work);
    None for local."""
    if array != "slurm":
        return None
    from qdgap.core.workflow import slurm

    return slurm.SlurmResources(
        partition=partition,
        account=account,
        time_min=time_min,
        cpus_per_task=cpus,
        gpus_per_task=gpus,
        mem_gb=mem_gb,
        image=image,
        max_parallel=max_parallel,
        job_name=job_name,
    )


def one_part(kind, part, members, traj, chosen, output, frames_per_task, **kwargs) -> None:
    """What an array task runs: compute part SEED:BLOCK and write its file beside the output."""
    from qdgap.core.analysis import parts as pt

    which = pt.parse_part(kind, part)
    sub = pt.block_frames(chosen, which.block, frames_per_task)
    total = len(sub) * (traj.num_atoms + 1 if kind == "fna" else 1)
    with ui.progress(f"{kind} part {which.name}", total, unit="masked" if kind == "fna" else "frame") as advance:
        path = pt.compute_part(
            which, members, traj, chosen, frames_per_task=frames_per_task, folder=pt.parts_folder(output),
            progress=advance, **kwargs,
        )  # fmt: skip
    ui.stdout_console().print(f"wrote part {which.name} of {output} ({len(sub)} frames): {path}")


def run_array(kind, members, traj, chosen, output, options, frames_per_task, resources, *, wait, dry_run, mode=""):
    """Submit the missing parts as one job array (and follow it with ``wait``); the merged parts once all
    are there, else None after saying where things stand."""
    from qdgap.core.analysis import parts as pt
    from qdgap.core.workflow import part_array as pa

    out = ui.stdout_console()
    n_parts = len(members) * pt.num_blocks(len(chosen), frames_per_task)
    with ui.progress(f"slurm {kind} ({n_parts} parts)", n_parts, unit="part") as advance:
        run = pa.run_array(
            kind, members, traj, chosen, output=output, options=options, frames_per_task=frames_per_task,
            resources=resources, mode=mode, wait=wait, dry_run=dry_run, progress=advance,
        )  # fmt: skip
    if dry_run:
        typer.echo(run.script or f"{output}: nothing to submit, all {run.total} parts done")
        return None
    if run.skipped:
        out.print(f"{output}: {len(run.skipped)} part(s) already queued or running; not submitted again")
    if run.submitted is not None:
        job = run.submitted
        out.print(f"submitted job array {job.job_id}: {len(job.members)} of {run.total} {kind} part(s) of {output}")
    if run.failed:
        for s in run.failed:
            out.print(f"  part {s.part}: {s.state} {s.job_id} — {s.message}")
        first = run.failed[0]
        raise ui.usage_error(
            f"{len(run.failed)} of {run.total} {kind} part(s) failed ({', '.join(s.part for s in run.failed[:5])}): "
            f"{first.message or first.state}; nothing merged, rerun the same command to resubmit only those"
        )
    if run.merged is None:
        out.print(
            f"{run.done} of {run.total} parts done; follow them with `qdgap status {output}`, then rerun this "
            "command to merge them (failed parts are resubmitted)"
        )
        return None
    return run.merged


def merged_array_attrs(merged, frames_per_task) -> dict:
    from qdgap.core.common import schema

    return {
        schema.ATTR_SLURM_JOBS: ",".join(merged.job_ids),
        schema.ATTR_SLURM_PARTS: merged.num_parts,
        schema.ATTR_FRAMES_PER_TASK: frames_per_task or 0,
    }


def submit_members(seeds, output: Path, argv_of, resources, *, dry_run: bool, wait: bool):
    """Submit the members of ``output`` not yet done, queued or running as one job array.

    ``argv_of(seed)`` gives a member's qdgap arguments. With ``dry_run`` the sbatch
    script is printed instead. Returns the submitted array, or None when nothing
    was submitted.
    """
    from qdgap.core.workflow import slurm
    from qdgap.core.workflow.ensemble import members_to_submit

    if dry_run:
        typer.echo(
            slurm.dry_run(
                [argv_of(s) for s in seeds], folder=slurm.slurm_folder(output), resources=resources, members=seeds
            )
        )
        return None
    todo, busy = members_to_submit(output, seeds)
    out = ui.stdout_console()
    if busy:
        out.print(
            f"{output}: {len(busy)} member(s) already queued or running (seeds {ranges(busy)}); not submitted again"
        )
    if not todo:
        out.print(f"{output}: nothing to submit ({len(seeds) - len(busy)} done)")
        return None
    output.mkdir(parents=True, exist_ok=True)
    job = slurm.submit([argv_of(s) for s in todo], folder=slurm.slurm_folder(output), resources=resources, members=todo)
    out.print(f"submitted job array {job.job_id}: {len(todo)} member(s), seeds {ranges(todo)}")
    if not wait:
        out.print(f"follow it with `qdgap ensemble status {output}`; rerun this command to resubmit failed members")
    return job


def wait_members(job, output: Path) -> None:
    """Follow ``job`` to its end; a member that failed or left no ``DONE`` is an error naming the seeds."""
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow import slurm_states

    out = ui.stdout_console()
    with ui.progress(f"slurm {job.job_id}", len(job.members), unit="member") as advance:
        states = slurm_states.wait(job, poll_s=5.0, progress=advance)
    failed = [s for s in states if s.failed or not (rf.run_dir(output, int(s.member)) / rf.DONE).exists()]
    if failed:
        for s in failed:
            out.print(f"  seed {s.member}: {s.state} — {s.message or s.stderr}")
        raise ui.usage_error(
            f"{len(failed)} member(s) failed in job {job.job_id} (seeds {ranges([int(s.member) for s in failed])}); "
            "rerun the same command to resubmit only those"
        )
    out.print(f"job array {job.job_id}: all {len(job.members)} member(s) done")


def ranges(seeds) -> str:
    seeds = sorted(seeds)
    parts, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)
