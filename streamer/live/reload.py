"""Hot reload: follow ``bundles/current`` and swap each new bundle in.

A `BundleWatcher` thread reads the ``current`` symlink every ``interval`` seconds
(``POLL_SECONDS`` by default: one ``readlink``, so a new bundle is seen within a
quarter of a second at no measurable cost).
When it points somewhere new, the bundle there is loaded (``load_bundle`` checks its
files and hashes), made ready by the engine (a new backbone gets its own session,
run once on a warm-up batch) and installed between two recognition batches. A
bundle that fails any of that is refused with a log line and the bundle that was
serving keeps serving; the watcher tries again only when ``current`` moves on.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

from facecore.bundle import MANIFEST_FILE, Bundle, load_bundle
from facecore.errors import BundleError
from facecore.publish import CURRENT
from streamer.errors import BundleRefusedError
from streamer.live.recognizer import ActiveModel

__all__ = ["POLL_SECONDS", "BundleTarget", "BundleWatcher"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


class BundleTarget(Protocol):
    """What a watcher swaps bundles into (the `Engine`)."""

    @property
    def bundle_version(self) -> int | None: ...

    def prepare(self, bundle: Bundle) -> ActiveModel: ...

    def install(self, model: ActiveModel | None) -> None: ...


class BundleWatcher:
    """Polls ``bundles_dir/current`` in a thread; ``close()`` joins it (safe twice).

    ``loaded``: the bundle directory already serving (or refused at start), so it is
    not loaded again.
    """

    def __init__(
        self,
        target: BundleTarget,
        bundles_dir: Path,
        *,
        interval: float = POLL_SECONDS,
        loaded: Path | None = None,
    ) -> None:
        self.target = target
        self.bundles_dir = Path(bundles_dir)
        self.interval = interval
        self.swaps = 0
        self.refused = 0
        # the bundle last looked at: its folder and its manifest file's identity, so that
        # a folder deleted and published again under the same name is still new
        self._seen: tuple[str, tuple[int, int] | None] | None = (
            _identity(Path(loaded).resolve()) if loaded is not None else None
        )
        self._stop = threading.Event()
        self._check_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name="facestream-bundle-watcher", daemon=True
        )
        self._thread.start()

    def check(self) -> bool:
        """Look at ``current`` once; True when a new bundle was swapped in."""
        with self._check_lock:
            pointer = self.bundles_dir / CURRENT
            try:
                target = str((self.bundles_dir / os.readlink(pointer)).resolve())
            except OSError:
                return False  # nothing published yet (or being replaced right now)
            seen = _identity(Path(target))
            if seen == self._seen:
                return False
            self._seen = seen
            try:
                bundle = load_bundle(Path(target))
                model = self.target.prepare(bundle)
            except (BundleError, BundleRefusedError) as exc:
                self.refused += 1
                version = self.target.bundle_version
                log.error("refused bundle %s: %s; %s", target, exc,
                          "every face stays unknown" if version is None
                          else f"still serving version {version}")
                return False
            self.target.install(model)
            self.swaps += 1
            return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bug here must not end hot reload for good
                log.exception("checking %s for a new bundle failed", self.bundles_dir / CURRENT)


def _identity(directory: Path) -> tuple[str, tuple[int, int] | None]:
    """A bundle folder's path with its manifest file's inode and change time (None
    while it cannot be read): a bundle's files are never modified once published."""
    try:
        stat = (directory / MANIFEST_FILE).stat()
    except OSError:
        return str(directory), None
    return str(directory), (stat.st_ino, stat.st_ctime_ns)
