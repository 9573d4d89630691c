"""Ensemble prediction of a trajectory from exported members (``model.ts``; no training code needed).

Every member's artifact (``model.ts``, or ``model.onnx`` for ONNX Runtime) is
loaded through ``export.load_model``, which checks it against the sha256 its
run folder recorded. Graphs come from the
cache; many frames go through each forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.labels import formula
from qdgap.core.common.metrics import coverage_ksigma, mae_mev, rmse_mev
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.store import runs as rf
from qdgap.core.store.runs import Member
from qdgap.kernels.batch import PackedGraphs, gather_frames, graphs_per_forward
from qdgap.testing.faults import fault_point

log = logging.getLogger(__name__)

FRAME_SETS = ("unseen", "test", "all")


@dataclass(frozen=True)
class EnsemblePrediction:
    """Predictions of M members on F frames.

    Attributes:
        frame_index: (F,) int64, indices into the trajectory.
        time_fs: (F,) float64.
        gap_true_ev: (F,) float32, NaN where unknown.
        gap_pred_ev: (M, F) float32.
        seeds: (M,) int64.
    """

    frame_index: np.ndarray
    time_fs: np.ndarray
    gap_true_ev: np.ndarray
    gap_pred_ev: np.ndarray
    seeds: np.ndarray

    @property
    def gap_mean_ev(self) -> np.ndarray:
        return self.gap_pred_ev.mean(axis=0, dtype=np.float64).astype(np.float32)

    @property
    def gap_std_ev(self) -> np.ndarray:
        """Population std over members (ddof 0), as DESIGN.md specifies."""
        return self.gap_pred_ev.std(axis=0, dtype=np.float64).astype(np.float32)


def check_members_fit(
    members: Sequence[Member], traj: Trajectory, *, data_path: Path | None, allow_data_change: bool
) -> None:
    """Refuse members trained on another composition, or on this very file before it changed.

    A member whose training composition is unknown (imported from upstream
    ALIGNN) is checked only for input features of every element (``check_features``).

    Raises:
        QdgapError: naming the member and the mismatch.
    """
    for m in members:
        if m.numbers is None:  # imported from upstream ALIGNN: its training composition is unknown
            check_features(m, traj)
            continue
        if not np.array_equal(m.numbers, traj.numbers):
            what = (
                f"{formula(m.numbers)} ({len(m.numbers)} atoms)"
                if len(m.numbers) != traj.num_atoms or formula(m.numbers) != traj.formula
                else "another atom order"
            )
            raise QdgapError(f"{m.path}: trained on {what}, the data is {traj.formula} ({traj.num_atoms} atoms)")
        recorded = m.record.get("data", {}).get("path")
        same_file = data_path is not None and recorded and Path(recorded).resolve() == Path(data_path).resolve()
        if same_file and m.data_sha256 != traj.sha256 and not allow_data_change:
            raise QdgapError(
                f"{data_path}: changed since {m.path.name} was trained on it (sha256 differs); "
                "pass --allow-data-change to use it anyway"
            )


def check_features(member: Member, traj: Trajectory) -> None:
    """Refuse data with an element the member's model has no input features for (a feature size mismatch included).

    Raises:
        QdgapError: naming the member and the elements.
    """
    from ase.data import chemical_symbols

    from qdgap.core.model.network import species_table

    mc = member.config.model
    table = species_table(mc.atom_features, mc.atom_input_features)
    missing = [int(z) for z in np.unique(traj.numbers) if z >= len(table) or not table[z].any()]
    if missing:
        raise QdgapError(
            f"{member.path}: its model takes {mc.atom_input_features} {mc.atom_features} features per atom, "
            f"which {', '.join(chemical_symbols[z] for z in missing)} of the data do not have"
        )


def select_frames(members: Sequence[Member], traj: Trajectory, which: str) -> np.ndarray:
    """Frame indices for ``--frames``: unseen (outside every member's labelled pool), test (any member's test split) or all.

    Pools are only meaningful for the data the members were trained on; on other
    data every frame is unseen.
    """
    if which not in FRAME_SETS:
        raise QdgapError(f"--frames must be one of {', '.join(FRAME_SETS)}, got {which!r}")
    all_frames = np.arange(traj.num_frames, dtype=np.int64)
    if which == "all":
        return all_frames
    trained_here = [m for m in members if m.data_sha256 == traj.sha256]
    if which == "test":
        if not trained_here:
            raise QdgapError("--frames test: the members were not trained on this data; use --frames all")
        return np.unique(np.concatenate([np.asarray(m.split["test"], dtype=np.int64) for m in trained_here]))
    pooled = [np.asarray(m.split[k], dtype=np.int64) for m in trained_here for k in ("train", "val", "test")]
    return np.setdiff1d(all_frames, np.concatenate(pooled)) if pooled else all_frames


def predict_ensemble(
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    cache_dir: Path | None,
    device: str = "cpu",
    backend: str | None = None,
    progress: Callable[[int], None] | None = None,
    stacked: bool | None = None,
    models: Sequence | None = None,
) -> EnsemblePrediction:
    """Predict ``frames`` of ``traj`` with every member's exported model.

    Args:
        members: finished members (``runs.load_members``).
        traj: the trajectory.
        frames: (F,) frame indices.
        cache_dir: graph cache folder.
        device: torch device for inference.
        backend: ``torchscript`` (``model.ts``) or ``onnxruntime`` (``model.onnx``); None: ``export.DEFAULT_BACKEND``.
        progress: called with the number of frames predicted, per member and batch.
        stacked: all members in one forward (``core.ensemble_forward``, from each ``best.pt``) instead of
            one exported model after another; None: on CUDA when no ``backend`` is asked for and the
            members stack (``ensemble_forward.use_stacked``).
        models: the members' models already loaded (``export.load_model`` with this ``backend`` and
            ``device``), one per member, so that a caller predicting often (``qdgap.ase.GapLogger``)
            loads and checks them once; None loads them here.

    Returns:
        Per-member predictions (M, F) in eV, with true gaps and times.
    """
    from qdgap.core.common.numerics import fast_cpu_math
    from qdgap.core.deploy.export import check_backend, load_model
    from qdgap.core.deploy.stacked import use_stacked
    from qdgap.core.graphs.build import load_or_build_graphs

    if stacked is None:
        stacked = backend is None and models is None and use_stacked(device, members)
    backend = check_backend(backend)

    fast_cpu_math()
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size == 0:
        raise QdgapError("no frames to predict (the selection is empty); try --frames all")
    dev = torch.device(device)
    if stacked:
        return _predict_stacked(members, traj, frames, cache_dir=cache_dir, device=dev, progress=progress)
    preds = np.empty((len(members), len(frames)), dtype=np.float32)
    graphs_by_config: dict = {}
    index = torch.from_numpy(frames).to(dev)
    for i, member in enumerate(members):
        key = tuple(sorted(vars(member.config.graph).items()))
        if key not in graphs_by_config:
            packed = load_or_build_graphs(traj, member.config.graph, cache_dir=cache_dir)
            graphs_by_config[key] = PackedGraphs(*(t.to(dev) for t in packed))
        graphs = graphs_by_config[key]
        model = load_model(member, backend=backend, device=dev) if models is None else models[i]
        edges_per_frame = float(graphs.edge_ptr[-1]) / max(1, graphs.num_frames)
        step = graphs_per_forward(dev.type, edges_per_frame, member.config.model.hidden_features)
        with torch.inference_mode():
            for start in range(0, len(frames), step):
                chunk = index[start : start + step]
                fault_point("forward")  # tests only: see qdgap/testing/faults.py
                out = model(*gather_frames(graphs, chunk))
                preds[i, start : start + len(chunk)] = out.float().cpu().numpy()  # device sync, once per batch
                if progress is not None:
                    progress(len(chunk))
    return EnsemblePrediction(
        frame_index=frames,
        time_fs=traj.time_fs[frames],
        gap_true_ev=traj.gap_ev[frames],
        gap_pred_ev=preds,
        seeds=np.asarray([m.seed for m in members], dtype=np.int64),
    )


def _predict_stacked(
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    cache_dir: Path | None,
    device: torch.device,
    progress: Callable[[int], None] | None,
) -> EnsemblePrediction:
    """``predict_ensemble`` with every member in each forward (``kernels.ensemble``)."""
    from qdgap.core.deploy.stacked import load_stacked
    from qdgap.core.graphs.build import load_or_build_graphs

    model = load_stacked(members, device=device)
    config = members[0].config
    packed = load_or_build_graphs(traj, config.graph, cache_dir=cache_dir)
    graphs = PackedGraphs(*(t.to(device) for t in packed))
    edges_per_frame = float(graphs.edge_ptr[-1]) / max(1, graphs.num_frames)
    # Each forward holds M members' features: the device's budget is shared among them.
    step = max(1, graphs_per_forward(device.type, edges_per_frame, config.model.hidden_features) // len(members))
    preds = np.empty((len(members), len(frames)), dtype=np.float32)
    index = torch.from_numpy(frames).to(device)
    with torch.inference_mode():
        for start in range(0, len(frames), step):
            chunk = index[start : start + step]
            fault_point("forward")  # tests only: see qdgap/testing/faults.py
            out = model(*gather_frames(graphs, chunk))  # (M, b)
            preds[:, start : start + len(chunk)] = out.float().cpu().numpy()  # device sync, once per batch
            if progress is not None:
                progress(len(members) * len(chunk))
    return EnsemblePrediction(
        frame_index=frames,
        time_fs=traj.time_fs[frames],
        gap_true_ev=traj.gap_ev[frames],
        gap_pred_ev=preds,
        seeds=np.asarray([m.seed for m in members], dtype=np.int64),
    )


def summarise(pred: EnsemblePrediction) -> dict[str, float | int | list[float]]:
    """Errors on the labelled frames: ensemble mean and each member (meV), and ±2 std coverage."""
    known = np.isfinite(pred.gap_true_ev)
    out: dict[str, float | int | list[float]] = {"n_labelled": int(known.sum())}
    if not known.any():
        return out
    y = pred.gap_true_ev[known].astype(np.float64)
    err_mean = pred.gap_mean_ev[known] - y
    err_members = pred.gap_pred_ev[:, known].astype(np.float64) - y
    member_rmse = rmse_mev(err_members, axis=1)
    out.update(
        ensemble_rmse_mev=rmse_mev(err_mean),
        ensemble_mae_mev=mae_mev(err_mean),
        member_rmse_mev=member_rmse.tolist(),
        member_mae_mev=mae_mev(err_members, axis=1).tolist(),
        best_member_rmse_mev=float(member_rmse.min()),
        worst_member_rmse_mev=float(member_rmse.max()),
        coverage_2std=coverage_ksigma(y, pred.gap_mean_ev[known], pred.gap_std_ev[known], 2.0),
    )
    return out


def baseline_report(pred: EnsemblePrediction, train_frames: np.ndarray, traj: Trajectory, *, members: int):
    """The ensemble beside the baselines built from its training labels, on the prediction's labelled frames.

    Args:
        pred: the ensemble's predictions.
        train_frames: (L,) the union of the members' train splits (validation and test frames are left out,
            as the members never fitted them); frames some member trained on are left out of the scores,
            where a baseline would read their own label.
        traj: the trajectory the labels come from.
        members: how many members that union is over (for the description).

    Returns:
        An ``analysis.baselines.BaselineReport``; None when no training frame has a label or no labelled
        frame is left to score.
    """
    from qdgap.core.analysis import baselines as bl

    train = np.unique(np.asarray(train_frames, np.int64))
    train = train[(train >= 0) & (train < traj.num_frames)]
    train = train[np.isfinite(traj.gap_ev[train])]
    keep = np.isfinite(pred.gap_true_ev) & ~np.isin(pred.frame_index, train)
    if train.size == 0 or not keep.any():
        return None
    xtb = traj.xtb_gap_ev  # a cheap gap of the frames, when `qdgap data xtb` computed one: the xtb_corrected row
    return bl.baseline_report(
        pred.time_fs[keep],
        pred.gap_true_ev[keep],
        pred.gap_mean_ev[keep],
        traj.time_fs[train],
        traj.gap_ev[train],
        label_source=f"the union of the {members} member{'s' if members > 1 else ''}' train splits ({train.size} frames)",
        xtb_ev=None if xtb is None else xtb[pred.frame_index[keep]],
        label_xtb_ev=None if xtb is None else xtb[train],
    )


def train_union(members: Sequence[Member]) -> np.ndarray:
    """(L,) int64: every frame some member trained on (the union of their train splits)."""
    parts = [np.asarray(m.split.get("train", []), np.int64) for m in members]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def write_predictions(
    pred: EnsemblePrediction, path: Path, *, attrs: dict, force: bool = True, calibrated=None
) -> None:
    """``predictions.h5`` (DESIGN.md) and ``predictions.csv`` beside it.

    ``calibrated`` (a ``calibration.Calibrated``) adds the calibrated std, the interval and the
    extrapolation flag beside the raw spread.
    """
    from qdgap.core.common import schema
    from qdgap.core.store.results import write_csv, write_results

    datasets = {
        schema.FRAME_INDEX: pred.frame_index,
        schema.TIME_FS: pred.time_fs,
        schema.GAP_TRUE_EV: pred.gap_true_ev.astype(np.float32),
        schema.GAP_PRED_EV: pred.gap_pred_ev,
        schema.GAP_MEAN_EV: pred.gap_mean_ev,
        schema.GAP_STD_EV: pred.gap_std_ev,
        schema.SEEDS: pred.seeds,
    }
    extra_columns = {}
    if calibrated is not None:
        extra_columns = {
            schema.GAP_STD_CALIBRATED_EV: calibrated.std_ev,
            schema.GAP_LO_EV: calibrated.lo_ev,
            schema.GAP_HI_EV: calibrated.hi_ev,
            schema.EXTRAPOLATING: calibrated.extrapolating.astype(bool),
        }
        datasets.update(extra_columns)
        attrs = {
            **attrs,
            schema.ATTR_INTERVAL_LEVEL: calibrated.level,
            schema.ATTR_INTERVAL_METHOD: calibrated.method,
            schema.ATTR_EXTRAPOLATION_THRESHOLD_EV: calibrated.threshold_std_ev,
        }
    write_results(
        path,
        datasets,
        fmt=schema.PREDICTIONS_FORMAT,
        version=schema.PREDICTIONS_VERSION,
        attrs={schema.ATTR_SEEDS: pred.seeds, **attrs},
        force=force,
    )
    columns = {
        "frame_index": pred.frame_index,
        "time_fs": pred.time_fs,
        "gap_true_ev": pred.gap_true_ev,
        "gap_mean_ev": pred.gap_mean_ev,
        "gap_std_ev": pred.gap_std_ev,
        **{k: (v.astype(int) if v.dtype == bool else v) for k, v in extra_columns.items()},
    }
    columns.update({f"gap_seed{s}_ev": pred.gap_pred_ev[i] for i, s in enumerate(pred.seeds)})
    write_csv(Path(path).with_suffix(".csv"), columns, force=True)


def runs_cache_dir(runs: Path) -> Path:
    """The graph cache shared by an ensemble's members and every later command."""
    runs = Path(runs)
    return (runs.parent if (runs / rf.CONFIG_JSON).exists() else runs) / rf.CACHE_DIR
