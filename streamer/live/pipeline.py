"""One stream's pipeline: detect, track, recognise, annotate.

``process(frame)`` runs detection and annotation in the engine's worker threads and
recognition in the shared batcher thread; the event loop only awaits. Several
``process()`` calls of one stream may be in flight at once (detection of the next
frame overlaps the rest of this one); tracking takes the frames strictly in the order
the calls were made, and each frame's recognitions are applied before the next frame
is tracked.
"""

from __future__ import annotations

import asyncio
import functools
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from facecore.config import TrackingSettings
from facecore.faces import Faces
from streamer.errors import ClosedError
from streamer.live.annotate import Overlay, annotate_frame
from streamer.live.events import UNKNOWN, RecognitionEvent
from streamer.live.fonts import FontSet
from streamer.live.recognizer import ActiveModel, BatchRecognizer
from streamer.live.tracker import IdentityChange, Tracker, TrackView

__all__ = ["FrameResult", "PipelineEngine", "RateMeter", "StreamPipeline"]

FPS_SMOOTHING = 0.1  # weight of the newest frame interval in the fps estimate

T = TypeVar("T")


class PipelineEngine(Protocol):
    """What a pipeline needs of the process-wide parts; `streamer.live.engine.Engine`
    is one. The engine makes pipelines, so the pipeline knows it only by this shape."""

    tracking: TrackingSettings
    fonts: FontSet
    recognizer: BatchRecognizer

    def detect(
        self, frame: NDArray[np.uint8]
    ) -> tuple[Faces, NDArray[np.float32], NDArray[np.float32]]: ...

    async def run_cpu(self, function: Callable[..., T], *args: object) -> T: ...


@dataclass(frozen=True)
class FrameResult:
    frame: NDArray[np.uint8]  # annotated copy, same size
    tracks: tuple[TrackView, ...]  # one per face found, in detection order
    events: tuple[RecognitionEvent, ...]  # identity first decided or changed in this frame
    timings_ms: Mapping[str, float]  # detect, recognize, annotate, total
    number: int  # the frame's place in the stream, from 0, in the order it came in


class RateMeter:
    """Events per second from their times, smoothed.

    It smooths the interval, not its inverse: two frames in flight together can
    finish a millisecond apart, and averaging 1/interval would swing to a thousand.
    """

    def __init__(self, smoothing: float = FPS_SMOOTHING) -> None:
        self.smoothing = smoothing
        self._last: float | None = None
        self._interval: float | None = None

    def tick(self, now: float) -> float:
        """Record an event at ``now`` (seconds); the rate so far (0 until two)."""
        if self._last is not None:
            interval = now - self._last
            if self._interval is None:
                self._interval = interval
            else:
                self._interval += self.smoothing * (interval - self._interval)
        self._last = now
        return 1.0 / self._interval if self._interval else 0.0


class StreamPipeline:
    """The pipeline of one stream; made by ``Engine.pipeline()``. ``overlay`` may be
    replaced at any time (the webcam window toggles it)."""

    def __init__(self, engine: PipelineEngine, stream_id: str, *, overlay: Overlay) -> None:
        self.engine = engine
        self.stream_id = stream_id
        self.overlay = overlay
        self.frames = 0  # frames done
        self._received = 0  # frames given to `process`
        self.fps = 0.0  # frames finished per second, smoothed
        self._tracker = Tracker(engine.tracking)
        self._model: ActiveModel | None = None
        self._model_set = False
        self._turn: asyncio.Future[None] | None = None
        self._rate = RateMeter()
        self._closed = False

    async def process(self, frame: NDArray[np.uint8]) -> FrameResult:
        """Detect, track, recognise and annotate one BGR frame [H, W, 3].

        Raises `ClosedError` when the pipeline or its engine is closed."""
        if self._closed:
            raise ClosedError(f"the pipeline of stream {self.stream_id} is closed")
        start = time.perf_counter()
        number, self._received = self._received, self._received + 1
        # Take the turn before detecting: detections of overlapping calls may finish in
        # either order, but tracking must see the frames in the order they came.
        previous, mine = self._turn, asyncio.get_running_loop().create_future()
        self._turn = mine
        try:
            faces, quality, signature = await self.engine.run_cpu(self.engine.detect, frame)
            detected = time.perf_counter()
            if previous is not None:
                await asyncio.shield(previous)
            self._check_open()
            changes, track_ids, recognize_ms = await self._track(frame, faces, quality, signature)
            views = self._tracker.views(track_ids)
        finally:
            if previous is None or previous.done():
                _release(mine)
            else:  # cancelled while waiting: the next frame still waits for the previous
                previous.add_done_callback(lambda _: _release(mine))
        annotating = time.perf_counter()
        now = time.monotonic()
        self.fps = self._rate.tick(now)
        draw = functools.partial(annotate_frame, overlay=self.overlay, fps=self.fps)
        annotated = await self.engine.run_cpu(draw, frame, views, self.engine.fonts)
        end = time.perf_counter()
        self.frames += 1
        timings = {
            "detect": (detected - start) * 1000.0,
            "recognize": recognize_ms,
            "annotate": (end - annotating) * 1000.0,
            "total": (end - start) * 1000.0,
        }
        return FrameResult(
            annotated, views, self._events(changes, number), types.MappingProxyType(timings),
            number,
        )

    def close(self) -> None:
        """Forget this stream's tracks. Safe to call twice."""
        self._closed = True
        self._tracker.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the pipeline of stream {self.stream_id} is closed")

    def _use(self, model: ActiveModel | None) -> list[IdentityChange]:
        """Score tracks with ``model`` from now on, if it is not the one in use."""
        if self._model_set and model is self._model:
            return []
        self._model, self._model_set = model, True
        if model is None:
            return list(self._tracker.set_model(None, None))
        return list(self._tracker.set_model(model.gallery, model.backbone))

    async def _track(
        self,
        frame: NDArray[np.uint8],
        faces: Faces,
        quality: NDArray[np.float32],
        signature: NDArray[np.float32],
    ) -> tuple[list[IdentityChange], NDArray[np.int64], float]:
        model = self.engine.recognizer.model
        changes = self._use(model)
        update = self._tracker.update(faces, quality, signature)
        changes.extend(update.changes)
        picked = np.flatnonzero(update.recognize)
        if model is None or len(picked) == 0:
            return changes, update.track_ids, 0.0
        start = time.perf_counter()
        chips = await self.engine.run_cpu(model.front_end.chips, frame, faces.landmarks[picked])
        self._check_open()
        result = await self.engine.recognizer.submit(chips, model)
        self._check_open()
        ids = update.track_ids[picked]
        if result is None:
            self._tracker.retry(ids)
        else:
            changes.extend(self._use(result.model))
            changes.extend(self._tracker.observe(ids, result.embeddings, quality[picked]))
        return changes, update.track_ids, (time.perf_counter() - start) * 1000.0

    def _events(
        self, changes: list[IdentityChange], number: int
    ) -> tuple[RecognitionEvent, ...]:
        """One event per track whose identity changed (the last change wins)."""
        latest = {change.track_id: change for change in changes}
        stamp = time.time()
        return tuple(
            RecognitionEvent(
                time=stamp,
                stream=self.stream_id,
                frame=number,
                track=change.track_id,
                name=change.name if change.name is not None else UNKNOWN,
                confidence=change.confidence,
                box=(
                    round(change.xyxy[0]),
                    round(change.xyxy[1]),
                    round(change.xyxy[2]),
                    round(change.xyxy[3]),
                ),
            )
            for change in latest.values()
        )


def _release(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)
