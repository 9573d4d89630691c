"""The README's figure: the band gap along a trajectory and its extension, as one ensemble predicts both.

    python scripts/readme_figure.py RUNS PREDICTIONS PREDICTIONS_EXT -o docs/assets/gap_demo.png

``PREDICTIONS`` and ``PREDICTIONS_EXT`` are ``qdgap predict --frames all`` of the training trajectory
and of its extension with the ensemble in ``RUNS``; the figure is the report's gap against time
(``core/report/figures_gap.py``) over both, training frames marked, the calibrated interval as a band,
the extrapolating frames shaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from qdgap.core.common import schema
    from qdgap.core.report import figures as figs
    from qdgap.core.store.results import read_results
    from qdgap.core.store.runs import load_members

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("predictions_ext", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/assets/gap_demo.png"))
    args = parser.parse_args()

    members = load_members(args.runs)
    parts = [read_results(p, fmt=schema.PREDICTIONS_FORMAT)[0] for p in (args.predictions, args.predictions_ext)]
    trained = np.isin(parts[0][schema.FRAME_INDEX], np.concatenate([m.split["train"] for m in members]))

    def both(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(p[name]) for p in parts])

    attrs = read_results(args.predictions, fmt=schema.PREDICTIONS_FORMAT)[1]
    fig = figs.gap_vs_time(
        both(schema.TIME_FS),
        both(schema.GAP_TRUE_EV),
        both(schema.GAP_MEAN_EV),
        both(schema.GAP_STD_EV),
        train_mask=np.concatenate([trained, np.zeros(len(parts[1][schema.FRAME_INDEX]), bool)]),
        gap_lo_ev=both(schema.GAP_LO_EV),
        gap_hi_ev=both(schema.GAP_HI_EV),
        level=float(attrs[schema.ATTR_INTERVAL_LEVEL]),
        extrapolating=both(schema.EXTRAPOLATING),
        title=f"{len(members)} members trained on 0-1 ps predict 0-1.5 ps (GFN1-xTB gaps of the demo dot)",
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
