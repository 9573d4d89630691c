"""Which frames to label: does choosing by calibrated spread beat a fixed grid? (issue 18, item 4)

    OMP_NUM_THREADS=1 python bench/bench_selection.py --runs work/demo/runs --members 4 \\
        --data data/cd28se17cl22_demo_ext.h5 --ks 25,50,100 --repeats 2 --epochs 30 --out bench/_out/selection

A fixed part of the labelled frames of ``--data`` (``--holdout``, chosen once
with seed 0) is held out for testing. In each repeat a random 80 % of the rest
(seeded by the repeat) are the candidates; each strategy (``qdgap select
--candidates labelled``: spread, spread-diverse, random, grid) picks K of them
as if their labels were unknown until chosen, the ensemble (the first
``--members`` members of ``--runs``) is fine-tuned on exactly those frames
with the same code as ``qdgap finetune --frames-from``, and its RMSE on the
held-out frames is recorded. The reference is the ensemble fine-tuned on all
of the rest (every non-held-out labelled frame) and the pretrained ensemble as
it is. Writes ``selection.md`` (RMSE mean ± std over repeats per strategy and
K), ``selection.png`` (the learning curve) and ``selection.json`` (every run).

It trains; it asserts nothing. Keep ``--jobs 1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STRATEGIES = ("spread", "spread-diverse", "random", "grid")
CANDIDATE_FRACTION = 0.8  # of the non-held-out labelled frames, per repeat


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="pretrained ensemble (run_<seed>/ folders)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "cd28se17cl22_demo_ext.h5", help="labelled trajectory")
    p.add_argument("--ks", default="25,50,100", help="labels to choose, comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="repeats (each draws its own candidate subset)")
    p.add_argument("--members", type=int, default=4, help="use the first N members of --runs")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs")
    p.add_argument("--freeze-blocks", type=int, default=None, help="as qdgap finetune (default: its own)")
    p.add_argument("--holdout", type=float, default=0.3, help="fraction of the labelled frames held out for testing")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--no-all", action="store_true", help="skip the reference fine-tuned on all non-held-out frames")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "_out" / "selection", help="work and result folder")
    p.add_argument("--render", action="store_true", help="only rewrite the table and figure from selection.json")
    return p.parse_args()


def _rmse_on(members, traj, frames, cache_dir, device) -> float:
    from qdgap.core.analysis.predict import predict_ensemble
    from qdgap.core.common.metrics import rmse_mev

    pred = predict_ensemble(members, traj, frames, cache_dir=cache_dir, device=device)
    return rmse_mev(pred.gap_mean_ev.astype(np.float64) - pred.gap_true_ev.astype(np.float64))


def _finetune(data, members, pool, *, runs, out, epochs, freeze_blocks, jobs, device) -> list:
    """Fine-tune ``members`` on exactly ``pool`` (``--frames-from``'s path) into ``out``; the fine-tuned members."""
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow import finetune as ft

    settings = ft.with_defaults(
        ft.FinetuneSettings(freeze_blocks=freeze_blocks, epochs=epochs, pool_frames=tuple(int(f) for f in pool)),
        members,
    )
    outcomes = ft.finetune_local(data, members, settings, runs=runs, output=out, jobs=jobs, device=device)
    bad = [o for o in outcomes if o.outcome not in ("trained", "done")]
    if bad:
        raise SystemExit(f"fine-tuning failed for seed {bad[0].seed}: {bad[0].message}")
    return [rf.load_member(rf.run_dir(out, m.seed)) for m in members]


def main() -> None:
    args = _args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "selection.json"
    if args.render:
        _render(json.loads(record_path.read_text()), out)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from qdgap.core.analysis import calibration as cb
    from qdgap.core.analysis import select as sl
    from qdgap.core.analysis.predict import runs_cache_dir
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf

    ks = [int(k) for k in args.ks.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    members = rf.load_members(args.runs)[: args.members]
    traj = read_trajectory(args.data)
    labelled = np.flatnonzero(traj.labelled)
    rng = np.random.default_rng(0)
    holdout = np.sort(rng.choice(labelled, size=round(args.holdout * len(labelled)), replace=False))
    rest = np.setdiff1d(labelled, holdout)
    cache = out / rf.CACHE_DIR
    # The calibration (scale only: it does not change which frames `spread` picks) of this sub-ensemble.
    sub_runs = out / "pretrained"
    sub_runs.mkdir(exist_ok=True)
    for m in members:
        link = sub_runs / m.path.name
        if not link.exists():
            link.symlink_to(m.path.resolve(), target_is_directory=True)
    members = rf.load_members(sub_runs)
    cal, _ = cb.calibration_for(sub_runs, members, cache_dir=runs_cache_dir(args.runs), device=args.device)

    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update(
        data=str(args.data),
        runs=str(args.runs),
        members=[m.seed for m in members],
        epochs=args.epochs,
        holdout=int(len(holdout)),
        rest=int(len(rest)),
        candidate_fraction=CANDIDATE_FRACTION,
        calibration_scale=None if cal is None else cal.scale,
    )
    rows = record.setdefault("rows", [])
    done = {(r["strategy"], r["k"], r["repeat"]) for r in rows}

    def save() -> None:
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(record_path)

    if "pretrained_rmse_mev" not in record:
        record["pretrained_rmse_mev"] = _rmse_on(members, traj, holdout, cache, args.device)
        save()
    if not args.no_all and "all_rmse_mev" not in record:
        t0 = time.perf_counter()
        ft_members = _finetune(
            args.data, members, rest, runs=sub_runs, out=out / "ft_all", epochs=args.epochs,
            freeze_blocks=args.freeze_blocks, jobs=args.jobs, device=args.device,
        )  # fmt: skip
        record["all_rmse_mev"] = _rmse_on(ft_members, traj, holdout, cache, args.device)
        record["all_wall_s"] = time.perf_counter() - t0
        save()
        print(f"all {len(rest)} frames: {record['all_rmse_mev']:.1f} meV", flush=True)
    for repeat in range(args.repeats):
        sub = np.random.default_rng(1000 + repeat)
        kept = np.sort(sub.choice(rest, size=round(CANDIDATE_FRACTION * len(rest)), replace=False))
        exclude = np.setdiff1d(np.arange(traj.num_frames), kept)
        for k in ks:
            for strategy in strategies:
                if (strategy, k, repeat) in done:
                    continue
                t0 = time.perf_counter()
                sel = sl.select_for_labelling(
                    members, traj, budget=k, strategy=strategy, candidates="labelled", exclude=exclude,
                    seed=repeat, calibration=cal, cache_dir=cache, device=args.device,
                )  # fmt: skip
                folder = out / f"ft_{strategy}_k{k}_r{repeat}"
                ft_members = _finetune(
                    args.data, members, sel.frame_index, runs=sub_runs, out=folder, epochs=args.epochs,
                    freeze_blocks=args.freeze_blocks, jobs=args.jobs, device=args.device,
                )  # fmt: skip
                rmse = _rmse_on(ft_members, traj, holdout, cache, args.device)
                rows.append(
                    {
                        "strategy": strategy,
                        "k": k,
                        "repeat": repeat,
                        "rmse_mev": rmse,
                        "frames": sel.frame_index.tolist(),
                        "wall_s": time.perf_counter() - t0,
                    }
                )
                save()
                shutil.rmtree(folder, ignore_errors=True)  # the numbers are kept; the weights are not needed
                print(f"repeat {repeat} K={k:4d} {strategy:<15} {rmse:7.1f} meV", flush=True)
    _render(record, out)


def _render(record: dict, out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
    ks = sorted({r["k"] for r in rows})
    stats = {}
    for s in strategies:
        for k in ks:
            v = np.array([r["rmse_mev"] for r in rows if r["strategy"] == s and r["k"] == k])
            if len(v):
                stats[s, k] = (float(v.mean()), float(v.std()), len(v))
    head = "| strategy | " + " | ".join(f"K = {k}" for k in ks) + " |"
    lines = [
        f"Held-out RMSE (meV) of the ensemble ({len(record['members'])} members, seeds "
        f"{', '.join(map(str, record['members']))}) fine-tuned for {record['epochs']} epochs on K frames chosen from "
        f"{round(record['candidate_fraction'] * record['rest'])} candidates; {record['holdout']} frames of "
        f"`{Path(record['data']).name}` held out; mean ± std over repeats (n per cell).",
        "",
        head,
        "|" + "---|" * (len(ks) + 1),
    ]
    for s in strategies:
        cells = [
            f"{stats[s, k][0]:.1f} ± {stats[s, k][1]:.1f} ({stats[s, k][2]})" if (s, k) in stats else "" for k in ks
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Pretrained, no fine-tuning: {record['pretrained_rmse_mev']:.1f} meV."
        + (
            f" Fine-tuned on all {record['rest']} non-held-out frames: {record['all_rmse_mev']:.1f} meV."
            if "all_rmse_mev" in record
            else ""
        ),
    ]
    (out / "selection.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=150)
    for s in strategies:
        xs = [k for k in ks if (s, k) in stats]
        m = np.array([stats[s, k][0] for k in xs])
        sd = np.array([stats[s, k][1] for k in xs])
        ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=s)
    if "all_rmse_mev" in record:
        ax.axhline(record["all_rmse_mev"], color="k", ls="--", lw=1, label=f"all {record['rest']} frames")
    ax.axhline(record["pretrained_rmse_mev"], color="grey", ls=":", lw=1, label="pretrained")
    ax.set_xlabel("labelled frames chosen (K)")
    ax.set_ylabel("held-out RMSE (meV)")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    ax.set_title(f"Choosing frames to label: {Path(record['data']).name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "selection.png")
    print((out / "selection.md").read_text())


if __name__ == "__main__":
    main()
