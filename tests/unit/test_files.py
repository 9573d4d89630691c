"""core/common/files.py: writing an in-memory image to disk when the disk is full."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from qdgap.core.common.files import write_image

FULL = Path("/dev/full")  # every write fails with ENOSPC


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")
def test_a_failed_write_leaves_no_export_of_the_image():
    """The failed write's exception (kept, as a caller's traceback keeps it) holds no view of the image's
    buffer. One that did crashed CPython 3.12's garbage collector: exit 139 after a full disk's one-line error.
    A live export is what makes a BytesIO refuse to resize, on every Python."""
    image = io.BytesIO(b"\0" * 100_000)
    with pytest.raises(OSError) as caught:
        write_image(FULL, image)
    assert caught.value.errno == 28
    image.truncate(0)  # BufferError ("Existing exports of data") while a view is alive
    assert image.getvalue() == b""
