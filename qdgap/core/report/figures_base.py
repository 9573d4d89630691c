"""What every report figure shares: the bare Agg figure, the legend above the axes, species colours.

Pure plotting: no file I/O, no pyplot and no global state. Every figure is a
bare ``Figure`` on an Agg canvas with ``constrained_layout``, so building one
never opens a window and never depends on the user's matplotlib backend;
the report (``core/report/build.py``) saves them.

Conventions: gaps in eV, errors in meV, time in fs, lengths in Å. Shape
letters: M members, F frames, N atoms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Species colours for the importance bars and the 3D view.
SPECIES_COLOURS = {"Cd": "#d9822b", "Se": "#3b6fb6", "Cl": "#3a9a5b"}
_FALLBACK_COLOURS = ("#8e6bb0", "#b5526b", "#6b8e23", "#7f7f7f", "#17becf")

TRUE_COLOUR = "black"
MEAN_COLOUR = "#1f77b4"
TRAIN_COLOUR = "#e6550d"
CALIBRATED_COLOUR = "#2ca02c"  # the calibrated band and curve, beside the raw spread's blue
EXTRAPOLATING_COLOUR = "#d62728"  # frames outside what the ensemble knows


def new_figure(width_in: float, height_in: float) -> Figure:
    """A bare figure of that size (inches) on an Agg canvas, with constrained layout; pyplot never sees it."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def legend_above(ax, handles: Sequence) -> None:
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


def species_colours(species: Sequence[str]) -> dict[str, str]:
    """Species -> colour, the fixed ones for Cd, Se, Cl and fallbacks for any other, in first-seen order."""
    colours: dict[str, str] = {}
    extra = iter(_FALLBACK_COLOURS * 4)
    for s in dict.fromkeys(species):
        colours[s] = SPECIES_COLOURS.get(s) or next(extra)
    return colours
