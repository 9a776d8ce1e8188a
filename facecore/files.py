"""Durable file-system steps shared by the store, the bundle writer and publishing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["fsync_path", "os_reason", "unwritable_reason"]


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
