"""The report's figures: arrays in, ``matplotlib.figure.Figure`` out.

Pure plotting: no file I/O, no pyplot and no global state. Every figure is a
bare ``Figure`` on an Agg canvas with ``constrained_layout``, so building one
never opens a window and never depends on the user's matplotlib backend;
``core/report.py`` saves them.

Conventions: gaps in eV, errors in meV, time in fs, lengths in Å. Shape
letters: M members, F frames, N atoms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qdgap.core.metrics import MEV_PER_EV, coverage_ksigma, error_stats_mev

BOND_DRAW_CUTOFF_ANG = 3.0  # pairs closer than this are drawn as bonds in the 3D view, Å
TOP_ATOMS_LABELLED = 10  # atoms named in the 3D view

# Species colours for the importance bars, and marker sizes (points^2) for the 3D view.
SPECIES_COLOURS = {"Cd": "#d9822b", "Se": "#3b6fb6", "Cl": "#3a9a5b"}
_FALLBACK_COLOURS = ("#8e6bb0", "#b5526b", "#6b8e23", "#7f7f7f", "#17becf")
SPECIES_MARKERS = {"Cd": "o", "Se": "s", "Cl": "^"}
_MARKER_AREA_PER_ANG2 = 105.0  # 3D marker area per squared covalent radius, points^2 / Å^2

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

_MAX_TRAIN_MARKERS = 120  # more training frames than this are marked by a rug, not circles
_TRUE_COLOUR = "black"
_MEAN_COLOUR = "#1f77b4"
_TRAIN_COLOUR = "#e6550d"


# ==========================================================================
# Helpers
# ==========================================================================


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend_above(ax, handles: Sequence) -> None:
    """One row of legend entries just above the axes, clear of the data (constrained layout makes room)."""
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        fontsize=9,
        frameon=False,
        borderaxespad=0.3,
        handlelength=1.8,
        columnspacing=1.6,
    )


def species_of(label: str) -> str:
    """``"Cd12"`` -> ``"Cd"``: the element symbol at the front of an atom label."""
    m = re.match(r"[A-Z][a-z]?", str(label))
    return m.group(0) if m else str(label)


def _species_colours(species: Sequence[str]) -> dict[str, str]:
    colours: dict[str, str] = {}
    extra = iter(_FALLBACK_COLOURS * 4)
    for s in dict.fromkeys(species):
        colours[s] = SPECIES_COLOURS.get(s) or next(extra)
    return colours


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
    fig = _figure(11.5, 4.4)
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
    fig = _figure(6.2, 6.0)
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
        mfc=_MEAN_COLOUR,
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
# Gap against time
# ==========================================================================


def gap_vs_time(
    time_fs: np.ndarray,
    gap_true_ev: np.ndarray,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    *,
    train_mask: np.ndarray | None = None,
    title: str = "Band gap along the trajectory",
    mean_label: str = "ensemble mean",
    train_label: str = "training frames",
) -> Figure:
    """Band gap against time: true gaps, ensemble mean with a ±2 std band, training frames marked.

    A lower panel shows the error of the mean (meV) against the same ±2 std band.

    Args:
        time_fs: (F,) fs, increasing.
        gap_true_ev: (F,) eV; NaN where unknown.
        gap_mean_ev: (F,) eV.
        gap_std_ev: (F,) eV.
        train_mask: (F,) bool, frames some member trained on (marked on the curve).
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
    known = np.isfinite(true)

    fig = _figure(12.0, 6.2)
    ax, ax_err = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    band = ax.fill_between(
        t,
        mean - 2 * std,
        mean + 2 * std,
        color=_MEAN_COLOUR,
        alpha=0.25,
        lw=0,
        label="mean ± 2 std",
    )
    (line_mean,) = ax.plot(t, mean, color=_MEAN_COLOUR, lw=1.0, label=mean_label)
    handles = [band, line_mean]
    if known.any():
        sparse = known.sum() < 0.5 * len(t)
        (line_true,) = ax.plot(
            t[known],
            true[known],
            color=_TRUE_COLOUR,
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
                color=_TRAIN_COLOUR,
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
                edgecolors=_TRAIN_COLOUR,
                lw=0.9,
                zorder=4,
                label=f"{train_label} ({int(train.sum())})",
            )
        handles.append(mark)
    if dense:  # room under the curves for the rug
        lo = float(np.nanmin(np.concatenate([mean - 2 * std, true[known]])))
        hi = float(np.nanmax(np.concatenate([mean + 2 * std, true[known]])))
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.04 * (hi - lo))
    ax.set_ylabel("band gap (eV)")
    ax.grid(alpha=0.3, lw=0.5)

    ax_err.fill_between(t, -2 * std * MEV_PER_EV, 2 * std * MEV_PER_EV, color=_MEAN_COLOUR, alpha=0.25, lw=0)
    ax_err.axhline(0.0, color="0.3", lw=0.8)
    if known.any():
        err = (mean - true) * MEV_PER_EV
        ax_err.plot(
            t[known],
            err[known],
            color=_MEAN_COLOUR,
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
                edgecolors=_TRAIN_COLOUR,
                lw=0.7,
                zorder=4,
            )
    ax_err.set_ylabel("mean − true (meV)")
    ax_err.set_xlabel("time (fs)")
    ax_err.grid(alpha=0.3, lw=0.5)
    ax_err.set_xlim(t[0], t[-1])
    fig.suptitle(title)
    _legend_above(ax, handles)
    return fig


# ==========================================================================
# Atom importance
# ==========================================================================


def atom_importance(
    atom_label: Sequence[str],
    rmse_mev_mean: np.ndarray,
    rmse_mev_std: np.ndarray,
    *,
    baseline_rmse_mev: np.ndarray | None = None,
) -> Figure:
    """Per-atom importance (FNA): the RMSE with each atom nullified, sorted, coloured by species.

    Args:
        atom_label: N labels (``Cd1``.., ``Se1``.., ``Cl1``..).
        rmse_mev_mean: (N,) meV, ensemble-mean RMSE of the masked prediction.
        rmse_mev_std: (N,) meV, spread over members (drawn as error bars).
        baseline_rmse_mev: (M,) meV, RMSE of the unmasked prediction per member
            (drawn as a line at its mean with a ± std band).
    """
    labels = [str(x) for x in atom_label]
    mean = np.asarray(rmse_mev_mean, np.float64)
    std = np.nan_to_num(np.asarray(rmse_mev_std, np.float64))
    n = len(labels)
    if n == 0 or mean.shape != (n,):
        raise ValueError("need one RMSE per atom label")
    order = np.argsort(-mean, kind="stable")
    species = [species_of(labels[i]) for i in order]
    colours = _species_colours(species)
    fig = _figure(max(7.0, 0.165 * n + 2.0), 5.2)
    ax = fig.subplots()
    x = np.arange(n)
    ax.bar(
        x,
        mean[order],
        yerr=std[order],
        color=[colours[s] for s in species],
        width=0.78,
        error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.25"},
        zorder=2,
    )
    import matplotlib.patches as mpatches
    from matplotlib.lines import Line2D

    handles = [mpatches.Patch(color=c, label=s) for s, c in colours.items()]
    handles.append(Line2D([], [], color="0.25", marker="|", ls="none", ms=8, label="± std over members"))
    if baseline_rmse_mev is not None and np.isfinite(baseline_rmse_mev).any():
        b = np.asarray(baseline_rmse_mev, np.float64)
        b = b[np.isfinite(b)]
        ax.axhspan(b.mean() - b.std(), b.mean() + b.std(), color="0.5", alpha=0.18, lw=0, zorder=1)
        ax.axhline(b.mean(), color="black", ls="--", lw=1.1, zorder=3)
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                ls="--",
                lw=1.1,
                label=f"unmasked baseline {b.mean():.1f} meV (± std band)",
            )
        )
    ax.set_xticks(x, [labels[i] for i in order], rotation=90, fontsize=8)
    for tick, s in zip(ax.get_xticklabels(), species, strict=True):
        tick.set_color(colours[s])
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(0, float(np.nanmax(mean[order] + std[order])) * 1.05)
    ax.set_xlabel("atom (sorted by ensemble-mean RMSE, most important first)")
    ax.set_ylabel("RMSE with the atom nullified (meV)")
    ax.grid(axis="y", alpha=0.3, lw=0.5, zorder=0)
    fig.suptitle("Atom importance by Feature Nullification Analysis")
    _legend_above(ax, handles)
    return fig


# ==========================================================================
# The quantum dot in 3D
# ==========================================================================


def quantum_dot_3d(
    positions_ang: np.ndarray,
    atom_label: Sequence[str],
    importance_mev: np.ndarray,
    *,
    numbers: np.ndarray | None = None,
    top: int = TOP_ATOMS_LABELLED,
    bond_cutoff_ang: float = BOND_DRAW_CUTOFF_ANG,
    title: str | None = None,
) -> Figure:
    """The cluster in 3D, atoms coloured by importance, the ``top`` most important labelled.

    Args:
        positions_ang: (N, 3) Å, one frame.
        atom_label: N labels, in the order of ``positions_ang``.
        importance_mev: (N,) meV, ensemble-mean RMSE with the atom nullified.
        numbers: (N,) atomic numbers (marker size from the covalent radius);
            taken from the labels if None.
        top: how many of the most important atoms to name.
        bond_cutoff_ang: pairs closer than this are joined by a thin line, Å.
        title: figure title (default names the formula).
    """
    import matplotlib as mpl
    from ase.data import atomic_numbers, covalent_radii
    from matplotlib.lines import Line2D
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    pos = np.asarray(positions_ang, np.float64)
    pos = pos - pos.mean(0)
    labels = [str(x) for x in atom_label]
    imp = np.asarray(importance_mev, np.float64)
    n = len(labels)
    if pos.shape != (n, 3) or imp.shape != (n,):
        raise ValueError("positions (N, 3), labels (N,) and importance (N,) must agree")
    species = [species_of(x) for x in labels]
    if numbers is None:
        numbers = np.array([atomic_numbers.get(s, 6) for s in species])
    radii = covalent_radii[np.asarray(numbers, dtype=np.int64)]

    fig = _figure(8.2, 7.4)
    ax = fig.add_subplot(projection="3d")
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)  # (N, N) Å
    i, j = np.nonzero(np.triu(d < bond_cutoff_ang, k=1))
    if len(i):
        ax.add_collection3d(Line3DCollection(np.stack([pos[i], pos[j]], 1), colors="0.45", linewidths=0.7, alpha=0.6))
    cmap = mpl.colormaps["viridis"]
    finite = imp[np.isfinite(imp)]
    norm = mpl.colors.Normalize(
        vmin=float(finite.min()),
        vmax=float(finite.max()) if np.ptp(finite) > 0 else float(finite.min()) + 1,
    )

    colours = _species_colours(species)
    # One collection for all atoms, so mplot3d sorts them by depth: fill = importance,
    # edge = species (the colours of the importance bars), area = covalent radius squared.
    ax.scatter(
        pos[:, 0],
        pos[:, 1],
        pos[:, 2],
        c=imp,
        cmap=cmap,
        norm=norm,
        s=_MARKER_AREA_PER_ANG2 * radii**2,
        edgecolors=[colours[s] for s in species],
        linewidths=1.8,
        depthshade=False,
        alpha=1.0,
    )
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            color="white",
            mec=colours[s],
            mew=1.8,
            ls="none",
            ms=np.sqrt(_MARKER_AREA_PER_ANG2) * float(radii[species.index(s)]),
            label=s,
        )
        for s in colours
    ]
    half = float(np.abs(pos).max()) + 0.8
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-half, half)
    ax.set_box_aspect((1, 1, 1), zoom=0.95)
    ax.view_init(elev=18, azim=-60)
    best = np.argsort(-np.nan_to_num(imp, nan=-np.inf), kind="stable")[: min(top, n)]
    _label_atoms(ax, pos, best, [f"{rank}. {labels[k]}" for rank, k in enumerate(best, 1)])
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_zlabel("z (Å)")
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.6, pad=0.04, label="RMSE with the atom nullified (meV)")
    ax.legend(
        handles=handles,
        loc="upper left",
        fontsize=9,
        title="species (edge)",
        framealpha=0.9,
        labelspacing=1.0,
    )
    if title is None:
        from qdgap.core.labels import formula

        title = f"{formula(numbers)}: atoms coloured by importance, top {len(best)} numbered"
    ax.set_title(title)
    return fig


def _label_atoms(ax, pos: np.ndarray, which: np.ndarray, texts: Sequence[str]) -> None:
    """Name atoms of a 3D axes with labels pushed outward and apart on screen, each with a leader line.

    Works in the 2D projected frame of the axes (fixed once the view and limits
    are set), which ``transData`` maps onto the axes whatever their size.
    """
    from mpl_toolkits.mplot3d import proj3d

    x2, y2, _ = proj3d.proj_transform(pos[:, 0], pos[:, 1], pos[:, 2], ax.get_proj())
    xy = np.stack([x2, y2], 1)  # (N, 2) projected
    centre = np.array(proj3d.proj_transform(0.0, 0.0, 0.0, ax.get_proj())[:2])
    span = float(np.ptp(xy, axis=0).max()) or 1.0
    anchor = xy[which]
    out = anchor - centre
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    fallback = np.stack([np.cos(np.arange(len(which)) * 2.4), np.sin(np.arange(len(which)) * 2.4)], 1)
    out = np.where(norm > 0.08 * span, out / np.maximum(norm, 1e-12), fallback)  # atoms near the centre fan out
    label = anchor + 0.16 * span * out
    box = np.array([0.14, 0.055]) * span  # label footprint (width, height) in the projected frame
    for _ in range(200):  # push overlapping labels apart, and off the atom they name
        moved = False
        for a in range(len(label)):
            for b in range(a + 1, len(label)):
                d = label[a] - label[b]
                overlap = box - np.abs(d)
                if (overlap > 0).all():
                    axis = int(np.argmin(overlap / box))
                    step = np.zeros(2)
                    step[axis] = (overlap[axis] / 2 + 1e-3 * span) * (1 if d[axis] >= 0 else -1)
                    label[a] += step
                    label[b] -= step
                    moved = True
        if not moved:
            break
    for (ax_x, ax_y), (lx, ly), text in zip(anchor, label, texts, strict=True):
        ax.annotate(
            text,
            xy=(ax_x, ax_y),
            xytext=(lx, ly),
            textcoords="data",
            fontsize=8,
            ha="center",
            va="center",
            zorder=20,
            bbox={
                "boxstyle": "round,pad=0.18",
                "fc": "white",
                "ec": "0.5",
                "alpha": 0.9,
                "lw": 0.5,
            },
            arrowprops={"arrowstyle": "-", "color": "0.2", "lw": 0.7, "shrinkA": 0, "shrinkB": 3},
        )


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
    fig = _figure(max(5.5, 2.2 * len(models) + 1.5), 4.8)
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


def extension_gap_vs_time(
    time_fs: np.ndarray,
    gap_true_ev: np.ndarray,
    gap_mean_ev: np.ndarray,
    gap_std_ev: np.ndarray,
    *,
    train_mask: np.ndarray | None = None,
) -> Figure:
    """The extension's band gap against time: true gaps and the fine-tuned ensemble (mean ± 2 std)."""
    return gap_vs_time(
        time_fs,
        gap_true_ev,
        gap_mean_ev,
        gap_std_ev,
        train_mask=train_mask,
        title="Band gap along the extension: fine-tuned ensemble",
        mean_label="fine-tuned ensemble mean",
        train_label="fine-tuning frames",
    )


# ==========================================================================
# Importance with its uncertainty (core/importance.py)
# ==========================================================================

TOP_ATOMS_OVER_TIME = 15  # rows of the importance heat map
_SCORE_AXIS = {
    "rmse": "importance: RMSE nullified − unmasked (meV)",
    "shift": "mean |shift| of the prediction (meV)",
}


def importance_intervals(
    atom_label: Sequence[str],
    mean_mev: np.ndarray,
    ci_mev: np.ndarray,
    significant: np.ndarray,
    *,
    score: str = "rmse",
    null_mev: float = 0.0,
    correction: str = "holm",
) -> Figure:
    """Per-atom importance with its bootstrap interval, sorted, coloured by species, significant atoms starred.

    Args:
        atom_label: N labels.
        mean_mev: (N,) meV, the ensemble score (``rmse``: masked minus unmasked RMSE; ``shift``: mean |shift|).
        ci_mev: (N, 2) meV, interval (lo, hi).
        significant: (N,) bool, after the correction.
        score: which score, for the axis label.
        null_mev: meV, what significance is tested against (0, or the ensemble spread for ``shift``): a dashed line.
        correction: named in the legend.
    """
    labels = [str(x) for x in atom_label]
    mean = np.asarray(mean_mev, np.float64)
    ci = np.asarray(ci_mev, np.float64)
    sig = np.asarray(significant, bool)
    n = len(labels)
    if n == 0 or mean.shape != (n,) or ci.shape != (n, 2) or sig.shape != (n,):
        raise ValueError("need one value, interval and significance per atom label")
    order = np.argsort(-mean, kind="stable")
    species = [species_of(labels[i]) for i in order]
    colours = _species_colours(species)
    fig = _figure(max(7.0, 0.165 * n + 2.0), 5.2)
    ax = fig.subplots()
    x = np.arange(n)
    yerr = np.abs(np.stack([mean[order] - ci[order, 0], ci[order, 1] - mean[order]]))
    ax.bar(
        x,
        mean[order],
        yerr=yerr,
        color=[colours[s] for s in species],
        width=0.78,
        error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.25"},
        zorder=2,
    )
    top = np.nanmax(ci[:, 1]) if np.isfinite(ci).any() else 1.0
    bottom = min(0.0, float(np.nanmin(ci[:, 0]))) if np.isfinite(ci).any() else 0.0
    pad = 0.04 * (top - bottom or 1.0)
    hits = np.flatnonzero(sig[order])
    ax.plot(hits, ci[order][hits, 1] + pad, ls="none", marker="*", color="black", ms=6, zorder=4)
    ax.axhline(null_mev, color="black", ls="--", lw=1.0, zorder=3)
    import matplotlib.patches as mpatches
    from matplotlib.lines import Line2D

    handles = [mpatches.Patch(color=c, label=s) for s, c in colours.items()]
    handles.append(Line2D([], [], color="0.25", marker="|", ls="none", ms=8, label="95 % interval"))
    handles.append(Line2D([], [], color="black", marker="*", ls="none", ms=6, label=f"significant ({correction})"))
    null_text = "0" if score == "rmse" else f"ensemble spread {null_mev:.1f} meV"
    handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label=f"tested against {null_text}"))
    ax.set_xticks(x, [labels[i] for i in order], rotation=90, fontsize=8)
    for tick, s in zip(ax.get_xticklabels(), species, strict=True):
        tick.set_color(colours[s])
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(bottom - pad, top + 3 * pad)
    ax.set_xlabel("atom (most important first)")
    ax.set_ylabel(_SCORE_AXIS.get(score, score))
    ax.grid(axis="y", alpha=0.3, lw=0.5, zorder=0)
    fig.suptitle("Atom importance by Feature Nullification Analysis, with bootstrap intervals")
    _legend_above(ax, handles)
    return fig


def importance_over_time(
    time_fs: np.ndarray,
    frame_importance_mev: np.ndarray,
    atom_label: Sequence[str],
    top: Sequence[int],
    *,
    gap_true_ev: np.ndarray | None = None,
    gap_mean_ev: np.ndarray | None = None,
) -> Figure:
    """Importance over time: the gap along the FNA frames above a heat map of the top atoms.

    Args:
        time_fs: (F,) fs, the FNA frames' times.
        frame_importance_mev: (F, N) meV, ensemble-mean |masked - unmasked| per frame.
        atom_label: N labels.
        top: indices of the atoms to show, most important first (rows top to bottom).
        gap_true_ev: (F,) eV, NaN where unknown.
        gap_mean_ev: (F,) eV, the ensemble-mean unmasked prediction.
    """
    t = np.asarray(time_fs, np.float64)
    imp = np.asarray(frame_importance_mev, np.float64)
    rows = np.asarray(top, dtype=np.int64)
    if not len(t) or imp.shape[0] != len(t) or not len(rows):
        raise ValueError("need frames, a (F, N) importance and at least one atom")
    fig = _figure(9.0, 2.2 + 0.24 * len(rows))
    ax_gap, ax_map = fig.subplots(2, 1, sharex=True, height_ratios=[1.0, max(1.5, 0.16 * len(rows))])
    if gap_true_ev is not None and np.isfinite(gap_true_ev).any():
        ax_gap.plot(t, gap_true_ev, color=_TRUE_COLOUR, lw=1.0, marker=".", ms=3, label="true")
    if gap_mean_ev is not None:
        ax_gap.plot(t, gap_mean_ev, color=_MEAN_COLOUR, lw=1.0, label="ensemble mean (unmasked)")
    ax_gap.set_ylabel("gap (eV)")
    ax_gap.legend(fontsize=8, loc="best", frameon=False, ncols=2)
    ax_gap.set_title("Band gap and per-atom importance along the FNA frames")
    # pcolormesh edges: midpoints between frames, so uneven frame spacing shows as it is
    mid = (t[1:] + t[:-1]) / 2 if len(t) > 1 else np.array([])
    first = t[0] - (mid[0] - t[0] if len(mid) else 0.5)
    last = t[-1] + (t[-1] - mid[-1] if len(mid) else 0.5)
    edges = np.concatenate([[first], mid, [last]])
    mesh = ax_map.pcolormesh(edges, np.arange(len(rows) + 1), imp[:, rows].T, cmap="magma_r", shading="flat")
    labels = [str(atom_label[i]) for i in rows]
    ax_map.set_yticks(np.arange(len(rows)) + 0.5, labels, fontsize=8)
    ax_map.invert_yaxis()
    ax_map.set_xlabel("time (fs)")
    fig.colorbar(mesh, ax=ax_map, label="|masked − unmasked| (meV)", pad=0.01)
    return fig


def importance_groups(
    label: Sequence[str],
    mean_mev: np.ndarray,
    ci_mev: np.ndarray,
    significant: np.ndarray,
    *,
    score: str = "rmse",
    null_mev: float = 0.0,
) -> Figure:
    """Mean importance per atom of each group (species, site classes) with intervals, significant ones starred.

    Args:
        label: G group names.
        mean_mev: (G,) meV.
        ci_mev: (G, 2) meV.
        significant: (G,) bool.
        score: which score, for the axis label.
        null_mev: meV, drawn as a dashed line.
    """
    names = [str(x) for x in label]
    mean = np.asarray(mean_mev, np.float64)
    ci = np.asarray(ci_mev, np.float64)
    g = len(names)
    if g == 0 or mean.shape != (g,) or ci.shape != (g, 2):
        raise ValueError("need one value and interval per group")
    fig = _figure(6.5, 1.2 + 0.32 * g)
    ax = fig.subplots()
    y = np.arange(g)
    colours = _species_colours([species_of(n.split()[0]) for n in names])
    for i, name in enumerate(names):
        c = colours[species_of(name.split()[0])]
        ax.errorbar(mean[i], y[i], xerr=[[mean[i] - ci[i, 0]], [ci[i, 1] - mean[i]]], fmt="o", color=c, capsize=2)
        if significant[i]:
            ax.annotate("*", (ci[i, 1], y[i]), xytext=(4, -4), textcoords="offset points", fontsize=11)
    ax.axvline(null_mev, color="black", ls="--", lw=1.0)
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"per-atom {_SCORE_AXIS.get(score, score)}")
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    ax.set_title("Importance by species and site (group mean, 95 % interval, * significant)", fontsize=10)
    return fig
