"""The circular block bootstrap over time-ordered frames: how long a block, and which frames each replicate draws.

Frames along an MD trajectory are correlated over tens of fs, so resampling single frames would treat
neighbours as independent evidence and make every interval too narrow; whole blocks of consecutive
frames keep that correlation inside each draw.
"""

from __future__ import annotations

import math

import numpy as np


def block_length(series: np.ndarray) -> int:
    """Block length for the circular block bootstrap, from the series' autocovariance (Politis & White 2004).

    The rule the ``arch`` package uses, with Patton, Politis & White's (2009)
    correction: estimate the autocovariance up to the lag beyond which the
    autocorrelation stays insignificant (flat-top window), then take the block
    that minimises the error of the bootstrap variance, b = (3 G^2 / (2 g^2))^(1/3) F^(1/3)
    with g the long-run variance and G its first moment; at most min(3 sqrt(F), F / 3).
    For an AR(1) series this is about twice the lag at which the autocorrelation falls
    below 1/e: a block as long as that lag alone misses more than half of the variance.

    Args:
        series: (F,) e.g. the true gap on the FNA frames, in time order.

    Returns:
        Frames per block, at least 1.
    """
    x = np.asarray(series, np.float64)
    x = x[np.isfinite(x)]
    nf = len(x)
    if nf < 4:
        return 1
    eps = x - x.mean()
    if not np.any(eps):
        return 1
    b_max = math.ceil(min(3.0 * math.sqrt(nf), nf / 3.0))
    kn = max(5, int(math.log10(nf)))
    m_max = min(math.ceil(math.sqrt(nf)) + kn, nf - 2)
    critical = 2.0 * math.sqrt(math.log10(nf) / nf)
    acv = np.zeros(m_max + 1)
    acorr = np.zeros(m_max + 1)
    opt_m = None
    for k in range(m_max + 1):
        acv[k] = eps[k:] @ eps[: nf - k] / nf
        denom = math.sqrt((eps[k + 1 :] @ eps[k + 1 :]) * (eps[: nf - k - 1] @ eps[: nf - k - 1]))
        acorr[k] = abs(eps[k:] @ eps[: nf - k]) / denom if denom > 0 else 0.0
        if k >= kn and opt_m is None and np.all(acorr[k - kn : k] < critical):
            opt_m = k - kn
    m = min(2 * max(opt_m, 1), m_max) if opt_m is not None else m_max
    lags = np.arange(1, m + 1)
    window = np.where(lags / m <= 0.5, 1.0, 2.0 * (1.0 - lags / m))
    g_moment = 2.0 * np.sum(window * lags * acv[1 : m + 1])
    long_run = acv[0] + 2.0 * np.sum(window * acv[1 : m + 1])
    if long_run <= 0:
        return 1
    b = (2.0 * g_moment**2 / (4.0 / 3.0 * long_run**2)) ** (1.0 / 3.0) * nf ** (1.0 / 3.0)
    return int(min(max(1, math.ceil(b)), b_max))


def block_weights(num_frames: int, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Circular block bootstrap: how often each frame is drawn, per replicate.

    Each replicate strings together ceil(F / block) blocks of ``block``
    consecutive frames (wrapping round the end) from uniform random starts, cut to F frames.

    Returns:
        (n_boot, num_frames) float64 counts, each row summing to ``num_frames``.
    """
    n_blocks = -(-num_frames // block)
    starts = rng.integers(0, num_frames, size=(n_boot, n_blocks))
    idx = ((starts[:, :, None] + np.arange(block)) % num_frames).reshape(n_boot, -1)[:, :num_frames]  # (B, F)
    flat = (idx + num_frames * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * num_frames).reshape(n_boot, num_frames).astype(np.float64)
