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

from qdgap.core.analysis.importance import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_TOP_K,
    SCORES,
    GroupStats,
    ImportanceStats,
    frame_shift_mev,
    group_stats,
    importance_stats,
)
from qdgap.core.analysis.sites import atom_groups, site_classes
from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output
from qdgap.core.common.metrics import MEV_PER_EV, rmse_mev
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.store.runs import Member
from qdgap.kernels.batch import PackedGraphs, gather_frames, graphs_per_forward
from qdgap.kernels.fna import MODES, fna_masked_gaps
from qdgap.testing.faults import fault_point

log = logging.getLogger(__name__)

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
    numbers: np.ndarray | None = None  # (N,) int64, atomic numbers; for site classes and --xyz
    positions_ang: np.ndarray | None = None  # (F, N, 3) float32, Å, the chosen frames

    @property
    def has_labels(self) -> bool:
        """Whether any chosen frame has a true gap (the rmse score needs one)."""
        return bool(np.isfinite(self.gap_true_ev).any())

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
        return rmse_mev(err, axis=1)

    @property
    def baseline_rmse_mev(self) -> np.ndarray:
        """(M,) float64, meV: RMSE of each member without masking."""
        known = self._labelled()
        err = self.baseline_ev[:, known].astype(np.float64) - self.gap_true_ev[known]
        return rmse_mev(err, axis=1)

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
    stacked: bool | None = None,
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
        stacked: the members without a kept result all in one forward (``core.ensemble_forward``, from
            each ``best.pt``; ``chunk`` then counts the copies of one forward for all of them); None: on
            CUDA when no ``backend`` is asked for and the members stack (``ensemble_forward.use_stacked``).

    Returns:
        The masked and unmasked predictions.
    """
    from qdgap.core.deploy.export import check_backend, load_model
    from qdgap.core.deploy.stacked import use_stacked
    from qdgap.core.graphs.build import load_or_build_graphs

    if stacked is None:
        stacked = backend is None and use_stacked(device, members)
    backend = check_backend(backend)
    if mode not in MODES:
        raise QdgapError(f"--mask must be one of {', '.join(MODES)}, got {mode!r}")
    if chunk is not None and chunk < 1:
        raise QdgapError(f"--chunk must be at least 1, got {chunk}")
    from qdgap.core.common.numerics import fast_cpu_math

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
    pending = []  # members without a kept result
    for i, member in enumerate(members):
        cached = _load_partial(partial_dir, member, key)
        if cached is not None:
            baseline[i], masked[i] = cached
            if progress is not None:
                progress(len(frames) * (n + 1))
        else:
            pending.append(i)
    if stacked and pending:
        todo = [members[i] for i in pending]
        values = _fna_stacked(
            todo, traj, frames, mode=mode, chunk=chunk, device=dev, cache_dir=cache_dir, progress=progress
        )
        for j, i in enumerate(pending):
            baseline[i], masked[i] = values[j, :, 0], values[j, :, 1:]
            _save_partial(partial_dir, members[i], key, baseline[i], masked[i])
        pending = []
    for i in pending:
        member = members[i]
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
            fault_point("forward")  # tests only: see qdgap/testing/faults.py
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
        numbers=np.asarray(traj.numbers, dtype=np.int64),
        positions_ang=traj.positions_ang[frames],
    )


def _fna_stacked(
    members: Sequence[Member],
    traj: Trajectory,
    frames: np.ndarray,
    *,
    mode: str,
    chunk: int | None,
    device: torch.device,
    cache_dir: Path | None,
    progress: Callable[[int], None] | None,
) -> np.ndarray:
    """``run_fna``'s kernel for all ``members`` in each forward; (M, F, N + 1) float32, eV."""
    from qdgap.core.deploy.stacked import load_stacked
    from qdgap.core.graphs.build import load_or_build_graphs
    from qdgap.kernels.ensemble import ensemble_fna_masked_gaps

    model = load_stacked(members, device=device)
    config = members[0].config
    packed = load_or_build_graphs(traj, config.graph, cache_dir=cache_dir)
    graphs = PackedGraphs(*(t.to(device) for t in packed))
    edges_per_frame = float(graphs.edge_ptr[-1]) / max(1, graphs.num_frames)
    # Each forward holds M members' copies: the device's budget is shared among them.
    size = chunk or max(1, chunk_for(device, edges_per_frame, config.model.hidden_features) // len(members))
    index = torch.from_numpy(frames).to(device)
    out = []
    for start in range(0, len(frames), FRAMES_PER_CALL):
        base = gather_frames(graphs, index[start : start + FRAMES_PER_CALL])
        fault_point("forward")  # tests only: see qdgap/testing/faults.py
        kw = dict(num_atoms=traj.num_atoms, mode=mode, chunk_size=size, progress=progress)
        out.append(ensemble_fna_masked_gaps(model, base, **kw).cpu())  # device sync, once per block of frames
    return torch.cat(out, 1).numpy()


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


SCORE_CHOICES = ("auto", *SCORES)  # auto: rmse when any chosen frame has a true gap, else shift
GROUPS_CSV = "importance_groups.csv"  # written beside average_rmse_results.csv


@dataclass(frozen=True)
class FnaStatistics:
    """The importance statistics of one FNA run (``core/analysis/importance.py``).

    Attributes:
        ranked_by: ``rmse`` or ``shift``, the score that orders the table, the groups and the report.
        rmse: the paired RMSE importance; None when no chosen frame has a true gap.
        shift: the mean absolute shift, which needs no labels.
        site_class: N site names (``sites.site_classes``); None without positions.
        groups: species and site-class groups of the ranking score.
    """

    ranked_by: str
    rmse: ImportanceStats | None
    shift: ImportanceStats
    site_class: list[str] | None
    groups: GroupStats

    @property
    def ranking(self) -> ImportanceStats:
        return self.rmse if self.ranked_by == "rmse" and self.rmse is not None else self.shift


def fna_statistics(
    result: FnaResult,
    *,
    score: str = "auto",
    n_boot: int = DEFAULT_BOOTSTRAP,
    top_k: int = DEFAULT_TOP_K,
    correction: str = "holm",
    seed: int = 0,
) -> FnaStatistics:
    """Intervals, p-values, rank stability and groups for both scores (``core/analysis/importance.py``).

    Args:
        result: the masked predictions.
        score: ``auto`` (rmse with labels, else shift), ``rmse`` or ``shift``: which score ranks.
        n_boot, top_k, correction, seed: see ``importance.importance_stats``.

    Raises:
        QdgapError: ``score`` is rmse but no chosen frame has a true gap, or a bad option.
    """
    if score not in SCORE_CHOICES:
        raise QdgapError(f"--score must be one of {', '.join(SCORE_CHOICES)}, got {score!r}")
    if score == "rmse" and not result.has_labels:
        raise QdgapError("none of the chosen frames has a true gap: --score rmse needs labels; use --score shift")
    ranked_by = ("rmse" if result.has_labels else "shift") if score == "auto" else score
    opts = dict(seeds=result.seeds, n_boot=n_boot, top_k=top_k, correction=correction, seed=seed)
    rmse = None
    if result.has_labels:
        rmse = importance_stats(result.masked_ev, result.baseline_ev, result.gap_true_ev, score="rmse", **opts)
    shift = importance_stats(result.masked_ev, result.baseline_ev, score="shift", **opts)
    sites = None
    if result.numbers is not None and result.positions_ang is not None:
        sites = site_classes(result.numbers, result.positions_ang)
    ranking = rmse if ranked_by == "rmse" else shift
    groups = group_stats(ranking, atom_groups(result.atom_label, sites))
    return FnaStatistics(ranked_by=ranked_by, rmse=rmse, shift=shift, site_class=sites, groups=groups)


def importance_table(result: FnaResult, stats: FnaStatistics | None = None) -> dict[str, list]:
    """The columns of ``average_rmse_results.csv``, most important first by ``stats.ranked_by``.

    ``rmse_mev_mean`` and ``rmse_mev_std`` are the ensemble mean and spread of the
    members' RMSEs with the atom nullified; ``baseline_rmse_mev`` the same
    without masking; ``delta_rmse_mev`` their difference; ``mean_abs_shift_mev``
    how far the prediction moves at all (empty RMSE cells without labels). Then
    the statistics: ``ranked_by`` (the score that orders the rows),
    ``importance_mev`` (paired per member, then averaged) with its interval,
    the test against 0 (``p_value_vs_zero``, ``p_adjusted_vs_zero``, ``nonzero``),
    the excess over the median atom (``standout_mev`` with its interval,
    ``p_value_vs_median``, ``p_adjusted_vs_median``, ``stands_out``), the rank
    interval (``rank_lo``, ``rank_hi``) and ``rank_stability``, the same for the
    shift, and the atom's ``site_class``.
    """
    stats = stats or fna_statistics(result)
    n = len(result.atom_label)
    nan = np.full(n, np.nan)
    if result.has_labels:
        rmse = result.rmse_mev
        mean, std = rmse.mean(axis=0), rmse.std(axis=0)
        base = float(result.baseline_rmse_mev.mean())
    else:
        mean, std, base = nan, nan, float("nan")
    r, sh = stats.rmse, stats.shift
    order = np.argsort(-stats.ranking.mean_mev, kind="stable")

    def col(values) -> list:
        return np.asarray(values)[order].tolist()

    return {
        "atom_label": [result.atom_label[i] for i in order],
        "rmse_mev_mean": col(mean),
        "rmse_mev_std": col(std),
        "baseline_rmse_mev": [base] * n,
        "delta_rmse_mev": col(mean - base),
        "mean_abs_shift_mev": col(result.mean_abs_shift_mev),
        "rank": list(range(1, n + 1)),
        "ranked_by": [stats.ranked_by] * n,
        "importance_mev": col(r.mean_mev if r else nan),
        "importance_ci_lo_mev": col(r.ci_mev[:, 0] if r else nan),
        "importance_ci_hi_mev": col(r.ci_mev[:, 1] if r else nan),
        "p_value_vs_zero": col(r.p_value if r else nan),
        "p_adjusted_vs_zero": col(r.p_adjusted if r else nan),
        "nonzero": col(r.significant if r else np.zeros(n, bool)),
        "standout_mev": col(r.excess_mev if r else nan),
        "standout_ci_lo_mev": col(r.excess_ci_mev[:, 0] if r else nan),
        "standout_ci_hi_mev": col(r.excess_ci_mev[:, 1] if r else nan),
        "p_value_vs_median": col(r.excess_p_value if r else nan),
        "p_adjusted_vs_median": col(r.excess_p_adjusted if r else nan),
        "stands_out": col(r.stands_out if r else np.zeros(n, bool)),
        "rank_lo": col(r.rank_ci[:, 0] if r else nan),
        "rank_hi": col(r.rank_ci[:, 1] if r else nan),
        "rank_stability": col(r.rank_stability if r else nan),
        "shift_ci_lo_mev": col(sh.ci_mev[:, 0]),
        "shift_ci_hi_mev": col(sh.ci_mev[:, 1]),
        "shift_p_value": col(sh.p_value),
        "shift_p_adjusted": col(sh.p_adjusted),
        "shift_significant": col(sh.significant),
        "shift_standout_mev": col(sh.excess_mev),
        "shift_p_adjusted_vs_median": col(sh.excess_p_adjusted),
        "shift_stands_out": col(sh.stands_out),
        "shift_rank_lo": col(sh.rank_ci[:, 0]),
        "shift_rank_hi": col(sh.rank_ci[:, 1]),
        "shift_rank_stability": col(sh.rank_stability),
        "site_class": col(stats.site_class if stats.site_class is not None else [""] * n),
    }


def group_table(result: FnaResult, stats: FnaStatistics) -> dict[str, list]:
    """The columns of ``importance_groups.csv``: per species and site class, the ranking score's
    mean and sum over the group's atoms with intervals, and the one-sided p-value of the mean."""
    g = stats.groups
    return {
        "group": list(g.label),
        "kind": ["site" if " " in lab else "species" for lab in g.label],
        "n_atoms": g.n_atoms.tolist(),
        "ranked_by": [stats.ranked_by] * len(g.label),
        "mean_mev": g.mean_mev.tolist(),
        "mean_ci_lo_mev": g.ci_mev[:, 0].tolist(),
        "mean_ci_hi_mev": g.ci_mev[:, 1].tolist(),
        "sum_mev": g.sum_mev.tolist(),
        "sum_ci_lo_mev": g.sum_ci_mev[:, 0].tolist(),
        "sum_ci_hi_mev": g.sum_ci_mev[:, 1].tolist(),
        "p_value": g.p_value.tolist(),
        "p_adjusted": g.p_adjusted.tolist(),
        "significant": g.significant.tolist(),
        "atoms": [" ".join(result.atom_label[i] for i in a) for a in g.atoms],
    }


def statistics_datasets(result: FnaResult, stats: FnaStatistics) -> tuple[dict[str, np.ndarray | list], dict]:
    """The datasets and attrs ``fna.h5`` gains for the statistics (``schema``: IMPORTANCE_MEV and after)."""
    m, _, n = result.masked_ev.shape
    r, sh, g = stats.rmse, stats.shift, stats.groups

    def nan(*shape: int) -> np.ndarray:
        return np.full(shape, np.nan)

    data: dict[str, np.ndarray | list] = {
        schema.IMPORTANCE_MEV: r.per_member_mev if r else nan(m, n),
        schema.IMPORTANCE_MEAN_MEV: r.mean_mev if r else nan(n),
        schema.IMPORTANCE_CI_MEV: r.ci_mev if r else nan(n, 2),
        schema.P_VALUE_VS_ZERO: r.p_value if r else nan(n),
        schema.P_ADJUSTED_VS_ZERO: r.p_adjusted if r else nan(n),
        schema.NONZERO: r.significant if r else np.zeros(n, bool),
        schema.RANK_STABILITY: r.rank_stability if r else nan(n),
        schema.STANDOUT_MEV: r.excess_mev if r else nan(n),
        schema.STANDOUT_CI_MEV: r.excess_ci_mev if r else nan(n, 2),
        schema.P_VALUE_VS_MEDIAN: r.excess_p_value if r else nan(n),
        schema.P_ADJUSTED_VS_MEDIAN: r.excess_p_adjusted if r else nan(n),
        schema.STANDS_OUT: r.stands_out if r else np.zeros(n, bool),
        schema.RANK_CI: r.rank_ci if r else np.zeros((n, 2), np.int64),
        schema.SHIFT_MEV: sh.per_member_mev,
        schema.SHIFT_MEAN_MEV: sh.mean_mev,
        schema.SHIFT_CI_MEV: sh.ci_mev,
        schema.SHIFT_P_VALUE: sh.p_value,
        schema.SHIFT_P_ADJUSTED: sh.p_adjusted,
        schema.SHIFT_SIGNIFICANT: sh.significant,
        schema.SHIFT_RANK_STABILITY: sh.rank_stability,
        schema.SHIFT_STANDOUT_MEV: sh.excess_mev,
        schema.SHIFT_STANDOUT_CI_MEV: sh.excess_ci_mev,
        schema.SHIFT_P_VALUE_VS_MEDIAN: sh.excess_p_value,
        schema.SHIFT_P_ADJUSTED_VS_MEDIAN: sh.excess_p_adjusted,
        schema.SHIFT_STANDS_OUT: sh.stands_out,
        schema.SHIFT_RANK_CI: sh.rank_ci,
        schema.GROUP_LABEL: list(g.label),
        schema.GROUP_NUM_ATOMS: g.n_atoms,
        schema.GROUP_MEAN_MEV: g.mean_mev,
        schema.GROUP_MEAN_CI_MEV: g.ci_mev,
        schema.GROUP_SUM_MEV: g.sum_mev,
        schema.GROUP_SUM_CI_MEV: g.sum_ci_mev,
        schema.GROUP_P_VALUE: g.p_value,
        schema.GROUP_P_ADJUSTED: g.p_adjusted,
        schema.GROUP_SIGNIFICANT: g.significant,
    }
    if stats.site_class is not None:
        data[schema.SITE_CLASS] = list(stats.site_class)
    attrs = {schema.ATTR_RANKED_BY: stats.ranked_by, **sh.attrs("shift")}
    if r is not None:
        attrs.update(r.attrs("importance"))
    return data, attrs


def write_fna(
    result: FnaResult,
    path: Path,
    csv_path: Path,
    *,
    attrs: dict,
    stats: FnaStatistics | None = None,
    groups_csv: Path | None = None,
) -> dict[str, list]:
    """Write ``fna.h5`` (DESIGN.md), the importance CSV and its groups companion; return the CSV's columns.

    Args:
        result: the masked predictions.
        path: ``fna.h5``.
        csv_path: ``average_rmse_results.csv``.
        attrs: provenance.
        stats: the statistics (``fna_statistics``); computed with its defaults if None.
        groups_csv: default ``importance_groups.csv`` beside ``csv_path``.
    """
    from qdgap.core.store.results import write_csv, write_results

    stats = stats or fna_statistics(result)
    m, _, n = result.masked_ev.shape
    rmse = result.rmse_mev if result.has_labels else np.full((m, n), np.nan)
    base_rmse = result.baseline_rmse_mev if result.has_labels else np.full(m, np.nan)
    table = importance_table(result, stats)
    extra, extra_attrs = statistics_datasets(result, stats)
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
            schema.BASELINE_RMSE_MEV: base_rmse,
            schema.SEEDS: result.seeds,
            **extra,
        },
        fmt=schema.FNA_FORMAT,
        version=schema.FNA_VERSION,
        attrs={schema.ATTR_SEEDS: result.seeds, **extra_attrs, **attrs},
    )
    write_csv(csv_path, table)
    write_csv(groups_csv or Path(csv_path).with_name(GROUPS_CSV), group_table(result, stats))
    return table


def write_importance_xyz(result: FnaResult, traj: Trajectory, path: Path) -> None:
    """Every FNA frame as extended XYZ with a per-atom ``importance`` array (meV), for ASE, OVITO, VMD.

    ``importance`` is the frame's ensemble-mean |masked - unmasked| prediction
    (``importance.frame_shift_mev``); each frame's info holds its ``frame_index``,
    ``time_fs``, the ensemble-mean unmasked ``gap_mean_ev`` and, where known, ``gap_true_ev``.
    """
    from qdgap.core.store.results import write_extxyz

    cell = np.asarray(traj.cell_ang)
    cell = cell[result.frame_index] if cell.ndim == 3 else np.broadcast_to(cell, (len(result.frame_index), 3, 3))
    pred = result.baseline_ev.astype(np.float64).mean(axis=0)
    info = [
        {
            schema.FRAME_INDEX: int(f),
            schema.TIME_FS: float(t),
            schema.GAP_MEAN_EV: float(p),
            **({schema.GAP_TRUE_EV: float(g)} if np.isfinite(g) else {}),
        }
        for f, t, p, g in zip(result.frame_index, result.time_fs, pred, result.gap_true_ev, strict=True)
    ]
    write_extxyz(
        path,
        traj.numbers,
        traj.positions_ang[result.frame_index],
        cell_ang=cell,
        pbc=traj.pbc,
        arrays={schema.XYZ_IMPORTANCE: frame_shift_mev(result.masked_ev, result.baseline_ev)},
        info=info,
    )
