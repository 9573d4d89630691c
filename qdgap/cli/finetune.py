"""``qdgap finetune``: adapt a trained ensemble to an extension of the trajectory, and compare."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.arrays import slurm_resources, submit_members, wait_members
from qdgap.cli.options import (
    DEMO_EXTENDED,
    Backend,
    BatchSize,
    Device,
    FramesFrom,
    Jobs,
    OutDir,
    Patience,
    RunsDir,
    SlurmAccount,
    SlurmCpus,
    SlurmDryRun,
    SlurmGpus,
    SlurmImage,
    SlurmMaxParallel,
    SlurmMem,
    SlurmPartition,
    SlurmTime,
    SlurmWait,
    Stride,
    TrajPath,
)

FreezeBlocks = Annotated[
    int | None,
    typer.Option(
        "--freeze-blocks",
        "-k",
        help="Freeze the first K ALIGNN blocks, 0 to the model's number (default: 3, but never all: 3 of 4 on paper, 1 of 2 on demo).",
        show_default=False,
    ),
]
FreezeEmbeddings = Annotated[
    bool, typer.Option("--freeze-embeddings/--no-freeze-embeddings", help="Freeze the atom, bond and angle embeddings.")
]
FtEpochs = Annotated[int, typer.Option("--epochs", help="Most epochs of fine-tuning, and of the scratch baseline.")]
FtLearningRate = Annotated[
    float | None,
    typer.Option(
        "--lr",
        help="Peak learning rate of the fine-tuning's one-cycle schedule (default: the members' own; the baseline always keeps theirs).",
        show_default=False,
    ),
]
OneSeed = Annotated[
    int | None,
    typer.Option(
        "--seed", "-s", help="Fine-tune only this member (what a Slurm array task runs); no baselines, no report."
    ),
]
Baselines = Annotated[
    bool,
    typer.Option(
        "--baselines/--no-baselines",
        help="Also score the pretrained ensemble and train the same seeds from scratch on the extension (RUNS_FT/../runs_scratch).",
    ),
]
ReportPath = Annotated[
    Path | None,
    typer.Option(
        "--report", help="Report CSV (default: finetune_report.csv beside the output folder; the .json twin beside it)."
    ),
]


def finetune(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_EXTENDED,
    output: OutDir = Path("runs_ft"),
    freeze_blocks: FreezeBlocks = None,
    freeze_embeddings: FreezeEmbeddings = True,
    epochs: FtEpochs = 50,
    lr: FtLearningRate = None,
    patience: Patience = None,
    stride: Stride = None,
    batch_size: BatchSize = None,
    frames_from: FramesFrom = None,
    seed: OneSeed = None,
    baselines: Baselines = True,
    report: ReportPath = None,
    backend: Backend = "local",
    jobs: Jobs = None,
    device: Device = "auto",
    partition: SlurmPartition = None,
    account: SlurmAccount = None,
    time_min: SlurmTime = 60,
    cpus: SlurmCpus = 4,
    gpus: SlurmGpus = 0,
    mem_gb: SlurmMem = None,
    image: SlurmImage = None,
    max_parallel: SlurmMaxParallel = None,
    wait: SlurmWait = False,
    dry_run: SlurmDryRun = False,
) -> None:
    """Fine-tune every finished member on the extension's labelled frames into OUTPUT/run_<seed>/, then compare
    pretrained, fine-tuned and from-scratch ensembles on the extension's other frames (finetune_report.csv)."""
    from qdgap.core.workflow import finetune as ft
    from qdgap.core.workflow import transfer as tr

    settings = ft.FinetuneSettings(
        freeze_blocks=freeze_blocks,
        freeze_embeddings=freeze_embeddings,
        epochs=epochs,
        learning_rate=lr,
        patience=patience,
        stride=stride,
        batch_size=batch_size,
    )
    if backend not in ("local", "slurm"):
        raise ui.usage_error(f"--backend must be local or slurm, got {backend!r}")
    if seed is not None and seed < 0:
        raise ui.usage_error(f"--seed must be a non-negative integer, got {seed}")
    if seed is not None and backend != "local":
        raise ui.usage_error("--seed fine-tunes one member here; it does not go with --backend slurm")
    if backend == "local" and (dry_run or wait):
        raise ui.usage_error("--dry-run and --wait belong to --backend slurm")
    if not data.is_file():
        raise ui.usage_error(f"{data}: no such trajectory file")
    if backend == "local":
        from qdgap.core.common.runtime import resolve_device

        resolve_device(device)  # a bad --device is refused here, not by every worker
    paths = ft.output_paths(output, report=report)
    _check_distinct(runs, paths, baselines=baselines and seed is None)

    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(data)
    if frames_from is not None:
        from dataclasses import replace

        from qdgap.core.analysis.select import frames_from as read_frames

        settings = replace(
            settings, pool_frames=read_frames(frames_from, traj.gap_ev), frames_from=str(frames_from.absolute())
        )
    members = ft.finished_members(runs, seeds=None if seed is None else [seed])
    settings = ft.with_defaults(settings, members)
    ft.check_members(members, traj, settings)
    for m in members:
        ft.load_pretrained(m)  # every best.pt readable and of the config's shape, before any work
    counts = ft.parameter_counts(members[0].config, settings)
    _print_freezing(members[0].config.model.alignn_layers, settings, counts)

    if seed is not None:
        _finetune_one(traj, members[0], settings, runs=runs, data=data, output=output, device=device)
        return
    tr.check_scorable(traj, settings, members)
    if backend == "slurm":
        resources = slurm_resources(
            "slurm", "qdgap-finetune", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel
        )
        if not _finetune_slurm(
            members,
            settings,
            runs=runs,
            data=data,
            paths=paths,
            device=device,
            baselines=baselines,
            resources=resources,
            wait=wait,
            dry_run=dry_run,
        ):
            return
    else:
        _finetune_local(
            members, settings, runs=runs, data=data, paths=paths, device=device, baselines=baselines, jobs=jobs
        )
    _report(traj, members, settings, counts, runs=runs, data=data, paths=paths, device=device, baselines=baselines)


def _check_distinct(runs: Path, paths, *, baselines: bool) -> None:
    where = {"the pretrained runs (--runs)": runs, "the output (-o)": paths.finetuned}
    if baselines:
        where["the scratch baseline"] = paths.scratch
    seen: dict[Path, str] = {}
    for name, path in where.items():
        key = Path(path).resolve()
        if key in seen:
            raise ui.usage_error(f"{path}: would be both {seen[key]} and {name}; choose another -o")
        seen[key] = name


def _print_freezing(blocks: int, settings, counts) -> None:
    parts = ["the embeddings"] if settings.freeze_embeddings else []
    k = settings.freeze_blocks
    if k:
        parts.append(f"ALIGNN block{'s 1-' if k > 1 else ' '}{k} of {blocks}")
    frozen = " and ".join(parts) if parts else "nothing"
    total = counts.trainable + counts.frozen
    ui.stdout_console().print(
        f"freezing {frozen}: {counts.frozen:,} frozen, {counts.trainable:,} trainable parameters "
        f"({100 * counts.trainable / max(1, total):.1f} % of {total:,} train)"
    )


def _finetune_one(traj, member, settings, *, runs, data, output, device) -> None:
    from qdgap.cli.signals import stop_requested
    from qdgap.core.common.errors import Interrupted
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow import finetune as ft

    run = rf.run_dir(output, member.seed)
    if (run / rf.DONE).exists():
        ui.stdout_console().print(f"{run}: already done; nothing to fine-tune")
        return
    with (
        stop_requested() as stop,
        ui.progress(f"finetune seed {member.seed}", settings.epochs, unit="epoch") as advance,
    ):
        try:
            result = ft.finetune_member(
                traj,
                member,
                settings,
                runs=runs,
                output=output,
                device=device,
                data_path=str(data),
                progress=advance,
                should_stop=stop,
            )
        except Interrupted as exc:
            exc.exit_code = stop.exit_code
            raise
    ui.stdout_console().print(
        f"{run}: {result.epochs_run} epochs (best {result.best_epoch}), val MAE {result.best_val_mae_mev:.1f} meV, "
        f"test RMSE {result.test_rmse_mev:.1f} meV / MAE {result.test_mae_mev:.1f} meV on {result.n_test} frames, "
        f"{result.seconds:.1f} s; {result.frozen_params:,} frozen, {result.trainable_params:,} trainable parameters"
    )


def _finetune_local(members, settings, *, runs, data, paths, device, baselines, jobs) -> None:
    from qdgap.cli.signals import stop_requested
    from qdgap.core.common.errors import Interrupted
    from qdgap.core.workflow import finetune as ft
    from qdgap.core.workflow.ensemble import default_jobs

    n_jobs = jobs if jobs is not None else default_jobs(len(members), device)
    stages = [("finetune", paths.finetuned)] + ([("scratch", paths.scratch)] if baselines else [])
    for stage, folder in stages:
        total = len(members) * settings.epochs
        with stop_requested() as stop, ui.progress(f"{stage} ({len(members)} members)", total, unit="epoch") as advance:
            common = dict(jobs=n_jobs, device=device, progress=advance, should_stop=stop)
            if stage == "finetune":
                outcomes = ft.finetune_local(data, members, settings, runs=runs, output=folder, **common)
            else:
                outcomes = ft.scratch_local(data, members, settings, output=folder, **common)
        ui.print_outcomes(outcomes, folder)
        if stop():
            raise Interrupted(f"{stage} stopped; rerun the same command to finish it", exit_code=stop.exit_code)
        failed = [o for o in outcomes if o.outcome != "trained" and o.outcome != "done"]
        if failed:
            raise ui.usage_error(
                f"{stage}: {len(failed)} member(s) not finished (seeds {', '.join(str(o.seed) for o in failed)}): {failed[0].message}"
            )


def _finetune_slurm(members, settings, *, runs, data, paths, device, baselines, resources, wait, dry_run) -> bool:
    """Submit the fine-tuning (and baseline) arrays; True when every member is done and the report can be written."""
    import dataclasses

    from qdgap.core.store import runs as rf
    from qdgap.core.workflow import finetune as ft

    seeds = [m.seed for m in members]
    arrays = ft.slurm_arrays(members, settings, runs=runs, data=data, paths=paths, device=device, baselines=baselines)
    jobs = []
    for folder, argv_of, name in arrays:
        job = submit_members(
            seeds, folder, argv_of, dataclasses.replace(resources, job_name=name), dry_run=dry_run, wait=wait
        )
        if job is not None:
            jobs.append((job, folder))
    if dry_run:
        return False
    if wait:
        for job, folder in jobs:
            wait_members(job, folder)
    done = all((rf.run_dir(folder, s) / rf.DONE).exists() for folder, _, _ in arrays for s in seeds)
    if not done:
        ui.stdout_console().print(f"rerun this command once every member is done to write {paths.report_csv}")
    return done


def _report(traj, members, settings, counts, *, runs, data, paths, device, baselines) -> None:
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow import transfer as tr

    seeds = [m.seed for m in members]
    finetuned = [rf.load_member(rf.run_dir(paths.finetuned, s)) for s in seeds]
    scratch = [rf.load_member(rf.run_dir(paths.scratch, s)) for s in seeds] if baselines else None
    n_frames = len(tr.scored_frames(finetuned, traj))
    total = n_frames * len(members) * (3 if baselines else 1)
    with ui.progress("scoring the ensembles", total, unit="frame") as advance:
        rows = tr.compare(
            traj,
            finetuned=finetuned,
            pretrained=members if baselines else None,
            scratch=scratch,
            paths=paths,
            pretrained_runs=runs,
            device=str(resolve_device(device)),
            progress=advance,
        )
    tr.write_report(rows, paths, traj=traj, data_path=data, settings=settings, counts=counts)
    out = ui.stdout_console()
    out.print(
        f"wrote {paths.report_csv} and {paths.report_json.name}: {len(members)} members, {n_frames} held-out extension frames"
    )
    for r in rows:
        wall = "" if math.isnan(r.wall_s) else f", training {r.wall_s:.0f} s"
        out.print(f"  {r.model:<10} RMSE {r.rmse_mev:7.1f} meV, MAE {r.mae_mev:7.1f} meV{wall}")
