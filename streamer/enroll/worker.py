"""The server's enrollment worker: one thread that owns the enrollment store.

An `EnrollmentStore` holds one database connection and must stay in the thread that
opened it, and ingesting a photo (decode, detect, crop) is CPU work that must stay
off the event loop. So the web API and the live capture hand every store job to this
worker: ``await worker.call(job)`` runs ``job(store)`` in the worker's one thread and
returns its result (or raises its exception). Jobs run one at a time, in order;
enrollment blocks rather than drops. ``call_if_stored`` is the same for a job that
only reads: it makes no store where there is none yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from enrollment.store import EnrollmentStore, store_exists, store_location
from facecore.config import Settings
from facecore.detector import Detector
from streamer.errors import ClosedError

__all__ = ["EnrollmentWorker"]

T = TypeVar("T")
R = TypeVar("R")


class EnrollmentWorker:
    """Runs store jobs in one thread. ``detector`` is the YuNet used to ingest photos
    (a `Detector` may be called from any thread). ``close()`` waits for the job in
    progress, closes the store in its thread and is safe to call twice."""

    def __init__(self, store: Path | str, detector: Detector) -> None:
        self.store_location = store  # a SQLite store's folder or a postgresql:// URL
        self.detector = detector
        self._store: EnrollmentStore | None = None  # touched only in the worker thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enroll-store")
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EnrollmentWorker:
        """The worker of this installation's store (`store_location`), with the
        configured YuNet and no minimum face size (a small face is then reported as
        too small, not as no face, as by `facestream enroll`)."""
        return cls(store_location(settings), Detector.from_settings(settings, min_face_px=0))

    async def call(self, job: Callable[[EnrollmentStore], T]) -> T:
        """``job(store)`` in the worker thread. Raises `ClosedError` after ``close()``."""
        return await self._submit(self._run, job)

    async def call_if_stored(self, job: Callable[[EnrollmentStore], T]) -> T | None:
        """``call(job)``, or None, making no store, while there is none at
        ``store_location`` (`enrollment.store.store_exists`: a SQLite store's folder
        not made yet)."""
        return await self._submit(self._run_if_stored, job)

    async def _submit(
        self,
        run: Callable[[Callable[[EnrollmentStore], T]], R],
        job: Callable[[EnrollmentStore], T],
    ) -> R:
        if self._closed:
            raise ClosedError("the enrollment worker is closed")
        try:
            future = self._executor.submit(run, job)
        except RuntimeError as exc:  # shut down between the check and the submit
            raise ClosedError("the enrollment worker is closed") from exc
        return await asyncio.wrap_future(future)

    def _run(self, job: Callable[[EnrollmentStore], T]) -> T:
        if self._store is None:
            self._store = EnrollmentStore(self.store_location)
        return job(self._store)

    def _run_if_stored(self, job: Callable[[EnrollmentStore], T]) -> T | None:
        if self._store is None and not store_exists(self.store_location):
            return None
        return self._run(job)

    def _close_store(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close_store)
        self._executor.shutdown(wait=True)
