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
    try:
        import tblite.interface  # noqa: F401
    except ImportError:
        raise QdgapError("--xtb needs tblite: pip install 'qdgap[xtb]' (or pip install tblite)") from None
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
