"""Where the model starts to pay: label spacing against interpolation in time, on the real Cl trajectory.

    OMP_NUM_THREADS=1 python bench/bench_label_spacing.py --data work/real/cl_qd.h5 \\
        --ext work/real/cl_qd_ext.h5 --work work/spacing --out bench/results_label_spacing

(``cl_qd.h5`` / ``cl_qd_ext.h5``: ``qdgap data import`` of the study's archive with its 0-10 ps and
10-15 ps labels, as ``make reproduce`` makes them in its work folder.)

1. Spacing: for each label spacing k (fs; the pool is every k-th frame, 1 fs apart), an ensemble of
   ``--members`` members (``qdgap ensemble train --stride k``) predicts every frame; on every labelled
   frame outside the pool it stands beside linear and PCHIP interpolation in time, the nearest labelled
   frame and the mean, each from the whole pool (every label the user paid for) and, for linear, from the
   union of the members' train splits (what the members fitted). With the calibrated 95 % interval's coverage.
2. Blocked split at the first spacing: ``--blocked-members`` members trained with ``--split blocked``; each member's
   test error on its own (blocked / random) test split beside linear interpolation of its own train split
   on the same frames.
3. Extension: the first spacing's ensemble fine-tuned (``qdgap finetune``) on K labels of 10-15 ps (every
   500/K-th label), beside interpolation, nearest, the labels' mean and the pretrained ensemble shifted by
   its mean error on them, all on the extension's other labelled frames; and with no extension label, the
   pretrained ensemble beside the 0-10 ps mean and persistence.

Resumable: trained members and fine-tuned runs are kept in ``--work``; every finished measurement is kept
in ``label_spacing.json``; a rerun picks up where it stopped. It trains; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPACINGS_FS = (10, 20, 50, 100, 200, 500)
EXT_LABELS = (25, 50, 100, 250)
EXT_SPACING_FS = 10  # the extension's labels are every 10th frame


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="0-10 ps trajectory with labels (cl_qd.h5)")
    p.add_argument("--ext", type=Path, default=None, help="10-15 ps trajectory with labels (cl_qd_ext.h5)")
    p.add_argument("--work", type=Path, default=REPO / "work" / "spacing", help="members and fine-tuned runs")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results_label_spacing", help="results stem")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--spacings", default=",".join(map(str, SPACINGS_FS)), help="fs, comma-separated")
    p.add_argument("--ext-labels", default=",".join(map(str, EXT_LABELS)), help="K, comma-separated")
    p.add_argument("--finetune-epochs", type=int, default=50)
    p.add_argument("--no-blocked", action="store_true", help="skip the blocked-split members")
    p.add_argument("--blocked-members", type=int, default=2, help="members trained with --split blocked")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--render", action="store_true", help="only rewrite the table and figure from the JSON")
    return p.parse_args()


def qdgap_cli(*args: object) -> None:
    """Run a ``qdgap`` command in this Python, as a user would, echoing it (bench_active.py uses it too)."""
    cmd = [sys.executable, "-m", "qdgap", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def _train(args, runs: Path, stride: int, split: str = "random", members: int | None = None) -> None:
    qdgap_cli("ensemble", "train", "--members", members or args.members, "--preset", args.preset, "--stride", stride, "--split",
           split, "--jobs", args.jobs, "--data", args.data, "-o", runs, "--device", "cpu")  # fmt: skip


def _spacing_row(args, k: int) -> dict:
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow.inference import predict_to_file

    runs = args.work / f"s{k}" / "runs"
    t0 = time.perf_counter()
    _train(args, runs, k)
    train_s = sum(sum(r["seconds"] for r in rf.read_metrics_csv(d / rf.METRICS_CSV)) for d in rf.member_dirs(runs))
    pred_path = args.work / f"s{k}" / "predictions.h5"
    if not pred_path.exists():
        predict_to_file(runs, args.data, pred_path, frames="all", device="cpu")
    row = {"spacing_fs": k, **score_outside_pool(pred_path, args.data, runs, k)}
    row["train_s_summed"] = train_s
    row["wall_s"] = time.perf_counter() - t0
    return row


def score_outside_pool(pred_path: Path, data: Path, runs: Path, k: int) -> dict:
    """An ensemble's ``predictions.h5`` (every frame) scored on the labelled frames outside the pool of every
    k-th labelled frame, beside the pool's baselines on the same frames; RMSE in meV (bench/bench_sparse.py
    uses it too)."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.common import schema
    from qdgap.core.common.metrics import coverage, rmse_mev
    from qdgap.core.data.splits import labelled_pool
    from qdgap.core.data.timeseries import correlation_time_fs
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf
    from qdgap.core.store.results import read_results

    pred, attrs = read_results(pred_path, fmt=schema.PREDICTIONS_FORMAT)
    traj = read_trajectory(data)
    pool = labelled_pool(traj.gap_ev, stride=k)
    members = rf.load_members(runs)
    frame = np.asarray(pred[schema.FRAME_INDEX])
    truth = np.asarray(pred[schema.GAP_TRUE_EV], np.float64)
    scored = np.isfinite(truth) & ~np.isin(frame, pool)
    t_pool, g_pool = traj.time_fs[pool], traj.gap_ev[pool].astype(np.float64)
    tau = correlation_time_fs(t_pool, g_pool)
    base = bl.baseline_predictions(traj.time_fs[frame[scored]], t_pool, g_pool, corr_time_fs=tau)
    mean = np.asarray(pred[schema.GAP_MEAN_EV], np.float64)[scored]
    y = truth[scored]
    union = np.unique(np.concatenate([np.asarray(m.split["train"]) for m in members]))
    lin_union = np.interp(traj.time_fs[frame[scored]], traj.time_fs[union], traj.gap_ev[union].astype(np.float64))
    each = np.asarray(pred[schema.GAP_PRED_EV], np.float64)[:, scored]
    # The model plus its residuals at the pool's labels interpolated in time (kriging with the model as
    # the drift): near a label as good as interpolation, far from every label the model.
    mean_all = np.asarray(pred[schema.GAP_MEAN_EV], np.float64)
    at_pool = np.searchsorted(frame, pool)
    residual = g_pool - mean_all[at_pool]
    hybrid = mean + np.interp(traj.time_fs[frame[scored]], t_pool, residual)
    row = {
        "pool": int(len(pool)),
        "scored_frames": int(scored.sum()),
        "corr_time_pool_fs": tau,
        "ensemble_rmse_mev": rmse_mev(mean - y),
        "member_rmse_mev": [rmse_mev(e - y) for e in each],
        **{f"{name}_rmse_mev": rmse_mev(p - y) for name, p in base.items() if name != "persistence"},
        "linear_union_rmse_mev": rmse_mev(lin_union - y),
        "hybrid_rmse_mev": rmse_mev(hybrid - y),
    }
    if schema.GAP_LO_EV in pred:
        lo, hi = (np.asarray(pred[key], np.float64)[scored] for key in (schema.GAP_LO_EV, schema.GAP_HI_EV))
        row["coverage95"] = coverage(y, lo, hi)
        row["interval_method"] = str(attrs.get(schema.ATTR_INTERVAL_METHOD, ""))
    else:
        row["coverage95"] = None
    d = bl.distance_to_labels_fs(traj.time_fs[frame[scored]], t_pool)
    bins = bl.error_by_distance(d, y, {"model": mean, "linear": base["linear"]}, corr_time_fs=tau)
    row["bins"] = {"edges_fs": [float(e) for e in bins.edges_fs], "frames": bins.frames.tolist(),
                   **{n: v.tolist() for n, v in bins.rmse_mev.items()}}  # fmt: skip
    return row


def _own_test_rows(args, runs: Path, split: str) -> list[dict]:
    """Each member's RMSE on its own test split, beside linear interpolation of its own train split there."""
    from qdgap.core.common.metrics import rmse_mev
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf

    traj = read_trajectory(args.data)
    rows = []
    for m in rf.load_members(runs):
        test, train = np.asarray(m.split["test"]), np.asarray(m.split["train"])
        y = traj.gap_ev[test].astype(np.float64)
        lin = np.interp(traj.time_fs[test], traj.time_fs[train], traj.gap_ev[train].astype(np.float64))
        own = json.loads((m.path / rf.TEST_METRICS_JSON).read_text())
        gap_fs = np.abs(traj.time_fs[test][:, None] - traj.time_fs[train][None, :]).min(axis=1)
        rows.append({"split": split, "seed": m.seed, "test_frames": int(len(test)), "model_rmse_mev": own["rmse_mev"],
                     "linear_rmse_mev": rmse_mev(lin - y), "mean_distance_fs": float(gap_fs.mean()),
                     "block_fs": m.split.get("block_fs")})  # fmt: skip
    return rows


def _ext_rows(args, base_runs: Path, ks: list[int]) -> dict:
    """K = 0 (pretrained alone) and each K of fine-tuning labels, from the fine-tuning report."""
    import csv

    from qdgap.core.analysis.predict import predict_ensemble
    from qdgap.core.common.metrics import rmse_mev
    from qdgap.core.data.splits import labelled_pool
    from qdgap.core.data.timeseries import correlation_time_fs
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf

    out = {}
    traj, ext = read_trajectory(args.data), read_trajectory(args.ext)
    lab = np.flatnonzero(ext.labelled)
    members = rf.load_members(base_runs)
    pred = predict_ensemble(members, ext, lab, cache_dir=args.work / "ext" / "cache", device="cpu")
    y = ext.gap_ev[lab].astype(np.float64)
    union = np.unique(np.concatenate([np.asarray(m.split["train"]) for m in members]))
    t0, g0 = traj.time_fs[union], traj.gap_ev[union].astype(np.float64)
    tau = correlation_time_fs(t0, g0)
    persistence = g0[t0 >= t0.max() - tau].mean()
    out["0"] = {"k": 0, "frames": int(len(lab)), "pretrained": rmse_mev(pred.gap_mean_ev.astype(np.float64) - y),
                "training_mean": rmse_mev(g0.mean() - y), "persistence": rmse_mev(persistence - y),
                "extension_mean_oracle": rmse_mev(y.mean() - y), "corr_time_fs": tau}  # fmt: skip
    for k in ks:
        stride = max(1, round(len(lab) * EXT_SPACING_FS / k))
        folder = args.work / "ext" / f"k{k}"
        report = folder / "finetune_report.csv"
        if not report.exists():
            qdgap_cli("finetune", "--runs", base_runs, "--data", args.ext, "-o", folder / "runs_ft", "--stride", stride,
                   "--epochs", args.finetune_epochs, "--jobs", args.jobs, "--device", "cpu")  # fmt: skip
        with open(report, newline="") as fh:
            rows = {r["model"]: float(r["rmse_mev"]) for r in csv.DictReader(fh)}
        n_frames = int(next(csv.DictReader(open(report)))["n_frames"])
        pool = labelled_pool(ext.gap_ev, stride=stride)
        out[str(k)] = {"k": k, "labels_in_pool": int(len(pool)), "stride": stride, "frames": n_frames, **rows}
        _ = rf  # the fine-tuned runs stay in --work for inspection
    return out


def main() -> None:
    args = _args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record_path = args.out.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if args.render:
        _render(record, args.out)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    def save() -> None:
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(record_path)
        _render(record, args.out)

    record.update(data=str(args.data), ext=str(args.ext), members=args.members, preset=args.preset)
    started = time.perf_counter()
    spacings = [int(s) for s in args.spacings.split(",")]
    rows = record.setdefault("spacing", {})
    for k in spacings:
        if str(k) not in rows:
            rows[str(k)] = _spacing_row(args, k)
            save()
            r = rows[str(k)]
            print(
                f"{k:4d} fs: ensemble {r['ensemble_rmse_mev']:.1f}, linear {r['linear_rmse_mev']:.1f} meV", flush=True
            )
    first = args.work / f"s{spacings[0]}" / "runs"
    if args.ext is not None and "extension" not in record:
        record["extension"] = _ext_rows(args, first, [int(k) for k in args.ext_labels.split(",")])
        save()
    if not args.no_blocked and "own_test" not in record:
        blocked = args.work / f"s{spacings[0]}_blocked" / "runs"
        _train(args, blocked, spacings[0], split="blocked", members=args.blocked_members)
        record["own_test"] = _own_test_rows(args, first, "random") + _own_test_rows(args, blocked, "blocked")
        save()
    record["wall_s_this_run"] = time.perf_counter() - started
    save()


def _render(record: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Label spacing: where qdgap beats interpolation in time (real Cl trajectory)", ""]
    lines += [f"- data: {record.get('data')}; extension: {record.get('ext')}",
              f"- {record.get('members')} members per ensemble, preset `{record.get('preset')}`",
              "- written by `bench/bench_label_spacing.py` (its docstring says what each row measures)", ""]  # fmt: skip
    rows = [record["spacing"][k] for k in sorted(record.get("spacing", {}), key=int)]
    if rows:
        lines += [
            "## 0-10 ps: every labelled frame outside the pool",
            "",
            "| labels every, fs | pool | scored frames | ensemble RMSE, meV | members, meV | linear interp. | PCHIP "
            "| nearest label | pool mean | linear from train splits only | skill vs linear | 95 % coverage "
            "| ensemble + interpolated residuals |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cov = "–" if r.get("coverage95") is None else f"{100 * r['coverage95']:.0f} %"
            mem = r["member_rmse_mev"]
            lines.append(
                f"| {r['spacing_fs']} | {r['pool']} | {r['scored_frames']} | **{r['ensemble_rmse_mev']:.1f}** "
                f"| {min(mem):.1f}-{max(mem):.1f} | {r['linear_rmse_mev']:.1f} | {r['pchip_rmse_mev']:.1f} "
                f"| {r['nearest_rmse_mev']:.1f} | {r['mean_rmse_mev']:.1f} | {r['linear_union_rmse_mev']:.1f} "
                f"| {1 - r['ensemble_rmse_mev'] / r['linear_rmse_mev']:+.2f} | {cov} "
                f"| {r.get('hybrid_rmse_mev', float('nan')):.1f} |"
            )
        lines += ["", "Skill = 1 - RMSE_ensemble / RMSE_linear (above 0: the ensemble wins). Baselines from the whole "
                  "pool: every label the user paid for. The last column adds to the ensemble its residuals at the "
                  "pool's labels, interpolated linearly in time.", ""]  # fmt: skip
    own = record.get("own_test")
    if own:
        lines += ["## The blocked split: what a member's own test error measures", "",
                  "| split | member seeds | test frames | mean distance to the member's train frames, fs | member test "
                  "RMSE, meV (mean) | linear interp. of its train split, meV (mean) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for split in ("random", "blocked"):
            sel = [o for o in own if o["split"] == split]
            if sel:
                lines.append(
                    f"| {split}{' (' + format(sel[0]['block_fs'], '.0f') + ' fs blocks)' if sel[0]['block_fs'] else ''} "
                    f"| {', '.join(str(o['seed']) for o in sel)} | {sel[0]['test_frames']} "
                    f"| {np.mean([o['mean_distance_fs'] for o in sel]):.0f} "
                    f"| {np.mean([o['model_rmse_mev'] for o in sel]):.1f} | {np.mean([o['linear_rmse_mev'] for o in sel]):.1f} |"
                )
        lines.append("")
    ext = record.get("extension")
    if ext:
        z = ext["0"]
        lines += ["## 10-15 ps", "", f"No extension label ({z['frames']} labelled extension frames): pretrained "
                  f"ensemble {z['pretrained']:.1f} meV; 0-10 ps training mean {z['training_mean']:.1f}; persistence "
                  f"(mean of the last {z['corr_time_fs']:.0f} fs of training labels) {z['persistence']:.1f}; the "
                  f"extension's own mean (an oracle constant) {z['extension_mean_oracle']:.1f} meV.", ""]  # fmt: skip
        cols = [
            "finetuned",
            "scratch",
            "pretrained",
            "pretrained_offset",
            "pretrained_affine",
            "interpolation",
            "nearest",
            "labels_mean",
        ]
        lines += ["| K labels (pool) | scored frames | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        for key in sorted((k for k in ext if k != "0"), key=int):
            e = ext[key]
            cells = [f"{e[c]:.1f}" if c in e else "–" for c in cols]
            cells[0] = f"**{cells[0]}**"
            lines.append(f"| {e['k']} ({e['labels_in_pool']}) | {e['frames']} | " + " | ".join(cells) + " |")
        lines += ["", "RMSE in meV on the extension's labelled frames outside the fine-tuning pool (K counts the pool; "
                  "80 % of it trains each member).", ""]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if not rows:
        return
    fig, axes = plt.subplots(1, 2 if ext else 1, figsize=(11 if ext else 6, 4), squeeze=False)
    ax = axes[0, 0]
    x = [r["spacing_fs"] for r in rows]
    for key, style, label in (("ensemble_rmse_mev", "o-", "qdgap ensemble"), ("linear_rmse_mev", "s--", "linear interpolation"),
                              ("nearest_rmse_mev", "^:", "nearest label"), ("mean_rmse_mev", "x:", "pool mean")):  # fmt: skip
        ax.plot(x, [r[key] for r in rows], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("label spacing, fs")
    ax.set_ylabel("RMSE on the other labelled frames, meV")
    ax.set_title("0-10 ps")
    ax.legend(fontsize=8)
    if ext:
        ax = axes[0, 1]
        ks = sorted((k for k in ext if k != "0"), key=int)
        for key, style in (
            ("finetuned", "o-"),
            ("interpolation", "s--"),
            ("pretrained_offset", "d-."),
            ("labels_mean", "x:"),
        ):
            ax.plot([int(k) for k in ks], [ext[k].get(key, np.nan) for k in ks], style, label=key)
        ax.axhline(ext["0"]["pretrained"], color="grey", lw=1, label="pretrained, no label")
        ax.set_xscale("log")
        ax.set_xlabel("extension labels K")
        ax.set_title("10-15 ps")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
