"""The report's figures of the ensemble's training and errors: learning curves, parity, transfer learning.

Arrays in, ``matplotlib.figure.Figure`` out, as every ``figures_*`` module
(``core/report/figures_base.py`` says why no pyplot). Errors in meV, gaps in eV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from qdgap.core.common.metrics import coverage_ksigma, error_stats_mev
from qdgap.core.report.figures_base import MEAN_COLOUR, new_figure

TRANSFER_MODELS = (
    "pretrained",
    "finetuned",
    "scratch",
)  # rows of finetune_report.csv, in plot order
TRANSFER_NAMES = {
    "pretrained": "pretrained\n(no fine-tuning)",
    "finetuned": "fine-tuned",
    "scratch": "from scratch",
}


# ==========================================================================
# Learning curves
# ==========================================================================


def learning_curves(curves: Mapping[int, Mapping[str, np.ndarray]]) -> Figure:
    """Validation MAE and training loss against epoch for every ensemble member.

    Args:
        curves: member seed -> columns of its ``metrics.csv``; each needs
            ``epoch`` (E,), ``val_mae_mev`` (E,) meV and ``train_loss`` (E,)
            (L1 on the standardised gap, unitless).

    Returns:
        Two panels: validation MAE (log scale where it spans a decade) with each
        member's best epoch marked, and training loss; the median over members
        is drawn in black, members are coloured by seed.
    """
    if not curves:
        raise ValueError("no learning curves to plot")
    import matplotlib as mpl

    seeds = sorted(curves)
    fig = new_figure(11.5, 4.4)
    ax_val, ax_train = fig.subplots(1, 2)
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.Normalize(vmin=min(seeds), vmax=max(seeds) if max(seeds) > min(seeds) else min(seeds) + 1)
    for seed in seeds:
        c = curves[seed]
        epoch = np.asarray(c["epoch"], np.float64)
        colour = cmap(norm(seed))
        ax_val.plot(epoch, c["val_mae_mev"], color=colour, lw=0.9, alpha=0.75)
        ax_train.plot(epoch, c["train_loss"], color=colour, lw=0.9, alpha=0.75)
        val = np.asarray(c["val_mae_mev"], np.float64)
        if np.isfinite(val).any():
            best = int(np.nanargmin(val))
            ax_val.plot(epoch[best], val[best], "o", ms=4, mfc=colour, mec="black", mew=0.6, zorder=3)
    for ax, key in ((ax_val, "val_mae_mev"), (ax_train, "train_loss")):
        epochs, median = _median_curve([curves[s] for s in seeds], key)
        if len(seeds) > 1 and len(epochs):
            ax.plot(
                epochs,
                median,
                color="black",
                lw=2.0,
                label=f"median of {len(seeds)} members",
                zorder=4,
            )
        values = np.concatenate([np.asarray(curves[s][key], np.float64) for s in seeds])
        values = values[np.isfinite(values)]
        if len(values) and values.min() > 0 and values.max() / values.min() > 4:
            _log_axis(ax.yaxis, values.min(), values.max())
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    ax_val.plot([], [], "o", ms=4, mfc="white", mec="black", mew=0.6, label="best epoch of a member")
    ax_val.set_ylabel("validation MAE (meV)")
    ax_val.set_title("Validation MAE")
    ax_train.set_ylabel("training loss (L1 on standardised gap, unitless)")
    ax_train.set_title("Training loss")
    ax_val.legend(loc="upper right", fontsize=8, framealpha=0.9)
    if len(seeds) > 1:
        ax_train.legend(loc="upper right", fontsize=8, framealpha=0.9)
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        cbar = fig.colorbar(sm, ax=[ax_val, ax_train], label="member seed", aspect=30, pad=0.01)
        cbar.locator = mpl.ticker.MaxNLocator(integer=True)
        cbar.update_ticks()
    fig.suptitle(f"Learning curves of the {len(seeds)} ensemble member{'s' if len(seeds) != 1 else ''}")
    return fig


def _log_axis(axis, lo: float, hi: float) -> None:
    """Log scale with plain tick labels (``20``, ``0.3``), minor ticks at 2 and 5 labelled when the range is short."""
    import matplotlib.ticker as mticker

    axis.axes.set_yscale("log") if axis.axis_name == "y" else axis.axes.set_xscale("log")
    plain = mticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    if np.log10(hi / lo) < 2.5:

        def minor(v: float, _: object) -> str:
            lead = round(v / 10 ** np.floor(np.log10(v) + 1e-9))
            return f"{v:g}" if lead in (2, 5) else ""

        axis.set_minor_formatter(mticker.FuncFormatter(minor))
    else:
        axis.set_minor_formatter(mticker.NullFormatter())


def _median_curve(columns: Sequence[Mapping[str, np.ndarray]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Median over members at each epoch, among the members that reached it (early stopping)."""
    table: dict[float, list[float]] = {}
    for c in columns:
        for e, v in zip(np.asarray(c["epoch"], np.float64), np.asarray(c[key], np.float64), strict=True):
            if np.isfinite(v):
                table.setdefault(float(e), []).append(float(v))
    epochs = np.array(sorted(table))
    return epochs, np.array([np.median(table[e]) for e in epochs])


# ==========================================================================
# Parity
# ==========================================================================


def parity(
    gap_true_ev: np.ndarray,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    *,
    title: str = "Ensemble mean against true gap on unseen frames",
    what: str = "unseen frames",
) -> Figure:
    """Ensemble mean against the true gap, with ±2 std error bars and RMSE/MAE in the corner.

    Args:
        gap_true_ev: (F,) eV; frames with NaN are left out.
        gap_mean_ev: (F,) eV, ensemble mean.
        gap_std_ev: (F,) eV, population std over members.
        title: axes title.
        what: what the frames are, for the corner text.
    """
    t, m, s = (np.asarray(a, np.float64) for a in (gap_true_ev, gap_mean_ev, gap_std_ev))
    ok = np.isfinite(t) & np.isfinite(m)
    if not ok.any():
        raise ValueError("no frame with both a true and a predicted gap")
    t, m, s = t[ok], m[ok], np.nan_to_num(s[ok])
    rmse, mae = error_stats_mev(t, m)
    cover = coverage_ksigma(t, m, s, 2.0)
    fig = new_figure(6.2, 6.0)
    ax = fig.subplots()
    lo = float(min(t.min(), (m - 2 * s).min()))
    hi = float(max(t.max(), (m + 2 * s).max()))
    pad = 0.05 * (hi - lo or 0.1)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1.0, ls="--", label="ideal (y = x)", zorder=1)
    alpha = 0.7 if len(t) < 300 else 0.45 if len(t) < 3000 else 0.3
    ax.errorbar(
        t,
        m,
        yerr=2 * s,
        fmt="o",
        ms=3,
        mfc=MEAN_COLOUR,
        mec="none",
        alpha=alpha,
        ecolor="#9ecae1",
        elinewidth=0.7,
        capsize=0,
        label="ensemble mean ± 2 std",
        zorder=2,
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true gap (eV)")
    ax.set_ylabel("predicted gap, ensemble mean (eV)")
    ax.set_title(title)
    ax.grid(alpha=0.3, lw=0.5)
    text = f"RMSE {rmse:.1f} meV\nMAE {mae:.1f} meV\n±2 std coverage {100 * cover:.0f} %\n{len(t)} {what}"
    ax.text(
        0.03,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=10,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9},
    )
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    return fig


# ==========================================================================
# Transfer learning
# ==========================================================================


def transfer_comparison(rows: Mapping[str, Mapping[str, float]]) -> Figure:
    """RMSE and MAE on the extension for the pretrained, fine-tuned and from-scratch models.

    Args:
        rows: model name (``pretrained``, ``finetuned``, ``scratch``; missing
            ones are left out) -> ``rmse_mev``, ``mae_mev`` (meV), ``wall_s``
            (s, training time; 0 or NaN for none) and ``n_frames`` (frames scored).
    """
    models = [m for m in TRANSFER_MODELS if m in rows] + [m for m in rows if m not in TRANSFER_MODELS]
    if not models:
        raise ValueError("no transfer-learning rows to plot")
    fig = new_figure(max(5.5, 2.2 * len(models) + 1.5), 4.8)
    ax = fig.subplots()
    x = np.arange(len(models))
    width = 0.36
    top = 0.0
    for off, key, name, colour in (
        (-width / 2, "rmse_mev", "RMSE", "#3b6fb6"),
        (width / 2, "mae_mev", "MAE", "#9ecae1"),
    ):
        vals = np.array([float(rows[m].get(key, np.nan)) for m in models])
        bars = ax.bar(
            x + off,
            np.nan_to_num(vals),
            width,
            color=colour,
            label=name,
            edgecolor="0.3",
            lw=0.5,
            zorder=2,
        )
        ax.bar_label(
            bars,
            labels=[f"{v:.1f}" if np.isfinite(v) else "n/a" for v in vals],
            fontsize=9,
            padding=2,
        )
        top = max(top, float(np.nanmax(vals)) if np.isfinite(vals).any() else 0.0)
    ticks = []
    for m in models:
        wall = float(rows[m].get("wall_s", np.nan))
        nfr = float(rows[m].get("n_frames", np.nan))
        detail = [f"training {_seconds(wall)}"] if np.isfinite(wall) and wall > 0 else []
        detail += [f"{int(nfr)} frames scored"] if np.isfinite(nfr) else []
        ticks.append("\n".join([TRANSFER_NAMES.get(m, m), ", ".join(detail)]).strip())
    ax.set_xticks(x, ticks, fontsize=9)
    ax.set_ylim(0, (top or 1.0) * 1.3)
    ax.set_ylabel("error on the extension (meV)")
    ax.set_title("Transfer learning to the extension")
    ax.grid(axis="y", alpha=0.3, lw=0.5, zorder=0)
    ax.legend(loc="upper right", fontsize=9, ncol=2, framealpha=0.9)
    return fig


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
