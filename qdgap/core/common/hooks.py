"""How long core work shows itself without knowing about terminals: progress, lines, results, stopping.

Core functions that run a whole command's work (``workflow.inference``, ``workflow.members``,
``workflow.finetune_run``, ``pipeline``) take one ``Hooks``. The CLI fills it from rich
(``cli/render.hooks``): bars on stderr, lines and rendered results on stdout, SIGTERM/SIGINT as the
stop flag of training. The defaults are silent, so a script or a test can call the same functions
with ``Hooks()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


class Stop(Protocol):
    """``stop()`` is True once the user asked to stop; ``exit_code`` is what the process then exits with."""

    def __call__(self) -> bool: ...

    @property
    def exit_code(self) -> int: ...


class Never:
    """A stop flag that never fires (SIGTERM's exit code, should it be asked)."""

    exit_code = 143

    def __call__(self) -> bool:
        return False


@contextlib.contextmanager
def no_progress(description: str, total: float | None, *, unit: str = "") -> Iterator[Callable[[float], None]]:  # noqa: ARG001
    """A progress bar that shows nothing: yields a no-op ``advance(n)``."""
    yield lambda n=1: None


def _silent(*_args, **_kwargs) -> None:
    return None


def never_stop() -> AbstractContextManager[Stop]:
    """No signal handling: the flag it yields never fires."""
    return contextlib.nullcontext(Never())


@dataclass(frozen=True)
class Hooks:
    """What core calls to show its work.

    Attributes:
        progress: ``progress(description, total, unit=...)`` -> a context manager yielding ``advance(n)``.
        say: one plain line of text for the user (no markup).
        show: a finished result (an outcome dataclass) for the user, rendered by whoever gave the hooks.
        stop_requested: a context manager for work that stops at safe points (training): inside it the
            user's request to stop (SIGTERM, SIGINT) sets the yielded flag instead of killing the process.
    """

    progress: Callable[..., AbstractContextManager[Callable[[float], None]]] = no_progress
    say: Callable[[str], None] = _silent
    show: Callable[[object], None] = _silent
    stop_requested: Callable[[], AbstractContextManager[Stop]] = never_stop
