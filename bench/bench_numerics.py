"""What the reproducible CPU mode costs: training and inference steps under torch's defaults and under
``QDGAP_REPRODUCIBLE=1``'s settings (numerics.py), each in a fresh process, the two interleaved.

    python bench/bench_numerics.py [--rounds 5] [--presets demo,paper] [--threads 1] [--parts]

ATen and MKL read their settings when torch loads, so every measurement is its own process; the
rounds alternate default and reproducible, so a machine whose load drifts (a shared one) weighs on
both alike. Each process builds the demo trajectory's graphs, a model of the preset's size (the same
weights in every process), then times ``--steps`` training steps (``loop.accumulate_gradient`` on
the preset's batch, in its micro-batches, then the AdamW step: what ``qdgap train`` runs per batch)
and ``--steps`` inference passes over 64 frames (``loop.predict_frames``). Both settings run with
``--threads`` torch threads (the mode's default is 1; the thread count's own cost is not what this
measures). Reported: the medians over rounds of wall and CPU (``time.process_time``) seconds per
step, and the ratio reproducible / default. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qdgap.core.common import numerics  # noqa: E402  (imports no torch)

SETTINGS = ("default", "reproducible")
# With --parts: each of the mode's two kernel settings alone, to see which one costs.
PARTS = {
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "mkl_compatible": {"MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "FALSE"},
}


def _child(preset: str, steps: int) -> dict[str, float | str]:
    """Time ``steps`` training steps and inference passes in this process; what its settings give."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common as C

    from qdgap.core.common.numerics import fast_cpu_math
    from qdgap.core.graphs.build import load_or_build_graphs
    from qdgap.core.train.loop import accumulate_gradient, predict_frames
    from qdgap.kernels.batch import graphs_per_forward

    fast_cpu_math()
    torch.use_deterministic_algorithms(True, warn_only=True)  # as qdgap train on the CPU
    config = C.run_config(preset)
    traj = C.load_demo()
    graphs = load_or_build_graphs(traj, config.graph, cache_dir=C.OUT_DIR / "graphs")
    gaps = torch.from_numpy(traj.gap_ev.astype("float32"))
    model = C.gap_model(preset).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    edges = float(graphs.edge_ptr[-1]) / graphs.num_frames
    micro = graphs_per_forward("cpu", edges, config.model.hidden_features, training=True)
    batch = torch.arange(0, config.train.batch_size * 7, 7)  # frames spread over the trajectory
    infer = torch.arange(0, 64 * 13, 13)
    eval_batch = graphs_per_forward("cpu", edges, config.model.hidden_features)

    def train_step() -> None:
        accumulate_gradient(model, graphs, batch, gaps, target_std=0.3, micro_batch=micro)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_pass() -> None:
        predict_frames(model, graphs, infer, batch=eval_batch)

    out: dict[str, float | str] = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name, fn in (("train", train_step), ("infer", infer_pass)):
        fn()  # warm-up: first-call allocations and dispatch
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
        out[f"{name}_wall_s"] = (time.perf_counter() - wall) / steps
        out[f"{name}_cpu_s"] = (time.process_time() - cpu) / steps
    return out


def _env(setting: str, threads: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in numerics.reproducible_env() and k != numerics.REPRODUCIBLE_ENV
    }
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    if setting == "reproducible":
        env.update(numerics.reproducible_env({numerics.THREADS_ENV: str(threads)}))
        env[numerics.REPRODUCIBLE_ENV] = "1"
    env.update(PARTS.get(setting, {}))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="processes per setting, alternating (default 5)")
    parser.add_argument("--presets", default="demo", help="comma-separated presets (default demo)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both settings (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process (default 10)")
    parser.add_argument("--parts", action="store_true", help="also each kernel setting alone (ATen AVX2; MKL CBWR)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a preset: measure in this process, print JSON
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.steps)))
        return 0
    numerics.check_cpu()
    widest = "AVX-512" if "avx512f" in (numerics.cpu_flags() or set()) else "AVX2"
    lines = [
        f"bench_numerics: {args.rounds} rounds x {args.steps} steps, {args.threads} thread(s), a CPU with {widest}",
        "",
        "| preset | step | setting | default s (wall / cpu) | setting s (wall / cpu) | ratio wall | ratio cpu |",
        "|---|---|---|---|---|---|---|",
    ]
    settings = (*SETTINGS, *PARTS) if args.parts else SETTINGS
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        runs: dict[str, list[dict]] = {s: [] for s in settings}
        for r in range(args.rounds):
            for setting in settings if r % 2 == 0 else settings[::-1]:
                cmd = [sys.executable, __file__, "--child", preset, "--steps", str(args.steps)]
                done = subprocess.run(cmd, env=_env(setting, args.threads), capture_output=True, text=True, check=True)
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"{preset} {setting} round {r}: {runs[setting][-1]}", file=sys.stderr, flush=True)
        for step in ("train", "infer"):
            med = {
                s: {k: statistics.median(x[f"{step}_{k}_s"] for x in runs[s]) for k in ("wall", "cpu")}
                for s in settings
            }
            d = med["default"]
            for setting in settings[1:]:
                p = med[setting]
                lines.append(
                    f"| {preset} | {step} | {setting} | {d['wall']:.4f} / {d['cpu']:.4f} | {p['wall']:.4f} / {p['cpu']:.4f} "
                    f"| {p['wall'] / d['wall']:.2f} | {p['cpu'] / d['cpu']:.2f} |"
                )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
