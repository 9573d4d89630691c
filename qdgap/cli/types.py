"""Reusable option and argument types, each help text giving its unit or format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "cd28se17cl22_demo.h5"
DEMO_EXTENDED = Path(__file__).resolve().parents[2] / "data" / "cd28se17cl22_demo_ext.h5"

TrajPath = Annotated[Path, typer.Option("--data", "-d", help="Trajectory HDF5 file (from `qdgap data import`).")]
TrajArg = Annotated[Path, typer.Argument(help="Trajectory HDF5 file (from `qdgap data import`).", show_default=False)]
RunsDir = Annotated[Path, typer.Option("--runs", "-r", help="Folder of ensemble members (run_<seed>/).")]
OutPath = Annotated[Path, typer.Option("--output", "-o", help="Output file.")]
OutDir = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
Seed = Annotated[int, typer.Option("--seed", "-s", help="Member seed: fixes the split and the initial weights.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")]
Preset = Annotated[str, typer.Option("--preset", help="Model and training preset: demo (small, seconds per member on a laptop), paper (the original study's sizes) or tiny (smoke tests).")]
Stride = Annotated[
    int | None, typer.Option("--stride", help="Labelled pool spacing in frames (default 10: every 10 fs at a 1 fs step).")
]
