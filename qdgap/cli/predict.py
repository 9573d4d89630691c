"""``qdgap predict``: the ensemble's gaps for a trajectory, with mean and spread."""

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


def predict(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_DATA,
    frames: Frames = "unseen",
    output: OutPath = Path("predictions.h5"),
    device: InferenceDevice = "auto",
    backend: Backend = None,
    allow_data_change: AllowDataChange = False,
    level: Annotated[
        float, typer.Option("--level", help="Nominal coverage of the calibrated interval gap_lo_ev..gap_hi_ev.")
    ] = 0.95,
    interval: Annotated[
        str | None,
        typer.Option(
            "--interval",
            help="scale (mean ± normal quantile x calibrated std; the default) or conformal (split-conformal quantile).",
            show_default=False,
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
    """Predict band gaps with every member; write predictions.h5 (+ .csv) with the raw and calibrated spread,
    an interval and extrapolation flags, and print the errors and the coverage."""
    from qdgap.core.workflow import inference as inf
    from qdgap.core.workflow import part_array as pa
    from qdgap.core.workflow.slurm import ArrayOptions

    array, runtime = split_backend(backend)
    pa.check_not_mixed(part=part, backend=array, frames_per_task=frames_per_task, wait=wait, dry_run=dry_run)
    resources = slurm_resources(
        array, "qdgap-predict", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel,
        usual_time_min=60,
    )  # fmt: skip
    inf.predict_to_file(
        runs, data, output, frames=frames, device=device, backend=runtime, level=level, interval=interval,
        allow_data_change=allow_data_change, frames_per_task=frames_per_task, part=part,
        array=None if resources is None else ArrayOptions(resources, wait=wait, dry_run=dry_run), hooks=hooks(),
    )  # fmt: skip
