"""Label chosen frames with GFN-xTB gaps and write them into the trajectory (``qdgap label --xtb``).

The same method that made the demo data (``md.XtbPotential``: tblite, the
HOMO-LUMO gap of the converged SCF), so ``select -> label -> finetune`` runs
end to end on a laptop. Frames are computed in time order with one calculator,
each SCF starting from the previous frame's wavefunction. Positions come from
the file (float32), so a gap recomputed for a frame that had one can differ
from the original, made from float64 positions during the MD, by a fraction of
a meV. The trajectory is rewritten through a temporary file: a killed run
leaves it as it was.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common.errors import QdgapError

log = logging.getLogger(__name__)

ATTR_LABELLED = "labelled_with"  # str | JSON list of {frames, method, created} added by `qdgap label`


@dataclass(frozen=True)
class LabelResult:
    frames: np.ndarray  # (K,) int64, frames labelled
    gap_ev: np.ndarray  # (K,) float32, eV
    replaced: int  # frames that had a gap before
    max_change_ev: float | None  # largest |new - old| over those, eV
    seconds: float


def trajectory_method(traj) -> str | None:
    """The xTB method a ``simulate`` trajectory was made with (its ``md_config`` attr), or None."""
    from qdgap.core.sim.md import ATTR_MD_CONFIG

    raw = traj.attrs.get(ATTR_MD_CONFIG)
    try:
        return None if raw is None else str(json.loads(raw)["method"])
    except (TypeError, ValueError, KeyError):
        return None


def require_tblite(what: str) -> None:
    """Raise a ``QdgapError`` saying how to install tblite when it cannot be imported (``what`` needs it)."""
    try:
        import tblite.interface  # noqa: F401
    except ImportError:
        raise QdgapError(f"{what} needs tblite: pip install 'qdgap[xtb]' (or pip install tblite)") from None


def check_label_inputs(selection: Path, data: Path, *, method: str | None) -> tuple[np.ndarray, str]:
    """The frames to label (each in range, named once) and the method; tblite importable.

    Raises:
        QdgapError: bad selection, unknown method, or tblite missing.
    """
    from qdgap.core.analysis.select import read_selection
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.sim.qd import DEFAULT_METHOD, check_method

    frames = read_selection(selection)
    traj = read_trajectory(data)
    bad = frames[(frames < 0) | (frames >= traj.num_frames)]
    if bad.size:
        raise QdgapError(f"{selection}: frame {int(bad[0])} is outside {data}'s frames 0-{traj.num_frames - 1}")
    unique, counts = np.unique(frames, return_counts=True)
    if (counts > 1).any():
        raise QdgapError(f"{selection}: frame {int(unique[counts > 1][0])} is named more than once")
    method = method or trajectory_method(traj) or DEFAULT_METHOD
    check_method(method)
    require_tblite("--xtb")
    return unique, method


def label_frames(
    data: Path,
    frames: np.ndarray,
    *,
    method: str,
    output: Path,
    progress: Callable[[int], None] | None = None,
) -> LabelResult:
    """Compute the GFN-xTB gap of ``frames`` of ``data`` and write the trajectory with them to ``output``.

    Args:
        data: the trajectory file.
        frames: (K,) frame indices, sorted, unique.
        method: ``GFN1-xTB`` or ``GFN2-xTB``.
        output: where the labelled trajectory goes (``data`` itself to update it in place).
        progress: called with 1 per frame.
    """
    from dataclasses import replace

    from qdgap.core.common.files import exclusive_lock, provenance
    from qdgap.core.data.trajectory import read_trajectory, read_trajectory_extras, write_trajectory
    from qdgap.core.sim.md import XtbPotential

    t0 = time.perf_counter()
    output = Path(output)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"trajectory {output}"):
        traj = read_trajectory(data)
        extras = read_trajectory_extras(data)
        frames = np.asarray(frames, np.int64)
        old = traj.gap_ev[frames].astype(np.float64)
        potential = None
        gaps = np.empty(len(frames), np.float32)
        for j, f in enumerate(frames):
            pos = traj.positions_ang[f].astype(np.float64)
            if potential is None:
                potential = XtbPotential(traj.numbers, pos, method=method)
            gaps[j] = potential(pos).gap_ev
            if progress is not None:
                progress(1)
        new_gap = traj.gap_ev.copy()
        new_gap[frames] = gaps
        history = _history(traj.attrs.get(ATTR_LABELLED))
        history.append({"frames": frames.tolist(), "method": method, "created": provenance()["created"]})
        attrs = {k: v for k, v in traj.attrs.items() if k != ATTR_LABELLED}
        labelled = replace(traj, gap_ev=new_gap, attrs=attrs)
        write_trajectory(labelled, output, force=True, extras=extras or None, **{ATTR_LABELLED: json.dumps(history)})
    had = np.isfinite(old)
    change = float(np.max(np.abs(gaps[had] - old[had]))) if had.any() else None
    return LabelResult(
        frames=frames,
        gap_ev=gaps,
        replaced=int(had.sum()),
        max_change_ev=change,
        seconds=time.perf_counter() - t0,
    )


def _history(raw) -> list:
    try:
        out = json.loads(raw) if raw else []
    except (TypeError, ValueError):
        out = []
    return out if isinstance(out, list) else []


# ==========================================================================
# A cheap gap of every frame (``qdgap data xtb``): the low level of a multi-fidelity estimate
# ==========================================================================

XTB_CHUNK_FRAMES = 50  # frames per task: one calculator each, so one SCF from scratch per 50 restarted ones
XTB_PARTS_SUFFIX = ".xtb-parts"  # the folder beside the trajectory that keeps finished chunks until the end


@dataclass(frozen=True)
class XtbGapsResult:
    frames: np.ndarray  # (K,) int64, frames that now have an xTB gap
    computed: int  # frames computed by this call (the rest came from an interrupted run's parts)
    seconds: float


def xtb_parts_dir(output: Path) -> Path:
    """The folder where ``xtb_gaps_to_file`` keeps finished chunks for ``output`` until it is written."""
    output = Path(output)
    return output.parent / f".{output.name}{XTB_PARTS_SUFFIX}"


def _xtb_chunk(data: str, frames: list[int], method: str) -> list[float]:
    """Worker: the xTB gaps (eV) of consecutive frames, one calculator restarted frame to frame."""
    from qdgap.core.data.trajectory import read_frame
    from qdgap.core.sim.md import XtbPotential

    potential = None
    out = []
    for f in frames:
        numbers, pos = read_frame(data, f)
        pos = np.asarray(pos, np.float64)
        if potential is None:
            potential = XtbPotential(numbers, pos, method=method)
        out.append(potential(pos).gap_ev)
    return out


def _xtb_worker_init() -> None:
    import os

    # One OpenMP thread per worker: tblite's threads would otherwise multiply with the workers'.
    os.environ["OMP_NUM_THREADS"] = "1"


def xtb_gaps_to_file(
    data: Path,
    frames: np.ndarray,
    *,
    method: str,
    output: Path,
    jobs: int = 1,
    as_labels: bool = False,
    progress: Callable[[int], None] | None = None,
) -> XtbGapsResult:
    """Compute the GFN-xTB gap of ``frames`` of ``data`` and write the trajectory with them (``xtb_gap_ev``).

    Frames go in chunks of ``XTB_CHUNK_FRAMES`` consecutive ones to ``jobs`` worker processes (one thread
    each). Each finished chunk is saved in ``xtb_parts_dir(output)``, so an interrupted call resumes where it
    stopped when called again with the same frames and method; the trajectory is rewritten once, through a
    temporary file, when every chunk is done, and the parts are then removed. Frames not in ``frames`` keep
    the xTB gap they had.

    Args:
        data: the trajectory file.
        frames: (K,) frame indices, sorted, unique.
        method: ``GFN1-xTB`` or ``GFN2-xTB``.
        output: where the trajectory goes (``data`` itself to update it in place).
        jobs: worker processes.
        as_labels: also make the xTB gaps the trajectory's labels (``gap_ev``; NaN where none), dropping its
            DFT labels and band edges: the file to pretrain an ensemble on before fine-tuning on DFT labels.
        progress: called with the number of frames of each finished chunk.
    """
    import multiprocessing as mp
    import shutil
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from dataclasses import replace

    from qdgap.core.common import schema
    from qdgap.core.common.files import exclusive_lock, provenance
    from qdgap.core.data.trajectory import read_trajectory, read_trajectory_extras, write_trajectory

    t0 = time.perf_counter()
    output = Path(output)
    frames = np.asarray(frames, np.int64)
    chunks = [frames[i : i + XTB_CHUNK_FRAMES] for i in range(0, len(frames), XTB_CHUNK_FRAMES)]
    parts = xtb_parts_dir(output)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"trajectory {output}"):
        parts.mkdir(exist_ok=True)
        done: dict[int, np.ndarray] = {}
        for i, chunk in enumerate(chunks):
            path = parts / f"chunk{i:06d}.npz"
            if path.exists():
                with np.load(path, allow_pickle=False) as z:
                    if str(z["method"]) == method and np.array_equal(z["frames"], chunk):
                        done[i] = z["gap_ev"]
                        if progress is not None:
                            progress(len(chunk))
        todo = [i for i in range(len(chunks)) if i not in done]
        computed = sum(len(chunks[i]) for i in todo)

        def keep(i: int, gaps: list[float]) -> None:
            done[i] = np.asarray(gaps, np.float64)
            tmp = parts / f"chunk{i:06d}.tmp.npz"
            np.savez(tmp, frames=chunks[i], gap_ev=done[i], method=method)
            tmp.replace(parts / f"chunk{i:06d}.npz")
            if progress is not None:
                progress(len(chunks[i]))

        if jobs <= 1 or len(todo) <= 1:
            for i in todo:
                keep(i, _xtb_chunk(str(data), chunks[i].tolist(), method))
        else:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_xtb_worker_init) as pool:
                futures = {pool.submit(_xtb_chunk, str(data), chunks[i].tolist(), method): i for i in todo}
                try:
                    for fut in as_completed(futures):
                        keep(futures[fut], fut.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        traj = read_trajectory(data)
        extras = read_trajectory_extras(data)
        xtb = np.full(traj.num_frames, np.nan, np.float32) if traj.xtb_gap_ev is None else traj.xtb_gap_ev.copy()
        for i, gaps in done.items():
            xtb[chunks[i]] = gaps
        attrs = {**traj.attrs, schema.ATTR_XTB_METHOD: method}
        out = replace(traj, xtb_gap_ev=xtb, attrs=attrs)
        if as_labels:
            history = _history(traj.attrs.get(ATTR_LABELLED))
            history.append({"frames": "all with an xTB gap", "method": method, "created": provenance()["created"]})
            attrs[ATTR_LABELLED] = json.dumps(history)
            out = replace(out, gap_ev=xtb.copy(), homo_ev=None, lumo_ev=None, attrs=attrs)
        write_trajectory(out, output, force=True, extras=extras or None)
        shutil.rmtree(parts, ignore_errors=True)
    return XtbGapsResult(frames=frames, computed=computed, seconds=time.perf_counter() - t0)
