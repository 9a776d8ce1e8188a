"""WebRTC peers: a phone's camera in, the annotated video and its events back.

One ``PeerSession`` per phone owns an ``RTCPeerConnection``, a ``RecognitionTrack``
(the phone's video through the stream's pipeline, sent back on the same
transceiver) and the ``events`` data channel the page opens, on which every
``RecognitionEvent`` goes out as its JSON.

Besides the pipeline's events (a track's identity decided or changed), the channel
restates every visible track's identity at most once per ``PRESENCE_INTERVAL``, as
a ``RecognitionEvent`` built from its ``TrackView`` (the same JSON), followed by
``{"type": "presence", "stream": ID, "frame": N, "tracks": [track ids]}``: the tracks
in view, none left out, so the page drops a face that left the picture (or a track
a scene cut ended) within a second, and a name it knew under an old name at once.

``PeerManager`` turns offers into answers, rejects what it cannot serve with an
``OfferError`` (``streamer.web.signalling``: an HTTP status and a reason) and releases
a peer that is gone: on connection failure or close, when no frame has arrived for
``stall_timeout`` seconds (aiortc has no "disconnected" state and ICE consent
takes ~30 s to fail), or when a new peer never sends its first frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import cv2
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

from facecore.cpus import usable_cpus
from facecore.text import counted
from streamer import metrics
from streamer.live.events import UNKNOWN, RecognitionEvent
from streamer.web.jitter import use_marker_jitter_buffer
from streamer.web.signalling import OfferError, check_offer

if TYPE_CHECKING:
    from streamer.live.engine import Engine
    from streamer.live.pipeline import FrameResult, StreamPipeline

__all__ = [
    "EVENTS_CHANNEL",
    "PeerManager",
    "PeerSession",
    "RecognitionTrack",
]

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
MAX_CHANNEL_BUFFER = 256 * 1024  # bytes queued on the data channel before events drop
PRESENCE_INTERVAL = 1.0  # seconds between restatements of the visible tracks
FRESH_WAIT = 0.005  # a wait for a frame slot longer than this may have brought a newer frame
NEWER_FRAME_TIMEOUT = 0.001  # how long to look for it (it is there already, or not)


def _to_bgr(frame: VideoFrame) -> NDArray[np.uint8]:
    return frame.to_ndarray(format="bgr24")


def _to_video_frame(image: NDArray[np.uint8], like: VideoFrame) -> VideoFrame:
    """The encoder's yuv420p, converted by OpenCV (4x faster than the encoder's own
    swscale conversion from BGR, same BT.601 video range)."""
    height, width = image.shape[:2]
    if width % 2 == 0 and height % 2 == 0:
        i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        out = VideoFrame.from_ndarray(i420, format="yuv420p")
    else:
        out = VideoFrame.from_ndarray(image, format="bgr24")
    out.pts = like.pts
    out.time_base = like.time_base
    return out


class RecognitionTrack(MediaStreamTrack):
    """The phone's video through its pipeline: the newest frame wins.

    ``recv()`` awaits a frame from ``MediaRelay().subscribe(source, buffered=False)``
    (which keeps only the newest), then one of the process-wide frame slots
    (``gate``, FIFO); if others' frames ran meanwhile, it takes the newer frame that
    arrived during the wait. So past capacity a frame never queues behind other
    streams' work (it is replaced instead: latency stays flat, frames drop), the
    capacity is shared evenly, and a phone that sends nothing holds no slot. The
    frame is converted off the event loop, the pipeline awaited, and the annotated
    frame returned with the source's pts/time_base. ``on_result`` gets every
    ``FrameResult``. ``stop()`` (safe twice) unsubscribes and closes the pipeline.
    """

    kind = "video"

    def __init__(
        self,
        source: MediaStreamTrack,
        pipeline: StreamPipeline,
        on_result: Callable[[FrameResult], None],
        gate: asyncio.Semaphore,
    ) -> None:
        super().__init__()
        self._gate = gate
        self._relay = MediaRelay()
        self._source: MediaStreamTrack | None = self._relay.subscribe(source, buffered=False)
        self._pipeline: StreamPipeline | None = pipeline
        self._on_result = on_result
        # called on the loop with each frame [H, W, 3] BGR before the pipeline (Enroll mode)
        self.frame_listeners: list[Callable[[NDArray[np.uint8]], None]] = []
        self.frames = 0  # frames taken into the pipeline
        self._waiting_since: float | None = None

    def video_gap(self) -> float:
        """Seconds spent so far waiting for the phone's next frame (0: not waiting)."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    async def recv(self) -> VideoFrame:
        source, pipeline = self._source, self._pipeline
        if source is None or pipeline is None:
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        self._waiting_since = time.monotonic()
        try:
            frame = await source.recv()
        finally:
            self._waiting_since = None
        queued = loop.time()
        async with self._gate:
            if loop.time() - queued > FRESH_WAIT:  # others' frames ran: take a newer one
                with contextlib.suppress(TimeoutError):
                    frame = await asyncio.wait_for(source.recv(), NEWER_FRAME_TIMEOUT)
                    metrics.FRAMES.labels("dropped").inc()
            assert isinstance(frame, VideoFrame)
            self.frames += 1
            metrics.FRAMES.labels("in").inc()
            converting = time.perf_counter()
            image = await loop.run_in_executor(None, _to_bgr, frame)
            metrics.STAGE_SECONDS.labels("convert_in").observe(time.perf_counter() - converting)
            for listener in self.frame_listeners:
                listener(image)
            try:
                result = await pipeline.process(image)
            except Exception as exc:
                if self.readyState == "live":
                    log.exception("pipeline failed; ending this stream")
                raise MediaStreamError from exc
        if self.readyState != "live":
            raise MediaStreamError
        self._on_result(result)
        for stage, ms in result.timings_ms.items():
            metrics.STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
        converting = time.perf_counter()
        out = await loop.run_in_executor(None, partial(_to_video_frame, result.frame, frame))
        metrics.STAGE_SECONDS.labels("convert_out").observe(time.perf_counter() - converting)
        metrics.FRAMES.labels("out").inc()
        return out

    def stop(self) -> None:
        super().stop()
        if self._source is not None:
            self._source.stop()
            self._source = None
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            pipeline.close()


class PeerSession:
    """One connected phone. ``close()`` is safe to call twice, from anywhere on
    the loop (including its own callbacks), and releases everything it owns."""

    def __init__(
        self,
        session_id: str,
        pc: RTCPeerConnection,
        pipeline: StreamPipeline,
        *,
        on_closed: Callable[[PeerSession], None],
        gate: asyncio.Semaphore,
        stall_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.id = session_id
        self._gate = gate
        self.pc = pc
        self.created = time.monotonic()
        self.track: RecognitionTrack | None = None
        self.channel: RTCDataChannel | None = None
        self.events_sent = 0
        self.events_dropped = 0
        self._presence_sent = 0.0
        self._pipeline: StreamPipeline | None = pipeline
        self._blackhole = MediaBlackhole()
        self._on_closed = on_closed
        self._stall_timeout = stall_timeout
        self._connect_timeout = connect_timeout
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.track is None and self._pipeline is not None:
            for receiver in self.pc.getReceivers():
                if receiver.track is track:
                    use_marker_jitter_buffer(receiver)
            pipeline, self._pipeline = self._pipeline, None
            self.track = RecognitionTrack(track, pipeline, self._send_events, self._gate)
            self.pc.addTrack(self.track)
        else:  # audio, or a second camera: consume it so its queue cannot grow
            self._blackhole.addTrack(track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == EVENTS_CHANNEL:
            self.channel = channel

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            log.info("peer %s: connection %s", self.id, self.pc.connectionState)
            self.request_close()

    def _send_events(self, result: FrameResult) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        events = list(result.events)
        messages: list[str] = []
        now = time.monotonic()
        if now - self._presence_sent >= PRESENCE_INTERVAL:
            self._presence_sent = now
            changed = {event.track for event in events}
            events.extend(
                RecognitionEvent(
                    time=time.time(),
                    stream=self.id,
                    frame=result.number,
                    track=view.track_id,
                    name=view.name if view.name is not None else UNKNOWN,
                    confidence=view.confidence,
                    box=(
                        round(view.xyxy[0]),
                        round(view.xyxy[1]),
                        round(view.xyxy[2]),
                        round(view.xyxy[3]),
                    ),
                )
                for view in result.tracks
                if view.track_id not in changed
            )
            presence = {"type": "presence", "stream": self.id, "frame": result.number,
                        "tracks": [view.track_id for view in result.tracks]}
            messages.append(json.dumps(presence))
        for text in [*(event.to_json() for event in events), *messages]:
            if channel.bufferedAmount > MAX_CHANNEL_BUFFER:
                self.events_dropped += 1
                continue
            channel.send(text)
            self.events_sent += 1

    async def start(self) -> None:
        """Begin consuming side tracks and watching for a vanished peer."""
        await self._blackhole.start()
        self._watchdog = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        interval = min(1.0, self._stall_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            track = self.track
            if track is not None and track.frames:
                if track.video_gap() > self._stall_timeout:
                    log.info("peer %s: no video for %.0f s, closing", self.id, self._stall_timeout)
                    break
            elif now - self.created > self._connect_timeout:
                log.info("peer %s: no video within %.0f s, closing", self.id, self._connect_timeout)
                break
        self.request_close()

    def request_close(self) -> asyncio.Task[None]:
        """Start closing (once) and return the task that does it."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        return self._closing

    async def close(self) -> None:
        await asyncio.shield(self.request_close())

    async def _close(self) -> None:
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        try:
            if self.track is not None:
                self.track.stop()
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None
            await self._blackhole.stop()
            await self.pc.close()
        finally:
            self._on_closed(self)
            frames = self.track.frames if self.track else 0
            log.info("peer %s: closed (%s)", self.id, counted(frames, "frame"))


class PeerManager:
    """Answers offers (at most ``max_sessions`` peers at a time) and closes peers.
    At most ``frame_slots`` frames (default: one per usable CPU) are in the
    pipelines at once, whatever the number of peers."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_sessions: int,
        ice_servers: Sequence[RTCIceServer] = (),
        negotiate_timeout: float = 10.0,
        stall_timeout: float = 5.0,
        connect_timeout: float = 20.0,
        frame_slots: int | None = None,
    ) -> None:
        self._engine = engine
        # frames in the pipelines at once, across every peer (default: one per usable CPU)
        self._gate = asyncio.Semaphore(frame_slots or usable_cpus())
        self._max_sessions = max_sessions
        self._ice_servers = list(ice_servers)
        self._negotiate_timeout = negotiate_timeout
        self._stall_timeout = stall_timeout
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, PeerSession] = {}  # answered or being negotiated
        self._closed = False
        # called with each new session, before negotiation (e.g. the Enroll mode's wiring)
        self.session_hooks: list[Callable[[PeerSession], None]] = []

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    @property
    def sessions(self) -> tuple[PeerSession, ...]:
        return tuple(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Answer ``offer`` (after ``check_offer``); raises ``OfferError``."""
        check_offer(offer)
        if self._closed:
            raise OfferError(503, "the server is shutting down")
        if len(self) >= self._max_sessions:
            raise OfferError(
                503, f"all {self._max_sessions} sessions are in use; try again when one ends"
            )
        session = self._open_session()
        self._sessions[session.id] = session  # before any await: the limit holds
        metrics.ACTIVE_SESSIONS.set(len(self._sessions))
        try:
            answer = await asyncio.wait_for(
                self._negotiate(session, offer), self._negotiate_timeout
            )
        except BaseException as exc:
            await session.close()
            if isinstance(exc, TimeoutError):
                raise OfferError(
                    503,
                    f"ICE gathering did not finish in {self._negotiate_timeout:g} s "
                    "(are the server.ice_servers reachable?)",
                ) from exc
            if isinstance(exc, InvalidStateError):  # closed meanwhile: shutting down
                raise OfferError(503, "the server is shutting down") from exc
            raise
        await session.start()
        log.info("peer %s: answered (%d of %d sessions)", session.id, len(self), self._max_sessions)
        return answer

    def _open_session(self) -> PeerSession:
        session_id = "phone-" + secrets.token_hex(4)
        pipeline = self._engine.pipeline(session_id)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))
        session = PeerSession(
            session_id,
            pc,
            pipeline,
            on_closed=self._forget,
            gate=self._gate,
            stall_timeout=self._stall_timeout,
            connect_timeout=self._connect_timeout,
        )
        for hook in self.session_hooks:
            hook(session)
        return session

    @staticmethod
    async def _negotiate(
        session: PeerSession, offer: RTCSessionDescription
    ) -> RTCSessionDescription:
        try:
            await session.pc.setRemoteDescription(offer)
        except OperationError as exc:
            raise OfferError(
                415, f"no codec in common: {exc} (the server takes VP8 or H264)"
            ) from exc
        except ValueError as exc:
            raise OfferError(400, f"the offer is not usable: {exc}") from exc
        if session.track is None:
            raise OfferError(400, "the offer sends no video the server can receive")
        await session.pc.setLocalDescription(await session.pc.createAnswer())
        local = session.pc.localDescription
        return RTCSessionDescription(sdp=local.sdp, type=local.type)

    def _forget(self, session: PeerSession) -> None:
        self._sessions.pop(session.id, None)
        metrics.ACTIVE_SESSIONS.set(len(self._sessions))

    async def close(self) -> None:
        """Close every peer and refuse new offers; safe to call twice."""
        self._closed = True
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
