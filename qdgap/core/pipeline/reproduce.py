"""``qdgap reproduce``: the original study on its own DFT trajectory, ending with ``comparison.md`` beside
the published numbers.

The study's stages (``study.study_stages``) run on the imported trajectory, with a second FNA in the
original script's ``seed`` mask and a last stage that writes the comparison. Redoing the import redoes
everything made from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.hooks import Hooks
from qdgap.core.pipeline.stages import Stage, check_from, readable, run_stages
from qdgap.core.pipeline.study import StudySettings, study_stages
from qdgap.core.store.layout import Workdir

STAGES = ("import", "train", "predict", "fna", "fna-seed", "finetune", "predict-ext", "report", "compare")


@dataclass(frozen=True)
class StudyData:
    """The original study's files.

    Attributes:
        archive: a tar archive (or folder) of ``st1.vasp``..``st15001.vasp``, 1 fs apart.
        labels: PBE gaps of 0-10 ps (``Cl_QD_elec_1-10k.csv``).
        ext_labels: gaps of the 10-15 ps continuation; None skips fine-tuning.
        train_range, ext_range: the ``st<N>`` numbers (first, last) of each trajectory.
    """

    archive: Path
    labels: Path
    ext_labels: Path | None
    train_range: tuple[int, int]
    ext_range: tuple[int, int]


def run_reproduce(
    source: StudyData, workdir: Path, settings: StudySettings, *, from_stage: str | None = None,
    hooks: Hooks = Hooks(),
) -> Path:  # fmt: skip
    """Import the trajectories, run the study's stages and write ``comparison.md``; its path.

    Raises:
        QdgapError: bad settings or a missing input (before anything is written), or a stage's own error.
    """
    from qdgap.core.common.logs import add_logfile

    check_from(from_stage, STAGES)
    settings.check()
    for path, what in ((source.archive, "--archive"), (source.labels, "--labels"), (source.ext_labels, "--ext-labels")):
        if path is not None and not path.exists():
            raise QdgapError(f"{path}: no such file or folder ({what})")
    wd = Workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    add_logfile(wd.log)
    data = workdir / "cl_qd.h5"
    extended = workdir / "cl_qd_ext.h5" if source.ext_labels is not None else None
    comparison = workdir / "comparison.md"

    def import_both() -> None:
        from qdgap.core.data.importers import import_trajectory
        from qdgap.core.data.trajectory import write_trajectory

        for out, gaps, numbers in (
            (data, source.labels, source.train_range),
            (extended, source.ext_labels, source.ext_range),
        ):
            if out is None or readable(out, "trajectory"):
                continue
            with hooks.progress(f"import {out.name}", None, unit="structures") as advance:
                traj = import_trajectory([source.archive], gaps_csv=gaps, numbers_range=numbers, progress=advance)
            write_trajectory(traj, out, force=True)

    importing = Stage(
        "import",
        lambda: [p for p in (data, extended) if p is not None],
        lambda: [p for p in (source.archive, source.labels, source.ext_labels) if p is not None and p.is_file()],
        lambda: all(readable(p, "trajectory") for p in (data, extended) if p is not None),
        import_both,
    )
    run_stages([importing], "import" if from_stage == "import" else None, "import", workdir, hooks)
    # The trajectories do not exist before the import stage runs, so the later stages are built now.
    stages = _study_stages(wd, data, extended, source, settings, comparison, hooks)
    run_stages(stages, "train" if from_stage == "import" else from_stage, "reproduce", comparison, hooks)
    return comparison


def _study_stages(wd, data, extended, source: StudyData, s: StudySettings, comparison: Path, hooks) -> list[Stage]:
    from qdgap.core.store import runs as rf

    fna_seed, fna_seed_csv = wd.root / "fna_seed.h5", wd.root / "average_rmse_results_seed.csv"
    stages = study_stages(wd, data, extended, dataclasses.replace(s, fna_mask="full"), hooks)

    def fna_seed_run() -> None:
        from qdgap.core.workflow.inference import fna_to_file

        fna_to_file(
            wd.runs, data, fna_seed, frames="unseen", every=s.fna_every, mask="seed", csv=fna_seed_csv,
            device=s.device, hooks=hooks,
        )  # fmt: skip

    def compare() -> None:
        from qdgap.core.analysis.comparison import write_comparison

        first, last = source.train_range
        write_comparison(
            wd.root,
            output=comparison,
            data=data,
            setup={
                "data": f"{source.archive} (st{first}..st{last}; labels {source.labels})",
                "preset": s.preset,
                "members": s.members,
                "FNA frames": f"every {s.fna_every}th unseen frame, labelled ones only",
                "fine-tuning": f"every {s.finetune_stride}th labelled extension frame, at most {s.finetune_epochs} epochs",
            },
        )

    seed_stage = Stage(
        "fna-seed",
        lambda: [fna_seed, fna_seed_csv],
        lambda: [data, *(d / rf.DONE for d in rf.member_dirs(wd.runs))],
        lambda: readable(fna_seed, "fna") and fna_seed_csv.is_file(),
        fna_seed_run,
    )
    names = [st.name for st in stages]
    stages.insert(names.index("fna") + 1, seed_stage)
    stages.append(
        Stage(
            "compare",
            lambda: [comparison],
            lambda: [p for p in (wd.predictions, wd.fna, fna_seed, wd.finetune_csv) if p.exists()],
            lambda: comparison.is_file(),
            compare,
        )
    )
    return stages
