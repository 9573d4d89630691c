"""How far one ensemble's atom ranking can be trusted: ranks over bootstrap replicates, rank intervals,
split-half reliability, and the agreement of two rankings.

Pure functions on per-atom scores (N atoms; larger = more important); no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qdgap.core.common.errors import QdgapError

CONFIDENCE = 0.95  # of the rank intervals


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """Each atom's rank within each row, 1 = the largest score; ties in index order.

    Args:
        scores: (B, N).

    Returns:
        (B, N) int64.
    """
    x = np.asarray(scores, np.float64)
    order = np.argsort(-x, axis=1, kind="stable")  # (B, N) atom at each rank
    ranks = np.empty(x.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.arange(1, x.shape[1] + 1)[None].repeat(len(x), 0), axis=1)
    return ranks


def rank_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """Each atom's rank interval: the central ``confidence`` range of its rank over bootstrap replicates.

    Args:
        replicates: (B, N) replicates of a score, larger = more important.
        confidence: 0.95 gives the 2.5 and 97.5 % points, taken outward (lower and higher order statistic)
            so that the ends are ranks that occurred.

    Returns:
        (N, 2) int64, (best, worst) rank, 1 = most important.
    """
    ranks = ranks_of(replicates)
    tail = (1.0 - confidence) / 2.0
    lo = np.quantile(ranks, tail, axis=0, method="lower")
    hi = np.quantile(ranks, 1.0 - tail, axis=0, method="higher")
    return np.stack([lo, hi], axis=-1).astype(np.int64)


SPLIT_HALF_SPLITS = 200  # random member splits averaged by split_half_reliability


@dataclass(frozen=True)
class SplitHalf:
    """How well one ensemble's atom ranking reproduces itself: two random halves of its members compared.

    Attributes:
        rho: mean over splits of Spearman's rho between the two halves' mean scores (N atoms).
        rho_splits: (S,) float64, each split's rho.
        full_rho: the Spearman-Brown prediction 2 rho / (1 + rho) for two whole ensembles of this size.
        members: members per half.
    """

    rho: float
    rho_splits: np.ndarray
    full_rho: float
    members: int


def split_half_reliability(member_scores: np.ndarray, *, splits: int = SPLIT_HALF_SPLITS, seed: int = 0) -> SplitHalf:
    """Split-half reliability of a ranking: Spearman's rho between the rankings of two random member halves.

    It is the ceiling for agreement with any other ranking of the same atoms (a published one, another
    ensemble's): a ranking cannot agree with another better than with itself re-drawn.

    Args:
        member_scores: (M, N), each member's score per atom (e.g. masked RMSE or paired importance, meV); M >= 2.
            With M odd, each split leaves one member out.
        splits: random splits averaged.
        seed: of the splits.

    Raises:
        QdgapError: fewer than two members.
    """
    from qdgap.core.common.metrics import spearman_rho

    x = np.asarray(member_scores, np.float64)
    m = x.shape[0]
    if x.ndim != 2 or m < 2:
        raise QdgapError(f"split-half reliability needs at least 2 members, got {m}")
    half = m // 2
    rng = np.random.default_rng(seed)
    rhos = np.empty(splits)
    for k in range(splits):
        perm = rng.permutation(m)
        rhos[k] = spearman_rho(x[perm[:half]].mean(axis=0), x[perm[half : 2 * half]].mean(axis=0))
    rho = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan")
    full = 2.0 * rho / (1.0 + rho) if np.isfinite(rho) and rho > -1.0 else float("nan")
    return SplitHalf(rho=rho, rho_splits=rhos, full_rho=full, members=half)


# ==========================================================================
# Agreement of rankings (bench/bench_fna_redraw.py)
# ==========================================================================


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Fraction of the top ``k`` atoms by score ``a`` that are also in the top ``k`` by ``b``.

    Args:
        a, b: (N,) scores, larger = more important; ties broken by index.
        k: 1 <= k <= N.
    """
    top_a = np.argsort(-np.asarray(a, np.float64), kind="stable")[:k]
    top_b = np.argsort(-np.asarray(b, np.float64), kind="stable")[:k]
    return len(set(top_a.tolist()) & set(top_b.tolist())) / k


def stated_top_k(score: np.ndarray, replicates: np.ndarray, k: int) -> float:
    """What one ensemble states about its own top ``k``: the mean over those atoms of the fraction of bootstrap
    replicates that put the atom in the top ``k`` (``rank_stability`` averaged over the point estimate's top k).

    Args:
        score: (N,) the point estimate.
        replicates: (B, N) its bootstrap replicates.
    """
    top = np.argsort(-np.asarray(score, np.float64), kind="stable")[:k]
    in_top = ranks_of(replicates)[:, top] <= k  # (B, k)
    return float(in_top.mean())


@dataclass(frozen=True)
class ReplicateAgreement:
    """What a bootstrap predicts for two independent re-draws: agreement between random pairs of its replicates.

    Attributes:
        rho: mean Spearman's rho between the two replicates of a pair.
        overlap: k -> mean top-k overlap fraction between them.
        pairs: pairs drawn.
    """

    rho: float
    overlap: dict[int, float]
    pairs: int


def replicate_agreement(
    replicates: np.ndarray, *, ks: tuple[int, ...] = (5, 10), pairs: int = 500, seed: int = 0
) -> ReplicateAgreement:
    """Spearman's rho and top-k overlaps between random pairs of distinct bootstrap replicates.

    Two replicates differ as two ensembles drawn independently would (each carries the noise once), whereas a
    replicate against the point estimate (``stated_top_k``, ``rank_stability``) carries it once only.

    Args:
        replicates: (B, N), B >= 2.
        ks: top sizes.
        pairs: random pairs averaged.
        seed: of the pairs.
    """
    reps = np.asarray(replicates, np.float64)
    b = len(reps)
    if b < 2:
        raise QdgapError(f"replicate agreement needs at least 2 replicates, got {b}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, b, size=pairs)
    second = (first + rng.integers(1, b, size=pairs)) % b  # never the same replicate
    return _pair_agreement(reps, first, second, ks)


REDRAWS = 2000  # simulated re-trained ensembles (simulate_redraws)


def simulate_redraws(member_scores: np.ndarray, *, draws: int = REDRAWS, seed: int = 0) -> np.ndarray:
    """Mean scores of simulated re-trained ensembles of the same size, scored on the same frames.

    A bootstrap replicate is centred on this ensemble's own estimate, whose spread over atoms is the atoms' real
    spread plus the members' noise; two replicates (or a replicate and the estimate) therefore agree more than
    two re-trained ensembles do (on the demo, 20 members: top-10 overlap 59-70 % stated, 49 % observed). Here a
    re-trained ensemble is drawn in two stages (empirical Bayes): the atoms' true scores from their posterior
    (a normal prior over atoms whose variance is the spread of the ensemble means less the noise of a mean,
    and each atom's noise from its members), then M members' worth of noise around them, drawn by resampling
    this ensemble's member residuals so that atoms keep their correlations.

    Args:
        member_scores: (M, N), each member's score per atom (meV), larger = more important; M >= 2.
        draws: simulated ensembles.
        seed: of the draws; the same seed gives the same draws.

    Returns:
        (draws, N) float64, each simulated ensemble's mean score per atom (meV); rows 2i and 2i + 1 share
        their true scores (``redraw_agreement`` compares them).

    Raises:
        QdgapError: fewer than two members (no member noise to draw from).
    """
    x = np.asarray(member_scores, np.float64)
    m = x.shape[0]
    if x.ndim != 2 or m < 2:
        raise QdgapError(f"simulated re-draws need at least 2 members, got {m}")
    mean = x.mean(axis=0)
    resid = (x - mean) * np.sqrt(m / (m - 1))  # so a resampled mean has the members' unbiased variance
    noise = x.var(axis=0, ddof=1) / m  # (N,) variance of an atom's ensemble mean
    centred = mean - mean.mean()
    signal = max(float(centred.var()) - float(noise.mean()), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shrink = np.where(signal + noise > 0, signal / (signal + noise), 0.0)
    rng = np.random.default_rng(seed)
    # One truth per pair of rows: rows 2i and 2i + 1 are two ensembles re-trained around the same true scores.
    z = np.repeat(rng.standard_normal(((draws + 1) // 2, len(mean))), 2, axis=0)[:draws]
    truth = mean.mean() + shrink * centred + np.sqrt(shrink * noise) * z
    counts = rng.multinomial(m, np.full(m, 1.0 / m), size=draws)  # (D, M) members drawn with replacement
    return truth + counts @ resid / m


def redraw_agreement(simulated: np.ndarray, *, ks: tuple[int, ...] = (5, 10)) -> ReplicateAgreement:
    """Spearman's rho and top-k overlaps between disjoint pairs of simulated re-drawn ensembles (rows 0 and 1,
    2 and 3, ...; ``simulate_redraws``): what two independently re-trained ensembles are expected to share.

    Args:
        simulated: (D, N), D >= 2.
        ks: top sizes.
    """
    sims = np.asarray(simulated, np.float64)
    pairs = len(sims) // 2
    if pairs < 1:
        raise QdgapError(f"re-draw agreement needs at least 2 simulated ensembles, got {len(sims)}")
    return _pair_agreement(sims, np.arange(0, 2 * pairs, 2), np.arange(1, 2 * pairs, 2), ks)


def _pair_agreement(rows: np.ndarray, first: np.ndarray, second: np.ndarray, ks: tuple[int, ...]) -> ReplicateAgreement:
    from scipy.stats import rankdata

    # Spearman's rho of every pair at once: Pearson's r of the average ranks (as metrics.spearman_rho ranks).
    r = rankdata(rows, axis=1)
    r -= r.mean(axis=1, keepdims=True)
    norm = np.sqrt((r * r).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = (r[first] * r[second]).sum(axis=1) / (norm[first] * norm[second])  # NaN for a constant row
    top = ranks_of(rows)  # (B, N) 1 = first
    overlap = {k: float(((top[first] <= k) & (top[second] <= k)).sum(axis=1).mean() / k) for k in ks}
    rho = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan")
    return ReplicateAgreement(rho=rho, overlap=overlap, pairs=len(first))


def rank_coverage(rank_ci: np.ndarray, other: np.ndarray) -> float:
    """Fraction of atoms whose rank by ``other`` lies inside their rank interval ``rank_ci`` (nominally 95 %).

    Args:
        rank_ci: (N, 2) int, (best, worst) rank from one ensemble.
        other: (N,) another ensemble's scores.
    """
    ci = np.asarray(rank_ci)
    rank = ranks_of(np.asarray(other, np.float64)[None])[0]
    return float(np.mean((ci[:, 0] <= rank) & (rank <= ci[:, 1])))
