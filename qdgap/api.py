"""qdgap from Python: load a trained ensemble, predict band gaps with a calibrated spread, rank atoms by FNA.

The same core calls as ``qdgap predict`` and ``qdgap fna`` (``core/analysis/predict.py``,
``core/analysis/calibration.py``, ``core/analysis/fna.py``), so the numbers are the CLI's; nothing
is written but what the CLI also keeps beside the runs (``calibration.json``, the graph cache).
Every error a user can fix is a ``QdgapError`` with the CLI's one-line message.

    >>> from qdgap import Ensemble
    >>> ens = Ensemble.load("work/demo/runs")
    >>> p = ens.predict(atoms)            # an ase.Atoms, a list of them, or a structure/trajectory file
    >>> p.mean_ev, p.std_calibrated_ev    # (F,) eV
    >>> ens.importance("traj.h5", frames=range(0, 100, 10))   # a pandas DataFrame, most important atom first

Units: gaps in eV, importances and errors in meV, lengths in Å, time in fs. Shapes: M members,
F frames, N atoms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qdgap.core.common.errors import QdgapError

if TYPE_CHECKING:
    import pandas as pd

    from qdgap.core.data.trajectory import Trajectory
    from qdgap.core.store.runs import Member
    from qdgap.core.workflow.interpolate import Interpolation

__all__ = ["Ensemble", "Prediction", "QdgapError", "import_structures", "interpolate", "read_trajectory"]

HDF5_SUFFIXES = (".h5", ".hdf5")  # a qdgap trajectory file; any other path goes through the importers


def read_trajectory(path: str | Path) -> Trajectory:
    """Read a qdgap trajectory file (``qdgap data import`` / ``simulate`` output).

    Returns:
        ``Trajectory``: ``numbers`` (N,) int64, ``positions_ang`` (F, N, 3) float32 Å, ``cell_ang``
        (3, 3) or (F, 3, 3) float64 Å, ``pbc`` (3,) bool, ``time_fs`` (F,) float64 fs, ``gap_ev`` (F,)
        float32 eV (NaN where unlabelled), ``sha256`` of the file.

    Raises:
        QdgapError: the file is missing, not a qdgap trajectory, or breaks its contract.
    """
    from qdgap.core.data.trajectory import read_trajectory as read

    return read(Path(path))


def import_structures(
    *sources: str | Path,
    gaps: str | Path | None = None,
    fmt: str | None = None,
    gap_key: str | None = None,
    gap_column: str | None = None,
    stride: int = 1,
    dt_fs: float = 1.0,
    numbers: tuple[int, int] | None = None,
) -> Trajectory:
    """Read structures and gaps as ``qdgap data import`` does, into memory (nothing written).

    Args:
        sources: extended XYZ, ASE ``.traj``, VASP XDATCAR or vasprun.xml files, folders of ``st<N>.vasp``
            POSCARs, or tar archives of them, concatenated in order.
        gaps: labels CSV (``--gaps``).
        fmt: ASE format name (``--format``), when the file name does not tell.
        gap_key: frame info key of the gap in eV.
        gap_column: CSV column of the gap in eV.
        stride: keep every k-th frame.
        dt_fs: time between consecutive frame numbers, fs.
        numbers: (A, B): only the ``st<N>`` structures with A <= N <= B.

    Returns:
        A validated in-memory ``Trajectory`` (see ``read_trajectory``; ``sha256`` empty).

    Raises:
        QdgapError: with ``qdgap data import``'s message.
    """
    from qdgap.core.data.importers import import_trajectory

    return import_trajectory(
        list(sources), fmt=fmt, gaps_csv=gaps, gap_key=gap_key, gap_column=gap_column, stride=stride,
        dt_fs=dt_fs, numbers_range=numbers,
    )  # fmt: skip


@dataclass(frozen=True)
class Prediction:
    """The ensemble's band gaps on F frames, as ``predictions.h5`` holds them.

    Attributes:
        frame_index: (F,) int64, the frames' indices in the input.
        time_fs: (F,) float64, fs.
        gap_true_ev: (F,) float32, eV, the input's labels; NaN where unknown.
        members_ev: (M, F) float32, eV, each member's prediction.
        seeds: (M,) int64, the members' seeds.
        mean_ev: (F,) float32, eV, ensemble mean.
        std_ev: (F,) float32, eV, population std over the members (the raw spread).
        std_calibrated_ev: (F,) float32, eV, the spread recalibrated on held-out frames (``runs/calibration.json``);
            NaN when the ensemble cannot be calibrated (``uncalibrated`` says why).
        lo_ev: (F,) float32, eV, lower end of the interval at ``level``; NaN when uncalibrated.
        hi_ev: (F,) float32, eV, upper end of that interval; NaN when uncalibrated.
        extrapolating: (F,) bool, calibrated std above what the ensemble shows on its own training
            trajectory (``threshold_std_ev``); all False when uncalibrated.
        level: nominal coverage of ``lo_ev``..``hi_ev``.
        method: ``scale`` or ``conformal``; "" when uncalibrated.
        threshold_std_ev: eV; NaN when uncalibrated.
        uncalibrated: why there is no calibrated spread; "" when there is.
    """

    frame_index: np.ndarray
    time_fs: np.ndarray
    gap_true_ev: np.ndarray
    members_ev: np.ndarray
    seeds: np.ndarray
    mean_ev: np.ndarray
    std_ev: np.ndarray
    std_calibrated_ev: np.ndarray
    lo_ev: np.ndarray
    hi_ev: np.ndarray
    extrapolating: np.ndarray
    level: float
    method: str
    threshold_std_ev: float
    uncalibrated: str = ""

    def __len__(self) -> int:
        return int(self.mean_ev.shape[0])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per frame, with ``predictions.csv``'s columns (``gap_seed<s>_ev`` per member)."""
        import pandas as pd

        from qdgap.core.common import schema

        columns: dict[str, Any] = {
            schema.FRAME_INDEX: self.frame_index,
            schema.TIME_FS: self.time_fs,
            schema.GAP_TRUE_EV: self.gap_true_ev,
            schema.GAP_MEAN_EV: self.mean_ev,
            schema.GAP_STD_EV: self.std_ev,
            schema.GAP_STD_CALIBRATED_EV: self.std_calibrated_ev,
            schema.GAP_LO_EV: self.lo_ev,
            schema.GAP_HI_EV: self.hi_ev,
            schema.EXTRAPOLATING: self.extrapolating,
        }
        columns.update({f"gap_seed{s}_ev": self.members_ev[i] for i, s in enumerate(self.seeds)})
        return pd.DataFrame(columns)


class Ensemble:
    """A trained ensemble: the finished members of a runs folder, each ``model.ts`` checked against its sha256.

    Make one with ``Ensemble.load``. Inference runs the exported TorchScript models.
    """

    def __init__(self, runs: Path, members: Sequence[Member], models: Sequence, *, device: str, backend: str):
        self.runs = Path(runs)
        self.members = tuple(members)
        self.device = device
        self.backend = backend
        self._models = tuple(models)  # loaded and checked once: a logger predicting every few MD steps reuses them
        self._cal: tuple | None = None  # (Calibration or None, why not), looked up on the first predict

    @classmethod
    def load(cls, runs: str | Path, *, device: str = "auto", backend: str | None = None) -> Ensemble:
        """Load every finished member of ``runs`` (``runs/run_<seed>/``, or one run folder).

        Args:
            runs: the runs folder ``qdgap ensemble train`` wrote.
            device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
            backend: ``torchscript`` (``model.ts``) or ``onnxruntime``; None for the CLI's default.

        Raises:
            QdgapError: no members, an unfinished member, a ``model.ts`` missing or altered (sha256), or
                made for another run; with the CLI's message.
        """
        from qdgap.core.common.runtime import resolve_device
        from qdgap.core.deploy.export import check_backend, load_model
        from qdgap.core.store.runs import load_members

        name = check_backend(backend)
        dev = str(resolve_device(device))
        members = load_members(Path(runs))
        models = [load_model(m, backend=name, device=dev) for m in members]  # sha256 and metadata checked here
        return cls(Path(runs), members, models, device=dev, backend=name)

    @property
    def seeds(self) -> np.ndarray:
        """(M,) int64, the members' seeds."""
        return np.asarray([m.seed for m in self.members], dtype=np.int64)

    @property
    def numbers(self) -> np.ndarray | None:
        """(N,) int64, atomic numbers trained on, in order; None when unknown (imported from upstream ALIGNN)."""
        return self.members[0].numbers

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        from qdgap.core.common.labels import formula

        what = "unknown composition" if self.numbers is None else formula(self.numbers)
        return f"Ensemble({str(self.runs)!r}: {len(self)} members, {what}, {self.backend} on {self.device})"

    def predict(
        self,
        x: Any,
        *,
        frames: str | Sequence[int] = "all",
        level: float = 0.95,
        interval: str | None = None,
        allow_data_change: bool = False,
    ) -> Prediction:
        """Predict the band gap of every chosen frame with every member, with the calibrated spread.

        Args:
            x: an ``ase.Atoms``, a list of them (frames of one set of atoms), a ``Trajectory``, a qdgap
                trajectory file (``.h5``), or anything ``qdgap data import`` reads (a path or a list of paths).
            frames: ``all``, ``unseen`` (outside every member's labelled pool), ``test``, or (F,) indices.
            level: nominal coverage of ``lo_ev``..``hi_ev``.
            interval: ``scale`` (mean ± normal quantile x calibrated std) or ``conformal``; None for the
                calibration's own.
            allow_data_change: use a trajectory file that changed since the members were trained on it.

        Raises:
            QdgapError: a bad option, unreadable input, or a composition the ensemble was not trained on.
        """
        from qdgap.core.analysis import calibration as cb
        from qdgap.core.analysis import predict as pr

        cb.check_level(level)
        if interval is not None and interval not in cb.METHODS:
            raise QdgapError(f"--interval must be one of {', '.join(cb.METHODS)}, got {interval!r}")
        traj, chosen, _ = self._frames_of(x, frames, allow_data_change)
        cache_dir = pr.runs_cache_dir(self.runs)
        pred = pr.predict_ensemble(
            self.members, traj, chosen, cache_dir=cache_dir, device=self.device, backend=self.backend,
            models=self._models,
        )  # fmt: skip
        cal, why = self._calibration()
        if cal is None:
            nan = np.full(len(chosen), np.nan, np.float32)
            extra = {"std_calibrated_ev": nan, "lo_ev": nan, "hi_ev": nan, "extrapolating": np.zeros(len(chosen), bool)}
            extra.update(level=float(level), method="", threshold_std_ev=float("nan"), uncalibrated=why)
        else:
            # what calibrate_prediction applies for qdgap predict, with the calibration looked up once
            out = cb.apply_calibration(
                cal, pred.gap_mean_ev.astype(np.float64), pred.gap_std_ev.astype(np.float64), level=level,
                method=interval,
            )  # fmt: skip
            extra = {
                "std_calibrated_ev": out.std_ev,
                "lo_ev": out.lo_ev,
                "hi_ev": out.hi_ev,
                "extrapolating": np.asarray(out.extrapolating, bool),
                "level": out.level,
                "method": out.method,
                "threshold_std_ev": float(out.threshold_std_ev),
            }
        return Prediction(
            frame_index=pred.frame_index,
            time_fs=pred.time_fs,
            gap_true_ev=pred.gap_true_ev,
            members_ev=pred.gap_pred_ev,
            seeds=pred.seeds,
            mean_ev=pred.gap_mean_ev,
            std_ev=pred.gap_std_ev,
            **extra,
        )

    def _calibration(self):
        """(``calibration.Calibration``, "") or (None, why not): ``calibration_for`` as ``qdgap predict`` calls it,
        once per ``Ensemble`` (it may fit and store ``runs/calibration.json`` on first use), not once per call."""
        if self._cal is None:
            from qdgap.core.analysis import calibration as cb
            from qdgap.core.analysis import predict as pr

            self._cal = cb.calibration_for(
                self.runs, self.members, cache_dir=pr.runs_cache_dir(self.runs), device=self.device,
                backend=self.backend,
            )  # fmt: skip
        return self._cal

    def importance(
        self,
        x: Any,
        *,
        mask: str = "full",
        frames: str | Sequence[int] = "all",
        every: int = 1,
        chunk: int | None = None,
        score: str = "auto",
        bootstrap: int = 2000,
        top_k: int = 10,
        correction: str = "holm",
        seed: int = 0,
        allow_data_change: bool = False,
    ) -> pd.DataFrame:
        """Feature Nullification Analysis: nullify each atom of each chosen frame, re-predict, rank the atoms.

        Args:
            x: as ``predict``.
            mask: ``full`` (the atom, its bonds and their angles) or ``seed`` (the original script's).
            frames: as ``predict``.
            every: use every k-th of the chosen frames (FNA costs N + 1 forwards per frame).
            chunk: masked copies per forward; None: sized for the device.
            score: ``rmse`` (needs labels), ``shift`` (mean |masked - unmasked|) or ``auto`` (rmse with labels).
            bootstrap: bootstrap replicates (blocks of consecutive frames x members) behind the intervals.
            top_k: ``rank_stability`` is how often an atom is among the top ``top_k``.
            correction: ``holm`` (family-wise error) or ``bh`` (false discovery rate), for testing every atom.
            seed: seed of the bootstrap.
            allow_data_change: as ``predict``.

        Returns:
            One row per atom, most important first, with ``average_rmse_results.csv``'s columns
            (``atom_label``, ``rmse_mev_mean``, ... ``site_class``; meV; the RMSE columns and their
            statistics NaN without labels). With labels, only the labelled frames are used, as the CLI does.

        Raises:
            QdgapError: a bad option, no frames, ``score="rmse"`` without labels, or a wrong composition.
        """
        import pandas as pd

        from qdgap.core.analysis import fna as fn
        from qdgap.core.analysis import predict as pr
        from qdgap.core.workflow import inference as inf

        statistics = inf.FnaStatistics(score=score, bootstrap=bootstrap, top_k=top_k, correction=correction, seed=seed)
        inf.check_fna_options(mask=mask, every=every, chunk=chunk, statistics=statistics)
        traj, chosen, name = self._frames_of(x, frames, allow_data_change)
        chosen = inf.fna_frames(traj, chosen, every=every, score=score, name=name)
        result = fn.run_fna(
            self.members, traj, chosen, mode=mask, chunk=chunk, device=self.device, backend=self.backend,
            cache_dir=pr.runs_cache_dir(self.runs),
        )  # fmt: skip
        stats = fn.fna_statistics(result, score=score, n_boot=bootstrap, top_k=top_k, correction=correction, seed=seed)
        table = pd.DataFrame(fn.importance_table(result, stats))
        table.attrs.update(mask=mask, ranked_by=stats.ranked_by, n_frames=len(chosen), n_members=len(self))
        return table

    def _frames_of(
        self, x: Any, frames: str | Sequence[int], allow_data_change: bool
    ) -> tuple[Trajectory, np.ndarray, str]:
        """The input as a ``Trajectory`` checked against the members, the chosen (F,) int64 frame indices,
        and what to call the input in a message (its path, else its source)."""
        from qdgap.core.analysis import predict as pr
        from qdgap.core.common import schema

        traj, path = as_trajectory(x)
        pr.check_members_fit(self.members, traj, data_path=path, allow_data_change=allow_data_change)
        name = str(path) if path is not None else str(traj.attrs.get(schema.ATTR_SOURCE) or "the input")
        if isinstance(frames, str):
            return traj, pr.select_frames(self.members, traj, frames), name
        chosen = np.asarray(list(frames), dtype=np.int64).reshape(-1)
        bad = chosen[(chosen < 0) | (chosen >= traj.num_frames)]
        if bad.size:
            raise QdgapError(f"frames: index {int(bad[0])} is outside the input's {traj.num_frames} frames")
        if chosen.size == 0:
            raise QdgapError("frames: no frames chosen (the list is empty)")
        return traj, chosen, name


def interpolate(
    data: str | Path | Trajectory,
    *,
    stride: int = 1,
    frames: str = "all",
    xtb: str = "auto",
    level: float = 0.95,
    earlier: str | Path | Trajectory | None = None,
    earlier_stride: int = 1,
) -> Interpolation:
    """The gap of every frame from the trajectory's labels alone, no model, as ``qdgap interpolate`` (nothing written).

    One Gaussian process on time and, where ``qdgap data xtb`` computed it, the frame's xTB gap, fitted to
    the labels of frames 0, ``stride``, 2 ``stride``, ... (docs: Sparse DFT labels).

        >>> g = qdgap.interpolate("traj.h5", stride=100, frames="held-out")
        >>> g.mean_ev, g.lo_ev, g.hi_ev        # (F,) eV
        >>> g.heldout.scores                   # beside linear interpolation and the other baselines

    Args:
        data: a trajectory (``.h5`` path or ``Trajectory``) with labels.
        stride: the labels used are those of frames 0, stride, 2 stride, ...
        frames: all, unlabelled, or held-out (labelled frames outside the pool: scored).
        xtb: auto (use the xTB gaps where every frame needed has one), yes (require them), or no.
        level: nominal coverage of the interval.
        earlier: an earlier stretch of the same run whose labels of frames 0, ``earlier_stride``, ... condition
            the process too.

    Returns:
        ``Interpolation``: ``frame_index``, ``time_fs``, ``gap_true_ev``, ``mean_ev``, ``sd_ev``, ``lo_ev``,
        ``hi_ev``, ``in_pool`` (F,) arrays, the fitted process, leave-one-out and held-out scores.

    Raises:
        QdgapError: too few labels, bad options, xTB gaps missing under ``xtb="yes"``.
    """
    from qdgap.core.workflow.interpolate import interpolate_trajectory

    traj = as_trajectory(data)[0]
    before = None if earlier is None else as_trajectory(earlier)[0]
    return interpolate_trajectory(
        traj, stride=stride, frames=frames, xtb=xtb, level=level, earlier=before, earlier_stride=earlier_stride,
        name=str(data) if isinstance(data, (str, Path)) else "the trajectory",
        earlier_name=str(earlier) if isinstance(earlier, (str, Path)) else "the earlier stretch",
    )  # fmt: skip


def as_trajectory(x: Any) -> tuple[Trajectory, Path | None]:
    """What ``Ensemble.predict`` accepts, as a ``Trajectory``, with the trajectory file it came from (else None).

    Raises:
        QdgapError: an input of another type, or what reading it raises.
    """
    from qdgap.core.data.importers import import_trajectory, trajectory_from_atoms
    from qdgap.core.data.trajectory import Trajectory

    if isinstance(x, Trajectory):
        return x, None
    if isinstance(x, (str, Path)):
        path = Path(x)
        if path.suffix.lower() in HDF5_SUFFIXES:
            return read_trajectory(path), path
        return import_trajectory([path]), None
    if _is_atoms(x):
        return trajectory_from_atoms([x]), None
    if isinstance(x, Sequence) and x and all(_is_atoms(a) for a in x):
        return trajectory_from_atoms(x), None
    if isinstance(x, Sequence) and x and all(isinstance(a, (str, Path)) for a in x):
        return import_trajectory(list(x)), None
    if isinstance(x, Sequence) and not x:
        raise QdgapError("no structures given (empty list)")
    raise QdgapError(
        f"cannot read structures from a {type(x).__name__}: give an ase.Atoms, a list of them, "
        "a trajectory (.h5) or a structure file, folder or archive"
    )


def _is_atoms(x: Any) -> bool:
    try:
        from ase import Atoms
    except ImportError:  # ase is a dependency; without it nothing can be an Atoms
        return False
    return isinstance(x, Atoms)
