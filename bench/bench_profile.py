"""Where the time goes: torch.profiler over qdgap's inference, FNA kernel and training step.

    python bench/bench_profile.py [--quick]

For each preset, three workloads at the sizes qdgap picks on this device
(``kernels.batch.graphs_per_forward``):

* ``inference``: the exported TorchScript model on that many frames per call;
* ``fna``: ``fna_masked_gaps`` on one frame (68 masked copies), default chunk;
* ``train``: one optimiser step of a batch of the preset's size, gradient summed
  over micro-batches (``qdgap.core.train.loop.accumulate_gradient``), AdamW.

Each is warmed up, then profiled over a few calls. Every operator's *self* CPU
time goes to one class: matrix products (``mm``, ``addmm``, ``bmm``), gathers
and scatters (``index_select``, ``index_add_``, ...), element-wise and norms
(arithmetic, activations, layer norm and their backward kernels), copies and
concatenation, and the rest. The matrix products' own rate (their counted FLOPs
over their own time) says how fast the matrix work runs inside the model; the
share of the rest is what stands between the model and the matmul ceiling.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from qdgap.core.common.numerics import fast_cpu_math  # noqa: E402
from qdgap.core.config import GraphConfig  # noqa: E402
from qdgap.core.graphs.build import build_graphs  # noqa: E402
from qdgap.kernels.batch import gather_frames, graphs_per_forward  # noqa: E402
from qdgap.kernels.fna import fna_masked_gaps  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
GATHER = {
    "aten::index_select",
    "aten::index_add_",
    "aten::scatter_add_",
    "aten::index",
    "aten::index_put_",
    "aten::_index_put_impl_",
    "aten::index_select_backward",
    "aten::embedding",
    "aten::gather",
}
COPY = {
    "aten::cat",
    "aten::copy_",
    "aten::clone",
    "aten::contiguous",
    "aten::to",
    "aten::_to_copy",
    "aten::fill_",
    "aten::zero_",
    "aten::zeros",
    "aten::empty",
    "aten::empty_strided",
    "aten::split",
    "aten::chunk",
}
ELEMENTWISE = (
    "add",
    "sub",
    "mul",
    "div",
    "silu",
    "sigmoid",
    "exp",
    "pow",
    "clamp",
    "neg",
    "layer_norm",
    "where",
    "sum",
    "mean",
    "sign",
    "abs",
    "sqrt",
    "lerp",
    "addcmul",
    "addcdiv",
    "_foreach",
    "l1_loss",
    "threshold",
)
CLASSES = ("matrix products", "gathers/scatters", "element-wise + norms", "copies/cat/fill", "other")


def _class_of(name: str) -> str:
    if name in MATMUL:
        return "matrix products"
    if name in GATHER:
        return "gathers/scatters"
    if name in COPY:
        return "copies/cat/fill"
    if name.startswith("aten::") and any(k in name for k in ELEMENTWISE):
        return "element-wise + norms"
    return "other"


def _setup(a: C.CaseArgs):
    torch.set_grad_enabled(True)
    fast_cpu_math()
    traj = C.load_demo()
    frames = C.spaced_frames(traj.num_frames, 64)
    packed = build_graphs(traj.select(frames), GraphConfig())
    model = C.gap_model(a.preset)
    edges = float(packed.edge_ptr[-1]) / packed.num_frames
    return packed, model, edges


def _profile(fn, calls: int, items: float, a: C.CaseArgs, flops_fn) -> dict:
    for _ in range(2):
        fn()
    matmul_flops = C.count_flops(flops_fn)  # FLOPs of the matrix products of one call
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    wall = time.perf_counter() - t0
    by_class: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        by_class[_class_of(ev.key)] += ev.self_cpu_time_total / 1e6
        ops[ev.key] += ev.self_cpu_time_total / 1e6
    total = sum(by_class.values())
    mm_s = by_class["matrix products"]
    return {
        "items_per_call": items,
        "calls": calls,
        "profiled_wall_s": wall,
        "aten_self_s": total,
        "shares": {k: by_class[k] / total for k in CLASSES},
        "matmul_gflops_inside": matmul_flops * calls / mm_s / 1e9 if mm_s > 0 else None,
        "top_ops": sorted(((k, v / total) for k, v in ops.items()), key=lambda kv: -kv[1])[:6],
        **a.probe.mark(),
    }


def case_inference(a: C.CaseArgs) -> dict:
    packed, model, edges = _setup(a)
    scripted = torch.jit.script(model.eval())
    b = graphs_per_forward(a.device.type, edges, model.fc.in_features)
    batches = [gather_frames(packed, torch.arange(i * b, (i + 1) * b)) for i in range(min(8, 64 // b))]

    def call():
        with torch.inference_mode():
            for batch in batches:
                scripted(*batch)

    row = _profile(call, 1 if a.quick else 3, b * len(batches), a, lambda: [model(*x) for x in batches])
    return {"rows": [{"name": f"TorchScript inference, {b} frame(s) per forward", **row}]}


def case_fna(a: C.CaseArgs) -> dict:
    packed, model, edges = _setup(a)
    scripted = torch.jit.script(model.eval())
    chunk = graphs_per_forward(a.device.type, edges, model.fc.in_features)
    base = gather_frames(packed, torch.arange(1))

    def call():
        fna_masked_gaps(scripted, base, num_atoms=67, mode="full", chunk_size=chunk)

    row = _profile(
        call, 1 if a.quick else 2, 68, a, lambda: fna_masked_gaps(model, base, num_atoms=67, chunk_size=chunk)
    )
    return {"rows": [{"name": f"FNA kernel, one frame (68 copies), chunk {chunk}", **row}]}


def case_train(a: C.CaseArgs) -> dict:
    from qdgap.core.train.loop import accumulate_gradient

    packed, model, edges = _setup(a)
    model.train()
    bs = C.run_config(a.preset).train.batch_size
    micro = min(bs, graphs_per_forward(a.device.type, edges, model.fc.in_features, training=True))
    gaps = torch.from_numpy(np.linspace(1.1, 1.4, packed.num_frames).astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames = torch.arange(bs)

    def step():
        accumulate_gradient(model, packed, frames, gaps, target_std=0.1, micro_batch=micro)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def flops():
        accumulate_gradient(model, packed, frames, gaps, target_std=0.1, micro_batch=micro)
        opt.zero_grad(set_to_none=True)

    row = _profile(step, 1, bs, a, flops)
    how = "one forward" if micro >= bs else f"micro-batches of {micro}"
    return {"rows": [{"name": f"training step, batch {bs} in {how}", **row}]}


CASES = {"inference": case_inference, "fna": case_fna, "train": case_train}


def plan(quick: bool, presets=C.PRESET_NAMES) -> list[tuple[str, str]]:
    return [(case, p) for p in presets for case in CASES]


def report(results: list[dict], ceiling: dict | None) -> str:
    square = (ceiling or {}).get("square_gflops")
    rows = []
    for preset in C.PRESET_NAMES:
        for case in CASES:
            r = C.find(results, case, preset)
            if r is None:
                continue
            row = r["rows"][0]
            inside = row["matmul_gflops_inside"]
            rows.append(
                [
                    preset,
                    row["name"],
                    *(f"{100 * row['shares'][k]:.0f} %" for k in CLASSES),
                    inside,
                    C.fmt_pct(inside / square if inside and square else None),
                    ", ".join(f"{k.removeprefix('aten::')} {100 * v:.0f} %" for k, v in row["top_ops"][:5]),
                ]
            )
    text = [
        "## Where the time goes (torch.profiler, self CPU time of aten operators)",
        "",
        C.md_table(
            ["preset", "workload", *CLASSES, "matmul GFLOP/s inside the products", "of ceiling", "top operators"],
            rows,
        ),
        "",
        "Shares of the operators' own time (children excluded), over a few profiled calls after warm-up. "
        '"Matmul GFLOP/s inside the products" is the counted matrix-product FLOPs of those calls over the time '
        "spent in the products themselves: the rate the model would run at if everything else took no time. "
        "The rest (element-wise arithmetic, activations and layer norms, gathers and scatters over bonds and "
        "angles, concatenation) moves whole (bonds or angles) x hidden tensors through memory for a few "
        "operations each; on a CPU it is bound by memory bandwidth, not arithmetic, and it is what keeps the "
        "model from the matmul ceiling. Closing that gap needs those chains fused into single loops (a compiler "
        "such as torch.compile/Inductor; on this machine its CPU code was slower for the demo model and failed "
        "to compile the paper model with dynamic shapes, so qdgap does not use it).",
    ]
    return "\n".join(text + C.failed_cases(results))


if __name__ == "__main__":
    C.case_main(CASES)
