"""The run-folder contract (DESIGN.md): one ensemble member per ``runs/run_<seed>/``.

``config.json`` (resolved config, data provenance), ``split.json``,
``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (last state, for
resume), ``best.pt`` (weights), ``model.ts`` (TorchScript of the best
weights), ``test_metrics.json`` and ``DONE`` written last. A member with
``DONE`` is never retrained; one without it resumes from ``checkpoint.pt``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdgap.core.common.errors import QdgapError
from qdgap.core.config import RunConfig

RUN_PREFIX = "run_"
CONFIG_JSON = "config.json"
SPLIT_JSON = "split.json"
METRICS_CSV = "metrics.csv"
CHECKPOINT_PT = "checkpoint.pt"
BEST_PT = "best.pt"
MODEL_TS = "model.ts"
TEST_METRICS_JSON = "test_metrics.json"
DONE = "DONE"
FAILED = "FAILED"  # written when a member stops on an error; holds the message
LOCK = ".lock"
CACHE_DIR = ".cache"  # graphs shared by all members of a runs folder

STATES = ("done", "running", "interrupted", "failed", "missing")


def mark_failed(run: Path, message: str) -> None:
    """Write the ``FAILED`` marker (the message, or a traceback) into a member's folder; best effort."""
    try:
        run.mkdir(parents=True, exist_ok=True)
        (run / FAILED).write_text(message.rstrip() + "\n")
    except OSError:  # an unwritable folder already failed the member; do not mask that error
        pass


def run_dir(runs: Path, seed: int) -> Path:
    """``runs/run_<seed>``."""
    return Path(runs) / f"{RUN_PREFIX}{seed}"


def seed_of(path: Path) -> int | None:
    m = re.fullmatch(rf"{RUN_PREFIX}(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def member_dirs(runs: Path) -> list[Path]:
    """The ``run_<seed>`` folders under ``runs``, ordered by seed."""
    runs = Path(runs)
    if not runs.is_dir():
        return []
    found = [(seed_of(p), p) for p in runs.iterdir() if p.is_dir() and seed_of(p) is not None]
    return [p for _, p in sorted(found)]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise QdgapError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QdgapError(f"{path}: not readable JSON ({exc})") from exc


def member_state(run: Path) -> str:
    """One of ``STATES``: done (DONE written), running (its lock is held), failed (FAILED
    written), interrupted (a checkpoint or config but no DONE) or missing."""
    from qdgap.core.common.files import LockHeld, exclusive_lock

    run = Path(run)
    if (run / DONE).exists():
        return "done"
    if (run / LOCK).exists():
        try:
            with exclusive_lock(run / LOCK, what=str(run)):
                pass
        except LockHeld:
            return "running"
    if (run / FAILED).exists():
        return "failed"
    if (run / CHECKPOINT_PT).exists() or (run / CONFIG_JSON).exists():
        return "interrupted"
    return "missing"


@dataclass(frozen=True)
class Member:
    """A finished ensemble member, as ``predict``, ``fna`` and ``finetune`` use it."""

    seed: int
    path: Path
    config: RunConfig
    record: dict  # the whole config.json (data provenance included)
    split: dict  # split.json: train, val, test frame indices
    model_sha256: str

    @property
    def model_ts(self) -> Path:
        return self.path / MODEL_TS

    @property
    def numbers(self) -> np.ndarray | None:
        """(N,) atomic numbers trained on; None when unknown (a model imported from upstream ALIGNN)."""
        numbers = self.record["data"]["numbers"]
        return None if numbers is None else np.asarray(numbers, dtype=np.int64)

    @property
    def data_sha256(self) -> str | None:
        """sha256 of the training data; None when unknown (so it equals no data's)."""
        sha = self.record["data"]["sha256"]
        return None if sha is None else str(sha)


def load_member(run: Path) -> Member:
    """Read a finished member's folder.

    Raises:
        QdgapError: no ``DONE`` marker, or a file of the contract is missing or unreadable.
    """
    run = Path(run)
    if not (run / DONE).exists():
        raise QdgapError(f"{run}: member not finished (no DONE marker); finish it with `qdgap train` or remove it")
    done = read_json(run / DONE)
    record = read_json(run / CONFIG_JSON)
    split = read_json(run / SPLIT_JSON)
    if not (run / MODEL_TS).is_file():
        raise QdgapError(f"{run / MODEL_TS}: missing; re-export it with `qdgap export {run}`")
    if not isinstance(done, dict) or not done.get("model_sha256"):
        raise QdgapError(
            f"{run / DONE}: records no model_sha256 to check {MODEL_TS} against; re-export it with `qdgap export {run}`"
        )
    seed = record.get("seed", seed_of(run))
    if "data" not in record or "numbers" not in record["data"]:
        raise QdgapError(f"{run / CONFIG_JSON}: no record of the training data; not a qdgap run folder")
    return Member(
        seed=int(seed),
        path=run,
        config=RunConfig.from_json(record),
        record=record,
        split=split,
        model_sha256=str(done["model_sha256"]),
    )


def load_members(runs: Path) -> list[Member]:
    """All members under ``runs`` (or ``runs`` itself if it is one run folder); every one must be finished."""
    runs = Path(runs)
    if not runs.exists():
        raise QdgapError(f"{runs}: no such runs folder")
    if (runs / CONFIG_JSON).exists():
        return [load_member(runs)]
    dirs = member_dirs(runs)
    if not dirs:
        raise QdgapError(f"{runs}: no ensemble members (run_<seed>/ folders) here; train with `qdgap ensemble train`")
    unfinished = [d.name for d in dirs if not (d / DONE).exists()]
    if unfinished:
        raise QdgapError(
            f"{runs}: {len(unfinished)} member(s) not finished ({', '.join(unfinished[:5])}); "
            "finish them with `qdgap ensemble train` or remove them"
        )
    return [load_member(d) for d in dirs]


def write_json(path: Path, record: Any) -> None:
    """Write ``record`` as indented JSON, atomically."""
    from qdgap.core.common.files import write_text_atomic

    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=False) + "\n")


def write_metrics_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Write the per-epoch metrics table (one row per epoch), atomically."""
    from qdgap.core.common.files import write_text_atomic

    if not rows:
        return
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(_fmt(r[k]) for k in header) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` (empty if there is none yet)."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_text().splitlines()
    if len(lines) < 2:
        return []
    header = lines[0].split(",")
    return [dict(zip(header, map(float, line.split(",")), strict=False)) for line in lines[1:] if line]


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.8g}"
