"""The report's figures of atom importance (FNA): bars, the dot in 3D, intervals, over time, per group.

Arrays in, ``matplotlib.figure.Figure`` out (``core/report/figures_base.py``).
Importances in meV, lengths in Å, time in fs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from qdgap.core.report.figures_base import (
    MEAN_COLOUR,
    TRUE_COLOUR,
    legend_above,
    new_figure,
    species_colours,
    species_of,
)

BOND_DRAW_CUTOFF_ANG = 3.0  # pairs closer than this are drawn as bonds in the 3D view, Å
TOP_ATOMS_LABELLED = 10  # atoms named in the 3D view
_MARKER_AREA_PER_ANG2 = 105.0  # 3D marker area per squared covalent radius, points^2 / Å^2
TOP_ATOMS_OVER_TIME = 15  # rows of the importance heat map
_SCORE_AXIS = {
    "rmse": "importance: RMSE nullified − unmasked (meV)",
    "shift": "mean |shift| of the prediction (meV)",
}


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
    colours = species_colours(species)
    fig = new_figure(max(7.0, 0.165 * n + 2.0), 5.2)
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
    legend_above(ax, handles)
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

    fig = new_figure(8.2, 7.4)
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

    colours = species_colours(species)
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
        from qdgap.core.common.labels import formula

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
# Importance with its uncertainty (core/analysis/importance.py)
# ==========================================================================


def importance_intervals(
    atom_label: Sequence[str],
    mean_mev: np.ndarray,
    ci_mev: np.ndarray,
    significant: np.ndarray,
    *,
    score: str = "rmse",
    null_mev: float = 0.0,
    correction: str = "holm",
    rank_ci: np.ndarray | None = None,
) -> Figure:
    """Per-atom importance with its bootstrap interval, sorted, coloured by species, atoms that stand out starred.

    Args:
        atom_label: N labels.
        mean_mev: (N,) meV, the ensemble score (``rmse``: masked minus unmasked RMSE; ``shift``: mean |shift|).
        ci_mev: (N, 2) meV, interval (lo, hi).
        significant: (N,) bool, after the correction: the atoms that stand out (above the median atom).
        score: which score, for the axis label.
        null_mev: meV, the score's null (0, or the ensemble spread for ``shift``): a dashed line.
        correction: named in the legend.
        rank_ci: (N, 2) int, each atom's rank interval (1 = first); drawn in a panel below when given.
    """
    labels = [str(x) for x in atom_label]
    mean = np.asarray(mean_mev, np.float64)
    ci = np.asarray(ci_mev, np.float64)
    sig = np.asarray(significant, bool)
    n = len(labels)
    if n == 0 or mean.shape != (n,) or ci.shape != (n, 2) or sig.shape != (n,):
        raise ValueError("need one value, interval and significance per atom label")
    if rank_ci is not None and np.shape(rank_ci) != (n, 2):
        raise ValueError("need one rank interval per atom label")
    order = np.argsort(-mean, kind="stable")
    species = [species_of(labels[i]) for i in order]
    colours = species_colours(species)
    if rank_ci is None:
        fig = new_figure(max(7.0, 0.165 * n + 2.0), 5.2)
        ax = fig.subplots()
    else:
        fig = new_figure(max(7.0, 0.165 * n + 2.0), 7.6)
        ax, ax_rank = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1.0])
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
    handles.append(
        Line2D([], [], color="black", marker="*", ls="none", ms=6, label=f"stands out from the median ({correction})")
    )
    median = float(np.nanmedian(mean))
    ax.axhline(median, color="0.35", ls=":", lw=1.0, zorder=3)
    handles.append(Line2D([], [], color="0.35", ls=":", lw=1.0, label=f"median atom {median:.1f} meV"))
    null_text = "0" if score == "rmse" else f"ensemble spread {null_mev:.1f} meV"
    handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label=null_text))
    ax_x = ax if rank_ci is None else ax_rank
    ax_x.set_xticks(x, [labels[i] for i in order], rotation=90, fontsize=8)
    for tick, s in zip(ax_x.get_xticklabels(), species, strict=True):
        tick.set_color(colours[s])
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(bottom - pad, top + 3 * pad)
    ax_x.set_xlabel("atom (most important first)")
    ax.set_ylabel(_SCORE_AXIS.get(score, score))
    ax.grid(axis="y", alpha=0.3, lw=0.5, zorder=0)
    if rank_ci is not None:
        rc = np.asarray(rank_ci, np.float64)[order]  # (N, 2) best, worst
        point = np.arange(1, n + 1)
        ax_rank.vlines(x, rc[:, 0], rc[:, 1], colors=[colours[s] for s in species], lw=2.2)
        ax_rank.plot(x, point, ls="none", marker="_", color="black", ms=5)
        ax_rank.plot(hits, rc[hits, 0] - 0.03 * n, ls="none", marker="*", color="black", ms=6)
        ax_rank.set_ylim(n + 1, 1 - 0.08 * n)  # rank 1 at the top
        ax_rank.set_ylabel("rank (95 % interval)")
        ax_rank.grid(axis="y", alpha=0.3, lw=0.5)
    fig.suptitle("Atom importance by Feature Nullification Analysis, with bootstrap intervals")
    legend_above(ax, handles)
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
    fig = new_figure(9.0, 2.2 + 0.24 * len(rows))
    ax_gap, ax_map = fig.subplots(2, 1, sharex=True, height_ratios=[1.0, max(1.5, 0.16 * len(rows))])
    if gap_true_ev is not None and np.isfinite(gap_true_ev).any():
        ax_gap.plot(t, gap_true_ev, color=TRUE_COLOUR, lw=1.0, marker=".", ms=3, label="true")
    if gap_mean_ev is not None:
        ax_gap.plot(t, gap_mean_ev, color=MEAN_COLOUR, lw=1.0, label="ensemble mean (unmasked)")
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
    fig = new_figure(6.5, 1.2 + 0.32 * g)
    ax = fig.subplots()
    y = np.arange(g)
    colours = species_colours([species_of(n.split()[0]) for n in names])
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
