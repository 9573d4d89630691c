"""Terminal plumbing: the stderr console, progress bars, logging and the global flags."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


@dataclass
class _State:
    debug: bool = False
    quiet: bool = False


state = _State()


def stderr_console() -> Console:
    # No file= : rich then looks sys.stderr up at every write, so a log handler set up under a test
    # runner's captured stream never writes to that stream after it is closed.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def setup_logging(*, quiet: bool, debug: bool, logfile: Path | None = None) -> None:
    """Send qdgap's log records to stderr (rich) and, if given, to ``logfile``."""
    logger = logging.getLogger("qdgap")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=stderr_console(), show_path=False, show_time=False, markup=False)
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if logfile is not None:
        from qdgap.core.common.logs import add_logfile

        add_logfile(logfile)


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``312.4 masked/s``."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit or "it"

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else "", style="cyan")


def progress_enabled() -> bool:
    """Bars only on a terminal, and never under ``--quiet`` (Slurm logs stay clean)."""
    return not state.quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, total: float | None, *, unit: str = "") -> Iterator[Callable[[float], None]]:
    """A rich progress bar on stderr with rate and ETA; yields ``advance(n)``.

    Off the terminal (or with ``--quiet``) it yields a no-op, so core code can
    always report progress.
    """
    if not progress_enabled():
        yield lambda n=1: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr_console(), transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: float = 1) -> None:
            bar.update(task, advance=n)

        yield advance


def error_line(message: str) -> None:
    """Print one line ``error: ...`` on stderr (no wrapping, no markup)."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"qdgap: error: {text}\n")
    sys.stderr.flush()


def usage_error(message: str) -> Exception:
    """A ``QdgapError`` to raise for a bad option value."""
    from qdgap.core.common.errors import QdgapError

    return QdgapError(message)
