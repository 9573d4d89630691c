"""``qdgap predict``: the ensemble's gaps for a trajectory, with mean and spread."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from qdgap.cli import ui
from qdgap.cli.options import (
    DEMO_DATA,
    FramesPerTask,
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
    from qdgap.core import part_array as pa
    from qdgap.core import predict as pr
    from qdgap.core import schema
    from qdgap.core.data import read_trajectory
    from qdgap.core.export import check_backend
    from qdgap.core.files import check_output_file, exclusive_lock
    from qdgap.core.runs import load_members
    from qdgap.core.runtime import resolve_device

    array, backend = _split_backend(backend)
    pa.check_not_mixed(part=part, backend=array, frames_per_task=frames_per_task, wait=wait, dry_run=dry_run)
    if frames not in pr.FRAME_SETS:
        raise ui.usage_error(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    from qdgap.core import calibration as cb

    cb.check_level(level)
    if interval is not None and interval not in cb.METHODS:
        raise ui.usage_error(f"--interval must be one of {', '.join(cb.METHODS)}, got {interval!r}")
    resources = _resources(
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
        _one_part("predict", part, members, traj, chosen, output, frames_per_task, device=str(dev), backend=runtime,
                  cache_dir=pr.runs_cache_dir(runs))  # fmt: skip
        return
    check_output_file(output)  # a folder, or an unwritable place: refused before the work, not after
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        array_attrs = {}
        if array == "slurm":
            options = {"runs": runs, "data": data, "frames": frames, "output": output, "device": device,
                       "allow_data_change": allow_data_change}  # fmt: skip
            merged = _run_array("predict", members, traj, chosen, output, options, frames_per_task, resources,
                                wait=wait, dry_run=dry_run)  # fmt: skip
            if merged is None:
                return
            pred, array_attrs = merged.result, _array_attrs(merged, frames_per_task)
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


def _split_backend(backend: str | None) -> tuple[str, str | None]:
    """``--backend`` -> (local or slurm, the model runtime or None for the default)."""
    from qdgap.core.export import BACKENDS

    if backend in ("local", "slurm"):
        return backend, None
    if backend is not None and backend not in BACKENDS:
        raise ui.usage_error(f"--backend must be one of {', '.join(BACKENDS)} or local, slurm; got {backend!r}")
    return "local", backend


def _resources(array, job_name, partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel):
    """The Slurm resources of a ``--backend slurm`` run (checked before any work); None for local."""
    if array != "slurm":
        return None
    from qdgap.core import slurm

    return slurm.SlurmResources(
        partition=partition,
        account=account,
        time_min=time_min,
        cpus_per_task=cpus,
        gpus_per_task=gpus,
        mem_gb=mem_gb,
        image=image,
        max_parallel=max_parallel,
        job_name=job_name,
    )


def _one_part(kind, part, members, traj, chosen, output, frames_per_task, **kwargs) -> None:
    """What an array task runs: compute part SEED:BLOCK and write its file beside the output."""
    from qdgap.core import parts as pt

    which = pt.parse_part(kind, part)
    sub = pt.block_frames(chosen, which.block, frames_per_task)
    total = len(sub) * (traj.num_atoms + 1 if kind == "fna" else 1)
    with ui.progress(f"{kind} part {which.name}", total, unit="masked" if kind == "fna" else "frame") as advance:
        path = pt.compute_part(
            which, members, traj, chosen, frames_per_task=frames_per_task, folder=pt.parts_folder(output),
            progress=advance, **kwargs,
        )  # fmt: skip
    ui.stdout_console().print(f"wrote part {which.name} of {output} ({len(sub)} frames): {path}")


def _run_array(kind, members, traj, chosen, output, options, frames_per_task, resources, *, wait, dry_run, mode=""):
    """Submit the missing parts as one job array (and follow it with ``wait``); the merged parts once all
    are there, else None after saying where things stand."""
    from qdgap.core import part_array as pa
    from qdgap.core import parts as pt

    out = ui.stdout_console()
    n_parts = len(members) * pt.num_blocks(len(chosen), frames_per_task)
    with ui.progress(f"slurm {kind} ({n_parts} parts)", n_parts, unit="part") as advance:
        run = pa.run_array(
            kind, members, traj, chosen, output=output, options=options, frames_per_task=frames_per_task,
            resources=resources, mode=mode, wait=wait, dry_run=dry_run, progress=advance,
        )  # fmt: skip
    if dry_run:
        typer.echo(run.script or f"{output}: nothing to submit, all {run.total} parts done")
        return None
    if run.skipped:
        out.print(f"{output}: {len(run.skipped)} part(s) already queued or running; not submitted again")
    if run.submitted is not None:
        job = run.submitted
        out.print(f"submitted job array {job.job_id}: {len(job.members)} of {run.total} {kind} part(s) of {output}")
    if run.failed:
        for s in run.failed:
            out.print(f"  part {s.part}: {s.state} {s.job_id} — {s.message}")
        first = run.failed[0]
        raise ui.usage_error(
            f"{len(run.failed)} of {run.total} {kind} part(s) failed ({', '.join(s.part for s in run.failed[:5])}): "
            f"{first.message or first.state}; nothing merged, rerun the same command to resubmit only those"
        )
    if run.merged is None:
        out.print(
            f"{run.done} of {run.total} parts done; follow them with `qdgap status {output}`, then rerun this "
            "command to merge them (failed parts are resubmitted)"
        )
        return None
    return run.merged


def _array_attrs(merged, frames_per_task) -> dict:
    from qdgap.core import schema

    return {
        schema.ATTR_SLURM_JOBS: ",".join(merged.job_ids),
        schema.ATTR_SLURM_PARTS: merged.num_parts,
        schema.ATTR_FRAMES_PER_TASK: frames_per_task or 0,
    }


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
    time_min: SlurmTime = 60,
    cpus: SlurmCpus = 4,
    gpus: SlurmGpus = 0,
    mem_gb: SlurmMem = None,
    image: SlurmImage = None,
    max_parallel: SlurmMaxParallel = None,
    wait: SlurmWait = False,
    dry_run: SlurmDryRun = False,
) -> None:
    """Rank atoms by Feature Nullification Analysis: nullify each atom, re-predict, compare with the true gaps."""
    from qdgap.core import fna as fn
    from qdgap.core import importance as imp
    from qdgap.core import part_array as pa
    from qdgap.core import predict as pr
    from qdgap.core import schema
    from qdgap.core.data import read_trajectory
    from qdgap.core.export import check_backend
    from qdgap.core.files import check_output_file, exclusive_lock
    from qdgap.core.runs import load_members
    from qdgap.core.runtime import resolve_device
    from qdgap.kernels.fna import MODES

    array, backend = _split_backend(backend)
    pa.check_not_mixed(part=part, backend=array, frames_per_task=frames_per_task, wait=wait, dry_run=dry_run)
    if frames not in pr.FRAME_SETS:
        raise ui.usage_error(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    if mask not in MODES:
        raise ui.usage_error(f"--mask must be one of {', '.join(MODES)}, got {mask!r}")
    if every < 1:
        raise ui.usage_error(f"--every must be at least 1, got {every}")
    if chunk is not None and chunk < 1:
        raise ui.usage_error(f"--chunk must be at least 1, got {chunk}")
    if score not in fn.SCORE_CHOICES:
        raise ui.usage_error(f"--score must be one of {', '.join(fn.SCORE_CHOICES)}, got {score!r}")
    if correction not in imp.CORRECTIONS:
        raise ui.usage_error(f"--correction must be one of {', '.join(imp.CORRECTIONS)}, got {correction!r}")
    if bootstrap < imp.MIN_BOOTSTRAP:
        raise ui.usage_error(f"--bootstrap must be at least {imp.MIN_BOOTSTRAP}, got {bootstrap}")
    if top_k < 1:
        raise ui.usage_error(f"--top-k must be at least 1, got {top_k}")
    resources = _resources(array, "qdgap-fna", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel)
    runtime = backend
    backend = check_backend(backend)
    dev = resolve_device(device)
    csv_path = csv or output.parent / "average_rmse_results.csv"
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=allow_data_change)
    chosen = pr.select_frames(members, traj, frames)[::every]
    labelled = np.isfinite(traj.gap_ev[chosen])
    if score == "rmse" and not labelled.any():
        raise ui.usage_error(f"{data}: none of the chosen frames has a true gap; --score rmse needs labels, try shift")
    if score != "shift" and labelled.any():
        chosen = chosen[labelled]  # the rmse score ranks: its RMSEs and the shifts are then on the same frames
    if chosen.size == 0:
        raise ui.usage_error(f"{data}: no frames chosen for FNA; try --frames all or a smaller --every")
    if part is not None:
        _one_part("fna", part, members, traj, chosen, output, frames_per_task, mode=mask, chunk=chunk,
                  device=str(dev), backend=runtime, cache_dir=pr.runs_cache_dir(runs))  # fmt: skip
        return
    evaluations = len(members) * len(chosen) * (traj.num_atoms + 1)
    check_output_file(output)  # a folder, or an unwritable place: refused before the work, not after
    check_output_file(csv_path)
    check_output_file(csv_path.with_name(fn.GROUPS_CSV))
    if xyz is not None:
        check_output_file(xyz)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        array_attrs = {}
        if array == "slurm":
            # What decides a part's frames and values; the statistics' options matter only to the merge.
            options = {"runs": runs, "data": data, "frames": frames, "every": every, "mask": mask, "score": score,
                       "chunk": chunk, "output": output, "device": device,
                       "allow_data_change": allow_data_change}  # fmt: skip
            merged = _run_array("fna", members, traj, chosen, output, options, frames_per_task, resources,
                                wait=wait, dry_run=dry_run, mode=mask)  # fmt: skip
            if merged is None:
                return
            result, array_attrs = merged.result, _array_attrs(merged, frames_per_task)
        else:
            label = f"FNA ({len(members)} members, {len(chosen)} frames)"
            with ui.progress(label, evaluations, unit="masked") as advance:
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
            **array_attrs,
        }
        stats = fn.fna_statistics(result, score=score, n_boot=bootstrap, top_k=top_k, correction=correction, seed=seed)
        table = fn.write_fna(result, output, csv_path, attrs=attrs, stats=stats)
        if xyz is not None:
            fn.write_importance_xyz(result, traj, xyz)
        shutil.rmtree(output.parent / f".{output.name}.partial", ignore_errors=True)
    _print_fna_summary(output, csv_path, xyz, len(members), len(chosen), traj.num_atoms, mask, table, stats)


def _print_fna_summary(output, csv_path, xyz, n_members, n_frames, n_atoms, mask, table, stats) -> None:
    out = ui.stdout_console()
    also = f", {xyz}" if xyz is not None else ""
    out.print(
        f"wrote {output}, {csv_path} and {csv_path.with_name('importance_groups.csv').name}{also}: "
        f"{n_members} members x {n_frames} frames x {n_atoms} atoms ({mask} mask)"
    )
    r = stats.ranking
    ci = f"{100 * r.confidence:.0f} %"
    if stats.ranked_by == "rmse":
        out.print(
            f"  unmasked ensemble RMSE {table['baseline_rmse_mev'][0]:.1f} meV; ranked by importance = masked minus "
            f"unmasked RMSE per member (meV, {ci} interval); * = significant (importance > 0, {r.correction}, "
            f"alpha {r.alpha:g})"
        )
        value, lo, hi = "importance_mev", "importance_ci_lo_mev", "importance_ci_hi_mev"
        sig, stab = "significant", "rank_stability"
    else:
        out.print(
            f"  no true gaps: ranked by shift = mean |masked - unmasked| (meV, {ci} interval); * = significant "
            f"(shift > ensemble spread {r.null_mev:.1f} meV, {r.correction}, alpha {r.alpha:g})"
        )
        value, lo, hi = "mean_abs_shift_mev", "shift_ci_lo_mev", "shift_ci_hi_mev"
        sig, stab = "shift_significant", "shift_rank_stability"
    out.print(
        f"  bootstrap: {r.n_boot} replicates, blocks of {r.block_frames} frames (from the {r.block_source}'s "
        f"autocorrelation), {r.n_members} members, seed {r.seed}; most important atoms:"
    )
    for i in range(min(10, len(table["atom_label"]))):
        extra = ""
        if stats.ranked_by == "rmse":
            extra = f"  RMSE {table['rmse_mev_mean'][i]:6.1f} ± {table['rmse_mev_std'][i]:.1f} meV"
        out.print(
            f"  {table['rank'][i]:>3}. {table['atom_label'][i]:<6}{'*' if table[sig][i] else ' '} "
            f"{table[value][i]:+7.1f} [{table[lo][i]:+.1f}, {table[hi][i]:+.1f}] meV  "
            f"p {table['p_adjusted' if stats.ranked_by == 'rmse' else 'shift_p_adjusted'][i]:.2g}  "
            f"top-{r.top_k} in {100 * table[stab][i]:.0f} %{extra}"
        )
    n_sig = int(np.count_nonzero(r.significant))
    out.print(f"  {n_sig} of {n_atoms} atoms significant")
