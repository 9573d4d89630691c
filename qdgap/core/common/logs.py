"""How qdgap's log records look in a log file, in the main process and in every worker it starts."""

from __future__ import annotations

# The process id tells the parent's stage lines from the lines of the workers training members beside it.
LOG_FORMAT = "%(asctime)s pid %(process)d %(levelname)s %(name)s: %(message)s"
