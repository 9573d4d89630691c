"""Feature Nullification Analysis over the whole ensemble: every member x frame x atom.

The batched kernel (``kernels.fna``) evaluates each frame with every atom
nullified in turn; this module runs it for every member's ``model.ts``,
keeps each finished member's numbers so an interrupted run resumes per
member, and reduces them to per-atom RMSEs against the true gaps.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qdgap.core import schema
from qdgap.core.data import Trajectory
from qdgap.core.errors import QdgapError
from qdgap.core.faults import fault_point
from qdgap.core.files import atomic_output
from qdgap.core.runs import Member
from qdgap.kernels.batch import PackedGraphs, gather_frames, graphs_per_forward
from qdgap.kernels.fna import MODES, fna_masked_gaps

log = logging.getLogger(__name__)

MEV_PER_EV = 1000.0
# Frames handed to the kernel at once; it chunks their masked copies itself and holds their embeddings
# (paper model: 1,879 rows x 256 float32 per frame, 123 MB for 64 frames).
FRAMES_PER_CALL = 64


@dataclass(frozen=True)
class FnaResult:
    """Masked predictions of M members on F frames of an N-atom trajectory (eV)."""

    frame_index: np.ndarray  # (F,) int64
    time_fs: np.ndarray  # (F,) float64
    gap_true_ev: np.ndarray  # (F,) float32, NaN where unknown
    atom_label: list[str]  # (N,)
    baseline_ev: np.ndarray  # (M, F) float32, unmasked
    masked_ev: np.ndarray  # (M, F, N) float32, atom n nullified
    seeds: np.ndarray  # (M,) int64

    def _labelled(self) -> np.ndarray:
        known = np.isfinite(self.gap_true_ev)
        if not known.any():
            raise QdgapError("none of the chosen frames has a true gap: FNA's RMSEs need labelled frames")
        return known

    @property
    def rmse_mev(self) -> np.ndarray:
        """(M, N) float64, meV: RMSE of each member's masked prediction against the true gaps."""
        known = self._labelled()
        err = self.masked_ev[:, known, :].astype(np.float64) - self.gap_true_ev[known, None]
        return np.sqrt((err**2).mean(axis=1)) * MEV_PER_EV

    @property
    def baseline_rmse_mev(self) -> np.ndarray:
        """(M,) float64, meV: RMSE of each member without masking."""
        known = self._labelled()
        err = self.baseline_ev[:, known].astype(np.float64) - self.gap_true_ev[known]
        return np.sqrt((err**2).mean(axis=1)) * MEV_PER_EV

    @property
    def mean_abs_shift_mev(self) -> np.ndarray:
        """(N,) float64, meV: mean |masked - unmasked| over members and frames."""
        return np.abs(self.masked_ev.astype(np.float64) - self.baseline_ev[:, :, None]).mean(axis=(0, 1)) * MEV_PER_EV


def chunk_for(device: torch.device, edges_per_frame: float, hidden: int) -> int:
    """Default masked copies per forward (``kernels.batch.graphs_per_forward``)."""
    return graphs_per_forward(device.type, edges_per_frame, hidden)


def run_fna(
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    mode: str = "full",
    chunk: int | None = None,
    device: str = "cpu",
    backend: str | None = None,
    cache_dir: Path | None = None,
    partial_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> FnaResult:
    """Nullify every atom of every chosen frame, for every member.

    Args:
        members: finished members.
        traj: the trajectory.
        frames: (F,) frame indices.
        mode: ``full`` or ``seed`` (see ``kernels.fna``).
        chunk: masked copies per forward; a device-dependent default if None.
        device: torch device.
        backend: ``torchscript`` or ``onnxruntime`` (``export.load_model``); None: ``export.DEFAULT_BACKEND``.
        cache_dir: graph cache folder.
        partial_dir: where each finished member's numbers are kept, so a rerun
            skips it; nothing is kept if None.
        progress: called with the number of masked evaluations done.

    Returns:
        The masked and unmasked predictions.
    """
    from qdgap.core.export import check_backend, load_model
    from qdgap.core.graphs import load_or_build_graphs

    backend = check_backend(backend)
    if mode not in MODES:
        raise QdgapError(f"--mask must be one of {', '.join(MODES)}, got {mode!r}")
    if chunk is not None and chunk < 1:
        raise QdgapError(f"--chunk must be at least 1, got {chunk}")
    from qdgap.core.model import fast_cpu_math

    fast_cpu_math()
    frames = np.asarray(frames, dtype=np.int64)
    if frames.size == 0:
        raise QdgapError("no frames chosen for FNA; try --frames all or a smaller --every")
    n = traj.num_atoms
    dev = torch.device(device)
    key = _partial_key(traj, frames, mode)
    baseline = np.empty((len(members), len(frames)), np.float32)
    masked = np.empty((len(members), len(frames), n), np.float32)
    graphs_by_config: dict = {}
    for i, member in enumerate(members):
        cached = _load_partial(partial_dir, member, key)
        if cached is not None:
            baseline[i], masked[i] = cached
            if progress is not None:
                progress(len(frames) * (n + 1))
            continue
        gkey = tuple(sorted(vars(member.config.graph).items()))
        if gkey not in graphs_by_config:
            packed = load_or_build_graphs(traj, member.config.graph, cache_dir=cache_dir)
            graphs_by_config[gkey] = PackedGraphs(*(t.to(dev) for t in packed))
        graphs = graphs_by_config[gkey]
        model = load_model(member, backend=backend, device=dev)
        edges_per_frame = float(graphs.edge_ptr[-1]) / max(1, graphs.num_frames)
        size = chunk or chunk_for(dev, edges_per_frame, member.config.model.hidden_features)
        index = torch.from_numpy(frames).to(dev)
        out = []
        for start in range(0, len(frames), FRAMES_PER_CALL):
            base = gather_frames(graphs, index[start : start + FRAMES_PER_CALL])
            fault_point("forward")  # tests only: see core/faults.py
            out.append(fna_masked_gaps(model, base, num_atoms=n, mode=mode, chunk_size=size, progress=progress).cpu())
        values = torch.cat(out).numpy()  # (F, N + 1)
        baseline[i], masked[i] = values[:, 0], values[:, 1:]
        _save_partial(partial_dir, member, key, baseline[i], masked[i])
    return FnaResult(
        frame_index=frames,
        time_fs=traj.time_fs[frames],
        gap_true_ev=traj.gap_ev[frames].astype(np.float32),
        atom_label=traj.atom_labels,
        baseline_ev=baseline,
        masked_ev=masked,
        seeds=np.asarray([m.seed for m in members], dtype=np.int64),
    )


# ==========================================================================
# Per-member partial results (resume)
# ==========================================================================


def _partial_key(traj: Trajectory, frames: np.ndarray, mode: str) -> str:
    h = hashlib.sha256()
    h.update(traj.sha256.encode())
    h.update(frames.tobytes())
    h.update(mode.encode())
    return h.hexdigest()[:16]


def _partial_path(partial_dir: Path, member: Member, key: str) -> Path:
    return Path(partial_dir) / f"seed{member.seed}-{member.model_sha256[:12]}-{key}.npz"


def _load_partial(partial_dir: Path | None, member: Member, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if partial_dir is None:
        return None
    path = _partial_path(partial_dir, member, key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["baseline_ev"], npz["masked_ev"]
    except (OSError, ValueError, KeyError):
        log.warning("%s: unreadable partial result; recomputing this member", path)
        return None


def _save_partial(partial_dir: Path | None, member: Member, key: str, baseline: np.ndarray, masked: np.ndarray) -> None:
    if partial_dir is None:
        return
    Path(partial_dir).mkdir(parents=True, exist_ok=True)
    with atomic_output(_partial_path(partial_dir, member, key), force=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, baseline_ev=baseline, masked_ev=masked)


# ==========================================================================
# Output: fna.h5 and average_rmse_results.csv
# ==========================================================================


def importance_table(result: FnaResult) -> dict[str, list]:
    """The columns of ``average_rmse_results.csv``, sorted by importance (most important first).

    ``rmse_mev_mean`` and ``rmse_mev_std`` are the ensemble mean and spread of the
    members' RMSEs with the atom nullified; ``baseline_rmse_mev`` the same
    without masking; ``delta_rmse_mev`` their difference (the importance);
    ``mean_abs_shift_mev`` how far the prediction moves at all.
    """
    rmse = result.rmse_mev
    mean, std = rmse.mean(axis=0), rmse.std(axis=0)
    base = float(result.baseline_rmse_mev.mean())
    order = np.argsort(-mean, kind="stable")
    shift = result.mean_abs_shift_mev
    return {
        "atom_label": [result.atom_label[i] for i in order],
        "rmse_mev_mean": mean[order].tolist(),
        "rmse_mev_std": std[order].tolist(),
        "baseline_rmse_mev": [base] * len(order),
        "delta_rmse_mev": (mean[order] - base).tolist(),
        "mean_abs_shift_mev": shift[order].tolist(),
        "rank": list(range(1, len(order) + 1)),
    }


def write_fna(result: FnaResult, path: Path, csv_path: Path, *, attrs: dict) -> dict[str, list]:
    """Write ``fna.h5`` (DESIGN.md) and the importance CSV; return the CSV's columns."""
    from qdgap.core.results import write_csv, write_results

    rmse = result.rmse_mev
    table = importance_table(result)
    write_results(
        path,
        {
            schema.FRAME_INDEX: result.frame_index,
            schema.TIME_FS: result.time_fs,
            schema.GAP_TRUE_EV: result.gap_true_ev,
            schema.ATOM_LABEL: list(result.atom_label),
            schema.BASELINE_EV: result.baseline_ev,
            schema.MASKED_EV: result.masked_ev,
            schema.RMSE_MEV: rmse,
            schema.RMSE_MEV_MEAN: rmse.mean(axis=0),
            schema.RMSE_MEV_STD: rmse.std(axis=0),
            schema.BASELINE_RMSE_MEV: result.baseline_rmse_mev,
            schema.SEEDS: result.seeds,
        },
        fmt=schema.FNA_FORMAT,
        version=schema.FNA_VERSION,
        attrs={schema.ATTR_SEEDS: result.seeds, **attrs},
    )
    write_csv(csv_path, table)
    return table
