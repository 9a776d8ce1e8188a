"""Frame sources: a webcam, a video file, a network stream, or frames pushed in.

Every source is a `FrameSource`: ``read()`` blocks for the next frame and returns
None once the source has ended. Frames pass through a one-slot mailbox
(`PushSource`): for a live source a new frame replaces one not yet taken (the newest
frame wins, the replaced one is counted in ``dropped``); a video file read as fast as
possible is lossless instead (its reader waits for the slot), unless it is paced at
its frame rate to stand in for a camera.

`CaptureSource` reads through ``cv2.VideoCapture`` in its own thread. A camera or
stream that cannot be opened raises `SourceError` naming it; one that stops
delivering frames is reopened with exponential backoff and resumes; a file that ends
ends the source (or starts again with ``loop``). A named pipe (``mkfifo``, another
program's video) is read as a file that can be read only once. A URL whose
container lists its frames (a video file served over HTTP) is read as a file: whole,
in order, ending at its end, not reopened from its start as a live stream would be.
Anything else that produces frames (the WebRTC track) feeds a `PushSource` with
``push()``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.errors import SourceError

__all__ = [
    "CaptureSource",
    "FrameSource",
    "PushSource",
    "SourceFrame",
    "SourceSpec",
    "open_source",
    "parse_source",
]

log = logging.getLogger(__name__)

SourceKind = Literal["camera", "file", "url"]
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_CREDENTIALS = re.compile(r"(?<=://)[^/@]*@")
NETWORK_TIMEOUT_MS = 5000
# what to send through a named pipe, which cannot seek: an MP4 is read from its index
PIPE_FORMATS = "through a named pipe, send a format that streams: MPEG-TS or Matroska, not MP4"
MAX_BAD_READS = 1000  # failed reads in a row before a file counts as ended


@dataclass(frozen=True)
class SourceFrame:
    image: NDArray[np.uint8]  # [H, W, 3] BGR
    index: int  # position in the source, from 0; a gap means frames were dropped
    captured: float  # time.monotonic() when the frame was read


class FrameSource(Protocol):
    """What the pipeline's source loop reads from."""

    description: str

    def read(self) -> SourceFrame | None:
        """The next frame (blocking); None once the source has ended or was closed."""
        ...

    @property
    def dropped(self) -> int:
        """Frames replaced before anyone read them."""
        ...

    def close(self) -> None: ...


class PushSource:
    """A one-slot mailbox that is a `FrameSource`: any thread ``push()``es frames in.

    ``lossless=False`` (live): a pushed frame replaces the one waiting, which counts
    as dropped. ``lossless=True``: ``push()`` waits until the waiting frame is taken.
    """

    def __init__(self, description: str = "pushed frames", *, lossless: bool = False) -> None:
        self.description = description
        self.lossless = lossless
        self._cond = threading.Condition()
        self._slot: SourceFrame | None = None
        self._next_index = 0
        self._dropped = 0
        self._ended = False

    @property
    def dropped(self) -> int:
        return self._dropped

    def push(self, image: NDArray[np.uint8], *, captured: float | None = None) -> bool:
        """Offer a frame; False when the source has ended (the frame is discarded).

        ``captured`` defaults to now (for a lossless source: when the slot frees)."""
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._slot is None or self._ended)
            if self._ended:
                return False
            if self._slot is not None:
                self._dropped += 1
            stamp = time.monotonic() if captured is None else captured
            self._slot = SourceFrame(image, self._next_index, stamp)
            self._next_index += 1
            self._cond.notify_all()
            return True

    def end(self) -> None:
        """No more frames: ``read()`` still hands out the waiting one, then None."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def read(self) -> SourceFrame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._ended)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """End the source and discard the waiting frame. Safe to call twice."""
        with self._cond:
            self._ended = True
            self._slot = None
            self._cond.notify_all()


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    target: int | str  # camera index, file path or URL

    @property
    def description(self) -> str:
        if self.kind == "camera":
            return f"camera {self.target} (/dev/video{self.target})"
        if self.kind == "url":
            return f"stream {_CREDENTIALS.sub('***@', str(self.target))}"
        return f"video file {self.target}"


def parse_source(text: str | int) -> SourceSpec:
    """``0`` -> camera 0; ``rtsp://...`` or ``http://...`` -> a stream; else a file.

    An empty ``text`` raises `SourceError` (as a path it would name the current folder)."""
    if isinstance(text, str) and not text.strip():
        raise SourceError("the source is empty: give a video file, a stream URL or a camera index")
    if isinstance(text, int) or str(text).strip().isdigit():
        return SourceSpec("camera", int(text))
    if _URL.match(text):
        return SourceSpec("url", text)
    return SourceSpec("file", str(Path(text).expanduser()))


def _recorded_seconds(path: Path) -> float | None:
    """How long the video in the file at ``path`` runs from its first frame, as its
    container's header says; None when the header does not say.

    The frame count OpenCV gives a WebM or Matroska file is an estimate, its duration
    times its frame rate, and their duration runs from 0 rather than from the first
    frame: a clip cut from a longer video (first frame at 0.83 s of 10 s) would count
    25 frames too many. A stream's own duration (MP4, AVI) already runs from its first
    frame."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                start = container.start_time or 0
                return (container.duration - start) / av.time_base
    except (av.FFmpegError, OSError):
        pass
    return None


def _is_pipe(spec: SourceSpec) -> bool:
    """Whether ``spec`` is a named pipe: readable once, from its start to its writer's
    end, so it is neither looped nor opened a second time to read its header."""
    try:
        return spec.kind == "file" and stat.S_ISFIFO(Path(str(spec.target)).stat().st_mode)
    except OSError:
        return False


def _no_video(spec: SourceSpec) -> str:
    """Why a file OpenCV cannot open is no video, when FFmpeg can tell: ": it holds
    only audio" (a song, a voice memo), or ""."""
    try:
        with av.open(str(spec.target)) as container:
            if not container.streams.video and container.streams.audio:
                return ": it holds only audio"
    except (av.FFmpegError, OSError):
        pass
    return ""


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a `CaptureSource` uses."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, NDArray[np.uint8] | None]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


def open_capture(spec: SourceSpec) -> Capture:
    """A ``cv2.VideoCapture`` for ``spec`` (not checked: see ``isOpened()``)."""
    if spec.kind == "camera":
        return cv2.VideoCapture(int(spec.target))
    if spec.kind == "url":
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            NETWORK_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            NETWORK_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(str(spec.target))


class CaptureSource:
    """Reads a camera, file or stream in a thread into a `PushSource`.

    ``realtime``: deliver a file (or a URL of one) at its own frame rate (``pace``
    frames per second when given), so it behaves like a camera: live, newest frame
    wins. ``loop``: start a file again at its end.
    ``retry_initial``/``retry_max``: backoff in seconds between attempts to reopen a
    camera or stream that stopped delivering.
    """

    def __init__(
        self,
        spec: SourceSpec,
        *,
        loop: bool = False,
        realtime: bool = False,
        pace: float | None = None,
        retry_initial: float = 0.25,
        retry_max: float = 5.0,
        opener: Callable[[SourceSpec], Capture] = open_capture,
    ) -> None:
        if pace is not None and pace <= 0:
            raise ValueError(f"pace must be a positive frame rate, got {pace}")
        self.spec = spec
        self.description = spec.description
        self.pipe = _is_pipe(spec)
        if loop and self.pipe:
            raise SourceError(f"{spec.description} is a named pipe: it cannot be played again")
        self.loop = loop
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._opener = opener
        self._capture = self._open_first()
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None  # what the source says, if sane
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        # a file, or a URL whose container lists its frames (a file served over
        # HTTP): it has an end; a camera or a live stream (a count of 0) has none
        self.finite = spec.kind == "file" or (spec.kind == "url" and count > 0)
        # frames in a file, as its index says (None for cameras and live streams)
        self.length = count if self.finite and count > 0 else None
        # seconds of video in a file (`_recorded_seconds`), and how far reading reached
        measured = spec.kind == "file" and not self.pipe
        self.recorded = _recorded_seconds(Path(str(spec.target))) if measured else None
        self.reached = 0.0
        self._frame_seconds = 1 / (self.fps or 30.0)  # how long a frame is shown
        paced = (realtime and self.finite) or pace is not None
        self.pace = (pace or self.fps or 30.0) if paced else None
        live = not self.finite or self.pace is not None
        self._mailbox = PushSource(self.description, lossless=not live)
        self._stop = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="facestream-source", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._mailbox.dropped

    def read(self) -> SourceFrame | None:
        return self._mailbox.read()

    def close(self) -> None:
        """Stop the reader thread and release the device. Safe to call twice."""
        self._stop.set()
        self._mailbox.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=NETWORK_TIMEOUT_MS / 1000 + 1)

    def _open_first(self) -> Capture:
        spec = self.spec
        if spec.kind == "file" and Path(str(spec.target)).is_dir():
            raise SourceError(f"{spec.target} is a directory, not a video file")
        if spec.kind == "file" and not Path(str(spec.target)).is_file() and not self.pipe:
            what = "is not a video file" if Path(str(spec.target)).exists() else "does not exist"
            raise SourceError(f"{spec.description} {what}")
        if spec.kind == "camera" and sys.platform == "linux" and not _device(spec).exists():
            raise SourceError(_camera_problem(spec))  # before OpenCV tries, and logs, each backend
        # a pipe opens once a program writes to it: waited for here, where Ctrl-C
        # interrupts the wait, not in OpenCV's open, which no signal interrupts
        held = os.open(str(spec.target), os.O_RDONLY) if self.pipe else None
        try:
            capture = self._opener(spec)
            opened = capture.isOpened()
        except cv2.error as exc:
            raise SourceError(f"{spec.description} cannot be opened: {exc}") from exc
        finally:
            if held is not None:
                os.close(held)
        if opened:
            return capture
        capture.release()
        if spec.kind == "camera":
            raise SourceError(_camera_problem(spec))
        if spec.kind == "url":
            raise SourceError(f"{spec.description} cannot be opened (no answer or no video stream)")
        if self.pipe:  # what it held is read: FFmpeg cannot look at it again
            raise SourceError(f"{spec.description} cannot be opened as a video: {PIPE_FORMATS}")
        raise SourceError(f"{spec.description} cannot be opened as a video{_no_video(spec)}")

    def _run(self) -> None:
        capture: Capture | None = self._capture
        period = 1.0 / self.pace if self.pace else 0.0
        due = time.monotonic()
        delay = self.retry_initial
        delivered = 0  # frames since the last (re)open
        bad_reads = 0  # failed reads in a row in a file
        try:
            while not self._stop.is_set():
                if capture is None:
                    capture = self._try_open()
                    delivered = 0
                    if capture is None:
                        if self.spec.kind == "file":
                            log.error("%s cannot be read again", self.description)
                            return
                        if self._stop.wait(delay):
                            return
                        delay = min(delay * 2.0, self.retry_max)
                        continue
                ok, image = capture.read()
                if not ok and self.spec.kind == "file" and bad_reads < MAX_BAD_READS:
                    # a damaged stretch of a file fails one read per packet, and frames
                    # follow it; at the end every read fails at once (no cost)
                    bad_reads += 1
                    continue
                if ok and bad_reads:
                    log.warning("%s: skipped %d undecodable packets before frame %d",
                                self.description, bad_reads, delivered)
                bad_reads = 0
                if ok and image is not None:
                    delay = self.retry_initial
                    delivered += 1
                    if self.recorded:  # the frame's time from the first, to its end
                        at = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                        self.reached = at + self._frame_seconds
                    if period:
                        if self._stop.wait(max(0.0, due - time.monotonic())):
                            return
                        due = max(due, time.monotonic() - period) + period
                    if not self._mailbox.push(image):
                        return
                    continue
                capture.release()
                capture = None
                if self.finite:
                    if self.loop and delivered:
                        continue  # start the file again
                    return
                log.warning("%s stopped delivering; retrying in %.2g s", self.description, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2.0, self.retry_max)
        finally:
            if capture is not None:
                capture.release()
            self._mailbox.end()

    def _try_open(self) -> Capture | None:
        """One attempt to open the source again; None when it fails."""
        try:
            capture = self._opener(self.spec)
            if capture.isOpened():
                if not self.finite:
                    self.reconnects += 1
                    log.info("%s is back", self.description)
                return capture
            capture.release()
        except cv2.error as exc:
            log.debug("reopening %s failed: %s", self.description, exc)
        return None


def _device(spec: SourceSpec) -> Path:
    return Path(f"/dev/video{spec.target}")


def _camera_problem(spec: SourceSpec) -> str:
    """Why the camera ``spec`` cannot be opened, naming its device and those present."""
    device = _device(spec)
    present = sorted(p.name for p in Path("/dev").glob("video*"))
    reason = "it is busy or not a capture device" if device.exists() else f"{device} does not exist"
    return (
        f"{spec.description} cannot be opened: {reason} "
        f"(video devices present: {', '.join(present) or 'none'})"
    )


def open_source(text: str | int, *, loop: bool = False, realtime: bool = False) -> CaptureSource:
    """The source named by a command line: a camera index, a file or a URL.

    ``realtime``: pace a file at its own frame rate, newest frame wins (as a camera);
    a camera or a live stream has its own pace.
    """
    return CaptureSource(parse_source(text), loop=loop, realtime=realtime)
