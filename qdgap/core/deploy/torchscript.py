"""TorchScript artifacts: ``model.ts`` written with its metadata, and loaded back behind the common call.

The only module that calls ``torch.jit``. The metadata (graph cutoffs in Å,
feature set, preset, seed, composition, qdgap version) is JSON in an extra
file inside ``model.ts`` (``META_NAME``), so the artifact needs only torch to
load and run (no qdgap, no alignn).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output, sha256_file, write_image

META_NAME = "qdgap.json"  # the extra file inside model.ts; the metadata_props key of model.onnx


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-run artifact: call ``module(*graph_batch)`` for (B,) gaps in eV."""

    module: torch.jit.ScriptModule
    meta: dict[str, Any]
    path: Path


def export_torchscript(model: torch.nn.Module, path: str | Path, *, meta: dict[str, Any]) -> str:
    """Script ``model`` and save it, with ``meta``, to ``path`` atomically; return the file's sha256.

    The saved module needs only torch to load and run (no qdgap, no alignn). Saved to a buffer first,
    as ``checkpoint.write_torch_file`` does, so the zip's inner folder is ``archive`` rather than the
    temporary file's random name: the same model gives the same bytes and sha256.
    """
    scripted = torch.jit.script(model.cpu().eval())
    image = io.BytesIO()
    torch.jit.save(scripted, image, _extra_files={META_NAME: json.dumps(meta, sort_keys=True)})
    with atomic_output(path, force=True) as tmp:
        write_image(tmp, image)
    return hashlib.sha256(image.getvalue()).hexdigest()


def load_torchscript(path: str | Path, *, device: str | torch.device = "cpu", sha256: str | None = None) -> LoadedModel:
    """Load a ``model.ts``, checking its sha256 first when one is given.

    Raises:
        QdgapError: the file is missing, altered (sha256 differs), or not a qdgap TorchScript model.
    """
    path = Path(path)
    read_checked(path, sha256)
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


class TorchScriptModel:
    """``model.ts`` behind the common call signature (see ``load_model``)."""

    backend = "torchscript"

    def __init__(self, loaded: LoadedModel):
        self.module = loaded.module
        self.meta = loaded.meta
        self.path = loaded.path
        if hasattr(loaded.module, "embed") and hasattr(loaded.module, "propagate"):  # FNA's shared-embedding path
            self.embed = loaded.module.embed
            self.propagate = loaded.module.propagate

    def __call__(self, *inputs: Tensor | int | None) -> Tensor:
        """(B,) float32 gaps, eV, on the inputs' device.

        ``inputs``: ``GraphBatch``'s nine fields in order, then optionally the
        three FNA masks (node, edge, angle; None for no mask), as ``GapModel.forward``.
        """
        return self.module(*inputs)


def read_checked(path: Path, sha256: str | None) -> None:
    """Refuse a missing file, or one whose sha256 is not the recorded one."""
    if not path.is_file():
        raise QdgapError(f"{path}: no such model file")
    if sha256 is not None and sha256_file(path) != sha256:
        raise QdgapError(
            f"{path}: the model file changed since it was written (sha256 differs); retrain or re-export it with `qdgap export`"
        )
