"""Make's rule for a study: a stage runs when its outputs are missing, unreadable or older than its inputs.

``--from STAGE`` removes that stage's outputs and those of every later stage, then runs them again.
Each stage's line goes to the user (``hooks.say``) and, with its time, to the log (``WORKDIR/qdgap.log``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.hooks import Hooks

log = logging.getLogger("qdgap.pipeline")


@dataclass(frozen=True)
class Stage:
    name: str
    outputs: Callable[[], list[Path]]  # what the stage makes (removed by --from)
    inputs: Callable[[], list[Path]]  # what it is made from (newer inputs make it stale)
    complete: Callable[[], bool]
    run: Callable[[], None]


def check_from(from_stage: str | None, names) -> None:
    if from_stage is not None and from_stage not in names:
        raise QdgapError(f"--from must be one of {', '.join(names)}, got {from_stage!r}")


def run_stages(stages: list[Stage], from_stage: str | None, what: str, result: Path, hooks: Hooks) -> None:
    """Run each stage that is incomplete or stale, in order; ``from_stage`` first removes its and later outputs."""
    if from_stage is not None:
        names = [s.name for s in stages]
        for stage in stages[names.index(from_stage) :]:
            for path in stage.outputs():
                _remove(path)
    t_all = time.perf_counter()
    for stage in stages:
        if stage.complete() and not _stale(stage):
            hooks.say(f"{stage.name:<12} up to date")
            log.debug("stage %s: up to date", stage.name)  # debug: the console has the line; the log file keeps it
            continue
        log.debug("stage %s: started", stage.name)
        t0 = time.perf_counter()
        stage.run()
        hooks.say(f"{stage.name:<12} done in {fmt_s(time.perf_counter() - t0)}")
        log.debug("stage %s: done in %s", stage.name, fmt_s(time.perf_counter() - t0))
    hooks.say(f"{what} done in {fmt_s(time.perf_counter() - t_all)}: open {result}")
    log.debug("%s done in %s: %s", what, fmt_s(time.perf_counter() - t_all), result)


def readable(path: Path, kind: str) -> bool:
    """``path`` is a complete result file of ``kind`` (``predictions``, ``fna``) or a trajectory (``trajectory``)."""
    from qdgap.core.common import schema
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.results import read_results

    if not path.is_file():
        return False
    try:
        if kind == "trajectory":
            read_trajectory(path, validate=False)
        else:
            read_results(path, fmt={"predictions": schema.PREDICTIONS_FORMAT, "fna": schema.FNA_FORMAT}[kind])
    except QdgapError:
        return False
    return True


def _stale(stage: Stage) -> bool:
    """An input newer than the oldest output means the stage must run again."""
    outputs = [p for p in stage.outputs() if p.exists() and p.is_file()]
    inputs = [p for p in stage.inputs() if p.exists()]
    if not outputs or not inputs:
        return False
    return max(p.stat().st_mtime for p in inputs) > min(p.stat().st_mtime for p in outputs)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
