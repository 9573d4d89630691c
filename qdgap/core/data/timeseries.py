"""The gap as a time series: its autocorrelation and correlation time (arrays in, numbers out).

Used to size the blocked split's blocks, the baselines' persistence window and the distance bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def correlation_time_fs(time_fs: np.ndarray, gap_ev: np.ndarray) -> float:
    """Lag at which the gap's autocorrelation first falls below 1/e, fs.

    The labelled frames need not be evenly spaced: the series is interpolated linearly onto a grid
    of its median spacing first. The crossing is interpolated linearly between grid lags, so its
    resolution is about one label spacing (sparse labels give a coarse, upward-biased estimate).

    Args:
        time_fs: (L,) label times, fs.
        gap_ev: (L,) gaps, eV; NaN entries are ignored.

    Returns:
        fs; NaN with fewer than 4 labels or a constant gap; the whole span when it never crosses.
    """
    t, g = labelled_series(time_fs, gap_ev)
    if len(t) < 4 or np.ptp(g) == 0:
        return float("nan")
    lags, acf = _acf(t, g)
    below = np.flatnonzero(acf < 1.0 / np.e)
    if below.size == 0:
        return float(t[-1] - t[0])
    k = int(below[0])
    frac = (acf[k - 1] - 1.0 / np.e) / (acf[k - 1] - acf[k])
    return float(lags[k - 1] + frac * (lags[k] - lags[k - 1]))


def autocorrelation_at(time_fs: np.ndarray, gap_ev: np.ndarray, lags_fs: Sequence[float]) -> np.ndarray:
    """The gap's autocorrelation at the given lags (linear in between grid lags), as in ``correlation_time_fs``.

    Returns:
        (K,) float64; NaN for a lag beyond half the span.
    """
    t, g = labelled_series(time_fs, gap_ev)
    if len(t) < 4 or np.ptp(g) == 0:
        return np.full(len(lags_fs), np.nan)
    lag_grid, acf = _acf(t, g)
    lags = np.asarray(lags_fs, np.float64)
    return np.where(lags <= lag_grid[-1], np.interp(lags, lag_grid, acf), np.nan)


def labelled_series(time_fs: np.ndarray, gap_ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite labels sorted by time (float64)."""
    t = np.asarray(time_fs, np.float64)
    g = np.asarray(gap_ev, np.float64)
    ok = np.isfinite(t) & np.isfinite(g)
    order = np.argsort(t[ok], kind="stable")
    return t[ok][order], g[ok][order]


def _acf(t: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lags in fs, autocorrelation) up to half the span, on a grid of the labels' median spacing."""
    dt = float(np.median(np.diff(t)))
    grid = np.arange(t[0], t[-1] + 0.5 * dt, dt)
    x = np.interp(grid, t, g)
    x = x - x.mean()
    n = len(x)
    # sum_i x[i] x[i + k] for every lag at once, by FFT with zero padding (no wrap-around); / n as the
    # biased estimator does, which keeps the estimate a proper (positive semi-definite) autocorrelation
    size = 1 << int(2 * n - 1).bit_length()
    spec = np.fft.rfft(x, size)
    acov = np.fft.irfft(spec * np.conj(spec), size)[: n // 2 + 1] / n
    return np.arange(len(acov)) * dt, acov / acov[0]
