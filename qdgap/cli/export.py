"""``qdgap export``: a member's best weights as TorchScript (``model.ts``) or ONNX (``model.onnx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui

FORMATS = ("torchscript", "onnx")  # as core.export.FORMATS, checked here before torch is imported

RunArg = Annotated[
    Path,
    typer.Argument(
        help="A finished member's folder (runs/run_<seed>/), or a runs folder to export every member.",
        show_default=False,
    ),
]
Format = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="torchscript (model.ts) or onnx (model.onnx, opset 18; needs the onnx extra).",
        show_default=False,
    ),
]
ExportOut = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write the file here instead of into the run folder (then nothing is recorded there)."
    ),
]


def export(run: RunArg, fmt: Format, output: ExportOut = None) -> None:
    """Export a member's best.pt: re-write model.ts, or write model.onnx; the file's sha256 is recorded in the run folder."""
    if fmt not in FORMATS:
        raise ui.usage_error(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    from qdgap.core.common.errors import QdgapError
    from qdgap.core.store import runs as rf

    if not run.is_dir():
        raise QdgapError(f"{run}: no such run folder")
    members = [run] if (run / rf.DONE).exists() or (run / rf.CONFIG_JSON).exists() else rf.member_dirs(run)
    if not members:
        raise QdgapError(
            f"{run}: not a finished member (no DONE marker) and no run_<seed>/ folders in it; train it with `qdgap train`"
        )
    if output is not None and len(members) > 1:
        raise ui.usage_error(
            f"--output names one file, but {run} holds {len(members)} members; export them into their run folders"
        )
    unfinished = [m.name for m in members if not (m / rf.DONE).exists()]
    if unfinished and len(members) > 1:
        raise QdgapError(
            f"{run}: {len(unfinished)} member(s) not finished ({', '.join(unfinished[:5])}); finish them with `qdgap ensemble train` first"
        )

    from qdgap.core.deploy.export import export_run

    out = ui.stdout_console()
    with ui.progress(f"export {fmt}", len(members), unit="member") as advance:
        for member in members:
            result = export_run(member, fmt=fmt, output=output)
            where = (
                "recorded in " + ("DONE" if fmt == "torchscript" else "model.onnx.json")
                if result.recorded
                else "not recorded in the run folder"
            )
            out.print(f"wrote {result.path} (sha256 {result.sha256[:16]}…, {where})")
            advance(1)
