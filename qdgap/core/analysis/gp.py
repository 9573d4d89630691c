"""Gaussian processes along a trajectory: in time (kriging), and in time plus a cheap gap of every frame.

The gap along MD is a smooth stationary process in time, plus what time alone cannot say: the fast
fluctuations a cheap method (GFN-xTB) partly shares. One Gaussian process holds both: a Matern 3/2 kernel
in time, a linear kernel on standardised per-frame features (the xTB gap), and white noise, about the
labels' mean. Its hyperparameters come by maximum marginal likelihood from the labels alone, and its
predictive standard deviation is a calibrated interval where the model is right (on the real Cl dot at one
label per 100 fs: 61.3 meV, 95 % interval covering 85.9 % of the other labelled frames; on the 10-15 ps
stretch from 25 labels 65.4 meV, 94.5 %; ``bench/results_multifidelity.md``).

Arrays in, arrays out: times in fs, gaps in eV; nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KRIGING_FIT = 400  # consecutive labels the hyperparameters are fitted on (cost: one 400 x 400 Cholesky per step)
KRIGING_BLOCK = 1500  # labels per Cholesky: more labels are kriged in overlapping blocks of consecutive labels
KRIGING_OVERLAP = 250  # labels on each side of a block that condition it but are predicted by the neighbour


def matern32(a: np.ndarray, b: np.ndarray, length_fs: float) -> np.ndarray:
    """(A,), (B,) times in fs -> (A, B) Matern 3/2 correlation at the given length (fs)."""
    r = np.sqrt(3.0) * np.abs(a[:, None] - b[None, :]) / length_fs
    return (1.0 + r) * np.exp(-r)


@dataclass(frozen=True)
class GPFit:
    """A Gaussian process fitted to labels along a trajectory.

    Attributes:
        mean_ev: the labels' mean, eV (the process is about it).
        time_var_ev2: variance of the Matern 3/2 part in time, eV^2.
        length_fs: its correlation length, fs.
        noise_var_ev2: white-noise variance, eV^2 (what neither time nor the features explain).
        feature_var_ev2: variance of the linear part on the standardised features, eV^2 (0 without features).
        feature_mean, feature_std: (D,) what standardised the features (from the labels).
        labels: labels the hyperparameters were fitted on.
    """

    mean_ev: float
    time_var_ev2: float
    length_fs: float
    noise_var_ev2: float
    feature_var_ev2: float
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    labels: int

    def as_dict(self) -> dict[str, float]:
        """The hyperparameters in readable units (meV, fs)."""
        return {
            "mean_ev": self.mean_ev,
            "time_sd_mev": 1e3 * float(np.sqrt(self.time_var_ev2)),
            "length_fs": self.length_fs,
            "noise_sd_mev": 1e3 * float(np.sqrt(self.noise_var_ev2)),
            "feature_sd_mev": 1e3 * float(np.sqrt(self.feature_var_ev2)),
        }


def _standardised(x: np.ndarray | None, fit: GPFit) -> np.ndarray | None:
    if x is None or not fit.feature_mean:
        return None
    return (np.asarray(x, np.float64).reshape(len(x), -1) - np.asarray(fit.feature_mean)) / np.asarray(fit.feature_std)


def _kernel(fit: GPFit, ta: np.ndarray, tb: np.ndarray, xa: np.ndarray | None, xb: np.ndarray | None) -> np.ndarray:
    k = fit.time_var_ev2 * matern32(ta, tb, fit.length_fs)
    if xa is not None and xb is not None:
        k = k + fit.feature_var_ev2 * (xa @ xb.T) / xa.shape[1]
    return k


def fit_gp(label_time_fs: np.ndarray, label_gap_ev: np.ndarray, label_features: np.ndarray | None = None) -> GPFit:
    """The hyperparameters by maximum marginal likelihood on the first ``KRIGING_FIT`` labels.

    L-BFGS-B from three starts in log space, the length between the median label spacing (5 fs with
    features) and the labels' span; the features (if any) standardised by the labels' mean and standard deviation.

    Args:
        label_time_fs: (L,) sorted label times, fs, at least three.
        label_gap_ev: (L,) finite labels, eV, with some spread.
        label_features: (L,) or (L, D) finite per-frame features of the labelled frames (the xTB gap, eV), or None.

    Returns:
        the fitted process.
    """
    from scipy.linalg import cho_factor, cho_solve
    from scipy.optimize import minimize

    t, g = np.asarray(label_time_fs, np.float64), np.asarray(label_gap_ev, np.float64)
    mean = float(g.mean())
    y = g - mean
    fit_t, fit_y = t[:KRIGING_FIT], y[:KRIGING_FIT]
    spacing = float(np.median(np.diff(fit_t)))
    span = float(fit_t[-1] - fit_t[0])
    var0 = float(fit_y.var())
    mu: tuple[float, ...] = ()
    sd: tuple[float, ...] = ()
    lin = None
    if label_features is not None:
        x = np.asarray(label_features, np.float64).reshape(len(t), -1)
        mu, sd = tuple(x.mean(0).tolist()), tuple((x.std(0) + 1e-12).tolist())
        xs = ((x - np.asarray(mu)) / np.asarray(sd))[:KRIGING_FIT]
        lin = xs @ xs.T / xs.shape[1]

    def kernel(theta: np.ndarray) -> np.ndarray:
        var, length, noise = np.exp(theta[:3])
        k = var * matern32(fit_t, fit_t, length) + noise * np.eye(len(fit_t))
        return k if lin is None else k + np.exp(theta[3]) * lin

    def nll(theta: np.ndarray) -> float:
        try:
            c = cho_factor(kernel(theta), lower=True)
        except np.linalg.LinAlgError:
            return 1e30
        return float(0.5 * fit_y @ cho_solve(c, fit_y) + np.log(np.diag(c[0])).sum())

    bounds = [
        (np.log(var0) - 10, np.log(var0) + 3),
        (np.log(max(spacing, 1e-3)), np.log(max(span, 2 * spacing))),
        (np.log(var0) - 20, np.log(var0) + 1),
    ]
    starts = [[np.log(var0), np.log(min(max(f * spacing, bounds[1][0]), bounds[1][1])), np.log(var0) - 6]
              for f in (1.0, 4.0, 16.0)]  # fmt: skip
    if lin is not None:
        # Time alone cannot see between labels; with the features it need not: its length may fall below the
        # spacing (to 5 fs), leaving what lies between labels to the features (61.3 against 65.9 meV at 100 fs).
        bounds[1] = (np.log(min(5.0, max(spacing, 1e-3))), bounds[1][1])
        bounds.append((np.log(var0) - 20, np.log(var0) + 3))
        lengths = [
            np.log(min(max(f * spacing, np.exp(bounds[1][0])), np.exp(bounds[1][1]))) for f in (0.1, 0.5, 1.0, 4.0)
        ]
        starts = [[np.log(var0) + dv, ln, np.log(var0) + dn, np.log(var0) + df]
                  for ln in lengths for dv, dn, df in ((0.0, -6.0, -2.0), (-2.0, -2.0, 0.0), (-1.0, -8.0, -1.0))]  # fmt: skip
    theta = min((minimize(nll, s, method="L-BFGS-B", bounds=bounds) for s in starts), key=lambda r: r.fun).x
    var, length, noise = np.exp(theta[:3])
    return GPFit(
        mean_ev=mean, time_var_ev2=float(var), length_fs=float(length), noise_var_ev2=float(noise),
        feature_var_ev2=float(np.exp(theta[3])) if lin is not None else 0.0,
        feature_mean=mu, feature_std=sd, labels=len(fit_t),
    )  # fmt: skip


def gp_predict(
    fit: GPFit,
    time_fs: np.ndarray,
    label_time_fs: np.ndarray,
    label_gap_ev: np.ndarray,
    features: np.ndarray | None = None,
    label_features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and predictive standard deviation of the gap at the query times.

    Up to ``KRIGING_BLOCK`` labels condition every prediction; with more, each run of consecutive labels is
    kriged with ``KRIGING_OVERLAP`` neighbours on each side (Matern 3/2 correlations decay exponentially, and
    the linear part is carried by the block's own labels).

    Args:
        fit: from ``fit_gp`` (with features when it was fitted with them).
        time_fs: (F,) query times, fs.
        label_time_fs: (L,) sorted label times, fs.
        label_gap_ev: (L,) finite labels, eV.
        features: (F,) or (F, D) the query frames' features (as in the fit), or None.
        label_features: (L,) or (L, D) the labelled frames' features, or None.

    Returns:
        (F,) float64 mean, eV; (F,) float64 sd of a new frame's gap (noise included), eV.

    Raises:
        ValueError: features given to a process fitted without them, or missing for one fitted with them.
    """
    from scipy.linalg import cho_factor, cho_solve, solve_triangular

    if bool(fit.feature_mean) != (features is not None and label_features is not None):
        raise ValueError("give features and label_features exactly when the process was fitted with features")
    q = np.asarray(time_fs, np.float64)
    t = np.asarray(label_time_fs, np.float64)
    y = np.asarray(label_gap_ev, np.float64) - fit.mean_ev
    xq, xt = _standardised(features, fit), _standardised(label_features, fit)
    mean, sd = np.empty(q.shape), np.empty(q.shape)
    # Each query belongs to the run of labels it falls among; runs are kriged with their neighbours.
    owner = np.clip(np.searchsorted(t, q) // KRIGING_BLOCK, 0, (len(t) - 1) // KRIGING_BLOCK)
    for b in np.unique(owner):
        lo = max(0, b * KRIGING_BLOCK - KRIGING_OVERLAP)
        hi = min(len(t), (b + 1) * KRIGING_BLOCK + KRIGING_OVERLAP)
        xb = None if xt is None else xt[lo:hi]
        k = _kernel(fit, t[lo:hi], t[lo:hi], xb, xb) + fit.noise_var_ev2 * np.eye(hi - lo)
        chol = cho_factor(k, lower=True)
        mine = owner == b
        xm = None if xq is None else xq[mine]
        k_star = _kernel(fit, q[mine], t[lo:hi], xm, xb)
        mean[mine] = fit.mean_ev + k_star @ cho_solve(chol, y[lo:hi])
        prior = fit.time_var_ev2 + fit.noise_var_ev2
        if xm is not None:
            prior = prior + fit.feature_var_ev2 * (xm**2).sum(1) / xm.shape[1]
        v = solve_triangular(np.tril(chol[0]), k_star.T, lower=True)
        sd[mine] = np.sqrt(np.maximum(prior - (v**2).sum(0), 0.0))
    return mean, sd


def gp_loo(
    fit: GPFit, label_time_fs: np.ndarray, label_gap_ev: np.ndarray, label_features: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out predictions of the first ``KRIGING_FIT`` labels, each from all the others (closed form).

    A label left out is a full label spacing from its neighbours, a frame between labels at most half that:
    the leave-one-out error is an upper estimate of the error between labels.

    Returns:
        (n,) float64 mean and (n,) sd, eV, for the first n = min(L, ``KRIGING_FIT``) labels.
    """
    from scipy.linalg import cho_factor, cho_solve

    n = min(len(label_time_fs), KRIGING_FIT)
    t = np.asarray(label_time_fs, np.float64)[:n]
    y = np.asarray(label_gap_ev, np.float64)[:n] - fit.mean_ev
    x = _standardised(None if label_features is None else np.asarray(label_features)[:n], fit)
    k = _kernel(fit, t, t, x, x) + fit.noise_var_ev2 * np.eye(n)
    inv = cho_solve(cho_factor(k, lower=True), np.eye(n))
    d = np.diag(inv)
    return fit.mean_ev + y - (inv @ y) / d, np.sqrt(1.0 / d)


def kriging_in_time(time_fs: np.ndarray, label_time_fs: np.ndarray, label_gap_ev: np.ndarray) -> np.ndarray:
    """Posterior mean of a Gaussian process in time alone fitted to the labels (``fit_gp``, ``gp_predict``).

    Args:
        time_fs: (F,) query times, fs.
        label_time_fs: (L,) sorted label times, fs, finite gaps only (``labelled_series``).
        label_gap_ev: (L,) eV.

    Returns:
        (F,) float64 eV; the labels' mean with fewer than three labels or no spread.
    """
    q = np.asarray(time_fs, np.float64)
    t, g = np.asarray(label_time_fs, np.float64), np.asarray(label_gap_ev, np.float64)
    if len(t) < 3 or np.ptp(g) == 0:
        return np.full(q.shape, float(g.mean()) if len(g) else float("nan"))
    return gp_predict(fit_gp(t, g), q, t, g)[0]
