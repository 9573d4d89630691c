"""``qdgap interpolate``: the gap of every frame from the DFT labels alone, no model.

A Gaussian process in time conditioned on the labels (kriging), with the frame's cheap xTB gap as a
second input when ``qdgap data xtb`` computed it (``core/analysis/gp.py``). On the real Cl dot it beats
linear interpolation of the same labels by 25 % at 50 fs spacing and 17 % at 100 fs, and every ALIGNN recipe
measured (``bench/results_multifidelity.md``, docs/how-to/multi-fidelity.md); at 10-20 fs kriging in time
alone is as good, at 200 fs the xTB-corrected interpolation is better. It reports
its own accuracy two ways: leave-one-out on the labels it used, and, when ``--stride`` leaves labelled
frames out, on those frames beside interpolation and the other baselines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qdgap.core.analysis import baselines as bl
from qdgap.core.analysis import gp
from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.metrics import rmse_mev

if TYPE_CHECKING:
    from qdgap.core.data.trajectory import Trajectory

FRAME_SETS = ("all", "unlabelled", "held-out")
XTB_CHOICES = ("auto", "yes", "no")
XTB_FIX = "compute it with `qdgap data xtb {data} --frames all`"


@dataclass(frozen=True)
class LooScore:
    """Leave-one-out on the labels: each interior label of the first ``gp.KRIGING_FIT`` predicted from the others.

    Attributes:
        labels: labels scored.
        rmse_mev: the process's RMSE, meV.
        coverage: fraction inside its interval.
        linear_rmse_mev: linear interpolation from the two neighbours, on the same labels, meV.
    """

    labels: int
    rmse_mev: float
    coverage: float
    linear_rmse_mev: float


@dataclass(frozen=True)
class Interpolation:
    """The gap of the chosen frames from the labels (and xTB), and what was measured on the way.

    Attributes:
        frame_index: (F,) int64, frames of the trajectory predicted.
        time_fs: (F,) float64, fs.
        gap_true_ev: (F,) float64 eV, the labels (NaN where unknown).
        mean_ev, sd_ev: (F,) float64 eV, the posterior mean and the predictive sd of the frame's gap.
        lo_ev, hi_ev: (F,) float64 eV, the interval at ``level``.
        in_pool: (F,) bool, the frame's label conditioned the process.
        estimator: ``gp-time`` or ``gp-time-xtb``.
        why_no_xtb: why the xTB gaps were left out ("" when used).
        advice: where, at this label spacing, another estimator measured better ("" when none did).
        pool, stride: this stretch's labels that conditioned the process, and their stride in frames.
        earlier_labels: labels of the earlier stretch that conditioned it too.
        fit: the fitted process.
        level: nominal coverage of the interval.
        loo: leave-one-out on the pool.
        heldout: the process beside the baselines on the labelled frames outside the pool (None without any).
        heldout_coverage: fraction of those frames inside the interval (None without any).
    """

    frame_index: np.ndarray
    time_fs: np.ndarray
    gap_true_ev: np.ndarray
    mean_ev: np.ndarray
    sd_ev: np.ndarray
    lo_ev: np.ndarray
    hi_ev: np.ndarray
    in_pool: np.ndarray
    estimator: str
    why_no_xtb: str
    advice: str
    pool: int
    stride: int
    earlier_labels: int
    fit: gp.GPFit
    level: float
    loo: LooScore | None
    heldout: bl.BaselineReport | None
    heldout_coverage: float | None

    @property
    def frames(self) -> int:
        return len(self.frame_index)


def interpolate_trajectory(
    traj: Trajectory,
    *,
    stride: int = 1,
    frames: str = "all",
    xtb: str = "auto",
    level: float = 0.95,
    earlier: Trajectory | None = None,
    earlier_stride: int = 1,
    name: str = "the trajectory",
    earlier_name: str = "the earlier stretch",
) -> Interpolation:
    """Predict the gap of the chosen frames from the labels of frames 0, ``stride``, ... (and xTB); no I/O.

    Args:
        traj: the trajectory, with labels (and ``xtb_gap_ev`` for the xTB input).
        stride: the pool is the labels of frames 0, stride, 2 stride, ... (``data.splits.labelled_pool``).
        frames: all, unlabelled, or held-out (labelled frames outside the pool).
        xtb: auto (use the xTB gaps when every pool and predicted frame has one), yes (require them), no.
        level: nominal coverage of the interval ``lo_ev``..``hi_ev``.
        earlier: an earlier stretch of the same run (same atoms, same clock, starting before ``traj``): the
            labels of its frames 0, ``earlier_stride``, ... condition the process too (they carry the
            xTB-to-gap relation and the mean into a stretch with few labels of its own).
        name, earlier_name: what to call ``traj`` and ``earlier`` in messages (their paths).

    Raises:
        QdgapError: bad options, too few labels, another dot as ``earlier``, or xTB gaps missing under ``xtb="yes"``.
    """
    from scipy.stats import norm

    from qdgap.core.data.splits import labelled_pool

    if frames not in FRAME_SETS:
        raise QdgapError(f"--frames must be one of {', '.join(FRAME_SETS)}, got {frames!r}")
    if xtb not in XTB_CHOICES:
        raise QdgapError(f"--xtb must be one of {', '.join(XTB_CHOICES)}, got {xtb!r}")
    if not 0.0 < level < 1.0:
        raise QdgapError(f"--level must lie between 0 and 1, got {level}")
    labelled = np.isfinite(traj.gap_ev)
    pool = labelled_pool(traj.gap_ev, stride=stride)
    in_pool = np.zeros(traj.num_frames, bool)
    in_pool[pool] = True
    t, y = traj.time_fs.astype(np.float64), traj.gap_ev.astype(np.float64)
    x_all = None if traj.xtb_gap_ev is None else traj.xtb_gap_ev.astype(np.float64)
    t_pool, y_pool = t[pool], y[pool]
    x_pool = None if x_all is None else x_all[pool]
    if earlier is not None:
        if not np.array_equal(earlier.numbers, traj.numbers):
            from qdgap.core.common.labels import formula

            raise QdgapError(
                f"{earlier_name} holds {formula(earlier.numbers)}, not the {formula(traj.numbers)} of {name} in "
                "the same atom order; --earlier takes an earlier stretch of the same run"
            )
        if earlier.time_fs[0] >= t[0]:
            raise QdgapError(
                f"{earlier_name} starts at {earlier.time_fs[0]:.0f} fs, not before {name} ({t[0]:.0f} fs); "
                "--earlier takes an earlier stretch of the same run on the same clock"
            )
        pool_e = labelled_pool(earlier.gap_ev, stride=earlier_stride)
        pool_e = pool_e[earlier.time_fs[pool_e] < t[0]]  # a frame both hold counts once, as this stretch's
        t_pool = np.concatenate([earlier.time_fs[pool_e].astype(np.float64), t_pool])
        y_pool = np.concatenate([earlier.gap_ev[pool_e].astype(np.float64), y_pool])
        x_e = np.full(len(pool_e), np.nan) if earlier.xtb_gap_ev is None else earlier.xtb_gap_ev[pool_e]
        x_pool = None if x_pool is None else np.concatenate([x_e.astype(np.float64), x_pool])
    if len(t_pool) < 3 or np.ptp(y_pool) == 0:
        raise QdgapError(
            f"{name}: {len(t_pool)} labelled frame(s) in the pool (the labels of every {stride}th frame); the process "
            "needs at least 3 with different gaps (import labels with `qdgap data import --gaps`, or lower --stride)"
        )
    chosen = {
        "all": np.arange(traj.num_frames),
        "unlabelled": np.flatnonzero(~labelled),
        "held-out": np.flatnonzero(labelled & ~in_pool),
    }[frames]
    if chosen.size == 0:
        raise QdgapError(f"{name}: no frame to predict for --frames {frames}")
    if x_pool is None:
        why_no_xtb = "the trajectory has no xTB gaps"
    else:
        missing = int((~np.isfinite(x_pool)).sum() + (~np.isfinite(x_all[chosen])).sum())
        why_no_xtb = f"{missing} of the frames needed have no xTB gap" if missing else ""
    if xtb == "no":
        why_no_xtb = "--xtb no"
    elif xtb == "yes" and why_no_xtb:
        raise QdgapError(f"{name}: {why_no_xtb}; {XTB_FIX.format(data=name)}, or pass --xtb no")
    x_q = None if why_no_xtb else x_all[chosen]
    x_pool = None if why_no_xtb else x_pool
    fit = gp.fit_gp(t_pool, y_pool, x_pool)
    mean, sd = gp.gp_predict(fit, t[chosen], t_pool, y_pool, x_q, x_pool)
    z = float(norm.ppf(0.5 + level / 2))
    estimator = "gp-time" if why_no_xtb else "gp-time-xtb"
    spacing = float(np.median(np.diff(t[pool]))) if len(pool) > 1 else float("inf")

    heldout = coverage = None
    scored = labelled[chosen] & ~in_pool[chosen]
    if scored.any():
        q = chosen[scored]
        # The baselines see this stretch's pool only: what the chemist has of it (the earlier one is another regime).
        heldout = bl.baseline_report(
            t[q], y[q], mean[scored], t[pool], y[pool],
            label_source=f"this stretch's pool ({len(pool)} labels, those of every {stride}th frame)",
            xtb_ev=None if x_all is None else x_all[q], label_xtb_ev=None if x_all is None else x_all[pool],
        )  # fmt: skip
        coverage = float(np.mean(np.abs(mean[scored] - y[q]) <= z * sd[scored]))
    return Interpolation(
        frame_index=chosen.astype(np.int64), time_fs=t[chosen], gap_true_ev=y[chosen], mean_ev=mean, sd_ev=sd,
        lo_ev=mean - z * sd, hi_ev=mean + z * sd, in_pool=in_pool[chosen], estimator=estimator,
        why_no_xtb=why_no_xtb, advice=advice(estimator, spacing), pool=len(pool), stride=stride,
        earlier_labels=len(t_pool) - len(pool), fit=fit, level=level, loo=_loo(fit, t_pool, y_pool, x_pool, z),
        heldout=heldout, heldout_coverage=coverage,
    )  # fmt: skip


def interpolate_to_file(
    data: Path,
    output: Path,
    *,
    stride: int = 1,
    frames: str = "all",
    xtb: str = "auto",
    level: float = 0.95,
    earlier: Path | None = None,
    earlier_stride: int = 1,
    force: bool = False,
) -> tuple[Interpolation, Path]:
    """``interpolate_trajectory`` of the file ``data`` (and ``earlier``), written to ``output`` and its CSV twin.

    Args:
        data, earlier: trajectory files (``earlier``: an earlier stretch of the same run, or None).
        output: the ``qdgap.interpolation`` HDF5 file (schema.py); its CSV twin beside it.
        stride, frames, xtb, level, earlier_stride: as ``interpolate_trajectory``.
        force: replace an existing output.

    Returns:
        the interpolation, and the CSV's path.

    Raises:
        QdgapError: an existing or unwritable output, an unreadable input, or what ``interpolate_trajectory`` raises.
    """
    from qdgap.core.common.files import check_output_file
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.results import write_csv, write_results

    output = Path(output)
    csv = output.with_suffix(".csv")
    for path in (output, csv):
        if path.exists() and not force:
            raise QdgapError(f"{path}: output exists; choose another name or pass --force")
        check_output_file(path)  # a folder, or an unwritable place: refused before the work, not after
    traj = read_trajectory(data)
    before = None if earlier is None else read_trajectory(earlier)
    o = interpolate_trajectory(
        traj, stride=stride, frames=frames, xtb=xtb, level=level, earlier=before, earlier_stride=earlier_stride,
        name=str(data), earlier_name=str(earlier),
    )  # fmt: skip
    datasets = {
        schema.FRAME_INDEX: o.frame_index,
        schema.TIME_FS: o.time_fs,
        schema.GAP_TRUE_EV: o.gap_true_ev.astype(np.float32),
        schema.GAP_MEAN_EV: o.mean_ev.astype(np.float32),
        schema.GAP_SD_EV: o.sd_ev.astype(np.float32),
        schema.GAP_LO_EV: o.lo_ev.astype(np.float32),
        schema.GAP_HI_EV: o.hi_ev.astype(np.float32),
        schema.IN_POOL: o.in_pool,
    }
    attrs = {
        schema.ATTR_INPUT_SHA256: traj.sha256,
        schema.ATTR_INPUT_PATH: str(Path(data).resolve()),
        schema.ATTR_ESTIMATOR: o.estimator,
        schema.ATTR_POOL_STRIDE: int(stride),
        "earlier_path": "" if earlier is None else str(Path(earlier).resolve()),
        "earlier_labels": o.earlier_labels,
        schema.ATTR_INTERVAL_LEVEL: float(level),
        **{f"gp_{k}": float(v) for k, v in o.fit.as_dict().items()},
        **({} if o.loo is None else {"loo_rmse_mev": o.loo.rmse_mev, "loo_linear_rmse_mev": o.loo.linear_rmse_mev}),
        **({} if o.heldout is None else o.heldout.attrs("heldout")),
    }
    # The CSV first and the HDF5 file last: gaps.h5 there means both are whole; a failed write leaves neither.
    write_csv(csv, {k: np.asarray(v) for k, v in datasets.items()}, force=True)
    try:
        write_results(
            output, datasets, fmt=schema.INTERPOLATION_FORMAT, version=schema.INTERPOLATION_VERSION, attrs=attrs,
            force=force,
        )  # fmt: skip
    except BaseException:
        csv.unlink(missing_ok=True)
        raise
    return o, csv


def _loo(fit: gp.GPFit, t: np.ndarray, y: np.ndarray, x: np.ndarray | None, z: float) -> LooScore | None:
    """Leave-one-out of the process and of linear interpolation on the same interior labels."""
    n = min(len(t), gp.KRIGING_FIT)
    if n < 3:
        return None
    mean, sd = gp.gp_loo(fit, t, y, x)
    inner = slice(1, n - 1)  # the ends have one neighbour: interpolation cannot leave them out
    w = (t[1 : n - 1] - t[: n - 2]) / (t[2:n] - t[: n - 2])
    linear = (1 - w) * y[: n - 2] + w * y[2:n]
    err = mean[inner] - y[inner]
    return LooScore(
        labels=n - 2,
        rmse_mev=rmse_mev(err),
        coverage=float(np.mean(np.abs(err) <= z * sd[inner])),
        linear_rmse_mev=rmse_mev(linear - y[1 : n - 1]),
    )


# Where another estimator of the same labels measured better than this process, on the Cl dot and the OH
# dot (bench/results_interpolate.md): time alone loses to linear interpolation from 50 fs label spacing on
# both (Cl 39.7 against 32.6 meV at 50 fs; OH 132.0 against 85.5 at 100 fs); with xTB, the xTB-corrected
# interpolation wins at 200 fs (82.0 against 93.6).
TIME_ALONE_UP_TO_FS = 30.0
WITH_XTB_UP_TO_FS = 150.0


def advice(estimator: str, spacing_fs: float) -> str:
    """A one-line warning when the labels are spaced where this process measured worse than a simpler
    estimator of the same labels; "" otherwise."""
    if estimator == "gp-time" and spacing_fs > TIME_ALONE_UP_TO_FS:
        return (
            f"labels {spacing_fs:.0f} fs apart: without xTB gaps this process lost to linear interpolation from 50 fs "
            "spacing on both dots measured (bench/results_interpolate.md); compute them with `qdgap data xtb`"
        )
    if estimator == "gp-time-xtb" and spacing_fs > WITH_XTB_UP_TO_FS:
        return (
            f"labels {spacing_fs:.0f} fs apart: at 200 fs the xTB-corrected interpolation that `qdgap predict` prints "
            "measured better than this process (82.0 against 93.6 meV, bench/results_interpolate.md)"
        )
    return ""
