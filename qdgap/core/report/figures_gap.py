"""The report's band gap against time, along the trajectory and along the extension.

Arrays in, ``matplotlib.figure.Figure`` out (``core/report/figures_base.py``). Gaps in
eV, errors in meV, time in fs. Besides the raw ensemble spread (mean ± 2 std),
a plot can carry the calibrated interval ``gap_lo_ev..gap_hi_ev`` that
``qdgap predict`` writes (as a band) and shade the frames it flags as extrapolating.
A long trajectory (the real study's 10,001 frames) gets zoom panels below the
whole: by default its first ``ZOOM_WINDOW_FS`` and the window of that length
where the ensemble mean errs most, so that single frames can be read.
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
_MAX_LABEL_MARKERS = 2000  # more labelled frames than this are drawn as a line without dots
ZOOM_WINDOW_FS = 500.0  # length of each default zoom window, fs
# Zoom panels only for a trajectory spanning more than this: the demo's 1 ps reads whole, 10 ps does not.
ZOOM_MIN_SPAN_FS = 4 * ZOOM_WINDOW_FS


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


def worst_window(
    time_fs: np.ndarray, gap_true_ev: np.ndarray, gap_mean_ev: np.ndarray, *, window_fs: float = ZOOM_WINDOW_FS
) -> tuple[float, float] | None:
    """The ``window_fs`` long time window (fs) where the mean's RMSE against the true gaps is largest.

    Windows start at labelled frames and lie inside the labelled span; one needs at least half the
    labelled frames a window holds on average. None without two labelled frames ``window_fs`` apart.

    Args:
        time_fs: (F,) fs, increasing.
        gap_true_ev: (F,) eV, NaN where unknown.
        gap_mean_ev: (F,) eV.
    """
    t = np.asarray(time_fs, np.float64)
    known = np.isfinite(gap_true_ev)
    t = t[known]
    if len(t) < 2 or t[-1] - t[0] < window_fs:
        return None
    err2 = (np.asarray(gap_mean_ev, np.float64)[known] - np.asarray(gap_true_ev, np.float64)[known]) ** 2
    cum = np.concatenate([[0.0], np.cumsum(err2)])
    starts = np.flatnonzero(t + window_fs <= t[-1])
    ends = np.searchsorted(t, t[starts] + window_fs, side="right")
    count = ends - starts
    ok = count >= max(1, 0.5 * count.mean())
    if not ok.any():
        return None
    mse = np.where(ok, (cum[ends] - cum[starts]) / np.maximum(count, 1), -1.0)
    best = starts[int(np.argmax(mse))]
    return float(t[best]), float(t[best] + window_fs)


def default_zoom(
    time_fs: np.ndarray, gap_true_ev: np.ndarray, gap_mean_ev: np.ndarray, *, window_fs: float = ZOOM_WINDOW_FS
) -> list[tuple[float, float]]:
    """The zoom windows (fs) of a long trajectory: its first ``window_fs`` and the worst-predicted window
    (``worst_window``) when that is another; none for a span under ``ZOOM_MIN_SPAN_FS``."""
    t = np.asarray(time_fs, np.float64)
    if not len(t) or t.max() - t.min() <= ZOOM_MIN_SPAN_FS:
        return []
    first = (float(t.min()), float(t.min() + window_fs))
    worst = worst_window(t, gap_true_ev, gap_mean_ev, window_fs=window_fs)
    return [first] if worst is None or worst[0] < first[1] else [first, worst]


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
    zoom_fs: list[tuple[float, float]] | None = None,
    title: str = "Band gap along the trajectory",
    mean_label: str = "ensemble mean",
    train_label: str = "training frames",
) -> Figure:
    """Band gap against time: true gaps, ensemble mean with a ±2 std band, training frames marked.

    A lower panel shows the error of the mean (meV) against the same ±2 std band.
    With ``gap_lo_ev``/``gap_hi_ev`` the calibrated interval is drawn in both
    panels as a band over the raw one; with ``extrapolating`` the flagged frames
    are shaded along time. Zoom panels below show chosen time windows at full detail.

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
        zoom_fs: (start, end) windows in fs, one zoom panel each (at most 3); None for ``default_zoom``
            (none on a short trajectory), [] for none.
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

    windows = default_zoom(t, true, mean) if zoom_fs is None else [(float(a), float(b)) for a, b in zoom_fs][:3]
    if windows:
        fig = new_figure(12.0, 9.0)
        grid = fig.add_gridspec(3, len(windows), height_ratios=(3, 1.3, 2.4))
        ax = fig.add_subplot(grid[0, :])
        ax_err = fig.add_subplot(grid[1, :], sharex=ax)
    else:
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
        # A band, not two dashed edges: over 10,001 frames the edges drawn frame by frame are a wall of dashes.
        cal_band = ax.fill_between(t, band[0], band[1], color=CALIBRATED_COLOUR, alpha=0.22, lw=0, label=name)
        handles.append(cal_band)
    if known.any():
        # Dots show where the labels are, unless there are so many that they merge into a line anyway.
        sparse = known.sum() < 0.5 * len(t) and known.sum() <= _MAX_LABEL_MARKERS
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
        ax_err.fill_between(
            t, (band[0] - mean) * MEV_PER_EV, (band[1] - mean) * MEV_PER_EV, color=CALIBRATED_COLOUR, alpha=0.22, lw=0
        )
    ax_err.axhline(0.0, color="0.3", lw=0.8)
    if known.any():
        err = (mean - true) * MEV_PER_EV
        ax_err.plot(
            t[known],
            err[known],
            color=MEAN_COLOUR,
            lw=0.7,
            marker="." if known.sum() < 0.5 * len(t) and known.sum() <= _MAX_LABEL_MARKERS else None,
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
    for k, (a, b) in enumerate(windows):
        for edge in (a, b):  # where each zoom panel looks, marked on the whole
            ax.axvline(edge, color="0.35", lw=0.7, ls=":")
        _zoom_panel(fig.add_subplot(grid[2, k]), t, true, mean, std, band, flags, (a, b), first=k == 0)
    fig.suptitle(title)
    legend_above(ax, handles)
    return fig


def _zoom_panel(ax, t, true, mean, std, band, flags, window: tuple[float, float], *, first: bool) -> None:
    """One zoom panel: the frames inside ``window`` (fs) with their bands, the mean and the true gaps."""
    a, b = window
    inside = (t >= a) & (t <= b)
    ti, mi, si = t[inside], mean[inside], std[inside]
    ax.fill_between(ti, mi - 2 * si, mi + 2 * si, color=MEAN_COLOUR, alpha=0.25, lw=0)
    if band is not None:
        ax.fill_between(ti, band[0][inside], band[1][inside], color=CALIBRATED_COLOUR, alpha=0.22, lw=0)
    ax.plot(ti, mi, color=MEAN_COLOUR, lw=1.0)
    known = inside & np.isfinite(true)
    if known.any():
        ax.plot(t[known], true[known], color=TRUE_COLOUR, lw=0.8, marker=".", ms=2.5)
        rmse = float(np.sqrt(np.mean((mean[known] - true[known]) ** 2)) * MEV_PER_EV)
        ax.set_title(f"{a:g}-{b:g} fs: RMSE {rmse:.1f} meV on {int(known.sum())} frames", fontsize=9)
    else:
        ax.set_title(f"{a:g}-{b:g} fs", fontsize=9)
    if flags is not None:
        _shade(ax, [(max(x, a), min(y, b)) for x, y in flagged_spans(t, flags) if y > a and x < b])
    ax.set_xlim(a, b)
    ax.set_xlabel("time (fs)")
    if first:
        ax.set_ylabel("band gap (eV)")
    ax.grid(alpha=0.3, lw=0.5)


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
    zoom_fs: list[tuple[float, float]] | None = None,
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
        zoom_fs=zoom_fs,
        title="Band gap along the extension: fine-tuned ensemble",
        mean_label="fine-tuned ensemble mean",
        train_label="fine-tuning frames",
    )
