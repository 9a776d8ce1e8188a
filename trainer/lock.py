"""One trainer per enrollment store at a time.

The trainer service and a manual ``facestream trainer --once`` both publish bundles
of the same store; the lock keeps them from publishing at the same time.

- With the embedded SQLite store (one box): an exclusive ``fcntl.flock`` on
  ``state_dir/trainer.lock``. The kernel drops it when its holder exits, even when
  killed, so a stale lock file never blocks anybody. The holder writes its process id
  into the file, for the message the next one shows.
- With a PostgreSQL store (``enrollment.database_url``, any number of boxes): an
  advisory lock in that database (``enrollment.postgres.AdvisoryLock``), which the
  server drops with its holder's connection. A holder whose connection was lost (the
  server restarted) takes it again before its next run, or learns that another
  trainer has it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType

from enrollment.postgres import AdvisoryLock
from enrollment.store import store_location
from facecore.config import Settings
from facecore.errors import ConfigError
from facecore.files import PidLock, os_reason
from trainer.errors import TrainerBusyError

__all__ = ["LOCK_FILE", "StoreTrainerLock", "TrainerLock", "trainer_lock"]

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"
TRAINER_LOCK_KEY = 0x66730002  # the advisory lock's key in a PostgreSQL store
_WAIT_POLL_S = 0.5  # how often a waiting trainer tries the advisory lock


def trainer_lock(settings: Settings) -> TrainerLock | StoreTrainerLock:
    """The lock that the trainers of this installation's store share (StoreError for
    a database URL that is not PostgreSQL's, as the store gives)."""
    location = store_location(settings)
    if isinstance(location, str):
        return StoreTrainerLock(location)
    return TrainerLock(settings.state_dir)


class TrainerLock:
    """The lock file ``state_dir/trainer.lock``; ``acquire()`` takes the lock (once),
    ``close()`` releases it (safe twice). `ConfigError` when the state folder cannot
    hold it (read-only, or a file in its place), as the store reports its own."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._file = PidLock(self.path)
        except OSError as exc:
            # mkdir(exist_ok=True) says "File exists" of a file where the folder should be
            reason = (f"{exc.filename} is not a folder" if isinstance(exc, FileExistsError)
                      else os_reason(exc))
            raise ConfigError(f"cannot create the trainer lock {self.path}: {reason}") from exc

    @property
    def held(self) -> bool:
        return self._file.held

    def acquire(self, *, wait: bool) -> None:
        """Take the lock; when another trainer holds it, wait for it (``wait``) or
        raise `TrainerBusyError` at once."""
        if self._file.acquire():
            return
        holder = self._file.holder()
        if not wait:
            raise TrainerBusyError(
                f"another trainer ({holder}) is running on this state folder and holds "
                f"{self.path}: it publishes the changes itself; stop it first to run "
                "this one"
            )
        log.info("waiting for the other trainer (%s) to exit: it holds %s", holder, self.path)
        self._file.acquire(wait=True)

    def close(self) -> None:
        """Release the lock (closing the file does)."""
        self._file.close()

    def __enter__(self) -> TrainerLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StoreTrainerLock:
    """The advisory lock of a PostgreSQL store; the same use as `TrainerLock`."""

    def __init__(self, database_url: str) -> None:
        self._lock = AdvisoryLock(database_url, TRAINER_LOCK_KEY)
        self.where = self._lock.where

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self, *, wait: bool) -> None:
        """Take the lock (again, when a lost connection dropped it); when another
        trainer holds it, wait for it (``wait``, polling) or raise `TrainerBusyError`."""
        if self._lock.try_acquire():
            return
        holder = self._lock.holder()
        if not wait:
            raise TrainerBusyError(
                f"another trainer ({holder}) holds the lock of the enrollment store "
                f"{self.where}: it publishes the changes itself; stop it first to run this one"
            )
        log.info("waiting for the other trainer (%s) of %s to exit", holder, self.where)
        while not self._lock.try_acquire():
            time.sleep(_WAIT_POLL_S)

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> StoreTrainerLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
