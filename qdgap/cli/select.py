"""``qdgap select``: the frames to label next; ``qdgap label``: their GFN-xTB gaps, written into the trajectory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import DEMO_EXTENDED, Force, OutPath, RunsDir, TrajPath
from qdgap.cli.render import hooks

Budget = Annotated[int, typer.Option("--budget", "-k", help="Number of frames to choose (K).")]
Strategy = Annotated[
    str,
    typer.Option(
        "--strategy",
        help="spread (largest calibrated spread first), spread-diverse (spread x distance in structure to the frames "
        "already picked), random or grid (evenly spaced in time). Default: grid, what measured best on the demo "
        "and, against the others, no worse on the real trajectory (docs: Choosing frames).",
    ),
]
Candidates = Annotated[
    str,
    typer.Option(
        "--candidates",
        help="Frames outside every member's pool to choose from: all, labelled (to measure a strategy against "
        "labels already known) or unlabelled.",
    ),
]
MinSeparation = Annotated[
    float | None,
    typer.Option(
        "--min-separation-fs",
        help="No two chosen frames closer in time, fs (default: half the spacing of K evenly spread frames).",
        show_default=False,
    ),
]
SelectSeed = Annotated[int, typer.Option("--seed", "-s", help="Seed for ties and for --strategy random.")]
Structures = Annotated[
    Path | None,
    typer.Option(
        "--structures",
        help="Also write each chosen frame as a POSCAR st<frame>.vasp in this folder, ready for DFT "
        "(an isolated cluster is centred in a cubic box with 10 Å of vacuum).",
        show_default=False,
    ),
]


def select(
    runs: RunsDir = Path("runs"),
    data: TrajPath = DEMO_EXTENDED,
    budget: Budget = 50,
    output: OutPath = Path("selection.csv"),
    strategy: Strategy = "grid",
    candidates: Candidates = "all",
    min_separation_fs: MinSeparation = None,
    seed: SelectSeed = 0,
    structures: Structures = None,
    force: Force = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto (CUDA when present).")] = "auto",
) -> None:
    """Choose K frames to label next, where the ensemble's calibrated spread is largest, spread out in time;
    write their indices and times (selection.csv) and optionally their POSCARs."""
    from qdgap.core.workflow.inference import select_to_file

    select_to_file(
        runs, data, output, budget=budget, strategy=strategy, candidates=candidates,
        min_separation_fs=min_separation_fs, seed=seed, structures=structures, force=force, device=device,
        hooks=hooks(),
    )  # fmt: skip


def label(
    selection: Annotated[Path, typer.Argument(help="Selection CSV (from `qdgap select`): its frame_index column.")],
    data: TrajPath = DEMO_EXTENDED,
    xtb: Annotated[
        bool, typer.Option("--xtb", help="Compute the gaps with GFN-xTB (tblite; the extra `xtb`), as the demo data.")
    ] = False,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="GFN1-xTB or GFN2-xTB (default: the method the trajectory was simulated with, else GFN1-xTB).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the labelled trajectory here instead of updating DATA in place."),
    ] = None,
    force: Force = False,
) -> None:
    """Compute the band gaps of the selected frames and write them into the trajectory (select -> label -> finetune)."""
    from qdgap.core.workflow import label as lb

    if not xtb:
        raise ui.usage_error("say how to label: --xtb (GFN-xTB with tblite; DFT labels come in through `data import`)")
    if not data.is_file():
        raise ui.usage_error(f"{data}: no such trajectory file")
    target = output or data
    if output is not None and output.exists() and not force:
        raise ui.usage_error(f"{output}: output exists; choose another name or pass --force")
    frames, method = lb.check_label_inputs(selection, data, method=method)
    with ui.progress(f"label ({method})", len(frames), unit="frame") as advance:
        result = lb.label_frames(data, frames, method=method, output=target, progress=advance)
    out = ui.stdout_console()
    out.print(
        f"wrote {target}: {len(frames)} frame(s) labelled with {method} in {result.seconds:.0f} s "
        f"({result.replaced} had a gap already and were recomputed)"
    )
    if result.max_change_ev is not None:
        out.print(f"  largest change of a gap that was there: {1000 * result.max_change_ev:.1f} meV")
