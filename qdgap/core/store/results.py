"""The one writer and reader of result files: ``predictions.h5``, ``fna.h5`` and their CSV twins.

Every result file records what produced it (qdgap version, command, the
input's sha256, seeds) in its attrs, and is written through a temporary file
and renamed, with its ``format`` attr set last: a reader never takes a
half-written file for a result.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output, provenance, write_image


def write_results(
    path: str | Path,
    datasets: Mapping[str, np.ndarray | Sequence[str]],
    *,
    fmt: str,
    version: int,
    attrs: Mapping[str, Any] | None = None,
    force: bool = True,
) -> None:
    """Write named arrays to an HDF5 result file, atomically.

    Args:
        path: output file.
        datasets: name -> array; a list of str becomes a UTF-8 string dataset.
        fmt, version: the contract (e.g. ``schema.PREDICTIONS_FORMAT``, 1).
        attrs: provenance beyond what ``provenance()`` adds (input sha256, seeds, ...).
        force: replace an existing file.
    """
    import h5py

    # Built in memory, then written in one go: a full disk is then one plain OSError on the write,
    # not an HDF5 library error from every object it still had to flush.
    image = io.BytesIO()
    with atomic_output(path, force=force) as tmp:
        with h5py.File(image, "w") as h5:
            for name, value in datasets.items():
                if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
                    h5.create_dataset(name, data=np.array(value, dtype=object), dtype=h5py.string_dtype())
                else:
                    arr = np.asarray(value)
                    opts = {"compression": "gzip", "compression_opts": 4} if arr.size > 4096 else {}
                    h5.create_dataset(name, data=arr, **opts)
            for key, value in {**provenance(), **(attrs or {})}.items():
                if value is not None:
                    h5.attrs[key] = value
            h5.attrs[schema.ATTR_VERSION] = version
            h5.attrs[schema.ATTR_FORMAT] = fmt  # last
        write_image(tmp, image)


def read_results(path: str | Path, *, fmt: str, version: int = 1) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read every dataset and attr of a result file of format ``fmt``.

    Raises:
        QdgapError: missing, unreadable, or of another format or version.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise QdgapError(f"{path}: no such results file")
    try:
        with h5py.File(path, "r") as h5:
            found = h5.attrs.get(schema.ATTR_FORMAT)
            found = found.decode() if isinstance(found, bytes) else found
            if found != fmt:
                raise QdgapError(f"{path}: not a {fmt} file (format attr {found!r})")
            if int(h5.attrs.get(schema.ATTR_VERSION, -1)) != version:
                raise QdgapError(f"{path}: {fmt} version {h5.attrs.get(schema.ATTR_VERSION)!r} is not supported")
            data = {}
            for name, ds in h5.items():
                value = ds[()]
                if ds.dtype.kind == "O":
                    value = np.array([v.decode() if isinstance(v, bytes) else v for v in value], dtype=object)
                data[name] = value
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    except OSError as exc:
        raise QdgapError(f"{path}: not a readable HDF5 file (truncated or corrupt?)") from exc
    return data, attrs


def write_csv(path: str | Path, columns: Mapping[str, Sequence[Any]], *, force: bool = True) -> None:
    """Write equal-length columns as a CSV table (header first), atomically."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    with atomic_output(path, force=force) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for i in range(n):
                writer.writerow([_cell(columns[k][i]) for k in names])


def _cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{float(value):.6f}"
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_extxyz(
    path: str | Path,
    numbers: np.ndarray,
    positions_ang: np.ndarray,
    *,
    cell_ang: np.ndarray,
    pbc: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    info: Sequence[Mapping[str, Any]],
    force: bool = True,
) -> None:
    """Write frames as extended XYZ with per-atom arrays (ASE, OVITO and VMD read them), atomically.

    Args:
        numbers: (N,) atomic numbers.
        positions_ang: (F, N, 3) Å.
        cell_ang: (F, 3, 3) Å, rows are cell vectors; zeros (with pbc false) for a cluster.
        pbc: (3,) bool.
        arrays: name -> (F, N) per-atom values, one column each.
        info: F dicts of per-frame scalars.
    """
    from ase import Atoms
    from ase.io import write

    frames = []
    for f in range(len(positions_ang)):
        atoms = Atoms(numbers=numbers, positions=np.asarray(positions_ang[f], np.float64), cell=cell_ang[f], pbc=pbc)
        for name, values in arrays.items():
            atoms.new_array(name, np.asarray(values[f], np.float64))
        atoms.info.update(info[f])
        frames.append(atoms)
    with atomic_output(path, force=force) as tmp:
        write(str(tmp), frames, format="extxyz")
