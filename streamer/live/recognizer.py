"""The shared recognizer: one batcher thread per process, which alone owns the ONNX
Runtime session.

Streams ``submit()`` aligned chips from the asyncio loop and await a future. The
batcher takes the oldest waiting request, waits at most ``batch_wait_ms`` for more
to arrive (up to ``batch_size`` faces), runs them through one ``embed`` call of the
model's embedder (an in-process ONNX Runtime session or a Triton server), and
resolves each future with ``loop.call_soon_threadsafe``. The queue holds at most
``max_queued`` faces: past that, the oldest request is dropped (its future
gets None, and ``dropped`` counts its faces), so a slow recognizer never builds up
delay.

The model (`ActiveModel`: bundle, embedder, front end, and the store's people as
last read, which drop a person erased since the bundle was fitted and rename one
renamed since) is swapped with ``swap()`` from any thread and is read once per
batch, so a swap takes effect between batches. A future resolves to None (no
recognition) when there is no model, when its request was dropped, when the new
model wants chips of another geometry than those submitted, when the embedder
failed (Triton down or slow: the error is logged once, and each later batch tries
again), or when the recognizer closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from facecore.bundle import Bundle, Gallery
from facecore.embedder import ChipEmbedder
from facecore.errors import FacestreamError
from facecore.frontend import FrontEnd
from streamer import metrics
from streamer.errors import ClosedError

__all__ = ["ActiveModel", "BatchRecognizer", "EnrolledPeople", "Recognition"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrolledPeople:
    """The enrollment store's people as read at store ``revision``: id -> name, and
    the store's identity (`EnrollmentStore.identity`)."""

    revision: int
    names: Mapping[str, str]
    store_id: str = ""


@dataclass(frozen=True, eq=False)
class ActiveModel:
    """What recognition runs with: a bundle, the embedder for its backbone, the
    front end that cuts its chips (`facecore.frontend`) and, once read, the store's
    people (`EnrolledPeople`)."""

    bundle: Bundle
    embedder: ChipEmbedder
    front_end: FrontEnd
    people: EnrolledPeople | None = None

    @cached_property
    def gallery(self) -> Gallery:
        """The bundle's gallery as the store has its people: a person erased since the
        bundle was fitted is left out, one renamed since has the new name. A bundle
        fitted on a later revision than ``people`` (just published), or on another
        store (`of_another_store`), names its own."""
        gallery, manifest = self.bundle.gallery, self.bundle.manifest
        if (
            self.people is None
            or manifest.store_revision > self.people.revision
            or self.of_another_store
        ):
            return gallery
        names = self.people.names
        rows = [i for i, pid in enumerate(manifest.person_ids) if not pid or pid in names]
        labels = tuple(
            names.get(manifest.person_ids[i], gallery.labels[i]) for i in rows
        )
        if labels == gallery.labels:
            return gallery
        return Gallery(labels, gallery.weights[rows], gallery.threshold)

    @property
    def of_another_store(self) -> bool:
        """The bundle was fitted on another store than the one ``people`` were read
        from, whose ids and revisions are not this one's (unknown for bundles made
        before they recorded it)."""
        fitted_on = self.bundle.manifest.store_id
        return self.people is not None and fitted_on not in ("", self.people.store_id)

    @property
    def version(self) -> int:
        return self.bundle.manifest.version

    @property
    def backbone(self) -> str:
        return self.bundle.manifest.backbone_sha256

    def same_chips(self, other: ActiveModel) -> bool:
        """Whether chips cut for ``other`` are right for this model too."""
        return self.front_end.same_chips(other.front_end)


@dataclass(frozen=True)
class Recognition:
    embeddings: NDArray[np.float32]  # [n, D] unit rows, one per submitted chip
    model: ActiveModel  # the model the batch ran with


@dataclass(eq=False)
class _Request:
    chips: NDArray[np.uint8]
    model: ActiveModel
    future: asyncio.Future[Recognition | None]
    loop: asyncio.AbstractEventLoop
    queued: float


def _resolve(future: asyncio.Future[Recognition | None], value: Recognition | None) -> None:
    if not future.done():
        future.set_result(value)


class BatchRecognizer:
    """Batches chips from every stream of the process into single ONNX calls."""

    def __init__(
        self,
        model: ActiveModel | None = None,
        *,
        batch_size: int = 32,
        batch_wait_ms: float = 3.0,
        max_queued: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queued = max_queued if max_queued is not None else 4 * batch_size
        self._model = model
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_faces = 0
        self._closed = False
        self.batches = 0  # embedder calls made
        self.faces = 0  # faces embedded
        self.dropped = 0  # faces dropped from a full queue
        self.failed = 0  # faces of batches the embedder failed on
        self._failing = False  # the last batch failed: its error is logged, not each one
        self._thread = threading.Thread(target=self._run, name="facestream-recognizer", daemon=True)
        self._thread.start()

    @property
    def model(self) -> ActiveModel | None:
        return self._model

    def swap(self, model: ActiveModel | None) -> None:
        """Serve ``model`` from the next batch on (None: every face unknown)."""
        with self._cond:
            self._model = model
        metrics.BUNDLE_VERSION.set(0 if model is None else model.version)
        created = 0.0 if model is None else model.bundle.manifest.created
        metrics.BUNDLE_CREATED.set(
            dt.datetime.fromisoformat(created).timestamp() if isinstance(created, str) else 0.0
        )

    def submit(
        self, chips: NDArray[np.uint8], model: ActiveModel
    ) -> asyncio.Future[Recognition | None]:
        """Queue chips [n, h, w, 3] aligned for ``model``; call from the event loop.

        The future resolves on this loop to a `Recognition`, or to None (see the
        module docstring). Raises `ClosedError` after ``close()``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recognition | None] = loop.create_future()
        if len(chips) == 0:
            future.set_result(
                Recognition(np.zeros((0, model.embedder.dimension), np.float32), model)
            )
            return future
        request = _Request(chips, model, future, loop, time.monotonic())
        with self._cond:
            if self._closed:
                raise ClosedError("the recognizer is closed")
            self._queue.append(request)
            self._queued_faces += len(chips)
            while self._queued_faces > self.max_queued and len(self._queue) > 1:
                self._drop(self._queue.popleft())
            self._cond.notify_all()
        return future

    def close(self) -> None:
        """Stop the batcher thread; waiting futures get None. Safe to call twice."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._cond:
            while self._queue:
                self._finish(self._queue.popleft(), None)
            self._queued_faces = 0

    def _drop(self, request: _Request) -> None:
        self._queued_faces -= len(request.chips)
        self.dropped += len(request.chips)
        self._finish(request, None)

    @staticmethod
    def _finish(request: _Request, value: Recognition | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            request.loop.call_soon_threadsafe(_resolve, request.future, value)

    def _next_batch(self) -> tuple[list[_Request], ActiveModel | None] | None:
        """Wait for work and gather one batch; None when closed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].queued + self.batch_wait
            while self._queued_faces < self.batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            batch: list[_Request] = []
            size = 0
            while self._queue and (
                not batch or size + len(self._queue[0].chips) <= self.batch_size
            ):
                request = self._queue.popleft()
                batch.append(request)
                size += len(request.chips)
            self._queued_faces -= size
            return batch, self._model

    def _report_failure(self, exc: Exception, faces: int) -> None:
        """Count a failed batch; log the first of a run of failures only."""
        self.failed += faces
        if self._failing:
            return
        self._failing = True
        if isinstance(exc, FacestreamError):  # says what is wrong: no traceback needed
            log.error("recognition failed, faces are unknown until it works again: %s", exc)
        else:
            log.exception("recognition of a batch of %d faces failed", faces)

    def _run(self) -> None:
        while (work := self._next_batch()) is not None:
            batch, model = work
            usable = [r for r in batch if model is not None and model.same_chips(r.model)]
            for request in batch:
                if request not in usable:
                    self._finish(request, None)
            if not usable or model is None:
                continue
            chips = (
                usable[0].chips if len(usable) == 1 else np.concatenate([r.chips for r in usable])
            )
            try:
                embeddings = model.embedder.embed(chips)
            except Exception as exc:  # onnxruntime's errors have no common exported base
                self._report_failure(exc, len(chips))
                for request in usable:
                    self._finish(request, None)
                continue
            if self._failing:
                self._failing = False
                log.info("recognition works again")
            self.batches += 1
            self.faces += len(chips)
            metrics.FACES_EMBEDDED.inc(len(chips))
            metrics.RECOGNITION_BATCH.observe(len(chips))
            start = 0
            for request in usable:
                end = start + len(request.chips)
                self._finish(request, Recognition(embeddings[start:end], model))
                start = end
