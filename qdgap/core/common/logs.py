"""How qdgap's log records look in a log file, in the main process and in every worker it starts."""

from __future__ import annotations

import logging
from pathlib import Path

# The process id tells the parent's stage lines from the lines of the workers training members beside it.
LOG_FORMAT = "%(asctime)s pid %(process)d %(levelname)s %(name)s: %(message)s"


def add_logfile(path: Path) -> None:
    """Also append qdgap's log records, with times, to ``path`` (its folder is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path)
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("qdgap").addHandler(fh)
