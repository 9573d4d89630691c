"""A predict or FNA run cut into parts: one member x one block of frames, each computed alone.

A Slurm array task computes one part (``qdgap predict --part SEED:BLOCK``, ``qdgap fna --part
...``) and keeps it in its own file; the command that submitted the array merges the parts into
the same ``EnsemblePrediction`` / ``FnaResult`` a one-process run computes (to float32 rounding:
only the batching of the frames differs). Where the parts live, beside the output:

    <output folder>/.<output name>.parts/
        predict-seed3-b0.npz   one part: member 3 on block 0 of the chosen frames
        fna-seed3-b0.npz       the same for FNA
        .slurm/                the arrays that computed them (``core/workflow/slurm.py``)

Block b of F chosen frames with ``frames_per_task`` k is ``frames[b * k : (b + 1) * k]``; without
k there is one block, every frame. A part file records what it was computed from (the input's
sha256, the member's model sha256, its frame indices, the FNA mask), and a merge refuses a part
whose record differs from the run being merged: a one-line error, nothing merged.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.store.runs import Member

log = logging.getLogger(__name__)

KINDS: Final[tuple[str, ...]] = ("predict", "fna")
PART_FORMAT: Final[str] = "qdgap.part"

# Keys of a part file (.npz, no pickles)
_K_FORMAT: Final[str] = "format"  # () str | PART_FORMAT
_K_KIND: Final[str] = "kind"  # () str | predict or fna
_K_SEED: Final[str] = "seed"  # () int64 | the member's seed
_K_BLOCK: Final[str] = "block"  # () int64 | block of frames
_K_FRAMES: Final[str] = "frame_index"  # (F_b,) int64 | the block's frame indices
_K_INPUT: Final[str] = "input_sha256"  # () str | sha256 of the trajectory file
_K_MODEL: Final[str] = "model_sha256"  # () str | sha256 of the member's model.ts
_K_MODE: Final[str] = "mode"  # () str | FNA mask; "" for predict
_K_JOB: Final[str] = "job_id"  # () str | Slurm array (or job) id of the task that computed it; "" outside Slurm
# predict: (F_b,) float32, eV. fna: (F_b, N + 1) float32, eV; column 0 unmasked, column n + 1 atom n nullified.
_K_VALUES: Final[str] = "values"


@dataclass(frozen=True)
class Part:
    """One member x one block of frames of a predict or FNA run.

    Attributes:
        kind: ``predict`` or ``fna``.
        seed: the member's seed.
        block: index of the block of frames (0 when the run is not cut by frames).
    """

    kind: str
    seed: int
    block: int

    @property
    def name(self) -> str:
        """``SEED:BLOCK``, what ``--part`` takes and what the Slurm records call the task."""
        return f"{self.seed}:{self.block}"

    @property
    def file_name(self) -> str:
        return f"{self.kind}-seed{self.seed}-b{self.block}.npz"


@dataclass(frozen=True)
class PartFile:
    """A part as read back from its file (see the module docstring for the values' shapes)."""

    path: Path
    part: Part
    frame_index: np.ndarray
    input_sha256: str
    model_sha256: str
    mode: str
    job_id: str
    values: np.ndarray


def parts_folder(output: str | os.PathLike) -> Path:
    """``<folder>/.<name>.parts`` beside the output file ``output``."""
    output = Path(output)
    return output.parent / f".{output.name}.parts"


def check_frames_per_task(frames_per_task: int | None) -> None:
    """Refuse a block size below one frame.

    Raises:
        QdgapError: one line naming the option.
    """
    if frames_per_task is not None and (isinstance(frames_per_task, bool) or frames_per_task < 1):
        raise QdgapError(f"--frames-per-task must be at least 1, got {frames_per_task}")


def num_blocks(num_frames: int, frames_per_task: int | None) -> int:
    """How many blocks ``num_frames`` chosen frames make: ceil(F / k), or 1 without k."""
    check_frames_per_task(frames_per_task)
    return 1 if frames_per_task is None else max(1, math.ceil(num_frames / frames_per_task))


def block_frames(frames: np.ndarray, block: int, frames_per_task: int | None) -> np.ndarray:
    """(F_b,) int64: the frame indices of block ``block`` of ``frames`` (F,)."""
    frames = np.asarray(frames, dtype=np.int64)
    if not 0 <= block < num_blocks(len(frames), frames_per_task):
        raise QdgapError(
            f"--part block {block}: the {len(frames)} chosen frames make "
            f"{num_blocks(len(frames), frames_per_task)} block(s) of --frames-per-task {frames_per_task}"
        )
    if frames_per_task is None:
        return frames
    return frames[block * frames_per_task : (block + 1) * frames_per_task]


def plan_parts(kind: str, seeds: Sequence[int], num_frames: int, frames_per_task: int | None) -> list[Part]:
    """Every part of a run: members in the given order, blocks in frame order within each."""
    if kind not in KINDS:
        raise QdgapError(f"part kind must be one of {', '.join(KINDS)}, got {kind!r}")
    n = num_blocks(num_frames, frames_per_task)
    return [Part(kind, int(s), b) for s in seeds for b in range(n)]


def parse_part(kind: str, text: str) -> Part:
    """``"SEED"`` or ``"SEED:BLOCK"`` (what ``--part`` takes) -> the part.

    Raises:
        QdgapError: not one or two whole numbers.
    """
    seed, _, block = text.strip().partition(":")
    if not seed.isdigit() or (block and not block.isdigit()):
        raise QdgapError(f"--part {text!r}: expected SEED or SEED:BLOCK with whole numbers, e.g. 3:0")
    return Part(kind, int(seed), int(block or 0))


def member_of(members: Sequence[Member], seed: int) -> Member:
    """The member with ``seed``.

    Raises:
        QdgapError: no such member.
    """
    for m in members:
        if m.seed == seed:
            return m
    raise QdgapError(f"--part: no member with seed {seed} (members: {', '.join(str(m.seed) for m in members)})")


# ==========================================================================
# One part: compute and keep
# ==========================================================================


def compute_part(
    part: Part,
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    frames_per_task: int | None,
    folder: Path,
    mode: str = "",
    chunk: int | None = None,
    device: str = "cpu",
    backend: str | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Compute one part and write its file atomically (a killed task leaves no file).

    Args:
        part: which member and block.
        members: the ensemble's members (the part's one is picked by seed).
        traj: the trajectory.
        frames: (F,) int64, every chosen frame of the run (the part takes its block).
        frames_per_task: block size in frames; None for one block.
        folder: the parts folder (``parts_folder(output)``).
        mode: FNA mask (``full`` or ``seed``); unused by predict.
        chunk: FNA masked copies per forward; a device default if None.
        device: torch device.
        backend: ``torchscript`` or ``onnxruntime``; None for ``export.DEFAULT_BACKEND``.
        cache_dir: graph cache folder.
        progress: called with frames (predict) or masked evaluations (FNA) done.

    Returns:
        The part file's path.
    """
    member = member_of(members, part.seed)
    sub = block_frames(frames, part.block, frames_per_task)
    # One member per forward, as a one-process run on the CPU does; stacking needs several members.
    if part.kind == "predict":
        from qdgap.core.analysis.predict import predict_ensemble

        pred = predict_ensemble(
            [member], traj, sub, cache_dir=cache_dir, device=device, backend=backend, progress=progress, stacked=False
        )
        values = pred.gap_pred_ev[0]  # (F_b,)
    elif part.kind == "fna":
        from qdgap.core.analysis.fna import run_fna

        result = run_fna(
            [member], traj, sub, mode=mode, chunk=chunk, device=device, backend=backend,
            cache_dir=cache_dir, partial_dir=None, progress=progress, stacked=False,
        )  # fmt: skip
        values = np.concatenate([result.baseline_ev[0][:, None], result.masked_ev[0]], axis=1)  # (F_b, N + 1)
    else:
        raise QdgapError(f"part kind must be one of {', '.join(KINDS)}, got {part.kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / part.file_name
    for stale in folder.glob(f".{part.file_name}.*.tmp"):  # a killed attempt's write; no other task holds this part
        stale.unlink(missing_ok=True)
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or ""
    with atomic_output(path, force=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                **{
                    _K_FORMAT: np.array(PART_FORMAT),
                    _K_KIND: np.array(part.kind),
                    _K_SEED: np.int64(part.seed),
                    _K_BLOCK: np.int64(part.block),
                    _K_FRAMES: sub,
                    _K_INPUT: np.array(traj.sha256),
                    _K_MODEL: np.array(member.model_sha256),
                    _K_MODE: np.array(mode if part.kind == "fna" else ""),
                    _K_JOB: np.array(job),
                    _K_VALUES: np.asarray(values, dtype=np.float32),
                },
            )
    log.info("part %s of %s: %d frames -> %s", part.name, part.kind, len(sub), path)
    return path


def read_part(path: str | os.PathLike) -> PartFile:
    """Read a part file.

    Raises:
        QdgapError: unreadable or not a qdgap part.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz[_K_FORMAT]) != PART_FORMAT:
                raise ValueError(f"format is {str(npz[_K_FORMAT])!r}")
            part = Part(str(npz[_K_KIND]), int(npz[_K_SEED]), int(npz[_K_BLOCK]))
            return PartFile(
                path=path,
                part=part,
                frame_index=np.asarray(npz[_K_FRAMES], dtype=np.int64),
                input_sha256=str(npz[_K_INPUT]),
                model_sha256=str(npz[_K_MODEL]),
                mode=str(npz[_K_MODE]),
                job_id=str(npz[_K_JOB]),
                values=np.asarray(npz[_K_VALUES], dtype=np.float32),
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QdgapError(f"{path}: not a readable qdgap part file ({exc}); remove it and rerun") from exc


def check_part(
    found: PartFile,
    part: Part,
    *,
    member: Member,
    traj: Trajectory,
    frames: np.ndarray,
    frames_per_task: int | None,
    mode: str = "",
    num_atoms: int | None = None,
) -> None:
    """Refuse a part file computed from anything but this run's inputs.

    Raises:
        QdgapError: one line naming the file and what differs, and what to do.
    """
    again = f"remove {found.path.parent} (or the file) to compute it again"
    if found.input_sha256 != traj.sha256:
        raise QdgapError(
            f"{found.path}: computed from another input (sha256 {found.input_sha256[:12]}, the data's is "
            f"{traj.sha256[:12]}); {again}"
        )
    if found.part != part:
        raise QdgapError(f"{found.path}: holds part {found.part.kind} {found.part.name}, not {part.name}; {again}")
    if found.model_sha256 != member.model_sha256:
        raise QdgapError(f"{found.path}: computed with another model of seed {member.seed} (retrained?); {again}")
    if part.kind == "fna" and found.mode != mode:
        raise QdgapError(f"{found.path}: computed with --mask {found.mode}, this run asks for {mode}; {again}")
    expected = block_frames(frames, part.block, frames_per_task)
    if not np.array_equal(found.frame_index, expected):
        raise QdgapError(
            f"{found.path}: computed for other frames ({len(found.frame_index)} from frame "
            f"{found.frame_index[:1].tolist()}) than this run's block {part.block}; {again}"
        )
    width = (len(expected),) if part.kind == "predict" else (len(expected), (num_atoms or traj.num_atoms) + 1)
    if found.values.shape != width:
        raise QdgapError(f"{found.path}: values of shape {found.values.shape}, expected {width}; {again}")


def done_parts(
    plan: Sequence[Part],
    folder: Path,
    *,
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    frames_per_task: int | None,
    mode: str = "",
) -> dict[Part, PartFile]:
    """The parts of ``plan`` whose file exists, each checked against this run (``check_part``).

    Raises:
        QdgapError: a part file is unreadable or from other inputs.
    """
    by_seed = {m.seed: m for m in members}
    out = {}
    for part in plan:
        path = Path(folder) / part.file_name
        if not path.is_file():
            continue
        found = read_part(path)
        check_part(
            found, part, member=by_seed[part.seed], traj=traj, frames=frames, frames_per_task=frames_per_task, mode=mode
        )
        out[part] = found
    return out


# ==========================================================================
# Merge
# ==========================================================================


@dataclass(frozen=True)
class Merged:
    """The merged parts of a run.

    Attributes:
        result: an ``EnsemblePrediction`` (predict) or ``FnaResult`` (fna), as a one-process run returns it.
        job_ids: the Slurm arrays (or jobs) whose tasks computed the parts, in ascending order; empty
            for parts computed outside Slurm.
        num_parts: how many parts were merged.
    """

    result: object
    job_ids: tuple[str, ...]
    num_parts: int


def merge_parts(
    kind: str,
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    frames_per_task: int | None,
    folder: Path,
    mode: str = "",
) -> Merged:
    """Assemble every part of a run into its result; every part must be there and match this run.

    Args:
        kind: ``predict`` or ``fna``.
        members: the members, in the order of the result's rows.
        traj: the trajectory.
        frames: (F,) int64, every chosen frame.
        frames_per_task: block size the parts were cut with; None for one block.
        folder: the parts folder.
        mode: FNA mask.

    Raises:
        QdgapError: a part is missing, unreadable or from other inputs; nothing is merged.
    """
    frames = np.asarray(frames, dtype=np.int64)
    plan = plan_parts(kind, [m.seed for m in members], len(frames), frames_per_task)
    found = done_parts(
        plan, folder, members=members, traj=traj, frames=frames, frames_per_task=frames_per_task, mode=mode
    )
    missing = [p.name for p in plan if p not in found]
    if missing:
        raise QdgapError(
            f"{folder}: {len(missing)} of {len(plan)} {kind} part(s) missing ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); rerun the command to compute them"
        )
    seeds = np.asarray([m.seed for m in members], dtype=np.int64)
    row = {m.seed: i for i, m in enumerate(members)}
    k = len(frames) if frames_per_task is None else frames_per_task
    if kind == "predict":
        from qdgap.core.analysis.predict import EnsemblePrediction

        preds = np.empty((len(members), len(frames)), np.float32)
        for part, pf in found.items():
            preds[row[part.seed], part.block * k : part.block * k + len(pf.frame_index)] = pf.values
        result: object = EnsemblePrediction(
            frame_index=frames,
            time_fs=traj.time_fs[frames],
            gap_true_ev=traj.gap_ev[frames],
            gap_pred_ev=preds,
            seeds=seeds,
        )
    else:
        from qdgap.core.analysis.fna import FnaResult

        values = np.empty((len(members), len(frames), traj.num_atoms + 1), np.float32)
        for part, pf in found.items():
            values[row[part.seed], part.block * k : part.block * k + len(pf.frame_index)] = pf.values
        result = FnaResult(
            frame_index=frames,
            time_fs=traj.time_fs[frames],
            gap_true_ev=traj.gap_ev[frames].astype(np.float32),
            atom_label=traj.atom_labels,
            baseline_ev=np.ascontiguousarray(values[:, :, 0]),
            masked_ev=np.ascontiguousarray(values[:, :, 1:]),
            seeds=seeds,
            numbers=np.asarray(traj.numbers, dtype=np.int64),
            positions_ang=traj.positions_ang[frames],
        )
    jobs = sorted({pf.job_id for pf in found.values() if pf.job_id}, key=lambda j: (len(j), j))
    return Merged(result=result, job_ids=tuple(jobs), num_parts=len(plan))
