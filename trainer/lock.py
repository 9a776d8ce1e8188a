"""One trainer at a time: an exclusive ``fcntl.flock`` on ``state_dir/trainer.lock``.

The trainer service and a manual ``facestream trainer --once`` both publish into
``state_dir/bundles``; the lock keeps them from publishing at the same time. The
kernel drops the lock when its holder exits, even when killed, so a stale lock file
never blocks anybody. The holder writes its process id into the file, for the
message the next one shows.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from trainer.errors import TrainerBusyError

__all__ = ["LOCK_FILE", "TrainerLock"]

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"


class TrainerLock:
    """The lock file ``state_dir/trainer.lock``; ``acquire()`` takes the lock (once),
    ``close()`` releases it (safe twice)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held = False

    def acquire(self, *, wait: bool) -> None:
        """Take the lock; when another trainer holds it, wait for it (``wait``) or
        raise `TrainerBusyError` at once."""
        if self.held:
            return
        if self._fd is None:
            raise ValueError(f"{self.path}: the lock is closed")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(self._fd)
            if not wait:
                raise TrainerBusyError(
                    f"another trainer ({holder}) is running on this state folder and holds "
                    f"{self.path}: it publishes the changes itself; stop it first to run "
                    "this one"
                ) from None
            log.info("waiting for the other trainer (%s) to exit: it holds %s", holder, self.path)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        self.held = True

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return f"process {int(os.pread(fd, 32, 0).decode().strip())}"
        except (OSError, ValueError):
            return "process id unknown"

    def close(self) -> None:
        """Release the lock (closing the file does)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> TrainerLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
