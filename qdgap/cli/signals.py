"""SIGTERM/SIGINT as a polite request to stop: long work saves what it has and exits.

Slurm sends SIGTERM at the time limit and SIGKILL a little later; work that
checkpoints per epoch needs only to stop at the next safe point.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class StopFlag:
    """Callable ``should_stop()``; ``exit_code`` is 128 + the signal received."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)


@contextlib.contextmanager
def stop_requested() -> Iterator[StopFlag]:
    """Within the block, SIGTERM or SIGINT sets the flag instead of killing the process.

    A second signal raises ``KeyboardInterrupt`` at once: the user insists.
    """
    flag = StopFlag()

    def handler(signum, frame):  # noqa: ARG001
        if flag.signum is not None:
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
