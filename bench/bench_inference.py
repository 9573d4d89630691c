"""Inference frames/s: upstream eager ALIGNN vs qdgap eager, TorchScript (plain and frozen) and ONNX Runtime.

    python bench/bench_inference.py [--quick]

Every case loads the same weights (deterministic random ones; upstream gets
them through ``qdgap.core.model.network.upstream_state_dict``), graphs are built
beforehand (graph building is benchmarked on its own), and each case runs
batch 1 first, then 16 frames, then the large batch (demo 256, paper 64
frames), so the peak-memory reading of each is its own.

What one timed call does:

* ``upstream_eager``: ``batch_torch_graph_pairs`` of the frames' prebuilt (g, lg)
  (upstream's collate) and ``ALIGNNAtomWisePure.forward([g, lg, lattice])["out"]``
  under ``torch.no_grad`` (graph-level output only: no gradients, no natoms
  scaling, no penalty, no ZBL).
* ``qdgap_eager``: ``gather_frames`` from the packed trajectory graphs and
  ``GapModel(*batch)`` under ``torch.inference_mode``, subnormals flushed as
  qdgap's predict does.
* ``qdgap_ts``: the same through the exported ``model.ts``
  (``export_torchscript`` then ``load_torchscript``): what ``qdgap predict`` runs.
* ``qdgap_ts_frozen``: ``torch.jit.optimize_for_inference(torch.jit.freeze(...))``
  of the scripted model (a variant, not what predict runs).
* ``qdgap_onnx``: ONNX Runtime through ``qdgap.core.deploy.onnx.export_onnx``/``load_onnx``
  when the package has them and onnxruntime is installed; skipped otherwise.
* ``upstream_ts``: upstream's own TorchScript export path
  (``alignn/scripts/export_torchscript.py``: ``_ScriptWrapper`` over
  ``forward_tensors_z``), one frame per call; it always computes forces by
  autograd, so it does about 3x the arithmetic of a plain forward.

Batch 1: a timed repeat is K single-frame calls (demo 32, paper 8; half in
--quick); 1 warm-up repeat, then 5 repeats (2 in --quick). Batches of 16 and
the large batch: 2 warm-up calls, then 5 timed calls (2 in --quick).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from alignn.torch_graph_builder import batch_torch_graph_pairs  # noqa: E402
from bench_ceiling import LARGE_BATCH, fractions  # noqa: E402

from qdgap.core.common.numerics import fast_cpu_math  # noqa: E402
from qdgap.core.config import GraphConfig  # noqa: E402
from qdgap.core.graphs.build import build_graphs  # noqa: E402
from qdgap.kernels.batch import PackedGraphs, gather_frames  # noqa: E402

SINGLE_CALLS = {"demo": 32, "paper": 8}  # single-frame calls per timed repeat
AIMS = {
    "demo": "qdgap at least 3x upstream eager",
    "paper": "qdgap at 75 % or more of the ceiling, TorchScript at least as fast as eager",
}


class Skip(Exception):
    """The case cannot run here (an optional back end is missing); reported, not an error."""


MID_BATCH = 16


def _plan_sizes(a: C.CaseArgs) -> tuple[int, int, int, int]:
    """(single-frame calls per repeat, large batch, repeats, frames needed)."""
    k = SINGLE_CALLS[a.preset] // (2 if a.quick else 1)
    b = LARGE_BATCH[a.preset]
    return k, b, 2 if a.quick else 5, b


def _frames(count: int) -> np.ndarray:
    traj = C.load_demo()
    return C.spaced_frames(traj.num_frames, count)


def _measure(a: C.CaseArgs, name: str, run_single, run_batch) -> dict:
    """Batch 1, 16, then the large batch B.

    ``run_single(i)`` predicts frame i alone; ``run_batch(m)`` predicts the first m frames in one call.
    """
    k, b, repeats, _ = _plan_sizes(a)
    rows = []
    a.probe.reset()  # setup (graphs, export, scripting) is not part of the measured thing
    if run_single is not None:
        t = C.time_calls(lambda: [run_single(i) for i in range(k)], warmup=1, repeats=repeats, device=a.device)
        rows.append({"name": name, "batch": 1, **C.rate_stats(k, t), **a.probe.mark()})
    if run_batch is None:
        return {"rows": rows}
    for m in (MID_BATCH, b):
        out = {}

        def call(m=m, out=out):
            out["y"] = run_batch(m)

        t = C.time_calls(call, warmup=2, repeats=repeats, device=a.device)
        rows.append(
            {
                "name": name,
                "batch": m,
                **C.rate_stats(m, t),
                **a.probe.mark(),
                "outputs": out["y"].detach().float().cpu().tolist(),
            }
        )
    return {"rows": rows}


def _qdgap_inputs(a: C.CaseArgs):
    fast_cpu_math()  # as qdgap's predict and fna do
    _, b, _, n = _plan_sizes(a)
    traj = C.load_demo()
    packed = build_graphs(traj.select(_frames(n)), GraphConfig())
    packed = PackedGraphs(*(t.to(a.device) for t in packed))
    return packed, torch.arange(b, device=a.device)


def _qdgap_case(a: C.CaseArgs, name: str, module) -> dict:
    packed, index = _qdgap_inputs(a)

    def single(i):
        with torch.inference_mode():
            return module(*gather_frames(packed, index[i : i + 1]))

    def batch(m):
        with torch.inference_mode():
            return module(*gather_frames(packed, index[:m]))

    return _measure(a, name, single, batch)


def case_qdgap_eager(a: C.CaseArgs) -> dict:
    return _qdgap_case(a, "qdgap eager GapModel", C.gap_model(a.preset).to(a.device))


def _exported(a: C.CaseArgs):
    from qdgap.core.deploy.torchscript import export_torchscript, load_torchscript

    path = a.tmp / "model.ts"
    export_torchscript(C.gap_model(a.preset), path, meta={"bench": True})
    return load_torchscript(path, device=a.device).module


def case_qdgap_ts(a: C.CaseArgs) -> dict:
    return _qdgap_case(a, "qdgap TorchScript (model.ts)", _exported(a))


def case_qdgap_ts_frozen(a: C.CaseArgs) -> dict:
    scripted = torch.jit.script(C.gap_model(a.preset).to(a.device).eval())
    frozen = torch.jit.freeze(scripted)
    variant = "frozen"
    try:
        frozen = torch.jit.optimize_for_inference(frozen)
        variant = "frozen + optimize_for_inference"
    except Exception:  # noqa: BLE001 - fall back to freezing alone
        pass
    return _qdgap_case(a, f"qdgap TorchScript ({variant})", frozen)


def case_qdgap_onnx(a: C.CaseArgs) -> dict:
    from qdgap.core.deploy import onnx as export

    if not hasattr(export, "export_onnx") or not hasattr(export, "load_onnx"):
        raise Skip("qdgap.core.deploy.onnx has no export_onnx/load_onnx yet")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise Skip(f"onnxruntime not installed ({exc})") from None
    path = a.tmp / "model.onnx"
    model = C.gap_model(a.preset)
    kwargs = {}
    params = inspect.signature(export.export_onnx).parameters
    if "meta" in params:
        kwargs["meta"] = {"bench": True}
    export.export_onnx(model, path, **kwargs)
    lkw = {"device": a.device} if "device" in inspect.signature(export.load_onnx).parameters else {}
    loaded = export.load_onnx(path, **lkw)
    runner = loaded if callable(loaded) else getattr(loaded, "module", None)
    if not callable(runner):
        raise Skip(f"load_onnx returned {type(loaded).__name__}, which the benchmark does not know how to call")
    return _qdgap_case(a, "qdgap ONNX Runtime", runner)


def _upstream_inputs(a: C.CaseArgs):
    _, b, _, n = _plan_sizes(a)
    traj = C.boxed(C.load_demo().select(_frames(n)))
    return [C.upstream_graph(C.jarvis_atoms(traj, i), GraphConfig()) for i in range(b)], traj


def case_upstream_eager(a: C.CaseArgs) -> dict:
    pairs, _ = _upstream_inputs(a)
    up = C.upstream_model(C.gap_model(a.preset), a.preset).to(a.device)

    def run(chunk):
        g, lg = batch_torch_graph_pairs(chunk)
        lat = torch.zeros(len(chunk), 3, 3, device=a.device)
        with torch.no_grad():
            return up([g.to(a.device), lg.to(a.device), lat])["out"]

    return _measure(
        a,
        "upstream eager ALIGNNAtomWisePure",
        lambda i: run(pairs[i : i + 1]),
        lambda m: run(pairs[:m]),
    )


def case_upstream_ts(a: C.CaseArgs) -> dict:
    try:
        from alignn.scripts.export_torchscript import _ScriptWrapper
    except ImportError as exc:
        raise Skip(f"upstream's export script is not importable ({exc})") from None
    pairs, traj = _upstream_inputs(a)
    up = C.upstream_model(C.gap_model(a.preset), a.preset)
    with C.quiet():  # jarvis prints a warning per element it lacks
        up.register_species_table(atom_features="cgcnn")
    scripted = torch.jit.script(_ScriptWrapper(up.eval())).to(a.device)
    lat = torch.tensor(traj.frame_cells()[0], dtype=torch.float32, device=a.device)
    z = torch.as_tensor(traj.numbers, device=a.device)
    inputs = [
        (
            torch.as_tensor(traj.positions_ang[i], device=a.device),
            g.src.to(a.device),
            g.dst.to(a.device),
            g.edata["images"].float().to(a.device),
        )
        for i, (g, _) in enumerate(pairs)
    ]

    def single(i):
        pos, src, dst, shift = inputs[i]
        return scripted(pos.clone().requires_grad_(True), lat, z, src, dst, shift, False)["energy"].detach()

    row = _measure(a, "upstream TorchScript export (forces too)", single, None)
    row["rows"][0]["outputs"] = [float(single(i)) for i in range(min(8, len(inputs)))]
    return row


CASES = {
    "upstream_eager": case_upstream_eager,
    "qdgap_eager": case_qdgap_eager,
    "qdgap_ts": case_qdgap_ts,
    "qdgap_ts_frozen": case_qdgap_ts_frozen,
    "qdgap_onnx": case_qdgap_onnx,
    "upstream_ts": case_upstream_ts,
}
ORDER = tuple(CASES)


def _wrap_skips(cases):
    def wrap(fn):
        def run(a):
            try:
                return fn(a)
            except Skip as exc:
                return {"skipped": str(exc)}

        return run

    return {k: wrap(v) for k, v in cases.items()}


def plan(quick: bool, presets=C.PRESET_NAMES) -> list[tuple[str, str]]:
    return [(case, p) for p in presets for case in ORDER]


def report(results: list[dict], ceiling: dict | None) -> str:
    rows = []
    skipped = []
    for preset in C.PRESET_NAMES:
        flops = (ceiling or {}).get("presets", {}).get(preset, {}).get("fwd_flops_per_frame")
        ref = C.find(results, "upstream_eager", preset)
        ref_by_batch = {r["batch"]: r for r in ref["rows"]} if ref else {}
        for case in ORDER:
            r = C.find(results, case, preset)
            if r is None:
                continue
            if "skipped" in r:
                skipped.append(f"- `{case}` [{preset}]: skipped: {r['skipped']}")
                continue
            for row in r["rows"]:
                base = ref_by_batch.get(row["batch"])
                ratio = row["rate"] / base["rate"] if base else None
                forces = case == "upstream_ts"
                gflops = flops * row["rate"] / 1e9 if flops and not forces else None
                f_sq, f_shape = fractions(gflops, ceiling, preset)
                agree = None
                if base and "outputs" in row and "outputs" in base:
                    n = min(len(row["outputs"]), len(base["outputs"]))
                    agree = C.max_abs_diff(row["outputs"][:n], base["outputs"][:n])
                elif forces and "outputs" in ref_by_batch.get(LARGE_BATCH[preset], {}):
                    big = ref_by_batch[LARGE_BATCH[preset]]["outputs"]
                    agree = C.max_abs_diff(row.get("outputs"), big[: len(row.get("outputs", []))])
                rows.append(
                    [
                        preset,
                        row["name"],
                        row["batch"],
                        C.fmt_rate(row),
                        C.fmt_ratio(ratio),
                        gflops,
                        C.fmt_pct(f_sq),
                        C.fmt_pct(f_shape),
                        C.fmt_mb(row),
                        "–" if agree is None else f"{agree:.1e}",
                    ]
                )
    text = [
        "## Inference: frames/s, same weights and frames",
        "",
        C.md_table(
            [
                "preset",
                "model",
                "batch",
                "frames/s median (min–max)",
                "vs upstream eager",
                "GFLOP/s",
                "% of ceiling",
                "% of shape",
                "peak MB",
                "max abs diff vs upstream (eV)",
            ],
            rows,
        ),
        "",
        "GFLOP/s = counted forward FLOPs per frame x frames/s (not given for upstream's TorchScript path, "
        "which also runs a backward pass for forces). Batch 1 rows include each side's per-call batch "
        "assembly (upstream's collate, qdgap's gather). The agreement column compares the large batch "
        "with upstream eager on the same frames (batched rows: the same batch; upstream's TorchScript row: its "
        "first frames against upstream eager's); a sanity check, not a test.",
        "",
        "Aims (issue 10): " + "; ".join(f"{p}: {t}" for p, t in AIMS.items()) + ".",
    ]
    if skipped:
        text += ["", *skipped]
    return "\n".join(text + C.failed_cases(results))


if __name__ == "__main__":
    C.case_main(_wrap_skips(CASES))
