"""Compare two folders of qdgap outputs (the host install's and the image's, scripts/image-test.sh), or two files.

    python scripts/compare_outputs.py HOST INSIDE [--bitwise | --rtol R --atol A]
    python scripts/compare_outputs.py runs/a/run_0/best.pt runs/b/run_0/best.pt --bitwise

Every file under HOST must exist under INSIDE with the same content: arrays (HDF5 datasets, .npz,
tensors in .pt checkpoints and TorchScript models, CSV columns) equal bit for bit with --bitwise,
else within |a - b| <= atol + rtol * |b| (default: float32 rounding); JSON records and HDF5 attrs
equal but for what names a time, a place or the command line (VOLATILE), and without --bitwise but
for the torch build's name (TORCH_BUILD). Tensors are compared, not file bytes: two faithful runs
need not write the same bytes (model.ts's code order varies outside QDGAP_REPRODUCIBLE=1).
stdout/stderr captures (*.out, *.err) and locks are not compared, except
``data.out`` (``qdgap data info --json``). Prints one line per difference, naming the largest
absolute and relative difference of each array; exit 1 if there is any.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

# Keys whose values differ between two faithful runs: when, where, how invoked, and the hash of
# model.ts, whose code lists constants in a hash-seed-dependent order outside QDGAP_REPRODUCIBLE=1
# (its tensors are compared instead).
VOLATILE = {"created", "command", "path", "input_path", "model_sha256", "seconds"}
SKIP_SUFFIXES = {".out", ".err", ".lock"}
SKIP_NAMES = {".lock"}  # a run folder's lock: the pid and host that held it
RTOL, ATOL = 1e-5, 1e-7  # float32 rounding, when the two torch builds differ
# Provenance that names the torch build: different by construction when the builds differ (no --bitwise).
TORCH_BUILD = {"torch_version", "torch_variant"}


class Diff:
    def __init__(self, bitwise: bool, *, rtol: float = RTOL, atol: float = ATOL) -> None:
        self.bitwise = bitwise
        self.rtol, self.atol = rtol, atol
        self.lines: list[str] = []

    def arrays(self, where: str, a: object, b: object) -> None:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            self.lines.append(f"{where}: shape/dtype {a.shape} {a.dtype} != {b.shape} {b.dtype}")
        elif self.bitwise or a.dtype.kind not in "fc":
            same = a.tobytes() == b.tobytes() if a.dtype.kind != "O" else bool(np.all(a == b))
            if not same:
                self.lines.append(f"{where}: arrays differ{' (bitwise)' if a.dtype.kind in 'fc' else ''}")
        elif not np.allclose(a, b, rtol=self.rtol, atol=self.atol, equal_nan=True):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            gap = np.abs(a64 - b64)
            worst = float(np.nanmax(gap))
            relative = float(np.nanmax(gap / np.maximum(np.abs(b64), np.finfo(np.float64).tiny)))
            self.lines.append(f"{where}: arrays differ by up to {worst:.3g} (relative {relative:.3g})")

    def values(self, where: str, a: object, b: object) -> None:
        """Recursive comparison of JSON-like values, tensors and arrays."""
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if key in VOLATILE or (not self.bitwise and key in TORCH_BUILD):
                    continue
                if key not in a or key not in b:
                    self.lines.append(f"{where}.{key}: only in {'host' if key in a else 'image'}")
                else:
                    self.values(f"{where}.{key}", a[key], b[key])
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in [*a, *b]) and a:
                self.arrays(where, a, b)
            else:
                for i, (x, y) in enumerate(zip(a, b, strict=True)):
                    self.values(f"{where}[{i}]", x, y)
        elif _is_array(a) and _is_array(b):
            self.arrays(where, _numpy(a), _numpy(b))
        elif isinstance(a, float) and isinstance(b, float):
            self.arrays(where, np.float64(a), np.float64(b))
        elif a != b:
            self.lines.append(f"{where}: {a!r} != {b!r}")


def _is_array(x: object) -> bool:
    return isinstance(x, np.ndarray | np.generic) or type(x).__name__ == "Tensor"


def _numpy(x: object) -> np.ndarray:
    return x.detach().cpu().numpy() if type(x).__name__ == "Tensor" else np.asarray(x)


def _h5(path: Path) -> dict:
    import h5py

    out: dict = {}
    with h5py.File(path, "r") as h5:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                if obj.dtype.kind == "O":
                    value = np.array([v.decode() if isinstance(v, bytes) else v for v in np.ravel(value)], dtype=object)
                out[f"/{name}"] = value
            out[f"/{name}@attrs"] = {k: _attr(v) for k, v in obj.attrs.items()}

        out["/@attrs"] = {k: _attr(v) for k, v in h5.attrs.items()}
        h5.visititems(visit)
    return out


def _attr(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _csv(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    columns: dict = {}
    for i, name in enumerate(rows[0]):
        cells = [r[i] if i < len(r) else "" for r in rows[1:]]
        try:
            columns[name] = np.array([float(c) if c else np.nan for c in cells])
        except ValueError:
            columns[name] = cells
    return columns


def _load(path: Path) -> object:
    suffix = path.suffix
    if suffix == ".h5":
        return _h5(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    if suffix == ".csv":
        return _csv(path)
    if suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    if suffix == ".ts":
        import torch

        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    if suffix == ".json" or path.name in ("DONE", "data.out"):
        return json.loads(path.read_text())
    return path.read_bytes()


def compare(host: Path, inside: Path, *, bitwise: bool, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """One line per difference between the files under ``host`` and those under ``inside`` (or the two files)."""
    diff = Diff(bitwise, rtol=rtol, atol=atol)
    how = "bitwise" if bitwise else f"floats to rtol {rtol:g}, atol {atol:g}"
    if host.is_file() or inside.is_file():
        if not (host.is_file() and inside.is_file()):
            return [f"{host if not host.is_file() else inside}: not a file, while the other is"]
        diff.values(host.name, _load(host), _load(inside))
        print(f"compared 2 files ({how})")
        return diff.lines
    files = sorted(p for p in host.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(host)
        if (path.suffix in SKIP_SUFFIXES or path.name in SKIP_NAMES) and path.name != "data.out":
            continue
        other = inside / rel
        if not other.is_file():
            diff.lines.append(f"{rel}: missing in the image's output")
            continue
        diff.values(str(rel), _load(path), _load(other))
    for path in sorted(p for p in inside.rglob("*") if p.is_file()):
        rel = path.relative_to(inside)
        if path.suffix not in SKIP_SUFFIXES and path.name not in SKIP_NAMES and not (host / rel).exists():
            diff.lines.append(f"{rel}: written only inside the image")
    print(f"compared {len(files)} files ({how})")
    return diff.lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", type=Path)
    parser.add_argument("inside", type=Path)
    parser.add_argument("--bitwise", action="store_true", help="arrays must be equal bit for bit")
    parser.add_argument(
        "--rtol", type=float, default=RTOL, help=f"relative tolerance of float arrays (default {RTOL:g})"
    )
    parser.add_argument(
        "--atol", type=float, default=ATOL, help=f"absolute tolerance of float arrays (default {ATOL:g})"
    )
    args = parser.parse_args(argv)
    if args.rtol < 0 or args.atol < 0:
        parser.error("--rtol and --atol must be 0 or more")
    if args.bitwise and (args.rtol != RTOL or args.atol != ATOL):
        parser.error("--bitwise compares bits; it takes no --rtol or --atol")
    for path in (args.host, args.inside):
        if not path.exists():
            parser.error(f"{path}: no such file or folder")
    lines = compare(args.host, args.inside, bitwise=args.bitwise, rtol=args.rtol, atol=args.atol)
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
