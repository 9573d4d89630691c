"""Checkpoint files of a member: ``checkpoint.pt`` (resume), ``best.pt`` (weights) and ``model.ts``'s metadata.

Every ``torch.load`` of a user's file goes through ``load_checkpoint``, which
unpickles nothing but tensors and plain containers. Training writes these
files, export and fine-tuning read them; keeping them here lets both depend on
this module instead of on each other.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import torch

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output, write_image


def model_meta(record: dict[str, Any]) -> dict[str, Any]:
    """What ``model.ts`` carries beside its weights."""
    from qdgap import __version__

    return {
        "qdgap_version": __version__,
        "seed": record["seed"],
        "preset": record["preset"],
        "model": record["model"],
        "graph": record["graph"],
        "numbers": record["data"]["numbers"],
        "formula": record["data"]["formula"],
        "data_sha256": record["data"]["sha256"],
        "output": "band gap, eV",
    }


def write_torch_file(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically, the same bytes every time for the same tensors.

    Saved to a file, torch names the zip's inner folder after that file, here the random name of
    the atomic write's temporary file, so two writes of equal tensors differed in their sha256.
    Saved to a buffer, the folder is always ``archive``; the buffer is then written atomically.
    Strings are interned first (``_interned``), so the pickle's layout depends on the contents alone.
    """
    image = io.BytesIO()
    torch.save(_interned(obj), image)
    with atomic_output(path, force=True) as tmp:
        write_image(tmp, image)


def _interned(obj: Any) -> Any:
    """``obj`` with every string in its dicts, lists and tuples replaced by Python's interned copy.

    Pickle writes an object it has seen once and refers back to it after, by identity: equal keys
    that are one object in a straight run (literals, a state dict's names) but separate objects in a
    resumed one (unpickled from the old checkpoint) would give different bytes for equal contents.
    Container types, and a state dict's ``_metadata``, are kept.
    """
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, dict):
        out = type(obj)((_interned(k), _interned(v)) for k, v in obj.items())
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:
            out._metadata = _interned(metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write ``checkpoint.pt`` (model, optimiser and schedule state) atomically and byte-deterministically."""
    write_torch_file(path, state)


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write ``best.pt``: the output layer predicts eV by itself, so upstream ALIGNN's forward on it does too."""
    from qdgap.core.model.network import fold_target_stats

    write_torch_file(path, fold_target_stats(state))


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint file's dict, loaded safely; a damaged or unsafe file is a one-line ``QdgapError``."""
    # weights_only: nothing but tensors and plain containers is ever unpickled from a user's file.
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = (
            f"holds pickled Python objects ({found.group(1)}), not plain tensors"
            if found
            else "holds a pickle qdgap does not load"
        )
        raise QdgapError(
            f"{path}: unsafe checkpoint: {what}; qdgap loads tensors only. Remove it (or retrain the member)"
        ) from None
    except Exception as exc:  # torch raises runtime, zip and EOF errors alike for damaged files
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        raise QdgapError(
            f"{path}: unreadable checkpoint ({(first[0] if first else type(exc).__name__)[:100]}); "
            "remove it to start the member afresh"
        ) from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``best.pt`` as the ``GapModel`` state dict it was saved from, loaded safely (tensors only).

    Its target statistics, folded into the output layer on writing, are
    unfolded again; a ``best.pt`` from before the folding loads as it is.
    """
    from qdgap.core.model.network import unfold_target_stats

    state = load_checkpoint(Path(path), torch.device("cpu"))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QdgapError(f"{path}: not a state dict of tensors")
    try:
        return unfold_target_stats(state)
    except (KeyError, RuntimeError) as exc:  # folded statistics without an output layer to unfold them from
        raise QdgapError(f"{path}: not a qdgap best.pt ({type(exc).__name__}: {exc})") from None
