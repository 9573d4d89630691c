"""Deployment of a run folder: export its ``best.pt`` as TorchScript or ONNX, and the one loader for both.

Artifacts of a run folder, and how their integrity is checked:

* ``model.ts``: written by training; its sha256 is ``model_sha256`` in ``DONE``.
* ``model.onnx``: written by ``qdgap export --format onnx`` or on first use
  with ``--backend onnxruntime``; its sha256, and the ``model_sha256`` of the
  weights it was exported from, are in ``model.onnx.json`` beside it. A stale
  one (the member re-exported since) is exported again; an altered one is refused.

``load_model(member, backend=...)`` returns the same callable for either back
end: ``model(*graph_batch, node_mask, edge_mask, angle_mask)`` (masks optional, None for none)
gives (B,) gaps in eV as a torch tensor on the member's device. The formats
themselves live in ``deploy.torchscript`` and ``deploy.onnx``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import exclusive_lock, provenance
from qdgap.core.config import RunConfig
from qdgap.core.deploy.checkpoint import load_weights, model_meta
from qdgap.core.deploy.onnx import MODEL_ONNX, ONNX_OPSET, OnnxModel, export_onnx, load_onnx, resolve_exporter
from qdgap.core.deploy.torchscript import TorchScriptModel, export_torchscript, load_torchscript
from qdgap.core.store import runs as rf

log = logging.getLogger(__name__)

ONNX_RECORD = "model.onnx.json"  # beside model.onnx: its sha256 and the model.ts it was exported from
BACKENDS = ("torchscript", "onnxruntime")
DEFAULT_BACKEND = "torchscript"  # what predict and fna use unless told; set from bench/ results
FORMATS = ("torchscript", "onnx")


@dataclass(frozen=True)
class ExportResult:
    """One written artifact."""

    path: Path
    sha256: str
    format: str  # torchscript or onnx
    recorded: bool  # its sha256 was recorded in the run folder (DONE or model.onnx.json)


def check_backend(backend: str | None) -> str:
    """The back end to use (``DEFAULT_BACKEND`` for None); refuse an unknown one, or onnxruntime
    where it is not installed, before any heavy work.

    Raises:
        QdgapError: one line saying what to do.
    """
    backend = DEFAULT_BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise QdgapError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        raise QdgapError("--backend onnxruntime needs onnxruntime; install the onnx extra: pip install 'qdgap[onnx]'")
    return backend


def load_model(
    member: Any, *, backend: str | None = None, device: str | torch.device = "cpu"
) -> TorchScriptModel | OnnxModel:
    """The member's model, ready to call as ``model(*graph_batch, node_mask, edge_mask, angle_mask)`` (masks optional, None for none).

    ``torchscript`` loads ``model.ts`` (sha256 from ``DONE``). ``onnxruntime``
    loads ``model.onnx`` (sha256 from ``model.onnx.json``), exporting it from
    ``best.pt`` first when it is missing or was exported from other weights
    than the member's ``model.ts``; the export is kept in the run folder.

    Args:
        member: a ``runs.Member``.
        backend: one of ``BACKENDS``; None for ``DEFAULT_BACKEND``.
        device: torch device of the inputs and outputs.

    Raises:
        QdgapError: unknown back end, onnxruntime missing, an artifact missing or altered.
    """
    backend = check_backend(backend)
    if backend == "torchscript":
        loaded = load_torchscript(member.model_ts, device=device, sha256=member.model_sha256 or None)
        _check_meta(member, loaded.meta, loaded.path)
        return TorchScriptModel(loaded)
    run = Path(member.path)
    path = run / MODEL_ONNX
    record = _onnx_record(run)
    if record is None or record.get("source_model_sha256") != member.model_sha256:
        if path.exists() and record is None:
            raise QdgapError(
                f"{path}: no recorded sha256 ({ONNX_RECORD} missing); re-export it with `qdgap export {run} --format onnx`"
            )
        if not os.access(run, os.W_OK):
            raise QdgapError(
                f"{run}: cannot export model.onnx there (the folder is not writable); run `qdgap export {run} "
                "--format onnx` where the folder is writable, or use --backend torchscript"
            )
        with exclusive_lock(run / f".{MODEL_ONNX}.lock", what=f"{run}'s ONNX export", wait=True):
            record = _onnx_record(run)  # another process may have exported it meanwhile
            if record is None or record.get("source_model_sha256") != member.model_sha256:
                what = "missing" if record is None else "exported from other weights than model.ts"
                log.info("%s: %s; exporting it from %s", path, what, run / "best.pt")
                export_run(run, fmt="onnx", locked=True)
                record = _onnx_record(run)
    assert record is not None
    model = load_onnx(path, device=device, sha256=str(record.get("sha256", "")) or "missing")
    _check_meta(member, model.meta, path)
    return model


def _check_meta(member: Any, meta: dict[str, Any], path: Path) -> None:
    """Refuse an artifact made for another composition, model or graph than its run folder's
    ``config.json`` records (copied in from another run, with its sha256)."""
    from qdgap.core.common.labels import formula

    record = getattr(member, "record", None) or {}
    want, got = (record.get("data") or {}).get("numbers"), meta.get("numbers")
    if want is not None and got is not None and list(got) != list(want):
        raise QdgapError(
            f"{path}: made for {formula(np.asarray(got))} ({len(got)} atoms), but its run folder records "
            f"{formula(np.asarray(want))} ({len(want)} atoms); the file belongs to another run"
        )
    for key, what in (("model", "model settings (feature sizes, layers)"), ("graph", "graph cutoffs")):
        if key in meta and key in record and meta[key] != record[key]:
            raise QdgapError(
                f"{path}: its {what} differ from {Path(member.path) / 'config.json'}; the file belongs to another run"
            )


def export_run(
    run: str | Path, *, fmt: str, output: str | Path | None = None, exporter: str = "auto", locked: bool = False
) -> ExportResult:
    """Export a finished member's ``best.pt`` as TorchScript or ONNX.

    Written into the run folder (``model.ts``, sha256 into ``DONE``;
    ``model.onnx``, sha256 into ``model.onnx.json``) unless ``output`` names
    another file, in which case nothing in the run folder changes.

    Raises:
        QdgapError: not a finished member (no ``DONE``), ``best.pt`` missing or not
            fitting ``config.json``, unknown format, or the onnx extra missing.
    """
    run = Path(run)
    if fmt not in FORMATS:
        raise QdgapError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not run.is_dir():
        raise QdgapError(f"{run}: no such run folder")
    if not (run / rf.DONE).exists():
        raise QdgapError(f"{run}: member not finished (no DONE marker); finish it with `qdgap train` before exporting")
    if not (run / rf.BEST_PT).is_file():
        raise QdgapError(f"{run / rf.BEST_PT}: missing; the member's weights are gone, retrain it")
    if fmt == "onnx":
        resolve_exporter(exporter)  # fail on a missing extra before loading anything
    done = rf.read_json(run / rf.DONE)
    record = rf.read_json(run / rf.CONFIG_JSON)
    model, meta = _model_from_run(run, record)
    default = run / (rf.MODEL_TS if fmt == "torchscript" else MODEL_ONNX)
    target = Path(output) if output is not None else default
    in_place = target.resolve() == default.resolve()
    lock = run / f".{default.name}.lock"
    with (
        contextlib.nullcontext() if locked or not in_place else exclusive_lock(lock, what=f"{run}'s export", wait=True)
    ):
        if fmt == "torchscript":
            digest = export_torchscript(model, target, meta=meta)
            if in_place and done.get("model_sha256") != digest:
                rf.write_json(run / rf.DONE, {**done, "model_sha256": digest, "model_exported": provenance()})
        else:
            source = str(done.get("model_sha256", ""))
            digest = export_onnx(model, target, meta={**meta, "source_model_sha256": source}, exporter=exporter)
            if in_place:
                import onnx

                rf.write_json(
                    run / ONNX_RECORD,
                    {
                        "sha256": digest,
                        "source_model_sha256": source,
                        "opset": ONNX_OPSET,
                        "exporter": resolve_exporter(exporter),
                        "torch_version": str(torch.__version__),
                        "onnx_version": onnx.__version__,
                        **provenance(),
                    },
                )
    return ExportResult(path=target, sha256=digest, format=fmt, recorded=in_place)


def _model_from_run(run: Path, record: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The member's ``GapModel`` with its ``best.pt`` weights, and the metadata its artifacts carry."""
    try:
        config = RunConfig.from_json(record)
        meta = model_meta(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise QdgapError(f"{run / rf.CONFIG_JSON}: not a qdgap run configuration ({exc})") from exc
    # Imported here: only export needs the eager model (and upstream alignn's layers); loading model.ts does not.
    from qdgap.core.model.network import GapModel

    model = GapModel(config.model)
    state = load_weights(run / rf.BEST_PT)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise QdgapError(
            f"{run / rf.BEST_PT}: weights do not fit the model in {rf.CONFIG_JSON} ({first[:120]})"
        ) from exc
    return model.eval(), meta


def _onnx_record(run: Path) -> dict[str, Any] | None:
    path = run / ONNX_RECORD
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
