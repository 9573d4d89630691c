"""Recalibrate the ensemble spread from validation frames, and flag frames outside what it knows.

An ensemble's raw spread (population std over its M members) is not a
calibrated error bar: on the demo the true gap lies within ± 1 std on 91 % of
unseen frames, not 68 %. This module fits, from each member's validation
frames, one recalibration stored with the runs (``runs/calibration.json``),
and applies it to any prediction.

Honest predictions only. A frame of member m's validation split was never one
of m's training frames, but it is a training frame of most other members (the
pool is the same for all, shuffled per seed): their predictions there sit on
the label and the full ensemble's mean and std are both too good. So for every
frame f in the union of held-out splits only the members H(f) that hold f
out (k = |H(f)| of them) are used; frames with k < 2 give no spread and are
left out (with 20 members and 20 % held out, 93 % of the pool has k >= 2;
with 4 members, 18 %).

The model. Member m predicts y + d + e_m: d the error every member shares,
e_m its own, e_m ~ N(0, s2) independent, d ~ N(0, c * s2). The mean of n
members then errs by N(0, (c + 1/n) s2), so

- on a calibration frame, the honest mean's error over the honest members'
  std (ddof 1) is sqrt(c + 1/k) times a Student t with k - 1 degrees of
  freedom; ``c`` is fitted by maximum likelihood of exactly that (a plain
  ratio of squared error to variance would be dominated by the frames whose
  two-member std happens to be near zero);
- on a new frame, the full ensemble's mean errs by N(0, (c + 1/M) s2), and
  s2 is estimated by its population variance times M/(M-1): the calibrated
  std is ``scale`` = sqrt((c + 1/M) M/(M-1)) times the raw std.

Two intervals at a level (``--level``, default 0.95):

- ``scale`` (default): mean ± z(level) x calibrated std, z the normal quantile.
- ``conformal``: mean ± q x calibrated std, q the split-conformal quantile
  (rank ceil((n+1) level) of n) of the calibration frames' scores |error| /
  calibrated std, each first mapped from its t(k-1) law to the normal scale so
  that a two-member std and a twenty-member std count alike.

``scale`` is the default: one fitted number gives a calibrated std (which
``select`` ranks by and the extrapolation flag compares) and intervals at
every level; ``conformal`` makes no assumption on the shape of the error, but
at 95 % its quantile rests on the few largest of some tens of scores, and its
guarantee needs new frames exchangeable with the validation frames, which is
exactly what fails where the ensemble extrapolates. Measured on the demo
(README, "Uncertainty").

Extrapolation: a frame whose calibrated std exceeds the largest the ensemble
shows on its own training trajectory (``threshold_std_ev``, recorded with where
it was taken) lies outside what the ensemble knows. Taken over the frames
between the pooled ones (``THRESHOLD_FRAMES``), predicted by all M members
like any new frame; only when there are none, over the held-out frames, whose
std from k honest members is noisier and whose largest value overshoots (the
flag then errs towards too few frames).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common import metrics
from qdgap.core.common.errors import QdgapError
from qdgap.core.store import runs as rf
from qdgap.core.store.runs import Member

log = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"  # in the runs folder, beside run_<seed>/
CALIBRATION_FORMAT = "qdgap.calibration"
CALIBRATION_VERSION = 1
METHODS = ("scale", "conformal")
DEFAULT_METHOD = "scale"
DEFAULT_LEVEL = 0.95
REPORT_LEVELS = (0.68, 0.95)  # the coverages predict prints and stores
MIN_FRAMES = 8  # fewer honest calibration frames than this fit nothing worth storing
# Which split parts count as held out: validation and test, both never trained on (test not even used
# for early stopping). Validation alone gives a frame two honest members too rarely: with 20 members
# and the demo's 100-frame pool, about 60 frames and a shared-error variance known to +-40 %; with test
# too, about 93 frames held out by 4 members on average (synthetic check in tests/unit/test_calibration.py).
HELD_OUT_PARTS = ("val", "test")
# The extrapolation threshold is the largest calibrated std over up to this many frames of the training
# trajectory between the pooled ones (evenly spaced): frames the ensemble interpolates, so in-distribution
# by construction, and predicted by all M members as any new frame is. The largest over the held-out
# frames, whose std comes from two to four members, overshoots: on the demo (8 members) 76.5 meV against
# 51.2 meV between the pool frames, and it flagged none of the extension's frames.
THRESHOLD_FRAMES = 500
_MAX_SHARED = 1e4  # upper bound of c in the fit: the shared error at 100 x the member spread


# ==========================================================================
# Honest predictions on the calibration frames
# ==========================================================================


@dataclass(frozen=True)
class HeldOut:
    """The ensemble on its calibration frames, each predicted only by members that held it out.

    Attributes:
        frame_index: (K,) int64, frames of the training trajectory.
        gap_true_ev: (K,) float64, eV.
        mean_ev: (K,) float64, eV, mean of the honest members.
        std_ev: (K,) float64, eV, std of the honest members (ddof 1: an unbiased variance).
        num_honest: (K,) int64, honest members per frame (>= 2).
    """

    frame_index: np.ndarray
    gap_true_ev: np.ndarray
    mean_ev: np.ndarray
    std_ev: np.ndarray
    num_honest: np.ndarray


def held_out_predictions(
    splits: Sequence[dict],
    frame_index: np.ndarray,
    gap_true_ev: np.ndarray,
    gap_pred_ev: np.ndarray,
    *,
    parts: Sequence[str] = HELD_OUT_PARTS,
) -> HeldOut:
    """Keep, per frame, only the members whose ``parts`` of the split hold it; frames with fewer than two are dropped.

    Args:
        splits: M ``split.json`` records (``train``, ``val``, ``test`` lists), in the order of ``gap_pred_ev``'s rows.
        frame_index: (F,) frames predicted.
        gap_true_ev: (F,) eV.
        gap_pred_ev: (M, F) eV.
        parts: split parts that count as held out.
    """
    frame_index = np.asarray(frame_index, np.int64)
    pred = np.asarray(gap_pred_ev, np.float64)
    honest = np.zeros(pred.shape, dtype=bool)  # (M, F)
    for i, split in enumerate(splits):
        held = np.concatenate([np.asarray(split.get(p, []), np.int64) for p in parts])
        honest[i] = np.isin(frame_index, held)
    k = honest.sum(axis=0)
    keep = (k >= 2) & np.isfinite(np.asarray(gap_true_ev, np.float64))
    masked = np.where(honest, pred, np.nan)[:, keep]
    return HeldOut(
        frame_index=frame_index[keep],
        gap_true_ev=np.asarray(gap_true_ev, np.float64)[keep],
        mean_ev=np.nanmean(masked, axis=0) if keep.any() else np.zeros(0),
        std_ev=np.nanstd(masked, axis=0, ddof=1) if keep.any() else np.zeros(0),
        num_honest=k[keep].astype(np.int64),
    )


# ==========================================================================
# The fit
# ==========================================================================


@dataclass(frozen=True)
class Calibration:
    """A fitted recalibration of an M-member ensemble's spread (``runs/calibration.json``).

    Attributes:
        shared: c, the variance of the error all members share, in units of the member variance.
        num_members: M, the ensemble size the scale is for.
        scores: (n,) sorted calibration scores, |error| / calibrated std on the normal scale (conformal).
        threshold_std_ev: eV, the largest calibrated std of a calibration frame (extrapolation flag).
        n_frames: calibration frames used.
        method: ``scale`` or ``conformal``, the interval ``predict`` writes by default.
        seeds: (M,) member seeds, and ``model_sha256`` their artifacts: a calibration is for these members only.
    """

    shared: float
    num_members: int
    scores: tuple[float, ...]
    threshold_std_ev: float
    n_frames: int
    method: str = DEFAULT_METHOD
    seeds: tuple[int, ...] = ()
    model_sha256: tuple[str, ...] = ()
    data_sha256: str = ""
    threshold_frames: str = "held-out"  # where threshold_std_ev was taken: held-out or between (see THRESHOLD_FRAMES)

    @property
    def scale(self) -> float:
        """Calibrated std / raw std (population std over the M members)."""
        m = self.num_members
        return math.sqrt((self.shared + 1.0 / m) * m / (m - 1))

    def half_width(self, level: float, method: str | None = None) -> float:
        """Interval half-width at ``level`` in units of the calibrated std (inf when conformal lacks frames)."""
        check_level(level)
        method = method or self.method
        if method == "scale":
            return _normal_quantile(level)
        if method == "conformal":
            n = len(self.scores)
            rank = math.ceil((n + 1) * level)
            return math.inf if rank > n else float(self.scores[rank - 1])
        raise QdgapError(f"--interval must be one of {', '.join(METHODS)}, got {method!r}")

    def to_json(self) -> dict:
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "method": self.method,
            "shared": self.shared,
            "num_members": self.num_members,
            "scale": self.scale,
            "threshold_std_ev": self.threshold_std_ev,
            "n_frames": self.n_frames,
            "held_out": list(HELD_OUT_PARTS),
            "scores": list(self.scores),
            "seeds": list(self.seeds),
            "model_sha256": list(self.model_sha256),
            "data_sha256": self.data_sha256,
            "threshold_frames": self.threshold_frames,
        }

    @classmethod
    def from_json(cls, record: dict, *, path: Path | str = CALIBRATION_JSON) -> Calibration:
        if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
            raise QdgapError(f"{path}: not a qdgap calibration file")
        try:
            return cls(
                shared=float(record["shared"]),
                num_members=int(record["num_members"]),
                scores=tuple(float(x) for x in record["scores"]),
                threshold_std_ev=float(record["threshold_std_ev"]),
                n_frames=int(record["n_frames"]),
                method=str(record.get("method", DEFAULT_METHOD)),
                seeds=tuple(int(s) for s in record.get("seeds", ())),
                model_sha256=tuple(str(s) for s in record.get("model_sha256", ())),
                data_sha256=str(record.get("data_sha256", "")),
                threshold_frames=str(record.get("threshold_frames", "held-out")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QdgapError(f"{path}: incomplete calibration record ({exc}); delete it to refit") from exc


def check_level(level: float) -> None:
    if not (0.0 < level < 1.0):
        raise QdgapError(f"--level must lie between 0 and 1 (e.g. 0.95), got {level}")


def _normal_quantile(level: float) -> float:
    """z with P(|N(0,1)| <= z) = level."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def fit_calibration(held: HeldOut, *, num_members: int, method: str = DEFAULT_METHOD) -> Calibration:
    """Fit the shared-error variance ``c`` by maximum likelihood, and the conformal scores.

    Args:
        held: honest predictions on the calibration frames (``held_out_predictions``).
        num_members: M, the size of the ensemble that will be calibrated.
        method: the default interval, ``scale`` or ``conformal``.

    Raises:
        QdgapError: fewer than ``MIN_FRAMES`` calibration frames, or an ensemble of one member.
    """
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm, t

    if method not in METHODS:
        raise QdgapError(f"--interval must be one of {', '.join(METHODS)}, got {method!r}")
    if num_members < 2:
        raise QdgapError("calibrating the spread needs an ensemble of at least 2 members")
    ok = held.std_ev > 0
    n = int(ok.sum())
    if n < MIN_FRAMES:
        raise QdgapError(
            f"only {n} validation frame(s) are held out by two or more members; calibrating the spread needs "
            f"{MIN_FRAMES}: train more members"
        )
    err = (held.gap_true_ev - held.mean_ev)[ok]
    std = held.std_ev[ok]
    k = held.num_honest[ok].astype(np.float64)
    ratio = err / std
    dof = k - 1.0

    def nll(c: float) -> float:
        w = np.sqrt(c + 1.0 / k)
        return float(-np.sum(t.logpdf(ratio / w, dof) - np.log(w)))

    shared = float(minimize_scalar(nll, bounds=(0.0, _MAX_SHARED), method="bounded", options={"xatol": 1e-6}).x)
    if nll(0.0) <= nll(shared):  # the bounded search never lands exactly on the bound
        shared = 0.0
    # |t(k-1)| mapped to |N(0,1)| through its CDF: scores of two- and many-member frames on one scale.
    scores = norm.ppf(t.cdf(np.abs(ratio) / np.sqrt(shared + 1.0 / k), dof))
    scores = np.sort(np.minimum(scores, 1e6))
    threshold = float(np.max(np.sqrt(shared + 1.0 / num_members) * std))
    return Calibration(
        shared=shared,
        num_members=num_members,
        scores=tuple(float(x) for x in scores),
        threshold_std_ev=threshold,
        n_frames=n,
        method=method,
    )


# ==========================================================================
# Applying it
# ==========================================================================


@dataclass(frozen=True)
class Calibrated:
    """A prediction's calibrated spread, interval and extrapolation flag.

    Attributes:
        std_ev: (F,) float32, eV, calibrated std.
        lo_ev, hi_ev: (F,) float32, eV, the interval at ``level``.
        extrapolating: (F,) bool, calibrated std above ``threshold_std_ev``.
        level: the interval's nominal coverage.
        method: ``scale`` or ``conformal``.
        threshold_std_ev: eV.
    """

    std_ev: np.ndarray
    lo_ev: np.ndarray
    hi_ev: np.ndarray
    extrapolating: np.ndarray
    level: float
    method: str
    threshold_std_ev: float


def apply_calibration(
    cal: Calibration,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    *,
    level: float = DEFAULT_LEVEL,
    method: str | None = None,
) -> Calibrated:
    """Calibrated std, interval and flags of an ensemble prediction.

    Args:
        cal: the fit for this ensemble.
        gap_mean_ev: (F,) eV, ensemble mean.
        gap_std_ev: (F,) eV, population std over the members.
        level: nominal coverage of the interval.
        method: ``scale`` or ``conformal``; None for the calibration's own.
    """
    method = method or cal.method
    mean = np.asarray(gap_mean_ev, np.float64)
    std = np.asarray(gap_std_ev, np.float64) * cal.scale
    half = cal.half_width(level, method) * std
    return Calibrated(
        std_ev=std.astype(np.float32),
        lo_ev=(mean - half).astype(np.float32),
        hi_ev=(mean + half).astype(np.float32),
        extrapolating=std > cal.threshold_std_ev,
        level=float(level),
        method=method,
        threshold_std_ev=cal.threshold_std_ev,
    )


def calibration_summary(
    gap_true_ev: np.ndarray,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    cal: Calibration | None,
) -> dict[str, float]:
    """Raw and calibrated coverage at 68 and 95 %, miscalibration area and Spearman(spread, |error|) on labelled frames.

    Args:
        gap_true_ev: (F,) eV, NaN where unknown.
        gap_mean_ev, gap_std_ev: (F,) eV, ensemble mean and population std.
        cal: the calibration; None gives the raw figures only.

    Returns:
        ``coverage68_raw``, ``coverage95_raw``, ``miscal_area_raw`` and, with ``cal``,
        ``coverage68_cal``, ``coverage95_cal``, ``miscal_area_cal``, ``coverage68_conformal``,
        ``coverage95_conformal``; ``spearman_std_abs_err``; ``n_scored``. Empty without labelled frames.
    """
    y = np.asarray(gap_true_ev, np.float64)
    ok = np.isfinite(y)
    if not ok.any():
        return {}
    y, m, s = y[ok], np.asarray(gap_mean_ev, np.float64)[ok], np.asarray(gap_std_ev, np.float64)[ok]
    err = m - y
    out: dict[str, float] = {"n_scored": int(ok.sum())}
    variants = {"raw": (s, "scale")}
    if cal is not None:
        variants["cal"] = (s * cal.scale, "scale")
        variants["conformal"] = (s * cal.scale, "conformal")
    for name, (std, method) in variants.items():
        for level in REPORT_LEVELS:
            half = (
                _normal_quantile(level) if cal is None or method == "scale" else cal.half_width(level, method)
            ) * std
            out[f"coverage{round(100 * level)}_{name}"] = metrics.coverage(y, m - half, m + half)
        if method == "scale":
            out[f"miscal_area_{name}"] = metrics.miscalibration_area(err, std)
    out["spearman_std_abs_err"] = metrics.spearman_rho(s, np.abs(err))
    return out


# ==========================================================================
# Stored with the runs
# ==========================================================================


def calibration_path(runs: Path) -> Path:
    return Path(runs) / CALIBRATION_JSON


def _matches(cal: Calibration, members: Sequence[Member]) -> bool:
    return cal.seeds == tuple(m.seed for m in members) and cal.model_sha256 == tuple(m.model_sha256 for m in members)


def load_calibration(runs: Path, members: Sequence[Member]) -> Calibration | None:
    """``runs/calibration.json`` if it was fitted for exactly these members, else None."""
    path = calibration_path(runs)
    if not path.is_file():
        return None
    cal = Calibration.from_json(rf.read_json(path), path=path)
    return cal if _matches(cal, members) else None


def training_trajectory(members: Sequence[Member]):
    """The trajectory the members were trained on (their validation frames index it), checked by sha256.

    Raises:
        QdgapError: the members were trained on different data, or the file is gone or changed.
    """
    from qdgap.core.data.trajectory import read_trajectory

    shas = {m.data_sha256 for m in members}
    paths = {m.record.get("data", {}).get("path") or "" for m in members}
    if len(shas) != 1 or None in shas:
        raise QdgapError("the members were not all trained on one known trajectory; the spread cannot be calibrated")
    for p in sorted(paths):
        if p and Path(p).is_file():
            traj = read_trajectory(p)
            if traj.sha256 == next(iter(shas)):
                return traj, Path(p)
    raise QdgapError(
        f"the members' training data ({', '.join(sorted(paths)) or 'no path recorded'}) is missing or has changed; "
        "the spread cannot be calibrated without their validation frames"
    )


def fit_for_members(
    runs: Path,
    members: Sequence[Member],
    *,
    cache_dir: Path | None,
    device: str = "cpu",
    backend: str | None = None,
    method: str = DEFAULT_METHOD,
    write: bool = True,
) -> Calibration:
    """Predict the members' validation frames on their training data, fit, and store ``runs/calibration.json``.

    Raises:
        QdgapError: too few members or calibration frames, or the training data is not at hand.
    """
    from qdgap.core.analysis.predict import predict_ensemble
    from qdgap.core.common.files import exclusive_lock

    if len(members) < 2:
        raise QdgapError("calibrating the spread needs an ensemble of at least 2 members")
    traj, _ = training_trajectory(members)
    frames = np.unique(
        np.concatenate([np.asarray(m.split.get(p, []), np.int64) for m in members for p in HELD_OUT_PARTS])
    )
    if frames.size == 0:
        raise QdgapError("the members' split.json hold no validation frames; the spread cannot be calibrated")
    pooled = np.concatenate([np.asarray(m.split[k], np.int64) for m in members for k in ("train", "val", "test")])
    between = np.setdiff1d(np.arange(traj.num_frames), pooled)
    between = between[np.linspace(0, len(between) - 1, min(len(between), THRESHOLD_FRAMES)).astype(np.int64)]
    both = np.concatenate([frames, between])
    pred = predict_ensemble(members, traj, both, cache_dir=cache_dir, device=device, backend=backend)
    held = held_out_predictions(
        [m.split for m in members], frames, pred.gap_true_ev[: len(frames)], pred.gap_pred_ev[:, : len(frames)]
    )
    fit = fit_calibration(held, num_members=len(members), method=method)
    threshold = fit.threshold_std_ev
    if len(between):
        # float32 headroom: predict stores the std as float32, and the frame that set the threshold is not beyond it
        threshold = float(pred.gap_pred_ev[:, len(frames) :].astype(np.float64).std(axis=0).max() * fit.scale)
        threshold *= 1 + 1e-6
    cal = Calibration(
        **{
            **fit.__dict__,
            "threshold_std_ev": threshold,
            "threshold_frames": "between" if len(between) else "held-out",
            "seeds": tuple(m.seed for m in members),
            "model_sha256": tuple(m.model_sha256 for m in members),
            "data_sha256": traj.sha256,
        }
    )
    if write:
        from qdgap.core.common.files import provenance

        path = calibration_path(runs)
        with exclusive_lock(Path(runs) / f".{CALIBRATION_JSON}.lock", what=f"calibration {path}"):
            rf.write_json(path, {**cal.to_json(), **provenance()})
    log.info(
        "calibrated on %d validation frames: scale %.3f (shared error %.3f), threshold %.1f meV",
        cal.n_frames,
        cal.scale,
        cal.shared,
        cal.threshold_std_ev * metrics.MEV_PER_EV,
    )
    return cal


def calibration_for(
    runs: Path,
    members: Sequence[Member],
    *,
    cache_dir: Path | None,
    device: str = "cpu",
    backend: str | None = None,
    refit: bool = False,
) -> tuple[Calibration | None, str]:
    """The stored calibration of these members, fitted and stored first if needed, and why there is none.

    Returns:
        (calibration, "") or (None, the reason: one member, too few frames held out by two members,
        the training data not at hand). The reason is for the command's summary on stdout: on stderr
        it would read as a second error line.
    """
    runs = Path(runs)
    if (runs / rf.CONFIG_JSON).exists():  # a single run folder: no ensemble to calibrate
        return None, f"{runs} is one member"
    if not refit:
        cal = load_calibration(runs, members)
        if cal is not None:
            return cal, ""
    try:
        return fit_for_members(runs, members, cache_dir=cache_dir, device=device, backend=backend), ""
    except QdgapError as exc:
        if "in use by" in str(exc):
            raise
        log.debug("spread not calibrated: %s", exc)
        return None, str(exc)


def calibrate_prediction(
    runs: Path,
    members: Sequence[Member],
    pred,
    *,
    traj_sha256: str,
    level: float = DEFAULT_LEVEL,
    method: str | None = None,
    cache_dir: Path | None,
    device: str = "cpu",
    backend: str | None = None,
) -> tuple[Calibrated | None, dict[str, float]]:
    """What ``predict`` adds to an ``EnsemblePrediction``: calibrated spread, interval, flags, and their summary.

    The summary (``calibration_summary``, plus ``n_extrapolating`` and the threshold in meV) is
    scored on the labelled frames outside every member's pool; only ``uncalibrated`` (why) when uncalibrated.
    """
    check_level(level)
    if method is not None and method not in METHODS:
        raise QdgapError(f"--interval must be one of {', '.join(METHODS)}, got {method!r}")
    cal, why = calibration_for(runs, members, cache_dir=cache_dir, device=device, backend=backend)
    if cal is None:
        return None, {"uncalibrated": why}
    mean, std = pred.gap_mean_ev.astype(np.float64), pred.gap_std_ev.astype(np.float64)
    out = apply_calibration(cal, mean, std, level=level, method=method)
    pooled = [np.asarray(m.split[k], np.int64) for m in members for k in ("train", "val", "test")]
    trained_here = bool(traj_sha256) and {m.data_sha256 for m in members} == {traj_sha256}
    outside = ~np.isin(pred.frame_index, np.concatenate(pooled)) if trained_here else np.ones(len(mean), bool)
    truth = np.where(outside, pred.gap_true_ev.astype(np.float64), np.nan)
    summary = calibration_summary(truth, mean, std, cal)
    summary.update(
        n_extrapolating=int(out.extrapolating.sum()),
        extrapolation_threshold_mev=cal.threshold_std_ev * metrics.MEV_PER_EV,
        calibration_scale=cal.scale,
        calibration_frames=cal.n_frames,
        threshold_frames=cal.threshold_frames,
    )
    return out, summary
