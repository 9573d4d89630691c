"""The one place errors and coverage are computed: RMSE, MAE, interval coverage, rank correlation.

Every function takes arrays in eV and returns meV (errors) or a fraction
(coverage). Errors are accumulated in float64 whatever the input dtype, so a
float32 prediction of a 1.7 eV gap keeps its sub-meV residuals.
"""

from __future__ import annotations

import numpy as np

MEV_PER_EV = 1000.0


def rmse_mev(err_ev: np.ndarray, *, axis: int | None = None) -> np.ndarray | float:
    """Root-mean-square of errors in eV, in meV, over ``axis`` (all elements when None)."""
    err = np.asarray(err_ev, dtype=np.float64)
    out = np.sqrt(np.mean(err**2, axis=axis)) * MEV_PER_EV
    return float(out) if axis is None else out


def mae_mev(err_ev: np.ndarray, *, axis: int | None = None) -> np.ndarray | float:
    """Mean absolute error in eV, in meV, over ``axis`` (all elements when None)."""
    err = np.asarray(err_ev, dtype=np.float64)
    out = np.mean(np.abs(err), axis=axis) * MEV_PER_EV
    return float(out) if axis is None else out


def error_stats_mev(gap_true_ev: np.ndarray, gap_pred_ev: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE) in meV of ``gap_pred_ev`` against ``gap_true_ev`` over frames where both are finite.

    Args:
        gap_true_ev: (F,) eV, NaN where unknown.
        gap_pred_ev: (F,) eV.

    Returns:
        (rmse, mae) in meV; NaN for both when no frame has both values.
    """
    t, p = np.asarray(gap_true_ev, np.float64), np.asarray(gap_pred_ev, np.float64)
    ok = np.isfinite(t) & np.isfinite(p)
    if not ok.any():
        return float("nan"), float("nan")
    err = p[ok] - t[ok]
    return rmse_mev(err), mae_mev(err)


def coverage(gap_true_ev: np.ndarray, lo_ev: np.ndarray, hi_ev: np.ndarray) -> float:
    """Fraction of frames (with finite values) whose true gap lies in [lo, hi]. Shapes (F,), eV."""
    t, lo, hi = (np.asarray(a, np.float64) for a in (gap_true_ev, lo_ev, hi_ev))
    ok = np.isfinite(t) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return float("nan")
    return float(np.mean((t[ok] >= lo[ok]) & (t[ok] <= hi[ok])))


def coverage_ksigma(gap_true_ev: np.ndarray, gap_mean_ev: np.ndarray, gap_std_ev: np.ndarray, k: float = 2.0) -> float:
    """Fraction of frames whose true gap lies within mean ± k std. Shapes (F,), eV."""
    m, s = np.asarray(gap_mean_ev, np.float64), np.asarray(gap_std_ev, np.float64)
    return coverage(gap_true_ev, m - k * s, m + k * s)


def spearman_rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two (K,) arrays (average ranks for ties); NaN if undefined."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:  # a constant input has no ranking
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def weighted_rmse_mev(err_ev: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RMSE over frames (axis 1 of ``err_ev``) for each row of frame weights, in meV.

    A bootstrap replicate is a row of ``weights``: how often each frame was drawn.
    One matrix product serves every replicate, instead of indexing the errors
    once per replicate.

    Args:
        err_ev: (M, F, ...) errors, eV.
        weights: (B, F) non-negative frame weights (counts), each row with a positive sum.

    Returns:
        (B, M, ...) float64, meV.
    """
    return np.sqrt(_weighted_frame_mean(np.asarray(err_ev, np.float64) ** 2, weights)) * MEV_PER_EV


def weighted_mae_mev(err_ev: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean absolute value over frames (axis 1 of ``err_ev``) for each row of frame weights, in meV.

    Args:
        err_ev: (M, F, ...) errors or shifts, eV.
        weights: (B, F) non-negative frame weights (counts), each row with a positive sum.

    Returns:
        (B, M, ...) float64, meV.
    """
    return _weighted_frame_mean(np.abs(np.asarray(err_ev, np.float64)), weights) * MEV_PER_EV


def _weighted_frame_mean(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(M, F, ...) x (B, F) -> (B, M, ...): weighted mean over F."""
    w = np.asarray(weights, np.float64)
    w = w / w.sum(axis=1, keepdims=True)
    m, f = x.shape[:2]
    rest = x.shape[2:]
    flat = np.moveaxis(x, 1, 0).reshape(f, -1)  # (F, M * prod(rest))
    return (w @ flat).reshape((w.shape[0], m, *rest))


def coverage_curve(err_ev: np.ndarray, std_ev: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Observed coverage of central Gaussian intervals ± z(p) std at each expected level p (reliability diagram).

    Args:
        err_ev: (F,) prediction minus truth, eV.
        std_ev: (F,) predicted std, eV.
        levels: (L,) expected coverages in (0, 1).

    Returns:
        (L,) observed fractions of frames (with finite values) inside; NaN if none.
    """
    from scipy.stats import norm

    e, s = np.asarray(err_ev, np.float64), np.asarray(std_ev, np.float64)
    ok = np.isfinite(e) & np.isfinite(s)
    if not ok.any():
        return np.full(len(levels), np.nan)
    z = norm.ppf(0.5 + np.asarray(levels, np.float64) / 2.0)  # (L,)
    return np.mean(np.abs(e[ok])[None, :] <= z[:, None] * s[ok][None, :], axis=1)


CALIBRATION_LEVELS = np.linspace(0.01, 0.99, 99)  # the grid reliability diagrams and miscalibration areas use


def miscalibration_area(err_ev: np.ndarray, std_ev: np.ndarray) -> float:
    """Mean |observed - expected| coverage of Gaussian intervals over ``CALIBRATION_LEVELS`` (0 is perfect, 0.5 the worst).

    Args:
        err_ev: (F,) prediction minus truth, eV.
        std_ev: (F,) predicted std, eV.
    """
    observed = coverage_curve(err_ev, std_ev, CALIBRATION_LEVELS)
    return float(np.mean(np.abs(observed - CALIBRATION_LEVELS)))
