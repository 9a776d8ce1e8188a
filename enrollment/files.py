"""Owner-only files written so a crash never leaves a half-written one under its name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from facecore.files import fsync_path

__all__ = ["TEMP_PREFIX", "remove_path", "write_private_file"]

TEMP_PREFIX = ".tmp-"


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600): into a temporary file beside it, fsynced,
    then renamed over ``path`` and the folder fsynced, so ``path`` holds either nothing
    or all of ``data``, even after a crash or power loss. The folder must exist and is
    left as it is: it may be one the user named (``eval calibrate --output``)."""
    folder = path.parent
    temp = folder / f"{TEMP_PREFIX}{path.name}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(folder)


def remove_path(path: Path) -> None:
    """Delete a file or a whole folder; nothing to do if it is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
