"""What the original study's graphs cost per training step on a CPU, beside qdgap's default graph.

Not a test. Forward + backward per frame (1 thread) of the demo and paper models on
40 frames of a trajectory, for the pure_torch, canonised k-nearest and k-nearest
graphs. Used for bench/cpu_preset.md:

    .venv/bin/python bench/bench_graph_cost.py work/reproduce/cl_qd.h5
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from qdgap.core.config import K_NEAREST, PRESETS, GraphConfig
from qdgap.core.data.trajectory import read_trajectory
from qdgap.core.graphs.build import build_graphs
from qdgap.core.model.network import GapModel
from qdgap.kernels.batch import gather_frames


def main() -> None:
    torch.set_num_threads(1)
    traj = read_trajectory(sys.argv[1]).select(np.arange(0, 400, 10))
    graphs = {
        "pure_torch": GraphConfig(),
        "k-nearest canonised": PRESETS["paper"].graph,
        "k-nearest": GraphConfig(neighbor_strategy=K_NEAREST),
    }
    for name, params in graphs.items():
        packed = build_graphs(traj, params)
        for preset, frames, batch in (("demo", 40, 4), ("paper", 4, 2)):
            model = GapModel(PRESETS[preset].model)
            model.set_target_stats(1.7, 0.1)
            best = []
            for _ in range(2):
                t0 = time.perf_counter()
                for s in range(0, frames, batch):
                    model.predict_batch(gather_frames(packed, torch.arange(s, s + batch))).sum().backward()
                best.append((time.perf_counter() - t0) / frames)
            print(
                f"{name:20s} {preset:6s} bonds/frame {int(packed.edge_ptr[1])} triplets/frame {int(packed.lg_ptr[1])}"
                f"  forward+backward {min(best) * 1000:.1f} ms/frame"
            )


if __name__ == "__main__":
    main()
