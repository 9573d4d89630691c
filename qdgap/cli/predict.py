"""``qdgap predict``: the ensemble's gaps for a trajectory, with mean and spread."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.arrays import merged_array_attrs, one_part, run_array, slurm_resources, split_backend
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
    time_min: SlurmTime = 60,
    cpus: SlurmCpus = 4,
    gpus: SlurmGpus = 0,
    mem_gb: SlurmMem = None,
    image: SlurmImage = None,
    max_parallel: SlurmMaxParallel = None,
    wait: SlurmWait = False,
    dry_run: SlurmDryRun = False,
) -> None:
    """Predict band gaps with every member; write predictions.h5 (+ .csv) with the raw and calibrated spread,
    an interval and extrapolation flags, and print the errors and the coverage."""
    from qdgap.core.analysis import predict as pr
    from qdgap.core.common import schema
    from qdgap.core.common.files import check_output_file, exclusive_lock
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.deploy.export import check_backend
    from qdgap.core.store.runs import load_members
    from qdgap.core.workflow import part_array as pa

    array, backend = split_backend(backend)
    pa.check_not_mixed(part=part, backend=array, frames_per_task=frames_per_task, wait=wait, dry_run=dry_run)
    if frames not in pr.FRAME_SETS:
        raise ui.usage_error(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    from qdgap.core.analysis import calibration as cb

    cb.check_level(level)
    if interval is not None and interval not in cb.METHODS:
        raise ui.usage_error(f"--interval must be one of {', '.join(cb.METHODS)}, got {interval!r}")
    resources = slurm_resources(
        array, "qdgap-predict", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel
    )
    runtime = backend
    backend = check_backend(backend)
    dev = resolve_device(device)
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=allow_data_change)
    chosen = pr.select_frames(members, traj, frames)
    if part is not None:
        one_part("predict", part, members, traj, chosen, output, frames_per_task, device=str(dev), backend=runtime,
                  cache_dir=pr.runs_cache_dir(runs))  # fmt: skip
        return
    check_output_file(output)  # a folder, or an unwritable place: refused before the work, not after
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        array_attrs = {}
        if array == "slurm":
            options = {"runs": runs, "data": data, "frames": frames, "output": output, "device": device,
                       "allow_data_change": allow_data_change}  # fmt: skip
            merged = run_array("predict", members, traj, chosen, output, options, frames_per_task, resources,
                                wait=wait, dry_run=dry_run)  # fmt: skip
            if merged is None:
                return
            pred, array_attrs = merged.result, merged_array_attrs(merged, frames_per_task)
        else:
            with ui.progress(f"predict ({len(members)} members)", len(members) * len(chosen), unit="frame") as advance:
                pred = pr.predict_ensemble(
                    members,
                    traj,
                    chosen,
                    cache_dir=pr.runs_cache_dir(runs),
                    device=str(dev),
                    backend=backend,
                    progress=advance,
                )
        summary = pr.summarise(pred)
        calibrated, cal_summary = cb.calibrate_prediction(
            runs, members, pred, traj_sha256=traj.sha256, level=level, method=interval,
            cache_dir=pr.runs_cache_dir(runs), device=str(dev), backend=backend,
        )  # fmt: skip
        attrs = {
            schema.ATTR_INPUT_SHA256: traj.sha256,
            schema.ATTR_INPUT_PATH: str(data.resolve()),
            "frames": frames,
            "backend": backend,
            **array_attrs,
            **{k: v for k, v in summary.items() if not isinstance(v, list)},
            **cal_summary,
        }
        pr.write_predictions(pred, output, attrs=attrs, calibrated=calibrated)
    _print_summary(output, len(members), len(chosen), summary)
    _print_calibration(len(chosen), cal_summary)


def _print_calibration(n_frames: int, s: dict) -> None:
    out = ui.stdout_console()
    if "uncalibrated" in s:
        out.print(f"  spread not calibrated ({s['uncalibrated']}); no interval or extrapolation flags written")
        return
    if "coverage95_cal" in s:
        out.print(
            f"  coverage on {s['n_scored']} labelled unseen frames, 68 / 95 %: raw spread "
            f"{100 * s['coverage68_raw']:.1f} / {100 * s['coverage95_raw']:.1f} %, calibrated (x{s['calibration_scale']:.2f}) "
            f"{100 * s['coverage68_cal']:.1f} / {100 * s['coverage95_cal']:.1f} %, conformal "
            f"{100 * s['coverage68_conformal']:.1f} / {100 * s['coverage95_conformal']:.1f} %; miscalibration area "
            f"{s['miscal_area_raw']:.3f} -> {s['miscal_area_cal']:.3f}; Spearman(spread, |error|) {s['spearman_std_abs_err']:.2f}"
        )
    out.print(
        f"  {s['n_extrapolating']} of {n_frames} frames ({100 * s['n_extrapolating'] / max(1, n_frames):.1f} %) outside "
        f"what the ensemble knows (calibrated std above {s['extrapolation_threshold_mev']:.1f} meV, the largest "
        + ("between its pool frames on the training trajectory)" if s["threshold_frames"] == "between"
           else f"on its {s['calibration_frames']} calibration frames)")
    )  # fmt: skip


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
