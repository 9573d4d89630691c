"""The report's band gap against time, along the trajectory and along the extension.

Arrays in, ``matplotlib.figure.Figure`` out (``core/report/figures_base.py``). Gaps in
eV, errors in meV, time in fs. Besides the raw ensemble spread (mean ± 2 std),
a plot can carry the calibrated interval ``gap_lo_ev..gap_hi_ev`` that
``qdgap predict`` writes and shade the frames it flags as extrapolating.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from qdgap.core.common.metrics import MEV_PER_EV
from qdgap.core.report.figures_base import (
    CALIBRATED_COLOUR,
    EXTRAPOLATING_COLOUR,
    MEAN_COLOUR,
    TRAIN_COLOUR,
    TRUE_COLOUR,
    legend_above,
    new_figure,
)

_MAX_TRAIN_MARKERS = 120  # more training frames than this are marked by a rug, not circles


# ==========================================================================
# Helpers
# ==========================================================================


def flagged_spans(time_fs: np.ndarray, flags: np.ndarray) -> list[tuple[float, float]]:
    """Time spans (fs) covered by runs of consecutive flagged frames, for shading.

    Each run reaches halfway to the frames on either side of it, so one flagged
    frame shades its own share of the time axis and neighbouring runs never overlap.

    Args:
        time_fs: (F,) fs, increasing.
        flags: (F,) bool.

    Returns:
        (start, end) pairs in fs, in time order.
    """
    t = np.asarray(time_fs, np.float64)
    f = np.asarray(flags, bool)
    if not f.any():
        return []
    # Frame edges: midpoints between frames, the ends padded by half the neighbouring step.
    step = np.diff(t) if len(t) > 1 else np.array([1.0])
    edges = np.concatenate([[t[0] - step[0] / 2], (t[1:] + t[:-1]) / 2, [t[-1] + step[-1] / 2]])
    change = np.diff(np.concatenate([[0], f.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(change == 1), np.flatnonzero(change == -1)  # frame ranges [start, end)
    return [(float(edges[a]), float(edges[b])) for a, b in zip(starts, ends, strict=True)]


def _shade(ax, spans: list[tuple[float, float]], *, label: str | None = None):
    """Shade the extrapolating spans of one axes; returns one handle for the legend (or None)."""
    handle = None
    for k, (a, b) in enumerate(spans):
        h = ax.axvspan(a, b, color=EXTRAPOLATING_COLOUR, alpha=0.13, lw=0, zorder=0, label=label if k == 0 else None)
        handle = handle or h
    return handle


# ==========================================================================
# Gap against time
# ==========================================================================


def gap_vs_time(
    time_fs: np.ndarray,
    gap_true_ev: np.ndarray,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    *,
    train_mask: np.ndarray | None = None,
    gap_lo_ev: np.ndarray | None = None,
    gap_hi_ev: np.ndarray | None = None,
    level: float | None = None,
    extrapolating: np.ndarray | None = None,
    title: str = "Band gap along the trajectory",
    mean_label: str = "ensemble mean",
    train_label: str = "training frames",
) -> Figure:
    """Band gap against time: true gaps, ensemble mean with a ±2 std band, training frames marked.

    A lower panel shows the error of the mean (meV) against the same ±2 std band.
    With ``gap_lo_ev``/``gap_hi_ev`` the calibrated interval is drawn in both
    panels (as its edges, so the raw band stays visible under it); with
    ``extrapolating`` the flagged frames are shaded along time.

    Args:
        time_fs: (F,) fs, increasing.
        gap_true_ev: (F,) eV; NaN where unknown.
        gap_mean_ev: (F,) eV.
        gap_std_ev: (F,) eV, population std over the members (the raw spread).
        train_mask: (F,) bool, frames some member trained on (marked on the curve).
        gap_lo_ev: (F,) eV, lower end of the calibrated interval; drawn only with ``gap_hi_ev``.
        gap_hi_ev: (F,) eV, its upper end.
        level: nominal coverage of that interval (0-1), for the legend.
        extrapolating: (F,) bool, frames outside what the ensemble knows (shaded).
        title: figure title.
        mean_label: legend text of the mean curve.
        train_label: legend text of the training-frame markers.
    """
    t = np.asarray(time_fs, np.float64)
    true = np.asarray(gap_true_ev, np.float64)
    mean = np.asarray(gap_mean_ev, np.float64)
    std = np.nan_to_num(np.asarray(gap_std_ev, np.float64))
    if not len(t):
        raise ValueError("no frames to plot")
    order = np.argsort(t, kind="stable")
    t, true, mean, std = t[order], true[order], mean[order], std[order]
    train = None if train_mask is None else np.asarray(train_mask, bool)[order]
    band = None
    if gap_lo_ev is not None and gap_hi_ev is not None:
        band = (np.asarray(gap_lo_ev, np.float64)[order], np.asarray(gap_hi_ev, np.float64)[order])
    flags = None if extrapolating is None else np.asarray(extrapolating, bool)[order]
    known = np.isfinite(true)

    fig = new_figure(12.0, 6.2)
    ax, ax_err = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    raw = ax.fill_between(
        t,
        mean - 2 * std,
        mean + 2 * std,
        color=MEAN_COLOUR,
        alpha=0.25,
        lw=0,
        label="mean ± 2 std (raw)" if band is not None else "mean ± 2 std",
    )
    (line_mean,) = ax.plot(t, mean, color=MEAN_COLOUR, lw=1.0, label=mean_label)
    handles = [raw, line_mean]
    if band is not None:
        name = f"calibrated {100 * level:.0f} % interval" if level is not None else "calibrated interval"
        (line_cal,) = ax.plot(t, band[0], color=CALIBRATED_COLOUR, lw=0.8, ls="--", label=name)
        ax.plot(t, band[1], color=CALIBRATED_COLOUR, lw=0.8, ls="--")
        handles.append(line_cal)
    if known.any():
        sparse = known.sum() < 0.5 * len(t)
        (line_true,) = ax.plot(
            t[known],
            true[known],
            color=TRUE_COLOUR,
            lw=0.8,
            marker="." if sparse else None,
            ms=3,
            label="true gap",
        )
        handles.insert(0, line_true)
    dense = train is not None and int(train.sum()) > _MAX_TRAIN_MARKERS
    if train is not None and train.any():
        if dense:  # circles would hide the curves: a rug of ticks along the bottom instead
            (mark,) = ax.plot(
                t[train],
                np.full(int(train.sum()), 0.012),
                "|",
                transform=ax.get_xaxis_transform(),
                color=TRAIN_COLOUR,
                ms=7,
                mew=0.6,
                alpha=0.8,
                label=f"{train_label} ({int(train.sum())}, ticks)",
            )
        else:
            y = np.where(np.isfinite(true), true, mean)[train]
            mark = ax.scatter(
                t[train],
                y,
                s=16,
                marker="o",
                facecolors="none",
                edgecolors=TRAIN_COLOUR,
                lw=0.9,
                zorder=4,
                label=f"{train_label} ({int(train.sum())})",
            )
        handles.append(mark)
    if flags is not None:
        spans = flagged_spans(t, flags)
        shaded = _shade(ax, spans, label=f"extrapolating ({int(flags.sum())} frames)")
        _shade(ax_err, spans)
        if shaded is not None:
            handles.append(shaded)
    if dense:  # room under the curves for the rug
        parts = [mean - 2 * std, mean + 2 * std, true[known]]
        if band is not None:
            parts += [band[0], band[1]]
        lo = float(np.nanmin(np.concatenate(parts)))
        hi = float(np.nanmax(np.concatenate(parts)))
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.04 * (hi - lo))
    ax.set_ylabel("band gap (eV)")
    ax.grid(alpha=0.3, lw=0.5)

    ax_err.fill_between(t, -2 * std * MEV_PER_EV, 2 * std * MEV_PER_EV, color=MEAN_COLOUR, alpha=0.25, lw=0)
    if band is not None:  # the interval around the mean, as an error band
        ax_err.plot(t, (band[0] - mean) * MEV_PER_EV, color=CALIBRATED_COLOUR, lw=0.8, ls="--")
        ax_err.plot(t, (band[1] - mean) * MEV_PER_EV, color=CALIBRATED_COLOUR, lw=0.8, ls="--")
    ax_err.axhline(0.0, color="0.3", lw=0.8)
    if known.any():
        err = (mean - true) * MEV_PER_EV
        ax_err.plot(
            t[known],
            err[known],
            color=MEAN_COLOUR,
            lw=0.7,
            marker="." if known.sum() < 0.5 * len(t) else None,
            ms=2,
        )
        if train is not None and not dense and (train & known).any():
            ax_err.scatter(
                t[train & known],
                err[train & known],
                s=12,
                facecolors="none",
                edgecolors=TRAIN_COLOUR,
                lw=0.7,
                zorder=4,
            )
    ax_err.set_ylabel("mean − true (meV)")
    ax_err.set_xlabel("time (fs)")
    ax_err.grid(alpha=0.3, lw=0.5)
    ax_err.set_xlim(t[0], t[-1])
    fig.suptitle(title)
    legend_above(ax, handles)
    return fig


def extension_gap_vs_time(
    time_fs: np.ndarray,
    gap_true_ev: np.ndarray,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    *,
    train_mask: np.ndarray | None = None,
    gap_lo_ev: np.ndarray | None = None,
    gap_hi_ev: np.ndarray | None = None,
    level: float | None = None,
    extrapolating: np.ndarray | None = None,
) -> Figure:
    """The extension's band gap against time: true gaps and the fine-tuned ensemble (mean ± 2 std).

    Args as ``gap_vs_time``: the calibrated interval (eV) and the extrapolation
    flags are drawn when given.
    """
    return gap_vs_time(
        time_fs,
        gap_true_ev,
        gap_mean_ev,
        gap_std_ev,
        train_mask=train_mask,
        gap_lo_ev=gap_lo_ev,
        gap_hi_ev=gap_hi_ev,
        level=level,
        extrapolating=extrapolating,
        title="Band gap along the extension: fine-tuned ensemble",
        mean_label="fine-tuned ensemble mean",
        train_label="fine-tuning frames",
    )
