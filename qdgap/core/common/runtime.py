"""Where work runs: the torch device a command asks for, resolved once and checked."""

from __future__ import annotations

import torch

from qdgap.core.common.errors import QdgapError


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise QdgapError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QdgapError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return torch.device(device)
