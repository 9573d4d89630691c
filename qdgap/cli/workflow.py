"""``qdgap pipeline``: the whole study in one resumable command.

The pipeline sequences the commands themselves (ensemble train, predict,
fna, finetune, predict, report) rather than re-implementing them, so every
stage behaves exactly as its command does. A stage is skipped when its
outputs exist, are readable and are newer than what they were made from
(make's rule); ``--from STAGE`` removes that stage's outputs and those of
every later stage, then runs them again.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import DEMO_DATA, DEMO_EXTENDED, Preset

log = logging.getLogger("qdgap.pipeline")

STAGES = ("train", "predict", "fna", "finetune", "predict-ext", "report")


@dataclass(frozen=True)
class Stage:
    name: str
    outputs: Callable[[], list[Path]]  # what the stage makes (removed by --from)
    inputs: Callable[[], list[Path]]  # what it is made from (newer inputs make it stale)
    complete: Callable[[], bool]
    run: Callable[[], None]


def pipeline(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Trajectory to train on (1 fs frames, gaps where known).")
    ] = DEMO_DATA,
    extended: Annotated[
        Path | None,
        typer.Option("--extended", "-e", help="Later stretch of the trajectory for transfer learning; none skips it."),
    ] = DEMO_EXTENDED,
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Where every output goes.")] = Path("work/demo"),
    preset: Preset = "demo",
    members: Annotated[int, typer.Option("--members", "-m", help="Ensemble members.")] = 20,
    backend: Annotated[
        str, typer.Option("--backend", help="local or slurm (training and fine-tuning as job arrays).")
    ] = "local",
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", help="local: members trained at once (default: one per core).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")] = "auto",
    fna_every: Annotated[
        int,
        typer.Option(
            "--fna-every", help="FNA on every k-th unseen labelled frame (each costs N + 1 forwards per member)."
        ),
    ] = 10,
    fna_mask: Annotated[str, typer.Option("--fna-mask", help="full or seed (see `qdgap fna --help`).")] = "full",
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", help="Most epochs of fine-tuning (and of the scratch baseline).")
    ] = 50,
    from_stage: Annotated[
        str | None, typer.Option("--from", help=f"Redo from this stage: {', '.join(STAGES)}.")
    ] = None,
    image: Annotated[Path | None, typer.Option("--image", help="slurm: Apptainer image each task runs in.")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="slurm: partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="slurm: account.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="slurm: GPUs per member.")] = 0,
) -> None:
    """Train the ensemble, predict the trajectory, rank atoms (FNA), fine-tune on the extension and write the report."""
    from qdgap.core.store.layout import Workdir

    if from_stage is not None and from_stage not in STAGES:
        raise ui.usage_error(f"--from must be one of {', '.join(STAGES)}, got {from_stage!r}")
    if backend not in ("local", "slurm"):
        raise ui.usage_error(f"--backend must be local or slurm, got {backend!r}")
    if members < 1:
        raise ui.usage_error(f"--members must be at least 1, got {members}")
    if fna_every < 1:
        raise ui.usage_error(f"--fna-every must be at least 1, got {fna_every}")
    _check_inputs(data, extended)
    wd = Workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ui.add_logfile(wd.log)
    slurm = {"image": image, "partition": partition, "account": account, "gpus": gpus} if backend == "slurm" else {}
    stages = _stages(
        wd, data, extended, preset, members, backend, jobs, device, fna_every, fna_mask, finetune_epochs, slurm
    )
    _run_stages(stages, from_stage, "pipeline", wd.report_html)


def _run_stages(stages: list[Stage], from_stage: str | None, what: str, result: Path) -> None:
    """Run each stage that is incomplete or stale, in order; ``from_stage`` first removes its and later outputs."""
    if from_stage is not None:
        names = [s.name for s in stages]
        for stage in stages[names.index(from_stage) :]:
            for path in stage.outputs():
                _remove(path)
    out = ui.stdout_console()
    t_all = time.perf_counter()
    for stage in stages:
        if stage.complete() and not _stale(stage):
            out.print(f"[dim]{stage.name:<12} up to date[/dim]")
            log.debug("stage %s: up to date", stage.name)  # debug: the console has the line; the log file keeps it
            continue
        log.debug("stage %s: started", stage.name)
        t0 = time.perf_counter()
        stage.run()
        out.print(f"[bold green]{stage.name:<12}[/bold green] done in {_fmt_s(time.perf_counter() - t0)}")
        log.debug("stage %s: done in %s", stage.name, _fmt_s(time.perf_counter() - t0))
    out.print(f"{what} done in {_fmt_s(time.perf_counter() - t_all)}: open {result}")
    log.debug("%s done in %s: %s", what, _fmt_s(time.perf_counter() - t_all), result)


def _stages(
    wd,
    data,
    extended,
    preset,
    members,
    backend,
    jobs,
    device,
    fna_every,
    fna_mask,
    finetune_epochs,
    slurm,
    finetune_stride=None,
) -> list[Stage]:
    from qdgap.cli import ensemble, finetune, predict, report
    from qdgap.cli import fna as fna_cmd
    from qdgap.core.store import runs as rf

    def members_done(runs: Path) -> bool:
        dirs = rf.member_dirs(runs)
        return len(dirs) >= members and all((d / rf.DONE).exists() for d in dirs)

    def done_markers(runs: Path) -> list[Path]:
        return [d / rf.DONE for d in rf.member_dirs(runs)]

    def train() -> None:
        ensemble.train(
            members=members, data=data, preset=preset, output=wd.runs, backend=backend, jobs=jobs, device=device,
            wait=backend == "slurm", **slurm,
        )  # fmt: skip

    def predict_all() -> None:
        predict.predict(runs=wd.runs, data=data, frames="all", output=wd.predictions, device=device)

    def fna() -> None:
        fna_cmd.fna(
            runs=wd.runs,
            data=data,
            frames="unseen",
            every=fna_every,
            mask=fna_mask,
            output=wd.fna,
            csv=wd.fna_csv,
            device=device,
        )

    def finetune_all() -> None:
        finetune.finetune(
            runs=wd.runs, data=extended, output=wd.runs_finetuned, epochs=finetune_epochs, backend=backend, jobs=jobs,
            device=device, wait=backend == "slurm", stride=finetune_stride, **slurm,
        )  # fmt: skip

    def predict_ext() -> None:
        predict.predict(
            runs=wd.runs_finetuned, data=extended, frames="all", output=wd.predictions_extended, device=device
        )

    def write_report() -> None:
        report.report(workdir=wd.root, data=data)

    stages = [
        Stage("train", lambda: [wd.runs], lambda: [data], lambda: members_done(wd.runs), train),
        Stage(
            "predict",
            lambda: [wd.predictions, wd.predictions_csv],
            lambda: [data, *done_markers(wd.runs)],
            lambda: _readable(wd.predictions, "predictions") and wd.predictions_csv.is_file(),
            predict_all,
        ),
        Stage(
            "fna",
            lambda: [wd.fna, wd.fna_csv],
            lambda: [data, *done_markers(wd.runs)],
            lambda: _readable(wd.fna, "fna") and wd.fna_csv.is_file(),
            fna,
        ),
    ]
    if extended is not None:
        stages += [
            Stage(
                "finetune",
                lambda: [wd.runs_finetuned, wd.runs_scratch, wd.finetune_csv, wd.finetune_json],
                lambda: [extended, *done_markers(wd.runs)],
                lambda: members_done(wd.runs_finetuned) and wd.finetune_csv.is_file() and wd.finetune_json.is_file(),
                finetune_all,
            ),
            Stage(
                "predict-ext",
                lambda: [wd.predictions_extended, wd.predictions_extended.with_suffix(".csv")],
                lambda: [extended, *done_markers(wd.runs_finetuned)],
                lambda: (
                    _readable(wd.predictions_extended, "predictions")
                    and wd.predictions_extended.with_suffix(".csv").is_file()
                ),
                predict_ext,
            ),
        ]
    stages.append(
        Stage(
            "report",
            lambda: [wd.report_html, wd.figures],
            lambda: [p for p in (wd.predictions, wd.fna, wd.finetune_csv, wd.predictions_extended) if p.exists()],
            lambda: wd.report_html.exists(),
            write_report,
        )
    )
    return stages


def _check_inputs(data: Path, extended: Path | None) -> None:
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(data)
    if not traj.labelled.any():
        raise ui.usage_error(f"{data}: no labelled frames; the ensemble has nothing to learn from")
    if extended is not None:
        ext = read_trajectory(extended)
        if ext.formula != traj.formula or ext.num_atoms != traj.num_atoms:
            raise ui.usage_error(f"{extended}: {ext.formula} does not continue {data} ({traj.formula})")


def _readable(path: Path, kind: str) -> bool:
    from qdgap.core.common import schema
    from qdgap.core.common.errors import QdgapError
    from qdgap.core.store.results import read_results

    fmt = {"predictions": schema.PREDICTIONS_FORMAT, "fna": schema.FNA_FORMAT}[kind]
    try:
        read_results(path, fmt=fmt)
    except QdgapError:
        return False
    return True


def _stale(stage: Stage) -> bool:
    """An input newer than the oldest output means the stage must run again."""
    outputs = [p for p in stage.outputs() if p.exists() and p.is_file()]
    inputs = [p for p in stage.inputs() if p.exists()]
    if not outputs or not inputs:
        return False
    return max(p.stat().st_mtime for p in inputs) > min(p.stat().st_mtime for p in outputs)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


REPRODUCE_STAGES = (
    "import",
    "train",
    "predict",
    "fna",
    "fna-seed",
    "finetune",
    "predict-ext",
    "report",
    "compare",
)


def reproduce(
    archive: Annotated[
        Path,
        typer.Option(
            "--archive",
            help="The original study's trajectory: a tar archive (or folder) of st1.vasp..st15001.vasp, 1 fs apart.",
        ),
    ],
    labels: Annotated[
        Path, typer.Option("--labels", help="PBE gaps of 0-10 ps (Cl_QD_elec_1-10k.csv: Files, Bandgap (eV), ...).")
    ],
    ext_labels: Annotated[
        Path | None,
        typer.Option("--ext-labels", help="Gaps of the 10-15 ps continuation (Cl_QD_elec_10k-15k_step_10.csv)."),
    ] = None,
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Where every output goes.")] = Path("work/reproduce"),
    preset: Preset = "cpu",
    members: Annotated[int, typer.Option("--members", "-m", help="Ensemble members (the study trained 20).")] = 20,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", help="Members trained at once (default: one per core).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")] = "auto",
    fna_every: Annotated[
        int, typer.Option("--fna-every", help="FNA on every k-th unseen frame (labelled ones only).")
    ] = 10,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", help="Most epochs of fine-tuning (the study: about 50).")
    ] = 50,
    finetune_stride: Annotated[
        int,
        typer.Option(
            "--finetune-stride",
            help="Fine-tune on every k-th extension frame that has a label (its labels are 10 frames apart: 20 "
            "fine-tunes on 250 of the 500 and scores on the other 250).",
        ),
    ] = 20,
    train_frames: Annotated[
        str, typer.Option("--train-numbers", help="The st<N> range of the training trajectory (0-10 ps).")
    ] = "1-10001",
    ext_frames: Annotated[
        str, typer.Option("--ext-numbers", help="The st<N> range of the continuation (10-15 ps).")
    ] = "10001-15001",
    from_stage: Annotated[
        str | None, typer.Option("--from", help=f"Redo from this stage: {', '.join(REPRODUCE_STAGES)}.")
    ] = None,
) -> None:
    """The original study on its own DFT trajectory, resumable, ending with comparison.md beside the published numbers."""
    from qdgap.cli.options import parse_range
    from qdgap.core.store.layout import Workdir

    if from_stage is not None and from_stage not in REPRODUCE_STAGES:
        raise ui.usage_error(f"--from must be one of {', '.join(REPRODUCE_STAGES)}, got {from_stage!r}")
    if members < 1:
        raise ui.usage_error(f"--members must be at least 1, got {members}")
    if fna_every < 1:
        raise ui.usage_error(f"--fna-every must be at least 1, got {fna_every}")
    if finetune_stride < 1:
        raise ui.usage_error(f"--finetune-stride must be at least 1, got {finetune_stride}")
    for path, what in ((archive, "--archive"), (labels, "--labels"), (ext_labels, "--ext-labels")):
        if path is not None and not path.exists():
            raise ui.usage_error(f"{path}: no such file or folder ({what})")
    train_range = parse_range(train_frames, option="--train-numbers")
    ext_range = parse_range(ext_frames, option="--ext-numbers")
    wd = Workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ui.add_logfile(wd.log)
    data, extended = workdir / "cl_qd.h5", (workdir / "cl_qd_ext.h5" if ext_labels is not None else None)
    fna_seed, fna_seed_csv = workdir / "fna_seed.h5", workdir / "average_rmse_results_seed.csv"
    comparison = workdir / "comparison.md"

    def import_both() -> None:
        from qdgap.core.data.importers import import_trajectory
        from qdgap.core.data.trajectory import write_trajectory

        for out, gaps, numbers in ((data, labels, train_range), (extended, ext_labels, ext_range)):
            if out is None or _readable_traj(out):
                continue
            with ui.progress(f"import {out.name}", None, unit="structures") as advance:
                traj = import_trajectory([archive], gaps_csv=gaps, numbers_range=numbers, progress=advance)
            write_trajectory(traj, out, force=True)

    importing = Stage(
        "import",
        lambda: [p for p in (data, extended) if p is not None],
        lambda: [p for p in (archive, labels, ext_labels) if p is not None and p.is_file()],
        lambda: all(_readable_traj(p) for p in (data, extended) if p is not None),
        import_both,
    )
    # The trajectories do not exist before the import stage runs, so the later stages are built lazily.
    stages = [importing]

    def rest() -> list[Stage]:
        from qdgap.cli import fna as fna_cmd
        from qdgap.core.store import runs as rf

        base = _stages(
            wd, data, extended, preset, members, "local", jobs, device, fna_every, "full", finetune_epochs, {},
            finetune_stride=finetune_stride,
        )  # fmt: skip

        def fna_seed_run() -> None:
            fna_cmd.fna(
                runs=wd.runs, data=data, frames="unseen", every=fna_every, mask="seed", output=fna_seed,
                csv=fna_seed_csv, device=device,
            )  # fmt: skip

        def compare() -> None:
            from qdgap.core.analysis.comparison import write_comparison

            write_comparison(
                workdir,
                output=comparison,
                setup={
                    "data": f"{archive} (st{train_range[0]}..st{train_range[1]}; labels {labels})",
                    "preset": preset,
                    "members": members,
                    "FNA frames": f"every {fna_every}th unseen frame, labelled ones only",
                    "fine-tuning": f"every {finetune_stride}th labelled extension frame, at most {finetune_epochs} epochs",
                },
            )

        seed_stage = Stage(
            "fna-seed",
            lambda: [fna_seed, fna_seed_csv],
            lambda: [data, *(d / rf.DONE for d in rf.member_dirs(wd.runs))],
            lambda: _readable(fna_seed, "fna") and fna_seed_csv.is_file(),
            fna_seed_run,
        )
        names = [s.name for s in base]
        base.insert(names.index("fna") + 1, seed_stage)
        base.append(
            Stage(
                "compare",
                lambda: [comparison],
                lambda: [p for p in (wd.predictions, wd.fna, fna_seed, wd.finetune_csv) if p.exists()],
                lambda: comparison.is_file(),
                compare,
            )
        )
        return base

    _run_stages(stages, "import" if from_stage == "import" else None, "import", workdir)
    # Redoing the import redoes everything made from it.
    _run_stages(rest(), "train" if from_stage == "import" else from_stage, "reproduce", comparison)


def _readable_traj(path: Path) -> bool:
    from qdgap.core.common.errors import QdgapError
    from qdgap.core.data.trajectory import read_trajectory

    if not path.is_file():
        return False
    try:
        read_trajectory(path, validate=False)
    except QdgapError:
        return False
    return True
