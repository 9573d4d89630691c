"""``qdgap predict``: the ensemble's gaps for a trajectory, with mean and spread."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


def predict(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_DATA,
    frames: Frames = "unseen",
    output: OutPath = Path("predictions.h5"),
    device: InferenceDevice = "auto",
    allow_data_change: AllowDataChange = False,
) -> None:
    """Predict band gaps with every member; write predictions.h5 (+ .csv) and print the errors."""
    from qdgap.core import predict as pr
    from qdgap.core import schema
    from qdgap.core.data import read_trajectory
    from qdgap.core.files import exclusive_lock
    from qdgap.core.runs import load_members
    from qdgap.core.train import resolve_device

    if frames not in pr.FRAME_SETS:
        raise ui.usage_error(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    dev = resolve_device(device)
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=allow_data_change)
    chosen = pr.select_frames(members, traj, frames)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        with ui.progress(f"predict ({len(members)} members)", len(members) * len(chosen), unit="frame") as advance:
            pred = pr.predict_ensemble(members, traj, chosen, cache_dir=pr.runs_cache_dir(runs), device=str(dev), progress=advance)
        summary = pr.summarise(pred)
        attrs = {
            schema.ATTR_INPUT_SHA256: traj.sha256,
            schema.ATTR_INPUT_PATH: str(data.resolve()),
            "frames": frames,
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
