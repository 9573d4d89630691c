"""Graph building, frames/s: qdgap's vectorised builder vs upstream ALIGNN's pure-torch builder, same frames.

    python bench/bench_graphs.py [--quick]                  # all cases, prints the table
    python bench/bench_graphs.py --case upstream [--quick]  # one case, JSON on stdout

Cases (each in its own process):

* ``qdgap``: ``qdgap.core.graphs.build.build_graphs(traj, GraphConfig())`` on the demo
  trajectory as qdgap runs it (an isolated cluster, no cell): one call for all frames.
* ``qdgap_boxed``: the same frames in a 22 Å periodic box, the exact input upstream gets.
* ``upstream``: ``alignn.torch_graph_builder.build_pure_torch_graph(atoms, two_body_cutoff=5,
  three_body_cutoff=3.5, max_neighbors=12, use_matscipy_topology=False)`` once per frame,
  on jarvis ``Atoms`` made beforehand (untimed), keeping every (g, lg) as a dataset would.

Both presets share the graph parameters, so this runs once.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from alignn.torch_graph_builder import build_pure_torch_graph  # noqa: E402,F401

from qdgap.core.config import GraphConfig  # noqa: E402
from qdgap.core.graphs.build import build_graphs  # noqa: E402

AIM = 20.0  # issue 4: at least 20x upstream's builder


def _frames(quick: bool, num_frames: int) -> np.ndarray:
    return np.arange(201 if quick else num_frames)


def _qdgap(a: C.CaseArgs, *, box: bool) -> dict:
    traj = C.load_demo()
    traj = traj.select(_frames(a.quick, traj.num_frames))
    if box:
        traj = C.boxed(traj)
    params = GraphConfig()
    a.probe.reset()
    build_graphs(traj.select(np.arange(20)), params)  # warm-up: allocator, kernels
    out = {}

    def call():
        out["packed"] = build_graphs(traj, params)

    timing = C.time_calls(call, warmup=1, repeats=2 if a.quick else 5, device=torch.device("cpu"))
    packed = out["packed"]
    row = {
        "name": "qdgap build_graphs" + (" (boxed, PBC)" if box else " (isolated cluster)"),
        "frames": traj.num_frames,
        "bonds": int(packed.edge_ptr[-1]),
        "triplets": int(packed.lg_ptr[-1]),
        "bonds_per_frame": torch.diff(packed.edge_ptr).tolist(),
        "triplets_per_frame": torch.diff(packed.lg_ptr).tolist(),
        **C.rate_stats(traj.num_frames, timing),
        **a.probe.mark(),
    }
    return {"rows": [row]}


def case_qdgap(a: C.CaseArgs) -> dict:
    return _qdgap(a, box=False)


def case_qdgap_boxed(a: C.CaseArgs) -> dict:
    return _qdgap(a, box=True)


def case_upstream(a: C.CaseArgs) -> dict:
    traj = C.boxed(C.load_demo())
    frames = np.arange(101) if a.quick else np.arange(traj.num_frames)
    atoms = [C.jarvis_atoms(traj, int(f)) for f in frames]  # untimed: the input structures
    params = GraphConfig()
    a.probe.reset()
    for at in atoms[:10]:
        C.upstream_graph(at, params)  # warm-up
    out = {}

    def call():
        out["graphs"] = [C.upstream_graph(at, params) for at in atoms]

    timing = C.time_calls(call, warmup=0, repeats=1 if a.quick else 2, device=torch.device("cpu"))
    graphs = out["graphs"]
    row = {
        "name": "upstream build_pure_torch_graph, per frame",
        "frames": len(frames),
        "bonds": int(sum(g.num_edges for g, _ in graphs)),
        "triplets": int(sum(lg.num_edges for _, lg in graphs)),
        "bonds_per_frame": [int(g.num_edges) for g, _ in graphs],
        "triplets_per_frame": [int(lg.num_edges) for _, lg in graphs],
        **C.rate_stats(len(frames), timing),
        **a.probe.mark(),
    }
    return {"rows": [row]}


CASES = {"qdgap": case_qdgap, "qdgap_boxed": case_qdgap_boxed, "upstream": case_upstream}


def plan(quick: bool, presets=C.PRESET_NAMES) -> list[tuple[str, str]]:
    return [("upstream", "demo"), ("qdgap", "demo"), ("qdgap_boxed", "demo")]


def report(results: list[dict], ceiling: dict | None) -> str:
    ref = C.find(results, "upstream")
    ref_row = ref["rows"][0] if ref else None
    rows = []
    for case in ("upstream", "qdgap", "qdgap_boxed"):
        r = C.find(results, case)
        if r is None:
            continue
        row = r["rows"][0]
        ratio = row["rate"] / ref_row["rate"] if ref_row else None
        same = "(reference)"
        if ref_row and case != "upstream":
            # Bond and triplet counts of every frame both sides built (a sanity check, not a test).
            k = min(len(row["bonds_per_frame"]), len(ref_row["bonds_per_frame"]))
            equal = (
                row["bonds_per_frame"][:k] == ref_row["bonds_per_frame"][:k]
                and row["triplets_per_frame"][:k] == ref_row["triplets_per_frame"][:k]
            )
            same = f"{'yes' if equal else 'NO'} ({k} frames)"
        rows.append(
            [
                row["name"],
                row["frames"],
                C.fmt_rate(row),
                1e3 / row["rate"],
                C.fmt_ratio(ratio),
                C.fmt_mb(row),
                f"{row['bonds'] / row['frames']:.1f} / {row['triplets'] / row['frames']:.1f}",
                same,
            ]
        )
    text = [
        "## Graph building (both presets: 5 Å, 12 neighbours, 3.5 Å three-body cutoff)",
        "",
        C.md_table(
            [
                "builder",
                "frames",
                "frames/s median (min–max)",
                "ms/frame",
                "vs upstream",
                "peak MB",
                "bonds / triplets per frame",
                "same counts as upstream",
            ],
            rows,
        ),
        "",
        f"Aim (issue 4): qdgap at least {AIM:.0f}x upstream's builder.",
    ]
    return "\n".join(text + C.failed_cases(results))


if __name__ == "__main__":
    C.case_main(CASES)
