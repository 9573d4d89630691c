"""Which qdgap and which torch are running: the ``qdgap --version`` lines and the provenance attrs.

The git commit comes from ``git`` when the package is imported from a checkout, and otherwise
from ``qdgap/_build_info.json``, which ``scripts/install.sh`` writes at install time (the image
builds run it too, with the commit passed in as ``QDGAP_COMMIT``, since they see no ``.git``).
Neither git nor the file has to exist: the commit is then ``"unknown"``.

    python -m qdgap.core.common.buildinfo --write --source DIR   # what scripts/install.sh runs
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # .../qdgap
BUILD_INFO_FILE = PACKAGE_DIR / "_build_info.json"
UNKNOWN = "unknown"
_GIT_TIMEOUT_S = 10.0


def git_commit(source: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit (40 hex, ``-dirty`` appended when tracked files differ), or None.

    None when ``source`` (default: the folder holding the package) is not a git checkout,
    git is not installed, or git fails for any other reason (e.g. a folder owned by someone else).
    """
    root = Path(source) if source is not None else PACKAGE_DIR.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        head = _git(root, "rev-parse", "HEAD")
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    if head is None:
        return None
    return f"{head}-dirty" if dirty == 1 else head


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
    )
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def recorded_build_info() -> dict[str, str]:
    """The contents of ``_build_info.json``; {} when it is missing or unreadable."""
    try:
        info = json.loads(BUILD_INFO_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else {}


@functools.lru_cache(maxsize=1)
def qdgap_commit() -> str:
    """The commit this qdgap was built from: the live checkout first, then the install-time record."""
    return git_commit() or recorded_build_info().get("commit") or UNKNOWN


@functools.lru_cache(maxsize=1)
def torch_info() -> dict[str, object]:
    """torch's version, its variant (``cpu`` or ``cuda <version>``) and whether CUDA can be used now."""
    import torch

    cuda = torch.version.cuda
    return {
        "torch_version": str(torch.__version__),  # a str subclass that h5py cannot store
        "torch_variant": f"cuda {cuda}" if cuda else "cpu",
        "cuda_available": bool(torch.cuda.is_available()),
    }


def build_provenance() -> dict[str, object]:
    """The attrs every result file carries about the software: qdgap's commit, torch's build, and
    the CPU numerics in force (reproducible mode, ATen kernels, MKL path, threads; ``numerics.py``)."""
    from qdgap.core.common.numerics import numerics_record

    return {"qdgap_commit": qdgap_commit(), **torch_info(), **numerics_record()}


def version_lines() -> list[str]:
    """What ``qdgap --version`` prints, one fact a line."""
    from qdgap import __version__

    info = torch_info()
    return [
        f"qdgap {__version__}",
        f"commit {qdgap_commit()}",
        f"torch {info['torch_version']} ({info['torch_variant']})",
        f"cuda available: {'yes' if info['cuda_available'] else 'no'}",
        numerics_line(),
    ]


def numerics_line() -> str:
    """One line on the CPU numerics in force: the reproducible mode and its settings, or torch's defaults."""
    from qdgap.core.common.numerics import numerics_record

    num = numerics_record()
    if num["reproducible"]:
        return (
            f"cpu numerics: reproducible ({num['cpu_capability']} kernels, MKL_CBWR={num['mkl_cbwr']}, "
            f"{num['torch_threads']} thread(s) per member)"
        )
    return f"cpu numerics: torch defaults ({num['cpu_capability']} kernels; QDGAP_REPRODUCIBLE=1 for the reproducible mode)"


def write_build_info(source: str | os.PathLike) -> dict[str, str]:
    """Record the commit of ``source`` beside the installed package (``QDGAP_COMMIT`` wins if set).

    Written through a temporary file and a rename, as ``files.atomic_output`` does; not through it,
    since ``files.provenance`` imports this module.
    """
    commit = os.environ.get("QDGAP_COMMIT") or git_commit(source) or UNKNOWN
    info = {"commit": commit}
    tmp = BUILD_INFO_FILE.with_name(f".{BUILD_INFO_FILE.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, BUILD_INFO_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return info


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qdgap.core.common.buildinfo", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {BUILD_INFO_FILE.name} and print it")
    parser.add_argument("--source", default=str(PACKAGE_DIR.parent), help="the source tree (a git checkout or not)")
    args = parser.parse_args(argv)
    if args.write:
        print(json.dumps(write_build_info(args.source)))
    else:
        print("\n".join(version_lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
