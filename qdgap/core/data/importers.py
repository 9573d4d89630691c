"""Importers: structure files, folders and tar archives of POSCARs, and label CSVs, into a ``Trajectory``.

The only module besides ``data`` that reads structure files (through ASE). It
hands back a validated in-memory ``Trajectory``; writing it is ``data``'s job.
Conventions: lengths in Å, time in fs, gaps in eV.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.data.trajectory import STRUCTURE_SUFFIXES, Trajectory, make_trajectory, validate_trajectory

log = logging.getLogger(__name__)

GAP_KEYS = ("gap", "band_gap", "bandgap")  # info keys tried for the gap, in order


def read_structure(path: str | Path, *, fmt: str | None = None) -> Trajectory:
    """Read one structure (the last frame of a multi-frame file) as a one-frame ``Trajectory`` at t = 0.

    Raises:
        QdgapError: the file is missing, empty, unreadable, or holds a broken structure.
    """
    path = Path(path)
    if not path.exists():
        raise QdgapError(f"{path}: no such file")
    if path.is_dir():
        raise QdgapError(f"{path}: is a folder, expected a structure file (e.g. .xyz)")
    frames = _read_multiframe(path, fmt)
    if not frames.atoms:
        raise QdgapError(f"{path}: no structure in the file")
    atoms = frames.atoms[-1]
    traj = make_trajectory(
        atoms.get_atomic_numbers(),
        atoms.get_positions()[None],
        time_fs=np.zeros(1),
        cell_ang=np.asarray(atoms.get_cell(), dtype=np.float64),
        pbc=atoms.get_pbc(),
        attrs={schema.ATTR_SOURCE: str(path)},
    )
    validate_trajectory(traj, source=str(path))
    return traj


@dataclass(frozen=True)
class _Frames:
    """Structures read from sources, before labels and time are attached."""

    atoms: list  # ase.Atoms, one per frame
    origins: list[str]  # where each frame came from, for error messages
    numbers_in_name: list[int | None]  # st<N> frame number from the file name, if any


def import_trajectory(
    sources: Sequence[str | Path],
    *,
    fmt: str | None = None,
    gaps_csv: str | Path | None = None,
    gap_key: str | None = None,
    gap_column: str | None = None,
    stride: int = 1,
    dt_fs: float = 1.0,
    numbers_range: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Trajectory:
    """Read structures and band gaps into a validated ``Trajectory``.

    Sources, concatenated in the order given:
      * a folder of POSCAR files named like ``st<N>.vasp`` (the original
        workflow's layout): frames ordered by N, time = N * ``dt_fs``; labels
        from ``gaps_csv`` or the folder's ``id_prop.csv``;
      * a tar archive (``.tar``, ``.tar.gz``, ``.tar.xz``, ``.tar.bz2``) of such
        files, as the original study publishes its trajectory: read as a stream,
        never unpacked to disk, and treated like a folder;
      * any multi-frame file ASE reads (extended XYZ, ``.traj``, VASP
        XDATCAR, ``vasprun.xml``...; ``fmt`` forces ASE's format name): frame
        i (0-based) at time i * ``dt_fs``; gaps from each frame's info
        (``gap_key``, else the first of ``GAP_KEYS`` present) or ``gaps_csv``.

    The labels CSV is either headerless ``name,value`` rows (ALIGNN's
    ``id_prop.csv``), a table with a header (gap column ``gap_column`` or one
    named like ``Bandgap (eV)``; first column the frame name), or one value per
    row matched to frames in order. Names match frames by their number (``st12``
    or ``12`` is frame number 12: the 12th frame of a multi-frame file, or
    ``st12.vasp`` in a folder). Frames without a label get NaN.

    Args:
        sources: files or folders.
        stride: keep every ``stride``-th frame after ordering.
        dt_fs: time between consecutive frame numbers, fs.
        numbers_range: (A, B): keep only the ``st<N>`` structures with A <= N <= B
            (folders and archives; files outside it are not even parsed).
        progress: called with the number of structures read, as they are read.

    Raises:
        QdgapError: unreadable or unknown files, mismatched atoms or species
            order, bad labels, or any failure of ``validate_trajectory``.
    """
    if not sources:
        raise QdgapError("no input: give at least one structure file or folder")
    if stride < 1:
        raise QdgapError(f"--stride must be a positive integer, got {stride}")
    if not dt_fs > 0:
        raise QdgapError(f"--dt-fs must be positive, got {dt_fs}")
    if numbers_range is not None and numbers_range[0] > numbers_range[1]:
        raise QdgapError(f"--numbers {numbers_range[0]}-{numbers_range[1]}: the range is empty (A must be <= B)")
    paths = [Path(s) for s in sources]
    atoms: list = []
    origins: list[str] = []
    names: list[int | None] = []
    folder_labels: Path | None = None
    sequential = False
    for path in paths:
        if path.is_dir():
            frames = _read_folder(path, fmt, numbers_range, progress)
            if (path / "id_prop.csv").exists():
                folder_labels = path / "id_prop.csv"
        elif _is_archive(path):
            frames = _read_archive(path, fmt, numbers_range, progress)
        elif path.exists():
            if numbers_range is not None:
                raise QdgapError(
                    f"{path}: --numbers selects st<N> structures of a folder or archive, not frames of a file"
                )
            frames = _read_multiframe(path, fmt)
            sequential = True
        else:
            raise QdgapError(f"{path}: no such file or folder")
        atoms += frames.atoms
        origins += frames.origins
        names += frames.numbers_in_name
    if not atoms:
        if numbers_range is not None:
            raise QdgapError(
                f"{', '.join(map(str, paths))}: no structure has a number in {numbers_range[0]}-{numbers_range[1]} (--numbers)"
            )
        raise QdgapError(f"{', '.join(map(str, paths))}: no structures found (empty input)")
    if not sequential and len(paths) > 1:
        _refuse_repeated_numbers(names, origins)

    if sequential:
        # A multi-frame file numbers its frames 1, 2, ... in reading order, st<N>-style.
        frame_numbers = np.arange(1, len(atoms) + 1, dtype=np.int64)
        time_fs = (frame_numbers - 1) * float(dt_fs)
    else:
        frame_numbers = np.asarray(names, dtype=np.int64)
        time_fs = frame_numbers * float(dt_fs)

    numbers, positions, cells, pbc = _atoms_arrays(atoms, origins)

    labels_path = Path(gaps_csv) if gaps_csv is not None else folder_labels
    edges: dict[str, np.ndarray] = {}
    if labels_path is not None:
        gaps = _labels_for_frames(labels_path, frame_numbers, gap_column=gap_column)
        edges = _band_edges_for_frames(labels_path, frame_numbers)
    else:
        gaps = _gaps_from_info(atoms, gap_key)

    keep = np.arange(0, len(atoms), stride)
    source_desc = ", ".join(str(p) for p in paths)
    traj = make_trajectory(
        numbers,
        positions[keep],
        time_fs=time_fs[keep],
        gap_ev=gaps[keep],
        cell_ang=cells[keep],
        pbc=pbc,
        attrs={schema.ATTR_SOURCE: source_desc},
        **{key: values[keep] for key, values in edges.items()},
    )
    validate_trajectory(traj, source=source_desc)
    return traj


def trajectory_from_atoms(
    atoms: Sequence, *, dt_fs: float = 1.0, gap_key: str | None = None, source: str = "structures"
) -> Trajectory:
    """In-memory ``ase.Atoms`` (a list of frames of one set of atoms) as a validated ``Trajectory``.

    Frame i (0-based) is at time i * ``dt_fs``; its gap is read from its info as ``import_trajectory``
    reads it from a multi-frame file (``gap_key``, else the first of ``GAP_KEYS`` present; NaN if none).

    Raises:
        QdgapError: no structures, frames with different atoms or species order, different
            periodic flags, or any failure of ``validate_trajectory``.
    """
    atoms = list(atoms)
    if not atoms:
        raise QdgapError(f"{source}: no structures given (empty list)")
    if not dt_fs > 0:
        raise QdgapError(f"--dt-fs must be positive, got {dt_fs}")
    origins = [f"{source}[{i}]" for i in range(len(atoms))]
    numbers, positions, cells, pbc = _atoms_arrays(atoms, origins)
    traj = make_trajectory(
        numbers,
        positions,
        time_fs=np.arange(len(atoms), dtype=np.float64) * float(dt_fs),
        gap_ev=_gaps_from_info(atoms, gap_key),
        cell_ang=cells,
        pbc=pbc,
        attrs={schema.ATTR_SOURCE: source},
    )
    validate_trajectory(traj, source=source)
    return traj


def _atoms_arrays(atoms: list, origins: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """numbers (N,) int64, positions (F, N, 3) float32 Å, cells (F, 3, 3) float64 Å, pbc (3,) bool of ``atoms``.

    Raises:
        QdgapError: a frame with other atoms, species order or periodic flags than the first (named by origin).
    """
    numbers = _common_numbers(atoms, origins)
    positions = np.stack([a.get_positions() for a in atoms]).astype(np.float32)
    cells = np.stack([np.asarray(a.get_cell(), dtype=np.float64) for a in atoms])
    pbc = np.asarray(atoms[0].get_pbc(), dtype=bool)
    for a, origin in zip(atoms, origins, strict=True):
        if not np.array_equal(a.get_pbc(), pbc):
            raise QdgapError(f"{origin}: periodic boundary flags differ from the first frame")
    return numbers, positions, cells, pbc


_NUMBER_IN_NAME = re.compile(r"(\d+)(?:\.[A-Za-z]+)?$")


def _frame_number(name: str) -> int | None:
    """12 for ``st12``, ``st12.vasp``, ``POSCAR-12`` or ``12``; None if the name ends in no number."""
    m = _NUMBER_IN_NAME.search(Path(name.strip()).name)
    return int(m.group(1)) if m else None


def _is_structure_name(name: str) -> bool:
    return Path(name).suffix.lower() in STRUCTURE_SUFFIXES or Path(name).name.upper().startswith(("POSCAR", "CONTCAR"))


def _in_range(n: int, numbers_range: tuple[int, int] | None) -> bool:
    return numbers_range is None or numbers_range[0] <= n <= numbers_range[1]


def _refuse_repeated_numbers(numbers: Sequence[int | None], origins: Sequence[str]) -> None:
    seen: dict[int, str] = {}
    for n, origin in zip(numbers, origins, strict=True):
        if n is not None and n in seen:
            raise QdgapError(f"{origin}: frame number {n} also comes from {seen[n]}")
        if n is not None:
            seen[n] = origin


def _numbered(names: Sequence[str], where: str) -> list[tuple[int, str]]:
    """(N, name) for each ``st<N>``-style name, sorted by N; refuses names without a number and repeats."""
    numbered = []
    for name in names:
        n = _frame_number(name)
        if n is None:
            raise QdgapError(f"{name}: cannot order the frames: the file name ends in no frame number (st<N>.vasp)")
        numbered.append((n, name))
    numbered.sort()
    dup = [n for (n, _), (m, _) in zip(numbered, numbered[1:], strict=False) if n == m]
    if dup:
        clash = [Path(p).name for n, p in numbered if n == dup[0]]
        raise QdgapError(f"{where}: two files have frame number {dup[0]} ({', '.join(clash)})")
    return numbered


def _read_poscar(source, origin: str, fmt: str | None):
    from ase.io import read

    try:
        return read(source, format=fmt or "vasp")
    except Exception as exc:  # ASE raises many types for a bad file
        raise QdgapError(f"{origin}: not a readable POSCAR file ({_short(exc)})") from exc


def _read_folder(
    folder: Path,
    fmt: str | None,
    numbers_range: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> _Frames:
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and _is_structure_name(p.name))
    if not files:
        raise QdgapError(f"{folder}: no POSCAR or .vasp files in this folder (empty input)")
    numbered = [(n, p) for n, p in _numbered(files, str(folder)) if _in_range(n, numbers_range)]
    atoms, origins = [], []
    for _n, p in numbered:
        atoms.append(_read_poscar(p, p, fmt))
        origins.append(p)
        if progress is not None:
            progress(1)
    return _Frames(atoms, origins, [n for n, _ in numbered])


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _read_archive(
    path: Path,
    fmt: str | None,
    numbers_range: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> _Frames:
    """The ``st<N>`` POSCAR members of a tar archive, read as one stream (never unpacked to disk).

    Members may sit in any folder inside the archive; directories and hidden
    files (``.DS_Store``, AppleDouble ``._*``) are skipped, and any other member
    must be a POSCAR named with its frame number.
    """
    import lzma
    import tarfile
    import zlib

    read_by_number: dict[int, tuple[object, str]] = {}
    try:
        # "r|*": a forward-only stream, so a 15,001-member .tar.xz is decompressed once, in order.
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                base = Path(member.name).name
                if not member.isfile() or base.startswith("."):
                    continue
                origin = f"{path}:{member.name}"
                if not _is_structure_name(base):
                    raise QdgapError(f"{origin}: not a POSCAR file (expected st<N>.vasp members)")
                n = _frame_number(base)
                if n is None:
                    raise QdgapError(
                        f"{origin}: cannot order the frames: the name ends in no frame number (st<N>.vasp)"
                    )
                if n in read_by_number:
                    raise QdgapError(
                        f"{path}: two members have frame number {n} ({read_by_number[n][1]}, {member.name})"
                    )
                if not _in_range(n, numbers_range):
                    read_by_number[n] = (None, member.name)  # seen (for the repeat check), not parsed
                    continue
                handle = tar.extractfile(member)
                text = handle.read().decode("utf-8", errors="replace") if handle is not None else ""
                read_by_number[n] = (_read_poscar(io.StringIO(text), origin, fmt), member.name)
                if progress is not None:
                    progress(1)
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise QdgapError(f"{path}: damaged or unreadable archive ({_short(exc)})") from exc
    if not read_by_number:
        raise QdgapError(f"{path}: no POSCAR members in this archive (empty input)")
    numbers = sorted(n for n, (a, _) in read_by_number.items() if a is not None)
    return _Frames(
        [read_by_number[n][0] for n in numbers],
        [f"{path}:{read_by_number[n][1]}" for n in numbers],
        numbers,
    )


def _read_multiframe(path: Path, fmt: str | None) -> _Frames:
    from ase.io import read

    if path.stat().st_size == 0:
        raise QdgapError(f"{path}: the file is empty")
    if fmt is None and "XDATCAR" in path.name.upper():
        fmt = "vasp-xdatcar"
    try:
        frames = read(path, index=":", format=fmt)
    except Exception as exc:  # ASE raises many types for unknown or broken files
        from ase.io.formats import UnknownFileTypeError

        unknown = isinstance(exc, UnknownFileTypeError) or "format" in str(exc).lower()
        what = "unknown file format" if unknown else "cannot read it"
        hint = "; name the format with --format (an ASE format name)" if fmt is None else ""
        raise QdgapError(f"{path}: {what} ({_short(exc)}){hint}") from exc
    if not isinstance(frames, list):
        frames = [frames]
    return _Frames(frames, [f"{path} frame {i + 1}" for i in range(len(frames))], [None] * len(frames))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _common_numbers(atoms: list, origins: list[str]) -> np.ndarray:
    from ase.data import chemical_symbols

    ref = atoms[0].get_atomic_numbers()
    for a, origin in zip(atoms, origins, strict=True):
        z = a.get_atomic_numbers()
        if len(z) != len(ref):
            raise QdgapError(f"{origin}: has {len(z)} atoms, the first frame has {len(ref)}")
        if not np.array_equal(z, ref):
            i = int(np.flatnonzero(z != ref)[0])
            raise QdgapError(
                f"{origin}: species order differs from the first frame "
                f"(atom {i + 1} is {chemical_symbols[z[i]]}, expected {chemical_symbols[ref[i]]})"
            )
    return np.asarray(ref, dtype=np.int64)


def _gaps_from_info(atoms: list, gap_key: str | None) -> np.ndarray:
    keys = (gap_key,) if gap_key else GAP_KEYS
    gaps = np.full(len(atoms), np.nan, dtype=np.float32)
    for i, a in enumerate(atoms):
        for key in keys:
            if key in a.info:
                try:
                    gaps[i] = float(a.info[key])
                except (TypeError, ValueError):
                    raise QdgapError(f"frame {i + 1}: the gap {key}={a.info[key]!r} is not a number") from None
                break
    if gap_key and not np.isfinite(gaps).any():
        raise QdgapError(f"no frame has the gap key {gap_key!r} in its info")
    return gaps


_GAP_COLUMN_NAMES = ("bandgap", "band_gap", "band gap", "gap", "gap_ev", "homo-lumo gap")


def read_labels_csv(
    path: str | Path, *, gap_column: str | None = None, what: str = "gap"
) -> tuple[list[int | None], np.ndarray]:
    """Read a labels CSV.

    Args:
        gap_column: the header of the column to read (default: the band-gap column).
        what: what that column holds, for error messages ("gap", "HOMO", ...).

    Returns:
        (frame numbers parsed from the first column, or None for every row of a
        one-column file; the column's values (R,) float64 eV).
    """
    path = Path(path)
    if not path.is_file():
        raise QdgapError(f"{path}: no such labels file")
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QdgapError(f"{path}: not a readable CSV file ({_short(exc)})") from exc
    if not rows:
        raise QdgapError(f"{path}: the labels file is empty")
    header = None
    first = rows[0]
    if not _is_number(first[-1]) and (len(first) == 1 or _frame_number(first[0]) is None):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise QdgapError(f"{path}: the labels file has a header but no rows")
    width = len(header) if header else len(rows[0])
    if header is not None:
        col = _gap_column_index(header, gap_column, path)
    else:
        if gap_column is not None:
            raise QdgapError(f"{path}: --gap-column given but the file has no header row")
        col = width - 1
    ids: list[int | None] = []
    gaps = np.empty(len(rows), dtype=np.float64)
    for r, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            raise QdgapError(f"{path}: row {r} has {len(row)} columns, expected {width}")
        try:
            gaps[len(ids)] = float(row[col])
        except ValueError:
            raise QdgapError(f"{path}: row {r}: the {what} {row[col]!r} is not a number") from None
        if width == 1:
            ids.append(None)
        else:
            n = _frame_number(row[0])
            if n is None:
                raise QdgapError(f"{path}: row {r}: cannot read a frame number from {row[0]!r} (expected st<N> or N)")
            ids.append(n)
    return ids, gaps


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _gap_column_index(header: list[str], gap_column: str | None, path: Path) -> int:
    if gap_column is not None:
        if gap_column in header:
            return header.index(gap_column)
        raise QdgapError(f"{path}: no column {gap_column!r} (columns: {', '.join(header)})")
    bare = _bare_names(header)
    for name in _GAP_COLUMN_NAMES:
        if name in bare[1:]:
            return bare.index(name, 1)
    raise QdgapError(f"{path}: no band-gap column found (columns: {', '.join(header)}); name it with --gap-column")


def _bare_names(header: list[str]) -> list[str]:
    """Column names without their unit and case: "Bandgap (eV)" -> "bandgap"."""
    return [re.sub(r"\s*\(.*\)\s*$", "", h).strip().lower() for h in header]


def _band_edges_for_frames(path: Path, frame_numbers: np.ndarray) -> dict[str, np.ndarray]:
    """``{"homo_ev": (F,), "lumo_ev": (F,)}`` float32 eV from the labels CSV's HOMO and LUMO columns, NaN
    for frames without a row; {} when the file does not have both columns (a plain gap table)."""
    with open(path, newline="") as fh:
        header = next((r for r in csv.reader(fh) if r and any(c.strip() for c in r)), [])
    bare = _bare_names(header)
    if "homo" not in bare[1:] or "lumo" not in bare[1:]:
        return {}
    return {
        key: _labels_for_frames(
            path, frame_numbers, gap_column=header[bare.index(name, 1)].strip(), what=name.upper(), warn=False
        )
        for key, name in ((schema.HOMO_EV, "homo"), (schema.LUMO_EV, "lumo"))
    }


def _labels_for_frames(
    path: Path, frame_numbers: np.ndarray, *, gap_column: str | None, what: str = "gap", warn: bool = True
) -> np.ndarray:
    ids, values = read_labels_csv(path, gap_column=gap_column, what=what)
    num_frames = len(frame_numbers)
    if ids and ids[0] is None:
        if len(values) != num_frames:
            raise QdgapError(
                f"{path}: {len(values)} label rows for {num_frames} frames; a CSV without frame names "
                "needs exactly one row per frame"
            )
        return values.astype(np.float32)
    ids_arr = np.asarray(ids, dtype=np.int64)
    uniq, counts = np.unique(ids_arr, return_counts=True)
    if (counts > 1).any():
        raise QdgapError(f"{path}: frame {uniq[counts > 1][0]} is labelled more than once")
    position = {int(n): i for i, n in enumerate(frame_numbers)}
    gaps = np.full(num_frames, np.nan, dtype=np.float32)
    matched = np.array([n in position for n in ids_arr])
    if not matched.any():
        raise QdgapError(
            f"{path}: no label row matches a frame (rows name frames {ids_arr.min()}..{ids_arr.max()}, "
            f"the structures are frames {frame_numbers.min()}..{frame_numbers.max()})"
        )
    for n, v in zip(ids_arr[matched], values[matched], strict=True):
        gaps[position[int(n)]] = v
    if (~matched).any() and warn:
        extra = ids_arr[~matched]
        log.warning(
            "%s: %d label rows name frames that are not in the input (e.g. %s); they are ignored",
            path,
            len(extra),
            ", ".join(str(n) for n in extra[:3]),
        )
    return gaps
