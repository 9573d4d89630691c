"""Choosing the frames to label on a stretch with no labels yet: one round of selection against a grid (issue 27).

    OMP_NUM_THREADS=1 python bench/bench_active.py --data work/real/cl_qd.h5 --start work/spacing/s200/runs \\
        --budget 50 --grid work/spacing/s100/runs --out work/active/k100
    python bench/bench_active.py --render work/active/k100 work/active/k50 --md bench/results_active.md

The chemist's loop with ``qdgap``'s own commands: an ensemble trained on a coarse grid of labels (``--start``,
e.g. a label every 200 fs) chooses ``--budget`` more frames to label (``qdgap select --candidates labelled``:
the labels are known here, so the choice can be scored; the strategy never sees them), and a new ensemble
of the same seeds is trained from scratch on the coarse grid plus the chosen frames (``qdgap ensemble train
--frames-from``). Strategies: spread, spread-diverse, random. The reference (``--grid``) is an ensemble on a
grid of the same total number of labels (a label every 100 fs for 50 + 50).

Every arm is scored on the same frames: the labelled frames outside every arm's labels. Each beside
interpolation in time of its own labels (the spread-chosen labels are not evenly spaced, which also changes
what interpolation gets) and the nearest label, with the calibrated 95 % interval's coverage. Resumable:
each step is skipped when its output exists. Trains; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_label_spacing import qdgap_cli  # noqa: E402

STRATEGIES = ("spread", "spread-diverse", "random")


def pool_of(runs: Path) -> np.ndarray:
    """The labelled frames an ensemble's members saw (train, validation and test splits), sorted."""
    from qdgap.core.store import runs as rf

    return np.unique(
        np.concatenate(
            [np.asarray(m.split[k], np.int64) for m in rf.load_members(runs) for k in ("train", "val", "test")]
        )
    )


def run_strategy(
    strategy: str, *, data: Path, start: Path, budget: int, members: int, seed_base: int, preset: str, out: Path
) -> Path:
    """``qdgap select`` from the start ensemble, then train and predict on its pool plus the chosen frames."""
    from qdgap.core.analysis.select import read_selection

    folder = out / strategy
    folder.mkdir(parents=True, exist_ok=True)
    chosen = folder / "selection.csv"
    if not chosen.exists():
        qdgap_cli("select", "--runs", str(start), "--data", str(data), "--budget", str(budget), "--strategy", strategy,
               "--candidates", "labelled", "--seed", "0", "--device", "cpu", "-o", str(chosen))  # fmt: skip
    pool_csv = folder / "pool.csv"
    if not pool_csv.exists():
        frames = np.union1d(pool_of(start), read_selection(chosen))
        with open(pool_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["frame_index"])
            w.writerows([[int(f)] for f in frames])
    runs = folder / "runs"
    qdgap_cli("ensemble", "train", "--members", str(members), "--seed-base", str(seed_base), "--preset", preset,
           "--frames-from", str(pool_csv), "--data", str(data), "-o", str(runs), "--jobs", "1", "--device", "cpu")  # fmt: skip
    predict(runs, data)
    return runs


def predict(runs: Path, data: Path) -> Path:
    pred = runs.parent / "predictions.h5"
    if not pred.exists():
        qdgap_cli(
            "predict", "--runs", str(runs), "--data", str(data), "--frames", "all", "-o", str(pred), "--device", "cpu"
        )
    return pred


def score(arms: dict[str, Path], data: Path) -> dict:
    """Every arm on the labelled frames outside every arm's labels (meV)."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.common import schema
    from qdgap.core.common.metrics import coverage, rmse_mev
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.results import read_results

    traj = read_trajectory(data)
    g, t = traj.gap_ev.astype(np.float64), traj.time_fs.astype(np.float64)
    pools = {name: pool_of(runs) for name, runs in arms.items()}
    scored = np.setdiff1d(np.flatnonzero(np.isfinite(g)), np.concatenate(list(pools.values())))
    rows = []
    for name, runs in arms.items():
        pred, _ = read_results(runs.parent / "predictions.h5", fmt=schema.PREDICTIONS_FORMAT)
        frame = np.asarray(pred[schema.FRAME_INDEX])
        at = np.searchsorted(frame, scored)
        mean = np.asarray(pred[schema.GAP_MEAN_EV], np.float64)
        y = g[scored]
        pool = pools[name]
        base = bl.baseline_predictions(t[scored], t[pool], g[pool], corr_time_fs=0.0)
        resid = g[pool] - mean[np.searchsorted(frame, pool)]
        cover = None  # an ensemble with too few validation frames has no calibrated interval
        if schema.GAP_LO_EV in pred:
            lo, hi = (np.asarray(pred[k], np.float64)[at] for k in (schema.GAP_LO_EV, schema.GAP_HI_EV))
            cover = coverage(y, lo, hi)
        members = np.asarray(pred[schema.GAP_PRED_EV], np.float64)[:, at]
        gaps_fs = np.diff(t[pool])
        rows.append({
            "arm": name, "labels": int(len(pool)), "scored_frames": int(len(scored)),
            "ensemble_rmse_mev": rmse_mev(mean[at] - y),
            "member_rmse_mev": [rmse_mev(m - y) for m in members],
            "coverage95": cover,
            "hybrid_rmse_mev": rmse_mev(mean[at] + np.interp(t[scored], t[pool], resid) - y),
            **{f"{b}_rmse_mev": rmse_mev(base[b] - y) for b in ("linear", "nearest", "mean")},
            "largest_gap_fs": float(gaps_fs.max()), "median_gap_fs": float(np.median(gaps_fs)),
        })  # fmt: skip
    return {"data": str(data), "scored_frames": int(len(scored)), "rows": rows}


def render(records: list[dict], command: str) -> str:
    lines = ["# One round of selection on 0-10 ps, from scratch (`bench/bench_active.py`)", "", f"`{command}`", "",
             "A `cpu` ensemble on a coarse grid of labels chooses more frames to label (`qdgap select --candidates "
             "labelled`); the same seeds train from scratch on the grid plus the chosen frames. The reference is a grid "
             "of the same total. Each block is scored on the labelled frames outside every arm of it (RMSE, meV); "
             "interpolation, nearest label and mean use each arm's own labels.", ""]  # fmt: skip
    for rec in records:
        lines += [f"## {rec['title']}", "", f"`{rec['command']}`: {rec['scored_frames']} frames scored.", "",
                  "| arm | labels | ensemble | against the grid of as many labels | members | calibrated 95 % coverage | "
                  "+ interpolated residuals | linear interp. | nearest | mean of the labels | largest / median label gap, fs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        grids = {r["labels"]: r["ensemble_rmse_mev"] for r in rec["rows"] if r["arm"] == f"grid of {r['labels']}"}
        for r in rec["rows"]:
            vs = "" if r["labels"] not in grids else f"{r['ensemble_rmse_mev'] - grids[r['labels']]:+.1f}"
            m = r["member_rmse_mev"]
            cov = "-" if r["coverage95"] is None else f"{100 * r['coverage95']:.1f} %"
            lines.append(f"| {r['arm']} | {r['labels']} | **{r['ensemble_rmse_mev']:.1f}** | {vs} | {min(m):.1f}-{max(m):.1f} | "
                         f"{cov} | {r['hybrid_rmse_mev']:.1f} | {r['linear_rmse_mev']:.1f} | "
                         f"{r['nearest_rmse_mev']:.1f} | {r['mean_rmse_mev']:.1f} | {r['largest_gap_fs']:.0f} / {r['median_gap_fs']:.0f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="the labelled trajectory (cl_qd.h5)")
    p.add_argument("--start", type=Path, help="the coarse-grid ensemble that chooses")
    p.add_argument("--budget", type=int, default=50, help="frames to choose")
    p.add_argument("--grid", type=Path, help="reference: an ensemble on a grid of the same total labels")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--seed-base", type=int, default=0, help="the chosen arms' first seed (use the start ensemble's)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--out", type=Path, help="work folder; writes OUT/active.json")
    p.add_argument("--render", type=Path, nargs="+", default=None, help="only tabulate these work folders' JSON")
    p.add_argument("--md", type=Path, default=REPO / "bench" / "results_active.md")
    args = p.parse_args(argv)
    command = "python bench/bench_active.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.render:
        records = [json.loads((f / "active.json").read_text()) for f in args.render]
        args.md.write_text(render(records, command) + "\n")
        print(args.md.read_text())
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    start_n = len(pool_of(args.start))
    arms = {f"grid of {start_n} (the start)": args.start}
    predict(args.start, args.data)
    if args.grid:
        arms[f"grid of {len(pool_of(args.grid))}"] = args.grid
        predict(args.grid, args.data)
    for s in args.strategies.split(","):
        runs = run_strategy(s, data=args.data, start=args.start, budget=args.budget, members=args.members,
                            seed_base=args.seed_base, preset=args.preset, out=args.out)  # fmt: skip
        arms[f"grid of {start_n} + {args.budget} by {s}"] = runs
    record = {
        "title": f"{start_n} grid labels + {args.budget} chosen, seeds {args.seed_base}-{args.seed_base + args.members - 1}",
        "command": command,
        **score(arms, args.data),
    }
    (args.out / "active.json").write_text(json.dumps(record, indent=1) + "\n")
    print(render([record], command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
