"""``qdgap pipeline``: train the ensemble, predict the trajectory, rank the atoms (FNA), fine-tune on the
extension, predict it, write the report; each stage the same core call as its own command.

A stage is skipped when its outputs exist, are readable and are newer than what they were made from
(``stages.run_stages``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.hooks import Hooks
from qdgap.core.pipeline.stages import Stage, check_from, readable, run_stages
from qdgap.core.store.layout import Workdir

if TYPE_CHECKING:  # the CLI imports this module for STAGES at every start: keep it light
    from qdgap.core.workflow import slurm

STAGES = ("train", "predict", "fna", "finetune", "predict-ext", "report")
TRAIN_TIME_MIN = 120  # Slurm time limit per member, as `qdgap ensemble train`'s default
FINETUNE_TIME_MIN = 60  # as `qdgap finetune`'s


@dataclass(frozen=True)
class StudySettings:
    """What the stages of a study are run with (the pipeline's options).

    Attributes:
        preset: model and training preset; members: ensemble size (seeds 0..members-1).
        jobs: members trained at once here (None: one per core); device: ``auto``, ``cpu``, ``cuda``.
        fna_every: FNA on every k-th unseen labelled frame; fna_mask: ``full`` or ``seed``.
        finetune_epochs: most epochs of fine-tuning (and of the scratch baseline).
        finetune_stride: fine-tune on every k-th labelled extension frame (None: the members' own stride).
        slurm: train and fine-tune as Slurm arrays with these resources (followed to their end); None: here.
        stride: the labelled pool's spacing in frames (None: the preset's, every 10th).
        split, block_fs: how each member cuts its pool (``random`` or ``blocked``, ``data.splits``).
        seed_base: the first member's seed (members train with seeds seed_base .. seed_base + members - 1).
    """

    preset: str = "demo"
    members: int = 20
    jobs: int | None = None
    device: str = "auto"
    fna_every: int = 10
    fna_mask: str = "full"
    finetune_epochs: int = 50
    finetune_stride: int | None = None
    slurm: slurm.SlurmResources | None = None
    stride: int | None = None
    split: str = "random"
    block_fs: float | None = None
    seed_base: int = 0

    @property
    def train_overrides(self) -> dict[str, object]:
        """The ``qdgap train`` options these settings set (``config.resolve_config``'s names)."""
        return {"stride": self.stride, "split": self.split, "block_fs": self.block_fs}

    def check(self) -> None:
        from qdgap.core.config import resolve_config
        from qdgap.core.workflow.ensemble import member_seeds

        resolve_config(self.preset, **self.train_overrides)  # a bad preset, stride or block: refused now
        member_seeds(self.members, self.seed_base)
        if self.members < 1:
            raise QdgapError(f"--members must be at least 1, got {self.members}")
        if self.fna_every < 1:
            raise QdgapError(f"--fna-every must be at least 1, got {self.fna_every}")
        if self.finetune_stride is not None and self.finetune_stride < 1:
            raise QdgapError(f"--finetune-stride must be at least 1, got {self.finetune_stride}")


def check_inputs(data: Path, extended: Path | None) -> None:
    """The trajectory has labels, and the extension continues it (same formula and atoms)."""
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(data)
    if not traj.labelled.any():
        raise QdgapError(f"{data}: no labelled frames; the ensemble has nothing to learn from")
    if extended is not None:
        ext = read_trajectory(extended)
        if ext.formula != traj.formula or ext.num_atoms != traj.num_atoms:
            raise QdgapError(f"{extended}: {ext.formula} does not continue {data} ({traj.formula})")


def run_pipeline(
    data: Path, extended: Path | None, workdir: Path, settings: StudySettings, *, from_stage: str | None = None,
    hooks: Hooks = Hooks(),
) -> Path:  # fmt: skip
    """Run every stage that is not up to date; the path of ``report.html``.

    Raises:
        QdgapError: bad settings or inputs (before anything is written), or a stage's own error.
    """
    from qdgap.core.common.logs import add_logfile

    check_from(from_stage, STAGES)
    settings.check()
    check_inputs(data, extended)
    wd = Workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    add_logfile(wd.log)
    run_stages(study_stages(wd, data, extended, settings, hooks), from_stage, "pipeline", wd.report_html, hooks)
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.pipeline.headlines import check_headlines

    headlines = check_headlines(workdir, read_trajectory(data).sha256)
    if headlines is not None and settings.preset == "demo" and settings.members == 20:
        hooks.show(headlines)  # the demo study: say whether this run lands inside the README's ranges
    return wd.report_html


def study_stages(wd: Workdir, data: Path, extended: Path | None, s: StudySettings, hooks: Hooks) -> list[Stage]:
    """The stages of a study in ``wd``: train, predict, fna, finetune and predict-ext (with an extension), report."""
    from qdgap.core.store import runs as rf

    def members_done(runs: Path) -> bool:
        dirs = rf.member_dirs(runs)
        return len(dirs) >= s.members and all((d / rf.DONE).exists() for d in dirs)

    def done_markers(runs: Path) -> list[Path]:
        return [d / rf.DONE for d in rf.member_dirs(runs)]

    def array(time_min: int, name: str):
        from qdgap.core.workflow.slurm import ArrayOptions

        if s.slurm is None:
            return None
        # The stage's usual time, cut to the partition's MaxTime when submitted (the user gave no --time here).
        return ArrayOptions(dataclasses.replace(s.slurm, usual_time_min=time_min, job_name=name), wait=True)

    def train() -> None:
        from qdgap.core.config import resolve_config
        from qdgap.core.workflow.ensemble import member_seeds
        from qdgap.core.workflow.members import train_ensemble

        train_ensemble(
            data, resolve_config(s.preset, **s.train_overrides), seeds=member_seeds(s.members, s.seed_base), runs=wd.runs,
            jobs=s.jobs, device=s.device, array=array(TRAIN_TIME_MIN, "qdgap-train"), preset=s.preset,
            overrides=s.train_overrides, hooks=hooks,
        )  # fmt: skip

    def predict(runs: Path, trajectory: Path, output: Path) -> None:
        from qdgap.core.workflow.inference import predict_to_file

        predict_to_file(runs, trajectory, output, frames="all", device=s.device, hooks=hooks)

    def fna() -> None:
        from qdgap.core.workflow.inference import fna_to_file

        fna_to_file(
            wd.runs, data, wd.fna, frames="unseen", every=s.fna_every, mask=s.fna_mask, csv=wd.fna_csv,
            device=s.device, hooks=hooks,
        )  # fmt: skip

    def finetune() -> None:
        from qdgap.core.workflow.finetune import FinetuneSettings
        from qdgap.core.workflow.finetune_run import finetune_ensemble

        finetune_ensemble(
            wd.runs, extended, wd.runs_finetuned,
            FinetuneSettings(
                epochs=s.finetune_epochs, stride=s.finetune_stride, split=s.split,
                block_fs=s.block_fs if s.finetune_stride is None else None,
            ),  # fmt: skip
            jobs=s.jobs, device=s.device, array=array(FINETUNE_TIME_MIN, "qdgap-finetune"), hooks=hooks,
        )  # fmt: skip

    def report() -> None:
        from qdgap.core.report.build import extrapolation_summary, write_report

        path = write_report(wd.root, data=data)
        for line in extrapolation_summary(wd.root):
            hooks.say(line)
        hooks.say(str(path))

    stages = [
        Stage("train", lambda: [wd.runs], lambda: [data], lambda: members_done(wd.runs), train),
        Stage(
            "predict",
            lambda: [wd.predictions, wd.predictions_csv],
            lambda: [data, *done_markers(wd.runs)],
            lambda: readable(wd.predictions, "predictions") and wd.predictions_csv.is_file(),
            lambda: predict(wd.runs, data, wd.predictions),
        ),
        Stage(
            "fna",
            lambda: [wd.fna, wd.fna_csv],
            lambda: [data, *done_markers(wd.runs)],
            lambda: readable(wd.fna, "fna") and wd.fna_csv.is_file(),
            fna,
        ),
    ]
    if extended is not None:
        ext_csv = wd.predictions_extended.with_suffix(".csv")
        stages += [
            Stage(
                "finetune",
                lambda: [wd.runs_finetuned, wd.runs_scratch, wd.finetune_csv, wd.finetune_json],
                lambda: [extended, *done_markers(wd.runs)],
                lambda: members_done(wd.runs_finetuned) and wd.finetune_csv.is_file() and wd.finetune_json.is_file(),
                finetune,
            ),
            Stage(
                "predict-ext",
                lambda: [wd.predictions_extended, ext_csv],
                lambda: [extended, *done_markers(wd.runs_finetuned)],
                lambda: readable(wd.predictions_extended, "predictions") and ext_csv.is_file(),
                lambda: predict(wd.runs_finetuned, extended, wd.predictions_extended),
            ),
        ]
    stages.append(
        Stage(
            "report",
            lambda: [wd.report_html, wd.figures],
            lambda: [p for p in (wd.predictions, wd.fna, wd.finetune_csv, wd.predictions_extended) if p.exists()],
            lambda: wd.report_html.exists(),
            report,
        )
    )
    return stages
