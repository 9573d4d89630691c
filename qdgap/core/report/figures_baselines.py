"""Where the model starts to pay: its error and the baselines' against distance to the nearest training label.

Pure plotting (``figures_base``): arrays in, a bare ``Figure`` out. Errors in meV, distances in fs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qdgap.core.report.figures_base import MEAN_COLOUR, legend_above, new_figure

# Baselines drawn beside the model, with their colours and names.
DRAWN = {"linear": ("#e6550d", "linear interpolation"), "nearest": ("#7f7f7f", "nearest label"),
         "mean": ("#8e6bb0", "training mean")}  # fmt: skip


def error_by_distance(
    edges_fs: np.ndarray, frames: np.ndarray, rmse_mev: Mapping[str, np.ndarray], *, corr_time_fs: float
):
    """RMSE per distance bin of the model (``rmse_mev["model"]``) and of the drawn baselines.

    Args:
        edges_fs: (K + 1,) bin edges, fs; the last may be inf (drawn at twice the one before).
        frames: (K,) frames per bin (bins without frames are left out).
        rmse_mev: name -> (K,) RMSE per bin, meV.
        corr_time_fs: marked as a vertical line (the gap's correlation time).
    """
    from matplotlib.lines import Line2D

    edges = np.asarray(edges_fs, np.float64).copy()
    if not np.isfinite(edges[-1]):
        edges[-1] = 2 * edges[-2] if edges[-2] > 0 else 1.0
    lo = np.where(edges[:-1] > 0, edges[:-1], edges[1] / 4)  # a log axis has no 0
    centre = np.sqrt(lo * edges[1:])
    filled = np.asarray(frames) > 0
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    handles = []
    for name, (colour, title) in {"model": (MEAN_COLOUR, "qdgap ensemble"), **DRAWN}.items():
        if name not in rmse_mev:
            continue
        y = np.asarray(rmse_mev[name], np.float64)
        ok = filled & np.isfinite(y)
        ax.plot(centre[ok], y[ok], "o-", color=colour, lw=2.0 if name == "model" else 1.2, ms=4)
        handles.append(Line2D([], [], color=colour, marker="o", label=title))
    if np.isfinite(corr_time_fs) and corr_time_fs > 0:
        ax.axvline(corr_time_fs, color="black", ls=":", lw=1)
        ax.text(corr_time_fs, ax.get_ylim()[1], " correlation time", va="top", fontsize=8)
    for c, n in zip(centre[filled], np.asarray(frames)[filled], strict=True):
        ax.annotate(f"{int(n)}", (c, 0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                    textcoords="offset points", ha="center", fontsize=7, color="0.4")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("time distance to the nearest training label, fs (frames per bin at the bottom)")
    ax.set_ylabel("RMSE, meV")
    legend_above(ax, handles)
    return fig
