"""One GPU session's worth of numbers: training, inference, FNA and members-at-once on a CUDA device.

    python bench/gpu_check.py                       # on a machine with CUDA; writes bench/results-gpu.md
    python bench/gpu_check.py --device cpu --quick  # every section at tiny sizes, as a smoke test

Without a CUDA device (and without ``--device cpu``) it prints one line saying
so and exits 0, writing nothing. Sections, in order, each on the paper preset
(its real graphs: 12 nearest neighbours, angles between all bonds) and the
demo trajectory's frames, with deterministic random weights:

1. ``train``: qdgap's training step (``core.train.accumulate_gradient`` over
   micro-batches sized by ``graphs_per_forward(training=True)``, then AdamW),
   batch 64, frames/s; beside it upstream ``ALIGNNAtomWisePure``'s step
   (forward on ``batch_torch_graph_pairs`` of upstream-built graphs, L1 loss,
   backward, AdamW) on the same frames and weights. Not ``train_dgl``'s whole
   epoch (``bench/bench_train.py`` times that): the step alone, on the device.
2. ``inference``: frames/s of the exported ``model.ts`` and of ONNX Runtime's
   CUDA provider (when onnxruntime-gpu is installed), batch 1 to 256.
3. ``fna``: masked evaluations/s of the one-atom loop and of the kernel
   (``kernels.fna.fna_masked_gaps``) over a chunk sweep, ``model.ts``.
4. ``members``: 20 members one by one (``model.ts`` each) vs at once
   (``kernels.ensemble``), predict frames/s and FNA masked evaluations/s.
5. ``projection``: the whole-study FNA (20 members x 9,001 frames x 67 atoms,
   12.1 M masked evaluations) at the best FNA rate measured above.

Each section catches its own failure and reports it as a row; the table is
rewritten after every section, so a crash or a timeout later keeps the
numbers so far. Sections are skipped once ``--budget-s`` (default 420 s) is
spent. Every row carries the peak device memory of its step
(``torch.cuda.max_memory_allocated``; resident memory on a CPU).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results-gpu.md"
QUICK_RESULTS = BENCH_DIR / "_out" / "results-gpu-quick.md"
STUDY_MEMBERS, STUDY_FRAMES, STUDY_ATOMS = 20, 9_001, 67
STUDY_MASKED = STUDY_MEMBERS * STUDY_FRAMES * STUDY_ATOMS  # 12.1 M, the count
STUDY_EVALUATIONS = STUDY_MEMBERS * STUDY_FRAMES * (STUDY_ATOMS + 1)  # what runs: each frame's unmasked copy too
AIMS = "FNA kernel at least 20x the one-atom loop; whole-study FNA under 10 min; paper training at least 5x upstream"


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    deadline: float
    tmp: Path
    probe: Any
    preset: str  # paper; demo in --quick
    rows: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _size(ctx: Ctx, full: int, quick: int) -> int:
    return quick if ctx.quick else full


def _time(ctx: Ctx, fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` (``common.time_calls``: synchronised around each call on CUDA)."""
    import common as C

    return C.time_calls(fn, warmup=warmup, repeats=1 if ctx.quick else repeats, device=ctx.device).median


def _row(ctx: Ctx, section: str, what: str, setting: str, rate: float | None, unit: str, **extra: Any) -> dict:
    row = {
        "section": section,
        "what": what,
        "setting": setting,
        "rate": rate,
        "unit": unit,
        **ctx.probe.mark(),
        **extra,
    }
    ctx.rows.append(row)
    return row


def _graphs(ctx: Ctx, count: int):
    """Packed graphs (the preset's parameters) of ``count`` demo frames on the device (built once, the largest count first)."""
    import common as C

    from qdgap.core.graphs.build import build_graphs
    from qdgap.kernels.batch import PackedGraphs

    have = ctx.cache.get("graphs")
    if have is None or have[0].num_frames < count:
        traj = C.load_demo()
        frames = C.spaced_frames(traj.num_frames, count)
        packed = build_graphs(traj.select(frames), C.run_config(ctx.preset).graph)
        have = (PackedGraphs(*(t.to(ctx.device) for t in packed)), traj.select(frames))
        ctx.cache["graphs"] = have
    return have


def _edges(packed) -> float:
    return float(packed.edge_ptr[-1]) / packed.num_frames


def _scripted(ctx: Ctx, seed: int = 0):
    """The paper model as ``qdgap predict`` runs it: exported ``model.ts``, loaded on the device."""
    import common as C

    from qdgap.core.deploy.torchscript import export_torchscript, load_torchscript

    path = ctx.tmp / f"model{seed}.ts"
    export_torchscript(C.gap_model(ctx.preset, seed=seed), path, meta={"bench": True})
    return load_torchscript(path, device=ctx.device).module


# ==========================================================================
# Sections
# ==========================================================================


def section_train(ctx: Ctx) -> None:
    import common as C
    from alignn.torch_graph_builder import batch_torch_graph_pairs

    from qdgap.core.train.loop import accumulate_gradient
    from qdgap.kernels.batch import graphs_per_forward

    batch = _size(ctx, 64, 4)
    steps = _size(ctx, 5, 1)
    packed, traj = _graphs(ctx, batch)
    gaps = torch.from_numpy(traj.gap_ev[:batch]).float().to(ctx.device)  # (B,) eV
    config = C.run_config(ctx.preset)
    frames = torch.arange(batch, device=ctx.device)
    micro = graphs_per_forward(ctx.device.type, _edges(packed), config.model.hidden_features, training=True)
    model = C.gap_model(ctx.preset).to(ctx.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def qdgap_step():
        opt.zero_grad(set_to_none=True)
        accumulate_gradient(model, packed, frames, gaps, target_std=0.1, micro_batch=micro)
        opt.step()

    ctx.probe.reset()
    t = _time(ctx, lambda: [qdgap_step() for _ in range(steps)], repeats=2)
    qd = _row(ctx, "train", "qdgap training step", f"batch {batch}, micro-batch {micro}", batch * steps / t, "frames/s")

    # Upstream on the same frames and weights, graphs from its own builder (untimed, on the CPU).
    box = C.boxed(traj.select(list(range(batch))))
    with C.quiet():
        pairs = [C.upstream_graph(C.jarvis_atoms(box, i), config.graph) for i in range(batch)]
        g, lg = batch_torch_graph_pairs(pairs)
    g, lg = g.to(ctx.device), lg.to(ctx.device)
    lat = torch.zeros(batch, 3, 3, device=ctx.device)
    up = C.upstream_model(C.gap_model(ctx.preset), ctx.preset).to(ctx.device).train()
    up_opt = torch.optim.AdamW(up.parameters(), lr=1e-3)

    def upstream_step():
        up_opt.zero_grad(set_to_none=True)
        out = up([g, lg, lat])["out"].reshape(-1)
        torch.nn.functional.l1_loss(out, gaps).backward()
        up_opt.step()

    ctx.probe.reset()
    t = _time(ctx, lambda: [upstream_step() for _ in range(steps)], repeats=2)
    up_rate = batch * steps / t
    _row(ctx, "train", "upstream ALIGNNAtomWisePure step", f"batch {batch}, one forward", up_rate, "frames/s")
    qd["vs"] = qd["rate"] / up_rate


def section_inference(ctx: Ctx) -> None:
    from qdgap.kernels.batch import gather_frames

    batches = (1, 4, 16) if ctx.quick else (1, 4, 16, 64, 256)
    packed, _ = _graphs(ctx, max(batches))
    module = _scripted(ctx)
    runners: list[tuple[str, Callable]] = [("TorchScript model.ts", module)]
    try:
        import onnxruntime

        from qdgap.core.deploy.onnx import export_onnx, load_onnx

        providers = onnxruntime.get_available_providers()
        if ctx.device.type == "cuda" and "CUDAExecutionProvider" not in providers:
            _row(ctx, "inference", "ONNX Runtime CUDA", "skipped", None, "frames/s", note=f"providers: {providers}")
        else:
            import common as C

            path = ctx.tmp / "model.onnx"
            export_onnx(C.gap_model(ctx.preset), path, meta={"bench": True})
            runners.append((f"ONNX Runtime ({ctx.device.type})", load_onnx(path, device=ctx.device)))
    except ImportError as exc:
        _row(ctx, "inference", "ONNX Runtime", "skipped", None, "frames/s", note=f"not installed ({exc})")
    for name, run in runners:
        for b in batches:
            if ctx.left() < 0:
                _row(ctx, "inference", name, f"batch {b}", None, "frames/s", note="skipped: time budget spent")
                continue
            try:
                calls = max(1, 16 // b) if not ctx.quick else 1
                idx = [torch.arange(i * b, (i + 1) * b, device=ctx.device) % packed.num_frames for i in range(calls)]
                inputs = [gather_frames(packed, i) for i in idx]

                def call(inputs=inputs, run=run):
                    with torch.inference_mode():
                        for x in inputs:
                            run(*x)

                ctx.probe.reset()
                t = _time(ctx, call, repeats=5, warmup=2)
                _row(ctx, "inference", name, f"batch {b}", b * calls / t, "frames/s")
            except Exception as exc:  # noqa: BLE001 - one batch size failing (memory) must not lose the others
                _row(ctx, "inference", name, f"batch {b}", None, "frames/s", error=_one_line(exc))


def section_fna(ctx: Ctx) -> None:
    import common as C

    from qdgap.core.analysis.fna import chunk_for
    from qdgap.kernels.batch import gather_frames
    from qdgap.kernels.fna import fna_loop, fna_masked_gaps

    frames = _size(ctx, 8, 1)
    packed, traj = _graphs(ctx, frames)
    n = traj.num_atoms
    module = _scripted(ctx)
    one = gather_frames(packed, torch.arange(1, device=ctx.device))
    ctx.probe.reset()
    with torch.inference_mode():
        t = _time(ctx, lambda: fna_loop(module, one, num_atoms=n), repeats=3)
    loop = _row(ctx, "fna", "one-atom loop (kernels.fna.fna_loop)", "1 frame", (n + 1) / t, "masked evaluations/s")
    base = gather_frames(packed, torch.arange(frames, device=ctx.device))
    default = chunk_for(ctx.device, _edges(packed), C.run_config(ctx.preset).model.hidden_features)
    copies = frames * (n + 1)
    sweep = sorted({default, n + 1, copies} if ctx.quick else {default, 17, n + 1, 4 * (n + 1), copies})
    for chunk in [c for c in sweep if c <= copies]:
        if ctx.left() < 0:
            _row(
                ctx, "fna", "kernel", f"chunk {chunk}", None, "masked evaluations/s", note="skipped: time budget spent"
            )
            continue
        try:
            fna_masked_gaps(module, one, num_atoms=n, chunk_size=chunk)  # warm-up
            ctx.probe.reset()
            t = _time(
                ctx, lambda c=chunk: fna_masked_gaps(module, base, num_atoms=n, chunk_size=c), repeats=2, warmup=0
            )
            tag = " (default)" if chunk == default else ""
            row = _row(
                ctx,
                "fna",
                "kernel (kernels.fna.fna_masked_gaps)",
                f"{frames} frames, chunk {chunk}{tag}",
                copies / t,
                "masked evaluations/s",
            )
            row["vs"] = row["rate"] / loop["rate"]
        except Exception as exc:  # noqa: BLE001 - a chunk that runs out of memory must not lose the others
            _row(ctx, "fna", "kernel", f"chunk {chunk}", None, "masked evaluations/s", error=_one_line(exc))


def section_members(ctx: Ctx) -> None:
    import common as C

    from qdgap.core.analysis.fna import chunk_for
    from qdgap.core.deploy.stacked import stack_models
    from qdgap.kernels.batch import gather_frames, graphs_per_forward
    from qdgap.kernels.ensemble import ensemble_fna_masked_gaps
    from qdgap.kernels.fna import fna_masked_gaps

    m = _size(ctx, STUDY_MEMBERS, 2)
    pred_frames, fna_frames = _size(ctx, 64, 2), _size(ctx, 4, 1)
    packed, traj = _graphs(ctx, pred_frames)
    n = traj.num_atoms
    hidden = C.run_config(ctx.preset).model.hidden_features
    models = [C.gap_model(ctx.preset, seed=s) for s in range(m)]
    scripted = [torch.jit.script(x).to(ctx.device) for x in models]
    stacked = stack_models(models, device=ctx.device)
    step = graphs_per_forward(ctx.device.type, _edges(packed), hidden)
    idx = torch.arange(pred_frames, device=ctx.device)
    batches = [gather_frames(packed, idx[i : i + step]) for i in range(0, pred_frames, step)]
    at_once_step = max(1, step // m)
    stacked_batches = [gather_frames(packed, idx[i : i + at_once_step]) for i in range(0, pred_frames, at_once_step)]

    def one_by_one():
        with torch.inference_mode():
            return [s(*b) for s in scripted for b in batches]

    def at_once():
        with torch.inference_mode():
            return [stacked(*b) for b in stacked_batches]

    ctx.probe.reset()
    t1 = _time(ctx, one_by_one, repeats=3)
    r1 = _row(
        ctx,
        "members",
        "predict one-by-one (model.ts each)",
        f"{m} x {pred_frames} frames, {step}/forward",
        m * pred_frames / t1,
        "member-frames/s",
    )
    ctx.probe.reset()
    t2 = _time(ctx, at_once, repeats=3)
    r2 = _row(
        ctx,
        "members",
        "predict members-at-once (kernels.ensemble)",
        f"{m} x {pred_frames} frames, {at_once_step}/forward",
        m * pred_frames / t2,
        "member-frames/s",
    )
    r2["vs"] = r2["rate"] / r1["rate"]

    base = gather_frames(packed, torch.arange(fna_frames, device=ctx.device))
    one = gather_frames(packed, torch.arange(1, device=ctx.device))
    chunk = chunk_for(ctx.device, _edges(packed), hidden)
    items = m * fna_frames * (n + 1)
    for s in scripted:
        fna_masked_gaps(s, one, num_atoms=n, chunk_size=chunk)  # warm-up: the first calls compile
    ctx.probe.reset()
    t1 = _time(
        ctx, lambda: [fna_masked_gaps(s, base, num_atoms=n, chunk_size=chunk) for s in scripted], repeats=2, warmup=0
    )
    f1 = _row(
        ctx,
        "members",
        "FNA one-by-one (model.ts each)",
        f"{m} x {fna_frames} frames, chunk {chunk}",
        items / t1,
        "masked evaluations/s",
    )
    for size in sorted({max(1, chunk // m), chunk}):
        if ctx.left() < 0:
            break
        try:
            ensemble_fna_masked_gaps(stacked, one, num_atoms=n, chunk_size=size)  # warm-up
            ctx.probe.reset()
            t2 = _time(
                ctx,
                lambda s=size: ensemble_fna_masked_gaps(stacked, base, num_atoms=n, chunk_size=s),
                repeats=2,
                warmup=0,
            )
            f2 = _row(
                ctx,
                "members",
                "FNA members-at-once (kernels.ensemble)",
                f"{m} x {fna_frames} frames, chunk {size}",
                items / t2,
                "masked evaluations/s",
            )
            f2["vs"] = f2["rate"] / f1["rate"]
        except Exception as exc:  # noqa: BLE001 - a chunk that runs out of memory must not lose the others
            _row(ctx, "members", "FNA members-at-once", f"chunk {size}", None, "", error=_one_line(exc))
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()


def section_projection(ctx: Ctx) -> None:
    fna_rows = [r for r in ctx.rows if r.get("unit") == "masked evaluations/s" and r.get("rate")]
    if not fna_rows:
        raise RuntimeError("no FNA rate measured above")
    best = max(fna_rows, key=lambda r: r["rate"])
    seconds = STUDY_EVALUATIONS / best["rate"]
    _row(
        ctx,
        "projection",
        f"whole-study FNA ({STUDY_MASKED / 1e6:.1f} M masked + {STUDY_EVALUATIONS - STUDY_MASKED:,} unmasked)",
        f"at {best['what']}, {best['setting']}",
        None,
        "",
        note=f"{seconds / 60:.1f} min ({seconds / 3600:.2f} h)",
    )


SECTIONS: tuple[tuple[str, Callable[[Ctx], None]], ...] = (
    ("train", section_train),
    ("inference", section_inference),
    ("fna", section_fna),
    ("members", section_members),
    ("projection", section_projection),
)


# ==========================================================================
# Report
# ==========================================================================


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _report(ctx: Ctx, header: list[str], done: list[str]) -> str:
    import common as C

    rows = []
    for r in ctx.rows:
        if r.get("error"):
            rate = "failed: " + r["error"]
        elif r.get("rate") is None:
            rate = r.get("note", "–")
        else:
            rate = f"{C._cell(r['rate'])} {r['unit']}" + (f" ({r['note']})" if r.get("note") else "")
        mem = r.get("peak_cuda_mb", r.get("peak_rss_mb"))
        rows.append([r["section"], r["what"], r["setting"], rate, C.fmt_ratio(r.get("vs")), mem])
    pending = [name for name, _ in SECTIONS if name not in done]
    mem_head = "peak device MB" if ctx.device.type == "cuda" else "peak RSS MB"
    lines = [
        *header,
        "",
        C.md_table(["section", "what", "setting", "rate", "vs reference", mem_head], rows),
        "",
        "vs reference: training against upstream's step; FNA kernel against the one-atom loop; members-at-once "
        "against one-by-one. Aims (issue 20, on one H100-class GPU): " + AIMS + ".",
    ]
    if pending:
        lines += ["", f"Not run (yet): {', '.join(pending)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="every section at tiny sizes")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS.name} (cuda) or _out/{QUICK_RESULTS.name}")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting sections after this")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__} sees none); nothing measured")
        return 0
    import tempfile

    import common as C

    from qdgap.core.common.numerics import fast_cpu_math

    t_start = time.perf_counter()
    device = C.setup_torch(args.threads or C.usable_cores(), args.device)
    fast_cpu_math()  # as qdgap's predict, fna and train do
    out = args.out or (RESULTS if device.type == "cuda" and not args.quick else QUICK_RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else C.cpu_model()
    info = C.machine_info(torch.get_num_threads(), str(device))
    header = [
        f"# GPU check: {name}",
        "",
        f"Device {device} ({name}); host CPU {info['cpu']}; torch {info['torch']}"
        + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else "")
        + f"; qdgap {info.get('qdgap')}, git {info['git']}; {info['date']}"
        + (
            "; --quick: demo preset at tiny sizes, a smoke test, not a measurement."
            if args.quick
            else ". Paper preset (hidden 256, 4 + 4 blocks) on the demo trajectory's frames, its real graphs."
        ),
    ]
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qdgap-gpu-check-") as tmp:
        preset = "demo" if args.quick else "paper"
        ctx = Ctx(device, args.quick, t_start + args.budget_s, Path(tmp), C.MemoryProbe(device), preset)
        for section, fn in SECTIONS:
            t0 = time.perf_counter()
            if ctx.left() < 0 and section != "projection":
                _row(ctx, section, "(section)", "–", None, "", note="skipped: time budget spent")
            else:
                try:
                    fn(ctx)
                except Exception as exc:  # noqa: BLE001 - reported in the table; the next section still runs
                    _row(ctx, section, "(section)", "–", None, "", error=_one_line(exc))
                    traceback.print_exc(file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            done.append(section)
            print(f"gpu_check: {section} {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            out.write_text(_report(ctx, header, done))  # after every section: a later crash keeps these
    total = time.perf_counter() - t_start
    text = _report(ctx, header, done).rstrip() + f"\n\nWall time of the whole check: {total:.0f} s.\n"
    out.write_text(text)
    print(text)
    print(f"written: {out}  ({_dt.datetime.now().isoformat(timespec='seconds')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
