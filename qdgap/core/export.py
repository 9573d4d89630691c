"""Deployment: TorchScript (and ONNX) artifacts of a trained model, and their one loader.

This is the only module that calls ``torch.jit``, ``torch.export`` or ONNX.
An artifact carries what it needs to be used correctly beside its weights:
graph cutoffs (Å), feature set, preset, seed, the composition it was trained
on and the qdgap version, as a JSON extra file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qdgap.core.errors import QdgapError
from qdgap.core.files import atomic_output

META_NAME = "qdgap.json"  # the extra file inside model.ts


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-run artifact: call ``module(*graph_batch)`` for (B,) gaps in eV."""

    module: torch.jit.ScriptModule
    meta: dict[str, Any]
    path: Path


def export_torchscript(model: torch.nn.Module, path: str | Path, *, meta: dict[str, Any]) -> str:
    """Script ``model`` and save it, with ``meta``, to ``path`` atomically; return the file's sha256.

    The saved module needs only torch to load and run (no qdgap, no alignn).
    """
    scripted = torch.jit.script(model.cpu().eval())
    with atomic_output(path, force=True) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={META_NAME: json.dumps(meta, sort_keys=True)})
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return digest


def load_torchscript(path: str | Path, *, device: str | torch.device = "cpu", sha256: str | None = None) -> LoadedModel:
    """Load a ``model.ts``, checking its sha256 first when one is given.

    Raises:
        QdgapError: the file is missing, altered (sha256 differs), or not a qdgap TorchScript model.
    """
    path = Path(path)
    if not path.is_file():
        raise QdgapError(f"{path}: no such model file")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise QdgapError(f"{path}: the model file changed since it was written (sha256 differs); retrain or re-export it")
    extra = {META_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise QdgapError(f"{path}: not a TorchScript model ({str(exc).splitlines()[0][:120]})") from exc
    try:
        meta = json.loads(extra[META_NAME])
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise QdgapError(f"{path}: a TorchScript model without qdgap metadata; export it with `qdgap export`")
    return LoadedModel(module=module.eval(), meta=meta, path=path)
