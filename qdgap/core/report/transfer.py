"""The report's transfer-learning section and the selection learning curve.

Reads ``finetune_report.csv``, ``predictions_ext.h5`` (the fine-tuned ensemble
along the extension, with its calibrated interval and extrapolation flags when
``qdgap predict`` wrote them) and, when present, a ``selection.json`` as
``bench/bench_selection.py`` writes it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from qdgap.core.common import metrics, schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.report.ensemble import (
    band_caption,
    calibrated_view,
    extrapolation_line,
    gap_time_extras,
    zoom_caption,
    zoom_windows,
)
from qdgap.core.report.page import (
    FIG_EXT_TIME,
    FIG_SELECTION,
    FIG_TRANSFER,
    Page,
    check_datasets,
    fmt_num,
    html_section,
    html_table,
    pool_frames,
    read_splits,
)
from qdgap.core.store import runs as rf
from qdgap.core.store.layout import Workdir


def section_transfer(page: Page, figs, wd: Workdir) -> None:
    """The pretrained / fine-tuned / from-scratch comparison and the extension's gap along time."""
    from qdgap.core.store.results import read_results

    body = []
    rows = read_finetune_csv(wd.finetune_csv) if wd.finetune_csv.is_file() else {}
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
                    fmt_num(r.get("rmse_mev")),
                    fmt_num(r.get("mae_mev")),
                    fmt_num(r.get("wall_s")),
                    fmt_num(r.get("n_frames"), digits=0),
                ]
            )
            page.summary.append(
                (
                    f"Transfer: {figs.TRANSFER_NAMES.get(m, m).splitlines()[0]}",
                    f"RMSE {fmt_num(r.get('rmse_mev'))} meV, MAE {fmt_num(r.get('mae_mev'))} meV",
                )
            )
        body.append(
            html_table(
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
        ext, ext_attrs = read_results(
            wd.predictions_extended,
            fmt=schema.PREDICTIONS_FORMAT,
            version=schema.PREDICTIONS_VERSION,
        )
        check_datasets(
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
        ft_splits = read_splits(rf.member_dirs(wd.runs_finetuned), page, what="runs_ft")
        trained = np.isin(frame, pool_frames(ft_splits, ("train",))) if ft_splits else None
        cal = calibrated_view(ext, ext_attrs)
        if cal is None:
            page.note(
                "predictions_ext.h5 predates calibration (no gap_std_calibrated_ev): the extension's calibrated band and "
                "extrapolation flags are left out; rerun `qdgap predict` to add them"
            )
        line = extrapolation_line(cal, len(frame))
        if line is not None:
            page.summary.append(("Extrapolating frames (extension)", line))
        windows = zoom_windows(page, ext[schema.TIME_FS], true, mean, figs)
        fig = figs.extension_gap_vs_time(
            ext[schema.TIME_FS], true, mean, std, train_mask=trained, zoom_fs=windows, **gap_time_extras(cal)
        )
        body.append(
            page.figure(
                fig,
                FIG_EXT_TIME,
                "Band gap against time along the extension: true gaps and the fine-tuned ensemble's mean with its "
                f"±2 std band, {band_caption(cal, len(frame))}and the fine-tuning frames marked{zoom_caption(windows)}.",
            )
        )
        if line is not None:
            body.append(f"<p>Extrapolation along the extension: {line}.</p>")
        held = ~np.isin(frame, pool_frames(ft_splits, ("train", "val", "test"))) & np.isfinite(true)
        if held.any():
            r, a = metrics.error_stats_mev(true[held], mean[held])
            c = metrics.coverage_ksigma(true[held], mean[held], std[held], 2.0)
            text = (
                f"Fine-tuned ensemble on the {int(held.sum())} extension frames outside the fine-tuning pool: "
                f"RMSE {r:.1f} meV, MAE {a:.1f} meV, true gap within ±2σ for {100 * c:.1f} %"
            )
            if cal is not None and cal.lo_ev is not None:
                inside = metrics.coverage(true[held], cal.lo_ev[held], cal.hi_ev[held])
                level = f"{100 * cal.level:.0f} % " if np.isfinite(cal.level) else ""
                text += f", within the calibrated {level}interval for {100 * inside:.1f} %"
            body.append(f"<p>{text}.</p>")
    else:
        page.note("predictions_ext.h5 not found; the extension's gap against time is left out")
    if not body:
        body.append('<p class="skip">Skipped: no fine-tuning results in this work folder.</p>')
    page.sections.append(html_section("Transfer learning", body))


def read_finetune_csv(path: Path) -> dict[str, dict[str, float]]:
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
# Choosing frames to label
# ==========================================================================


def read_selection_json(path: Path) -> dict:
    """The record ``bench/bench_selection.py`` writes: ``rows`` of strategy, k, repeat, rmse_mev, and references.

    Raises:
        QdgapError: the file is not JSON or has no ``rows`` list.
    """
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QdgapError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise QdgapError(f"{path}: no list of selection results ('rows'); write it with bench/bench_selection.py")
    return record


def selection_stats(rows: list[dict]) -> dict[str, dict[int, tuple[float, float, int]]]:
    """strategy -> K -> (mean RMSE (meV), std over repeats (meV), repeats), from the record's rows."""
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        try:
            strategy, k, rmse = str(row["strategy"]), int(row["k"]), float(row["rmse_mev"])
        except (KeyError, TypeError, ValueError):
            continue  # a row of another shape: left out rather than guessed at
        if np.isfinite(rmse):
            values.setdefault(strategy, {}).setdefault(k, []).append(rmse)
    return {
        s: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in sorted(by_k.items())}
        for s, by_k in values.items()
    }


def section_selection(page: Page, figs, wd: Workdir) -> None:
    """The selection learning curve, when the work folder holds a ``selection.json``; nothing otherwise."""
    path = wd.selection_json
    if not path.is_file():
        return
    record = read_selection_json(path)
    stats = selection_stats(record["rows"])
    if not stats:
        page.note(f"{path.name}: no usable selection rows; the selection learning curve is left out")
        return

    def ref(key: str) -> float | None:
        try:
            return float(record[key])
        except (KeyError, TypeError, ValueError):
            return None

    rest = record.get("rest")
    data = Path(str(record.get("data", ""))).name
    fig = figs.selection_curve(
        stats,
        pretrained_rmse_mev=ref("pretrained_rmse_mev"),
        all_rmse_mev=ref("all_rmse_mev"),
        all_frames=int(rest) if isinstance(rest, int) else None,
        title=f"Choosing frames to label{': ' + data if data else ''}",
    )
    held = record.get("holdout")
    caption = (
        "Held-out RMSE of the ensemble fine-tuned on K frames chosen by each `qdgap select` strategy, "
        "mean ± std over repeats"
        + (f"; {held} labelled frames held out for testing" if held else "")
        + (f"; {record['epochs']} epochs" if record.get("epochs") else "")
        + f" ({path.name})."
    )
    ks = sorted({k for by_k in stats.values() for k in by_k})
    rows = [[s, *(f"{stats[s][k][0]:.1f} ± {stats[s][k][1]:.1f}" if k in stats[s] else "–" for k in ks)] for s in stats]
    body = [
        page.figure(fig, FIG_SELECTION, caption),
        html_table(["held-out RMSE (meV)", *(f"K = {k}" for k in ks)], rows),
    ]
    page.sections.append(html_section("Choosing frames to label", body))
