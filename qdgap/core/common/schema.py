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
# Optional: the band edges behind the gap, where the labels give them (a multi-task member learns them).
HOMO_EV: Final[str] = "homo_ev"  # (F,) float32, eV; NaN where unknown
LUMO_EV: Final[str] = "lumo_ev"  # (F,) float32, eV; NaN where unknown
BAND_EDGE_DATASETS: Final[tuple[str, ...]] = (HOMO_EV, LUMO_EV)
# Optional: a cheap gap of the same frames (GFN-xTB, `qdgap data xtb`), for multi-fidelity estimates.
XTB_GAP_EV: Final[str] = "xtb_gap_ev"  # (F,) float32, eV; NaN where not computed
ATTR_XTB_METHOD: Final[str] = "xtb_method"  # str, e.g. "GFN1-xTB": the method behind xtb_gap_ev
OPTIONAL_FRAME_DATASETS: Final[tuple[str, ...]] = (*BAND_EDGE_DATASETS, XTB_GAP_EV)

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
# predictions.h5 and fna.h5 merged from the parts of a Slurm job array (core/workflow/part_array.py):
ATTR_SLURM_JOBS: Final[str] = "slurm_jobs"  # str | comma-separated ids of the arrays whose tasks computed the parts
ATTR_SLURM_PARTS: Final[str] = "slurm_parts"  # int | parts merged (members x blocks of frames)
ATTR_FRAMES_PER_TASK: Final[str] = "frames_per_task"  # int | frames per part; 0 for one part per member

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
# Written when the runs folder can be calibrated (core/analysis/calibration.py; runs/calibration.json):
GAP_STD_CALIBRATED_EV: Final[str] = "gap_std_calibrated_ev"  # (F,) float32, eV | gap_std_ev x the fitted scale
GAP_LO_EV: Final[str] = "gap_lo_ev"  # (F,) float32, eV | lower end of the interval at attr interval_level
GAP_HI_EV: Final[str] = "gap_hi_ev"  # (F,) float32, eV | upper end of that interval
EXTRAPOLATING: Final[str] = "extrapolating"  # (F,) bool | calibrated std above attr extrapolation_threshold_ev
ATTR_INTERVAL_LEVEL: Final[str] = "interval_level"  # float | nominal coverage of gap_lo_ev..gap_hi_ev
ATTR_INTERVAL_METHOD: Final[str] = "interval_method"  # str | scale or conformal
ATTR_CALIBRATION_SCALE: Final[str] = "calibration_scale"  # float | calibrated std / raw std
ATTR_EXTRAPOLATION_THRESHOLD_EV: Final[str] = (
    "extrapolation_threshold_ev"  # float, eV | largest calibrated std of a calibration frame
)

# --------------------------------------------------------------------------
# gaps.h5 from `qdgap interpolate` (core/workflow/interpolate.py): no model, the labels and the xTB gaps
# --------------------------------------------------------------------------
INTERPOLATION_FORMAT: Final[str] = "qdgap.interpolation"
INTERPOLATION_VERSION: Final[int] = 1
# Beside FRAME_INDEX, TIME_FS, GAP_TRUE_EV, GAP_MEAN_EV (the posterior mean), GAP_LO_EV and GAP_HI_EV:
GAP_SD_EV: Final[str] = "gap_sd_ev"  # (F,) float32, eV | predictive sd of the frame's gap (noise included)
IN_POOL: Final[str] = "in_pool"  # (F,) bool | the frame's label conditioned the process
ATTR_ESTIMATOR: Final[str] = "estimator"  # str | gp-time or gp-time-xtb
ATTR_POOL_STRIDE: Final[str] = "pool_stride"  # int | every stride-th labelled frame conditioned it

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

# fna.h5, importance statistics (core/analysis/importance.py). Paired per member: masked minus unmasked on the
# same frames. Intervals, p-values and rank stability come from one bootstrap over blocks of consecutive
# frames and over members; how it was made is in the attrs below.
IMPORTANCE_MEV: Final[str] = (
    "importance_mev"  # (M, N) float64, meV | masked RMSE - unmasked RMSE, per member; NaN without labels
)
IMPORTANCE_MEAN_MEV: Final[str] = "importance_mean_mev"  # (N,) float64, meV | mean over members
IMPORTANCE_CI_MEV: Final[str] = "importance_ci_mev"  # (N, 2) float64, meV | bootstrap percentile interval (lo, hi)
P_VALUE_VS_ZERO: Final[str] = "p_value_vs_zero"  # (N,) float64 | one-sided, importance > 0, before correction
P_ADJUSTED_VS_ZERO: Final[str] = (
    "p_adjusted_vs_zero"  # (N,) float64 | after the correction (attr importance_correction)
)
NONZERO: Final[str] = "nonzero"  # (N,) bool | p_adjusted_vs_zero <= importance_alpha: nullifying it hurts at all
RANK_STABILITY: Final[str] = "rank_stability"  # (N,) float64 | fraction of replicates in the top importance_top_k
# Standing out: importance minus the median importance over the N atoms, within each bootstrap replicate.
STANDOUT_MEV: Final[str] = "standout_mev"  # (N,) float64, meV | importance_mean_mev - its median over atoms
STANDOUT_CI_MEV: Final[str] = "standout_ci_mev"  # (N, 2) float64, meV | its interval (lo, hi)
P_VALUE_VS_MEDIAN: Final[str] = "p_value_vs_median"  # (N,) float64 | one-sided, standout > 0 (Student's t)
P_ADJUSTED_VS_MEDIAN: Final[str] = "p_adjusted_vs_median"  # (N,) float64 | after the correction
STANDS_OUT: Final[str] = "stands_out"  # (N,) bool | p_adjusted_vs_median <= importance_alpha
RANK_CI: Final[str] = "rank_ci"  # (N, 2) int64 | 2.5-97.5 % of the atom's rank over replicates (1 = first)
# Written before issue 28 under these names (the test against 0); read from older files only.
LEGACY_P_VALUE: Final[str] = "p_value"
LEGACY_P_ADJUSTED: Final[str] = "p_adjusted"
LEGACY_SIGNIFICANT: Final[str] = "significant"
SHIFT_MEV: Final[str] = "shift_mev"  # (M, N) float64, meV | mean |masked - unmasked| over frames, per member
SHIFT_MEAN_MEV: Final[str] = "shift_mean_mev"  # (N,) float64, meV | mean over members
SHIFT_CI_MEV: Final[str] = "shift_ci_mev"  # (N, 2) float64, meV | bootstrap percentile interval (lo, hi)
SHIFT_P_VALUE: Final[str] = "shift_p_value"  # (N,) float64 | one-sided, shift > attr shift_null_mev (ensemble spread)
SHIFT_P_ADJUSTED: Final[str] = "shift_p_adjusted"  # (N,) float64 | after the correction
SHIFT_SIGNIFICANT: Final[str] = "shift_significant"  # (N,) bool | shift_p_adjusted <= shift_alpha
SHIFT_RANK_STABILITY: Final[str] = (
    "shift_rank_stability"  # (N,) float64 | fraction of replicates in the top shift_top_k
)
SHIFT_STANDOUT_MEV: Final[str] = "shift_standout_mev"  # (N,) float64, meV | shift_mean_mev - its median over atoms
SHIFT_STANDOUT_CI_MEV: Final[str] = "shift_standout_ci_mev"  # (N, 2) float64, meV
SHIFT_P_VALUE_VS_MEDIAN: Final[str] = "shift_p_value_vs_median"  # (N,) float64 | one-sided, shift_standout > 0
SHIFT_P_ADJUSTED_VS_MEDIAN: Final[str] = "shift_p_adjusted_vs_median"  # (N,) float64 | after the correction
SHIFT_STANDS_OUT: Final[str] = "shift_stands_out"  # (N,) bool | shift_p_adjusted_vs_median <= shift_alpha
SHIFT_RANK_CI: Final[str] = "shift_rank_ci"  # (N, 2) int64 | rank interval by shift
SITE_CLASS: Final[str] = "site_class"  # (N,) str | Cd core, Se surface, Cl bridging, ... (analysis.sites.site_classes)
# Groups of atoms (species, then site classes), for the score that ranks (attr importance_ranked_by).
GROUP_LABEL: Final[str] = "group_label"  # (G,) str | Cd, Se, Cl, Cd core, Cl terminal, ...
GROUP_NUM_ATOMS: Final[str] = "group_num_atoms"  # (G,) int64
GROUP_MEAN_MEV: Final[str] = "group_mean_mev"  # (G,) float64, meV | mean score of the group's atoms
GROUP_MEAN_CI_MEV: Final[str] = "group_mean_ci_mev"  # (G, 2) float64, meV | its bootstrap interval
GROUP_SUM_MEV: Final[str] = "group_sum_mev"  # (G,) float64, meV | summed score of the group's atoms
GROUP_SUM_CI_MEV: Final[str] = "group_sum_ci_mev"  # (G, 2) float64, meV | its bootstrap interval
GROUP_P_VALUE: Final[str] = "group_p_value"  # (G,) float64 | one-sided, mean > the score's null, before correction
GROUP_P_ADJUSTED: Final[str] = "group_p_adjusted"  # (G,) float64 | corrected over the groups
GROUP_SIGNIFICANT: Final[str] = "group_significant"  # (G,) bool
ATTR_RANKED_BY: Final[str] = "importance_ranked_by"  # str | rmse or shift: the score that orders the CSV and report
# Further attrs, written by ImportanceStats.attrs with prefix "importance" (rmse score) or "shift":
# <prefix>_block_frames (int, FNA frames), _block_source, _bootstrap (replicates), _seed, _top_k, _alpha,
# _redraw_top_k_overlap (float: the top-k share two simulated re-trained ensembles have in common,
# ranking.simulate_redraws; files before 0b8520c: two bootstrap replicates),
# _confidence, _correction (holm or bh), _null_mev, _n_frames, _n_members.

# importance.extxyz (qdgap fna --xyz): per-atom array of every FNA frame
XYZ_IMPORTANCE: Final[str] = "importance"  # (N,) float64, meV | ensemble-mean |masked - unmasked| on that frame

# split.json / config.json "split": how a member cuts its labelled pool (core/data/splits.py)
SPLIT_SCHEMES: Final[tuple[str, ...]] = ("random", "blocked")
