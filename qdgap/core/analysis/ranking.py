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
