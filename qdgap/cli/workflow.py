"""``qdgap pipeline`` and ``qdgap reproduce``: the whole study in one resumable command each.

The stages are core's (``core/pipeline``): each runs the same core call as its own command, and a stage
is skipped when its outputs exist, are readable and are newer than what they were made from (make's
rule); ``--from STAGE`` redoes that stage and every later one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import DEMO_DATA, DEMO_EXTENDED, BlockFs, Preset, SeedBase, SplitScheme, Stride
from qdgap.cli.render import hooks
from qdgap.core.pipeline.reproduce import STAGES as REPRODUCE_STAGES
from qdgap.core.pipeline.study import STAGES


def pipeline(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Trajectory to train on (1 fs frames, gaps where known).")
    ] = DEMO_DATA,
    extended: Annotated[
        Path | None,
        typer.Option("--extended", "-e", help="Later stretch of the trajectory for transfer learning; none skips it."),
    ] = DEMO_EXTENDED,
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Where every output goes.")] = Path("work/demo"),
    preset: Preset = "demo",
    members: Annotated[int, typer.Option("--members", "-m", help="Ensemble members.")] = 20,
    backend: Annotated[
        str, typer.Option("--backend", help="local or slurm (training and fine-tuning as job arrays).")
    ] = "local",
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", help="local: members trained at once (default: one per core).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")] = "auto",
    fna_every: Annotated[
        int,
        typer.Option(
            "--fna-every", help="FNA on every k-th unseen labelled frame (each costs N + 1 forwards per member)."
        ),
    ] = 10,
    fna_mask: Annotated[str, typer.Option("--fna-mask", help="full or seed (see `qdgap fna --help`).")] = "full",
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", help="Most epochs of fine-tuning (and of the scratch baseline).")
    ] = 50,
    from_stage: Annotated[
        str | None, typer.Option("--from", help=f"Redo from this stage: {', '.join(STAGES)}.")
    ] = None,
    image: Annotated[Path | None, typer.Option("--image", help="slurm: Apptainer image each task runs in.")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="slurm: partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="slurm: account.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="slurm: GPUs per member.")] = 0,
    stride: Stride = None,
    split: SplitScheme = "random",
    block_fs: BlockFs = None,
    seed_base: SeedBase = 0,
) -> None:
    """Train the ensemble, predict the trajectory, rank atoms (FNA), fine-tune on the extension and write the report."""
    from qdgap.core.pipeline.study import StudySettings, run_pipeline
    from qdgap.core.workflow.slurm import SlurmResources

    if backend not in ("local", "slurm"):
        raise ui.usage_error(f"--backend must be local or slurm, got {backend!r}")
    resources = None
    if backend == "slurm":
        # --cpus, --mem and --time are sized per stage from the partition when each array is submitted.
        resources = SlurmResources(partition=partition, account=account, gpus_per_task=gpus, image=image)
    settings = StudySettings(
        preset=preset, members=members, jobs=jobs, device=device, fna_every=fna_every, fna_mask=fna_mask,
        finetune_epochs=finetune_epochs, slurm=resources, stride=stride, split=split, block_fs=block_fs,
        seed_base=seed_base,
    )  # fmt: skip
    run_pipeline(data, extended, workdir, settings, from_stage=from_stage, hooks=hooks())


def reproduce(
    archive: Annotated[
        Path,
        typer.Option(
            "--archive",
            help="The original study's trajectory: a tar archive (or folder) of st1.vasp..st15001.vasp, 1 fs apart.",
        ),
    ],
    labels: Annotated[
        Path, typer.Option("--labels", help="PBE gaps of 0-10 ps (Cl_QD_elec_1-10k.csv: Files, Bandgap (eV), ...).")
    ],
    ext_labels: Annotated[
        Path | None,
        typer.Option("--ext-labels", help="Gaps of the 10-15 ps continuation (Cl_QD_elec_10k-15k_step_10.csv)."),
    ] = None,
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Where every output goes.")] = Path("work/reproduce"),
    preset: Preset = "cpu",
    members: Annotated[int, typer.Option("--members", "-m", help="Ensemble members (the study trained 20).")] = 20,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", help="Members trained at once (default: one per core).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")] = "auto",
    fna_every: Annotated[
        int, typer.Option("--fna-every", help="FNA on every k-th unseen frame (labelled ones only).")
    ] = 10,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", help="Most epochs of fine-tuning (the study: about 50).")
    ] = 50,
    finetune_stride: Annotated[
        int,
        typer.Option(
            "--finetune-stride",
            help="Fine-tune on every k-th extension frame that has a label (its labels are 10 frames apart: 20 "
            "fine-tunes on 250 of the 500 and scores on the other 250).",
        ),
    ] = 20,
    train_frames: Annotated[
        str, typer.Option("--train-numbers", help="The st<N> range of the training trajectory (0-10 ps).")
    ] = "1-10001",
    ext_frames: Annotated[
        str, typer.Option("--ext-numbers", help="The st<N> range of the continuation (10-15 ps).")
    ] = "10001-15001",
    from_stage: Annotated[
        str | None, typer.Option("--from", help=f"Redo from this stage: {', '.join(REPRODUCE_STAGES)}.")
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            "--stride",
            help="Label every k-th frame of 0-10 ps as the pool (default 10, the study's: 1,000 labels; 100 is the "
            "sparse study: 100 labels, where interpolation in time fails).",
        ),
    ] = None,
    split: SplitScheme = "random",
    block_fs: BlockFs = None,
) -> None:
    """The original study on its own DFT trajectory, resumable, ending with comparison.md beside the published numbers."""
    from qdgap.cli.options import parse_range
    from qdgap.core.pipeline.reproduce import StudyData, run_reproduce
    from qdgap.core.pipeline.study import StudySettings

    source = StudyData(
        archive=archive, labels=labels, ext_labels=ext_labels,
        train_range=parse_range(train_frames, option="--train-numbers"),
        ext_range=parse_range(ext_frames, option="--ext-numbers"),
    )  # fmt: skip
    settings = StudySettings(
        preset=preset, members=members, jobs=jobs, device=device, fna_every=fna_every,
        finetune_epochs=finetune_epochs, finetune_stride=finetune_stride, stride=stride, split=split,
        block_fs=block_fs,
    )  # fmt: skip
    run_reproduce(source, workdir, settings, from_stage=from_stage, hooks=hooks())
