"""Transfer learning: adapt a trained ensemble to a later stretch of the trajectory.

    qdgap finetune --runs runs/ --data extended.h5 -o runs_ft/

Every finished member ``runs/run_<seed>/`` starts a new member
``runs_ft/run_<seed>/`` from its best weights: the atom, bond and angle
embeddings and the first K ALIGNN blocks are frozen (``requires_grad`` off,
so they are not even handed to the optimiser), the rest trains on the
extension's labelled pool, split with the member's seed by the same
``split_frames`` as training, with early stopping on the validation MAE.
Training itself is ``train.train_member`` (``init=InitFrom(...)``), so a
fine-tuned member keeps the whole run-folder contract, resumes from its
checkpoint, and ``predict``/``fna`` read it unchanged.

The comparison (``finetune_report.csv`` and ``.json``) scores, on the
extension's labelled frames outside every fine-tuned member's pool:

- ``pretrained``: the original ensemble as it is (no training, ``wall_s`` blank);
- ``finetuned``: the fine-tuned ensemble;
- ``scratch``: the same seeds trained from random weights on the same labelled
  frames with the same epoch budget and patience, at the members' own
  learning rate and batch size (``runs_scratch/``).

``wall_s`` is training time summed over members (the per-epoch times in each
member's ``metrics.csv``), so it does not depend on how many members ran at once.

Where things go (``output_paths``), following ``layout.Workdir``: with
``-o WORK/runs_ft`` the baseline lands in ``WORK/runs_scratch`` and the report in
``WORK/finetune_report.csv`` (+ ``.json``), i.e. beside the fine-tuned runs folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qdgap.core.common.errors import QdgapError
from qdgap.core.config import RunConfig
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.store import runs as rf
from qdgap.core.store.layout import Workdir
from qdgap.core.store.runs import Member

log = logging.getLogger(__name__)

DEFAULT_FREEZE_BLOCKS = 3  # the original study's README: embeddings and the first three (of four) ALIGNN blocks
DEFAULT_EPOCHS = 50


# ==========================================================================
# Settings
# ==========================================================================


@dataclass(frozen=True)
class FinetuneSettings:
    """What ``qdgap finetune`` was asked for; ``None`` means "the member's own value".

    Attributes:
        freeze_blocks: K, the first ALIGNN blocks to freeze; None for ``default_freeze_blocks``.
        freeze_embeddings: freeze the atom, bond and angle embeddings.
        epochs: most epochs of fine-tuning (and of the scratch baseline).
        learning_rate: peak of the one-cycle schedule while fine-tuning; None for the
            member's own training peak (measured best on the demo extension, see
            ``finetune_config``).
        patience: epochs without a better validation MAE before stopping.
        stride: labelled pool spacing in frames on the extension.
        batch_size: frames per training batch.
        pool_frames: train on exactly these labelled extension frames (``--frames-from``), split per
            member seed as the stride pool is; None for every ``stride``-th labelled frame.
        frames_from: the selection CSV ``pool_frames`` came from (passed on to Slurm array tasks).
        split: how each member cuts the extension's pool (``random`` or ``blocked``, ``data.splits``).
        block_fs: the blocked split's block length, fs; None to measure it.
    """

    freeze_blocks: int | None = None
    freeze_embeddings: bool = True
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float | None = None
    patience: int | None = None
    stride: int | None = None
    batch_size: int | None = None
    pool_frames: tuple[int, ...] | None = None
    frames_from: str | None = None
    split: str = "random"
    block_fs: float | None = None

    def __post_init__(self) -> None:
        from qdgap.core.config import check_split_options

        check_split_options(self.split, self.block_fs)
        if self.freeze_blocks is not None and self.freeze_blocks < 0:
            raise QdgapError(f"--freeze-blocks must be >= 0, got {self.freeze_blocks}")
        if self.epochs < 0:
            raise QdgapError(f"--epochs must be >= 0, got {self.epochs}")
        if self.learning_rate is not None and not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise QdgapError(f"--lr must be positive, got {self.learning_rate}")
        for name in ("patience", "stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QdgapError(f"--{name.replace('_', '-')} must be positive, got {value}")


def default_freeze_blocks(alignn_layers: int) -> int:
    """K when none is given: the study's three, but never every block (3 of 4 on ``paper``, 1 of 2 on ``demo``).

    At least the last ALIGNN block keeps training, so the adapted part still
    sees bond angles; freezing every block leaves only the graph convolutions.
    """
    return max(0, min(DEFAULT_FREEZE_BLOCKS, alignn_layers - 1))


def with_defaults(settings: FinetuneSettings, members: Sequence[Member]) -> FinetuneSettings:
    """``settings`` with K filled in from the members' model when it was left out."""
    if settings.freeze_blocks is not None:
        return settings
    return replace(settings, freeze_blocks=default_freeze_blocks(min(m.config.model.alignn_layers for m in members)))


def finetune_config(member: RunConfig, settings: FinetuneSettings) -> RunConfig:
    """The member's config with the fine-tuning schedule: epochs, learning rate, patience, stride, batch size.

    The learning rate defaults to the member's own peak, not a smaller one. On the demo
    extension (2 members, embeddings frozen, 50 epochs, 450 held-out frames; pretrained
    83.6 meV RMSE) fine-tuning at peaks 1e-3, 3e-3, 1e-2 (the preset's) and 3e-2 gave
    56.2, 32.1, 13.8 and 9.9 meV: within an epoch budget this short, a small rate barely
    moves the trainable layers, while the one-cycle warm-up (from peak / 25) already keeps
    the first steps gentle. (From scratch, the same budget gave 55.3 meV.)
    """
    tc = member.train
    return replace(
        member,
        train=replace(
            tc,
            epochs=settings.epochs,
            learning_rate=tc.learning_rate if settings.learning_rate is None else settings.learning_rate,
            patience=tc.patience if settings.patience is None else settings.patience,
            stride=tc.stride if settings.stride is None else settings.stride,
            batch_size=tc.batch_size if settings.batch_size is None else settings.batch_size,
            # never the pretrained member's own pool: those were frames of the data it was trained on
            pool_frames=settings.pool_frames,
            split=settings.split,
            block_fs=settings.block_fs,
            # the gap alone: a member keeps only its gap column, and a later stretch may have no band edges
            targets=("gap",),
        ),
    )


def scratch_config(member: RunConfig, settings: FinetuneSettings) -> RunConfig:
    """The baseline's config: the member's model and learning rate, the fine-tuning's epoch budget and frames."""
    ft = finetune_config(member, settings)
    return replace(ft, train=replace(ft.train, learning_rate=member.train.learning_rate))


@dataclass(frozen=True)
class OutputPaths:
    """Where ``qdgap finetune -o RUNS_FT`` writes."""

    finetuned: Path  # run_<seed>/ of the fine-tuned members
    scratch: Path  # run_<seed>/ of the scratch baseline
    report_csv: Path
    report_json: Path


def output_paths(output: Path, *, report: Path | None = None) -> OutputPaths:
    """The baseline and the report go beside ``output``, as ``layout.Workdir`` lays out a work folder.

    Args:
        output: the fine-tuned runs folder (``WORK/runs_ft``).
        report: the report CSV instead of ``WORK/finetune_report.csv``; its JSON twin sits beside it.
    """
    output = Path(output)
    wd = Workdir(output.parent)
    csv = wd.finetune_csv if report is None else Path(report)
    if csv.suffix.lower() != ".csv":
        raise QdgapError(f"--report {csv}: expected a .csv file name (the .json twin is written beside it)")
    return OutputPaths(finetuned=output, scratch=wd.runs_scratch, report_csv=csv, report_json=csv.with_suffix(".json"))


# ==========================================================================
# Members and checks
# ==========================================================================


def finished_members(runs: Path, *, seeds: Sequence[int] | None = None) -> list[Member]:
    """The finished members under ``runs`` (or ``runs`` itself if it is one run folder), optionally only ``seeds``.

    Unfinished members are left out with a warning; none finished is an error.

    Raises:
        QdgapError: no such folder, no finished member, or a seed asked for is not among them.
    """
    runs = Path(runs)
    if not runs.is_dir():
        raise QdgapError(f"{runs}: no such runs folder")
    if (runs / rf.CONFIG_JSON).exists():
        members = [rf.load_member(runs)]
    else:
        dirs = rf.member_dirs(runs)
        done = [d for d in dirs if (d / rf.DONE).exists()]
        if not done:
            what = f"{len(dirs)} member(s), none finished" if dirs else "no ensemble members (run_<seed>/ folders)"
            raise QdgapError(f"{runs}: {what}; train them first with `qdgap ensemble train`")
        if len(done) < len(dirs):
            unfinished = [d.name for d in dirs if d not in done]
            log.warning(
                "%s: %d member(s) not finished (%s); fine-tuning the %d finished ones",
                runs,
                len(unfinished),
                ", ".join(unfinished[:5]),
                len(done),
            )
        members = [rf.load_member(d) for d in done]
    if seeds is not None:
        have = {m.seed: m for m in members}
        missing = [s for s in seeds if s not in have]
        if missing:
            raise QdgapError(
                f"{runs}: no finished member with seed {missing[0]} (finished: {', '.join(str(s) for s in sorted(have))})"
            )
        members = [have[s] for s in seeds]
    return members


def check_members(members: Sequence[Member], traj: Trajectory, settings: FinetuneSettings) -> None:
    """Refuse members whose model cannot take this data, or that have fewer ALIGNN blocks than K.

    Raises:
        QdgapError: other composition or atom order, an atom feature table of
            another size than the model's input, or K above the model's blocks.
    """
    from qdgap.core.analysis.predict import check_members_fit
    from qdgap.core.model.network import species_table

    check_members_fit(members, traj, data_path=None, allow_data_change=True)
    settings = with_defaults(settings, members)
    species = np.unique(traj.numbers)
    for m in members:
        mc = m.config.model
        table = species_table(mc.atom_features, mc.atom_input_features)
        missing = [int(z) for z in species if not table[z].any()]
        if missing:
            from ase.data import chemical_symbols

            raise QdgapError(
                f"{m.path}: its model takes {mc.atom_input_features} {mc.atom_features} features per atom, "
                f"which {', '.join(chemical_symbols[z] for z in missing)} of the data do not have (feature size mismatch)"
            )
        if settings.freeze_blocks > mc.alignn_layers:
            raise QdgapError(
                f"--freeze-blocks {settings.freeze_blocks}: the model of {m.path} has only {mc.alignn_layers} ALIGNN "
                f"block(s); choose 0 to {mc.alignn_layers}"
            )
        if m.data_sha256 == traj.sha256:
            log.warning("%s was trained on this very data; fine-tuning on it adds nothing new", m.path.name)


def load_pretrained(member: Member) -> dict:
    """The member's ``best.pt`` state dict, checked to fit the model its ``config.json`` describes.

    Raises:
        QdgapError: unreadable, unsafe, or of another shape than the config says.
    """
    from qdgap.core.deploy.checkpoint import load_weights
    from qdgap.core.model.network import GapModel

    path = member.path / rf.BEST_PT
    if not path.is_file():
        raise QdgapError(f"{path}: missing; the member cannot be fine-tuned")
    state = load_weights(path)
    model = GapModel(member.config.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    wrong.sort(key=lambda k: k.startswith("_"))  # name a layer before the internal feature table
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            what = f"{k} is {tuple(state[k].shape)}, the config says {tuple(expected[k].shape)}; feature size mismatch"
        else:
            what = f"no {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise QdgapError(f"{path}: weights do not fit the model in {rf.CONFIG_JSON} ({what})")
    return state


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    frozen: int


def parameter_counts(member: RunConfig, settings: FinetuneSettings) -> ParameterCounts:
    """Trainable and frozen parameters of the member's model under ``settings``' freezing."""
    from qdgap.core.model.network import GapModel

    model = GapModel(member.model)
    k = default_freeze_blocks(member.model.alignn_layers) if settings.freeze_blocks is None else settings.freeze_blocks
    frozen = set(model.freeze(blocks=k, embeddings=settings.freeze_embeddings))
    n_frozen = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    n_all = sum(p.numel() for p in model.parameters())
    return ParameterCounts(trainable=n_all - n_frozen, frozen=n_frozen)


@dataclass(frozen=True)
class PretrainedInit:
    """seed -> ``InitFrom`` the pretrained member's best weights, frozen per the settings.

    A module-level class, so ``ensemble.train_local`` can hand it to worker processes.
    """

    runs: str  # the pretrained runs folder
    freeze_blocks: int
    freeze_embeddings: bool

    def __call__(self, seed: int):
        from qdgap.core.train.loop import InitFrom

        runs = Path(self.runs)
        member = rf.load_member(runs if (runs / rf.CONFIG_JSON).exists() else rf.run_dir(runs, seed))
        return InitFrom(
            state_dict=load_pretrained(member),
            freeze_blocks=self.freeze_blocks,
            freeze_embeddings=self.freeze_embeddings,
            source=str(member.path.resolve()),
        )


def _init_for(runs: Path, settings: FinetuneSettings) -> PretrainedInit:
    return PretrainedInit(str(Path(runs).resolve()), settings.freeze_blocks, settings.freeze_embeddings)


# ==========================================================================
# Training: one member, or the ensemble with the local backend
# ==========================================================================


def finetune_member(
    traj: Trajectory,
    member: Member,
    settings: FinetuneSettings,
    *,
    runs: Path,
    output: Path,
    device: str = "auto",
    data_path: str = "",
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Fine-tune one member into ``output/run_<seed>/`` (resumes an interrupted one).

    Args:
        traj: the extension trajectory.
        member: the pretrained member (from ``finished_members(runs)``).
        settings: freezing and schedule.
        runs: the pretrained runs folder ``member`` came from.
        output: the fine-tuned runs folder.
        device, data_path, progress, should_stop: as ``train.train_member``.

    Returns:
        ``train.TrainResult`` (with trainable and frozen parameter counts).
    """
    from qdgap.core.train.loop import train_member

    settings = with_defaults(settings, [member])
    return train_member(
        traj,
        finetune_config(member.config, settings),
        seed=member.seed,
        run_dir=rf.run_dir(output, member.seed),
        device=device,
        cache_dir=Path(output) / rf.CACHE_DIR,
        init=_init_for(runs, settings)(member.seed),
        data_path=data_path,
        progress=progress,
        should_stop=should_stop,
    )


def _by_config(members: Sequence[Member], make: Callable[[RunConfig], RunConfig]) -> list[tuple[RunConfig, list[int]]]:
    """Group member seeds by their resolved config (an ensemble normally has one)."""
    groups: dict[str, tuple[RunConfig, list[int]]] = {}
    for m in members:
        config = make(m.config)
        key = repr(config.to_json())
        groups.setdefault(key, (config, []))[1].append(m.seed)
    return list(groups.values())


def finetune_local(
    data_path: Path,
    members: Sequence[Member],
    settings: FinetuneSettings,
    *,
    runs: Path,
    output: Path,
    jobs: int,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list:
    """Fine-tune every member with the local backend (``ensemble.train_local``): skip DONE, resume the rest.

    Returns:
        One ``ensemble.MemberOutcome`` per member, in the order of ``members``.
    """
    settings = with_defaults(settings, members)
    return _train_each_config(
        data_path,
        members,
        lambda c: finetune_config(c, settings),
        init=_init_for(runs, settings),
        output=output,
        jobs=jobs,
        device=device,
        progress=progress,
        should_stop=should_stop,
    )


def scratch_local(
    data_path: Path,
    members: Sequence[Member],
    settings: FinetuneSettings,
    *,
    output: Path,
    jobs: int,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list:
    """Train the scratch baseline (same seeds, ``scratch_config``) with the local backend into ``output``."""
    return _train_each_config(
        data_path,
        members,
        lambda c: scratch_config(c, settings),
        init=None,
        output=output,
        jobs=jobs,
        device=device,
        progress=progress,
        should_stop=should_stop,
    )


def _train_each_config(
    data_path: Path,
    members: Sequence[Member],
    to_config: Callable,
    *,
    init: Callable | None,
    output: Path,
    jobs: int,
    device: str,
    progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list:
    """``ensemble.train_local`` once per distinct derived config (members may differ in preset); outcomes in
    the order of ``members``."""
    from qdgap.core.workflow.ensemble import train_local

    outcomes = {}
    for config, seeds in _by_config(members, to_config):
        for o in train_local(
            data_path,
            config,
            seeds=seeds,
            runs=output,
            jobs=jobs,
            device=device,
            progress=progress,
            should_stop=should_stop,
            init=init,
        ):
            outcomes[o.seed] = o
    return [outcomes[m.seed] for m in members]


# ==========================================================================
# Slurm: what one array task runs
# ==========================================================================


def slurm_arrays(
    members: Sequence[Member],
    settings: FinetuneSettings,
    *,
    runs: Path,
    data: Path,
    paths: Any,
    device: str,
    baselines: bool,
) -> list[tuple[Path, Callable[[int], list[str]], str]]:
    """The Slurm arrays of a fine-tuning run: (output folder, seed -> qdgap argv, job name) for the fine-tuned
    members, and for the scratch baseline when ``baselines``.

    Raises:
        QdgapError: a member whose scratch recipe ``qdgap train`` cannot rebuild.
    """
    from qdgap.core.workflow.ensemble import train_argv

    by_seed = {m.seed: m for m in members}
    arrays = [
        (
            paths.finetuned,
            lambda s: finetune_argv(s, runs=runs, data=data, output=paths.finetuned, settings=settings, device=device),
            "qdgap-finetune",
        )
    ]
    if baselines:
        recipe = {s: scratch_train_overrides(m, settings) for s, m in by_seed.items()}  # refuses what train cannot
        arrays.append(
            (
                paths.scratch,
                lambda s: train_argv(
                    s, data=data, runs=paths.scratch, preset=recipe[s][0], device=device, overrides=recipe[s][1]
                ),
                "qdgap-scratch",
            )
        )
    return arrays


def finetune_argv(
    seed: int, *, runs: Path, data: Path, output: Path, settings: FinetuneSettings, device: str
) -> list[str]:
    """The ``qdgap finetune --seed S`` arguments that fine-tune one member (an array task)."""
    argv = [
        "--quiet",
        "finetune",
        "--seed",
        str(seed),
        "--runs",
        str(Path(runs).absolute()),
        "--data",
        str(Path(data).absolute()),
    ]
    argv += ["-o", str(Path(output).absolute()), "--device", device]
    if settings.freeze_blocks is not None:
        argv += ["--freeze-blocks", str(settings.freeze_blocks)]
    argv += ["--freeze-embeddings" if settings.freeze_embeddings else "--no-freeze-embeddings"]
    argv += ["--epochs", str(settings.epochs)]
    if settings.learning_rate is not None:
        argv += ["--lr", repr(settings.learning_rate)]
    if settings.frames_from is not None:
        argv += ["--frames-from", str(Path(settings.frames_from).absolute())]
    for key in ("patience", "stride", "batch_size", "block_fs"):
        value = getattr(settings, key)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    argv += ["--split", settings.split]
    return argv


def scratch_train_overrides(member: Member, settings: FinetuneSettings) -> tuple[str, dict[str, object]]:
    """(preset, ``qdgap train`` overrides) that reproduce ``scratch_config`` for ``ensemble.train_argv``.

    Raises:
        QdgapError: the member's model or graph is not its preset's, so ``qdgap train`` cannot rebuild it.
    """
    from qdgap.core.config import GRAPHS, PRESETS, resolve_config

    want = scratch_config(member.config, settings)
    t = want.train
    preset = member.config.preset
    # A member trained with --graph: the task repeats it (None where the graph is the preset's own).
    graph = None
    if preset in PRESETS and want.graph != PRESETS[preset].graph:
        graph = next((name for name, g in GRAPHS.items() if g == want.graph), None)
    train = {
        "epochs": t.epochs,
        "patience": t.patience,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "stride": t.stride,
        "split": t.split,
        "block_fs": t.block_fs,
        "targets": ",".join(t.targets),
    }
    # pool_frames (from --frames-from) is checked here and handed to the task as the file it came from.
    if preset not in PRESETS or resolve_config(preset, graph=graph, pool_frames=t.pool_frames, **train) != want:
        raise QdgapError(
            f"{member.path}: its settings are not those of a preset, so `qdgap train` cannot rebuild the scratch "
            "baseline on Slurm; pass --no-baselines or use --backend local"
        )
    overrides = {("lr" if k == "learning_rate" else k): v for k, v in train.items()}
    overrides["frames_from"] = None if settings.frames_from is None else str(Path(settings.frames_from).absolute())
    return preset, {**overrides, "graph": graph}
