"""``qdgap train``: one ensemble member."""

from __future__ import annotations

from pathlib import Path

from qdgap.cli import ui
from qdgap.cli.options import (
    DEMO_DATA,
    BatchSize,
    BlockFs,
    Device,
    Epochs,
    FramesFrom,
    GraphChoice,
    LearningRate,
    OutDir,
    Patience,
    Preset,
    Seed,
    SplitScheme,
    Stride,
    Targets,
    TrajPath,
)


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
    split: SplitScheme = "random",
    block_fs: BlockFs = None,
    graph: GraphChoice = None,
    targets: Targets = None,
    frames_from: FramesFrom = None,
    device: Device = "auto",
) -> None:
    """Train one ensemble member into OUTPUT/run_<seed>/ (resumes an interrupted one)."""
    from qdgap.core.config import resolve_config

    config = resolve_config(
        preset, epochs=epochs, patience=patience, batch_size=batch_size, learning_rate=lr, stride=stride,
        split=split, block_fs=block_fs, graph=graph, targets=targets,
    )  # fmt: skip
    if seed < 0:
        raise ui.usage_error(f"--seed must be a non-negative integer, got {seed}")
    from qdgap.cli.signals import stop_requested
    from qdgap.core.common.errors import Interrupted
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf
    from qdgap.core.train.loop import train_member

    traj = read_trajectory(data)
    if frames_from is not None:
        from qdgap.core.analysis.select import with_pool_from

        config = with_pool_from(config, frames_from, data)
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
