"""Every reusable option and argument type of the CLI, each help text giving its unit or format.

Commands import their options from here and never from each other, so one option
(the Slurm group included) is defined once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "cd28se17cl22_demo.h5"
DEMO_EXTENDED = Path(__file__).resolve().parents[2] / "data" / "cd28se17cl22_demo_ext.h5"

TrajPath = Annotated[Path, typer.Option("--data", "-d", help="Trajectory HDF5 file (from `qdgap data import`).")]
TrajArg = Annotated[Path, typer.Argument(help="Trajectory HDF5 file (from `qdgap data import`).", show_default=False)]
RunsDir = Annotated[Path, typer.Option("--runs", "-r", help="Folder of ensemble members (run_<seed>/).")]
OutPath = Annotated[Path, typer.Option("--output", "-o", help="Output file.")]
OutDir = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
Seed = Annotated[int, typer.Option("--seed", "-s", help="Member seed: fixes the split and the initial weights.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")]
Preset = Annotated[
    str,
    typer.Option(
        "--preset",
        help="Model and training preset: demo (small, seconds per member on a laptop), cpu (the real study on two CPU cores), paper (the original study's model and graphs), sparse (cpu learning HOMO and LUMO beside the gap, for about 100 labels; needs band edges) or tiny (smoke tests).",
    ),
]
Stride = Annotated[
    int | None,
    typer.Option("--stride", help="Labelled pool spacing in frames (default 10: every 10 fs at a 1 fs step)."),
]
SplitScheme = Annotated[
    str,
    typer.Option(
        "--split",
        help="How each member cuts the labelled pool 80/10/10: random (the study's; a test frame lies one pool "
        "spacing from training frames, so its error measures interpolation) or blocked (contiguous time blocks, "
        "so test frames lie far from every training frame).",
    ),
]
GraphChoice = Annotated[
    str | None,
    typer.Option(
        "--graph",
        help="Bonds and angles to train on instead of the preset's: pure-torch (each atom's 12 nearest within 5 Å, "
        "angles within 3.5 Å; every preset but paper), knn12 (the original study's 12-nearest graph, canonised, "
        "angles between all bonds; about 5x the cost per step) or knn12-multigraph (the same, not canonised).",
        show_default=False,
    ),
]
BlockFs = Annotated[
    float | None,
    typer.Option(
        "--block-fs",
        help="--split blocked: block length, fs (default: five correlation times of the pool's gaps, measured).",
    ),
]
Targets = Annotated[
    str | None,
    typer.Option(
        "--targets",
        help="What a member learns: gap, or gap,homo,lumo (the gap beside the band edges, which the data must "
        "hold: a labels CSV with HOMO and LUMO columns). Only the gap is kept in the member's model. At 100 "
        "labels on the real trajectory, 20 members: 98.4 against 102.6 meV for the gap alone (bench/results_sparse.md).",
        show_default=False,
    ),
]
FramesFrom = Annotated[
    Path | None,
    typer.Option(
        "--frames-from",
        help="Train on exactly the labelled frames of this CSV (its frame_index column, e.g. from `qdgap select`), "
        "split 80/10/10 per member seed; --stride is then unused.",
        show_default=False,
    ),
]


def parse_range(text: str, *, option: str) -> tuple[int, int]:
    """``"A-B"`` -> (A, B): two whole numbers with A <= B, for an option such as ``--numbers``."""
    from qdgap.core.common.errors import QdgapError

    parts = text.strip().split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise QdgapError(f"{option} {text!r}: expected A-B with two whole numbers, e.g. 1-10001")
    a, b = (int(p) for p in parts)
    if a > b:
        raise QdgapError(f"{option} {text}: the range is empty (A must be <= B)")
    return a, b


Epochs = Annotated[int | None, typer.Option("--epochs", help="Maximum epochs (default: the preset's).")]
Patience = Annotated[
    int | None, typer.Option("--patience", help="Stop after this many epochs without a better validation MAE.")
]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Frames per training batch.")]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Peak learning rate of the one-cycle schedule.")]

Members = Annotated[int, typer.Option("--members", "-m", help="Number of members; member i trains with seed base + i.")]
SeedBase = Annotated[int, typer.Option("--seed-base", help="Seed of the first member.")]
Backend = Annotated[str, typer.Option("--backend", help="local (worker processes here) or slurm (one job array).")]
Jobs = Annotated[
    int | None, typer.Option("--jobs", "-j", help="local: members trained at once (default: one per core; 1 on CUDA).")
]


def _slurm_panel(text: str) -> dict:
    return {"help": text, "rich_help_panel": "Slurm backend"}


# The Slurm backend's options, shared by every command that runs as a job array (ensemble train,
# finetune, predict, fna): a task is one member, or one part (member x block of frames) of predict/FNA.
SlurmPartition = Annotated[str | None, typer.Option(**_slurm_panel("Partition."))]
SlurmAccount = Annotated[str | None, typer.Option(**_slurm_panel("Account to charge."))]
SlurmTime = Annotated[
    int | None,
    typer.Option(
        "--time",
        **_slurm_panel("Wall time per task (member or part), minutes (default: the command's usual time, at most "
        "the partition's MaxTime)."),
        show_default=False,
    ),
]  # fmt: skip
SlurmCpus = Annotated[
    int | None,
    typer.Option(
        "--cpus", **_slurm_panel("CPU cores per task (default: 4, at most what one node has)."), show_default=False
    ),
]
SlurmGpus = Annotated[int, typer.Option("--gpus", **_slurm_panel("GPUs per task."))]
SlurmMem = Annotated[
    float | None,
    typer.Option(
        "--mem",
        **_slurm_panel("Memory per task, GB (default: one node's memory in proportion to the CPUs taken)."),
        show_default=False,
    ),
]
SlurmImage = Annotated[
    Path | None,
    typer.Option("--image", **_slurm_panel("Apptainer image: tasks run `apptainer run --nv IMAGE <command> ...`.")),
]
SlurmMaxParallel = Annotated[int | None, typer.Option("--max-parallel", **_slurm_panel("Most tasks running at once."))]
SlurmWait = Annotated[
    bool, typer.Option("--wait", **_slurm_panel("Follow the job array until every task has finished (then merge)."))
]
SlurmDryRun = Annotated[bool, typer.Option("--dry-run", **_slurm_panel("Print the sbatch script; submit nothing."))]
FramesPerTask = Annotated[
    int | None,
    typer.Option(
        "--frames-per-task",
        **_slurm_panel("predict/fna: cut each member's frames into blocks of this many, one task per member x block "
        "(default: one task per member)."),
        show_default=False,
    ),
]  # fmt: skip
# What an array task of predict/fna runs: compute only part SEED:BLOCK and write its file beside the output.
PartOpt = Annotated[str | None, typer.Option("--part", hidden=True, help="SEED[:BLOCK]: compute only this part.")]

# predict and fna
Frames = Annotated[
    str,
    typer.Option("--frames", help="unseen (outside every member's labelled pool), test (members' test splits) or all."),
]
AllowDataChange = Annotated[
    bool,
    typer.Option(
        "--allow-data-change", help="Use the data file even if it changed since the members were trained on it."
    ),
]
InferenceDevice = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (CUDA when present).")]
Backend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Where and how: local (this process) or slurm (one job array, a task per member or per member x "
        "block of frames, merged here); torchscript (model.ts) or onnxruntime (model.onnx, exported on first use; "
        "needs the onnx extra) run here with that runtime. Default: local, with the faster runtime in bench/results.md.",
        show_default=False,
    ),
]
