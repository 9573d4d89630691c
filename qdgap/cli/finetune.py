"""``qdgap finetune``: adapt a trained ensemble to an extension of the trajectory, and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.arrays import slurm_resources
from qdgap.cli.options import (
    DEMO_EXTENDED,
    Backend,
    BatchSize,
    BlockFs,
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
    SplitScheme,
    Stride,
    TrajPath,
)
from qdgap.cli.render import hooks

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
    split: SplitScheme = "random",
    block_fs: BlockFs = None,
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
    time_min: SlurmTime = None,
    cpus: SlurmCpus = None,
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
    from qdgap.core.workflow.finetune_run import finetune_ensemble
    from qdgap.core.workflow.slurm import ArrayOptions

    settings = ft.FinetuneSettings(
        freeze_blocks=freeze_blocks,
        freeze_embeddings=freeze_embeddings,
        epochs=epochs,
        learning_rate=lr,
        patience=patience,
        stride=stride,
        batch_size=batch_size,
        split=split,
        block_fs=block_fs,
    )
    if backend not in ("local", "slurm"):
        raise ui.usage_error(f"--backend must be local or slurm, got {backend!r}")
    if seed is not None and seed < 0:
        raise ui.usage_error(f"--seed must be a non-negative integer, got {seed}")
    if seed is not None and backend != "local":
        raise ui.usage_error("--seed fine-tunes one member here; it does not go with --backend slurm")
    if backend == "local" and (dry_run or wait):
        raise ui.usage_error("--dry-run and --wait belong to --backend slurm")
    resources = slurm_resources(
        backend, "qdgap-finetune", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel,
        usual_time_min=60,
    )  # fmt: skip
    array = None if resources is None else ArrayOptions(resources, wait=wait, dry_run=dry_run)
    finetune_ensemble(
        runs, data, output, settings, frames_from=frames_from, seed=seed, baselines=baselines, report=report,
        jobs=jobs, device=device, array=array, hooks=hooks(),
    )  # fmt: skip
