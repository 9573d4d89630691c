"""GFN1-xTB gaps of every labelled frame of a trajectory, for the multi-fidelity benchmark (issue 27).

    python bench/xtb_gaps.py work/real/cl_qd.h5 --out work/mf/xtb_cl_qd --shard 0/2
    python bench/xtb_gaps.py work/real/cl_qd.h5 --out work/mf/xtb_cl_qd --shard 1/2   # beside it

Each shard is a contiguous stretch of the labelled frames, computed in time order with one calculator
(each SCF starts from the previous frame's wavefunction: about 1.1 s per frame on one Zen 5 core).
Results go to ``OUT/shard{i}of{n}.npz`` (frame indices, xTB gaps in eV, seconds) every 50 frames through a
temporary file, so a killed run resumes where it stopped. Run with OMP_NUM_THREADS=1 per shard.

    python bench/xtb_gaps.py work/real/cl_qd.h5 --out work/mf/xtb_cl_qd --delta work/mf/cl_qd_delta.h5

writes, once every shard is done, the trajectory whose labels are PBE - xTB (eV) for Delta-learning with
qdgap itself: a member trained on it predicts the correction, and its error on a frame is the error of
xTB + correction against PBE, so qdgap's scores of that file are scores of the PBE gap; ``--xtb-labels
OUT.h5`` writes the trajectory labelled with the xTB gaps themselves (for pretraining on them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

METHOD = "GFN1-xTB"  # the default; GFN2-xTB's gap does not follow PBE's on the real dot (docs/how-to/multi-fidelity.md)


def shard_frames(labelled: np.ndarray, shard: int, num_shards: int) -> np.ndarray:
    """The contiguous ``shard``-th of ``num_shards`` pieces of the labelled frame indices (time order)."""
    return np.array_split(np.asarray(labelled, np.int64), num_shards)[shard]


def load_shards(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every shard's (frames (M,) int64, xTB gaps (M,) eV float64), merged and sorted by frame."""
    frames, gaps = [], []
    for path in sorted(Path(out).glob("shard*.npz")):
        with np.load(path, allow_pickle=False) as z:
            frames.append(z["frames"])
            gaps.append(z["gap_ev"])
    if not frames:
        return np.zeros(0, np.int64), np.zeros(0)
    f, g = np.concatenate(frames), np.concatenate(gaps)
    order = np.argsort(f)
    return f[order], g[order]


def _save(path: Path, frames: list[int], gaps: list[float], seconds: float, method: str = METHOD) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frames=np.asarray(frames, np.int64), gap_ev=np.asarray(gaps), seconds=seconds, method=method)
    os.replace(tmp, path)


def write_labels(data: Path, folder: Path, out: Path, *, delta: bool, slope: float = 1.0) -> int:
    """Write ``data`` with each label replaced by PBE - ``slope`` xTB (``delta``) or by the xTB gap itself (eV;
    NaN where either is missing) to ``out``; returns the number of labels kept.

    A slope below 1 is xTB as a readout input whose weight is fixed (at the pool's least-squares slope, say):
    the model learns what the scaled xTB gap leaves."""
    from dataclasses import replace

    from qdgap.core.data.trajectory import read_trajectory, write_trajectory

    traj = read_trajectory(data)
    frames, gaps = load_shards(folder)
    labels = np.full(traj.num_frames, np.nan, np.float32)
    labels[frames] = (
        traj.gap_ev[frames] - slope * gaps if delta else np.where(np.isfinite(traj.gap_ev[frames]), gaps, np.nan)
    )
    what = ("PBE - GFN1-xTB gap" if slope == 1.0 else f"PBE - {slope:g} x GFN1-xTB gap") if delta else "GFN1-xTB gap"
    write_trajectory(replace(traj, gap_ev=labels), out, force=True, source=f"{data}: {what}")
    return int(np.isfinite(labels).sum())


def write_with_xtb(data: Path, folder: Path, out: Path) -> int:
    """Write ``data`` with the shards' xTB gaps as its ``xtb_gap_ev`` (what ``qdgap data xtb`` writes; NaN
    elsewhere) to ``out``, its labels untouched; returns the number of frames with an xTB gap."""
    from dataclasses import replace

    from qdgap.core.common import schema
    from qdgap.core.data.trajectory import read_trajectory, write_trajectory

    traj = read_trajectory(data)
    frames, gaps = load_shards(folder)
    xtb = np.full(traj.num_frames, np.nan, np.float32)
    xtb[frames] = gaps
    attrs = {**traj.attrs, schema.ATTR_XTB_METHOD: METHOD}
    write_trajectory(replace(traj, xtb_gap_ev=xtb, attrs=attrs), out, force=True)
    return int(np.isfinite(xtb).sum())


def main(argv: list[str] | None = None) -> int:
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.sim.md import XtbPotential

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shard", default="0/1", help="i/n: the i-th of n contiguous pieces of the labelled frames")
    p.add_argument("--method", default=METHOD, help="GFN1-xTB or GFN2-xTB")
    p.add_argument("--range", default=None, metavar="START:STOP", help="only the labelled frames in [START, STOP)")
    p.add_argument("--delta", type=Path, default=None, help="write the PBE - xTB trajectory here, compute nothing")
    p.add_argument("--slope", type=float, default=1.0, help="with --delta: write PBE - SLOPE x xTB")
    p.add_argument("--xtb-labels", type=Path, default=None, help="write the trajectory labelled with xTB gaps here")
    p.add_argument(
        "--with-xtb", type=Path, default=None, help="write the trajectory with the xTB gaps as xtb_gap_ev here"
    )
    args = p.parse_args(argv)
    if args.delta is not None:
        print(
            f"wrote {args.delta}: {write_labels(args.data, args.out, args.delta, delta=True, slope=args.slope)} PBE - xTB labels"
        )
        return 0
    if args.with_xtb is not None:
        print(f"wrote {args.with_xtb}: xtb_gap_ev on {write_with_xtb(args.data, args.out, args.with_xtb)} frames")
        return 0
    if args.xtb_labels is not None:
        print(f"wrote {args.xtb_labels}: {write_labels(args.data, args.out, args.xtb_labels, delta=False)} xTB labels")
        return 0
    shard, num_shards = (int(x) for x in args.shard.split("/"))
    traj = read_trajectory(args.data)
    labelled = np.flatnonzero(np.isfinite(traj.gap_ev))
    if args.range:
        start, stop = (int(x) for x in args.range.split(":"))
        labelled = labelled[(labelled >= start) & (labelled < stop)]
    todo = shard_frames(labelled, shard, num_shards)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"shard{shard}of{num_shards}.npz"
    frames: list[int] = []
    gaps: list[float] = []
    seconds = 0.0
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            frames, gaps, seconds = z["frames"].tolist(), z["gap_ev"].tolist(), float(z["seconds"])
    todo = todo[len(frames) :]
    print(f"{args.data} shard {shard}/{num_shards}: {len(frames)} done, {len(todo)} to go", flush=True)
    potential = None
    t0 = time.perf_counter()
    for j, f in enumerate(todo):
        pos = traj.positions_ang[f].astype(np.float64)
        if potential is None:
            potential = XtbPotential(traj.numbers, pos, method=args.method)
        frames.append(int(f))
        gaps.append(potential(pos).gap_ev)
        if (j + 1) % 50 == 0 or j + 1 == len(todo):
            _save(path, frames, gaps, seconds + time.perf_counter() - t0, args.method)
            print(f"  {len(frames)} frames, {seconds + time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
