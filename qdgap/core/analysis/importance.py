"""How far to trust an atom's FNA importance: paired scores, bootstrap intervals, p-values, groups.

Pure functions on FNA's arrays (``masked_ev`` (M, F, N), ``baseline_ev`` (M, F),
the true gaps (F,)); no file I/O. Two scores, each per member m and atom a in meV:

* ``rmse``: m's RMSE against the true gaps with a nullified, minus m's own unmasked
  RMSE on the same frames. Pairing within a member cancels the member's quality,
  which otherwise dominates the spread (members differ by tens of meV, atoms by a
  few). Tested against 0: does nullifying the atom make the prediction worse?
* ``shift``: m's mean |masked - unmasked| over the frames. Needs no labels. It is
  never negative, so it is tested against the ensemble's own noise instead of 0:
  m's mean |unmasked - ensemble mean|. Significant means nullifying the atom moves
  the prediction further than the members disagree among themselves.

The ensemble score is the mean over members. Its uncertainty comes from one
bootstrap that resamples both frames and members. MD frames are correlated, so
frames are drawn in circular blocks of consecutive FNA frames. The block length,
in FNA frames, comes from the autocovariance of the true gap (of the ensemble-mean
prediction when there are no labels) by Politis and White's rule (``block_length``). Members
are drawn by seed, and copies of one seed count as one member. An ensemble listed
twice then gives the same interval as the ensemble listed once.
The p-value is one-sided, from the bootstrap standard error (normal approximation).
It is corrected for testing every atom by Holm (family-wise error; the default)
or Benjamini-Hochberg (false discovery rate).

Every atom matters a little, so with enough frames every atom passes the test
against the null (67 of 67 on the real data). What a chemist asks is which atoms
matter more than the rest: an atom *stands out* when its score minus the median
score over all atoms is above 0 by the same one-sided, corrected test. The excess
is taken inside every bootstrap replicate (same members, same frame blocks for
every atom), so the noise the atoms share cancels. Each atom's rank interval is
the central ``confidence`` range of its rank over the replicates.

How often an atom makes the top k of a re-trained ensemble (``rank_stability``) and
how much of the top k two re-trained ensembles share (``redraw_overlap``) come from
simulated re-draws (``ranking.simulate_redraws``), not from the replicates: checked
against disjoint ensembles of pooled members (``bench/bench_fna_redraw.py``), the
replicates overstated the top-10 share by 10-21 points on the demo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qdgap.core.analysis.bootstrap import block_length, block_weights
from qdgap.core.analysis.ranking import (
    rank_interval,
    ranks_of,
    redraw_agreement,
    replicate_agreement,
    simulate_redraws,
)
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.metrics import MEV_PER_EV, weighted_mae_mev, weighted_rmse_mev

SCORES = ("rmse", "shift")
CORRECTIONS = ("holm", "bh")
DEFAULT_BOOTSTRAP = 2000  # replicates; the p-values use the bootstrap's std, so they resolve below 1 / B
MIN_BOOTSTRAP = 100
DEFAULT_TOP_K = 10  # rank_stability: how often an atom is among the top k
ALPHA = 0.05  # family-wise (holm) or false-discovery (bh) level
CONFIDENCE = 0.95  # of the intervals
_REPLICATES_PER_CHUNK_BYTES = 64 * 2**20  # bounds the (B, M, N) work array


@dataclass(frozen=True)
class ImportanceStats:
    """One score's per-atom importance with its bootstrap uncertainty (M members, N atoms, B replicates).

    Attributes:
        score: ``rmse`` or ``shift``.
        per_member_mev: (M, N) float64, meV, each member's score on all frames.
        mean_mev: (N,) float64, meV, the ensemble score (mean over distinct seeds).
        ci_mev: (N, 2) float64, meV, interval at ``confidence``: mean -/+ z ``std_err_mev``.
        std_err_mev: (N,) float64, meV, bootstrap standard error (``_std_err``).
        null_mev: meV, the level the p-value tests against: 0 for ``rmse``, the
            ensemble's mean |member - ensemble mean| for ``shift``.
        p_value: (N,) float64, one-sided, score > null; NaN where untestable.
        p_adjusted: (N,) float64, ``p_value`` after ``correction`` over the N atoms.
        significant: (N,) bool, ``p_adjusted`` <= ``alpha``.
        rank_stability: (N,) float64, fraction of simulated re-trained ensembles (``ranking.simulate_redraws``,
            same frames, same number of members) with the atom among the top ``top_k``; with one member, of
            the frame bootstrap's replicates.
        excess_mev: (N,) float64, meV, ``mean_mev`` minus its median over the N atoms.
        excess_ci_mev: (N, 2) float64, meV, its interval at ``confidence`` (normal, bootstrap standard error).
        excess_p_value: (N,) float64, one-sided, excess > 0 (the atom stands out from the median atom).
        excess_p_adjusted: (N,) float64, ``excess_p_value`` after ``correction`` over the N atoms.
        stands_out: (N,) bool, ``excess_p_adjusted`` <= ``alpha``.
        rank: (N,) int64, 1 = most important by ``mean_mev``.
        rank_ci: (N, 2) int64, the central ``confidence`` range of the atom's rank over the replicates.
        redraw_overlap: what to expect of two re-trained ensembles: the mean fraction of the top ``top_k`` that
            two simulated re-draws share (``ranking.redraw_agreement``; with one member, two bootstrap replicates).
        replicates_mev: (B, N) float64, meV, bootstrap replicates of ``mean_mev``, members and frames resampled.
        frame_replicates_mev: (B, N) float64, meV, the same with frames resampled only.
        unit_mev: (U, N) float64, meV, each distinct member's score (copies of a seed averaged).
        null_replicates_mev, null_frame_replicates_mev: (B,) float64, meV, the same for ``null_mev``.
        null_unit_mev: (U,) float64, meV.
        n_frames: frames the score was computed on.
        n_members: distinct member seeds.
        block_frames: bootstrap block length, in FNA frames.
        block_source: the series whose autocorrelation chose it.
    """

    score: str
    per_member_mev: np.ndarray
    mean_mev: np.ndarray
    ci_mev: np.ndarray
    std_err_mev: np.ndarray
    null_mev: float
    p_value: np.ndarray
    p_adjusted: np.ndarray
    significant: np.ndarray
    rank_stability: np.ndarray
    excess_mev: np.ndarray
    excess_ci_mev: np.ndarray
    excess_p_value: np.ndarray
    excess_p_adjusted: np.ndarray
    stands_out: np.ndarray
    rank: np.ndarray
    rank_ci: np.ndarray
    redraw_overlap: float
    replicates_mev: np.ndarray
    frame_replicates_mev: np.ndarray
    unit_mev: np.ndarray
    null_replicates_mev: np.ndarray
    null_frame_replicates_mev: np.ndarray
    null_unit_mev: np.ndarray
    n_frames: int
    n_members: int
    block_frames: int
    block_source: str
    n_boot: int
    top_k: int
    alpha: float
    confidence: float
    correction: str
    seed: int

    def attrs(self, prefix: str) -> dict[str, object]:
        """How the statistics were made, as HDF5 attrs named ``<prefix>_...``."""
        return {
            f"{prefix}_score": self.score,
            f"{prefix}_null_mev": self.null_mev,
            f"{prefix}_n_frames": self.n_frames,
            f"{prefix}_n_members": self.n_members,
            f"{prefix}_block_frames": self.block_frames,
            f"{prefix}_block_source": self.block_source,
            f"{prefix}_bootstrap": self.n_boot,
            f"{prefix}_top_k": self.top_k,
            f"{prefix}_redraw_top_k_overlap": self.redraw_overlap,
            f"{prefix}_alpha": self.alpha,
            f"{prefix}_confidence": self.confidence,
            f"{prefix}_correction": self.correction,
            f"{prefix}_seed": self.seed,
        }


@dataclass(frozen=True)
class GroupStats:
    """Importance of G groups of atoms (species, site classes), from the atoms' bootstrap replicates.

    Attributes:
        label: G names (``Cd``, ``Se surface``, ``Cl bridging``, ...).
        atoms: G arrays of atom indices.
        mean_mev: (G,) float64, meV, the group's mean atom score.
        ci_mev: (G, 2) float64, meV, its interval (normal, from the bootstrap standard error).
        sum_mev: (G,) float64, meV, the group's summed score (mean x size).
        sum_ci_mev: (G, 2) float64, meV, its interval.
        p_value, p_adjusted: (G,) float64, one-sided, mean > the score's null; corrected over the G groups.
        significant: (G,) bool.
    """

    label: list[str]
    atoms: list[np.ndarray]
    mean_mev: np.ndarray
    ci_mev: np.ndarray
    sum_mev: np.ndarray
    sum_ci_mev: np.ndarray
    p_value: np.ndarray
    p_adjusted: np.ndarray
    significant: np.ndarray

    @property
    def n_atoms(self) -> np.ndarray:
        """(G,) int64."""
        return np.asarray([len(a) for a in self.atoms], dtype=np.int64)


# ==========================================================================
# The statistics
# ==========================================================================


def importance_stats(
    masked_ev: np.ndarray,
    baseline_ev: np.ndarray,
    gap_true_ev: np.ndarray | None = None,
    *,
    score: str = "rmse",
    seeds: np.ndarray | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    block_frames: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    correction: str = "holm",
    seed: int = 0,
) -> ImportanceStats:
    """Per-atom importance of one score, with a block bootstrap over frames and members.

    Args:
        masked_ev: (M, F, N) eV, prediction of member m on frame f with atom n nullified.
        baseline_ev: (M, F) eV, the unmasked predictions.
        gap_true_ev: (F,) eV, NaN where unknown; ``rmse`` uses the labelled frames only.
        score: ``rmse`` or ``shift`` (module docstring).
        seeds: (M,) member seeds; members sharing a seed are one member. Default: all distinct.
        n_boot: bootstrap replicates.
        block_frames: bootstrap block length in FNA frames; None: from the autocorrelation.
        top_k: ``rank_stability`` counts how often an atom is among the top k.
        alpha: significance level after the correction.
        confidence: of the intervals.
        correction: ``holm`` or ``bh`` (Benjamini-Hochberg).
        seed: of the bootstrap's random draws; the same seed gives the same numbers.

    Raises:
        QdgapError: an unknown score or correction, too few replicates, or ``rmse`` without labels.
    """
    masked = np.asarray(masked_ev)
    baseline = np.asarray(baseline_ev)
    if masked.ndim != 3 or baseline.shape != masked.shape[:2]:
        raise ValueError(f"masked_ev must be (M, F, N) and baseline_ev (M, F); got {masked.shape}, {baseline.shape}")
    m, f, n = masked.shape
    if score not in SCORES:
        raise QdgapError(f"--score must be one of {', '.join(SCORES)}, got {score!r}")
    if correction not in CORRECTIONS:
        raise QdgapError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if n_boot < MIN_BOOTSTRAP:
        raise QdgapError(f"--bootstrap must be at least {MIN_BOOTSTRAP}, got {n_boot}")
    if top_k < 1:
        raise QdgapError(f"--top-k must be at least 1, got {top_k}")
    if m == 0 or f == 0 or n == 0:
        raise QdgapError("FNA statistics need at least one member, frame and atom")
    seeds = np.arange(m) if seeds is None else np.asarray(seeds)
    unit_of, units = _member_units(seeds)

    if score == "rmse":
        true = np.full(f, np.nan) if gap_true_ev is None else np.asarray(gap_true_ev, np.float64)
        known = np.isfinite(true)
        if not known.any():
            raise QdgapError("none of the chosen frames has a true gap: the rmse score needs labels; use --score shift")
        true = true[known]
        masked_err = masked[:, known, :].astype(np.float64) - true[None, :, None]  # (M, F', N) eV
        base_err = baseline[:, known].astype(np.float64) - true[None, :]  # (M, F') eV
        series, source = true, "true gap"

        def per_frame_score(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # (B, M, N) paired importance and (B, M) null (0)
            imp = weighted_rmse_mev(masked_err, w) - weighted_rmse_mev(base_err, w)[:, :, None]
            return imp, np.zeros(imp.shape[:2])

    else:
        shift = masked.astype(np.float64) - baseline[:, :, None].astype(np.float64)  # (M, F, N) eV
        unit_mean = _unit_average(baseline.astype(np.float64)[None], unit_of, units)[0]  # (U, F)
        ensemble = unit_mean.mean(axis=0)  # (F,) eV
        noise = baseline.astype(np.float64) - ensemble[None]  # (M, F) eV, member minus ensemble mean
        series, source = ensemble, "ensemble-mean prediction"

        def per_frame_score(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return weighted_mae_mev(shift, w), weighted_mae_mev(noise, w)

    nf = len(series)
    block = block_length(series) if block_frames is None else int(block_frames)
    if not 1 <= block <= nf:
        raise QdgapError(f"the bootstrap block must be 1 to {nf} frames, got {block}")

    # Point estimate: every frame once, every distinct seed once.
    full_imp, full_null = per_frame_score(np.ones((1, nf)))
    per_member = full_imp[0]
    mean = _unit_average(full_imp, unit_of, units)[0].mean(axis=0)
    null = float(_unit_average(full_null[:, :, None], unit_of, units)[0].mean())

    unit_score = _unit_average(full_imp, unit_of, units)[0]  # (U, N)
    unit_null = _unit_average(full_null[:, :, None], unit_of, units)[0, :, 0]  # (U,)

    rng = np.random.default_rng(seed)
    frame_w = block_weights(nf, block, n_boot, rng)  # (B, F')
    unit_w = rng.multinomial(units, np.full(units, 1.0 / units), size=n_boot) / units  # (B, U)
    reps, frame_reps = np.empty((n_boot, n)), np.empty((n_boot, n))
    null_reps, null_frame_reps = np.empty(n_boot), np.empty(n_boot)
    step = max(1, _REPLICATES_PER_CHUNK_BYTES // (8 * m * (n + 1)))
    for lo in range(0, n_boot, step):
        hi = min(n_boot, lo + step)
        imp, nul = per_frame_score(frame_w[lo:hi])
        imp_u = _unit_average(imp, unit_of, units)  # (b, U, N)
        nul_u = _unit_average(nul[:, :, None], unit_of, units)[..., 0]  # (b, U)
        w = unit_w[lo:hi, None, :]  # (b, 1, U)
        reps[lo:hi] = (w @ imp_u)[:, 0]
        null_reps[lo:hi] = (w @ nul_u[:, :, None])[:, 0, 0]
        frame_reps[lo:hi] = imp_u.mean(axis=1)
        null_frame_reps[lo:hi] = nul_u.mean(axis=1)

    se = _std_err(reps, frame_reps, unit_score)
    stat_se = _std_err(
        reps - null_reps[:, None], frame_reps - null_frame_reps[:, None], unit_score - unit_null[:, None]
    )
    ci = _normal_interval(mean, se, confidence, floor=0.0 if score == "shift" else None)
    testable = (nf >= 2 or units >= 2) and not (score == "shift" and units < 2)
    p = _one_sided_p(mean - null, stat_se) if testable else np.full(n, np.nan)
    p_adj = adjust_p(p, correction)
    k = min(top_k, n)
    # What a re-trained ensemble would rank: simulated re-draws (ranking.simulate_redraws), not bootstrap
    # replicates, which agree with this ensemble more than re-trained ensembles do. One member has no member
    # noise to draw from: then the frame bootstrap's replicates stand in.
    redraws = simulate_redraws(unit_score, draws=n_boot, seed=seed) if units >= 2 else reps
    stability = np.mean(ranks_of(redraws) <= k, axis=0)

    # Standing out: the excess over the median atom, within each replicate, so that the atoms share its
    # members and frame blocks (the noise common to all atoms cancels).
    excess = _over_median(mean)
    excess_se = _std_err(_over_median(reps), _over_median(frame_reps), _over_median(unit_score))
    excess_ci = _normal_interval(excess, excess_se, confidence, floor=None)
    # Student's t: with few members the standard error is itself uncertain, and the normal tail let 4 of 20
    # synthetic ensembles without any planted atom (10 members) show one standing out after Holm (the test
    # against 0 is left as it was). Its degrees of freedom (Welch-Satterthwaite) weigh the members' share of the
    # variance (U - 1) against the frames' (blocks - 1), so 3 members on 200 frames are not held to t(2).
    df = _welch_df(_over_median(reps), _over_median(frame_reps), _over_median(unit_score), max(1, nf // block))
    p_out = _one_sided_p(excess, excess_se, df=df) if nf >= 2 or units >= 2 else np.full(n, np.nan)
    p_out_adj = adjust_p(p_out, correction)
    return ImportanceStats(
        score=score,
        per_member_mev=per_member,
        mean_mev=mean,
        ci_mev=ci,
        std_err_mev=se,
        null_mev=null,
        p_value=p,
        p_adjusted=p_adj,
        significant=np.nan_to_num(p_adj, nan=1.0) <= alpha,
        rank_stability=stability,
        excess_mev=excess,
        excess_ci_mev=excess_ci,
        excess_p_value=p_out,
        excess_p_adjusted=p_out_adj,
        stands_out=np.nan_to_num(p_out_adj, nan=1.0) <= alpha,
        rank=ranks_of(mean[None])[0],
        rank_ci=rank_interval(reps, confidence),
        redraw_overlap=(
            redraw_agreement(redraws, ks=(k,))
            if units >= 2
            else replicate_agreement(reps, ks=(k,), pairs=n_boot, seed=seed)
        ).overlap[k],
        replicates_mev=reps,
        frame_replicates_mev=frame_reps,
        unit_mev=unit_score,
        null_replicates_mev=null_reps,
        null_frame_replicates_mev=null_frame_reps,
        null_unit_mev=unit_null,
        n_frames=nf,
        n_members=units,
        block_frames=block,
        block_source=source,
        n_boot=n_boot,
        top_k=k,
        alpha=alpha,
        confidence=confidence,
        correction=correction,
        seed=seed,
    )


def group_stats(stats: ImportanceStats, groups: Mapping[str, Sequence[int] | np.ndarray]) -> GroupStats:
    """Mean and summed importance of groups of atoms, from the same bootstrap replicates as the atoms.

    Using the atoms' joint replicates keeps the atoms' correlations (neighbours
    share frames and members), which adding their intervals would ignore.

    Args:
        stats: one score's statistics (``importance_stats``).
        groups: name -> atom indices; empty groups are left out.
    """
    names, idx = [], []
    for name, atoms in groups.items():
        a = np.asarray(atoms, dtype=np.int64)
        if a.size:
            names.append(name)
            idx.append(a)
    g = len(names)
    sizes = np.array([len(a) for a in idx], dtype=np.float64)

    def group_mean(x: np.ndarray) -> np.ndarray:  # (..., N) -> (..., G)
        return np.stack([x[..., a].mean(axis=-1) for a in idx], axis=-1) if g else np.zeros((*x.shape[:-1], 0))

    mean = group_mean(stats.mean_mev)
    reps, frame_reps, unit = (group_mean(x) for x in (stats.replicates_mev, stats.frame_replicates_mev, stats.unit_mev))
    se = _std_err(reps, frame_reps, unit)
    stat_se = _std_err(
        reps - stats.null_replicates_mev[:, None],
        frame_reps - stats.null_frame_replicates_mev[:, None],
        unit - stats.null_unit_mev[:, None],
    )
    ci = _normal_interval(mean, se, stats.confidence, floor=0.0 if stats.score == "shift" else None)
    testable = bool(np.isfinite(stats.p_value).any())
    p = _one_sided_p(mean - stats.null_mev, stat_se) if testable else np.full(g, np.nan)
    p_adj = adjust_p(p, stats.correction)
    return GroupStats(
        label=names,
        atoms=idx,
        mean_mev=mean,
        ci_mev=ci,
        sum_mev=mean * sizes,
        sum_ci_mev=ci * sizes[:, None],
        p_value=p,
        p_adjusted=p_adj,
        significant=np.nan_to_num(p_adj, nan=1.0) <= stats.alpha,
    )


def frame_shift_mev(masked_ev: np.ndarray, baseline_ev: np.ndarray) -> np.ndarray:
    """Importance over time: per frame and atom, the ensemble-mean |masked - unmasked|.

    Args:
        masked_ev: (M, F, N) eV.
        baseline_ev: (M, F) eV.

    Returns:
        (F, N) float64, meV.
    """
    shift = np.asarray(masked_ev, np.float64) - np.asarray(baseline_ev, np.float64)[:, :, None]
    return np.abs(shift).mean(axis=0) * MEV_PER_EV


# ==========================================================================
# Corrections and bootstrap pieces (the resampling itself: core/analysis/bootstrap.py)
# ==========================================================================


def adjust_p(p_value: np.ndarray, method: str = "holm") -> np.ndarray:
    """Correct p-values for testing them all: ``holm`` (family-wise error) or ``bh`` (false discovery rate).

    Args:
        p_value: (K,) raw p-values; NaN (untestable) stays NaN and does not count as a test.

    Returns:
        (K,) adjusted p-values, each compared with the level directly.
    """
    p = np.asarray(p_value, np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    k = ok.size
    if k == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * ps))
    elif method == "bh":
        adj = np.minimum.accumulate((k / np.arange(1, k + 1) * ps)[::-1])[::-1]
        adj = np.minimum(1.0, adj)
    else:
        raise QdgapError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    out[order] = adj
    return out


def _std_err(both: np.ndarray, frames: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Standard error of a mean over members and frames, from the two-way bootstrap corrected for double counting.

    Resampling members and frames together counts the member x frame noise
    three times; each alone counts it once, and misses the other's share. With
    V_both, V_frames and V_members (the last exactly: the members' variance / U),
    2 (V_members + V_frames) - V_both counts every part once (Owen 2007, the
    pigeonhole bootstrap). It is floored at the larger one-way variance, which it
    can never truly be below.

    Args:
        both: (B, K) replicates resampling members and frames.
        frames: (B, K) replicates resampling frames only (every member once).
        units: (U, K) each distinct member's value on all frames.

    Returns:
        (K,) float64, in the unit of the inputs.
    """
    v_both = both.var(axis=0, ddof=1)
    v_frames = frames.var(axis=0, ddof=1)
    v_members = units.var(axis=0) / units.shape[0]
    floor = np.maximum(v_members, v_frames)
    return np.sqrt(np.maximum(2.0 * (v_members + v_frames) - v_both, floor))


def _welch_df(both: np.ndarray, frames: np.ndarray, units: np.ndarray, n_blocks: int) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom of ``_std_err``'s variance, from its members' and frames' parts.

    With the pigeonhole parts (``_std_err``): V_members = A + C, V_frames = F + C, V_both = A + F + 3 C, where A
    is the members' own variance, F the frames' shared one and C the member x frame noise. The members' part
    (A + C, all that the U member values carry) gets U - 1 degrees of freedom, the frames' shared part F gets
    blocks - 1.

    Args:
        both, frames, units: as ``_std_err``.
        n_blocks: independent blocks of frames.

    Returns:
        (K,) float64, at least 1; inf where the variance is 0.
    """
    u = units.shape[0]
    v_members = units.var(axis=0) / u if u >= 2 else np.zeros(units.shape[1])
    v_frames = frames.var(axis=0, ddof=1)
    cross = np.maximum(both.var(axis=0, ddof=1) - v_members - v_frames, 0.0)
    shared = np.maximum(v_frames - cross, 0.0)
    denom = (v_members**2 / (u - 1) if u >= 2 else 0.0) + shared**2 / max(n_blocks - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (v_members + shared) ** 2 / denom
    return np.where(denom > 0, np.maximum(df, 1.0), np.inf)


def _over_median(x: np.ndarray) -> np.ndarray:
    """(..., N) -> (..., N): each value minus the median of its row over the N atoms."""
    return x - np.median(x, axis=-1, keepdims=True)


def _normal_interval(mean: np.ndarray, std_err: np.ndarray, confidence: float, *, floor: float | None) -> np.ndarray:
    """(K, 2): mean -/+ z std_err, z the normal quantile of the two-sided ``confidence``; cut at ``floor``
    (0 for a mean absolute shift, which cannot be negative)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2.0))
    ci = np.stack([mean - z * std_err, mean + z * std_err], axis=-1)
    return ci if floor is None else np.maximum(ci, floor)


def _one_sided_p(estimate: np.ndarray, std_err: np.ndarray, *, df: np.ndarray | float | None = None) -> np.ndarray:
    """P(score <= null) under a normal with the bootstrap's std (Student's t with ``df`` degrees of
    freedom when given); a zero std gives 0 or 1."""
    from scipy.stats import norm, t

    est, se = np.asarray(estimate, np.float64), np.asarray(std_err, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = norm.sf(est / se) if df is None else t.sf(est / se, df)
    return np.where(se > 0, p, np.where(est > 0, 0.0, 1.0))


def _member_units(seeds: np.ndarray) -> tuple[np.ndarray, int]:
    """(M,) index of each member's distinct seed, and the number of distinct seeds."""
    _, unit_of = np.unique(np.asarray(seeds), return_inverse=True)
    return unit_of.ravel(), int(unit_of.max()) + 1


def _unit_average(x: np.ndarray, unit_of: np.ndarray, units: int) -> np.ndarray:
    """(B, M, ...) -> (B, U, ...): the mean over the copies of each distinct seed."""
    if units == len(unit_of) and np.array_equal(unit_of, np.arange(units)):
        return x  # every seed once, in order: nothing to average
    count = np.bincount(unit_of, minlength=units).astype(np.float64)
    avg = np.zeros((len(unit_of), units))
    avg[np.arange(len(unit_of)), unit_of] = 1.0 / count[unit_of]
    return np.moveaxis(np.moveaxis(x, 1, -1) @ avg, -1, 1)  # matmul, not einsum: BLAS
