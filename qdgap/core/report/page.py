"""What every section of the report shares: the page being built, the figure names, the inputs, the HTML.

A section (``core/report_*.py``) adds its figures to a ``Page`` (each saved as
``figures/<name>.png`` through a temporary name and embedded as a base64 data
URI), its rows to the summary table and its notes; ``render_html`` writes the
page from them. Nothing here reads a result file but the runs' ``split.json``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output
from qdgap.core.store import runs as rf

log = logging.getLogger("qdgap.core.report.build")  # the notes of every section under the one name they always had

REPORT_DPI = 130  # PNG resolution, dots per inch

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
FIG_RELIABILITY = "reliability_unseen.png"
FIG_SELECTION = "selection_learning_curve.png"
FIG_DISTANCE = "error_vs_label_distance.png"
FIGURE_NAMES = (
    FIG_LEARNING,
    FIG_PARITY,
    FIG_RELIABILITY,
    FIG_GAP_TIME,
    FIG_DISTANCE,
    FIG_IMPORTANCE,
    FIG_QD_3D,
    FIG_IMPORTANCE_TIME,
    FIG_IMPORTANCE_GROUPS,
    FIG_TRANSFER,
    FIG_EXT_TIME,
    FIG_SELECTION,
)


@dataclass
class Page:
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
    zoom_fs: tuple[float, float] | None = None  # the gap-against-time zoom window (fs); None: figures.default_zoom

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
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f'<figcaption>{esc(caption)} <span class="file">(figures/{esc(name)})</span></figcaption></figure>'
        )


# ==========================================================================
# Inputs
# ==========================================================================


def check_datasets(path: Path, found: dict, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in found]
    if missing:
        raise QdgapError(f"{path}: lacks dataset(s) {', '.join(missing)}; remake it with the current qdgap")


def read_splits(members: Sequence[Path], page: Page, *, what: str) -> dict[int, dict[str, list[int]]]:
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


def pool_frames(splits: dict[int, dict[str, list[int]]], keys: Sequence[str]) -> np.ndarray:
    sets = [np.asarray(s[k], np.int64) for s in splits.values() for k in keys]
    return np.unique(np.concatenate(sets)) if sets else np.empty(0, np.int64)


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


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def fmt_num(value: object, *, digits: int = 1, signed: bool = False) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


_NUMERIC = re.compile(r"[+-]?\d+(\.\d+)?( ± \d+(\.\d+)?)?")


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(v: str) -> str:
        return f'<td class="num">{esc(v)}</td>' if _NUMERIC.fullmatch(v) else f"<td>{esc(v)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(str(v)) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_section(title: str, body: Sequence[str]) -> str:
    return f"<section><h2>{esc(title)}</h2>{''.join(body)}</section>"


def render_html(page: Page, attrs: dict) -> str:
    from qdgap import __version__
    from qdgap.core.common.files import provenance

    made = provenance()
    meta = [
        f"work folder {page.workdir.resolve()}",
        *([page.trajectory] if page.trajectory else []),
        f"written {made['created']} by qdgap {__version__}",
    ]
    if attrs.get(schema.ATTR_INPUT_SHA256):
        meta.append(f"trajectory sha256 {str(attrs[schema.ATTR_INPUT_SHA256])[:16]}…")
    summary = (
        html_table(["quantity", "value"], page.summary)
        if page.summary
        else '<p class="skip">No summary numbers: no unseen frame with a true gap.</p>'
    )
    notes = ""
    if page.notes:
        notes = '<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in page.notes) + "</ul>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>qdgap report: {esc(page.workdir.name)}</title><style>{_CSS}</style></head><body>"
        f'<h1>qdgap report{": " + esc(page.formula) if page.formula else ""}</h1><p class="meta">{" · ".join(esc(m) for m in meta)}</p>'
        f"<h2>Summary</h2>{summary}"
        f"{''.join(page.sections)}{notes}"
        '<p class="meta">Gaps in eV, errors in meV, time in fs, lengths in Å. '
        "Unseen frames: outside every member's train/val/test pool. σ: population std over the members.</p>"
        "</body></html>\n"
    )
