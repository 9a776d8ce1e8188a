"""Versioned bundle directories and the ``current`` pointer.

Layout under a bundles directory::

    v000001/  v000002/  ...   complete bundles, never modified once renamed in
    current -> v000002        a symlink, switched with an atomic rename

A writer builds the next bundle in a hidden temporary directory, renames it to its
version name, then replaces ``current``; an old version is renamed to a hidden name
before it is removed. A crash at any step leaves ``current`` pointing at a complete
bundle and every ``vNNNNNN`` complete; leftovers (any hidden entry) are removed by
the next publish. The model files of a published bundle are never modified; only the
trainer's training report beside them may be completed later, file by file with a
rename (see ``trainer.fitting.building``). One writer at a time: the trainer holds
its lock (``trainer.lock``: a file lock, or an advisory lock in a PostgreSQL store).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from facecore.bundle import Bundle
from facecore.config import Settings
from facecore.errors import PublishError
from facecore.files import fsync_path

__all__ = [
    "CURRENT",
    "bundles_dir",
    "current_bundle_dir",
    "next_version",
    "publish",
    "remove_version",
    "versions",
]

CURRENT = "current"
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_VERSION = re.compile(r"^v(\d{6})$")


def bundles_dir(settings: Settings) -> Path:
    """Where the trainer publishes and the streamer follows ``current``: the
    ``bundles_dir`` setting, else ``state_dir/bundles``. ``current`` holds a relative
    name and every step of a publish is a rename in this one directory, so the
    pointer stays atomic on a shared filesystem (NFS renames are atomic on the
    server) mounted at any path on each box; how soon another box sees it is its
    NFS client's attribute caching."""
    return settings.bundles_dir or settings.state_dir / "bundles"


def versions(bundles_dir: Path) -> list[int]:
    """Published version numbers, oldest first."""
    if not bundles_dir.is_dir():
        return []
    found = (_VERSION.match(p.name) for p in bundles_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def next_version(bundles_dir: Path) -> int:
    """One past every version here: those on disk and the one ``current`` names, whose
    folder may have been deleted, so that no number is given to two bundles (a server
    would take the second for the one it serves)."""
    pointer = bundles_dir / CURRENT
    named = _VERSION.match(os.readlink(pointer)) if pointer.is_symlink() else None
    pointed = [int(named.group(1))] if named else []
    return max([*versions(bundles_dir), *pointed], default=0) + 1


def current_bundle_dir(bundles_dir: Path) -> Path | None:
    """The directory ``current`` points at, or None before the first publish."""
    pointer = bundles_dir / CURRENT
    if not pointer.is_symlink():
        return None
    return bundles_dir / os.readlink(pointer)


def publish(bundles_dir: Path, build: Callable[[Path, int], Bundle], keep: int = 3) -> Bundle:
    """Publish a new version: ``build(directory, version)`` must write a complete
    bundle into the (not yet existing) ``directory`` and return it (as
    ``facecore.bundle.write_bundle`` does: checked, without reading it back); it is
    then renamed into place and ``current`` switched to it. The newest ``keep``
    versions are kept. Returns the published bundle, at its final path.
    ``PublishError`` when the folder cannot be written; ``current`` is then unchanged."""
    try:
        return _publish(bundles_dir, build, keep)
    except OSError as exc:
        detail = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else exc
        hint = (" (the trainer's user must be able to write there: is it mounted "
                "read-only, or owned by another user?)") if exc.errno in _NOT_WRITABLE else ""
        raise PublishError(
            f"cannot publish a model bundle in {bundles_dir}: {detail}{hint}"
        ) from exc


def _publish(bundles_dir: Path, build: Callable[[Path, int], Bundle], keep: int) -> Bundle:
    bundles_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_leftovers(bundles_dir)
    version = next_version(bundles_dir)
    name = f"v{version:06d}"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=bundles_dir))
    staging.rmdir()  # build() creates it, so a half-built bundle is never named vNNNNNN
    bundle = build(staging, version)
    os.rename(staging, bundles_dir / name)
    link = bundles_dir / f".{CURRENT}-{version}"
    os.symlink(name, link)
    os.replace(link, bundles_dir / CURRENT)
    fsync_path(bundles_dir)
    for old in versions(bundles_dir)[:-keep] if keep > 0 else []:
        remove_version(bundles_dir, old)
    return replace(bundle, path=bundles_dir / name)


def remove_version(bundles_dir: Path, version: int) -> None:
    """Delete the published bundle ``version`` (never the one ``current`` names: the
    caller's to see to). Hidden by a rename first: a crash mid-removal leaves a
    leftover that the next publish deletes, never a half-deleted vNNNNNN."""
    doomed = bundles_dir / f".pruned-v{version:06d}"
    os.rename(bundles_dir / f"v{version:06d}", doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(bundles_dir: Path) -> None:
    for path in bundles_dir.glob(".*"):
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
