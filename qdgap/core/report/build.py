"""``qdgap report``: one self-contained ``report.html`` and the PNG figures of a work folder.

Reads what the workflow left in a work folder (``core/store/layout.py``): the
ensemble's run folders, ``predictions.h5`` and, when present, ``fna.h5``, the
fine-tuning results, ``predictions_ext.h5`` and a ``selection.json``. Sections
whose inputs are missing are skipped with a note in the HTML. The HTML embeds
every figure as a base64 data URI and links to nothing outside itself, so it
can be mailed or archived alone. Every file is written through a temporary name
and renamed.

The page is built by role: ``report_page`` (the page, figure names, HTML),
``report_ensemble`` (ensemble and uncertainty), ``report_fna`` (atom
importance), ``report_transfer`` (transfer learning, selection); this module
checks the inputs and runs the sections in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import write_text_atomic
from qdgap.core.report.ensemble import (
    calibrated_view,
    extrapolation_line,
    section_baselines,
    section_ensemble,
    section_uncertainty,
)
from qdgap.core.report.fna import section_fna
from qdgap.core.report.page import (
    FIG_EXT_TIME,
    FIG_GAP_TIME,
    FIG_IMPORTANCE,
    FIG_IMPORTANCE_GROUPS,
    FIG_IMPORTANCE_TIME,
    FIG_LEARNING,
    FIG_PARITY,
    FIG_QD_3D,
    FIG_RELIABILITY,
    FIG_SELECTION,
    FIG_TRANSFER,
    FIGURE_NAMES,
    REPORT_DPI,
    Page,
    check_datasets,
    read_splits,
    render_html,
)
from qdgap.core.report.transfer import section_selection, section_transfer
from qdgap.core.store import runs as rf
from qdgap.core.store.layout import Workdir

__all__ = [
    "FIGURE_NAMES",
    "FIG_EXT_TIME",
    "FIG_GAP_TIME",
    "FIG_IMPORTANCE",
    "FIG_IMPORTANCE_GROUPS",
    "FIG_IMPORTANCE_TIME",
    "FIG_LEARNING",
    "FIG_PARITY",
    "FIG_QD_3D",
    "FIG_RELIABILITY",
    "FIG_SELECTION",
    "FIG_TRANSFER",
    "REPORT_DPI",
    "extrapolation_summary",
    "extrapolation_of",
    "write_report",
]

ATTR_INPUT_PATH = schema.ATTR_INPUT_PATH


def write_report(
    workdir: Path, *, data: Path | None = None, dpi: int = REPORT_DPI, zoom_fs: tuple[float, float] | None = None
) -> Path:
    """Write ``WORKDIR/report.html`` and ``WORKDIR/figures/*.png`` from a work folder's results.

    Args:
        workdir: the work folder (``runs/``, ``predictions.h5``, ...; ``selection.json`` adds
            the selection learning curve).
        data: the trajectory file, for the 3D view of the dot; by default the
            ``input_path`` attr of ``predictions.h5``, then the members' ``config.json``.
        dpi: PNG resolution.
        zoom_fs: (start, end) in fs: the zoom panel of the gap-against-time figures; None for their default
            (over 2 ps: the first 500 fs and the worst-predicted 500 fs; none on a shorter trajectory).

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

    from qdgap.core.report import figures as figs
    from qdgap.core.store.results import read_results

    if zoom_fs is not None and not zoom_fs[0] < zoom_fs[1]:
        raise QdgapError(
            f"--zoom {zoom_fs[0]:g}-{zoom_fs[1]:g}: the window is empty (its start must be before its end)"
        )
    page = Page(workdir=wd.root, figures_dir=wd.figures, dpi=dpi, zoom_fs=zoom_fs)
    pred, pred_attrs = read_results(wd.predictions, fmt=schema.PREDICTIONS_FORMAT, version=schema.PREDICTIONS_VERSION)
    check_datasets(
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
    splits = read_splits(members, page, what="runs")

    section_ensemble(page, figs, members, pred, pred_attrs, splits)
    section_uncertainty(page, figs, pred, pred_attrs, splits)
    traj = _find_trajectory(page, wd, data, pred_attrs, members)
    section_baselines(page, figs, pred, splits, traj)
    section_fna(page, figs, wd, traj)
    section_transfer(page, figs, wd)
    section_selection(page, figs, wd)

    for stale in set(FIGURE_NAMES) - set(page.written):  # a figure from an earlier report that no longer applies
        (wd.figures / stale).unlink(missing_ok=True)
    write_text_atomic(wd.report_html, render_html(page, pred_attrs))
    return wd.report_html


def extrapolation_summary(workdir: Path) -> list[str]:
    """One line per predictions file of a work folder on how many frames lie outside what the ensemble knows.

    The same words as ``qdgap predict`` prints, read back from ``predictions.h5``
    and ``predictions_ext.h5``; a file without extrapolation flags (written before
    calibration, or by an ensemble that could not be calibrated) gives no line.

    Args:
        workdir: the work folder.

    Returns:
        Lines such as ``"extension: 86 of 501 frames (17.2 %) outside what the ensemble knows (...)"``.
    """
    wd = Workdir(Path(workdir))
    lines = []
    for what, path in (("trajectory", wd.predictions), ("extension", wd.predictions_extended)):
        if path.is_file() and (line := extrapolation_of(path)[0]) is not None:
            lines.append(f"{what}: {line}")
    return lines


def extrapolation_of(path: Path) -> tuple[str | None, str | None]:
    """(the extrapolation line of one ``predictions.h5``, or None without flags; the sha256 of the trajectory
    it was predicted from, or None when not recorded).

    Raises:
        QdgapError: not a qdgap predictions file.
    """
    from qdgap.core.store.results import read_results

    pred, attrs = read_results(path, fmt=schema.PREDICTIONS_FORMAT, version=schema.PREDICTIONS_VERSION)
    sha = attrs.get(schema.ATTR_INPUT_SHA256)
    if schema.FRAME_INDEX not in pred:
        return None, sha
    return extrapolation_line(calibrated_view(pred, attrs), len(pred[schema.FRAME_INDEX])), sha


def _find_trajectory(page: Page, wd: Workdir, data: Path | None, attrs: dict, members: Sequence[Path]):
    """The trajectory the predictions were made from, or None (with a note) when it cannot be found."""
    from qdgap.core.data.trajectory import read_trajectory

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
