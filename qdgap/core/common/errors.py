"""The one exception type a user can act on."""

from __future__ import annotations


class QdgapError(Exception):
    """An error the user can fix: bad input, a missing file, a wrong option.

    The CLI prints ``str(error)`` as one line on stderr and exits with code 2.
    The message names the file or option and says what is wrong, and how to
    mend it where that is not obvious.
    """


class Interrupted(Exception):
    """Work stopped on request (SIGTERM or SIGINT) after saving what it had.

    Not a user error: rerunning the same command resumes. The CLI exits with
    128 + the signal number (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, *, exit_code: int = 143):
        super().__init__(message)
        self.exit_code = exit_code
