"""What the training labels predict without a model: the baselines every accuracy stands beside.

A model that maps structure to gap earns its keep only where these fail. Along an MD trajectory the
gap is strongly correlated in time (on the real Cl dot: 0.96 at 10 fs, 0.44 at 50 fs), so a frame a
few fs from a labelled frame is predicted by interpolation in time better than by any model; far from
every label, interpolation falls back to the mean. Every function here takes arrays (times in fs,
gaps in eV) and returns arrays or small frozen records; nothing reads or writes files.

The baselines, each from exactly the labels a model was trained on (a member: its train split; an
ensemble: the union of its members' train splits):

- ``mean``: the training labels' mean;
- ``nearest``: the label of the nearest training frame in time;
- ``linear``: linear interpolation in time (``numpy.interp``);
- ``pchip``: monotone cubic interpolation in time (``scipy.interpolate.PchipInterpolator``);
- ``persistence``: for frames past the last label (or before the first), the mean of the labels
  within one correlation time of that end; inside the labelled span, linear interpolation;
- ``kriging``: a Gaussian process in time (Matern 3/2 kernel plus noise, its variance, length and
  noise by maximum marginal likelihood): the best linear predictor from the labels when the gap is a
  smooth stationary process. On the real Cl dot it predicts the study's unseen frames at 1.0 meV from
  its 10-fs labels (linear 2.4) and 4.0 from 20-fs labels (linear 8.2); at 100 fs and beyond it is no
  better than linear (``bench/results_descriptors.md``). Far from every label it falls back to the mean.

With a cheap gap of every frame (GFN-xTB, ``qdgap data xtb``: the trajectory's ``xtb_gap_ev``) two more:

- ``xtb_corrected``: linear interpolation plus b times the xTB gap's departure from its own
  interpolation, b fitted on the labels by leave-one-out (``xtb_corrected``; b = 1 would be Delta
  learning in time). On the real Cl dot GFN1-xTB's fast fluctuations correlate with PBE's at about 0.55,
  and this row beats interpolation by 11-18 % at 20-200 fs label spacing (``bench/results_multifidelity.md``);
- ``gp_xtb``: one Gaussian process on time and the xTB gap (``core/analysis/gp.py``, what ``qdgap
  interpolate`` writes): 25 % better than interpolation at 50 fs, 17 % at 100 fs.

Outside the labelled span ``linear`` and ``pchip`` hold the end label (what ``numpy.interp`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qdgap.core.analysis.gp import kriging_in_time
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.metrics import MEV_PER_EV, mae_mev, rmse_mev
from qdgap.core.data.timeseries import correlation_time_fs, labelled_series

BASELINES = ("mean", "nearest", "linear", "pchip", "persistence", "kriging")
BASELINE_TITLES = {
    "mean": "training mean",
    "nearest": "nearest labelled frame in time",
    "linear": "linear interpolation in time",
    "pchip": "monotone cubic (PCHIP) interpolation in time",
    "persistence": "persistence (mean of the labels within one correlation time of the nearer end)",
    "kriging": "kriging in time (Gaussian process, Matern 3/2)",
    "xtb_corrected": "interpolation in time corrected by the xTB gap (multi-fidelity)",
    "gp_xtb": "Gaussian process on time and the xTB gap (qdgap interpolate)",
}
# Distance bins in correlation times: from next to a label to beyond five correlation times.
DISTANCE_BIN_EDGES_TAU = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, np.inf)
DEFAULT_BLOCK_TAU = 5.0  # --split blocked: blocks of five correlation times, by default


def distance_to_labels_fs(time_fs: np.ndarray, label_time_fs: np.ndarray) -> np.ndarray:
    """Time distance of each frame to the nearest labelled frame.

    Args:
        time_fs: (F,) query times, fs.
        label_time_fs: (L,) label times, fs (any order; at least one).

    Returns:
        (F,) float64, fs (0 for a labelled frame itself).
    """
    lt = np.sort(np.asarray(label_time_fs, np.float64))
    if lt.size == 0:
        raise QdgapError("no training labels to measure distances from")
    q = np.asarray(time_fs, np.float64)
    i = np.clip(np.searchsorted(lt, q), 1, max(1, len(lt) - 1))
    left, right = lt[i - 1], lt[np.minimum(i, len(lt) - 1)]
    return np.minimum(np.abs(q - left), np.abs(q - right))


def baseline_predictions(
    time_fs: np.ndarray,
    label_time_fs: np.ndarray,
    label_gap_ev: np.ndarray,
    *,
    corr_time_fs: float,
    xtb_ev: np.ndarray | None = None,
    label_xtb_ev: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every baseline's gap on the given frames, from the given labels.

    Args:
        time_fs: (F,) times of the frames to predict, fs.
        label_time_fs: (L,) times of the training labels, fs.
        label_gap_ev: (L,) training labels, eV (NaN entries ignored).
        corr_time_fs: the gap's correlation time, fs (``correlation_time_fs``); sets persistence's window.
        xtb_ev, label_xtb_ev: (F,) and (L,) cheap gaps (GFN-xTB), eV, of the frames and of the labelled
            frames; with both, ``xtb_corrected`` and ``gp_xtb`` are added when every frame has one and at least
            three labels do.

    Returns:
        name -> (F,) float64 eV, for each name in ``BASELINES`` (and ``xtb_corrected``, ``gp_xtb``).

    Raises:
        QdgapError: no finite label.
    """
    from scipy.interpolate import PchipInterpolator

    t, g = labelled_series(label_time_fs, label_gap_ev)
    if len(t) == 0:
        raise QdgapError("no training labels: the baselines need at least one labelled frame")
    q = np.asarray(time_fs, np.float64)
    out = {"mean": np.full(q.shape, g.mean())}
    j = np.clip(np.searchsorted(t, q), 1, max(1, len(t) - 1))
    left = np.maximum(j - 1, 0)
    right = np.minimum(j, len(t) - 1)
    nearer_left = np.abs(q - t[left]) <= np.abs(t[right] - q)
    out["nearest"] = np.where(nearer_left, g[left], g[right])
    out["linear"] = np.interp(q, t, g)
    if len(t) >= 2:
        pchip = PchipInterpolator(t, g, extrapolate=False)(q)
        out["pchip"] = np.where(np.isfinite(pchip), pchip, out["linear"])
    else:
        out["pchip"] = out["linear"].copy()
    window = corr_time_fs if np.isfinite(corr_time_fs) and corr_time_fs > 0 else 0.0
    after = g[t >= t[-1] - window].mean()
    before = g[t <= t[0] + window].mean()
    out["persistence"] = np.where(q > t[-1], after, np.where(q < t[0], before, out["linear"]))
    out["kriging"] = kriging_in_time(q, t, g)
    if xtb_ev is not None and label_xtb_ev is not None:
        corrected = xtb_corrected(q, xtb_ev, label_time_fs, label_gap_ev, label_xtb_ev)
        if corrected is not None:
            out["xtb_corrected"] = corrected[0]
            out["gp_xtb"] = _gp_xtb(q, xtb_ev, label_time_fs, label_gap_ev, label_xtb_ev)
    return out


def loo_slope(time_fs: np.ndarray, gap_ev: np.ndarray, xtb_ev: np.ndarray) -> float:
    """The least-squares slope, through the origin, of the labels' departures from leave-one-out linear
    interpolation in time against the cheap gaps' departures (each label predicted from its two neighbours).

    Args:
        time_fs: (L,) sorted label times, fs (at least three).
        gap_ev, xtb_ev: (L,) the labels and their cheap gaps, eV.

    Returns:
        the slope b (0 when the cheap gaps do not depart from their interpolation).
    """
    t, y, x = (np.asarray(a, np.float64) for a in (time_fs, gap_ev, xtb_ev))
    w = (t[1:-1] - t[:-2]) / (t[2:] - t[:-2])
    ry = y[1:-1] - ((1 - w) * y[:-2] + w * y[2:])
    rx = x[1:-1] - ((1 - w) * x[:-2] + w * x[2:])
    den = float(rx @ rx)
    return float(ry @ rx / den) if den > 0 else 0.0


def _gp_xtb(time_fs, xtb_ev, label_time_fs, label_gap_ev, label_xtb_ev) -> np.ndarray:
    """What ``qdgap interpolate`` predicts from these labels: one Gaussian process on time and the xTB gap."""
    from qdgap.core.analysis import gp

    g_lab, x_lab = np.asarray(label_gap_ev, np.float64), np.asarray(label_xtb_ev, np.float64)
    both = np.isfinite(g_lab) & np.isfinite(x_lab)
    order = np.argsort(np.asarray(label_time_fs, np.float64)[both], kind="stable")
    t, g, x = (np.asarray(a, np.float64)[both][order] for a in (label_time_fs, g_lab, x_lab))
    if np.ptp(g) == 0:  # no spread to fit: the labels' value, as kriging gives
        return np.full(np.shape(time_fs), g[0])
    fit = gp.fit_gp(t, g, x)
    return gp.gp_predict(fit, np.asarray(time_fs, np.float64), t, g, np.asarray(xtb_ev, np.float64), x)[0]


def xtb_corrected(
    time_fs: np.ndarray,
    xtb_ev: np.ndarray,
    label_time_fs: np.ndarray,
    label_gap_ev: np.ndarray,
    label_xtb_ev: np.ndarray,
) -> tuple[np.ndarray, float] | None:
    """Interpolation in time of the labels, corrected by the cheap gap's departure from its own interpolation.

    ``g(t) = interp(g)(t) + b [x(t) - interp(x)(t)]`` with x the cheap (xTB) gap: a control variate. b = 1 is
    Delta learning in time (x plus the interpolated g - x), b = 0 plain interpolation; b is fitted on the
    labels alone (``loo_slope``), so it is what the cheap gap's fluctuations are worth between labels.

    Args:
        time_fs, xtb_ev: (F,) times (fs) and cheap gaps (eV) of the frames to predict.
        label_time_fs, label_gap_ev, label_xtb_ev: (L,) the labels' times (fs), gaps and cheap gaps (eV).

    Returns:
        ((F,) float64 eV, b); None when a frame lacks its cheap gap or fewer than three labels have both.
    """
    x = np.asarray(xtb_ev, np.float64)
    g_lab, x_lab = np.asarray(label_gap_ev, np.float64), np.asarray(label_xtb_ev, np.float64)
    both = np.isfinite(g_lab) & np.isfinite(x_lab)
    if both.sum() < 3 or not np.isfinite(x).all():
        return None
    order = np.argsort(np.asarray(label_time_fs, np.float64)[both], kind="stable")
    t, g, xl = (np.asarray(a, np.float64)[both][order] for a in (label_time_fs, g_lab, x_lab))
    b = loo_slope(t, g, xl)
    return b * x + np.interp(np.asarray(time_fs, np.float64), t, g - b * xl), b


@dataclass(frozen=True)
class Score:
    """One predictor's accuracy on a set of frames.

    Attributes:
        name: the predictor (``model`` or a baseline name).
        rmse_mev, mae_mev: against the true gaps, meV.
        frames: frames scored.
        skill: 1 - RMSE_model / RMSE_this (NaN for the model itself): above 0, the model beats this baseline.
    """

    name: str
    rmse_mev: float
    mae_mev: float
    frames: int
    skill: float


def score_against_baselines(
    gap_true_ev: np.ndarray, gap_model_ev: np.ndarray, baselines: Mapping[str, np.ndarray]
) -> list[Score]:
    """The model and each baseline on exactly the frames where the truth and every prediction are finite.

    Args:
        gap_true_ev: (F,) eV, NaN where unknown.
        gap_model_ev: (F,) the model's (ensemble mean's) gaps, eV.
        baselines: name -> (F,) eV.

    Returns:
        The model's score first, then one per baseline in the mapping's order.
    """
    truth = np.asarray(gap_true_ev, np.float64)
    preds = {
        "model": np.asarray(gap_model_ev, np.float64),
        **{k: np.asarray(v, np.float64) for k, v in baselines.items()},
    }
    ok = np.isfinite(truth)
    for p in preds.values():
        ok &= np.isfinite(p)
    scores = []
    model_rmse = rmse_mev(preds["model"][ok] - truth[ok]) if ok.any() else float("nan")
    for name, p in preds.items():
        if not ok.any():
            scores.append(Score(name, float("nan"), float("nan"), 0, float("nan")))
            continue
        err = p[ok] - truth[ok]
        r = rmse_mev(err)
        skill = float("nan") if name == "model" or r == 0 else 1.0 - model_rmse / r
        scores.append(Score(name, r, mae_mev(err), int(ok.sum()), skill))
    return scores


def best_baseline(scores: Sequence[Score]) -> Score | None:
    """The baseline (not the model) with the lowest RMSE, or None when none was scored."""
    rest = [s for s in scores if s.name != "model" and np.isfinite(s.rmse_mev)]
    return min(rest, key=lambda s: s.rmse_mev) if rest else None


def verdict(scores: Sequence[Score]) -> str:
    """One plain sentence: does the model beat the best baseline on these frames, and by how much."""
    model = next((s for s in scores if s.name == "model"), None)
    best = best_baseline(scores)
    if model is None or best is None or not np.isfinite(model.rmse_mev):
        return "no baseline could be scored on these frames"
    title = BASELINE_TITLES.get(best.name, best.name)
    if model.rmse_mev < best.rmse_mev:
        return (
            f"the model beats the best baseline, {title} ({best.rmse_mev:.1f} meV), "
            f"by {100 * best.skill:.0f} % (skill {best.skill:+.2f})"
        )
    return (
        f"{title} of the training labels predicts these frames better than the model "
        f"({best.rmse_mev:.1f} against {model.rmse_mev:.1f} meV): here the model does not pay"
    )


@dataclass(frozen=True)
class DistanceBins:
    """Error against time distance to the nearest training label.

    Attributes:
        edges_fs: (K + 1,) bin edges, fs (the last may be inf); a frame at distance d is in bin k when
            edges[k] <= d < edges[k + 1].
        frames: (K,) frames per bin (they add up to the frames with a finite distance).
        rmse_mev: name -> (K,) RMSE per bin, meV (NaN for an empty bin).
    """

    edges_fs: np.ndarray
    frames: np.ndarray
    rmse_mev: dict[str, np.ndarray]


def error_by_distance(
    distance_fs: np.ndarray,
    gap_true_ev: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    *,
    corr_time_fs: float,
    edges_tau: Sequence[float] = DISTANCE_BIN_EDGES_TAU,
) -> DistanceBins:
    """RMSE of each predictor binned by distance to the nearest training label.

    Args:
        distance_fs: (F,) fs (``distance_to_labels_fs``).
        gap_true_ev: (F,) eV, NaN where unknown (those frames are left out).
        predictions: name -> (F,) eV (the model and the baselines).
        corr_time_fs: the bins' unit, fs.
        edges_tau: bin edges in correlation times.

    Returns:
        ``DistanceBins`` with edges in fs.
    """
    d = np.asarray(distance_fs, np.float64)
    truth = np.asarray(gap_true_ev, np.float64)
    tau = corr_time_fs if np.isfinite(corr_time_fs) and corr_time_fs > 0 else 1.0
    edges = np.asarray(edges_tau, np.float64) * tau
    ok = np.isfinite(truth) & np.isfinite(d)
    k = np.searchsorted(edges, d, side="right") - 1
    frames = np.array([int(np.sum(ok & (k == b))) for b in range(len(edges) - 1)])
    rmse = {}
    for name, p in predictions.items():
        err = (np.asarray(p, np.float64) - truth) * MEV_PER_EV
        rmse[name] = np.array(
            [
                float(np.sqrt(np.mean(err[sel] ** 2))) if (sel := ok & (k == b) & np.isfinite(err)).any() else np.nan
                for b in range(len(edges) - 1)
            ]
        )
    return DistanceBins(edges_fs=edges, frames=frames, rmse_mev=rmse)


@dataclass(frozen=True)
class BaselineReport:
    """Model and baselines on one frame set, with what is needed to say where the model pays.

    Attributes:
        scores: the model first, then each baseline (``score_against_baselines``).
        corr_time_fs: the training labels' correlation time, fs.
        labels: training labels the baselines used.
        label_source: what those labels are, in words (e.g. "the union of 20 members' train splits").
        distance_fs: (F,) each scored frame's distance to the nearest training label, fs.
        bins: error against that distance.
    """

    scores: list[Score]
    corr_time_fs: float
    labels: int
    label_source: str
    distance_fs: np.ndarray
    bins: DistanceBins

    @property
    def verdict(self) -> str:
        return verdict(self.scores)

    def attrs(self, prefix: str = "baseline") -> dict[str, float | int | str]:
        """Flat HDF5/JSON attributes: ``{prefix}_{name}_rmse_mev`` and ``_skill`` per baseline, and the context."""
        out: dict[str, float | int | str] = {
            f"{prefix}_labels": self.labels,
            f"{prefix}_label_source": self.label_source,
            f"{prefix}_corr_time_fs": self.corr_time_fs,
            f"{prefix}_verdict": self.verdict,
        }
        for s in self.scores:
            out[f"{prefix}_{s.name}_rmse_mev"] = s.rmse_mev
            if s.name != "model":
                out[f"{prefix}_{s.name}_skill"] = s.skill
        return out


def baseline_report(
    time_fs: np.ndarray,
    gap_true_ev: np.ndarray,
    gap_model_ev: np.ndarray,
    label_time_fs: np.ndarray,
    label_gap_ev: np.ndarray,
    *,
    label_source: str,
    corr_time_fs: float | None = None,
    xtb_ev: np.ndarray | None = None,
    label_xtb_ev: np.ndarray | None = None,
) -> BaselineReport:
    """Score a model's gaps beside every baseline built from its training labels, on the same frames.

    Args:
        time_fs: (F,) times of the scored frames, fs.
        gap_true_ev: (F,) true gaps, eV (NaN where unknown: not scored).
        gap_model_ev: (F,) the model's gaps, eV.
        label_time_fs, label_gap_ev: (L,) the training labels, fs and eV.
        label_source: what the labels are, in words.
        corr_time_fs: the correlation time, fs; None measures it on the training labels.
        xtb_ev, label_xtb_ev: (F,) and (L,) cheap gaps, eV, for the ``xtb_corrected`` row (``baseline_predictions``).
    """
    tau = correlation_time_fs(label_time_fs, label_gap_ev) if corr_time_fs is None else corr_time_fs
    base = baseline_predictions(
        time_fs, label_time_fs, label_gap_ev, corr_time_fs=tau, xtb_ev=xtb_ev, label_xtb_ev=label_xtb_ev
    )
    t_lab, _ = labelled_series(label_time_fs, label_gap_ev)
    q = np.asarray(time_fs, np.float64)[np.isfinite(np.asarray(gap_true_ev, np.float64))]
    if not np.any((q > t_lab[-1]) | (q < t_lab[0])):  # inside the labelled span persistence is interpolation
        base.pop("persistence")
    distance = distance_to_labels_fs(time_fs, np.asarray(label_time_fs)[np.isfinite(label_gap_ev)])
    scores = score_against_baselines(gap_true_ev, gap_model_ev, base)
    bins = error_by_distance(distance, gap_true_ev, {"model": gap_model_ev, **base}, corr_time_fs=tau)
    return BaselineReport(
        scores=scores,
        corr_time_fs=tau,
        labels=int(np.isfinite(np.asarray(label_gap_ev, np.float64)).sum()),
        label_source=label_source,
        distance_fs=distance,
        bins=bins,
    )


def scores_table(report: BaselineReport, *, model_name: str = "qdgap ensemble") -> list[str]:
    """Markdown rows: every predictor's RMSE/MAE on the same frames and the model's skill against it."""
    rows = [
        "| predictor | RMSE, meV | MAE, meV | skill of the model (1 - RMSE_model / RMSE) |",
        "|---|---|---|---|",
    ]
    for s in report.scores:
        name = model_name if s.name == "model" else BASELINE_TITLES.get(s.name, s.name)
        skill = "" if s.name == "model" else f"{s.skill:+.2f}"
        rows.append(f"| {name} | {s.rmse_mev:.1f} | {s.mae_mev:.1f} | {skill} |")
    return rows


def distance_table(report: BaselineReport, *, names: Sequence[str] = ("model", "linear", "nearest")) -> list[str]:
    """Markdown rows: RMSE of the model and the given baselines per distance bin."""
    b = report.bins
    head = ["distance to the nearest training label, fs", "frames"] + [
        "model" if n == "model" else BASELINE_TITLES.get(n, n).split(" (")[0] for n in names
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in range(len(b.frames)):
        lo, hi = b.edges_fs[k], b.edges_fs[k + 1]
        span = f"{lo:.0f}-{hi:.0f}" if np.isfinite(hi) else f"{lo:.0f} and more"
        cells = [span, str(int(b.frames[k]))]
        cells += [f"{b.rmse_mev[n][k]:.1f}" if np.isfinite(b.rmse_mev[n][k]) else "–" for n in names]
        rows.append("| " + " | ".join(cells) + " |")
    return rows
