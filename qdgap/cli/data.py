"""``qdgap data ...``: import, inspect and make trajectories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import Force, OutPath, TrajArg, parse_range

app = typer.Typer(no_args_is_help=True, help="Import, inspect and make trajectories.")


@app.command("import")
def import_(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Structure files or folders: extended XYZ, ASE .traj, VASP XDATCAR or vasprun.xml, "
            "a folder of st<N>.vasp POSCAR files, or a tar archive of them (.tar, .tar.gz, .tar.xz; read "
            "as a stream, not unpacked).",
            show_default=False,
        ),
    ],
    output: OutPath = Path("traj.h5"),
    gaps: Annotated[
        Path | None,
        typer.Option(
            "--gaps",
            help="Labels CSV: headerless `name,gap_eV` rows (ALIGNN id_prop.csv), a table with a header, "
            "or one gap (eV) per line. A folder's id_prop.csv is used by default.",
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="ASE format name, when the file name does not tell.")
    ] = None,
    gap_key: Annotated[
        str | None,
        typer.Option("--gap-key", help="Frame info key holding the gap in eV (default: gap, band_gap, bandgap)."),
    ] = None,
    gap_column: Annotated[
        str | None,
        typer.Option("--gap-column", help="CSV column holding the gap in eV (default: a Bandgap-like column)."),
    ] = None,
    stride: Annotated[int, typer.Option("--stride", help="Keep every k-th frame.")] = 1,
    dt_fs: Annotated[float, typer.Option("--dt-fs", help="Time between consecutive frame numbers, fs.")] = 1.0,
    numbers: Annotated[
        str | None,
        typer.Option(
            "--numbers",
            help="Keep the st<N> structures with A <= N <= B (inclusive), e.g. 1-10001, of folders and archives.",
            metavar="A-B",
        ),
    ] = None,
    force: Force = False,
) -> None:
    """Import structures and band gaps into a trajectory HDF5 file."""
    if output.exists() and not force:
        raise_error(f"{output}: output exists; choose another name or pass --force")
    numbers_range = parse_range(numbers, option="--numbers") if numbers is not None else None
    from qdgap.core.data.importers import import_trajectory
    from qdgap.core.data.trajectory import write_trajectory

    with ui.progress("import", None, unit="structures") as advance:
        traj = import_trajectory(
            sources,
            fmt=fmt,
            gaps_csv=gaps,
            gap_key=gap_key,
            gap_column=gap_column,
            stride=stride,
            dt_fs=dt_fs,
            numbers_range=numbers_range,
            progress=advance,
        )
    write_trajectory(traj, output, force=force)
    ui.stdout_console().print(
        f"wrote {output}: {traj.formula}, {traj.num_frames} frames "
        f"({int(traj.labelled.sum())} labelled), {traj.time_fs[0]:g}-{traj.time_fs[-1]:g} fs"
    )


@app.command()
def info(
    path: TrajArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            "-p",
            help="A predictions.h5 of this trajectory (`qdgap predict`): also say how many of its frames lie "
            "outside what the ensemble knows.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Summarise a trajectory: composition, frames, time, labels, gap statistics, cell, sha256."""
    from qdgap.core.data.trajectory import read_trajectory, trajectory_info
    from qdgap.core.report.build import extrapolation_of

    summary = trajectory_info(read_trajectory(path))
    if predictions is not None:
        line, sha = extrapolation_of(predictions)
        if sha is not None and sha != summary["sha256"]:
            raise ui.usage_error(f"{predictions}: predicted from another trajectory than {path} (sha256 differs)")
        summary["extrapolation"] = line or "not known (the predictions carry no calibrated spread)"
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out = ui.stdout_console()
    out.print(f"[bold]{path}[/bold]")
    out.print(f"  formula       {summary['formula']} ({summary['atoms']} atoms)")
    step = summary["time_step_fs"]
    step_text = f", step {step:g} fs" + ("" if summary["uniform_step"] else " (median; not uniform)") if step else ""
    out.print(
        f"  frames        {summary['frames']}, {summary['time_start_fs']:g}-{summary['time_end_fs']:g} fs{step_text}"
    )
    out.print(f"  labelled      {summary['labelled_frames']} ({summary['unlabelled_frames']} without a gap)")
    if "gap_mean_ev" in summary:
        out.print(
            f"  gap           {summary['gap_mean_ev']:.4f} ± {summary['gap_std_ev']:.4f} eV "
            f"(min {summary['gap_min_ev']:.4f}, max {summary['gap_max_ev']:.4f})"
        )
    if "band_edge_frames" in summary:
        out.print(f"  band edges    HOMO and LUMO on {summary['band_edge_frames']} frames (--targets gap,homo,lumo)")
    if "xtb_gap_frames" in summary:
        out.print(f"  xTB gaps      {summary['xtb_method'] or 'GFN-xTB'} on {summary['xtb_gap_frames']} frames")
    pbc = summary["pbc"]
    cell = summary["cell_ang"]
    lengths = ", ".join(f"{sum(c * c for c in row) ** 0.5:.3f}" for row in cell)
    out.print(f"  cell          {'isolated (no cell)' if not any(pbc) else f'|a|,|b|,|c| = {lengths} Å'}, pbc {pbc}")
    out.print(f"  sha256        {summary['sha256']}")
    if "extrapolation" in summary:
        out.print(f"  extrapolation {summary['extrapolation']}")


@app.command("build-qd")
def build_qd(
    output: OutPath = Path("qd.xyz"),
    relax: Annotated[
        bool, typer.Option("--relax/--no-relax", help="Relax with GFN-xTB (needs the `xtb` extra: tblite).")
    ] = True,
    method: Annotated[str, typer.Option("--method", help="GFN2-xTB or GFN1-xTB.")] = "GFN1-xTB",
    fmax: Annotated[
        float, typer.Option("--fmax", help="Stop relaxing when the largest force is below this, eV/Å.")
    ] = 0.05,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimiser steps before giving up.")] = 1000,
    force: Force = False,
) -> None:
    """Build the Cd28Se17Cl22 model quantum dot (extended XYZ, Å), relaxed with GFN-xTB."""
    if output.exists() and not force:
        raise_error(f"{output}: output exists; choose another name or pass --force")
    if not fmax > 0:
        raise_error(f"--fmax must be positive (eV/Å), got {fmax}")
    if max_steps < 1:
        raise_error(f"--max-steps must be at least 1, got {max_steps}")
    from qdgap.core.data.trajectory import write_structure
    from qdgap.core.sim import qd

    qd.check_method(method)
    numbers, positions = qd.build_cluster()
    comment = "Cd28Se17Cl22 cut from zinc-blende CdSe, unrelaxed"
    if relax:
        qd.import_tblite_ase()  # fail before any work when the extra is missing
        with ui.progress(f"relax ({method})", None, unit="steps") as advance:
            relaxed = qd.relax_cluster(
                numbers, positions, method=method, fmax_ev_ang=fmax, max_steps=max_steps, progress=advance
            )
        positions = relaxed.positions_ang
        comment = (
            f"Cd28Se17Cl22 relaxed with {method}: E = {relaxed.energy_ev:.6f} eV, "
            f"max force {relaxed.max_force_ev_ang:.4f} eV/A after {relaxed.steps} steps"
        )
    write_structure(output, numbers, positions, force=force, comment=comment)
    stats = qd.bond_stats(numbers, positions)
    ui.stdout_console().print(
        f"wrote {output}: Cd28Se17Cl22 ({'relaxed, ' + method if relax else 'unrelaxed'}); "
        f"Cd-Se {stats.cdse_mean_ang:.3f} Å, Cd-Cl {stats.cdcl_mean_ang:.3f} Å, closest pair {stats.min_distance_ang:.3f} Å"
    )


@app.command()
def simulate(
    structure: Annotated[
        Path | None,
        typer.Argument(help="The cluster to simulate (e.g. qd.xyz from `qdgap data build-qd`).", show_default=False),
    ] = None,
    output: OutPath = Path("traj.h5"),
    steps: Annotated[
        int, typer.Option("--steps", help="NVE steps to record after frame 0 (frames = steps + 1).")
    ] = 1000,
    temperature: Annotated[float, typer.Option("--temperature", help="Thermostat temperature, K.")] = 300.0,
    thermalise_steps: Annotated[
        int, typer.Option("--thermalise-steps", help="Unrecorded Langevin steps before the NVE part.")
    ] = 300,
    method: Annotated[
        str | None, typer.Option("--method", help="GFN1-xTB (default) or GFN2-xTB; a continued run keeps its own.")
    ] = None,
    dt_fs: Annotated[float, typer.Option("--dt-fs", help="Time step, fs.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the initial velocities and the thermostat noise.")] = 0,
    continue_from: Annotated[
        Path | None,
        typer.Option(
            "--continue-from",
            help="A finished `simulate` output: continue its run (last frame, final velocities, same method) "
            "into a new file, without thermalising.",
        ),
    ] = None,
    force: Force = False,
) -> None:
    """GFN-xTB Born-Oppenheimer MD with the HOMO-LUMO gap at every step; resumable (rerun the same command)."""
    if (structure is None) == (continue_from is None):
        raise_error("give either a structure file or --continue-from FINISHED.h5 (exactly one)")
    if steps < 1:
        raise_error(f"--steps must be at least 1, got {steps}")
    if output.exists() and not force:
        raise_error(f"{output}: output exists; choose another name or pass --force")
    from qdgap.core.sim import md

    if continue_from is not None:
        start, config = md.start_from_finished(continue_from, method=method)
    else:
        start = md.start_from_structure(structure)
        config = md.SimulationConfig(
            method=method or md.DEFAULT_METHOD,
            dt_fs=dt_fs,
            temperature_k=temperature,
            thermalise_steps=thermalise_steps,
            seed=seed,
        )
    config.check()
    total = md.steps_to_run(output, steps=steps, thermalise_steps=config.thermalise_steps)
    with ui.progress(f"MD ({config.method})", total, unit="steps") as advance:
        md.simulate(start, output, steps=steps, config=config, force=force, progress=advance)
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(output)
    ui.stdout_console().print(
        f"wrote {output}: {traj.formula}, {traj.num_frames} frames, {traj.time_fs[0]:g}-{traj.time_fs[-1]:g} fs, "
        f"gap {float(traj.gap_ev.mean()):.3f} ± {float(traj.gap_ev.std()):.3f} eV"
    )


@app.command()
def xtb(
    path: TrajArg,
    frames: Annotated[
        str, typer.Option("--frames", help="all (every frame) or labelled (the frames with a gap).")
    ] = "all",
    every: Annotated[int, typer.Option("--every", help="Every K-th of those frames.")] = 1,
    method: Annotated[str, typer.Option("--method", help="GFN1-xTB or GFN2-xTB.")] = "GFN1-xTB",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes, one core each.")] = 1,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the trajectory with the xTB gaps here instead of updating PATH."),
    ] = None,
    as_labels: Annotated[
        bool,
        typer.Option(
            "--as-labels",
            help="Make the xTB gaps the labels of the -o file (its DFT labels and band edges left out): an "
            "ensemble pretrained on it and fine-tuned on the DFT labels (`qdgap finetune`) learns from both.",
        ),
    ] = False,
    force: Force = False,
) -> None:
    """Compute the GFN-xTB gap of every frame (dataset xtb_gap_ev), the cheap level of a multi-fidelity
    estimate; about a second per frame and core; resumable (rerun the same command)."""
    import numpy as np

    from qdgap.core.common import schema
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.sim.qd import check_method
    from qdgap.core.workflow import label as lb

    if frames not in ("all", "labelled"):
        raise_error(f"--frames must be all or labelled, got {frames!r}")
    if every < 1 or jobs < 1:
        raise_error(f"--every and --jobs must be at least 1, got {every} and {jobs}")
    if output is not None and output.exists() and not force:
        raise_error(f"{output}: output exists; choose another name or pass --force")
    if as_labels and output is None:
        raise_error("--as-labels replaces the labels: write a new file with -o, PATH keeps its own")
    check_method(method)
    lb.require_tblite("qdgap data xtb")
    traj = read_trajectory(path)
    chosen = np.arange(traj.num_frames) if frames == "all" else np.flatnonzero(traj.labelled)
    chosen = chosen[::every]
    if traj.xtb_gap_ev is not None and traj.attrs.get(schema.ATTR_XTB_METHOD) == method:
        chosen = chosen[~np.isfinite(traj.xtb_gap_ev[chosen])]  # computed before: kept
    elif traj.xtb_gap_ev is not None and np.isfinite(traj.xtb_gap_ev).any():
        raise_error(
            f"{path}: has {traj.attrs.get(schema.ATTR_XTB_METHOD, 'other')} gaps already; "
            f"one method per file (write another with -o, from a copy without them)"
        )
    target = output or path
    if not len(chosen) and output is None and not as_labels:
        ui.stdout_console().print(f"{path}: every chosen frame has its {method} gap already; nothing to compute")
        return
    with ui.progress(f"xTB gaps ({method})", len(chosen), unit="frame") as advance:
        result = lb.xtb_gaps_to_file(
            path, chosen, method=method, output=target, jobs=jobs, as_labels=as_labels, progress=advance
        )
    ui.stdout_console().print(
        f"wrote {target}: {method} gaps of {len(chosen)} frame(s) ({result.computed} computed now) "
        f"in {result.seconds:.0f} s" + (", as its labels" if as_labels else "")
    )


def raise_error(message: str) -> None:
    from qdgap.core.common.errors import QdgapError

    raise QdgapError(message)
