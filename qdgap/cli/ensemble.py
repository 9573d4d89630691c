"""``qdgap ensemble ...``: train the whole ensemble locally or as a Slurm job array, and follow it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.arrays import slurm_resources
from qdgap.cli.options import (
    DEMO_DATA,
    Backend,
    BatchSize,
    BlockFs,
    Device,
    Epochs,
    FramesFrom,
    GraphChoice,
    Jobs,
    LearningRate,
    Members,
    OutDir,
    Patience,
    Preset,
    SeedBase,
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
    Targets,
    TrajPath,
)
from qdgap.cli.render import hooks

app = typer.Typer(no_args_is_help=True, help="Train an ensemble of members and follow it.")


@app.command("train")
def train(
    members: Members = 20,
    seed_base: SeedBase = 0,
    data: TrajPath = DEMO_DATA,
    preset: Preset = "demo",
    output: OutDir = Path("runs"),
    backend: Backend = "local",
    jobs: Jobs = None,
    epochs: Epochs = None,
    patience: Patience = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    stride: Stride = None,
    split: SplitScheme = "random",
    block_fs: BlockFs = None,
    graph: GraphChoice = None,
    targets: Targets = None,
    frames_from: FramesFrom = None,
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
    """Train (or finish) every member; members already DONE are skipped, interrupted ones resume."""
    from qdgap.core.config import resolve_config
    from qdgap.core.workflow.ensemble import member_seeds
    from qdgap.core.workflow.members import train_ensemble
    from qdgap.core.workflow.slurm import ArrayOptions

    seeds = member_seeds(members, seed_base)
    overrides = {
        "epochs": epochs,
        "patience": patience,
        "batch_size": batch_size,
        "learning_rate": lr,
        "stride": stride,
        "split": split,
        "block_fs": block_fs,
        "targets": targets,
    }
    config = resolve_config(preset, graph=graph, **overrides)
    if backend not in ("local", "slurm"):
        raise ui.usage_error(f"--backend must be local or slurm, got {backend!r}")
    if not data.is_file():
        raise ui.usage_error(f"{data}: no such trajectory file")
    if backend == "local" and (dry_run or wait):
        raise ui.usage_error("--dry-run and --wait belong to --backend slurm")
    if frames_from is not None:
        from qdgap.core.analysis.select import with_pool_from

        config = with_pool_from(config, frames_from, data)
    # What each array task repeats, under the command-line names qdgap train takes.
    task_options = {"epochs": epochs, "patience": patience, "batch_size": batch_size, "lr": lr, "stride": stride}
    task_options.update(split=split, block_fs=block_fs, graph=graph, targets=targets)
    if frames_from is not None:
        task_options["frames_from"] = str(frames_from.absolute())
    resources = slurm_resources(
        backend, "qdgap-train", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel,
        usual_time_min=120,
    )  # fmt: skip
    array = None if resources is None else ArrayOptions(resources, wait=wait, dry_run=dry_run)
    train_ensemble(
        data, config, seeds=seeds, runs=output, jobs=jobs, device=device, preset=preset, overrides=task_options,
        array=array, hooks=hooks(),
    )  # fmt: skip


@app.command("status")
def status(
    runs: Annotated[
        Path,
        typer.Argument(
            help="The ensemble folder (run_<seed>/ inside), or the output of a predict/FNA job array "
            "(predictions.h5, fna.h5) to see its parts."
        ),
    ] = Path("runs"),
) -> None:
    """Each member's state (done, running, pending, interrupted, failed, missing), epochs, best validation MAE and
    test RMSE; for a predict/FNA output, each part's state (done, pending, running, failed) and Slurm task."""
    from rich.table import Table

    from qdgap.core.analysis.parts import parts_folder
    from qdgap.core.workflow.ensemble import ensemble_status

    if parts_folder(runs).is_dir():
        _parts_status(runs)
        return
    if not runs.is_dir():
        raise ui.usage_error(f"{runs}: no such runs folder, nor the output of a predict/FNA job array")
    rows = ensemble_status(runs)
    if not rows:
        raise ui.usage_error(f"{runs}: no ensemble members here")
    table = Table(title=str(runs), show_lines=False)
    for col in ("seed", "state", "epochs", "best val MAE (meV)", "test RMSE (meV)", "note"):
        table.add_column(col, justify="right" if col != "note" and col != "state" else "left")
    for r in rows:
        fmt = lambda v: "" if math.isnan(v) else f"{v:.1f}"  # noqa: E731
        table.add_row(
            str(r.seed), r.state, str(r.epochs), fmt(r.best_val_mae_mev), fmt(r.test_rmse_mev), r.message[:120]
        )
    ui.stdout_console().print(table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    ui.stdout_console().print(", ".join(f"{n} {k}" for k, n in counts.items()))


def _parts_status(output: Path) -> None:
    """The parts of the predict/FNA job arrays that write ``output``, one row each."""
    from rich.table import Table

    from qdgap.core.analysis.parts import parts_folder
    from qdgap.core.workflow.part_array import part_states

    rows = part_states(parts_folder(output))
    if not rows:
        raise ui.usage_error(f"{output}: no parts computed or submitted yet")
    table = Table(title=f"{output} (parts SEED:BLOCK)", show_lines=False)
    for col in ("part", "state", "slurm task", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.part, r.state, r.job_id, r.message[:120])
    ui.stdout_console().print(table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    merged = " (merged)" if output.is_file() else ""
    ui.stdout_console().print(", ".join(f"{n} {k}" for k, n in counts.items()) + merged)
