"""``qdgap interpolate``: the gap of every frame from the labels (and xTB), no model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import DEMO_DATA, Force, TrajPath


def interpolate(
    data: TrajPath = DEMO_DATA,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output HDF5 file (a CSV twin beside it).")] = Path(
        "gaps.h5"
    ),
    stride: Annotated[
        int,
        typer.Option(
            "--stride",
            help="Condition on the labels of frames 0, N, 2N, ... (1: every label); with N above 1 the "
            "labelled frames left out are scored beside interpolation, as a test of how sparse labels may be.",
        ),
    ] = 1,
    frames: Annotated[
        str, typer.Option("--frames", help="all, unlabelled, or held-out (labelled frames outside the pool).")
    ] = "all",
    xtb: Annotated[
        str,
        typer.Option(
            "--xtb",
            help="auto (use the trajectory's xTB gaps, `qdgap data xtb`, when every frame needed has one), yes "
            "(require them) or no (time alone).",
        ),
    ] = "auto",
    level: Annotated[float, typer.Option("--level", help="Nominal coverage of the interval.")] = 0.95,
    earlier: Annotated[
        Path | None,
        typer.Option(
            "--earlier",
            help="An earlier stretch of the same run (trajectory file on the same clock): its labels condition the "
            "process too, carrying the xTB-to-gap relation into a stretch with few labels.",
            show_default=False,
        ),
    ] = None,
    earlier_stride: Annotated[
        int, typer.Option("--earlier-stride", help="Use the labels of the earlier stretch's frames 0, N, 2N, ...")
    ] = 1,
    force: Force = False,
) -> None:
    """Gaps of every frame from the DFT labels alone, no model: a Gaussian process in time plus the frame's
    xTB gap, with an interval; 17-25 % better than interpolation at 50-100 fs label spacing (docs: multi-fidelity)."""
    from qdgap.core.workflow.interpolate import interpolate_to_file

    o, csv = interpolate_to_file(
        data, output, stride=stride, frames=frames, xtb=xtb, level=level, earlier=earlier,
        earlier_stride=earlier_stride, force=force,
    )  # fmt: skip
    out = ui.stdout_console()
    what = "time and the xTB gap" if o.estimator == "gp-time-xtb" else f"time alone ({o.why_no_xtb})"
    hp = o.fit.as_dict()
    also = f" (and {o.earlier_labels} of {earlier})" if o.earlier_labels else ""
    out.print(
        f"wrote {output} and {csv.name}: {o.frames} frames from {o.pool} labels{also}, a Gaussian process on {what} "
        f"(length {hp['length_fs']:.0f} fs, "
        + (f"xTB part {hp['feature_sd_mev']:.0f} meV, " if o.estimator == "gp-time-xtb" else "")
        + f"noise {hp['noise_sd_mev']:.1f} meV)"
    )
    if o.advice:
        logging.getLogger(__name__).warning(o.advice)
    pct = round(100 * o.level)
    if o.loo is not None:
        out.print(
            f"  leave-one-out on {o.loo.labels} labels (each a full spacing from the next; frames between labels are "
            f"closer): RMSE {o.loo.rmse_mev:.1f} meV, linear interpolation {o.loo.linear_rmse_mev:.1f} meV; "
            f"{pct} % interval covers {100 * o.loo.coverage:.0f} %"
        )
    if o.heldout is not None:
        from qdgap.core.analysis.baselines import BASELINE_TITLES

        model = o.heldout.scores[0]
        out.print(
            f"  on the {model.frames} labelled frames outside the pool: RMSE {model.rmse_mev:.1f} meV, "
            f"{pct} % interval covers {100 * o.heldout_coverage:.1f} %; beside"
        )
        for s in o.heldout.scores[1:]:
            out.print(f"    {BASELINE_TITLES.get(s.name, s.name).split(' (')[0]}: RMSE {s.rmse_mev:.1f} meV")
