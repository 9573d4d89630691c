"""The report's figures: arrays in, ``matplotlib.figure.Figure`` out, one module per role.

Pure plotting: no file I/O, no pyplot and no global state (``core/report/figures_base.py``).
This module gathers the public names of

- ``figures_training``: learning curves, parity, transfer learning;
- ``figures_gap``: the band gap against time, with the calibrated interval and extrapolation flags;
- ``figures_importance``: atom importance (FNA) as bars, in 3D, over time and per group;
- ``figures_uncertainty``: the reliability diagram and the selection learning curve;
- ``figures_baselines``: the error of the model and of interpolation against distance to a label;

so that ``from qdgap.core.report import figures as figs; figs.parity(...)`` reads the same whichever holds it.
"""

from __future__ import annotations

from qdgap.core.report.figures_base import SPECIES_COLOURS, species_of
from qdgap.core.report.figures_baselines import error_by_distance
from qdgap.core.report.figures_gap import (
    ZOOM_WINDOW_FS,
    default_zoom,
    extension_gap_vs_time,
    flagged_spans,
    gap_vs_time,
    worst_window,
)
from qdgap.core.report.figures_importance import (
    BOND_DRAW_CUTOFF_ANG,
    TOP_ATOMS_LABELLED,
    TOP_ATOMS_OVER_TIME,
    atom_importance,
    importance_groups,
    importance_intervals,
    importance_over_time,
    quantum_dot_3d,
)
from qdgap.core.report.figures_training import (
    TRANSFER_MODELS,
    TRANSFER_NAMES,
    learning_curves,
    parity,
    transfer_comparison,
)
from qdgap.core.report.figures_uncertainty import RELIABILITY_LEVELS, reliability_diagram, selection_curve

__all__ = [
    "BOND_DRAW_CUTOFF_ANG",
    "RELIABILITY_LEVELS",
    "SPECIES_COLOURS",
    "TOP_ATOMS_LABELLED",
    "TOP_ATOMS_OVER_TIME",
    "TRANSFER_MODELS",
    "TRANSFER_NAMES",
    "ZOOM_WINDOW_FS",
    "atom_importance",
    "default_zoom",
    "error_by_distance",
    "extension_gap_vs_time",
    "flagged_spans",
    "gap_vs_time",
    "importance_groups",
    "importance_intervals",
    "importance_over_time",
    "learning_curves",
    "parity",
    "quantum_dot_3d",
    "reliability_diagram",
    "selection_curve",
    "species_of",
    "transfer_comparison",
    "worst_window",
]
