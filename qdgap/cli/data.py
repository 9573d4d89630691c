"""``qdgap data ...``: import, inspect and make trajectories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.types import Force, OutPath, TrajArg

app = typer.Typer(no_args_is_help=True, help="Import, inspect and make trajectories.")


@app.command("import")
def import_(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Structure files or folders: extended XYZ, ASE .traj, VASP XDATCAR or vasprun.xml, "
            "or a folder of st<N>.vasp POSCAR files.",
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
    fmt: Annotated[str | None, typer.Option("--format", help="ASE format name, when the file name does not tell.")] = None,
    gap_key: Annotated[
        str | None, typer.Option("--gap-key", help="Frame info key holding the gap in eV (default: gap, band_gap, bandgap).")
    ] = None,
    gap_column: Annotated[
        str | None, typer.Option("--gap-column", help="CSV column holding the gap in eV (default: a Bandgap-like column).")
    ] = None,
    stride: Annotated[int, typer.Option("--stride", help="Keep every k-th frame.")] = 1,
    dt_fs: Annotated[float, typer.Option("--dt-fs", help="Time between consecutive frame numbers, fs.")] = 1.0,
    force: Force = False,
) -> None:
    """Import structures and band gaps into a trajectory HDF5 file."""
    if output.exists() and not force:
        raise_error(f"{output}: output exists; choose another name or pass --force")
    from qdgap.core.data import import_trajectory, write_trajectory

    traj = import_trajectory(
        sources, fmt=fmt, gaps_csv=gaps, gap_key=gap_key, gap_column=gap_column, stride=stride, dt_fs=dt_fs
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
) -> None:
    """Summarise a trajectory: composition, frames, time, labels, gap statistics, cell, sha256."""
    from qdgap.core.data import read_trajectory, trajectory_info

    summary = trajectory_info(read_trajectory(path))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out = ui.stdout_console()
    out.print(f"[bold]{path}[/bold]")
    out.print(f"  formula       {summary['formula']} ({summary['atoms']} atoms)")
    step = summary["time_step_fs"]
    step_text = f", step {step:g} fs" + ("" if summary["uniform_step"] else " (median; not uniform)") if step else ""
    out.print(f"  frames        {summary['frames']}, {summary['time_start_fs']:g}-{summary['time_end_fs']:g} fs{step_text}")
    out.print(f"  labelled      {summary['labelled_frames']} ({summary['unlabelled_frames']} without a gap)")
    if "gap_mean_ev" in summary:
        out.print(
            f"  gap           {summary['gap_mean_ev']:.4f} ± {summary['gap_std_ev']:.4f} eV "
            f"(min {summary['gap_min_ev']:.4f}, max {summary['gap_max_ev']:.4f})"
        )
    pbc = summary["pbc"]
    cell = summary["cell_ang"]
    lengths = ", ".join(f"{sum(c * c for c in row) ** 0.5:.3f}" for row in cell)
    out.print(f"  cell          {'isolated (no cell)' if not any(pbc) else f'|a|,|b|,|c| = {lengths} Å'}, pbc {pbc}")
    out.print(f"  sha256        {summary['sha256']}")


def raise_error(message: str) -> None:
    from qdgap.core.errors import QdgapError

    raise QdgapError(message)
