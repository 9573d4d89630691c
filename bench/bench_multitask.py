"""Multi-task band edges at sparse labels: does learning HOMO and LUMO beside the gap help? (issue 27)

    A="--data work/real/cl_qd.h5 --labels ../shared/seed-data/cl_qd/Cl_QD_elec_1-10k.csv
       --reference work/spacing/s100/predictions.h5"
    nice -n 5 env OMP_NUM_THREADS=1 python bench/bench_multitask.py $A --work work/multitask/seeds4-7 \\
        --seeds 4,5,6,7 --out work/multitask/seeds4-7/results        # a replicate: four more seeds
    nice -n 5 env OMP_NUM_THREADS=1 python bench/bench_multitask.py $A --work work/multitask \\
        --out bench/results_multitask --replicate seeds4-7=work/multitask/seeds4-7

(``cl_qd.h5``: ``qdgap data import`` of the study's archive with its 0-10 ps labels, which holds the gap
only; the labels CSV beside it has HOMO and LUMO as well. ``--reference``: the predictions of the
``qdgap ensemble train --members 4 --preset cpu --stride 100`` ensemble, optional.)

The pool is every 100th labelled frame, as ``--stride 100`` selects it (100 frames); member seed s gets
qdgap's own train/val/test split of it (``member_split``; 80 train frames) and the ``cpu`` preset's model,
optimiser, schedule, epochs and patience. Three arms, members seeds 0-3 each:

- (a) gap only: qdgap's recipe, run through this script's loop (which is ``core/train/loop.py``'s, step
  for step, with qdgap's own ``accumulate_gradient``); the check is that its members reproduce the
  ``--reference`` ensemble's predictions;
- (b) one model with a 3-wide readout (``ModelConfig.output_features=3``) for gap, HOMO and LUMO, each
  standardised by its train-split mean and std; the loss is the mean of the three standardised L1
  losses (qdgap's loss is L1 on the standardised gap; arm (a) keeps it, so (b) and (c) do too); the gap
  is read from its own head and the best epoch chosen on its validation MAE;
- (c) the same training run as (b), the gap read as the LUMO head minus the HOMO head and the best
  epoch chosen on that difference's validation MAE. (b) and (c) share each seed's run: it continues
  until both have gone ``patience`` epochs without improving, so (b) may see a few more epochs than
  it would alone, never fewer.

Scored on every labelled frame outside the pool (4,900): the ensemble mean's RMSE, each member's,
HOMO and LUMO RMSE for (b, c), beside linear interpolation in time of the pool's labels and the pool
mean (``analysis.baselines``), on the same frames.

``--replicate LABEL=DIR`` adds the member records of another training of the same arms (DIR/members)
as further rows, and pools the paired differences over all runs.

Resumable: each finished member's predictions are kept in ``--work/members/<arm>_seed<s>.json``; a
rerun trains only what is missing, then rewrites ``--out``.md/.json. It trains; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = ("gap", "homo", "lumo")  # the 3-wide readout's columns, in this order
CSV_COLUMNS = {"gap": "Bandgap (eV)", "homo": "HOMO (eV)", "lumo": "LUMO (eV)"}
GAP_MATCH_TOL_EV = 1e-6  # the CSV's gap against the trajectory's float32 gap_ev
ARMS = {"a": "gap only", "b": "gap, HOMO, LUMO; gap head", "c": "gap, HOMO, LUMO; LUMO - HOMO heads"}
RUNS = {"gap": ("a",), "multi": ("b", "c")}  # one training run gives these arms


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="trajectory with the gap labels (cl_qd.h5)")
    p.add_argument("--labels", type=Path, required=True, help="labels CSV with HOMO, LUMO and gap columns")
    p.add_argument("--reference", type=Path, default=None, help="predictions.h5 of qdgap's own ensemble")
    p.add_argument("--work", type=Path, default=REPO / "work" / "multitask", help="member records, graph cache")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_multitask", help="results stem")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--stride", type=int, default=100)
    p.add_argument("--seeds", default="0,1,2,3", help="member seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (smoke runs only)")
    p.add_argument("--jobs", type=int, default=2, help="members trained at once, one thread each")
    p.add_argument("--render", action="store_true", help="only rewrite the results from the member records")
    p.add_argument("--replicate", action="append", default=[], metavar="LABEL=DIR",
                   help="also score all member records in DIR/members (e.g. the same arms, other seeds)")  # fmt: skip
    return p.parse_args()


# ==========================================================================
# Labels: HOMO, LUMO and gap of every frame, from the CSV
# ==========================================================================


def band_edges(traj, labels_csv: Path) -> np.ndarray:
    """(F, 3) eV: gap, HOMO, LUMO of each frame from the labels CSV; NaN for unlabelled frames.

    Rows are matched to frames as ``qdgap data import`` matched them: ``st<N>`` is frame number N
    (``read_labels_csv`` parses it), and an imported archive's frame N sits at time N * dt_fs with
    dt_fs = 1 fs (the import's default). The CSV's gap must equal the trajectory's ``gap_ev`` on every
    frame to ``GAP_MATCH_TOL_EV`` and both must label the same frames. The values are rounded to float32,
    as the importer stores labels (float64 array): the gap column is then ``gap_ev`` bit for bit, so the
    target statistics, and with them arm (a)'s training, are qdgap's exactly.
    """
    from qdgap.core.data.importers import read_labels_csv

    frame_number = np.rint(traj.time_fs).astype(np.int64)
    if not np.allclose(frame_number, traj.time_fs):
        raise SystemExit(f"{labels_csv}: frame times are not whole fs; cannot read st<N> numbers from them")
    position = {int(n): i for i, n in enumerate(frame_number)}
    out = np.full((traj.num_frames, len(TARGETS)), np.nan)
    for k, name in enumerate(TARGETS):
        ids, values = read_labels_csv(labels_csv, gap_column=CSV_COLUMNS[name])
        for n, v in zip(ids, values, strict=True):
            if n in position:
                out[position[n], k] = v
    gap = traj.gap_ev.astype(np.float64)
    labelled = np.isfinite(gap)
    if not np.array_equal(labelled, np.isfinite(out[:, 0])):
        raise SystemExit(f"{labels_csv}: labels different frames from {traj.num_frames}-frame trajectory")
    worst = float(np.abs(out[labelled, 0] - gap[labelled]).max())
    if worst > GAP_MATCH_TOL_EV:
        raise SystemExit(f"{labels_csv}: its gap differs from the trajectory's by up to {worst:.2e} eV")
    out = out.astype(np.float32).astype(np.float64)
    if not np.array_equal(out[labelled, 0], gap[labelled]):
        raise SystemExit(f"{labels_csv}: its gap, rounded to float32, is not the trajectory's gap_ev")
    return out


# ==========================================================================
# One member: core/train/loop.py's _train, minus the run folder, with K targets
# ==========================================================================


def train_member(args: argparse.Namespace, run: str, seed: int) -> list[dict]:
    """Train member ``seed`` of training run ``run`` ("gap": arm a; "multi": arms b and c); one record per arm."""
    import torch

    from qdgap.core.common.metrics import MEV_PER_EV
    from qdgap.core.common.numerics import fast_cpu_math
    from qdgap.core.config import resolve_config
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.graphs.build import load_or_build_graphs
    from qdgap.core.model.network import GapModel
    from qdgap.core.train.loop import _param_groups, accumulate_gradient, member_split, predict_frames
    from qdgap.kernels.batch import graphs_per_forward

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    config = resolve_config(args.preset, stride=args.stride, epochs=args.epochs)
    width = 1 if run == "gap" else len(TARGETS)
    config = replace(config, model=replace(config.model, output_features=width))
    tc = config.train
    # ---------------------------------------------------------------- config and seed (as loop.py)
    torch.manual_seed(seed)
    fast_cpu_math()
    torch.use_deterministic_algorithms(True, warn_only=True)

    # ---------------------------------------------------------------- data and graphs
    traj = read_trajectory(args.data)
    edges = band_edges(traj, args.labels)  # (F, 3) eV
    split = member_split(traj, tc, seed=seed)
    graphs = load_or_build_graphs(traj, config.graph, cache_dir=args.work / "cache")
    targets_np = edges[:, 0] if width == 1 else edges  # (F,) or (F, 3) eV
    targets = torch.from_numpy(np.nan_to_num(targets_np).astype(np.float32))
    train_frames, val_frames = torch.from_numpy(split.train), torch.from_numpy(split.val)
    val_gap = targets[val_frames] if width == 1 else targets[val_frames, 0]  # (V,) float32 eV, as loop.py's
    edges_per_frame = float(graphs.edge_ptr[-1]) / max(1, graphs.num_frames)
    micro = graphs_per_forward("cpu", edges_per_frame, config.model.hidden_features, training=True)
    eval_batch = graphs_per_forward("cpu", edges_per_frame, config.model.hidden_features)

    # ---------------------------------------------------------------- model
    model = GapModel(config.model)
    y = targets_np[split.train].astype(np.float64)
    model.set_target_stats(y.mean(axis=0), y.std(axis=0))
    target_std = model.target_std.clone()  # () or (3,) eV

    # ---------------------------------------------------------------- optimiser and schedule
    optimizer = torch.optim.AdamW(_param_groups(model), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(split.train) / tc.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=tc.learning_rate, epochs=max(1, tc.epochs), steps_per_epoch=steps_per_epoch,
        pct_start=tc.pct_start,
    )  # fmt: skip
    # Each arm reads the gap its own way and keeps its own best epoch (validation MAE of that gap).
    arms = RUNS[run]
    best = {arm: {"val_mae_mev": math.inf, "epoch": -1, "state": None} for arm in arms}
    history = {arm: [] for arm in arms}  # validation MAE per epoch, meV: loop.py's metrics.csv column

    # ---------------------------------------------------------------- the loop
    epoch = 0
    while epoch < tc.epochs and any(epoch - best[arm]["epoch"] <= tc.patience for arm in arms):
        model.train()
        # The shuffle depends only on (seed, epoch), as in loop.py.
        order = torch.randperm(len(train_frames), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        batch_frames = train_frames[order]
        for start in range(0, len(batch_frames), tc.batch_size):
            frames = batch_frames[start : start + tc.batch_size]
            # qdgap's own loss and gradient (loop.py's, which takes K targets as --targets does)
            std = float(target_std) if width == 1 else target_std
            accumulate_gradient(model, graphs, frames, targets, target_std=std, micro_batch=micro)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        val_pred = predict_frames(model, graphs, val_frames, batch=eval_batch)  # (V,) or (V, 3) eV
        epoch += 1
        for arm in arms:
            val_mae_mev = float((gap_of(arm, val_pred) - val_gap).abs().mean()) * MEV_PER_EV
            history[arm].append(val_mae_mev)
            if val_mae_mev < best[arm]["val_mae_mev"]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best[arm].update(val_mae_mev=val_mae_mev, epoch=epoch, state=state)

    # ---------------------------------------------------------------- final: predict every frame
    records = []
    every = torch.arange(traj.num_frames)
    for arm in arms:
        model.load_state_dict(best[arm]["state"])
        pred = predict_frames(model, graphs, every, batch=eval_batch).double()  # (F,) or (F, 3) eV
        record = {
            "arm": arm,
            "seed": seed,
            "epochs_run": epoch,
            "best_epoch": best[arm]["epoch"],
            "best_val_mae_mev": best[arm]["val_mae_mev"],
            "val_mae_mev": history[arm],
            "train_frames": split.train.tolist(),
            "test_frames": split.test.tolist(),
            "gap_ev": gap_of(arm, pred).tolist(),  # (F,) every frame
            "seconds": time.perf_counter() - t0,
        }
        if width > 1:
            record.update(homo_ev=pred[:, 1].tolist(), lumo_ev=pred[:, 2].tolist(), gap_head_ev=pred[:, 0].tolist())
        records.append(record)
    return records


def gap_of(arm: str, pred):
    """The gap (eV) an arm reads from its model's output: (F,) for arm a, column 0 for b, LUMO - HOMO for c."""
    if arm == "a":
        return pred
    return pred[:, 0] if arm == "b" else pred[:, 2] - pred[:, 1]


def _worker(args: argparse.Namespace, run: str, seed: int) -> list[dict]:
    os.environ["OMP_NUM_THREADS"] = "1"
    return train_member(args, run, seed)


# ==========================================================================
# Scoring
# ==========================================================================


def score(args: argparse.Namespace, records: dict[str, list[dict]]) -> dict:
    """Every arm's ensemble and members on the labelled frames outside the pool, beside the baselines."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.common.metrics import rmse_mev
    from qdgap.core.data.splits import labelled_pool
    from qdgap.core.data.timeseries import correlation_time_fs
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(args.data)
    edges = band_edges(traj, args.labels)
    pool = labelled_pool(traj.gap_ev, stride=args.stride)
    scored = np.flatnonzero(np.isfinite(edges[:, 0]) & ~np.isin(np.arange(traj.num_frames), pool))
    t = traj.time_fs
    out: dict = {"pool": int(len(pool)), "scored_frames": int(len(scored)), "arms": {}, "baselines": {}}
    for k, name in enumerate(TARGETS):
        tau = correlation_time_fs(t[pool], edges[pool, k])
        base = bl.baseline_predictions(t[scored], t[pool], edges[pool, k], corr_time_fs=tau)
        out["baselines"][name] = {b: rmse_mev(base[b] - edges[scored, k]) for b in ("linear", "mean")}
    for arm, recs in records.items():
        recs = sorted(recs, key=lambda r: r["seed"])
        row = {"seeds": [r["seed"] for r in recs], "best_epoch": [r["best_epoch"] for r in recs],
               "epochs_run": [r["epochs_run"] for r in recs], "seconds": [r["seconds"] for r in recs]}  # fmt: skip
        for name, key in (("gap", "gap_ev"), ("homo", "homo_ev"), ("lumo", "lumo_ev")):
            if key not in recs[0]:
                continue
            each = np.array([np.ravel(r[key]) for r in recs])[:, scored]  # (M, S) eV
            truth = edges[scored, TARGETS.index(name)]
            row[name] = {"ensemble_rmse_mev": rmse_mev(each.mean(axis=0) - truth),
                         "member_rmse_mev": [rmse_mev(e - truth) for e in each]}  # fmt: skip
        if "gap_head_ev" in recs[0]:  # arm c: its models read through the gap head instead
            each = np.array([r["gap_head_ev"] for r in recs])[:, scored]
            row["gap_head_rmse_mev"] = rmse_mev(each.mean(axis=0) - edges[scored, 0])
        out["arms"][arm] = row
    if args.reference is not None and args.reference.exists() and "a" in records:
        out["reference"] = _reference_check(args.reference, records["a"], scored, edges[scored, 0])
    # Paired by seed: the same split and initial trunk weights, only the targets differ.
    for arm in ("b", "c"):
        if arm in out["arms"] and "a" in out["arms"]:
            a, x = (dict(zip(out["arms"][k]["seeds"], out["arms"][k]["gap"]["member_rmse_mev"], strict=True))
                    for k in ("a", arm))  # fmt: skip
            diff = [x[s] - a[s] for s in sorted(set(a) & set(x))]
            out["arms"][arm]["paired_minus_a_mev"] = diff
    return out


def _reference_check(path: Path, recs: list[dict], scored: np.ndarray, truth: np.ndarray) -> dict:
    """qdgap's own ensemble on the same frames, and how far arm (a)'s members are from its members."""
    from qdgap.core.common import schema
    from qdgap.core.common.metrics import rmse_mev
    from qdgap.core.store import runs as rf
    from qdgap.core.store.results import read_results

    pred, _ = read_results(path, fmt=schema.PREDICTIONS_FORMAT)
    frame = np.asarray(pred[schema.FRAME_INDEX])
    at = np.searchsorted(frame, scored)
    if not np.array_equal(frame[at], scored):
        return {"error": f"{path} lacks some scored frames"}
    seeds = [int(s) for s in np.asarray(pred[schema.SEEDS])]
    each = np.asarray(pred[schema.GAP_PRED_EV], np.float64)[:, at]
    ours = {r["seed"]: np.ravel(r["gap_ev"])[scored] for r in recs}
    diffs = {s: float(np.abs(ours[s] - each[i]).max()) for i, s in enumerate(seeds) if s in ours}
    # The reference members' own per-epoch validation MAE (runs/ beside predictions.h5), against arm (a)'s.
    same_epochs = {}
    for r in recs:
        metrics = path.parent / "runs" / f"run_{r['seed']}" / "metrics.csv"
        if metrics.exists() and "val_mae_mev" in r:
            theirs = [float(row["val_mae_mev"]) for row in rf.read_metrics_csv(metrics)]
            equal = sum(abs(a - b) <= 1e-4 for a, b in zip(r["val_mae_mev"], theirs, strict=False))
            same_epochs[str(r["seed"])] = f"{equal}/{len(theirs)}" + ("" if len(theirs) == len(r["val_mae_mev"]) else
                                                                     f" (ours ran {len(r['val_mae_mev'])})")  # fmt: skip
    return {
        "path": str(path),
        "seeds": seeds,
        "ensemble_rmse_mev": rmse_mev(each.mean(axis=0) - truth),
        "member_rmse_mev": [rmse_mev(e - truth) for e in each],
        "arm_a_max_abs_diff_mev": {str(s): d * 1000.0 for s, d in diffs.items()},
        "arm_a_epochs_with_equal_val_mae": same_epochs,
    }


# ==========================================================================
# Driver and tables
# ==========================================================================


def main() -> None:
    args = _args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    members_dir = args.work / "members"
    members_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    def path(arm: str, seed: int) -> Path:
        return members_dir / f"{arm}_seed{seed}.json"

    # Seed by seed, both runs of a seed together, so a cut-short session still compares like with like.
    todo = [(run, s) for s in seeds for run in RUNS if not all(path(arm, s).exists() for arm in RUNS[run])]
    if todo and not args.render:
        from qdgap.core.data.trajectory import read_trajectory

        band_edges(read_trajectory(args.data), args.labels)  # refuse mismatched labels before any training
        print(f"training {len(todo)} runs with {args.jobs} jobs: {todo}", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(_worker, args, run, s): (run, s) for run, s in todo}
            for fut in as_completed(futures):
                for rec in fut.result():
                    tmp = path(rec["arm"], rec["seed"]).with_suffix(".tmp")
                    tmp.write_text(json.dumps(rec))
                    tmp.replace(path(rec["arm"], rec["seed"]))
                    print(f"{rec['arm']} seed {rec['seed']}: best epoch {rec['best_epoch']}/{rec['epochs_run']}, "
                          f"{rec['seconds']:.0f} s", flush=True)  # fmt: skip

    result = {"command": command, "data": str(args.data), "labels": str(args.labels), "preset": args.preset,
              "stride": args.stride, **score(args, load_records(members_dir, seeds))}  # fmt: skip
    result["replicates"] = {}
    for spec in args.replicate:
        label, _, folder = spec.partition("=")
        rep = score(args, load_records(Path(folder) / "members"))
        result["replicates"][label] = {"folder": folder, "arms": rep["arms"], "reference": rep.get("reference")}
    result["pooled"] = pooled(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def load_records(members_dir: Path, seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """arm -> the finished members' records (those of ``seeds``; all when None), from ``<arm>_seed<s>.json``."""
    records: dict[str, list[dict]] = {}
    for arm in ARMS:
        for path in sorted(members_dir.glob(f"{arm}_seed*.json")):
            rec = json.loads(path.read_text())
            if seeds is None or rec["seed"] in seeds:
                records.setdefault(arm, []).append(rec)
    return records


def pooled(r: dict) -> dict:
    """Paired member differences (arm - (a), same seed and run) pooled over the main run and its replicates."""
    runs = {"main": r["arms"], **{label: rep["arms"] for label, rep in r["replicates"].items()}}
    out: dict = {}
    for arm in ("b", "c"):
        diffs = [d for arms in runs.values() for d in arms.get(arm, {}).get("paired_minus_a_mev", [])]
        if diffs:
            out[arm] = {"n": len(diffs), "mean_mev": float(np.mean(diffs)), "sd_mev": float(np.std(diffs, ddof=1))
                        if len(diffs) > 1 else None, "negative": int(sum(d < 0 for d in diffs))}  # fmt: skip
    return out


def render(r: dict) -> str:
    def spread(values: list[float]) -> str:
        return f"{min(values):.1f}-{max(values):.1f}"

    lines = ["# Multi-task band edges at 100 labels (issue 27)", "", "```", r["command"], "```", "",
             f"- data: {r['data']}; labels (HOMO, LUMO, gap): {r['labels']}",
             f"- preset `{r['preset']}`, pool every {r['stride']}th frame ({r['pool']} labelled frames; a member "
             f"trains on 80); scored on the {r['scored_frames']} labelled frames outside the pool",
             "- written by `bench/bench_multitask.py` (its docstring says what each arm is)", "",
             "| arm | members | ensemble gap RMSE, meV | members, meV (min-max) | member mean | paired vs (a), "
             "meV per seed | HOMO RMSE | LUMO RMSE | best epochs |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, arms in (("", r["arms"]), *((f"{k}: ", v["arms"]) for k, v in r.get("replicates", {}).items())):
        for arm, title in ARMS.items():
            row = arms.get(arm)
            if row is None:
                continue
            g = row["gap"]
            paired = ", ".join(f"{d:+.1f}" for d in row.get("paired_minus_a_mev", [])) or "–"
            homo = f"{row['homo']['ensemble_rmse_mev']:.1f}" if "homo" in row else "–"
            lumo = f"{row['lumo']['ensemble_rmse_mev']:.1f}" if "lumo" in row else "–"
            lines.append(
                f"| {label}({arm}) {title} | {len(row['seeds'])} | **{g['ensemble_rmse_mev']:.1f}** "
                f"| {spread(g['member_rmse_mev'])} | {np.mean(g['member_rmse_mev']):.1f} | {paired} | {homo} | {lumo} "
                f"| {', '.join(map(str, row['best_epoch']))} |"
            )
    ref = r.get("reference")
    if ref and "error" not in ref:
        lines.append(
            f"| qdgap `ensemble train` (reference) | {len(ref['seeds'])} | {ref['ensemble_rmse_mev']:.1f} "
            f"| {spread(ref['member_rmse_mev'])} | {np.mean(ref['member_rmse_mev']):.1f} | | | | |"
        )
    b = r["baselines"]
    lines.append(f"| linear interpolation in time of the pool | | {b['gap']['linear']:.1f} | | | | "
                 f"{b['homo']['linear']:.1f} | {b['lumo']['linear']:.1f} | |")  # fmt: skip
    lines.append(
        f"| pool mean | | {b['gap']['mean']:.1f} | | | | {b['homo']['mean']:.1f} | {b['lumo']['mean']:.1f} | |"
    )
    lines += ["", "Paired: member RMSE of the arm minus arm (a)'s member of the same seed (same split, same "
              "initial trunk weights); below 0 the arm is better."]  # fmt: skip
    for label, rep in r.get("replicates", {}).items():
        lines.append(f"Replicate `{label}`: the member records in `{rep['folder']}`.")
    pool = r.get("pooled", {})
    for arm in ("b", "c"):
        if arm in pool:
            q = pool[arm]
            sd = "" if q["sd_mev"] is None else f" (sd over the pairs {q['sd_mev']:.1f})"
            lines.append(f"Arm ({arm}) minus (a), pooled over {q['n']} seed pairs: mean {q['mean_mev']:+.1f} meV{sd}; "
                         f"{q['negative']} of {q['n']} below 0.")  # fmt: skip
    if "gap_head_rmse_mev" in r["arms"].get("c", {}):
        lines.append(f"Arm (c)'s models (best epoch chosen on LUMO - HOMO) read through their gap head instead: "
                     f"{r['arms']['c']['gap_head_rmse_mev']:.1f} meV.")  # fmt: skip
    if ref and ref.get("arm_a_max_abs_diff_mev", True):  # a reference that shares no seed with arm (a): nothing
        if "error" in ref:
            lines.append(f"Reference check: {ref['error']}.")
        else:
            d = ref["arm_a_max_abs_diff_mev"]
            lines.append(
                "Reference check: arm (a)'s members against qdgap's own members of the same seed, largest "
                "difference over the scored frames: " + ", ".join(f"seed {s} {v:.3g} meV" for s, v in d.items()) + "."
            )
            if ref.get("arm_a_epochs_with_equal_val_mae"):
                lines.append(
                    "Epochs whose validation MAE (metrics.csv, 1e-4 meV) equals arm (a)'s: "
                    + ", ".join(f"seed {s} {v}" for s, v in ref["arm_a_epochs_with_equal_val_mae"].items())
                    + "."
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
