"""The source loop: frames from a `FrameSource` through a `StreamPipeline`, in order.

`run_source` keeps up to ``in_flight`` frames in the pipeline (the next frame's
detection overlaps this one's recognition and annotation) and takes a new frame from
the source only when there is room, so with a live source the frame it takes is the
newest one: when the pipeline is slower than the source, frames are skipped at the
source's mailbox, never queued, and a frame's latency stays bounded. Results reach
``on_result`` in source order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import queue
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.text import counted
from streamer.errors import OutputError
from streamer.live.pipeline import FrameResult, StreamPipeline
from streamer.live.sources import FrameSource, SourceFrame

__all__ = ["VIDEO_EXTENSIONS", "RunSummary", "VideoFileSink", "check_video_output", "run_source"]

# what this OpenCV build writes with mp4v and reads back; others fail or, like .jpg,
# silently write something else (an image sequence)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")

ResultCallback = Callable[[SourceFrame, FrameResult, float], Awaitable[None] | None]


@dataclass(frozen=True)
class RunSummary:
    frames: int
    seconds: float
    dropped: int  # frames the source skipped because the pipeline was busy
    faces_seen: int  # distinct tracks
    names_seen: tuple[str, ...] = field(default=())
    ended: bool = False  # the source ran out of frames (rather than being stopped)
    signal: int = 0  # the signal that stopped the run (0: none)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        names = ", ".join(self.names_seen) or "none"
        return (
            f"{counted(self.frames, 'frame')} in {self.seconds:.1f} s ({self.fps:.1f} fps), "
            f"{self.dropped} skipped, {counted(self.faces_seen, 'face')} seen, names seen: {names}"
        )


async def run_source(
    source: FrameSource,
    pipeline: StreamPipeline,
    on_result: ResultCallback | None = None,
    *,
    in_flight: int = 2,
    stop: asyncio.Event | None = None,
) -> RunSummary:
    """Process ``source`` until it ends or ``stop`` is set; ``on_result(frame,
    result, done)`` gets every result in order (``done``: time.monotonic() when the
    pipeline finished it). Closes neither the source nor the pipeline."""
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    loop = asyncio.get_running_loop()
    room = asyncio.Semaphore(in_flight)
    started: asyncio.Queue[tuple[SourceFrame, asyncio.Task[tuple[FrameResult, float]]] | None]
    started = asyncio.Queue()  # bounded by `room`
    stop = stop or asyncio.Event()
    tracks: set[int] = set()
    names: set[str] = set()
    frames = 0
    ended = False

    async def timed(image: NDArray[np.uint8]) -> tuple[FrameResult, float]:
        result = await pipeline.process(image)
        return result, time.monotonic()

    async def feed() -> None:
        nonlocal ended
        try:
            while not stop.is_set():
                await room.acquire()
                frame = await loop.run_in_executor(None, source.read)
                if frame is None or stop.is_set():
                    ended = frame is None and not stop.is_set()
                    break
                await started.put((frame, asyncio.create_task(timed(frame.image))))
        finally:
            started.put_nowait(None)

    begin = time.monotonic()
    feeder = asyncio.create_task(feed())
    try:
        while (item := await started.get()) is not None:
            frame, task = item
            result, done = await task
            room.release()
            frames += 1
            for view in result.tracks:
                tracks.add(view.track_id)
                if view.name is not None:
                    names.add(view.name)
            if on_result is not None:
                returned = on_result(frame, result, done)
                if inspect.isawaitable(returned):
                    await returned
    finally:
        stop.set()
        if not feeder.done():
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        while not started.empty():
            if (item := started.get_nowait()) is not None:
                item[1].cancel()
    return RunSummary(
        frames, time.monotonic() - begin, source.dropped, len(tracks), tuple(sorted(names)),
        ended,
    )


def check_video_output(path: Path) -> None:
    """Raise `OutputError` saying why a video cannot be written at ``path`` (checked
    before anything is opened: ``cv2.VideoWriter`` only says that it failed)."""
    path = Path(path)
    problem = f"cannot write video {path}"
    if path.is_dir():
        raise OutputError(
            f"{problem}: it is a directory; give a file name such as {path / 'out.mp4'}"
        )
    parent = path.parent  # "." for a bare name
    if not parent.exists():
        raise OutputError(f"{problem}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{problem}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{problem}: the directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{problem}: the file exists and is not writable")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        kind = f"'{path.suffix}'" if path.suffix else "a name without an extension"
        raise OutputError(
            f"{problem}: {kind} is not a video format facestream can write; "
            f"use one of {', '.join(VIDEO_EXTENSIONS)}"
        )
    # The permission bits do not bind root, and say nothing of a read-only mount or
    # a pseudo filesystem: opening the file is the only test that asks the kernel.
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as error:
        raise OutputError(f"{problem}: cannot create it ({error.strerror})") from None
    if not existed:
        path.unlink()


class VideoFileSink:
    """Writes frames to a video file from its own thread (a bounded queue: the
    caller waits when the encoder falls behind; an output file loses nothing)."""

    def __init__(
        self, path: Path, fps: float, size: tuple[int, int], *, fourcc: str = "mp4v"
    ) -> None:
        self.path = Path(path)
        check_video_output(self.path)
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise OutputError(f"cannot write video {self.path} ({fourcc}, {size[0]}x{size[1]})")
        self.size = size
        self.written = 0
        self._queue: queue.Queue[NDArray[np.uint8] | None] = queue.Queue(maxsize=8)
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="facestream-video-writer", daemon=True
        )
        self._thread.start()

    def write(self, frame: NDArray[np.uint8]) -> None:
        if frame.shape[1::-1] != self.size:
            frame = cv2.resize(frame, self.size)
        self._queue.put(frame)

    def close(self) -> None:
        """Flush and finish the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._writer.release()
        # cv2.VideoWriter reports no write error: on a full disk it leaves a file
        # without its index (an mp4 without its moov), which nothing can play
        if self.written and not _readable(self.path):
            free = shutil.disk_usage(self.path.parent).free
            raise OutputError(
                f"cannot write video {self.path}: the file written cannot be read back "
                f"({free // 1024} KiB free on its disk; is it full?)"
            )

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            self._writer.write(frame)
            self.written += 1


def _readable(path: Path) -> bool:
    capture = cv2.VideoCapture(str(path))
    try:
        return bool(capture.isOpened() and capture.read()[0])
    finally:
        capture.release()
