"""Trajectories: the in-memory ``Trajectory``, its HDF5 file, importers and validation.

This is the only module that reads structure files (through ASE) or the
trajectory HDF5 file. It hands the rest of qdgap plain arrays with unit
suffixes; nothing downstream sees a path to a structure file.

Conventions: lengths in Å, time in fs, gaps in eV, cell vectors as rows.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output, provenance, sha256_file, write_image
from qdgap.core.common.labels import atom_labels, formula

log = logging.getLogger(__name__)

MIN_DISTANCE_ANG = 0.5  # two atoms closer than this mean a broken or mis-read frame
POSITIONS_CHUNK_FRAMES = 64  # frames per HDF5 chunk: one chunk read gives one frame cheaply
STRUCTURE_SUFFIXES = (".vasp", ".poscar", ".contcar")


@dataclass(frozen=True)
class Trajectory:
    """One MD trajectory of a fixed set of atoms, with band gaps where known.

    Attributes:
        numbers: (N,) int64, atomic numbers, the same in every frame.
        positions_ang: (F, N, 3) float32, Å.
        cell_ang: (3, 3) or (F, 3, 3) float64, Å, rows are cell vectors; zeros
            for an isolated cluster.
        pbc: (3,) bool.
        time_fs: (F,) float64, fs, strictly increasing.
        gap_ev: (F,) float32, eV; NaN where a frame has no label.
        sha256: sha256 of the file this was read from ("" if built in memory).
        attrs: provenance attrs read from (or to be written to) the file.
        homo_ev, lumo_ev: (F,) float32, eV, the band edges behind the gap where the labels give
            them (NaN where unknown); None when the file has none. Only a multi-task member
            (``--targets gap,homo,lumo``) reads them.
        xtb_gap_ev: (F,) float32, eV, a cheap gap of each frame (GFN-xTB, ``qdgap data xtb``; NaN
            where not computed), or None; the multi-fidelity estimate reads it.
    """

    numbers: np.ndarray
    positions_ang: np.ndarray
    cell_ang: np.ndarray
    pbc: np.ndarray
    time_fs: np.ndarray
    gap_ev: np.ndarray
    sha256: str = ""
    attrs: dict = field(default_factory=dict, compare=False)
    homo_ev: np.ndarray | None = None
    lumo_ev: np.ndarray | None = None
    xtb_gap_ev: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.positions_ang.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def labelled(self) -> np.ndarray:
        """(F,) bool, frames with a finite gap."""
        return np.isfinite(self.gap_ev)

    @property
    def formula(self) -> str:
        return formula(self.numbers)

    @property
    def atom_labels(self) -> list[str]:
        return atom_labels(self.numbers)

    def frame_cells(self) -> np.ndarray:
        """(F, 3, 3) float64 cell of every frame, Å."""
        if self.cell_ang.ndim == 3:
            return self.cell_ang
        return np.broadcast_to(self.cell_ang, (self.num_frames, 3, 3))

    def select(self, frames: np.ndarray) -> Trajectory:
        """A new trajectory holding only ``frames`` (indices, in the given order)."""
        frames = np.asarray(frames, dtype=np.int64)
        cell = self.cell_ang[frames] if self.cell_ang.ndim == 3 else self.cell_ang
        return Trajectory(
            numbers=self.numbers,
            positions_ang=self.positions_ang[frames],
            cell_ang=cell,
            pbc=self.pbc,
            time_fs=self.time_fs[frames],
            gap_ev=self.gap_ev[frames],
            attrs=dict(self.attrs),
            homo_ev=None if self.homo_ev is None else self.homo_ev[frames],
            lumo_ev=None if self.lumo_ev is None else self.lumo_ev[frames],
            xtb_gap_ev=None if self.xtb_gap_ev is None else self.xtb_gap_ev[frames],
        )


def make_trajectory(
    numbers: np.ndarray,
    positions_ang: np.ndarray,
    *,
    time_fs: np.ndarray,
    gap_ev: np.ndarray | None = None,
    cell_ang: np.ndarray | None = None,
    pbc: Sequence[bool] | np.ndarray = (False, False, False),
    attrs: dict | None = None,
    homo_ev: np.ndarray | None = None,
    lumo_ev: np.ndarray | None = None,
    xtb_gap_ev: np.ndarray | None = None,
) -> Trajectory:
    """Build a ``Trajectory`` with the contract's dtypes; a constant (F, 3, 3) cell is folded to (3, 3)."""
    positions = np.ascontiguousarray(positions_ang, dtype=np.float32)
    num_frames = positions.shape[0] if positions.ndim == 3 else 0
    cell = np.zeros((3, 3)) if cell_ang is None else np.asarray(cell_ang, dtype=np.float64)
    if cell.ndim == 3 and len(cell) and np.all(cell == cell[:1]):
        cell = cell[0].copy()
    gaps = np.full(num_frames, np.nan, np.float32) if gap_ev is None else gap_ev
    return Trajectory(
        numbers=np.asarray(numbers, dtype=np.int64),
        positions_ang=positions,
        cell_ang=cell,
        pbc=np.asarray(pbc, dtype=bool).reshape(3),
        time_fs=np.asarray(time_fs, dtype=np.float64),
        gap_ev=np.asarray(gaps, dtype=np.float32),
        attrs=dict(attrs or {}),
        homo_ev=None if homo_ev is None else np.asarray(homo_ev, dtype=np.float32),
        lumo_ev=None if lumo_ev is None else np.asarray(lumo_ev, dtype=np.float32),
        xtb_gap_ev=None if xtb_gap_ev is None else np.asarray(xtb_gap_ev, dtype=np.float32),
    )


# ==========================================================================
# Validation
# ==========================================================================


def validate_trajectory(traj: Trajectory, *, source: str) -> None:
    """Raise ``QdgapError`` naming ``source`` and the frame if ``traj`` breaks the contract.

    Checks: at least one frame; shapes agree; finite positions, cell and time;
    gaps finite or NaN (never infinite); time strictly increasing; no two atoms
    closer than ``MIN_DISTANCE_ANG`` (minimum image under periodic boundaries).
    """
    f, n = traj.num_frames, traj.num_atoms
    if f == 0 or n == 0:
        raise QdgapError(f"{source}: no frames (empty trajectory)")
    if traj.positions_ang.shape != (f, n, 3):
        raise QdgapError(f"{source}: positions have shape {traj.positions_ang.shape}, expected ({f}, {n}, 3)")
    if traj.time_fs.shape != (f,) or traj.gap_ev.shape != (f,):
        raise QdgapError(f"{source}: time_fs and gap_ev must have one value per frame ({f})")
    if traj.cell_ang.shape not in ((3, 3), (f, 3, 3)):
        raise QdgapError(f"{source}: cell has shape {traj.cell_ang.shape}, expected (3, 3) or ({f}, 3, 3)")
    if np.any(traj.numbers < 1) or np.any(traj.numbers > 118):
        raise QdgapError(f"{source}: atomic numbers must lie in 1..118")
    bad = ~np.isfinite(traj.positions_ang).all(axis=(1, 2))
    if bad.any():
        raise QdgapError(f"{source}: frame {_first(bad)} has NaN or infinite coordinates")
    if not np.isfinite(traj.cell_ang).all():
        raise QdgapError(f"{source}: the cell has NaN or infinite entries")
    if np.isinf(traj.gap_ev).any():
        raise QdgapError(f"{source}: frame {_first(np.isinf(traj.gap_ev))} has an infinite band gap")
    for name, edge in (("HOMO energies", traj.homo_ev), ("LUMO energies", traj.lumo_ev), ("xTB gaps", traj.xtb_gap_ev)):
        if edge is None:
            continue
        if edge.shape != (f,):
            raise QdgapError(f"{source}: the {name} must have one value per frame ({f})")
        if np.isinf(edge).any():
            raise QdgapError(f"{source}: frame {_first(np.isinf(edge))} has an infinite value in the {name}")
    if not np.isfinite(traj.time_fs).all():
        raise QdgapError(f"{source}: time has NaN or infinite values")
    steps = np.diff(traj.time_fs)
    if (steps <= 0).any():
        i = _first(steps <= 0)
        raise QdgapError(
            f"{source}: time is not strictly increasing at frame {i + 1} "
            f"({traj.time_fs[i]:g} fs then {traj.time_fs[i + 1]:g} fs)"
        )
    if traj.pbc.any() and (np.abs(np.linalg.det(traj.frame_cells())) < 1e-6).any():
        raise QdgapError(f"{source}: periodic boundaries are on but the cell has no volume")
    frame, d = _closest_pair(traj)
    if d < MIN_DISTANCE_ANG:
        raise QdgapError(
            f"{source}: frame {frame} has two atoms {d:.3f} Å apart "
            f"(closer than {MIN_DISTANCE_ANG} Å: a broken or mis-read structure)"
        )


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _closest_pair(traj: Trajectory, chunk: int = 256) -> tuple[int, float]:
    """(frame, distance Å) of the closest pair of atoms over the whole trajectory."""
    n = traj.num_atoms
    if n < 2:
        return 0, math.inf
    cells = traj.frame_cells()
    iu = np.triu_indices(n, k=1)
    best_frame, best = 0, math.inf
    for start in range(0, traj.num_frames, chunk):
        pos = traj.positions_ang[start : start + chunk].astype(np.float64)
        diff = pos[:, None, :, :] - pos[:, :, None, :]  # (C, N, N, 3)
        if traj.pbc.any():
            cell = cells[start : start + chunk]
            frac = np.einsum("cijk,ckl->cijl", diff, np.linalg.inv(cell))
            frac -= np.round(frac) * traj.pbc
            diff = np.einsum("cijk,ckl->cijl", frac, cell)
        d = np.sqrt((diff**2).sum(-1))[:, iu[0], iu[1]].min(axis=1)  # (C,)
        i = int(np.argmin(d))
        if d[i] < best:
            best_frame, best = start + i, float(d[i])
    return best_frame, best


# ==========================================================================
# HDF5 trajectory file
# ==========================================================================


EXTRAS_GROUP = "extras"  # optional group of arrays beside the contract (e.g. an MD run's final velocities)


def write_trajectory(
    traj: Trajectory,
    path: str | Path,
    *,
    force: bool = False,
    extras: dict[str, np.ndarray] | None = None,
    **attrs: object,
) -> None:
    """Write ``traj`` to ``path`` as a trajectory HDF5 file (DESIGN.md), atomically.

    Positions are stored in frame order, chunked by ``POSITIONS_CHUNK_FRAMES``
    frames and gzip-compressed, so one frame reads without loading all.

    Args:
        traj: a validated trajectory.
        path: the output file; must not exist unless ``force``.
        extras: arrays stored in the ``extras`` group, outside the contract's
            datasets (read back with ``read_trajectory_extras``).
        attrs: extra provenance attrs (e.g. ``source``) stored on the file.
    """
    import h5py

    # Built in memory, then written in one go: a full disk is then one plain OSError on the write,
    # not an HDF5 library error from every object it still had to flush.
    image = io.BytesIO()
    with atomic_output(path, force=force) as tmp:
        with h5py.File(image, "w") as h5:
            _create_datasets(h5, traj, growable=False)
            if extras:
                group = h5.create_group(EXTRAS_GROUP)
                for key, value in extras.items():
                    group.create_dataset(key, data=np.asarray(value))
            _write_attrs(h5, {**traj.attrs, **provenance(), **attrs}, complete=True)
        write_image(tmp, image)


def read_trajectory_extras(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a finished trajectory file's ``extras`` group ({} when it has none)."""
    path = Path(path)
    with _open_h5(path) as h5:
        _check_contract(h5, path)
        group = h5.get(EXTRAS_GROUP)
        return {} if group is None else {k: group[k][()] for k in group}


def _create_datasets(h5, traj: Trajectory, *, growable: bool) -> None:
    f, n = traj.num_frames, traj.num_atoms
    chunk_frames = max(1, min(POSITIONS_CHUNK_FRAMES, f))
    maxf = None if growable else f
    comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    h5.create_dataset(schema.NUMBERS, data=traj.numbers.astype(np.int64))
    h5.create_dataset(
        schema.POSITIONS,
        data=traj.positions_ang.astype(np.float32),
        maxshape=(maxf, n, 3),
        chunks=(chunk_frames, n, 3),
        **comp,
    )
    h5.create_dataset(schema.CELL, data=traj.cell_ang.astype(np.float64))
    h5.create_dataset(schema.PBC, data=traj.pbc.astype(bool))
    for key, arr, dtype in ((schema.TIME_FS, traj.time_fs, np.float64), (schema.GAP_EV, traj.gap_ev, np.float32)):
        h5.create_dataset(key, data=arr.astype(dtype), maxshape=(maxf,), chunks=(max(1, min(4096, f)),))
    if not growable:  # a simulation being appended to has no band edges to store
        for key, arr in (
            (schema.HOMO_EV, traj.homo_ev),
            (schema.LUMO_EV, traj.lumo_ev),
            (schema.XTB_GAP_EV, traj.xtb_gap_ev),
        ):
            if arr is not None:
                h5.create_dataset(key, data=arr.astype(np.float32))


def _write_attrs(h5, attrs: dict, *, complete: bool) -> None:
    for key, value in attrs.items():
        if value is None or key in (schema.ATTR_FORMAT, schema.ATTR_VERSION):
            continue
        h5.attrs[key] = value
    # The format attr goes on last: a file without it is never taken for a trajectory.
    h5.attrs[schema.ATTR_VERSION] = schema.TRAJECTORY_VERSION
    h5.attrs[schema.ATTR_FORMAT] = schema.TRAJECTORY_FORMAT if complete else PARTIAL_FORMAT


PARTIAL_FORMAT = schema.TRAJECTORY_FORMAT + ".partial"


def _open_h5(path: Path):
    import h5py

    if not path.exists():
        raise QdgapError(f"{path}: no such file")
    if path.is_dir():
        raise QdgapError(f"{path}: is a folder, expected a trajectory .h5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise QdgapError(f"{path}: not a readable HDF5 file (truncated or corrupt?)") from exc


def _check_contract(h5, path: Path, *, allow_partial: bool = False) -> None:
    fmt = h5.attrs.get(schema.ATTR_FORMAT)
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    accepted = (schema.TRAJECTORY_FORMAT, PARTIAL_FORMAT) if allow_partial else (schema.TRAJECTORY_FORMAT,)
    if fmt == PARTIAL_FORMAT and not allow_partial:
        raise QdgapError(
            f"{path}: an unfinished trajectory (a simulation still running or interrupted); finish it first"
        )
    if fmt not in accepted:
        raise QdgapError(
            f"{path}: not a qdgap trajectory (format attr {fmt!r}, expected {schema.TRAJECTORY_FORMAT!r}); "
            "make one with `qdgap data import`"
        )
    version = h5.attrs.get(schema.ATTR_VERSION)
    if version is None or int(version) != schema.TRAJECTORY_VERSION:
        raise QdgapError(
            f"{path}: trajectory version {_attr(version)!r} is not supported (this qdgap reads version {schema.TRAJECTORY_VERSION})"
        )
    missing = [k for k in schema.TRAJECTORY_DATASETS if k not in h5]
    if missing:
        raise QdgapError(f"{path}: missing dataset(s) {', '.join(missing)}")


def read_trajectory(path: str | Path, *, validate: bool = True, allow_partial: bool = False) -> Trajectory:
    """Read a trajectory HDF5 file written by qdgap.

    Args:
        path: the file.
        validate: run ``validate_trajectory`` on what was read.
        allow_partial: accept an unfinished file (a simulation being resumed).

    Raises:
        QdgapError: the file is missing, unreadable, of another format or
            version, lacks a dataset, or breaks the contract.
    """
    path = Path(path)
    h5 = _open_h5(path)
    try:
        with h5:
            _check_contract(h5, path, allow_partial=allow_partial)
            try:
                arrays = {
                    k: h5[k][()] for k in (*schema.TRAJECTORY_DATASETS, *schema.OPTIONAL_FRAME_DATASETS) if k in h5
                }
            except (OSError, KeyError, ValueError) as exc:
                raise QdgapError(f"{path}: a dataset cannot be read (truncated or corrupt file?)") from exc
            attrs = {k: _attr(v) for k, v in h5.attrs.items()}
    except OSError as exc:
        raise QdgapError(f"{path}: not a readable HDF5 file (truncated or corrupt?)") from exc
    traj = Trajectory(
        numbers=np.asarray(arrays[schema.NUMBERS], dtype=np.int64).reshape(-1),
        positions_ang=np.asarray(arrays[schema.POSITIONS], dtype=np.float32),
        cell_ang=np.asarray(arrays[schema.CELL], dtype=np.float64),
        pbc=np.asarray(arrays[schema.PBC], dtype=bool).reshape(-1)[:3],
        time_fs=np.asarray(arrays[schema.TIME_FS], dtype=np.float64).reshape(-1),
        gap_ev=np.asarray(arrays[schema.GAP_EV], dtype=np.float32).reshape(-1),
        sha256=sha256_file(path),
        attrs=attrs,
        **{
            key: np.asarray(arrays[key], dtype=np.float32).reshape(-1)
            for key in schema.OPTIONAL_FRAME_DATASETS
            if key in arrays
        },
    )
    if traj.pbc.shape != (3,):
        raise QdgapError(f"{path}: pbc must hold 3 booleans")
    if validate:
        validate_trajectory(traj, source=str(path))
    return traj


def read_frame(path: str | Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one frame without loading the others.

    Returns:
        (numbers (N,) int64, positions (N, 3) float32 Å) of frame ``index``.
    """
    path = Path(path)
    with _open_h5(path) as h5:
        _check_contract(h5, path)
        num_frames = h5[schema.POSITIONS].shape[0]
        if not -num_frames <= index < num_frames:
            raise QdgapError(f"{path}: frame {index} out of range (the file has {num_frames} frames)")
        return h5[schema.NUMBERS][()].astype(np.int64), h5[schema.POSITIONS][index].astype(np.float32)


def _attr(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class TrajectoryAppender:
    """Grow a trajectory file frame by frame, for a simulation that may be interrupted.

    The file carries the partial format attr until ``finish``; readers refuse
    it, except ``read_trajectory(..., allow_partial=True)``. Extra arrays that
    a resumed run needs (velocities, a wavefunction) live in a ``state`` group.
    Every ``append`` is flushed, so a killed run loses at most the frame being written.
    """

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        self._h5 = h5py.File(self.path, "a")
        _check_contract(self._h5, self.path, allow_partial=True)

    @classmethod
    def create(cls, path: str | Path, first: Trajectory, **attrs: object) -> TrajectoryAppender:
        """Start ``path`` (replacing an unfinished file there) with the frames of ``first``."""
        import h5py

        path = Path(path)
        with h5py.File(path, "w") as h5:
            _create_datasets(h5, first, growable=True)
            _write_attrs(h5, {**first.attrs, **provenance(), **attrs}, complete=False)
        return cls(path)

    @property
    def num_frames(self) -> int:
        return int(self._h5[schema.POSITIONS].shape[0])

    def append(self, positions_ang: np.ndarray, time_fs: float, gap_ev: float, **state: np.ndarray) -> None:
        """Add one frame (positions (N, 3) Å, time fs, gap eV) and replace the stored ``state`` arrays."""
        f = self.num_frames
        for key, value in (
            (schema.POSITIONS, np.asarray(positions_ang, np.float32)[None]),
            (schema.TIME_FS, np.asarray([time_fs], np.float64)),
            (schema.GAP_EV, np.asarray([gap_ev], np.float32)),
        ):
            ds = self._h5[key]
            ds.resize(f + 1, axis=0)
            ds[f] = value[0]
        self.write_state(**state)
        self._h5.flush()

    def write_state(self, **state: np.ndarray) -> None:
        group = self._h5.require_group("state")
        for key, value in state.items():
            if key in group:
                del group[key]
            group.create_dataset(key, data=np.asarray(value))

    def read_state(self) -> dict[str, np.ndarray]:
        group = self._h5.get("state")
        return {} if group is None else {k: group[k][()] for k in group}

    def finish(self) -> None:
        """Drop the resume state and mark the file complete."""
        if "state" in self._h5:
            del self._h5["state"]
        self._h5.attrs[schema.ATTR_FORMAT] = schema.TRAJECTORY_FORMAT
        self._h5.flush()

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> TrajectoryAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ==========================================================================
# Single structures (the model cluster, the input of a simulation)
# ==========================================================================


def write_structure(
    path: str | Path, numbers: np.ndarray, positions_ang: np.ndarray, *, force: bool = False, comment: str = ""
) -> None:
    """Write one isolated structure (numbers (N,), positions (N, 3) Å) as extended XYZ, atomically."""
    from ase import Atoms
    from ase.io import write

    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions_ang, dtype=np.float64))
    if comment:
        atoms.info["comment"] = comment
    with atomic_output(path, force=force) as tmp:
        write(tmp, atoms, format="extxyz")


# ==========================================================================
# Summary
# ==========================================================================


def trajectory_info(traj: Trajectory) -> dict[str, object]:
    """What ``qdgap data info`` shows: composition, frames, time, labels, gap statistics, cell."""
    gaps = traj.gap_ev[traj.labelled].astype(np.float64)
    steps = np.diff(traj.time_fs)
    info: dict[str, object] = {
        "formula": traj.formula,
        "atoms": traj.num_atoms,
        "frames": traj.num_frames,
        "time_start_fs": float(traj.time_fs[0]),
        "time_end_fs": float(traj.time_fs[-1]),
        "time_step_fs": float(np.median(steps)) if len(steps) else None,
        "uniform_step": bool(len(steps) == 0 or np.allclose(steps, steps[0])),
        "labelled_frames": int(traj.labelled.sum()),
        "unlabelled_frames": int((~traj.labelled).sum()),
        "pbc": [bool(x) for x in traj.pbc],
        "cell_ang": np.round(traj.frame_cells()[0], 4).tolist(),
        "sha256": traj.sha256,
    }
    if len(gaps):
        info.update(
            gap_mean_ev=float(gaps.mean()),
            gap_std_ev=float(gaps.std()),
            gap_min_ev=float(gaps.min()),
            gap_max_ev=float(gaps.max()),
        )
    if traj.homo_ev is not None and traj.lumo_ev is not None:
        info["band_edge_frames"] = int((np.isfinite(traj.homo_ev) & np.isfinite(traj.lumo_ev)).sum())
    if traj.xtb_gap_ev is not None:
        info["xtb_gap_frames"] = int(np.isfinite(traj.xtb_gap_ev).sum())
        info["xtb_method"] = str(traj.attrs.get(schema.ATTR_XTB_METHOD, ""))
    return info
