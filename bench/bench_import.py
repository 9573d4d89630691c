"""Import time of a long trajectory: ``qdgap data import`` on a 10,001-frame, 67-atom extended XYZ.

    python bench/bench_import.py [--frames 10001] [--workdir bench/_out/import]

The trajectory is generated here (the demo's first frame, jiggled with
``qdgap.testing.synthetic``, gaps in each frame's info), written once with ASE and
kept, so a rerun times only the import. The import runs as the CLI does
(``python -m qdgap data import``, a fresh process), so its time includes
Python start-up and imports. Then one frame is read back from the HDF5 file
(``read_frame``-style partial read) to show a reader does not load them all.
Nothing here asserts a time: it prints them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent


def make_extxyz(path: Path, num_frames: int) -> None:
    """Write ``num_frames`` frames of the demo dot (Å, gap in eV under info['gap'])."""
    from ase import Atoms
    from ase.io import write

    from qdgap.cli.options import DEMO_DATA
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.testing.synthetic import synthetic_trajectory

    demo = read_trajectory(DEMO_DATA)
    traj = synthetic_trajectory(num_frames, base=(demo.numbers, demo.positions_ang[0]), amplitude_ang=0.05, seed=0)
    frames = [
        Atoms(numbers=traj.numbers, positions=traj.positions_ang[f], info={"gap": float(traj.gap_ev[f])})
        for f in range(num_frames)
    ]
    tmp = path.with_suffix(".tmp.xyz")
    write(tmp, frames, format="extxyz")
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_001)
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "_out" / "import")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / f"traj_{args.frames}.xyz"
    out = args.workdir / f"traj_{args.frames}.h5"
    if not src.exists():
        t = time.perf_counter()
        make_extxyz(src, args.frames)
        print(f"generated {src} ({src.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
    cmd = [sys.executable, "-m", "qdgap", "--quiet", "data", "import", str(src), "-o", str(out), "--force"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    print(
        f"import: {wall:.1f} s wall for {args.frames} frames ({args.frames / wall:,.0f} frames/s); "
        f"{out.stat().st_size / 1e6:.1f} MB HDF5; command: {' '.join(cmd[1:])}"
    )
    import h5py

    t = time.perf_counter()
    with h5py.File(out, "r") as h5:
        one = np.asarray(h5["positions"][args.frames // 2])
    print(f"one frame {one.shape} read back in {(time.perf_counter() - t) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
