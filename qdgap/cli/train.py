"""``qdgap train``: one ensemble member."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.types import DEMO_DATA, Device, OutDir, Preset, Seed, Stride, TrajPath

Epochs = Annotated[int | None, typer.Option("--epochs", help="Maximum epochs (default: the preset's).")]
Patience = Annotated[int | None, typer.Option("--patience", help="Stop after this many epochs without a better validation MAE.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Frames per training batch.")]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Peak learning rate of the one-cycle schedule.")]


def train(
    seed: Seed = 0,
    data: TrajPath = DEMO_DATA,
    preset: Preset = "demo",
    output: OutDir = Path("runs"),
    epochs: Epochs = None,
    patience: Patience = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    stride: Stride = None,
    device: Device = "auto",
) -> None:
    """Train one ensemble member into OUTPUT/run_<seed>/ (resumes an interrupted one)."""
    from qdgap.core.config import resolve_config

    config = resolve_config(preset, epochs=epochs, patience=patience, batch_size=batch_size, learning_rate=lr, stride=stride)
    if seed < 0:
        raise ui.usage_error(f"--seed must be a non-negative integer, got {seed}")
    from qdgap.core import runs as rf
    from qdgap.core.data import read_trajectory
    from qdgap.cli.signals import stop_requested
    from qdgap.core.errors import Interrupted
    from qdgap.core.train import train_member

    traj = read_trajectory(data)
    run = rf.run_dir(output, seed)
    if (run / rf.DONE).exists():
        ui.stdout_console().print(f"{run}: already done; nothing to train")
        return
    with stop_requested() as stop, ui.progress(f"train seed {seed}", config.train.epochs, unit="epoch") as advance:
        try:
            result = train_member(
                traj,
                config,
                seed=seed,
                run_dir=run,
                device=device,
                cache_dir=output / rf.CACHE_DIR,
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
        f"{result.seconds:.1f} s"
    )
