"""File plumbing shared by every writer: atomic outputs, hashing, provenance, locks.

A result is never readable but wrong: writers fill a temporary file in the
destination folder and rename it into place only once it is complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import io
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qdgap.core.common.errors import QdgapError
from qdgap.testing.faults import fault_point

_HASH_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def check_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and make sure we may write into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QdgapError(f"{folder}: cannot create the output folder ({exc.strerror})") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise QdgapError(f"{folder}: the output folder is not writable")


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse an output file name that cannot be written, before any work: a folder, or a place
    whose folder cannot be made or written to."""
    path = Path(path)
    if path.is_dir():
        raise QdgapError(f"{path}: is a folder, expected a file name")
    check_writable_dir(path.parent)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was. A full disk or an unwritable folder becomes a one-line ``QdgapError``.

    Args:
        path: the final output file.
        force: replace ``path`` if it exists (otherwise an existing file is an error).
    """
    path = Path(path)
    if path.exists() and not force:
        raise QdgapError(f"{path}: output exists; choose another name or pass --force")
    check_output_file(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        error = _write_error(path, exc)
        if error is None:
            raise
        raise error from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        fault_point("write", path.name)  # tests only: see qdgap/testing/faults.py
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # h5py and torch.save report a full disk as RuntimeError too (errno only in the text, or not at all)
        error = _write_error(path, exc)
        tmp.unlink(missing_ok=True)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_LOW_SPACE_BYTES = 1 << 20  # a write that fails with less than this free was most likely stopped by a full disk


def _write_error(path: Path, exc: BaseException) -> QdgapError | None:
    """The one-line error for a write that failed on a full disk or a forbidden folder; None for other failures.

    Called before the temporary file is removed, so a disk it filled still reads as full.
    """
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return QdgapError(f"{path}: permission denied; nothing was written")
    full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "errno = 28" in text
    if not full:
        try:
            st = os.statvfs(path.parent)
            free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
            full = free < _LOW_SPACE_BYTES
        except OSError:
            pass
    if full:
        return QdgapError(f"{path}: no space left on the device; nothing was written (free some space and rerun)")
    return None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, replacing what was there."""
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text)


def write_image(tmp: Path, image: io.BytesIO) -> None:
    """Write an in-memory file (an HDF5 image built in ``image``) to ``tmp``, from ``atomic_output``.

    Written from a bytes copy, never from ``image.getbuffer()``: when the write fails (a full disk), the
    file object's view of the BytesIO's buffer is caught in the traceback's reference cycle, and CPython
    3.12's garbage collector (seen on 3.12.1; gh-111049, gh-77894) then crashes collecting it:
    a segmentation fault after the one-line error, exit 139 instead of 2.
    """
    tmp.write_bytes(image.getvalue())


def provenance(**extra: object) -> dict[str, object]:
    """What produced a result: qdgap version and commit, torch's version and build, whether CUDA was
    usable, command line, UTC time, plus ``extra`` (see ``core/common/buildinfo.py``)."""
    from qdgap import __version__
    from qdgap.core.common.buildinfo import build_provenance

    return {
        "qdgap_version": __version__,
        **build_provenance(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


class LockHeld(QdgapError):
    """Another live process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``path`` for the duration of the block.

    The kernel releases it when the holder dies, so a killed job never leaves
    a stale lock behind. Raises ``LockHeld`` at once if another process holds
    it, or with ``wait`` waits its turn (two processes exporting one member
    write one after the other).

    Args:
        path: the lock file (created if missing, left in place afterwards).
        what: what the lock protects, for the error message.
        wait: block until the lock is free instead of raising ``LockHeld``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as exc:
        raise QdgapError(f"{path}: cannot create the lock file ({exc.strerror}); is the folder writable?") from exc
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise LockHeld(f"{what} is in use by {holder} (lock {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        yield
    finally:
        fh.close()
