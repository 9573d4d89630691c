"""The report's atom-importance section: what ``qdgap fna`` found, with its statistics.

An ``fna.h5`` written before the importance statistics existed, or before the
stand-out test and rank intervals (issue 28), gets them computed here from its
masked predictions (``core/analysis/fna.py``), with a note.
"""

from __future__ import annotations

import numpy as np

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.report.page import (
    FIG_IMPORTANCE,
    FIG_IMPORTANCE_GROUPS,
    FIG_IMPORTANCE_TIME,
    FIG_QD_3D,
    Page,
    check_datasets,
    html_section,
    html_table,
)
from qdgap.core.store.layout import Workdir

TOP_ATOMS_TABLE = 10  # rows of the top-atoms table


def section_fna(page: Page, figs, wd: Workdir, traj) -> None:
    """Importance with intervals, the top-atoms table, importance over time and per group, the dot in 3D.

    Args:
        page: the page being built.
        figs: ``core.figures``.
        wd: the work folder (``fna.h5``).
        traj: the trajectory (``data.Trajectory``) for the 3D view, or None.
    """
    from qdgap.core.store.results import read_results

    if not wd.fna.is_file():
        page.note("fna.h5 not found; atom importance left out (run `qdgap fna`)")
        page.sections.append(
            html_section(
                "Atom importance (FNA)",
                ['<p class="skip">Skipped: no fna.h5 in this work folder.</p>'],
            )
        )
        return
    fna, fna_attrs = read_results(wd.fna, fmt=schema.FNA_FORMAT, version=schema.FNA_VERSION)
    check_datasets(wd.fna, fna, (schema.ATOM_LABEL, schema.RMSE_MEV_MEAN, schema.RMSE_MEV_STD))
    labels = [str(x) for x in fna[schema.ATOM_LABEL]]
    if schema.SHIFT_MEAN_MEV not in fna or schema.SHIFT_STANDS_OUT not in fna:  # written before: make them now
        if schema.MASKED_EV not in fna or schema.BASELINE_EV not in fna:
            raise QdgapError(f"{wd.fna}: lacks dataset(s) masked_ev, baseline_ev; remake it with the current qdgap")
        what = "the importance statistics" if schema.SHIFT_MEAN_MEV not in fna else "the stand-out test"
        page.note(f"fna.h5 predates {what}; computed for this report (rerun `qdgap fna` to keep them)")
        fna, fna_attrs = _add_statistics(fna, fna_attrs, labels, traj)
    ranked_by = str(fna_attrs.get(schema.ATTR_RANKED_BY, "rmse"))
    pre = "importance" if ranked_by == "rmse" else "shift"
    key = {
        "rmse": (
            schema.IMPORTANCE_MEAN_MEV,
            schema.IMPORTANCE_CI_MEV,
            schema.STANDS_OUT,
            schema.P_ADJUSTED_VS_MEDIAN,
            schema.RANK_STABILITY,
            schema.RANK_CI,
            schema.NONZERO,
        ),
        "shift": (
            schema.SHIFT_MEAN_MEV,
            schema.SHIFT_CI_MEV,
            schema.SHIFT_STANDS_OUT,
            schema.SHIFT_P_ADJUSTED_VS_MEDIAN,
            schema.SHIFT_RANK_STABILITY,
            schema.SHIFT_RANK_CI,
            schema.SHIFT_SIGNIFICANT,
        ),
    }[ranked_by]
    score, ci, sig, p_adj, stab, rank_ci, nonzero = (np.asarray(fna[k]) for k in key)
    score, ci, p_adj, stab = (np.asarray(x, np.float64) for x in (score, ci, p_adj, stab))
    sig, nonzero, rank_ci = sig.astype(bool), nonzero.astype(bool), rank_ci.astype(np.int64)
    null = float(fna_attrs.get(f"{pre}_null_mev", 0.0))
    correction = str(fna_attrs.get(f"{pre}_correction", "holm"))
    top_k = int(fna_attrs.get(f"{pre}_top_k", 10))
    mean = np.asarray(fna[schema.RMSE_MEV_MEAN], np.float64)
    std = np.asarray(fna[schema.RMSE_MEV_STD], np.float64)
    n_members = np.atleast_2d(fna[schema.BASELINE_EV]).shape[0] if schema.BASELINE_EV in fna else None
    over = f" over {n_members} members" if n_members else ""
    body = []
    if ranked_by == "rmse":
        what = "importance: each member's RMSE with the atom nullified minus its own unmasked RMSE (meV), mean" + over
    else:
        what = "no true gaps, so ranked by shift: mean |masked − unmasked| prediction (meV), mean" + over
    body.append(
        page.figure(
            figs.importance_intervals(
                labels, score, ci, sig, score=ranked_by, null_mev=null, correction=correction, rank_ci=rank_ci
            ),
            FIG_IMPORTANCE,
            f"Atom {what}, most important first. Error bars: 95 % intervals from a bootstrap over blocks of "
            f"{fna_attrs.get(f'{pre}_block_frames', '?')} consecutive frames and over members; * stands out: "
            f"above the median atom after {_CORRECTIONS.get(correction, correction)} correction for testing every "
            f"atom ({int(sig.sum())} of {len(labels)}; {int(nonzero.sum())} of {len(labels)} are above "
            f"{'0' if ranked_by == 'rmse' else 'the ensemble spread'}). Lower panel: each atom's rank interval "
            "(2.5-97.5 % of its rank over the bootstrap replicates).",
        )
    )
    order = np.argsort(-score, kind="stable")
    top = order[: min(TOP_ATOMS_TABLE, len(order))]
    rows = []
    for k, i in enumerate(top, 1):
        row = [
            str(k),
            labels[i],
            f"{score[i]:+.1f} [{ci[i, 0]:+.1f}, {ci[i, 1]:+.1f}]",
            f"{p_adj[i]:.2g}",
            "yes" if sig[i] else "no",
            f"{rank_ci[i, 0]}-{rank_ci[i, 1]}",
            f"{100 * stab[i]:.0f} %",
        ]
        if ranked_by == "rmse":
            row.append(f"{mean[i]:.1f} ± {std[i]:.1f}")
        rows.append(row)
    header = [
        "rank",
        "atom",
        f"{'importance' if ranked_by == 'rmse' else 'shift'} (meV, 95 % interval)",
        f"p vs median ({correction})",
        "stands out",
        "rank interval",
        f"in top {top_k}",
    ]
    if ranked_by == "rmse":
        header.append("RMSE nullified (meV, mean ± std)")
    body.append(html_table(header, rows))
    page.summary.append(("Top five atoms (FNA)", ", ".join(labels[i] for i in order[:5])))
    page.summary.append(("Atoms that stand out (FNA)", ", ".join(labels[i] for i in order if sig[i]) or "none"))
    body.extend(_importance_time_and_groups(page, figs, fna, labels, order, ranked_by, null))
    if traj is None:
        pass  # noted by _find_trajectory
    else:
        from qdgap.core.common.labels import atom_labels

        traj_labels = atom_labels(traj.numbers)
        if sorted(traj_labels) != sorted(labels):
            page.note("the trajectory's atoms do not match fna.h5's labels; the 3D view is left out")
        else:
            where = {lab: k for k, lab in enumerate(labels)}
            imp = score[[where[lab] for lab in traj_labels]]
            fig = figs.quantum_dot_3d(traj.positions_ang[0], traj_labels, imp, numbers=traj.numbers)
            body.append(
                page.figure(
                    fig,
                    FIG_QD_3D,
                    f"The dot at the first frame (t = {traj.time_fs[0]:g} fs), atoms coloured by importance, the {min(figs.TOP_ATOMS_LABELLED, len(labels))} most important numbered; lines join atoms closer than {figs.BOND_DRAW_CUTOFF_ANG:g} Å.",
                )
            )
    page.sections.append(html_section("Atom importance (FNA)", body))


_CORRECTIONS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def _add_statistics(fna: dict, attrs: dict, labels: list[str], traj) -> tuple[dict, dict]:
    """The importance statistics of an fna.h5 written before they existed, from its masked predictions."""
    from qdgap.core.analysis.fna import FnaResult, fna_statistics, statistics_datasets

    baseline = np.atleast_2d(fna[schema.BASELINE_EV])
    frames = np.asarray(fna.get(schema.FRAME_INDEX, np.arange(baseline.shape[1])), np.int64)
    gap = fna.get(schema.GAP_TRUE_EV)
    same_atoms = traj is not None and len(traj.numbers) == len(labels)
    if gap is None and same_atoms and frames.max(initial=0) < traj.num_frames:
        gap = traj.gap_ev[frames]
    result = FnaResult(
        frame_index=frames,
        time_fs=np.asarray(fna.get(schema.TIME_FS, frames), np.float64),
        gap_true_ev=np.asarray(gap if gap is not None else np.full(len(frames), np.nan), np.float32),
        atom_label=labels,
        baseline_ev=baseline,
        masked_ev=np.asarray(fna[schema.MASKED_EV]),
        seeds=np.asarray(fna.get(schema.SEEDS, np.arange(baseline.shape[0]))),
        numbers=traj.numbers if same_atoms else None,
        positions_ang=traj.positions_ang[frames] if same_atoms and frames.max(initial=0) < traj.num_frames else None,
    )
    data, extra = statistics_datasets(result, fna_statistics(result))
    return {**fna, **data}, {**attrs, **extra}


def _importance_time_and_groups(page: Page, figs, fna: dict, labels, order, ranked_by: str, null: float) -> list[str]:
    """The heat map of importance over time and the species / site groups, as HTML."""
    from qdgap.core.analysis.importance import frame_shift_mev

    body = []
    if schema.MASKED_EV in fna and schema.BASELINE_EV in fna:
        masked, baseline = np.asarray(fna[schema.MASKED_EV]), np.atleast_2d(fna[schema.BASELINE_EV])
        frames = np.asarray(fna.get(schema.FRAME_INDEX, np.arange(baseline.shape[1])), np.float64)
        t = np.asarray(fna.get(schema.TIME_FS, frames), np.float64)
        top = order[: min(figs.TOP_ATOMS_OVER_TIME, len(order))]
        fig = figs.importance_over_time(
            t,
            frame_shift_mev(masked, baseline),
            labels,
            top,
            gap_true_ev=fna.get(schema.GAP_TRUE_EV),
            gap_mean_ev=baseline.astype(np.float64).mean(axis=0),
        )
        body.append(
            page.figure(
                fig,
                FIG_IMPORTANCE_TIME,
                f"Importance over time: for the {len(top)} most important atoms, the ensemble-mean |masked − unmasked| "
                "prediction on each FNA frame (meV), under the band gap on the same frames. "
                "`qdgap fna --xyz` writes the same per-atom numbers for every frame as extended XYZ.",
            )
        )
    if schema.GROUP_LABEL in fna and len(fna[schema.GROUP_LABEL]):
        glabels = [str(x) for x in fna[schema.GROUP_LABEL]]
        gmean = np.asarray(fna[schema.GROUP_MEAN_MEV], np.float64)
        gci = np.asarray(fna[schema.GROUP_MEAN_CI_MEV], np.float64)
        gsum = np.asarray(fna[schema.GROUP_SUM_MEV], np.float64)
        gsum_ci = np.asarray(fna[schema.GROUP_SUM_CI_MEV], np.float64)
        gsig = np.asarray(fna[schema.GROUP_SIGNIFICANT]).astype(bool)
        gp = np.asarray(fna[schema.GROUP_P_ADJUSTED], np.float64)
        n_atoms = np.asarray(fna[schema.GROUP_NUM_ATOMS])
        fig = figs.importance_groups(glabels, gmean, gci, gsig, score=ranked_by, null_mev=null)
        body.append(
            page.figure(
                fig,
                FIG_IMPORTANCE_GROUPS,
                "Importance per atom of each species and site class, with 95 % intervals from the same bootstrap. "
                "Core: a Cd or Se with four bonded neighbours (within 3.1 Å, averaged over the FNA frames), none "
                "of them Cl; surface: the rest. Cl bridging: two or more Cd within 3.1 Å; terminal: one.",
            )
        )
        rows = [
            [
                lab,
                str(int(k)),
                f"{gmean[i]:+.1f} [{gci[i, 0]:+.1f}, {gci[i, 1]:+.1f}]",
                f"{gsum[i]:+.1f} [{gsum_ci[i, 0]:+.1f}, {gsum_ci[i, 1]:+.1f}]",
                f"{gp[i]:.2g}",
                "yes" if gsig[i] else "no",
            ]
            for i, (lab, k) in enumerate(zip(glabels, n_atoms, strict=True))
        ]
        body.append(html_table(["group", "atoms", "mean (meV)", "sum (meV)", "p", "significant"], rows))
    return body
