"""Every name that appears in a qdgap file, with its shape, dtype and unit.

Shape letters: M members, F frames, N atoms. No dataset or attr name is
spelled as a string literal anywhere else in the package.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------
# Trajectory file (DESIGN.md, "Data contracts")
# --------------------------------------------------------------------------
TRAJECTORY_FORMAT: Final[str] = "qdgap.trajectory"
TRAJECTORY_VERSION: Final[int] = 1

NUMBERS: Final[str] = "numbers"  # (N,) int64 | atomic numbers, the same in every frame
POSITIONS: Final[str] = "positions"  # (F, N, 3) float32, Å
CELL: Final[str] = "cell"  # (3, 3) or (F, 3, 3) float64, Å, rows are cell vectors
PBC: Final[str] = "pbc"  # (3,) bool
TIME_FS: Final[str] = "time_fs"  # (F,) float64, fs, strictly increasing
GAP_EV: Final[str] = "gap_ev"  # (F,) float32, eV; NaN where a frame has no label

TRAJECTORY_DATASETS: Final[tuple[str, ...]] = (NUMBERS, POSITIONS, CELL, PBC, TIME_FS, GAP_EV)

# --------------------------------------------------------------------------
# Attrs every qdgap file carries
# --------------------------------------------------------------------------
ATTR_FORMAT: Final[str] = "format"  # str | which contract the file follows
ATTR_VERSION: Final[str] = "version"  # int | contract version
ATTR_QDGAP_VERSION: Final[str] = "qdgap_version"  # str | the qdgap that wrote it
ATTR_COMMAND: Final[str] = "command"  # str | the command line that produced it
ATTR_INPUT_SHA256: Final[str] = "input_sha256"  # str | sha256 of the input trajectory file
ATTR_SEEDS: Final[str] = "seeds"  # (M,) int64 | member seeds
ATTR_CREATED: Final[str] = "created"  # str | ISO 8601 UTC time of writing
ATTR_SOURCE: Final[str] = "source"  # str | what a trajectory was imported or simulated from
ATTR_INPUT_PATH: Final[str] = "input_path"  # str | absolute path of the input trajectory file

# --------------------------------------------------------------------------
# predictions.h5
# --------------------------------------------------------------------------
PREDICTIONS_FORMAT: Final[str] = "qdgap.predictions"
PREDICTIONS_VERSION: Final[int] = 1

FRAME_INDEX: Final[str] = "frame_index"  # (F,) int64 | index into the trajectory
GAP_TRUE_EV: Final[str] = "gap_true_ev"  # (F,) float32, eV; NaN where unknown
GAP_PRED_EV: Final[str] = "gap_pred_ev"  # (M, F) float32, eV
GAP_MEAN_EV: Final[str] = "gap_mean_ev"  # (F,) float32, eV, mean over members
GAP_STD_EV: Final[str] = "gap_std_ev"  # (F,) float32, eV, population std over members
SEEDS: Final[str] = "seeds"  # (M,) int64

# --------------------------------------------------------------------------
# fna.h5
# --------------------------------------------------------------------------
FNA_FORMAT: Final[str] = "qdgap.fna"
FNA_VERSION: Final[int] = 1

ATOM_LABEL: Final[str] = "atom_label"  # (N,) str | Cd1..Cd28, Se1..Se17, Cl1..Cl22
BASELINE_EV: Final[str] = "baseline_ev"  # (M, F) float32, eV | unmasked prediction
MASKED_EV: Final[str] = "masked_ev"  # (M, F, N) float32, eV | prediction with atom n nullified
RMSE_MEV: Final[str] = "rmse_mev"  # (M, N) float64, meV | masked prediction vs true gaps
RMSE_MEV_MEAN: Final[str] = "rmse_mev_mean"  # (N,) float64, meV | mean over members
RMSE_MEV_STD: Final[str] = "rmse_mev_std"  # (N,) float64, meV | population std over members
BASELINE_RMSE_MEV: Final[str] = "baseline_rmse_mev"  # (M,) float64, meV | unmasked vs true
