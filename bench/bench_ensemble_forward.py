"""The ensemble in one forward vs member by member: predict frames/s and FNA masked evaluations/s.

    python bench/bench_ensemble_forward.py [--quick] [--device cuda] [--threads 1]

Writes ``bench/_out/ensemble_forward.md`` (and each case's JSON beside it).

Both sides evaluate the same M members (deterministic random weights of the
preset's size, ``common.gap_model`` with seeds 0..M-1) on the same frames of
the demo trajectory, graphs built beforehand with the preset's graph
parameters, in the same process, one after the other:

* ``one-by-one``: each member's TorchScript model (``torch.jit.script``, as
  ``model.ts`` runs), one member after another, as ``qdgap predict``/``fna``
  run today: predict at ``graphs_per_forward`` frames per forward, FNA through
  ``kernels.fna.fna_masked_gaps`` at ``core.fna.chunk_for`` copies per forward.
* ``members-at-once``: ``kernels.ensemble.StackedGapModel`` of the same
  weights (``core.ensemble_forward.stack_models``): predict at that budget
  shared among the M members (``graphs_per_forward // M`` frames per forward,
  as ``core.predict`` sizes it), and at the one-by-one size; FNA through
  ``ensemble_fna_masked_gaps`` at ``chunk_for // M`` copies per forward, and at
  the one-by-one chunk.

Sizes: demo 20 members, predict 64 frames, FNA 2 frames; paper 20 members,
predict 4 frames, FNA 4 members x 1 frame (half the frames in --quick, at
least one). One warm-up call on a smaller input, then 3 timed repeats (paper
FNA 1; 1 in --quick). Rates count member-frames (predict) and member masked
evaluations (FNA: M x frames x 68), so the two sides are comparable.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import torch  # noqa: E402

from qdgap.core.analysis.fna import chunk_for  # noqa: E402
from qdgap.core.common.numerics import fast_cpu_math  # noqa: E402
from qdgap.core.deploy.stacked import stack_models  # noqa: E402
from qdgap.core.graphs.build import build_graphs  # noqa: E402
from qdgap.kernels.batch import PackedGraphs, gather_frames, graphs_per_forward  # noqa: E402
from qdgap.kernels.ensemble import ensemble_fna_masked_gaps  # noqa: E402
from qdgap.kernels.fna import fna_masked_gaps  # noqa: E402

MEMBERS = {"predict": {"demo": 20, "paper": 20}, "fna": {"demo": 20, "paper": 4}}
FRAMES = {"predict": {"demo": 64, "paper": 4}, "fna": {"demo": 2, "paper": 1}}
REPORT = C.OUT_DIR / "ensemble_forward.md"


def _setup(a: C.CaseArgs, what: str):
    fast_cpu_math()  # as qdgap's predict and fna do
    m = MEMBERS[what][a.preset]
    f = max(1, FRAMES[what][a.preset] // (2 if a.quick else 1))
    traj = C.load_demo()
    config = C.run_config(a.preset)
    packed = build_graphs(traj.select(C.spaced_frames(traj.num_frames, f)), config.graph)
    packed = PackedGraphs(*(t.to(a.device) for t in packed))
    models = [C.gap_model(a.preset, seed=s) for s in range(m)]
    scripted = [torch.jit.script(x).to(a.device) for x in models]
    stacked = stack_models(models, device=a.device)
    edges = float(packed.edge_ptr[-1]) / packed.num_frames
    return traj, config, packed, scripted, stacked, edges


def _repeats(a: C.CaseArgs, what: str) -> int:
    return 1 if a.quick or (what == "fna" and a.preset == "paper") else 3


def _row(a: C.CaseArgs, name: str, side: str, size: int, items: int, fn, warm, what: str) -> dict:
    a.probe.reset()
    out = {}
    with torch.inference_mode():
        warm()
        t = C.time_calls(lambda: out.setdefault("y", fn()), warmup=0, repeats=_repeats(a, what), device=a.device)
    return {"name": name, "side": side, "size": size, **C.rate_stats(items, t), **a.probe.mark(), "y": out["y"]}


def case_predict(a: C.CaseArgs) -> dict:
    _, config, packed, scripted, stacked, edges = _setup(a, "predict")
    m, f = len(scripted), packed.num_frames
    step = graphs_per_forward(a.device.type, edges, config.model.hidden_features)
    frames = torch.arange(f, device=a.device)

    def one_by_one():
        with torch.inference_mode():
            return torch.stack(
                [
                    torch.cat([s(*gather_frames(packed, frames[i : i + step])) for i in range(0, f, step)])
                    for s in scripted
                ]
            )

    def at_once(size):
        def run():
            with torch.inference_mode():
                return torch.cat([stacked(*gather_frames(packed, frames[i : i + size])) for i in range(0, f, size)], 1)

        return run

    first = gather_frames(packed, frames[:1])
    rows = [
        _row(
            a,
            "one-by-one (TorchScript)",
            "one",
            step,
            m * f,
            one_by_one,
            lambda: [s(*first) for s in scripted],
            "predict",
        )
    ]
    for size in sorted({max(1, step // m), step}):
        rows.append(_row(a, "members-at-once", "all", size, m * f, at_once(size), lambda: stacked(*first), "predict"))
    ref = rows[0].pop("y")
    for r in rows[1:]:
        r["max_abs_diff_ev"] = float((r.pop("y") - ref).abs().max())
    return {"rows": rows, "members": m, "frames": f}


def case_fna(a: C.CaseArgs) -> dict:
    traj, config, packed, scripted, stacked, edges = _setup(a, "fna")
    m, f, n = len(scripted), packed.num_frames, traj.num_atoms
    chunk = chunk_for(a.device, edges, config.model.hidden_features)
    base = gather_frames(packed, torch.arange(f, device=a.device))
    first = gather_frames(packed, torch.arange(1, device=a.device))
    items = m * f * (n + 1)

    def one_by_one():
        return torch.stack([fna_masked_gaps(s, base, num_atoms=n, chunk_size=chunk) for s in scripted])

    def warm_one():  # a few copies per member: the first forwards of a TorchScript model compile it
        for s in scripted:
            fna_masked_gaps(s, first, num_atoms=n, chunk_size=chunk)

    def at_once(size):
        return lambda: ensemble_fna_masked_gaps(stacked, base, num_atoms=n, chunk_size=size)

    rows = [_row(a, "one-by-one (TorchScript, kernels.fna)", "one", chunk, items, one_by_one, warm_one, "fna")]
    for size in sorted({max(1, chunk // m), chunk}):
        warm = lambda size=size: ensemble_fna_masked_gaps(stacked, first, num_atoms=n, chunk_size=size)  # noqa: E731
        rows.append(_row(a, "members-at-once (kernels.ensemble)", "all", size, items, at_once(size), warm, "fna"))
    ref = rows[0].pop("y")
    for r in rows[1:]:
        r["max_abs_diff_ev"] = float((r.pop("y") - ref).abs().max())
    return {"rows": rows, "members": m, "frames": f}


CASES = {"predict": case_predict, "fna": case_fna}


def plan(quick: bool, presets=C.PRESET_NAMES) -> list[tuple[str, str]]:
    return [(case, p) for p in presets for case in CASES]


def report(results: list[dict], ceiling: dict | None = None) -> str:
    rows = []
    for r in results:
        if "error" in r:
            continue
        ref = r["rows"][0]["rate"]
        unit = "member-frames/s" if r["case"] == "predict" else "member masked evaluations/s"
        for row in r["rows"]:
            rows.append(
                [
                    r["preset"],
                    r["case"],
                    row["name"],
                    f"{r['members']} x {r['frames']}",
                    row["size"],
                    C.fmt_rate(row) + " " + unit,
                    C.fmt_ratio(row["rate"] / ref),
                    C.fmt_mb(row),
                    "–" if "max_abs_diff_ev" not in row else f"{row['max_abs_diff_ev']:.1e}",
                ]
            )
    text = [
        "## The ensemble in one forward: members-at-once vs one-by-one",
        "",
        C.md_table(
            [
                "preset",
                "what",
                "method",
                "members x frames",
                "frames (predict) or copies (FNA) per forward",
                "rate median (min–max)",
                "vs one-by-one",
                "peak MB",
                "max abs diff (eV)",
            ],
            rows,
        ),
        "",
        "Rates count every member's work (predict: members x frames; FNA: members x frames x 68 masked "
        "evaluations). A members-at-once forward holds the given frames or copies for every member.",
    ]
    return "\n".join(text + C.failed_cases(results))


def main() -> None:
    import argparse
    import json

    if "--case" in sys.argv:
        C.case_main(CASES)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=C.usable_cores())
    parser.add_argument("--preset", action="append", choices=C.PRESET_NAMES, help="repeatable; default both")
    args = parser.parse_args()
    presets = tuple(args.preset or C.PRESET_NAMES)
    info = C.machine_info(args.threads, args.device)
    results = C.run_plan(
        Path(__file__), plan(args.quick, presets), quick=args.quick, device=args.device, threads=args.threads
    )
    text = report(results)
    header = f"Machine: {info['cpu']}, {info['threads']} thread(s), device {args.device}, torch {info['torch']}, "
    header += f"git {info['git']}, {info['date']}; load average {info['load_avg_1_5_15']}, idle at start "
    header += f"{C.fmt_pct(info['cpu_idle_start'])}.\n\n"
    C.OUT_DIR.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(header + text + "\n")
    (C.OUT_DIR / "ensemble_forward.json").write_text(
        json.dumps({"machine": info, "results": results}, indent=1, default=str)
    )
    print(text)
    print(f"\nwritten: {REPORT.relative_to(C.REPO)}")


if __name__ == "__main__":
    main()
