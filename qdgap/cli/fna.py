"""``qdgap fna``: Feature Nullification Analysis, every atom of every chosen frame masked, for every member."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
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
    from qdgap.core.analysis import fna as fn
    from qdgap.core.analysis import importance as imp
    from qdgap.core.analysis import predict as pr
    from qdgap.core.common import schema
    from qdgap.core.common.files import check_output_file, exclusive_lock
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.deploy.export import check_backend
    from qdgap.core.store.runs import load_members
    from qdgap.core.workflow import part_array as pa
    from qdgap.kernels.fna import MODES

    array, backend = split_backend(backend)
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
    resources = slurm_resources(
        array, "qdgap-fna", partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel
    )
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
        one_part("fna", part, members, traj, chosen, output, frames_per_task, mode=mask, chunk=chunk,
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
            merged = run_array("fna", members, traj, chosen, output, options, frames_per_task, resources,
                                wait=wait, dry_run=dry_run, mode=mask)  # fmt: skip
            if merged is None:
                return
            result, array_attrs = merged.result, merged_array_attrs(merged, frames_per_task)
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
