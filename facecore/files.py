"""Durable file-system steps shared by the store, the bundle writer and publishing."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_path", "os_reason"]


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
