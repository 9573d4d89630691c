"""``qdgap report``: the HTML report and PNG figures of a work folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui

WorkdirArg = Annotated[
    Path,
    typer.Argument(
        help="Work folder of `qdgap pipeline`: runs/, predictions.h5, and fna.h5, "
        "finetune_report.csv, predictions_ext.h5 when present.",
        metavar="WORKDIR",
        show_default=False,
    ),
]
ReportData = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Trajectory HDF5 file, for the 3D view of the dot (default: the one predictions.h5 was made from).",
        show_default=False,
    ),
]


ReportZoom = Annotated[
    str | None,
    typer.Option(
        "--zoom",
        help="Time window A-B (fs) to zoom into below each gap-against-time figure (default: over 2 ps, the first "
        "500 fs and the worst-predicted 500 fs).",
        metavar="A-B",
        show_default=False,
    ),
]


def report(workdir: WorkdirArg, data: ReportData = None, zoom: ReportZoom = None) -> None:
    """Write WORKDIR/report.html (one self-contained page) and WORKDIR/figures/*.png.

    Sections whose inputs are missing (no fna.h5 or fine-tuning yet) are skipped with a note. Prints how many
    frames of each predictions file lie outside what the ensemble knows, then the path of report.html.
    """
    from qdgap.cli.options import parse_range
    from qdgap.core.report.build import extrapolation_summary, write_report

    zoom_fs = parse_range(zoom, option="--zoom") if zoom is not None else None
    path = write_report(workdir, data=data, zoom_fs=zoom_fs)
    out = ui.stdout_console()
    for line in extrapolation_summary(workdir):
        out.print(line, markup=False, highlight=False)
    out.print(str(path), markup=False, highlight=False)  # last, so that scripts can take the last line
