"""The report's figures of the ensemble's uncertainty: the reliability diagram and the selection learning curve.

Arrays in, ``matplotlib.figure.Figure`` out (``core/report/figures_base.py``). Errors
and spreads in eV on the way in, meV on the axes; coverages as fractions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from qdgap.core.common.metrics import MEV_PER_EV, coverage_curve, miscalibration_area, spearman_rho
from qdgap.core.report.figures_base import CALIBRATED_COLOUR, MEAN_COLOUR, new_figure

RELIABILITY_LEVELS = np.round(np.arange(0.05, 0.951, 0.05), 2)  # expected coverages drawn, 0.05..0.95
STRATEGY_ORDER = ("spread", "spread-diverse", "random", "grid")  # qdgap select --strategy, legend order


# ==========================================================================
# Reliability diagram
# ==========================================================================


def reliability_diagram(
    err_ev: np.ndarray,
    std_ev: np.ndarray,
    *,
    std_calibrated_ev: np.ndarray | None = None,
    levels: np.ndarray = RELIABILITY_LEVELS,
    what: str = "unseen frames",
) -> Figure:
    """Expected against observed coverage of mean ± z(p) std, raw and calibrated; |error| against spread.

    Left: for each expected level p the fraction of frames whose true gap lies
    within the central Gaussian interval of that level (``metrics.coverage_curve``);
    on the diagonal is a calibrated spread, above it a too-wide one. The legend
    gives each curve's miscalibration area (``metrics.miscalibration_area``).
    Right: |error| against the spread per frame, log-log, with Spearman's rho:
    whether a larger spread means a larger error, whatever the scale.

    Args:
        err_ev: (F,) eV, ensemble mean minus true gap; frames with NaN are left out.
        std_ev: (F,) eV, raw spread (population std over the members).
        std_calibrated_ev: (F,) eV, calibrated spread; None for files written before calibration.
        levels: (L,) expected coverages in (0, 1).
        what: what the frames are, for the title.
    """
    err = np.asarray(err_ev, np.float64)
    raw = np.asarray(std_ev, np.float64)
    cal = None if std_calibrated_ev is None else np.asarray(std_calibrated_ev, np.float64)
    ok = np.isfinite(err) & np.isfinite(raw)
    if cal is not None:
        ok &= np.isfinite(cal)
    if not ok.any():
        raise ValueError("no frame with both an error and a spread")
    err, raw = err[ok], raw[ok]
    cal = None if cal is None else cal[ok]
    levels = np.asarray(levels, np.float64)
    curves = [("raw spread", raw, MEAN_COLOUR, "o")]
    if cal is not None:
        curves.append(("calibrated spread", cal, CALIBRATED_COLOUR, "s"))

    fig = new_figure(11.0, 4.9)
    ax, ax_sp = fig.subplots(1, 2, width_ratios=(1, 1.05))
    ax.plot([0, 1], [0, 1], color="0.4", lw=1.0, ls="--", label="ideal (observed = expected)", zorder=1)
    for name, std, colour, marker in curves:
        observed = coverage_curve(err, std, levels)
        area = miscalibration_area(err, std)
        ax.plot(
            levels,
            observed,
            color=colour,
            marker=marker,
            ms=4,
            lw=1.4,
            label=f"{name} (miscalibration area {area:.3f})",
            zorder=3,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage of mean ± z·std")
    ax.set_ylabel(f"observed coverage ({len(err)} {what})")
    ax.set_title("Reliability diagram")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)

    abs_err = np.abs(err) * MEV_PER_EV
    spread = (cal if cal is not None else raw) * MEV_PER_EV
    rho = spearman_rho(spread, abs_err)
    pos = (abs_err > 0) & (spread > 0)  # log axes: exact zeros (a one-member spread) cannot be drawn
    alpha = 0.7 if len(err) < 300 else 0.4
    colour = CALIBRATED_COLOUR if cal is not None else MEAN_COLOUR
    ax_sp.scatter(spread[pos], abs_err[pos], s=9, color=colour, alpha=alpha, lw=0)
    if pos.any():
        lo = float(min(spread[pos].min(), abs_err[pos].min()))
        hi = float(max(spread[pos].max(), abs_err[pos].max()))
        xs = np.array([lo, hi])
        ax_sp.plot(xs, xs, color="0.4", lw=1.0, ls="--", label="|error| = spread")
        ax_sp.plot(xs, 1.96 * xs, color="0.4", lw=0.8, ls=":", label="|error| = 1.96 spread (95 % edge)")
        ax_sp.set_xscale("log")
        ax_sp.set_yscale("log")
        ax_sp.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    which = "calibrated" if cal is not None else "raw"
    ax_sp.set_xlabel(f"{which} spread (meV)")
    ax_sp.set_ylabel("|mean − true| (meV)")
    ax_sp.set_title(f"Error against spread: Spearman ρ = {rho:.2f}")
    ax_sp.grid(alpha=0.3, lw=0.5, which="both")
    fig.suptitle(f"Is the ensemble spread an error bar? ({len(err)} {what})")
    return fig


# ==========================================================================
# Choosing frames to label (bench/bench_selection.py's record)
# ==========================================================================


def selection_curve(
    stats: Mapping[str, Mapping[int, tuple[float, float, int]]],
    *,
    pretrained_rmse_mev: float | None = None,
    all_rmse_mev: float | None = None,
    all_frames: int | None = None,
    title: str = "Choosing frames to label",
) -> Figure:
    """Held-out RMSE against the number of labelled frames chosen, one line per selection strategy.

    Args:
        stats: strategy -> K -> (mean RMSE over repeats (meV), std over repeats (meV), repeats).
        pretrained_rmse_mev: meV, the ensemble before fine-tuning (dotted line).
        all_rmse_mev: meV, fine-tuned on every candidate frame (dashed line).
        all_frames: how many frames that was, for the legend.
        title: axes title.
    """
    import matplotlib.ticker as mticker

    names = [s for s in STRATEGY_ORDER if s in stats] + [s for s in stats if s not in STRATEGY_ORDER]
    ks = sorted({int(k) for s in names for k in stats[s]})
    if not ks:
        raise ValueError("no selection results to plot")
    fig = new_figure(7.0, 4.6)
    ax = fig.subplots()
    handles = []  # strategies first, then the references (matplotlib would list the lines first)
    for name in names:
        xs = sorted(int(k) for k in stats[name])
        m = np.array([stats[name][k][0] for k in xs], np.float64)
        sd = np.array([stats[name][k][1] for k in xs], np.float64)
        handles.append(ax.errorbar(xs, m, yerr=sd, marker="o", ms=4, capsize=3, lw=1.3, label=name))
    if all_rmse_mev is not None and np.isfinite(all_rmse_mev):
        text = f"all {all_frames} frames" if all_frames else "all frames"
        handles.append(
            ax.axhline(all_rmse_mev, color="black", ls="--", lw=1.0, label=f"{text} ({all_rmse_mev:.1f} meV)")
        )
    if pretrained_rmse_mev is not None and np.isfinite(pretrained_rmse_mev):
        handles.append(
            ax.axhline(
                pretrained_rmse_mev, color="0.5", ls=":", lw=1.2, label=f"pretrained ({pretrained_rmse_mev:.1f} meV)"
            )
        )
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set_xlabel("labelled frames chosen (K)")
    ax.set_ylabel("held-out RMSE (meV), mean ± std over repeats")
    ax.set_title(title)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(handles=handles, fontsize=8.5, framealpha=0.9)
    return fig
