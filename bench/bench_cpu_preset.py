"""Which model trains best on a CPU within the study's budget: one member per setting on the real data.

Not a test. For each setting, trains member ``--seed`` on the real trajectory
(``qdgap data import`` of the original study's archive), then scores it on every
labelled frame outside its labelled pool (4,000 frames for the original data)
and on its own test split. Resumable: a finished member is only re-scored.

    .venv/bin/python bench/bench_cpu_preset.py --data work/reproduce/cl_qd.h5 --out bench/_out/cpu_preset \
        --settings demo,h64_l2 --threads 1

Writes ``OUT/results.json`` (one record per setting) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qdgap.core.analysis.predict import predict_ensemble, select_frames
from qdgap.core.common import metrics
from qdgap.core.config import PRESETS, GraphConfig, ModelConfig, RunConfig
from qdgap.core.data.trajectory import read_trajectory
from qdgap.core.store import runs as rf
from qdgap.core.train.loop import train_member

_DEMO = PRESETS["demo"]


def _model(**kw) -> ModelConfig:
    return replace(_DEMO.model, **kw)


# name -> (model, graph, train overrides)
SETTINGS: dict[str, tuple[ModelConfig, GraphConfig, dict]] = {
    "demo": (_DEMO.model, _DEMO.graph, {}),
    "demo_e200": (_DEMO.model, _DEMO.graph, {"epochs": 200, "patience": 100}),
    "h64_l2": (
        _model(alignn_layers=2, gcn_layers=2, embedding_features=32, hidden_features=64, triplet_input_features=40),
        _DEMO.graph,
        {"batch_size": 8},
    ),
    "h64_l1": (
        _model(embedding_features=32, hidden_features=64, triplet_input_features=40),
        _DEMO.graph,
        {},
    ),
    "h128_l2": (
        _model(alignn_layers=2, gcn_layers=2, embedding_features=64, hidden_features=128, triplet_input_features=40),
        _DEMO.graph,
        {"batch_size": 16},
    ),
    # Wider and deeper models for a sparse pool (issue 27): 80 training frames instead of 800 leave ten times
    # the per-frame budget. Batch 4 and the cpu preset's schedule, so only the model differs from it.
    "sparse_h64_l2": (
        _model(alignn_layers=2, gcn_layers=2, embedding_features=32, hidden_features=64, triplet_input_features=40),
        _DEMO.graph,
        {"epochs": 200, "patience": 100},
    ),
    "sparse_h128_l2": (
        _model(alignn_layers=2, gcn_layers=2, embedding_features=64, hidden_features=128, triplet_input_features=40),
        _DEMO.graph,
        {"epochs": 200, "patience": 100},
    ),
    "sparse_h128_l4": (
        _model(alignn_layers=4, gcn_layers=4, embedding_features=64, hidden_features=128, triplet_input_features=40),
        _DEMO.graph,
        {"epochs": 200, "patience": 100},
    ),
}


def _config(name: str, epochs: int | None, stride: int) -> RunConfig:
    model, graph, train = SETTINGS[name]
    t = replace(_DEMO.train, stride=stride, **train)
    if epochs is not None:
        t = replace(t, epochs=epochs)
    return RunConfig(preset=f"bench-{name}", model=model, graph=graph, train=t)


def run_setting(
    name: str, data: Path, out: Path, seed: int, epochs: int | None, stride: int, cache_from: Path | None
) -> dict:
    traj = read_trajectory(data)
    config = _config(name, epochs, stride)
    runs = out / name
    run_dir = runs / f"run_{seed}"
    if cache_from is not None and not (runs / rf.CACHE_DIR).exists():
        # Graph files are named by graph settings and data hash, so runs folders on the same data can share them.
        runs.mkdir(parents=True, exist_ok=True)
        (runs / rf.CACHE_DIR).symlink_to(cache_from.resolve(), target_is_directory=True)
    t0 = time.perf_counter()
    train_member(traj, config, seed=seed, run_dir=run_dir, device="cpu", cache_dir=runs / rf.CACHE_DIR)
    wall = time.perf_counter() - t0
    members = rf.load_members(runs)
    member = [m for m in members if m.seed == seed]
    frames = select_frames(member, traj, "unseen")
    frames = frames[np.isfinite(traj.gap_ev[frames])]
    pred = predict_ensemble(member, traj, frames, cache_dir=runs / rf.CACHE_DIR, device="cpu")
    rmse, mae = metrics.error_stats_mev(pred.gap_true_ev, pred.gap_mean_ev)
    rows = rf.read_metrics_csv(run_dir / rf.METRICS_CSV)
    test = json.loads((run_dir / rf.TEST_METRICS_JSON).read_text())
    n_params = sum(
        p.numel()
        for p in __import__("qdgap.core.model.network", fromlist=["GapModel"]).GapModel(config.model).parameters()
    )
    return {
        "setting": name,
        "seed": seed,
        "stride": stride,
        "model": {
            k: getattr(config.model, k)
            for k in (
                "alignn_layers",
                "gcn_layers",
                "embedding_features",
                "hidden_features",
                "edge_input_features",
                "triplet_input_features",
            )
        },
        "graph": config.graph.__dict__,
        "batch_size": config.train.batch_size,
        "lr": config.train.learning_rate,
        "epochs_max": config.train.epochs,
        "epochs_run": len(rows),
        "seconds_per_epoch": float(np.median([r["seconds"] for r in rows])) if rows else float("nan"),
        "train_seconds": float(sum(r["seconds"] for r in rows)),
        "wall_seconds_this_call": wall,
        "params": n_params,
        "unseen_frames": int(len(frames)),
        "unseen_rmse_mev": rmse,
        "unseen_mae_mev": mae,
        "test_rmse_mev": test["rmse_mev"],
        "test_mae_mev": test["mae_mev"],
    }


def render(records: list[dict]) -> str:
    lines = [
        "| setting | layers (ALIGNN+GCN) | hidden / emb | batch | epochs run / max | s/epoch | train min | params | unseen RMSE / MAE (meV) | own test RMSE (meV) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m = r["model"]
        lines.append(
            f"| {r['setting']} (seed {r['seed']}) | {m['alignn_layers']}+{m['gcn_layers']} | {m['hidden_features']} / {m['embedding_features']} "
            f"| {r['batch_size']} | {r['epochs_run']} / {r['epochs_max']} | {r['seconds_per_epoch']:.2f} | {r['train_seconds'] / 60:.1f} "
            f"| {r['params']:,} | {r['unseen_rmse_mev']:.1f} / {r['unseen_mae_mev']:.1f} ({r['unseen_frames']} frames) | {r['test_rmse_mev']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/_out/cpu_preset"))
    ap.add_argument("--settings", default="demo")
    ap.add_argument("--seeds", default="0", help="member seeds, comma-separated")
    ap.add_argument("--stride", type=int, default=10, help="labelled pool spacing in frames (100: the sparse pool)")
    ap.add_argument("--cache-from", type=Path, default=None, help="a runs folder's .cache to share graphs with")
    ap.add_argument("--epochs", type=int, default=None, help="override every setting's epochs (timing probes)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    for name in args.settings.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            record = run_setting(name, args.data, args.out, seed, args.epochs, args.stride, args.cache_from)
            records = json.loads(store.read_text()) if store.exists() else []
            records = [r for r in records if (r["setting"], r["seed"]) != (name, seed)] + [record]
            store.write_text(json.dumps(records, indent=1))
            (args.out / "results.md").write_text(render(records))
            print(render([record]), flush=True)


if __name__ == "__main__":
    main()
