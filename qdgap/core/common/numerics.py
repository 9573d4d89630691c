"""The reproducible CPU mode: settings under which a member trains to the same tensors on any x86-64 CPU.

``QDGAP_REPRODUCIBLE=1`` (or ``qdgap --reproducible``) pins the three things that made torch's float32
results differ between x86 machines (measured in README, Reproducibility):

- ATen's kernels (``ATEN_CPU_CAPABILITY=avx2``): torch picks AVX-512 kernels where the CPU has them and
  AVX2 ones elsewhere, with different summation orders (activations, layer norms, reductions).
- MKL's code path (``MKL_CBWR=COMPATIBLE``, with ``MKL_DYNAMIC=FALSE`` so MKL uses the threads it is
  given): MKL's matrix products otherwise follow the CPU's vendor and instruction set.
- The thread count (``QDGAP_THREADS``, default 1 per member): MKL splits a matrix product and ATen a
  layer norm's backward pass between threads, and each count sums in its own order. Without the mode
  a member gets the usable cores shared out, which differs between machines.

It also fixes Python's string hashing (``PYTHONHASHSEED=0``): TorchScript writes a module's constants
in the order of a Python set, so without it ``model.ts`` holds the same tensors but its code, and so
its sha256, differs from process to process. The seed is read when Python starts, so the CLI restarts
itself once for it (the image sets it from the start).

ATen and MKL read their variables once, when torch is loaded, so they are set in the environment
before anything imports torch (``apply_reproducible_env``, called by the CLI's entry point) and are
inherited by worker processes. This module itself never imports torch at import time.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from pathlib import Path

from qdgap.core.common.errors import QdgapError

REPRODUCIBLE_ENV = "QDGAP_REPRODUCIBLE"  # "1": apply the settings below; "0" or unset: torch's defaults
THREADS_ENV = "QDGAP_THREADS"  # torch threads per member under the mode (default 1)
# The variables the mode sets, read by torch's ATen dispatcher and by MKL when torch is loaded.
REPRODUCIBLE_SETTINGS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    # numpy's and scipy's OpenBLAS picks its kernels by the CPU too (SkylakeX on an AVX-512 CPU, Haswell on
    # an AVX2 one), and the FNA and calibration statistics are float64 numpy: measured, the image (SkylakeX)
    # and a host with OPENBLAS_CORETYPE=Haswell disagreed in the last bits of every FNA interval.
    "OPENBLAS_CORETYPE": "Haswell",
}
# torch.backends.cpu.get_cpu_capability() once ATEN_CPU_CAPABILITY=avx2 took effect.
REPRODUCIBLE_CAPABILITY = "AVX2"
# CPU flags the AVX2 kernels execute; torch does not check them and dies of SIGILL without.
_NEEDED_FLAGS = ("avx2", "fma")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def reproducible_requested(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether ``QDGAP_REPRODUCIBLE`` asks for the mode; a value that is neither yes nor no is an error."""
    env = os.environ if environ is None else environ
    value = env.get(REPRODUCIBLE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise QdgapError(f"{REPRODUCIBLE_ENV}={env[REPRODUCIBLE_ENV]!r}: expected 1 (reproducible mode) or 0")


def reproducible_threads(environ: MutableMapping[str, str] | None = None) -> int:
    """Torch threads per member under the mode: ``QDGAP_THREADS``, default 1."""
    env = os.environ if environ is None else environ
    raw = env.get(THREADS_ENV, "1").strip() or "1"
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise QdgapError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads, 1 or more")
    return threads


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str] | None:
    """The first CPU's feature flags from ``cpuinfo``; None where that file cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def check_cpu(machine: str | None = None, flags: set[str] | None = None) -> None:
    """Refuse the mode on a CPU that cannot run torch's AVX2 kernels (which would die of SIGILL).

    Args:
        machine: ``platform.machine()`` (given in tests).
        flags: the CPU's feature flags (given in tests); read from /proc/cpuinfo when None.
    """
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64"):
        raise QdgapError(
            f"{REPRODUCIBLE_ENV}=1 needs an x86-64 CPU with AVX2 (its settings pin x86 kernels); this is {machine}"
        )
    flags = cpu_flags() if flags is None else flags
    missing = [f for f in _NEEDED_FLAGS if flags is not None and f not in flags]
    if missing:
        raise QdgapError(
            f"{REPRODUCIBLE_ENV}=1 needs a CPU with AVX2 and FMA; this one lacks {', '.join(missing)} "
            f"(unset {REPRODUCIBLE_ENV} to run with torch's defaults)"
        )


def reproducible_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The variables the mode sets: ``REPRODUCIBLE_SETTINGS``, the thread count for OpenMP and MKL,
    and ``PYTHONHASHSEED=0`` for processes started from here."""
    threads = str(reproducible_threads(environ))
    return {**REPRODUCIBLE_SETTINGS, **{name: threads for name in _THREAD_VARS}, "PYTHONHASHSEED": "0"}


def apply_reproducible_env(environ: MutableMapping[str, str] | None = None) -> bool:
    """Put the mode's variables into ``environ`` (default ``os.environ``) if the mode is asked for.

    Must run before torch is imported (see ``torch_needs_restart``). Sets ``QDGAP_REPRODUCIBLE=1``,
    so worker processes and Slurm jobs started from here inherit the mode. Returns whether it applied.
    """
    env = os.environ if environ is None else environ
    if not reproducible_requested(env):
        return False
    check_cpu()
    env.update(reproducible_env(env))
    env[REPRODUCIBLE_ENV] = "1"
    return True


def torch_needs_restart() -> bool:
    """True when torch was imported before the mode's variables were set, so they do not hold in
    this process (ATen reads ``ATEN_CPU_CAPABILITY`` once, at import)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not reproducible_requested():
        return False
    return torch.backends.cpu.get_cpu_capability() != REPRODUCIBLE_CAPABILITY


def numpy_needs_restart(coretype_before: str | None) -> bool:
    """True when numpy was imported before the mode set ``OPENBLAS_CORETYPE`` (OpenBLAS reads it at load).

    Args:
        coretype_before: ``OPENBLAS_CORETYPE`` as it was before ``apply_reproducible_env``.
    """
    import sys

    return "numpy" in sys.modules and coretype_before != REPRODUCIBLE_SETTINGS["OPENBLAS_CORETYPE"]


def hash_seed_needs_restart() -> bool:
    """True when this Python hashes strings with a random seed (it did not start with ``PYTHONHASHSEED=0``)."""
    import sys

    return bool(sys.flags.hash_randomization)


def numerics_record() -> dict[str, object]:
    """What decides this process's float results on the CPU, for every result file's attrs.

    ``reproducible`` (bool), ``cpu_capability`` (the ATen kernels in use: DEFAULT, AVX2, AVX512),
    ``mkl_cbwr`` (MKL's code path; "" for MKL's default), ``openblas_coretype`` (numpy's BLAS kernels when
    pinned; "" for OpenBLAS's own choice) and ``torch_threads`` (intra-op threads now).
    """
    import torch

    return {
        "reproducible": reproducible_requested(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        "torch_threads": int(torch.get_num_threads()),
    }


def fast_cpu_math() -> None:
    """Flush subnormal floats to zero on this thread.

    Gates and basis functions of far-away centres produce subnormals, and every
    operation that touches one runs an order of magnitude slower on x86. The
    values involved are below 1e-38, far under any tolerance qdgap states.
    """
    import torch  # here, not at the top: this module is read before torch may load (see above)

    torch.set_flush_denormal(True)
