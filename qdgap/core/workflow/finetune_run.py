"""``qdgap finetune`` as one call: check the pretrained members, fine-tune them (and train the scratch
baseline) here or as Slurm arrays, then score pretrained, fine-tuned and scratch ensembles on the
extension's held-out frames and write the transfer report.

What a member's fine-tuning is (freezing, settings, the training call) is ``workflow.finetune``; how
the ensembles are scored is ``workflow.transfer``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from qdgap.core.common.errors import Interrupted, QdgapError
from qdgap.core.common.hooks import Hooks
from qdgap.core.workflow import finetune as ft
from qdgap.core.workflow import slurm
from qdgap.core.workflow import transfer as tr
from qdgap.core.workflow.members import MembersOutcome, check_finished, submit_members, wait_members


@dataclass(frozen=True)
class MemberFinetuned:
    """One member fine-tuned here (``--seed``): its run folder and ``finetune_member``'s result."""

    run: Path
    result: object


@dataclass(frozen=True)
class TransferOutcome:
    """The transfer report written: one row per ensemble (pretrained, fine-tuned, scratch)."""

    paths: ft.OutputPaths
    n_members: int
    n_frames: int
    rows: tuple[tr.ReportRow, ...]


def freezing_line(blocks: int, settings: ft.FinetuneSettings, counts: ft.ParameterCounts) -> str:
    """What is frozen and how many parameters train, in one sentence."""
    parts = ["the embeddings"] if settings.freeze_embeddings else []
    k = settings.freeze_blocks
    if k:
        parts.append(f"ALIGNN block{'s 1-' if k > 1 else ' '}{k} of {blocks}")
    frozen = " and ".join(parts) if parts else "nothing"
    total = counts.trainable + counts.frozen
    return (
        f"freezing {frozen}: {counts.frozen:,} frozen, {counts.trainable:,} trainable parameters "
        f"({100 * counts.trainable / max(1, total):.1f} % of {total:,} train)"
    )


def _check_distinct(runs: Path, paths: ft.OutputPaths, *, baselines: bool) -> None:
    where = {"the pretrained runs (--runs)": runs, "the output (-o)": paths.finetuned}
    if baselines:
        where["the scratch baseline"] = paths.scratch
    seen: dict[Path, str] = {}
    for name, path in where.items():
        key = Path(path).resolve()
        if key in seen:
            raise QdgapError(f"{path}: would be both {seen[key]} and {name}; choose another -o")
        seen[key] = name


def finetune_ensemble(
    runs: Path,
    data: Path,
    output: Path,
    settings: ft.FinetuneSettings,
    *,
    frames_from: Path | None = None,
    seed: int | None = None,
    baselines: bool = True,
    report: Path | None = None,
    jobs: int | None = None,
    device: str = "auto",
    array: slurm.ArrayOptions | None = None,
    hooks: Hooks = Hooks(),
) -> TransferOutcome | MemberFinetuned | None:
    """Fine-tune every finished member of ``runs`` on ``data``'s labelled frames into ``output/run_<seed>/``.

    Args:
        runs: the pretrained ensemble; data: the extension (trajectory file); output: ``RUNS_FT``.
        settings: freezing and training settings (None fields: the members' own or the defaults).
        frames_from: train on exactly these labelled frames (a ``qdgap select`` CSV).
        seed: fine-tune only this member (what an array task runs); no baselines, no report.
        baselines: also score the pretrained ensemble and train the same seeds from scratch.
        report: the report CSV (default ``finetune_report.csv`` beside ``output``).
        jobs: members trained at once here; array: as Slurm arrays instead.

    Returns:
        The transfer report's rows; the one member's result for ``seed``; None when an array is not
        done yet (said how to go on).
    """
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf

    if not data.is_file():
        raise QdgapError(f"{data}: no such trajectory file")
    if array is None:
        from qdgap.core.common.runtime import resolve_device

        resolve_device(device)  # a bad --device is refused here, not by every worker
    paths = ft.output_paths(output, report=report)
    _check_distinct(runs, paths, baselines=baselines and seed is None)
    traj = read_trajectory(data)
    if frames_from is not None:
        from qdgap.core.analysis.select import frames_from as read_frames

        settings = dataclasses.replace(
            settings, pool_frames=read_frames(frames_from, traj.gap_ev), frames_from=str(frames_from.absolute())
        )
    members = ft.finished_members(runs, seeds=None if seed is None else [seed])
    settings = ft.with_defaults(settings, members)
    ft.check_members(members, traj, settings)
    for m in members:
        ft.load_pretrained(m)  # every best.pt readable and of the config's shape, before any work
    counts = ft.parameter_counts(members[0].config, settings)
    hooks.say(freezing_line(members[0].config.model.alignn_layers, settings, counts))

    if seed is not None:
        member = members[0]
        run = rf.run_dir(output, member.seed)
        if (run / rf.DONE).exists():
            hooks.say(f"{run}: already done; nothing to fine-tune")
            return None
        with (
            hooks.stop_requested() as stop,
            hooks.progress(f"finetune seed {member.seed}", settings.epochs, unit="epoch") as advance,
        ):
            try:
                result = ft.finetune_member(
                    traj, member, settings, runs=runs, output=output, device=device, data_path=str(data),
                    progress=advance, should_stop=stop,
                )  # fmt: skip
            except Interrupted as exc:
                exc.exit_code = stop.exit_code
                raise
        outcome = MemberFinetuned(run, result)
        hooks.show(outcome)
        return outcome
    tr.check_scorable(traj, settings, members)
    if array is not None:
        if not _finetune_slurm(members, settings, runs=runs, data=data, paths=paths, device=device,
                               baselines=baselines, array=array, hooks=hooks):  # fmt: skip
            return None
    else:
        _finetune_local(members, settings, runs=runs, data=data, paths=paths, device=device, baselines=baselines,
                        jobs=jobs, hooks=hooks)  # fmt: skip
    outcome = _score(traj, members, settings, counts, runs=runs, data=data, paths=paths, device=device,
                     baselines=baselines, hooks=hooks)  # fmt: skip
    hooks.show(outcome)
    return outcome


def _finetune_local(members, settings, *, runs, data, paths, device, baselines, jobs, hooks: Hooks) -> None:
    from qdgap.core.workflow.ensemble import default_jobs

    n_jobs = jobs if jobs is not None else default_jobs(len(members), device)
    stages = [("finetune", paths.finetuned)] + ([("scratch", paths.scratch)] if baselines else [])
    for stage, folder in stages:
        total = len(members) * settings.epochs
        with (
            hooks.stop_requested() as stop,
            hooks.progress(f"{stage} ({len(members)} members)", total, unit="epoch") as advance,
        ):
            common = dict(jobs=n_jobs, device=device, progress=advance, should_stop=stop)
            if stage == "finetune":
                outcomes = ft.finetune_local(data, members, settings, runs=runs, output=folder, **common)
            else:
                outcomes = ft.scratch_local(data, members, settings, output=folder, **common)
        check_finished(stage, MembersOutcome(folder, tuple(outcomes)), stop, hooks)


def _finetune_slurm(members, settings, *, runs, data, paths, device, baselines, array, hooks: Hooks) -> bool:
    """Submit the fine-tuning (and baseline) arrays; True when every member is done and the report can be written."""
    from qdgap.core.store import runs as rf

    seeds = [m.seed for m in members]
    arrays = ft.slurm_arrays(members, settings, runs=runs, data=data, paths=paths, device=device, baselines=baselines)
    jobs = []
    for folder, argv_of, name in arrays:
        resources = dataclasses.replace(array.resources, job_name=name)
        job = submit_members(seeds, folder, argv_of, resources, dry_run=array.dry_run, wait=array.wait, hooks=hooks)
        if job is not None:
            jobs.append((job, folder))
    if array.dry_run:
        return False
    if array.wait:
        for job, folder in jobs:
            wait_members(job, folder, hooks=hooks)
    done = all((rf.run_dir(folder, s) / rf.DONE).exists() for folder, _, _ in arrays for s in seeds)
    if not done:
        hooks.say(f"rerun this command once every member is done to write {paths.report_csv}")
    return done


def _score(traj, members, settings, counts, *, runs, data, paths, device, baselines, hooks: Hooks) -> TransferOutcome:
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.store import runs as rf

    seeds = [m.seed for m in members]
    finetuned = [rf.load_member(rf.run_dir(paths.finetuned, s)) for s in seeds]
    scratch = [rf.load_member(rf.run_dir(paths.scratch, s)) for s in seeds] if baselines else None
    n_frames = len(tr.scored_frames(finetuned, traj))
    total = n_frames * len(members) * (3 if baselines else 1)
    with hooks.progress("scoring the ensembles", total, unit="frame") as advance:
        rows = tr.compare(
            traj, finetuned=finetuned, pretrained=members if baselines else None, scratch=scratch, paths=paths,
            pretrained_runs=runs, device=str(resolve_device(device)), progress=advance,
        )  # fmt: skip
    tr.write_report(rows, paths, traj=traj, data_path=data, settings=settings, counts=counts)
    return TransferOutcome(paths, len(members), n_frames, tuple(rows))
