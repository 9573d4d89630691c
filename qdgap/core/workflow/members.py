"""Members as a command trains them: here in worker processes, or as a Slurm job array submitted and
followed; what happened said once, failures raised as one error naming the seeds.

``qdgap ensemble train``, ``qdgap finetune`` and ``qdgap pipeline`` call these; which members a rerun
submits is ``ensemble.members_to_submit``'s one policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qdgap.core.common.errors import Interrupted, QdgapError
from qdgap.core.common.hooks import Hooks, Stop
from qdgap.core.config import RunConfig
from qdgap.core.workflow import slurm
from qdgap.core.workflow.ensemble import MemberOutcome

POLL_S = 5.0  # seconds between looks at Slurm while following an array


@dataclass(frozen=True)
class MembersOutcome:
    """Members of ``folder`` trained (or not) here, one outcome per seed."""

    folder: Path
    outcomes: tuple[MemberOutcome, ...]


def ranges(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    seeds = sorted(seeds)
    parts, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)


def check_finished(what: str, outcome: MembersOutcome, stop: Stop, hooks: Hooks, *, busy_ok: bool = False) -> None:
    """Show the outcome; then stop on a stop request, or on members that did not finish.

    ``busy_ok``: a member another process is training (``busy``) is not an error (``ensemble train``:
    that process finishes it); only failed members are.

    Raises:
        Interrupted: the user asked to stop (rerunning finishes the rest).
        QdgapError: members failed, named by seed.
    """
    hooks.show(outcome)
    if stop():
        raise Interrupted(f"{what} stopped; rerun the same command to finish it", exit_code=stop.exit_code)
    if busy_ok:
        failed = [o for o in outcome.outcomes if o.outcome == "failed"]
        if failed:
            raise QdgapError(
                f"{len(failed)} member(s) failed (seeds {', '.join(str(o.seed) for o in failed)}): {failed[0].message}"
            )
        return
    failed = [o for o in outcome.outcomes if o.outcome not in ("trained", "done")]
    if failed:
        raise QdgapError(
            f"{what}: {len(failed)} member(s) not finished (seeds {', '.join(str(o.seed) for o in failed)}): "
            f"{failed[0].message}"
        )


def train_ensemble(
    data: Path,
    config: RunConfig,
    *,
    seeds: Sequence[int],
    runs: Path,
    jobs: int | None = None,
    device: str = "auto",
    array: slurm.ArrayOptions | None = None,
    preset: str = "demo",
    overrides: dict | None = None,
    hooks: Hooks = Hooks(),
) -> MembersOutcome | None:
    """Train (or finish) every member of ``runs``; members already DONE are skipped, interrupted ones resume.

    Args:
        data: the trajectory file; config: the resolved configuration (local).
        seeds: member seeds; runs: the ensemble folder.
        jobs: members trained at once here (default: one per core on the CPU, one on a GPU).
        array: train as a Slurm job array, each task ``qdgap train --seed S --preset PRESET`` plus
            ``overrides`` (the command-line options given, by name).

    Returns:
        The local outcome; None for a Slurm array (its members are followed with ``array.wait``).
    """
    from qdgap.core.workflow.ensemble import default_jobs, train_argv, train_local

    if array is not None:
        argv_of = lambda s: train_argv(s, data=data, runs=runs, preset=preset, device=device, overrides=overrides or {})  # noqa: E731
        job = submit_members(seeds, runs, argv_of, array.resources, dry_run=array.dry_run, wait=array.wait, hooks=hooks)
        if job is not None and array.wait:
            wait_members(job, runs, hooks=hooks)
        return None
    n_jobs = jobs if jobs is not None else default_jobs(len(seeds), device)
    total = len(seeds) * config.train.epochs
    with (
        hooks.stop_requested() as stop,
        hooks.progress(f"ensemble ({len(seeds)} members)", total, unit="epoch") as advance,
    ):
        outcomes = train_local(
            data, config, seeds=seeds, runs=runs, jobs=n_jobs, device=device, progress=advance, should_stop=stop
        )
    outcome = MembersOutcome(runs, tuple(outcomes))
    check_finished("ensemble", outcome, stop, hooks, busy_ok=True)
    return outcome


def submit_members(
    seeds: Sequence[int],
    output: Path,
    argv_of: Callable[[int], list[str]],
    resources: slurm.SlurmResources,
    *,
    dry_run: bool,
    wait: bool,
    hooks: Hooks = Hooks(),
) -> slurm.ArrayJob | None:
    """Submit the members of ``output`` not yet done, queued or running as one job array.

    ``argv_of(seed)`` gives a member's qdgap arguments. With ``dry_run`` the sbatch
    script is said instead. Returns the submitted array, or None when nothing
    was submitted.
    """
    from qdgap.core.workflow.ensemble import members_to_submit

    if dry_run:
        hooks.say(
            slurm.dry_run(
                [argv_of(s) for s in seeds], folder=slurm.slurm_folder(output), resources=resources, members=seeds
            )
        )
        return None
    todo, busy = members_to_submit(output, seeds)
    if busy:
        hooks.say(
            f"{output}: {len(busy)} member(s) already queued or running (seeds {ranges(busy)}); not submitted again"
        )
    if not todo:
        hooks.say(f"{output}: nothing to submit ({len(seeds) - len(busy)} done)")
        return None
    output.mkdir(parents=True, exist_ok=True)
    folder = slurm.slurm_folder(output)
    job = slurm.submit(
        [argv_of(s) for s in todo], folder=folder, resources=resources, members=todo,
        resubmits=slurm.previous_array(folder, todo),
    )  # fmt: skip
    if job.sizing:
        hooks.say(job.sizing)
    hooks.say(f"submitted job array {job.job_id}: {len(todo)} member(s), seeds {ranges(todo)}")
    if not wait:
        hooks.say(f"follow it with `qdgap ensemble status {output}`; rerun this command to resubmit failed members")
    return job


def wait_members(job: slurm.ArrayJob, output: Path, *, hooks: Hooks = Hooks()) -> None:
    """Follow ``job`` to its end, one line each time where it stands changes (pending and why, running, done).

    Raises:
        QdgapError: the array can never start (cancelled; the reason in plain words), or a member failed
            or left no ``DONE``, named by seed.
    """
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow import slurm_states

    with hooks.progress(f"slurm {job.job_id}", len(job.members), unit="member") as advance:
        states = slurm_states.wait(job, poll_s=POLL_S, progress=advance, report=hooks.say)
    failed = [s for s in states if s.failed or not (rf.run_dir(output, int(s.member)) / rf.DONE).exists()]
    if failed:
        for s in failed:
            hooks.say(f"  seed {s.member}: {s.state} — {s.message or s.stderr}")
        raise QdgapError(
            f"{len(failed)} member(s) failed in job {job.job_id} (seeds {ranges([int(s.member) for s in failed])}); "
            "rerun the same command to resubmit only those"
        )
    hooks.say(f"job array {job.job_id}: all {len(job.members)} member(s) done")
