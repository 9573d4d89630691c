"""The machine's practical ceiling and the model's arithmetic: float32 matmul GFLOP/s and FLOPs per frame.

    python bench/bench_ceiling.py [--quick]

Cases (each in its own process, same thread count as every other case):

* ``matmul``: ``torch.mm`` float32 GFLOP/s (2mkn FLOPs per product) for a square
  2048 x 2048 product, and for the products the model actually runs at the
  large inference batch of each preset (atoms, bonds and triplets as rows,
  hidden features as columns). Each shape: 3 warm-up products, then 5 repeats
  (3 in --quick) of as many products as fill 0.25 s (0.1 s); best and median.
* ``flops``: per preset, FLOPs per frame counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on 16 frames (8 in --quick) spread over the
  trajectory: one forward (qdgap ``GapModel`` and upstream ``ALIGNNAtomWisePure``,
  which run the same products), and one forward + backward of the training loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from alignn.torch_graph_builder import batch_torch_graph_pairs  # noqa: E402

from qdgap.core.config import GraphConfig  # noqa: E402
from qdgap.core.graphs.build import build_graphs  # noqa: E402
from qdgap.kernels.batch import gather_frames  # noqa: E402

LARGE_BATCH = {"demo": 256, "paper": 64}  # frames per forward in the large-batch inference rows
FLOP_FRAMES = 16


def graph_stats(frames: int = 101) -> dict[str, float]:
    """Mean atoms, bonds and angle triplets per frame of the demo trajectory (every 10th frame)."""
    traj = C.load_demo()
    packed = build_graphs(traj.select(np.arange(0, traj.num_frames, traj.num_frames // frames or 1)), GraphConfig())
    return {
        "atoms": float(packed.z.numel()),
        "bonds": float(packed.edge_ptr[-1]) / packed.num_frames,
        "triplets": float(packed.lg_ptr[-1]) / packed.num_frames,
    }


def case_matmul(a: C.CaseArgs) -> dict:
    stats = graph_stats()
    kw = {
        "min_seconds": 0.1 if a.quick else 0.25,
        "repeats": 3 if a.quick else 5,
        "device": a.device,
    }
    rows = [
        {
            "name": "square 2048",
            "shape": "(2048, 2048) @ (2048, 2048)",
            "preset": "-",
            **C.matmul_gflops(2048, 2048, 2048, **kw),
        }
    ]
    for preset in C.PRESET_NAMES:
        h = C.run_config(preset).model.hidden_features
        b = LARGE_BATCH[preset]
        n, e, t = (int(round(stats[k] * b)) for k in ("atoms", "bonds", "triplets"))
        for name, m, k, nn in (
            ("atoms: 4 fused linears", n, h, 4 * h),
            ("bonds: 4 fused linears (line-graph conv)", e, h, 4 * h),
            ("bonds: edge gate", e, h, h),
            ("triplets: edge gate (line-graph conv)", t, h, h),
        ):
            rows.append(
                {
                    "name": name,
                    "shape": f"({m}, {k}) @ ({k}, {nn})",
                    "preset": preset,
                    "batch": b,
                    **C.matmul_gflops(m, k, nn, **kw),
                }
            )
    return {"rows": rows, "graph_stats": stats, **a.probe.mark()}


def case_flops(a: C.CaseArgs) -> dict:
    from qdgap.core.model.network import GapModel  # noqa: F401

    traj = C.load_demo()
    frames = C.spaced_frames(traj.num_frames, FLOP_FRAMES // (2 if a.quick else 1))
    packed = build_graphs(traj.select(frames), GraphConfig())
    batch = gather_frames(packed, torch.arange(len(frames)))
    model = C.gap_model(a.preset)
    up = C.upstream_model(model, a.preset)
    boxed = C.boxed(traj.select(frames))
    pairs = [C.upstream_graph(C.jarvis_atoms(boxed, i), GraphConfig()) for i in range(len(frames))]
    g, lg = batch_torch_graph_pairs(pairs)
    lat = torch.zeros(len(frames), 3, 3)
    target = torch.zeros(len(frames))

    def q_fwd():
        with torch.no_grad():
            model(*batch)

    def q_train():
        model.train()
        loss = torch.nn.functional.l1_loss(model(*batch), target)
        loss.backward()
        model.eval()

    def u_fwd():
        with torch.no_grad():
            up([g, lg, lat])

    def u_train():
        up.train()
        loss = torch.nn.functional.l1_loss(up([g, lg, lat])["out"], target)
        loss.backward()
        up.eval()

    per = 1.0 / len(frames)
    return {
        "frames": len(frames),
        "atoms": traj.num_atoms,
        "bonds_per_frame": float(packed.edge_ptr[-1]) * per,
        "triplets_per_frame": float(packed.lg_ptr[-1]) * per,
        "params": sum(p.numel() for p in model.parameters()),
        "fwd_flops_per_frame": C.count_flops(q_fwd) * per,
        "train_flops_per_frame": C.count_flops(q_train) * per,
        "upstream_fwd_flops_per_frame": C.count_flops(u_fwd) * per,
        "upstream_train_flops_per_frame": C.count_flops(u_train) * per,
        **a.probe.mark(),
    }


CASES = {"matmul": case_matmul, "flops": case_flops}


def plan(quick: bool, presets=C.PRESET_NAMES) -> list[tuple[str, str]]:
    return [("matmul", "demo"), *[("flops", p) for p in presets]]


def ceiling_of(results: list[dict]) -> dict | None:
    """What the other reports divide by: the square-2048 ceiling and each preset's FLOPs and model-shape ceiling."""
    mm = C.find(results, "matmul")
    if mm is None:
        return None
    out = {"square_gflops": mm["rows"][0]["gflops_best"], "presets": {}}
    for preset in C.PRESET_NAMES:
        fl = C.find(results, "flops", preset)
        shaped = [r for r in mm["rows"] if r.get("preset") == preset and r["name"].startswith("bonds: 4 fused")]
        out["presets"][preset] = {
            "fwd_flops_per_frame": fl["fwd_flops_per_frame"] if fl else None,
            "train_flops_per_frame": fl["train_flops_per_frame"] if fl else None,
            "shape_gflops": shaped[0]["gflops_best"] if shaped else None,
        }
    return out


def fractions(gflops: float | None, ceiling: dict | None, preset: str) -> tuple[float | None, float | None]:
    """Achieved GFLOP/s as a fraction of the square-2048 ceiling and of the model-shape ceiling."""
    if gflops is None or ceiling is None:
        return None, None
    shape = ceiling["presets"].get(preset, {}).get("shape_gflops")
    return gflops / ceiling["square_gflops"], (gflops / shape if shape else None)


def report(results: list[dict], ceiling: dict | None) -> str:
    text = ["## The ceiling: float32 matrix multiply", ""]
    mm = C.find(results, "matmul")
    if mm:
        rows = [[r["name"], r["preset"], r["shape"], r["gflops_best"], r["gflops_median"]] for r in mm["rows"]]
        text += [
            C.md_table(["product", "preset", "shape", "GFLOP/s best", "GFLOP/s median"], rows),
            "",
            "The ceiling every fraction below divides by is the square product's best repeat; "
            '"% of shape" divides by the best repeat of the model\'s largest product '
            "(bonds x hidden x 4 hidden, the line-graph convolution) at that preset's large batch. "
            f"Mean per frame: {mm['graph_stats']['atoms']:.0f} atoms, {mm['graph_stats']['bonds']:.1f} bonds, "
            f"{mm['graph_stats']['triplets']:.1f} triplets.",
            "",
        ]
    rows = []
    for preset in C.PRESET_NAMES:
        fl = C.find(results, "flops", preset)
        if fl:
            rows.append(
                [
                    preset,
                    f"{fl['params']:,}",
                    fl["fwd_flops_per_frame"] / 1e9,
                    fl["upstream_fwd_flops_per_frame"] / 1e9,
                    fl["train_flops_per_frame"] / 1e9,
                    fl["upstream_train_flops_per_frame"] / 1e9,
                    f"{fl['train_flops_per_frame'] / fl['fwd_flops_per_frame']:.2f}",
                    f"{fl['bonds_per_frame']:.1f} / {fl['triplets_per_frame']:.1f}",
                ]
            )
    if rows:
        text += [
            "### FLOPs per frame (FlopCounterMode: matrix products only, 2 per multiply-add)",
            "",
            C.md_table(
                [
                    "preset",
                    "parameters",
                    "forward GFLOP (qdgap)",
                    "forward GFLOP (upstream)",
                    "fwd+bwd GFLOP (qdgap)",
                    "fwd+bwd GFLOP (upstream)",
                    "fwd+bwd / fwd",
                    "bonds / triplets per frame",
                ],
                rows,
            ),
            "",
            "Counted on frames spread over the demo trajectory (16; 8 in --quick), per frame. Inference and FNA "
            "rates use the forward count; training rates use the counted forward + backward of the L1 loss "
            "(counted, not assumed to be 3x the forward).",
        ]
    return "\n".join(text + C.failed_cases(results))


if __name__ == "__main__":
    C.case_main(CASES)
