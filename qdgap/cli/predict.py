"""``qdgap predict``: the ensemble's gaps for a trajectory, with mean and spread."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from qdgap.cli import ui
from qdgap.cli.types import DEMO_DATA, OutPath, RunsDir, TrajPath

Frames = Annotated[
    str, typer.Option("--frames", help="unseen (outside every member's labelled pool), test (members' test splits) or all.")
]
AllowDataChange = Annotated[
    bool, typer.Option("--allow-data-change", help="Use the data file even if it changed since the members were trained on it.")
]
InferenceDevice = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (CUDA when present).")]
Backend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="torchscript (model.ts) or onnxruntime (model.onnx, exported on first use; needs the onnx extra). "
        "Default: the faster one in bench/results.md.",
        show_default=False,
    ),
]


def predict(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_DATA,
    frames: Frames = "unseen",
    output: OutPath = Path("predictions.h5"),
    device: InferenceDevice = "auto",
    backend: Backend = None,
    allow_data_change: AllowDataChange = False,
) -> None:
    """Predict band gaps with every member; write predictions.h5 (+ .csv) and print the errors."""
    from qdgap.core import predict as pr
    from qdgap.core import schema
    from qdgap.core.data import read_trajectory
    from qdgap.core.export import check_backend
    from qdgap.core.files import check_output_file, exclusive_lock
    from qdgap.core.runs import load_members
    from qdgap.core.train import resolve_device

    if frames not in pr.FRAME_SETS:
        raise ui.usage_error(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    backend = check_backend(backend)
    dev = resolve_device(device)
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=allow_data_change)
    chosen = pr.select_frames(members, traj, frames)
    check_output_file(output)  # a folder, or an unwritable place: refused before the work, not after
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        with ui.progress(f"predict ({len(members)} members)", len(members) * len(chosen), unit="frame") as advance:
            pred = pr.predict_ensemble(
                members, traj, chosen, cache_dir=pr.runs_cache_dir(runs), device=str(dev), backend=backend, progress=advance
            )
        summary = pr.summarise(pred)
        attrs = {
            schema.ATTR_INPUT_SHA256: traj.sha256,
            schema.ATTR_INPUT_PATH: str(data.resolve()),
            "frames": frames,
            "backend": backend,
            **{k: v for k, v in summary.items() if not isinstance(v, list)},
        }
        pr.write_predictions(pred, output, attrs=attrs)
    _print_summary(output, len(members), len(chosen), summary)


def _print_summary(output: Path, n_members: int, n_frames: int, s: dict) -> None:
    out = ui.stdout_console()
    out.print(f"wrote {output} and {output.with_suffix('.csv').name}: {n_members} members x {n_frames} frames")
    if "ensemble_rmse_mev" in s:
        out.print(
            f"  on {s['n_labelled']} labelled frames: ensemble RMSE {s['ensemble_rmse_mev']:.1f} meV, "
            f"MAE {s['ensemble_mae_mev']:.1f} meV; members RMSE {s['best_member_rmse_mev']:.1f}-"
            f"{s['worst_member_rmse_mev']:.1f} meV; true gap within mean ± 2 std on {100 * s['coverage_2std']:.0f} % of frames"
        )
    else:
        out.print("  no labelled frames among them: nothing to compare against")


def fna(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_DATA,
    frames: Frames = "unseen",
    every: Annotated[int, typer.Option("--every", help="Use every k-th of the chosen frames (FNA costs N + 1 forwards per frame).")] = 1,
    mask: Annotated[str, typer.Option("--mask", help="full (atom, its bonds and their angles) or seed (the original script's: atom and zero-length bonds).")] = "full",
    chunk: Annotated[int | None, typer.Option("--chunk", help="Masked copies per forward (default: sized for the device's memory).")] = None,
    output: OutPath = Path("fna.h5"),
    csv: Annotated[Path | None, typer.Option("--csv", help="Importance table (default: average_rmse_results.csv beside the output).")] = None,
    device: InferenceDevice = "auto",
    backend: Backend = None,
    allow_data_change: AllowDataChange = False,
) -> None:
    """Rank atoms by Feature Nullification Analysis: nullify each atom, re-predict, compare with the true gaps."""
    from qdgap.core import fna as fn
    from qdgap.core import predict as pr
    from qdgap.core import schema
    from qdgap.core.data import read_trajectory
    from qdgap.core.export import check_backend
    from qdgap.core.files import check_output_file, exclusive_lock
    from qdgap.core.runs import load_members
    from qdgap.core.train import resolve_device
    from qdgap.kernels.fna import MODES

    if frames not in pr.FRAME_SETS:
        raise ui.usage_error(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    if mask not in MODES:
        raise ui.usage_error(f"--mask must be one of {', '.join(MODES)}, got {mask!r}")
    if every < 1:
        raise ui.usage_error(f"--every must be at least 1, got {every}")
    if chunk is not None and chunk < 1:
        raise ui.usage_error(f"--chunk must be at least 1, got {chunk}")
    backend = check_backend(backend)
    dev = resolve_device(device)
    csv_path = csv or output.parent / "average_rmse_results.csv"
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=allow_data_change)
    chosen = pr.select_frames(members, traj, frames)[::every]
    chosen = chosen[np.isfinite(traj.gap_ev[chosen])]
    if chosen.size == 0:
        raise ui.usage_error(f"{data}: none of the chosen frames has a true gap; FNA needs labelled frames")
    evaluations = len(members) * len(chosen) * (traj.num_atoms + 1)
    check_output_file(output)  # a folder, or an unwritable place: refused before the work, not after
    check_output_file(csv_path)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        with ui.progress(f"FNA ({len(members)} members, {len(chosen)} frames)", evaluations, unit="masked") as advance:
            result = fn.run_fna(
                members,
                traj,
                chosen,
                mode=mask,
                chunk=chunk,
                device=str(dev),
                backend=backend,
                cache_dir=pr.runs_cache_dir(runs),
                partial_dir=output.parent / f".{output.name}.partial",
                progress=advance,
            )
        attrs = {
            schema.ATTR_INPUT_SHA256: traj.sha256,
            schema.ATTR_INPUT_PATH: str(data.resolve()),
            "mask": mask,
            "frames": frames,
            "every": every,
            "backend": backend,
        }
        table = fn.write_fna(result, output, csv_path, attrs=attrs)
        shutil.rmtree(output.parent / f".{output.name}.partial", ignore_errors=True)
    out = ui.stdout_console()
    out.print(f"wrote {output} and {csv_path}: {len(members)} members x {len(chosen)} frames x {traj.num_atoms} atoms ({mask} mask)")
    out.print(f"  unmasked ensemble RMSE {table['baseline_rmse_mev'][0]:.1f} meV; most important atoms:")
    for i in range(min(10, len(table["atom_label"]))):
        out.print(
            f"  {table['rank'][i]:>3}. {table['atom_label'][i]:<6} RMSE {table['rmse_mev_mean'][i]:7.1f} ± "
            f"{table['rmse_mev_std'][i]:.1f} meV  (+{table['delta_rmse_mev'][i]:.1f})"
        )
