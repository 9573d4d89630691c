"""Scoring transfer learning: the pretrained, fine-tuned and scratch ensembles on held-out extension frames.

``finetune_report.csv`` and ``.json``: each ensemble's RMSE and MAE (meV) on the
labelled extension frames outside every fine-tuned member's pool, and what each
cost to train.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qdgap.core.common import metrics
from qdgap.core.common.errors import QdgapError
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.store import runs as rf
from qdgap.core.store.runs import Member
from qdgap.core.workflow.finetune import FinetuneSettings, OutputPaths, ParameterCounts, finetune_config

log = logging.getLogger(__name__)

REPORT_MODELS = ("pretrained", "finetuned", "scratch")  # rows of finetune_report.csv, in order
# Rows after the models: what the fine-tuning labels predict without training (analysis/baselines.py):
# their mean, the nearest labelled frame, linear interpolation in time, and the pretrained ensemble
# recalibrated on those labels: its mean offset removed, or a least-squares scale and offset.
BASELINE_ROWS = ("labels_mean", "nearest", "interpolation", "kriging", "pretrained_offset", "pretrained_affine")
REPORT_COLUMNS = ("model", "rmse_mev", "mae_mev", "wall_s", "n_frames", "finetuned_skill")


@dataclass(frozen=True)
class ReportRow:
    """One row of ``finetune_report.csv``: an ensemble scored on the held-out extension frames."""

    model: str  # pretrained, finetuned or scratch
    rmse_mev: float  # of the ensemble mean
    mae_mev: float
    wall_s: float  # training time summed over members; NaN for the pretrained ensemble
    n_frames: int
    runs: str
    seeds: list[int]
    member_rmse_mev: list[float]
    member_wall_s: list[float]
    member_epochs: list[int]
    finetuned_skill: float = math.nan  # 1 - RMSE_finetuned / RMSE of this row: above 0, fine-tuning beats it


def scored_frames(finetuned: Sequence[Member], traj: Trajectory) -> np.ndarray:
    """Labelled extension frames outside every fine-tuned member's pool (train, val and test)."""
    from qdgap.core.analysis.predict import select_frames

    frames = select_frames(finetuned, traj, "unseen")
    return frames[np.isfinite(traj.gap_ev[frames])]


def check_scorable(traj: Trajectory, settings: FinetuneSettings, members: Sequence[Member]) -> None:
    """Refuse before training when no labelled frame would be left outside the pool to score."""
    from qdgap.core.data.splits import chosen_pool, labelled_pool

    if settings.pool_frames is not None:
        pool = chosen_pool(traj.gap_ev, settings.pool_frames)
        if np.isfinite(traj.gap_ev).sum() - len(pool) < 1:
            raise QdgapError(
                "--frames-from: every labelled frame of the extension is chosen, leaving none to compare "
                "the models on; choose fewer frames"
            )
        return
    strides = {finetune_config(m.config, settings).train.stride for m in members}
    for stride in strides:
        pool = labelled_pool(traj.gap_ev, stride=stride)
        outside = np.isfinite(traj.gap_ev).sum() - len(pool)
        if outside < 1:
            raise QdgapError(
                f"--stride {stride}: every labelled frame of the extension is in the fine-tuning pool, "
                "leaving none to compare the models on; raise --stride"
            )


def _row(
    model: str,
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    runs: Path,
    cache_dir: Path,
    device: str,
    trained: bool,
    progress,
) -> ReportRow:
    from qdgap.core.analysis.predict import predict_ensemble

    pred = predict_ensemble(members, traj, frames, cache_dir=cache_dir, device=device, progress=progress)
    y = pred.gap_true_ev.astype(np.float64)
    err = pred.gap_mean_ev.astype(np.float64) - y
    err_m = pred.gap_pred_ev.astype(np.float64) - y
    seconds, epochs = [], []
    for m in members:
        rows = rf.read_metrics_csv(m.path / rf.METRICS_CSV)
        seconds.append(float(sum(r["seconds"] for r in rows)))
        epochs.append(len(rows))
    return ReportRow(
        model=model,
        rmse_mev=metrics.rmse_mev(err),
        mae_mev=metrics.mae_mev(err),
        wall_s=float(sum(seconds)) if trained else math.nan,
        n_frames=int(len(frames)),
        runs=str(runs),
        seeds=[m.seed for m in members],
        member_rmse_mev=metrics.rmse_mev(err_m, axis=1).tolist(),
        member_wall_s=seconds,
        member_epochs=epochs,
    )


def compare(
    traj: Trajectory,
    *,
    finetuned: Sequence[Member],
    pretrained: Sequence[Member] | None,
    scratch: Sequence[Member] | None,
    paths: OutputPaths,
    pretrained_runs: Path,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[ReportRow]:
    """Score the ensembles on ``scored_frames``: pretrained (if given), finetuned, scratch (if given)."""
    frames = scored_frames(finetuned, traj)
    if frames.size == 0:
        raise QdgapError("no labelled extension frame lies outside the fine-tuning pool; raise --stride")
    cache = paths.finetuned / rf.CACHE_DIR  # the extension's graphs, built while fine-tuning
    rows: list[ReportRow] = []
    if pretrained is not None:
        rows.append(
            _row(
                "pretrained",
                pretrained,
                traj,
                frames,
                runs=pretrained_runs,
                cache_dir=cache,
                device=device,
                trained=False,
                progress=progress,
            )
        )
    rows.append(
        _row(
            "finetuned",
            finetuned,
            traj,
            frames,
            runs=paths.finetuned,
            cache_dir=cache,
            device=device,
            trained=True,
            progress=progress,
        )
    )
    if scratch is not None:
        rows.append(
            _row(
                "scratch",
                scratch,
                traj,
                frames,
                runs=paths.scratch,
                cache_dir=cache,
                device=device,
                trained=True,
                progress=progress,
            )
        )
    rows += _baseline_rows(traj, frames, finetuned, pretrained, cache_dir=cache, device=device)
    ft_rmse = next(r.rmse_mev for r in rows if r.model == "finetuned")
    return [replace(r, finetuned_skill=1.0 - ft_rmse / r.rmse_mev if r.rmse_mev > 0 else math.nan) for r in rows]


def _baseline_rows(
    traj: Trajectory,
    frames: np.ndarray,
    finetuned: Sequence[Member],
    pretrained: Sequence[Member] | None,
    *,
    cache_dir: Path,
    device: str,
) -> list[ReportRow]:
    """Rows for what the fine-tuning labels (the union of the fine-tuned members' train splits) predict alone."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.analysis.predict import predict_ensemble, train_union
    from qdgap.core.data.timeseries import correlation_time_fs

    train = train_union(finetuned)
    train = train[np.isfinite(traj.gap_ev[train])] if train.size else train
    if train.size == 0:
        return []
    t_lab, g_lab = traj.time_fs[train], traj.gap_ev[train].astype(np.float64)
    base = bl.baseline_predictions(traj.time_fs[frames], t_lab, g_lab, corr_time_fs=correlation_time_fs(t_lab, g_lab))
    preds = {
        "labels_mean": base["mean"],
        "nearest": base["nearest"],
        "interpolation": base["linear"],
        "kriging": base["kriging"],
    }
    if pretrained is not None:
        on_labels = predict_ensemble(pretrained, traj, train, cache_dir=cache_dir, device=device)
        p_lab = on_labels.gap_mean_ev.astype(np.float64)
        scored = predict_ensemble(pretrained, traj, frames, cache_dir=cache_dir, device=device).gap_mean_ev
        scored = scored.astype(np.float64)
        preds["pretrained_offset"] = scored + float(np.mean(g_lab - p_lab))
        if len(train) >= 3 and np.ptp(p_lab) > 0:  # a line needs two labels and a spread of predictions
            scale, shift = np.polyfit(p_lab, g_lab, 1)
            preds["pretrained_affine"] = scale * scored + shift
    y = traj.gap_ev[frames].astype(np.float64)
    return [
        ReportRow(
            model=name,
            rmse_mev=metrics.rmse_mev(p - y),
            mae_mev=metrics.mae_mev(p - y),
            wall_s=math.nan,
            n_frames=int(len(frames)),
            runs="",
            seeds=[],
            member_rmse_mev=[],
            member_wall_s=[],
            member_epochs=[],
        )  # fmt: skip
        for name, p in preds.items()
    ]


def write_report(
    rows: Sequence[ReportRow],
    paths: OutputPaths,
    *,
    traj: Trajectory,
    data_path: Path,
    settings: FinetuneSettings,
    counts: ParameterCounts,
) -> None:
    """``finetune_report.csv`` (columns ``REPORT_COLUMNS``) and ``finetune_report.json`` (the same, and how), atomically."""
    from qdgap.core.common.files import provenance
    from qdgap.core.store.results import write_csv

    write_csv(
        paths.report_csv,
        {
            "model": [r.model for r in rows],
            "rmse_mev": [r.rmse_mev for r in rows],
            "mae_mev": [r.mae_mev for r in rows],
            "wall_s": [r.wall_s for r in rows],
            "n_frames": [r.n_frames for r in rows],
            "finetuned_skill": [r.finetuned_skill for r in rows],
        },
        force=True,
    )
    record: dict[str, Any] = {
        "format": "qdgap.finetune_report",
        "version": 1,
        "frames": "labelled extension frames outside every fine-tuned member's pool (train, val and test)",
        "baselines": (
            "labels_mean, nearest, interpolation, kriging: the mean, the nearest in time, linear interpolation in "
            "time and kriging in time (a Gaussian process, core/analysis/baselines.kriging_in_time) of the "
            "fine-tuning labels (the union of the fine-tuned members' train splits); pretrained_offset: the "
            "pretrained ensemble plus its mean error on those labels; pretrained_affine: a least-squares scale and "
            "offset of the pretrained ensemble fitted on them; finetuned_skill = 1 - RMSE_finetuned / RMSE"
        ),
        "wall_s": (
            "training time summed over members (per-epoch times in metrics.csv); none for the pretrained "
            "ensemble, whose member_wall_s is its original training, for reference"
        ),
        "data": {"path": str(Path(data_path).resolve()), "sha256": traj.sha256, "num_frames": traj.num_frames},
        "settings": asdict(settings),
        "parameters": {"trainable": counts.trainable, "frozen": counts.frozen},
        "rows": [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in rows
        ],
        **provenance(),
    }
    rf.write_json(paths.report_json, record)
