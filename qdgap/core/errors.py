"""The one exception type a user can act on."""

from __future__ import annotations


class QdgapError(Exception):
    """An error the user can fix: bad input, a missing file, a wrong option.

    The CLI prints ``str(error)`` as one line on stderr and exits with code 2.
    The message names the file or option and says what is wrong, and how to
    mend it where that is not obvious.
    """
