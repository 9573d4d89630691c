"""``qdgap report``: one self-contained ``report.html`` and the PNG figures of a work folder.

Reads what the workflow left in a work folder (``core/layout.py``): the
ensemble's run folders, ``predictions.h5`` and, when present, ``fna.h5``, the
fine-tuning results and ``predictions_ext.h5``. Sections whose inputs are
missing are skipped with a note in the HTML. The HTML embeds every figure as a
base64 data URI and links to nothing outside itself, so it can be mailed or
archived alone. Every file is written through a temporary name and renamed.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdgap.core import metrics, schema
from qdgap.core import runs as rf
from qdgap.core.errors import QdgapError
from qdgap.core.files import atomic_output, write_text_atomic
from qdgap.core.layout import Workdir

log = logging.getLogger(__name__)

ATTR_INPUT_PATH = schema.ATTR_INPUT_PATH
REPORT_DPI = 130  # PNG resolution, dots per inch
TOP_ATOMS_TABLE = 10  # rows of the top-atoms table

# One PNG per figure, under figures/.
FIG_LEARNING = "learning_curves.png"
FIG_PARITY = "parity_unseen.png"
FIG_GAP_TIME = "gap_vs_time.png"
FIG_IMPORTANCE = "atom_importance.png"
FIG_QD_3D = "quantum_dot_3d.png"
FIG_IMPORTANCE_TIME = "importance_over_time.png"
FIG_IMPORTANCE_GROUPS = "importance_groups.png"
FIG_TRANSFER = "transfer_learning.png"
FIG_EXT_TIME = "extension_gap_vs_time.png"
FIGURE_NAMES = (
    FIG_LEARNING,
    FIG_PARITY,
    FIG_GAP_TIME,
    FIG_IMPORTANCE,
    FIG_QD_3D,
    FIG_IMPORTANCE_TIME,
    FIG_IMPORTANCE_GROUPS,
    FIG_TRANSFER,
    FIG_EXT_TIME,
)


@dataclass
class _Page:
    """What the HTML is built from, filled section by section."""

    workdir: Path
    figures_dir: Path
    dpi: int
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    trajectory: str = ""  # what the predictions were made from, for the page header
    formula: str = ""

    def note(self, text: str) -> None:
        log.info("report: %s", text)
        self.notes.append(text)

    def figure(self, fig, name: str, caption: str) -> str:
        """Save ``fig`` as ``figures/<name>`` and return its HTML, the PNG embedded."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        png = buf.getvalue()
        with atomic_output(self.figures_dir / name, force=True) as tmp:
            tmp.write_bytes(png)
        self.written.append(name)
        data = base64.b64encode(png).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f'<figcaption>{_e(caption)} <span class="file">(figures/{_e(name)})</span></figcaption></figure>'
        )


def write_report(workdir: Path, *, data: Path | None = None, dpi: int = REPORT_DPI) -> Path:
    """Write ``WORKDIR/report.html`` and ``WORKDIR/figures/*.png`` from a work folder's results.

    Args:
        workdir: the work folder (``runs/``, ``predictions.h5``, ...).
        data: the trajectory file, for the 3D view of the dot; by default the
            ``input_path`` attr of ``predictions.h5``, then the members' ``config.json``.
        dpi: PNG resolution.

    Returns:
        The path of ``report.html``.

    Raises:
        QdgapError: the folder holds no ensemble (``runs/run_<seed>/``) or no ``predictions.h5``,
            or a result file is unreadable.
    """
    wd = Workdir(Path(workdir))
    if not wd.root.is_dir():
        raise QdgapError(f"{wd.root}: no such work folder; run `qdgap pipeline --workdir {wd.root}` first")
    members = rf.member_dirs(wd.runs)
    if not members:
        raise QdgapError(f"{wd.root}: no ensemble members under runs/; run `qdgap pipeline --workdir {wd.root}` first")
    if not wd.predictions.is_file():
        raise QdgapError(
            f"{wd.predictions}: missing; make it with `qdgap predict --runs {wd.runs} -o {wd.predictions}`"
        )

    from qdgap.core import figures as figs
    from qdgap.core.results import read_results

    page = _Page(workdir=wd.root, figures_dir=wd.figures, dpi=dpi)
    pred, pred_attrs = read_results(wd.predictions, fmt=schema.PREDICTIONS_FORMAT, version=schema.PREDICTIONS_VERSION)
    _check_datasets(
        wd.predictions,
        pred,
        (
            schema.FRAME_INDEX,
            schema.TIME_FS,
            schema.GAP_TRUE_EV,
            schema.GAP_PRED_EV,
            schema.GAP_MEAN_EV,
            schema.GAP_STD_EV,
        ),
    )
    splits = _read_splits(members, page, what="runs")

    _section_ensemble(page, figs, members, pred, splits)
    traj = _find_trajectory(page, wd, data, pred_attrs, members)
    _section_fna(page, figs, wd, traj)
    _section_transfer(page, figs, wd)

    for stale in set(FIGURE_NAMES) - set(page.written):  # a figure from an earlier report that no longer applies
        (wd.figures / stale).unlink(missing_ok=True)
    write_text_atomic(wd.report_html, _html(page, pred_attrs))
    return wd.report_html


# ==========================================================================
# Inputs
# ==========================================================================


def _check_datasets(path: Path, found: dict, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in found]
    if missing:
        raise QdgapError(f"{path}: lacks dataset(s) {', '.join(missing)}; remake it with the current qdgap")


def _read_splits(members: Sequence[Path], page: _Page, *, what: str) -> dict[int, dict[str, list[int]]]:
    """seed -> split.json of every member that has one."""
    splits = {}
    for run in members:
        path = run / rf.SPLIT_JSON
        if path.is_file():
            record = rf.read_json(path)
            splits[rf.seed_of(run)] = {k: [int(i) for i in record.get(k, [])] for k in ("train", "val", "test")}
        else:
            page.note(f"{what}/{run.name}: no {rf.SPLIT_JSON}; its frames are not counted as seen")
    return splits


def _frames(splits: dict[int, dict[str, list[int]]], keys: Sequence[str]) -> np.ndarray:
    sets = [np.asarray(s[k], np.int64) for s in splits.values() for k in keys]
    return np.unique(np.concatenate(sets)) if sets else np.empty(0, np.int64)


def _find_trajectory(page: _Page, wd: Workdir, data: Path | None, attrs: dict, members: Sequence[Path]):
    """The trajectory the predictions were made from, or None (with a note) when it cannot be found."""
    from qdgap.core.data import read_trajectory

    if data is not None:
        if not Path(data).is_file():
            raise QdgapError(f"{data}: no such trajectory file (--data)")
        candidates = [Path(data)]
    else:
        candidates = []
        if attrs.get(ATTR_INPUT_PATH):
            candidates.append(Path(str(attrs[ATTR_INPUT_PATH])))
        for run in members:
            cfg = run / rf.CONFIG_JSON
            if cfg.is_file():
                path = rf.read_json(cfg).get("data", {}).get("path")
                if path:
                    candidates.append(Path(path))
                break
        candidates = [c for p in candidates for c in (p, wd.root / p) if c.is_file()]
    if not candidates:
        page.note("trajectory file not found (pass --data); the 3D view of the dot is left out")
        return None
    traj = read_trajectory(candidates[0], validate=False)
    page.trajectory = f"trajectory {candidates[0]} ({traj.num_frames} frames)"
    page.formula = traj.formula
    sha = attrs.get(schema.ATTR_INPUT_SHA256)
    if sha and traj.sha256 and sha != traj.sha256:
        page.note(
            f"{candidates[0]}: not the file predictions.h5 was made from (sha256 differs); its structure is drawn anyway"
        )
    return traj


# ==========================================================================
# Sections
# ==========================================================================


def _section_ensemble(page: _Page, figs, members: Sequence[Path], pred: dict, splits: dict) -> None:
    frame = np.asarray(pred[schema.FRAME_INDEX], np.int64)
    time_fs = np.asarray(pred[schema.TIME_FS], np.float64)
    true = np.asarray(pred[schema.GAP_TRUE_EV], np.float64)
    mean = np.asarray(pred[schema.GAP_MEAN_EV], np.float64)
    std = np.asarray(pred[schema.GAP_STD_EV], np.float64)
    each = np.atleast_2d(np.asarray(pred[schema.GAP_PRED_EV], np.float64))  # (M, F) eV
    seeds = [int(s) for s in pred.get(schema.SEEDS, range(len(each)))]
    if each.shape[1] != len(frame) or len(seeds) != len(each):
        raise QdgapError(
            f"predictions.h5: {schema.GAP_PRED_EV} has shape {each.shape}, expected ({len(seeds)}, {len(frame)}); remake it with `qdgap predict`"
        )
    seen = np.isin(frame, _frames(splits, ("train", "val", "test")))
    trained = np.isin(frame, _frames(splits, ("train",)))
    unseen = ~seen & np.isfinite(true)
    body = []

    # Learning curves
    curves = {}
    for run in members:
        rows = rf.read_metrics_csv(run / rf.METRICS_CSV)
        if rows and all(k in rows[0] for k in ("epoch", "val_mae_mev", "train_loss")):
            curves[rf.seed_of(run)] = {
                k: np.array([r[k] for r in rows]) for k in ("epoch", "val_mae_mev", "train_loss")
            }
    if curves:
        fig = figs.learning_curves(curves)
        body.append(
            page.figure(
                fig,
                FIG_LEARNING,
                f"Validation MAE and training loss per epoch of each of the {len(curves)} members; dots mark each member's best epoch (the weights kept).",
            )
        )
    else:
        page.note("no metrics.csv in any run folder; learning curves left out")

    # Unseen-frame metrics
    n_unseen = int(unseen.sum())
    rows_members = []
    page.summary.append(
        (
            "Ensemble",
            f"{len(each)} members; {len(frame)} frames predicted, {n_unseen} of them unseen with a true gap; {int(trained.sum())} frames some member trained on",
        )
    )
    if n_unseen:
        rmse, mae = metrics.error_stats_mev(true[unseen], mean[unseen])
        cover = metrics.coverage_ksigma(true[unseen], mean[unseen], std[unseen], 2.0)
        page.summary += [
            ("Ensemble RMSE on unseen frames", f"{rmse:.1f} meV"),
            ("Ensemble MAE on unseen frames", f"{mae:.1f} meV"),
            ("True gap within mean ± 2σ (unseen frames)", f"{100 * cover:.1f} %"),
        ]
        for seed, p in zip(seeds, each, strict=True):
            r, a = metrics.error_stats_mev(true[unseen], p[unseen])
            rows_members.append((seed, r, a))
        ranked = sorted(rows_members, key=lambda r: (math.isnan(r[1]), r[1]))
        if len(ranked) > 1:
            page.summary += [
                (
                    "Best member (lowest RMSE, unseen frames)",
                    f"seed {ranked[0][0]}: {ranked[0][1]:.1f} meV",
                ),
                ("Worst member", f"seed {ranked[-1][0]}: {ranked[-1][1]:.1f} meV"),
            ]
        fig = figs.parity(true[unseen], mean[unseen], std[unseen])
        body.append(
            page.figure(
                fig,
                FIG_PARITY,
                f"Ensemble mean against the true gap on the {n_unseen} frames outside every member's train/val/test pool; bars are ±2 std over the members.",
            )
        )
    else:
        page.note("predictions.h5 has no unseen frame with a true gap; no parity plot or unseen-frame errors")
    fig = figs.gap_vs_time(time_fs, true, mean, std, train_mask=trained)
    body.append(
        page.figure(
            fig,
            FIG_GAP_TIME,
            f"Band gap against time over the {len(frame)} predicted frames: true gaps, the ensemble mean with its ±2 std band, and the frames some member trained on; the lower panel is the error of the mean.",
        )
    )
    body.append(_member_table(members, rows_members, curves))
    page.sections.append(_section("Ensemble", body))


def _member_table(members: Sequence[Path], rows_members: list, curves: dict) -> str:
    unseen = {seed: (r, a) for seed, r, a in rows_members}
    rows = []
    for run in members:
        seed = rf.seed_of(run)
        test = rf.read_json(run / rf.TEST_METRICS_JSON) if (run / rf.TEST_METRICS_JSON).is_file() else {}
        c = curves.get(seed)
        epochs = f"{int(c['epoch'][-1])}" if c is not None and len(c["epoch"]) else "–"
        best = f"{np.nanmin(c['val_mae_mev']):.1f}" if c is not None and len(c["epoch"]) else "–"
        r, a = unseen.get(seed, (float("nan"), float("nan")))
        rows.append(
            [
                str(seed),
                epochs,
                best,
                _num(test.get("rmse_mev")),
                _num(r),
                _num(a),
                rf.member_state(run),
            ]
        )
    table = _table(
        [
            "seed",
            "epochs",
            "best val MAE (meV)",
            "test RMSE (meV)",
            "unseen RMSE (meV)",
            "unseen MAE (meV)",
            "state",
        ],
        rows,
    )
    return f"<details><summary>Members ({len(rows)})</summary>{table}</details>"


def _section_fna(page: _Page, figs, wd: Workdir, traj) -> None:
    from qdgap.core.results import read_results

    if not wd.fna.is_file():
        page.note("fna.h5 not found; atom importance left out (run `qdgap fna`)")
        page.sections.append(
            _section(
                "Atom importance (FNA)",
                ['<p class="skip">Skipped: no fna.h5 in this work folder.</p>'],
            )
        )
        return
    fna, fna_attrs = read_results(wd.fna, fmt=schema.FNA_FORMAT, version=schema.FNA_VERSION)
    _check_datasets(wd.fna, fna, (schema.ATOM_LABEL, schema.RMSE_MEV_MEAN, schema.RMSE_MEV_STD))
    labels = [str(x) for x in fna[schema.ATOM_LABEL]]
    if schema.SHIFT_MEAN_MEV not in fna:  # written before the statistics existed: make them now
        if schema.MASKED_EV not in fna or schema.BASELINE_EV not in fna:
            raise QdgapError(f"{wd.fna}: lacks dataset(s) masked_ev, baseline_ev; remake it with the current qdgap")
        page.note(
            "fna.h5 predates the importance statistics; they were computed for this report (rerun `qdgap fna` to keep them)"
        )
        fna, fna_attrs = _add_statistics(fna, fna_attrs, labels, traj)
    ranked_by = str(fna_attrs.get(schema.ATTR_RANKED_BY, "rmse"))
    pre = "importance" if ranked_by == "rmse" else "shift"
    key = {
        "rmse": (
            schema.IMPORTANCE_MEAN_MEV,
            schema.IMPORTANCE_CI_MEV,
            schema.SIGNIFICANT,
            schema.P_ADJUSTED,
            schema.RANK_STABILITY,
        ),
        "shift": (
            schema.SHIFT_MEAN_MEV,
            schema.SHIFT_CI_MEV,
            schema.SHIFT_SIGNIFICANT,
            schema.SHIFT_P_ADJUSTED,
            schema.SHIFT_RANK_STABILITY,
        ),
    }[ranked_by]
    score, ci, sig, p_adj, stab = (np.asarray(fna[k]) for k in key)
    score, ci, p_adj, stab = (np.asarray(x, np.float64) for x in (score, ci, p_adj, stab))
    sig = sig.astype(bool)
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
            figs.importance_intervals(labels, score, ci, sig, score=ranked_by, null_mev=null, correction=correction),
            FIG_IMPORTANCE,
            f"Atom {what}, most important first. Error bars: 95 % intervals from a bootstrap over blocks of "
            f"{fna_attrs.get(f'{pre}_block_frames', '?')} consecutive frames and over members; * significant "
            f"after {_CORRECTIONS.get(correction, correction)} correction for testing every atom "
            f"({int(sig.sum())} of {len(labels)}).",
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
            f"{100 * stab[i]:.0f} %",
        ]
        if ranked_by == "rmse":
            row.append(f"{mean[i]:.1f} ± {std[i]:.1f}")
        rows.append(row)
    header = [
        "rank",
        "atom",
        f"{'importance' if ranked_by == 'rmse' else 'shift'} (meV, 95 % interval)",
        f"p ({correction})",
        "significant",
        f"in top {top_k}",
    ]
    if ranked_by == "rmse":
        header.append("RMSE nullified (meV, mean ± std)")
    body.append(_table(header, rows))
    page.summary.append(("Top five atoms (FNA)", ", ".join(labels[i] for i in order[:5])))
    page.summary.append(("Significant atoms (FNA)", ", ".join(labels[i] for i in order if sig[i]) or "none"))
    body.extend(_importance_time_and_groups(page, figs, fna, labels, order, ranked_by, null))
    if traj is None:
        pass  # noted by _find_trajectory
    else:
        from qdgap.core.labels import atom_labels

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
    page.sections.append(_section("Atom importance (FNA)", body))


_CORRECTIONS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def _add_statistics(fna: dict, attrs: dict, labels: list[str], traj) -> tuple[dict, dict]:
    """The importance statistics of an fna.h5 written before they existed, from its masked predictions."""
    from qdgap.core.fna import FnaResult, fna_statistics, statistics_datasets

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


def _importance_time_and_groups(page: _Page, figs, fna: dict, labels, order, ranked_by: str, null: float) -> list[str]:
    """The heat map of importance over time and the species / site groups, as HTML."""
    from qdgap.core.importance import frame_shift_mev

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
        body.append(_table(["group", "atoms", "mean (meV)", "sum (meV)", "p", "significant"], rows))
    return body


def _section_transfer(page: _Page, figs, wd: Workdir) -> None:
    from qdgap.core.results import read_results

    body = []
    rows = _read_finetune_csv(wd.finetune_csv) if wd.finetune_csv.is_file() else {}
    if rows:
        fig = figs.transfer_comparison(rows)
        body.append(
            page.figure(
                fig,
                FIG_TRANSFER,
                "Errors on the extension of the pretrained ensemble, the fine-tuned ensemble and models trained from scratch on the extension's labels; training wall time and frames scored under each group.",
            )
        )
        table_rows = []
        for m in [m for m in figs.TRANSFER_MODELS if m in rows] + [m for m in rows if m not in figs.TRANSFER_MODELS]:
            r = rows[m]
            table_rows.append(
                [
                    figs.TRANSFER_NAMES.get(m, m).replace("\n", " "),
                    _num(r.get("rmse_mev")),
                    _num(r.get("mae_mev")),
                    _num(r.get("wall_s")),
                    _num(r.get("n_frames"), digits=0),
                ]
            )
            page.summary.append(
                (
                    f"Transfer: {figs.TRANSFER_NAMES.get(m, m).splitlines()[0]}",
                    f"RMSE {_num(r.get('rmse_mev'))} meV, MAE {_num(r.get('mae_mev'))} meV",
                )
            )
        body.append(
            _table(
                ["model", "RMSE (meV)", "MAE (meV)", "training wall time (s)", "frames scored"],
                table_rows,
            )
        )
        missing = [figs.TRANSFER_NAMES[m].replace("\n", " ") for m in figs.TRANSFER_MODELS if m not in rows]
        if missing:
            page.note(f"finetune_report.csv has no row for: {', '.join(missing)} (baseline skipped)")
    else:
        page.note("finetune_report.csv not found; transfer-learning comparison left out (run `qdgap finetune`)")
    if wd.predictions_extended.is_file():
        ext, _ = read_results(
            wd.predictions_extended,
            fmt=schema.PREDICTIONS_FORMAT,
            version=schema.PREDICTIONS_VERSION,
        )
        _check_datasets(
            wd.predictions_extended,
            ext,
            (
                schema.FRAME_INDEX,
                schema.TIME_FS,
                schema.GAP_TRUE_EV,
                schema.GAP_MEAN_EV,
                schema.GAP_STD_EV,
            ),
        )
        frame = np.asarray(ext[schema.FRAME_INDEX], np.int64)
        true = np.asarray(ext[schema.GAP_TRUE_EV], np.float64)
        mean = np.asarray(ext[schema.GAP_MEAN_EV], np.float64)
        std = np.asarray(ext[schema.GAP_STD_EV], np.float64)
        ft_splits = _read_splits(rf.member_dirs(wd.runs_finetuned), page, what="runs_ft")
        trained = np.isin(frame, _frames(ft_splits, ("train",))) if ft_splits else None
        fig = figs.extension_gap_vs_time(ext[schema.TIME_FS], true, mean, std, train_mask=trained)
        body.append(
            page.figure(
                fig,
                FIG_EXT_TIME,
                "Band gap against time along the extension: true gaps and the fine-tuned ensemble's mean with its ±2 std band; the fine-tuning frames are marked.",
            )
        )
        held = ~np.isin(frame, _frames(ft_splits, ("train", "val", "test"))) & np.isfinite(true)
        if held.any():
            r, a = metrics.error_stats_mev(true[held], mean[held])
            c = metrics.coverage_ksigma(true[held], mean[held], std[held], 2.0)
            body.append(
                f"<p>Fine-tuned ensemble on the {int(held.sum())} extension frames outside the fine-tuning pool: RMSE {r:.1f} meV, MAE {a:.1f} meV, true gap within ±2σ for {100 * c:.1f} %.</p>"
            )
    else:
        page.note("predictions_ext.h5 not found; the extension's gap against time is left out")
    if not body:
        body.append('<p class="skip">Skipped: no fine-tuning results in this work folder.</p>')
    page.sections.append(_section("Transfer learning", body))


def _read_finetune_csv(path: Path) -> dict[str, dict[str, float]]:
    """model -> {rmse_mev, mae_mev, wall_s, n_frames} from ``finetune_report.csv``."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = {}
            for row in reader:
                name = (row.get("model") or "").strip()
                if name:
                    rows[name] = {k: _float(row.get(k)) for k in ("rmse_mev", "mae_mev", "wall_s", "n_frames")}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QdgapError(f"{path}: not a readable CSV table ({exc})") from exc
    return rows


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


# ==========================================================================
# HTML
# ==========================================================================

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1.5em 2em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
.file { color: #888; }
.skip { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.8em; border-radius: 4px; }
ul.notes { font-size: 0.9em; color: #555; }
details summary { cursor: pointer; margin: 0.5em 0; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object, *, digits: int = 1, signed: bool = False) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


_NUMERIC = re.compile(r"[+-]?\d+(\.\d+)?( ± \d+(\.\d+)?)?")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(v: str) -> str:
        return f'<td class="num">{_e(v)}</td>' if _NUMERIC.fullmatch(v) else f"<td>{_e(v)}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(str(v)) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, body: Sequence[str]) -> str:
    return f"<section><h2>{_e(title)}</h2>{''.join(body)}</section>"


def _html(page: _Page, attrs: dict) -> str:
    from qdgap import __version__
    from qdgap.core.files import provenance

    made = provenance()
    meta = [
        f"work folder {page.workdir.resolve()}",
        *([page.trajectory] if page.trajectory else []),
        f"written {made['created']} by qdgap {__version__}",
    ]
    if attrs.get(schema.ATTR_INPUT_SHA256):
        meta.append(f"trajectory sha256 {str(attrs[schema.ATTR_INPUT_SHA256])[:16]}…")
    summary = (
        _table(["quantity", "value"], page.summary)
        if page.summary
        else '<p class="skip">No summary numbers: no unseen frame with a true gap.</p>'
    )
    notes = ""
    if page.notes:
        notes = '<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in page.notes) + "</ul>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>qdgap report: {_e(page.workdir.name)}</title><style>{_CSS}</style></head><body>"
        f'<h1>qdgap report{": " + _e(page.formula) if page.formula else ""}</h1><p class="meta">{" · ".join(_e(m) for m in meta)}</p>'
        f"<h2>Summary</h2>{summary}"
        f"{''.join(page.sections)}{notes}"
        '<p class="meta">Gaps in eV, errors in meV, time in fs, lengths in Å. '
        "Unseen frames: outside every member's train/val/test pool. σ: population std over the members.</p>"
        "</body></html>\n"
    )
