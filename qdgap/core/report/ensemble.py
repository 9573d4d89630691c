"""The report's ensemble and uncertainty sections: learning curves, errors, gap along time, reliability.

The uncertainty section reads what ``qdgap predict`` wrote beside the raw
spread (``core/analysis/calibration.py``): the calibrated std, the interval
``gap_lo_ev..gap_hi_ev`` at ``interval_level`` and the ``extrapolating`` flags.
A predictions file written before calibration existed lacks them; its report
keeps the raw reliability curve and says, in a note, what is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common import metrics, schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.report.page import (
    FIG_DISTANCE,
    FIG_GAP_TIME,
    FIG_LEARNING,
    FIG_PARITY,
    FIG_RELIABILITY,
    Page,
    esc,
    fmt_num,
    html_section,
    html_table,
    pool_frames,
)
from qdgap.core.store import runs as rf

TABLE_LEVELS = (0.68, 0.95)  # coverages in the uncertainty table, as `qdgap predict` prints them


def section_ensemble(page: Page, figs, members: Sequence[Path], pred: dict, attrs: dict, splits: dict) -> None:
    """Learning curves, unseen-frame errors and parity, the gap along time, the members' table.

    Args:
        page: the page being built.
        figs: ``core.figures``.
        members: the run folders.
        pred: ``predictions.h5``'s datasets.
        attrs: its attrs.
        splits: seed -> the member's split (``read_splits``).
    """
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
    seen = np.isin(frame, pool_frames(splits, ("train", "val", "test")))
    trained = np.isin(frame, pool_frames(splits, ("train",)))
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
    cal = calibrated_view(pred, attrs)
    windows = zoom_windows(page, time_fs, true, mean, figs)
    fig = figs.gap_vs_time(time_fs, true, mean, std, train_mask=trained, zoom_fs=windows, **gap_time_extras(cal))
    body.append(
        page.figure(
            fig,
            FIG_GAP_TIME,
            f"Band gap against time over the {len(frame)} predicted frames: true gaps, the ensemble mean with its ±2 std band, "
            f"{band_caption(cal, len(frame))}and the frames some member trained on; the lower panel is the error of the mean"
            f"{zoom_caption(windows)}.",
        )
    )
    body.append(member_table(members, rows_members, curves))
    page.sections.append(html_section("Ensemble", body))


def section_baselines(page: Page, figs, pred: dict, splits: dict, traj) -> None:
    """ "Better than what?": the ensemble beside interpolation in time etc. of its training labels, and the
    error of each against time distance to the nearest training label (where the model starts to pay)."""
    from qdgap.core.analysis import baselines as bl
    from qdgap.core.analysis.predict import EnsemblePrediction, baseline_report

    if traj is None:
        page.note("trajectory file not found: the baselines (interpolation of the training labels) are left out")
        return
    p = EnsemblePrediction(
        frame_index=np.asarray(pred[schema.FRAME_INDEX], np.int64), time_fs=np.asarray(pred[schema.TIME_FS]),
        gap_true_ev=np.asarray(pred[schema.GAP_TRUE_EV]), gap_pred_ev=np.atleast_2d(np.asarray(pred[schema.GAP_PRED_EV])),
        seeds=np.asarray(pred.get(schema.SEEDS, [])),
    )  # fmt: skip
    report = baseline_report(p, pool_frames(splits, ("train",)), traj, members=len(splits))
    if report is None:
        page.note("no labelled frame outside the training splits: the baselines are left out")
        return
    rows = [
        ["qdgap ensemble" if s.name == "model" else bl.BASELINE_TITLES.get(s.name, s.name), fmt_num(s.rmse_mev),
         fmt_num(s.mae_mev), "" if s.name == "model" else f"{s.skill:+.2f}"]
        for s in report.scores
    ]  # fmt: skip
    body = [
        f"<p>On the same {report.scores[0].frames} labelled frames, from {report.label_source}; the gap's "
        f"correlation time on those labels is {report.corr_time_fs:.0f} fs. <b>Verdict:</b> {esc(report.verdict)}.</p>",
        html_table(["predictor", "RMSE (meV)", "MAE (meV)", "skill of the model (1 - RMSE_model / RMSE)"], rows),
    ]
    page.summary.append(("Better than what?", report.verdict))
    b = report.bins
    fig = figs.error_by_distance(b.edges_fs, b.frames, b.rmse_mev, corr_time_fs=report.corr_time_fs)
    body.append(
        page.figure(
            fig,
            FIG_DISTANCE,
            "RMSE of the ensemble and of the baselines binned by time distance to the nearest training label. Close "
            "to a label, interpolation in time is hard to beat; far from every label it falls back towards the mean, "
            "and that is where a model of structure to gap can pay.",
        )
    )
    page.sections.append(html_section("Better than what? Baselines on the same frames", body))


def member_table(members: Sequence[Path], rows_members: list, curves: dict) -> str:
    """The collapsible table of members: epochs, best validation MAE, test and unseen errors (meV), state."""
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
                fmt_num(test.get("rmse_mev")),
                fmt_num(r),
                fmt_num(a),
                rf.member_state(run),
            ]
        )
    table = html_table(
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


# ==========================================================================
# Calibration and extrapolation
# ==========================================================================


@dataclass(frozen=True)
class CalibratedView:
    """What ``qdgap predict`` wrote about the calibrated spread of one predictions file.

    Attributes:
        std_ev: (F,) float64, eV, calibrated std.
        lo_ev, hi_ev: (F,) float64, eV, the interval at ``level``; None when not written.
        extrapolating: (F,) bool; None when not written.
        level: nominal coverage of the interval (0-1), NaN when unknown.
        method: ``scale`` or ``conformal`` ("" when unknown).
        scale: calibrated std / raw std, NaN when unknown.
        threshold_ev: eV, the calibrated std above which a frame is flagged, NaN when unknown.
        threshold_frames: where that threshold was taken (``between`` or ``held-out``; "" when unknown).
        calibration_frames: how many held-out frames the fit used (0 when unknown).
    """

    std_ev: np.ndarray
    lo_ev: np.ndarray | None
    hi_ev: np.ndarray | None
    extrapolating: np.ndarray | None
    level: float
    method: str
    scale: float
    threshold_ev: float
    threshold_frames: str
    calibration_frames: int


def calibrated_view(pred: dict, attrs: dict) -> CalibratedView | None:
    """The calibrated datasets and attrs of a predictions file; None for one written before calibration."""
    if schema.GAP_STD_CALIBRATED_EV not in pred:
        return None

    def arr(key: str, dtype) -> np.ndarray | None:
        return np.asarray(pred[key], dtype) if key in pred else None

    def num(key: str) -> float:
        try:
            return float(attrs[key])
        except (KeyError, TypeError, ValueError):
            return float("nan")

    lo, hi = arr(schema.GAP_LO_EV, np.float64), arr(schema.GAP_HI_EV, np.float64)
    if lo is None or hi is None:
        lo = hi = None
    calib = num("calibration_frames")
    return CalibratedView(
        std_ev=np.asarray(pred[schema.GAP_STD_CALIBRATED_EV], np.float64),
        lo_ev=lo,
        hi_ev=hi,
        extrapolating=arr(schema.EXTRAPOLATING, bool),
        level=num(schema.ATTR_INTERVAL_LEVEL),
        method=str(attrs.get(schema.ATTR_INTERVAL_METHOD, "")),
        scale=num(schema.ATTR_CALIBRATION_SCALE),
        threshold_ev=num(schema.ATTR_EXTRAPOLATION_THRESHOLD_EV),
        threshold_frames=str(attrs.get("threshold_frames", "")),
        calibration_frames=int(calib) if math.isfinite(calib) else 0,
    )


def zoom_windows(
    page: Page, time_fs: np.ndarray, true: np.ndarray, mean: np.ndarray, figs
) -> list[tuple[float, float]]:
    """The gap-against-time figure's zoom windows (fs): the one ``qdgap report --zoom`` asked for (if the
    predictions reach into it), else ``figures.default_zoom``."""
    if page.zoom_fs is None:
        return figs.default_zoom(time_fs, true, mean)
    a, b = page.zoom_fs
    t = np.asarray(time_fs, np.float64)
    if not ((t >= a) & (t <= b)).any():
        page.note(f"--zoom {a:g}-{b:g} fs holds no predicted frame ({t.min():g}-{t.max():g} fs); no zoom panel")
        return []
    return [(float(a), float(b))]


def zoom_caption(windows: list[tuple[float, float]]) -> str:
    """The caption's words for the zoom panels ("" without any)."""
    if not windows:
        return ""
    spans = " and ".join(f"{a:g}-{b:g} fs" for a, b in windows)
    return f"; below, zoomed into {spans}"


def gap_time_extras(cal: CalibratedView | None) -> dict:
    """Keyword arguments of ``figures.gap_vs_time`` for the calibrated band and the flags (none without them)."""
    if cal is None:
        return {}
    return {
        "gap_lo_ev": cal.lo_ev,
        "gap_hi_ev": cal.hi_ev,
        "level": cal.level if math.isfinite(cal.level) else None,
        "extrapolating": cal.extrapolating,
    }


def band_caption(cal: CalibratedView | None, n_frames: int) -> str:
    """The caption's words for the calibrated band and the shaded flags ("" without calibration)."""
    if cal is None:
        return ""
    words = ""
    if cal.lo_ev is not None:
        level = f"{100 * cal.level:.0f} % " if math.isfinite(cal.level) else ""
        method = f", {cal.method}" if cal.method else ""
        words += f"the calibrated {level}interval (green band{method}), "
    if cal.extrapolating is not None:
        n = int(cal.extrapolating.sum())
        words += f"{n} of {n_frames} frames flagged as extrapolating (shaded red), "
    return words


def extrapolation_line(cal: CalibratedView | None, n_frames: int) -> str | None:
    """How many frames lie outside what the ensemble knows, as ``qdgap predict`` says it; None without flags."""
    if cal is None or cal.extrapolating is None:
        return None
    n = int(cal.extrapolating.sum())
    line = f"{n} of {n_frames} frames ({100 * n / max(1, n_frames):.1f} %) outside what the ensemble knows"
    if math.isfinite(cal.threshold_ev):
        line += f" (calibrated std above {cal.threshold_ev * metrics.MEV_PER_EV:.1f} meV"
        if cal.threshold_frames == "between":
            line += ", the largest between its pool frames on the training trajectory"
        elif cal.threshold_frames and cal.calibration_frames:
            line += f", the largest on its {cal.calibration_frames} calibration frames"
        line += ")"
    return line


def section_uncertainty(page: Page, figs, pred: dict, attrs: dict, splits: dict) -> None:
    """Reliability diagram and the coverage table on the unseen labelled frames; the extrapolation line.

    Args:
        page: the page being built.
        figs: ``core.figures``.
        pred: ``predictions.h5``'s datasets.
        attrs: its attrs.
        splits: seed -> the member's split (``read_splits``).
    """
    frame = np.asarray(pred[schema.FRAME_INDEX], np.int64)
    true = np.asarray(pred[schema.GAP_TRUE_EV], np.float64)
    mean = np.asarray(pred[schema.GAP_MEAN_EV], np.float64)
    std = np.asarray(pred[schema.GAP_STD_EV], np.float64)
    unseen = ~np.isin(frame, pool_frames(splits, ("train", "val", "test"))) & np.isfinite(true)
    cal = calibrated_view(pred, attrs)
    body = []
    if cal is None:
        page.note(
            "predictions.h5 predates calibration (no gap_std_calibrated_ev): the calibrated curve, interval and "
            "extrapolation flags are left out; rerun `qdgap predict` to add them"
        )
        body.append(
            '<p class="skip">This predictions file was written before calibration existed: raw spread only.</p>'
        )
    line = extrapolation_line(cal, len(frame))
    if line is not None:
        page.summary.append(("Extrapolating frames (trajectory)", line))
        body.append(f"<p>Extrapolation: {line}.</p>")
    if unseen.any():
        err = mean[unseen] - true[unseen]
        cal_std = None if cal is None else cal.std_ev[unseen]
        fig = figs.reliability_diagram(err, std[unseen], std_calibrated_ev=cal_std)
        scale = f" (x{cal.scale:.2f})" if cal is not None and math.isfinite(cal.scale) else ""
        body.append(
            page.figure(
                fig,
                FIG_RELIABILITY,
                f"Reliability on the {int(unseen.sum())} unseen frames with a true gap: the fraction of frames whose true gap "
                "lies within the central Gaussian interval mean ± z(p)·std, against its nominal level p (0.05 to 0.95), "
                "for the raw spread"
                + (f" and the calibrated one{scale}" if cal is not None else "")
                + "; above the diagonal the spread is too wide. Right: |error| against the spread per frame.",
            )
        )
        rows, summary = coverage_table(true[unseen], mean[unseen], std[unseen], cal, unseen)
        body.append(html_table(["on unseen frames", "raw spread", "calibrated" + scale], rows))
        page.summary += summary
    else:
        page.note("no unseen frame with a true gap; no reliability diagram or coverage table")
    page.sections.append(html_section("Uncertainty", body))


def coverage_table(
    true: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    cal: CalibratedView | None,
    scored: np.ndarray,
) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Rows of the coverage table (raw against calibrated) and the summary rows, on the scored frames.

    Args:
        true: (K,) eV, the scored frames' true gaps.
        mean: (K,) eV, their ensemble mean.
        std: (K,) eV, their raw spread.
        cal: the calibrated view of the whole file (F frames), or None.
        scored: (F,) bool, which of the file's frames are scored (K of them).
    """
    from scipy.stats import norm

    err = mean - true
    cal_std = None if cal is None else cal.std_ev[scored]

    def pct(x: float) -> str:
        return f"{100 * x:.1f} %" if math.isfinite(x) else "–"

    rows, cover = [], {}
    for level in TABLE_LEVELS:
        z = float(norm.ppf(0.5 + level / 2))
        raw = metrics.coverage_ksigma(true, mean, std, z)
        c = metrics.coverage_ksigma(true, mean, cal_std, z) if cal_std is not None else float("nan")
        cover[level] = (raw, c)
        rows.append([f"coverage of mean ± {z:.2f} std (expected {100 * level:.0f} %)", pct(raw), pct(c)])
    if cal is not None and cal.lo_ev is not None:
        inside = metrics.coverage(true, cal.lo_ev[scored], cal.hi_ev[scored])
        level = f"{100 * cal.level:.0f} % " if math.isfinite(cal.level) else ""
        rows.append([f"coverage of gap_lo..gap_hi ({level}{cal.method or 'interval'})", "–", pct(inside)])
    area_raw = metrics.miscalibration_area(err, std)
    area_cal = metrics.miscalibration_area(err, cal_std) if cal_std is not None else float("nan")
    rows.append(["miscalibration area (0 ideal, 0.5 worst)", fmt_num(area_raw, digits=3), fmt_num(area_cal, digits=3)])
    # A constant scale keeps the ranking, so one value serves both columns.
    rho = metrics.spearman_rho(std, np.abs(err))
    rows.append(["Spearman(spread, |error|)", fmt_num(rho, digits=2), fmt_num(rho, digits=2) if cal else "–"])
    raw68, cal68 = cover[0.68]
    raw95, cal95 = cover[0.95]
    summary = [("Coverage 68 / 95 % on unseen frames, raw spread", f"{pct(raw68)} / {pct(raw95)}")]
    if cal is not None:
        summary.append(("Coverage 68 / 95 % on unseen frames, calibrated", f"{pct(cal68)} / {pct(cal95)}"))
    summary.append(
        (
            "Miscalibration area, Spearman(spread, |error|)",
            f"{fmt_num(area_raw, digits=3)}"
            + (f" -> {fmt_num(area_cal, digits=3)}" if cal is not None else "")
            + f"; {fmt_num(rho, digits=2)}",
        )
    )
    return rows, summary
