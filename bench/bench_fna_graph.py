"""What moves the FNA ranking toward the study's? The same FNA on ensembles trained on different graphs (issue 28).

Each ``--arm NAME=fna.h5`` is one ensemble's FNA (same members count, epochs, frames and mask in every arm;
the arms differ in what they were trained on, e.g. ``qdgap ensemble train --graph knn12``). Per arm, the
ranking by the study's own statistic (the mean over members of each member's masked RMSE, meV) against the
published top 23: how many of the published top 4/8/15 are in the arm's top 4/8/15, Spearman's rho over the
23 with its 95 % interval over members, and the arm's split-half reliability (the ceiling for any agreement
with another ranking). The arithmetic is ``core/analysis/comparison.fna_ranking``, what comparison.md uses.

    python bench/bench_fna_graph.py --arm default=work/fna_redraw/base0/fna.h5 \\
        --arm knn12=work/fna_graph/knn12/fna_seed_every10.h5 \\
        --arm knn12-multigraph=work/fna_graph/knn12-multigraph/fna_seed_every10.h5 --out bench/results_fna_graph

Writes OUT.md and OUT.json. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qdgap.core.analysis.comparison import TOP_KS, fna_ranking  # noqa: E402
from qdgap.core.common import schema  # noqa: E402


def arm_row(name: str, path: Path) -> dict:
    """One arm's agreement with the published ranking, from its fna.h5."""
    from qdgap.core.store.results import read_results

    data, attrs = read_results(path, fmt=schema.FNA_FORMAT)
    cmp, _, _ = fna_ranking(data)
    return {
        "arm": name,
        "file": str(path),
        "members": int(len(data[schema.RMSE_MEV])),
        "frames": int(len(data[schema.FRAME_INDEX])),
        "mask": str(attrs.get("mask", "")),
        "overlap": {str(k): cmp.overlap[k] for k in TOP_KS},
        "rho": cmp.rho,
        "rho_ci": list(cmp.rho_ci),
        "split_half_rho": cmp.split_half.rho if cmp.split_half else float("nan"),
        "split_half_full_rho": cmp.split_half.full_rho if cmp.split_half else float("nan"),
        "top5": cmp.order[:5],
        # Paired importance (masked minus unmasked RMSE per member) averaged over the atoms of each element.
        "element_importance_mev": _by_element(data),
    }


def _by_element(data: dict) -> dict[str, float]:
    import numpy as np

    labels = [str(a.decode() if isinstance(a, bytes) else a) for a in data[schema.ATOM_LABEL]]
    element = np.array([a.rstrip("0123456789") for a in labels])
    imp = np.asarray(data[schema.IMPORTANCE_MEAN_MEV], float)
    return {e: float(imp[element == e].mean()) for e in dict.fromkeys(element)}


def degree_rows(data_path: Path, frames: int = 100) -> list[dict]:
    """Bonds per atom (in and out, directed edges) by element on every graph ``--graph`` offers, over
    ``frames`` evenly spaced frames of the trajectory: what the seed mask's zeroed bond vectors touch."""
    import numpy as np

    from qdgap.core.config import GRAPHS
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.graphs.build import build_graphs

    traj = read_trajectory(data_path)
    sel = traj.select(np.linspace(0, traj.num_frames - 1, frames).round().astype(np.int64))
    n = traj.num_atoms
    symbols = {48: "Cd", 34: "Se", 17: "Cl", 8: "O", 1: "H"}
    rows = []
    for name, params in GRAPHS.items():
        g = build_graphs(sel, params)
        ptr = g.edge_ptr.numpy()
        src, dst = g.edge_src.numpy(), g.edge_dst.numpy()
        degree = np.zeros(n)
        for k in range(len(ptr) - 1):
            degree += np.bincount(src[ptr[k] : ptr[k + 1]] % n, minlength=n)
            degree += np.bincount(dst[ptr[k] : ptr[k + 1]] % n, minlength=n)
        degree /= len(ptr) - 1
        by = {symbols.get(int(z), str(z)): float(degree[traj.numbers == z].mean()) for z in dict.fromkeys(traj.numbers)}
        rows.append({"graph": name, "edges_per_frame": float(ptr[-1] / (len(ptr) - 1)), "degree": by})
    return rows


def render(rows: list[dict], command: str, degrees: list[dict] | None = None) -> str:
    lines = [
        "# What moves the FNA ranking toward the study's",
        "",
        f"`{command}`",
        "",
        "| arm | members | frames | mask | published top 4 / 8 / 15 in ours | Spearman's rho over the published 23 "
        "[95 % over members] | split-half rho (Spearman-Brown) | our top 5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ov = " / ".join(f"{r['overlap'][str(k)]}/{k}" for k in TOP_KS)
        lo, hi = r["rho_ci"]
        lines.append(
            f"| {r['arm']} | {r['members']} | {r['frames']} | {r['mask']} | {ov} | {r['rho']:+.2f} [{lo:+.2f}, "
            f"{hi:+.2f}] | {r['split_half_rho']:.2f} ({r['split_half_full_rho']:.2f}) | {', '.join(r['top5'])} |"
        )
    lines += [
        "",
        "Ranked by the study's statistic (mean over members of the masked RMSE). The published ranking: "
        "Se2, Se1, Se5, Cl7, ... (`core/analysis/comparison.PUBLISHED_TOP23`).",
        "",
        "Mean paired importance (masked minus unmasked RMSE per member, meV) over each element's atoms:",
        "",
        "| arm | " + " | ".join(rows[0]["element_importance_mev"]) + " |",
        "|---|" + "---|" * len(rows[0]["element_importance_mev"]),
    ]
    for r in rows:
        lines.append(f"| {r['arm']} | " + " | ".join(f"{v:.1f}" for v in r["element_importance_mev"].values()) + " |")
    if degrees:
        elements = list(degrees[0]["degree"])
        lines += ["", "Bonds per atom on each graph (directed edges in and out, mean over 100 frames evenly spread):", "",
                  "| graph | edges per frame | " + " | ".join(elements) + " |", "|---|---|" + "---|" * len(elements)]  # fmt: skip
        for d in degrees:
            lines.append(
                f"| {d['graph']} | {d['edges_per_frame']:.0f} | "
                + " | ".join(f"{d['degree'][e]:.1f}" for e in elements)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", action="append", required=True, help="NAME=path/to/fna.h5 (repeat)")
    p.add_argument("--out", type=Path, required=True, help="OUT.md and OUT.json are written")
    p.add_argument("--degrees", type=Path, default=None, help="trajectory: also count bonds per atom on every graph")
    args = p.parse_args()
    arms = []
    for spec in args.arm:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"--arm {spec!r}: expected NAME=path to an existing fna.h5")
        arms.append((name, Path(path)))
    rows = [arm_row(name, path) for name, path in arms]
    degrees = degree_rows(args.degrees) if args.degrees else None
    command = "python bench/bench_fna_graph.py " + " ".join(f"--arm {s}" for s in args.arm) + f" --out {args.out}"
    command += f" --degrees {args.degrees}" if args.degrees else ""
    md = render(rows, command, degrees)
    args.out.with_suffix(".md").write_text(md)
    record = {"command": command, "arms": rows, "degrees": degrees}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
