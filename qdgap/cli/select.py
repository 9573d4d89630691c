"""``qdgap select``: the frames to label next; ``qdgap label``: their GFN-xTB gaps, written into the trajectory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import DEMO_EXTENDED, Force, OutPath, RunsDir, TrajPath

Budget = Annotated[int, typer.Option("--budget", "-k", help="Number of frames to choose (K).")]
Strategy = Annotated[
    str,
    typer.Option(
        "--strategy",
        help="spread (largest calibrated spread first), spread-diverse (spread x distance in structure to the frames "
        "already picked), random or grid (evenly spaced in time). Default: grid, what measured best on the demo "
        "(README).",
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
    from qdgap.core.analysis import calibration as cb
    from qdgap.core.analysis import predict as pr
    from qdgap.core.analysis import select as sl
    from qdgap.core.common.files import check_output_file, exclusive_lock
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.runs import load_members

    if strategy not in sl.STRATEGIES:
        raise ui.usage_error(f"--strategy must be one of {', '.join(sl.STRATEGIES)}, got {strategy!r}")
    if candidates not in sl.CANDIDATE_SETS:
        raise ui.usage_error(f"--candidates must be one of {', '.join(sl.CANDIDATE_SETS)}, got {candidates!r}")
    if budget < 1:
        raise ui.usage_error(f"--budget must be at least 1, got {budget}")
    if min_separation_fs is not None and not min_separation_fs >= 0:
        raise ui.usage_error(f"--min-separation-fs must be >= 0, got {min_separation_fs}")
    if output.exists() and not force:
        raise ui.usage_error(f"{output}: output exists; choose another name or pass --force")
    dev = str(resolve_device(device))
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=True)
    check_output_file(output)
    cache = pr.runs_cache_dir(runs)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        with ui.progress(f"select ({len(members)} members)", None, unit="frame") as advance:
            sel = sl.select_for_labelling(
                members,
                traj,
                budget=budget,
                strategy=strategy,
                candidates=candidates,
                min_separation_fs=min_separation_fs,
                seed=seed,
                cache_dir=cache,
                device=dev,
                progress=advance,
            )
        # After the choice, which a single scale cannot change: a bad budget is refused before any fit.
        cal, why = cb.calibration_for(runs, members, cache_dir=cache, device=dev)
        if cal is not None:
            sel = replace(sel, gap_std_calibrated_ev=sel.gap_std_ev * cal.scale)
        written = sl.write_structures(traj, sel.frame_index, structures) if structures is not None else []
        sl.write_selection(sel, output, force=force)  # last: a selection.csv means its POSCARs are there too
    out = ui.stdout_console()
    what = "calibrated spread" if cal is not None else f"raw spread (not calibrated: {why})"
    out.print(
        f"wrote {output}: {len(sel.frame_index)} of {sel.num_candidates} {candidates} candidate frames by {strategy}, "
        f"at least {sel.min_separation_fs:g} fs apart"
    )
    if strategy.startswith("spread"):
        import numpy as np

        std = sel.gap_std_calibrated_ev if cal is not None else sel.gap_std_ev
        out.print(f"  {what} of the chosen frames {1000 * np.min(std):.1f}-{1000 * np.max(std):.1f} meV")
    if written:
        out.print(f"  wrote {len(written)} POSCARs st<frame>.vasp to {structures}")


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
