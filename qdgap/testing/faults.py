"""Test-only fault injection: a process stops itself at a named point, so reliability tests can kill
it at an exact moment (mid-epoch, mid-write) instead of racing it with a timer.

Nothing happens unless the environment variable ``QDGAP_TEST_KILL`` holds a rule:

    POINT[/NAME]@N[!SIGNAL]

The N-th time this process reaches POINT (counting only hits with file name NAME, when given) it
sends itself SIGNAL (default KILL; TERM is what Slurm sends at the time limit; STOP freezes it).

Points:
    write    ``files.atomic_output``: the temporary file is complete and about to be renamed into
             place (NAME is the final file's name, e.g. ``write/fna.h5@1``).
    step     training: right after an optimiser step, before the stop flag is polled.
    forward  inference (``predict``, ``fna``): before a batch goes through a model.

Examples: ``step@5`` (SIGKILL in the fifth training step), ``write/checkpoint.pt@2``,
``step@3!TERM``, ``forward@1!STOP``. Unset, a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "QDGAP_TEST_KILL"

_parsed: tuple[str, tuple[str, str, int, int] | None] = ("", None)
_hits = 0


def fault_point(point: str, name: str = "") -> None:
    """Send this process the rule's signal if ``QDGAP_TEST_KILL`` says this is the moment."""
    global _parsed, _hits
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    if spec != _parsed[0]:
        _parsed, _hits = (spec, _parse(spec)), 0
    rule = _parsed[1]
    if rule is None or rule[0] != point or (rule[1] and rule[1] != name):
        return
    _hits += 1
    if _hits == rule[2]:
        os.kill(os.getpid(), rule[3])


def _parse(spec: str) -> tuple[str, str, int, int] | None:
    """``POINT[/NAME]@N[!SIGNAL]`` -> (point, name, n, signal number); None if malformed."""
    try:
        where, _, rest = spec.partition("@")
        count, _, sig = rest.partition("!")
        point, _, name = where.partition("/")
        return point, name, int(count), int(getattr(signal, f"SIG{sig or 'KILL'}"))
    except (ValueError, AttributeError):
        return None
