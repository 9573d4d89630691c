"""``qdgap fna``: Feature Nullification Analysis, every atom of every chosen frame masked, for every member."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli.arrays import slurm_resources, split_backend
from qdgap.cli.options import (
    DEMO_DATA,
    AllowDataChange,
    Backend,
    Frames,
    FramesPerTask,
    InferenceDevice,
    OutPath,
    PartOpt,
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
    TrajPath,
)
from qdgap.cli.render import hooks


def fna(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_DATA,
    frames: Frames = "unseen",
    every: Annotated[
        int, typer.Option("--every", help="Use every k-th of the chosen frames (FNA costs N + 1 forwards per frame).")
    ] = 1,
    mask: Annotated[
        str,
        typer.Option(
            "--mask",
            help="full (atom, its bonds and their angles) or seed (the original script's: atom and zero-length bonds).",
        ),
    ] = "full",
    chunk: Annotated[
        int | None, typer.Option("--chunk", help="Masked copies per forward (default: sized for the device's memory).")
    ] = None,
    output: OutPath = Path("fna.h5"),
    csv: Annotated[
        Path | None,
        typer.Option("--csv", help="Importance table (default: average_rmse_results.csv beside the output)."),
    ] = None,
    device: InferenceDevice = "auto",
    backend: Backend = None,
    allow_data_change: AllowDataChange = False,
    score: Annotated[
        str,
        typer.Option(
            "--score",
            help="What ranks the atoms: rmse (masked minus unmasked RMSE against the true gaps, meV), shift "
            "(mean |masked - unmasked|, meV; needs no labels) or auto (rmse when the frames have labels).",
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap behind the intervals and p-values.")] = 0,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap replicates (blocks of consecutive frames x members).")
    ] = 2000,
    top_k: Annotated[int, typer.Option("--top-k", help="rank_stability: how often an atom is among the top k.")] = 10,
    correction: Annotated[
        str,
        typer.Option(
            "--correction",
            help="For testing every atom: holm (family-wise error) or bh (Benjamini-Hochberg, false discovery rate).",
        ),
    ] = "holm",
    xyz: Annotated[
        Path | None,
        typer.Option(
            "--xyz", help="Also write every FNA frame as extended XYZ with a per-atom importance array (meV)."
        ),
    ] = None,
    frames_per_task: FramesPerTask = None,
    part: PartOpt = None,
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
    """Rank atoms by Feature Nullification Analysis: nullify each atom, re-predict, compare with the true gaps."""
    from qdgap.core.workflow import inference as inf
    from qdgap.core.workflow import part_array as pa
    from qdgap.core.workflow.slurm import ArrayOptions

    array, runtime = split_backend(backend)
    pa.check_not_mixed(part=part, backend=array, frames_per_task=frames_per_task, wait=wait, dry_run=dry_run)
    resources = slurm_resources(
        array, "qdgap-fna", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel,
        usual_time_min=60,
    )  # fmt: skip
    statistics = inf.FnaStatistics(score=score, bootstrap=bootstrap, top_k=top_k, correction=correction, seed=seed)
    inf.fna_to_file(
        runs, data, output, frames=frames, every=every, mask=mask, chunk=chunk, csv=csv, xyz=xyz, device=device,
        backend=runtime, allow_data_change=allow_data_change, statistics=statistics,
        frames_per_task=frames_per_task, part=part,
        array=None if resources is None else ArrayOptions(resources, wait=wait, dry_run=dry_run), hooks=hooks(),
    )  # fmt: skip
