"""Checkpoint files of a member: ``checkpoint.pt`` (resume), ``best.pt`` (weights) and ``model.ts``'s metadata.

Every ``torch.load`` of a user's file goes through ``load_checkpoint``, which
unpickles nothing but tensors and plain containers. Training writes these
files, export and fine-tuning read them; keeping them here lets both depend on
this module instead of on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.files import atomic_output


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


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write ``checkpoint.pt`` (model, optimiser and schedule state) atomically."""
    with atomic_output(path, force=True) as tmp:
        torch.save(state, tmp)


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write ``best.pt``: the output layer predicts eV by itself, so upstream ALIGNN's forward on it does too."""
    from qdgap.core.model.network import fold_target_stats

    with atomic_output(path, force=True) as tmp:
        torch.save(fold_target_stats(state), tmp)


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
