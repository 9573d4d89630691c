"""Run every side-by-side benchmark (qdgap vs upstream alignn) and write the results table.

    python bench/run_all.py                 # full run -> bench/results.md   (make bench)
    python bench/run_all.py --quick         # smaller  -> bench/_out/results-quick.md   (make bench-quick)
    python bench/run_all.py --only graphs,fna --presets paper --device cuda

Each measurement runs in its own fresh process (see ``common.py``), on the
same data, model size, machine and thread count for both sides. Raw records
(JSON, one per case, with logs) go to ``bench/_out/``. Nothing here asserts a
speed: the table is the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ceiling  # noqa: E402
import bench_fna  # noqa: E402
import bench_graphs  # noqa: E402
import bench_inference  # noqa: E402
import bench_profile  # noqa: E402
import bench_train  # noqa: E402
import common as C  # noqa: E402

BENCHES = {
    "ceiling": bench_ceiling,
    "graphs": bench_graphs,
    "train": bench_train,
    "inference": bench_inference,
    "fna": bench_fna,
    "profile": bench_profile,
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer frames, epochs and repeats (a smoke run; minutes)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=C.usable_cores(),
        help="torch threads for every case (default: usable cores)",
    )
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--presets", default=",".join(C.PRESET_NAMES), help="comma-separated presets (demo, paper)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite the results file from a run's raw records (bench/_out/results.json)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="results file (default: bench/results.md, or bench/_out/results-quick.md with --quick)",
    )
    args = parser.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    bad = [b for b in only if b not in BENCHES] + [p for p in presets if p not in C.PRESET_NAMES]
    if bad:
        parser.error(f"unknown benchmark or preset: {', '.join(bad)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
    output = args.output or (C.OUT_DIR / "results-quick.md" if args.quick else C.BENCH_DIR / "results.md")
    C.OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.render is not None:
        raw = json.loads(args.render.read_text())
        text = render(
            raw["results"],
            raw["ceiling_end"],
            bench_ceiling.ceiling_of(raw["results"]["ceiling"]),
            raw["machine"],
            command=raw["machine"].get("command", "python bench/run_all.py"),
            quick=args.quick,
        )
        _write(output, text)
        _log(f"wrote {output} from {args.render}")
        return 0

    info = C.machine_info(args.threads, args.device)
    _log(
        f"qdgap benchmarks ({'quick' if args.quick else 'full'}): {info['cpu']}, {args.threads} threads, {args.device}"
    )
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {}
    kw = {"quick": args.quick, "device": args.device, "threads": args.threads, "log": _log}
    # The ceiling first: the fractions of every other section divide by it.
    for name, module in BENCHES.items():
        if name == "ceiling" or name in only:
            results[name] = C.run_plan(Path(module.__file__), module.plan(args.quick, presets), **kw)
    # The ceiling again at the end: if it moved, the machine's state changed during the run.
    end = C.run_case(Path(bench_ceiling.__file__), "matmul", "demo", **kw)
    end["when"] = "end"
    info["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["wall_s"] = time.perf_counter() - t0
    ceiling = bench_ceiling.ceiling_of(results["ceiling"])

    command = "python bench/run_all.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    info["command"] = command
    text = render(results, end, ceiling, info, command=command, quick=args.quick)
    _write(output, text)
    (C.OUT_DIR / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps(
            {"machine": info, "results": results, "ceiling_end": end},
            indent=1,
            default=C._json_default,
        )
    )
    _log(f"wrote {output} ({info['wall_s'] / 60:.1f} min)")
    return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render(results: dict, end: dict, ceiling: dict | None, info: dict, *, command: str, quick: bool) -> str:
    lines = [
        "# qdgap benchmarks: side by side with upstream ALIGNN",
        "",
        "QUICK RUN (fewer frames, epochs and repeats): a smoke test of the harness, not figures to cite."
        if quick
        else "Full run. Regenerate with `make bench` (on a quiet machine).",
        "",
        f"- Date: {info['date']}; total wall time {info['wall_s'] / 60:.1f} min",
        f"- Command: `{command}`",
        f"- Machine: {info['cpu']}; {info['logical_cpus']} logical CPUs, {info['usable_cores']} usable; host {info['host']}",
        f"- Threads: torch.set_num_threads({info['threads']}) (and OMP/MKL_NUM_THREADS) in every case, both sides; device {info['device']}"
        + (f" ({info['gpu']})" if info.get("gpu") else ""),
        f"- Software: Python {info['python']}, torch {info['torch']}, alignn {info['alignn']}, qdgap {info['qdgap']} (git {info['git']}), numpy {info['numpy']}",
        f"- Load average (1, 5, 15 min) at start {_load(info.get('load_avg_1_5_15'))}, at end {_load(info.get('load_avg_end'))}",
    ]
    sq_start = ceiling["square_gflops"] if ceiling else None
    sq_end = end["rows"][0]["gflops_best"] if "rows" in end else None
    if sq_start and sq_end:
        lines.append(
            f"- Square-2048 matmul ceiling: {sq_start:.1f} GFLOP/s at the start, {sq_end:.1f} at the end of the run."
        )
    # The load average trails by minutes and counts the benchmark's own threads; the idle share of the
    # cores just before the run and the ceiling's drift over it say whether anything else competed.
    idle = info.get("cpu_idle_start")
    drift = abs(sq_end / sq_start - 1) if sq_start and sq_end else None
    if idle is not None:
        lines.append(f"- CPU idle in the second before the run: {100 * idle:.0f} %")
    if (idle is not None and idle < 0.8) or (drift is not None and drift > 0.1):
        lines.append(
            "- **The machine was busy** (cores not idle before the run, or the ceiling moved by more than 10 %): "
            "other processes shared the cores, so throughputs are low and noisy."
        )
    lines += [
        "",
        "Each row is one case, run in a fresh process: throughput is the median of the timed repeats (after warm-up), "
        'with the slowest and fastest repeat in brackets; "peak MB" is the peak resident memory (`ru_maxrss`) '
        "while that row was measured (warm-up included, the case's setup such as exports not), above the "
        "case's resident memory after imports: on Linux the peak mark is reset before each row, so each reading "
        "is the row's own (training rows cover the whole training call); on CUDA also the device's peak allocation. "
        '"% of ceiling" divides the achieved GFLOP/s by the square float32 matmul\'s; "% of shape" by the same '
        "matmul at the model's own largest shape.",
        "",
    ]
    for name, module in BENCHES.items():
        if name in results:
            lines += [module.report(results[name], ceiling), ""]
    lines += ["## Caveats: where the comparison is not apples to apples", "", CAVEATS, ""]
    lines += [
        "## Exact commands",
        "",
        f"All cases: `{command}`. Each case alone (run from the repository root):",
        "",
        "```",
    ]
    for name in BENCHES:
        for r in results.get(name, []):
            lines.append(r.get("command", ""))
    lines.append(end.get("command", ""))
    lines += ["```", ""]
    return "\n".join(lines)


def _load(load) -> str:
    return "–" if not load else ", ".join(f"{x:.2f}" for x in load)


CAVEATS = """\
- **Graphs.** qdgap builds the demo trajectory as it is (an isolated cluster, no cell); upstream's builder
  needs a cell, so it gets the same frames in a 22 Å periodic box (no image is within 5 Å, so the bonds are
  the same; the table checks the counts per frame). The "boxed" qdgap row has the identical input.
  Upstream's builder also looks up the 92 CGCNN features of every atom per frame (jarvis), which qdgap
  does once, in the model's species table. Upstream's `Atoms` objects are made outside the timing.
- **Training.** Both sides run their real loops; per-epoch marks come from hooks around their own calls
  (qdgap: `progress` and its validation call; upstream: wrappers around its data loaders). The train frames
  are a multiple of the batch size, so upstream's `drop_last=True` loader runs the same batches. Validation
  is not equal work: upstream's validation loader also drops incomplete batches, so with fewer validation
  frames than the batch size (paper: 16 < 64) upstream validates nothing, while qdgap predicts all of them;
  that is why the "train pass" column is the headline and the "full epoch" column is given beside it.
  qdgap's loss is L1 on standardised targets, upstream's L1 on eV (same arithmetic). qdgap runs with
  `torch.use_deterministic_algorithms(True)` on the CPU and flushes subnormals, as `qdgap train` does;
  upstream runs its defaults. Both take one optimiser step per batch of the same size; qdgap computes a
  batch's gradient in micro-batches (8 frames of the paper model on a CPU; demo batches whole), upstream
  in one forward of the whole batch. Peak memory covers the whole call (graph or LMDB building, training,
  qdgap's TorchScript export at the end). Upstream's `num_workers` is 0 (its default is 4), matching qdgap,
  which has no loader workers; on two cores workers would compete with the compute threads.
- **Inference.** Graphs are prebuilt on both sides; each timed call includes each side's batch assembly
  (upstream's `batch_torch_graph_pairs`, qdgap's `gather_frames`). Upstream runs under `torch.no_grad`,
  qdgap under `torch.inference_mode` with subnormals flushed, as their own predict paths do. Upstream's
  TorchScript export always computes forces (a backward pass), so its row measures a different job.
  The weights are random (the same in every process), so the outputs vary little between frames; the
  agreement column is a sanity check only. TorchScript rows run the profiling executor (torch's default).
- **FNA.** All three methods compute mode `seed` (the original script's nullification) so their numbers
  can be compared; the original ran upstream's model with precomputed angle cosines, reproduced here with
  `lg_on_fly=False` (with upstream's default `lg_on_fly=True`, zeroed bond vectors would also zero the
  cosines of their angles). The original workflow additionally paid, per atom and model, a job start, a
  model load and file reads, not counted here, so the real original was slower than its row. The kernel
  embeds each frame once and tiles the rows over its copies (the one-atom loop embeds every copy); the
  ONNX Runtime rows run the masked forward of every copy, embeddings included.
- **FLOPs.** `FlopCounterMode` counts matrix products only (2 per multiply-add): element-wise work, gathers
  and scatters are free in this count, so GFLOP/s figures say how close the matrix work gets to the
  machine's matmul rate, not how busy the cores are.
"""


if __name__ == "__main__":
    sys.exit(main())
