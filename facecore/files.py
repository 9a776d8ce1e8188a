"""Durable file-system steps shared by the store, the bundle writer and publishing,
and the lock file that keeps a second server or trainer off a state folder."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

__all__ = ["PidLock", "fsync_path", "os_reason", "unwritable_reason"]


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to disk (a directory's
    fsync makes the renames and creations inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_reason(err: OSError, subject: Path | None = None) -> str:
    """An OSError for a one-line message about `subject`: its reason, and the path it
    concerns when that is another one (``Not a directory: /srv/x``), without the errno
    of its ``str()``."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.filename and (subject is None or Path(err.filename) != subject):
        reason = f"{reason}: {err.filename}"
    return reason


def unwritable_reason(path: Path) -> str | None:
    """Why no file can be written at ``path`` through a temporary file beside it (as
    `enrollment.files.write_private_file` does), or None when one can: asked before
    long work that ends with the write. The kernel is asked by creating a file, since
    the permission bits do not bind root and say nothing of a read-only mount or /proc."""
    if path.is_dir():
        return "it is a directory"
    folder = path.parent
    if not folder.is_dir():
        missing = not folder.exists()
        return f"the folder {folder} {'does not exist' if missing else 'is not a folder'}"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:  # its random name would say nothing
        return f"no file can be created in {folder} ({err.strerror})"
    return None


class PidLock:
    """An exclusive ``flock`` on the file ``path`` (made 0600), whose holder writes its
    process id into it for the message the next one shows. The kernel drops the lock
    however its holder ends, even killed, so a stale file never blocks anybody.

    ``acquire()`` takes it (once), ``close()`` releases it (safe twice); opening the
    file raises the OSError, for the caller to say what the lock is for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held = False

    def acquire(self, *, wait: bool = False) -> bool:
        """Take the lock; when another process holds it, wait for it (``wait``) or
        return False at once."""
        if self.held:
            return True
        if self._fd is None:
            raise ValueError(f"{self.path}: the lock is closed")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        self.held = True
        return True

    def holder(self) -> str:
        """Who holds the lock, as its file says: ``process 1234``."""
        try:
            return f"process {int(os.pread(self._fd, 32, 0).decode().strip())}"
        except (OSError, TypeError, ValueError):
            return "process id unknown"

    def close(self) -> None:
        """Release the lock (closing the file does)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self.held = None, False
