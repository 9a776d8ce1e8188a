"""WebRTC peers: a phone's camera in, the annotated video and its events back.

One ``PeerSession`` per phone owns an ``RTCPeerConnection``, a ``RecognitionTrack``
(the phone's video through the stream's pipeline, sent back on the same
transceiver) and the ``events`` data channel the page opens, on which every
``RecognitionEvent`` goes out as its JSON.

``PeerManager`` turns offers into answers, rejects what it cannot serve with an
``OfferError`` (an HTTP status and a reason) and releases a peer that is gone:
on connection failure or close, when no frame has arrived for
``stall_timeout`` seconds (aiortc has no "disconnected" state and ICE consent
takes ~30 s to fail), or when a new peer never sends its first frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

from facecore.errors import ConfigError

if TYPE_CHECKING:
    from streamer.engine import Engine
    from streamer.events import RecognitionEvent
    from streamer.pipeline import FrameResult, StreamPipeline

__all__ = [
    "EVENTS_CHANNEL",
    "OfferError",
    "PeerManager",
    "PeerSession",
    "RecognitionTrack",
    "check_offer",
    "parse_ice_servers",
]

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
ACCEPTED_VIDEO_CODECS = frozenset({"video/vp8", "video/h264"})
MAX_CHANNEL_BUFFER = 256 * 1024  # bytes queued on the data channel before events drop
_ICE_SERVER = re.compile(
    r"(?P<scheme>stuns?|turns?):(?:(?P<user>[^:@/]+):(?P<password>[^@/]*)@)?"
    r"(?P<host>[^:@/?]+)(?::(?P<port>\d{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)


class OfferError(Exception):
    """An offer the server will not answer: ``status`` is the HTTP status to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_ice_servers(entries: Iterable[str]) -> list[RTCIceServer]:
    """``stun:host:port`` and ``turn:user:password@host:port[?transport=tcp]``
    strings (``settings.server.ice_servers``) as ``RTCIceServer`` records."""
    servers = []
    for entry in entries:
        match = _ICE_SERVER.fullmatch(entry.strip())
        if match is None:
            raise ConfigError(
                "expected stun:HOST[:PORT] or turn:USER:PASSWORD@HOST[:PORT][?transport=udp|tcp]",
                key="server.ice_servers",
                value=entry,
            )
        scheme, user = match["scheme"], match["user"]
        if scheme.startswith("turn") != (user is not None):
            reason = "a TURN server needs USER:PASSWORD@" if user is None else "STUN takes no credentials"
            raise ConfigError(reason, key="server.ice_servers", value=entry)
        url = f"{scheme}:{match['host']}" + (f":{match['port']}" if match["port"] else "")
        if match["transport"]:
            url += f"?transport={match['transport']}"
        servers.append(RTCIceServer(urls=url, username=user, credential=match["password"]))
    return servers


def check_offer(description: RTCSessionDescription) -> None:
    """Reject, before any resource is made, an offer that is not SDP, sends no
    video, or offers no video codec the server decodes (VP8, H.264)."""
    if description.type != "offer":
        raise OfferError(400, f'expected "type": "offer", got {description.type!r}')
    try:
        parsed = aiortc_sdp.SessionDescription.parse(description.sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise OfferError(400, f"the SDP cannot be parsed: {type(exc).__name__} {exc}") from exc
    if not parsed.media:
        raise OfferError(400, "the SDP has no media sections")
    videos = [m for m in parsed.media if m.kind == "video" and m.direction in ("sendrecv", "sendonly")]
    if not videos:
        raise OfferError(400, "the offer sends no video (add a camera track, direction sendrecv)")
    offered = {c.mimeType.lower() for c in videos[0].rtp.codecs}
    if not offered & ACCEPTED_VIDEO_CODECS:
        raise OfferError(
            415, f"no video codec the server can take: offered {sorted(offered)}, need VP8 or H264"
        )


def _to_bgr(frame: VideoFrame) -> NDArray[np.uint8]:
    return frame.to_ndarray(format="bgr24")


def _to_video_frame(image: NDArray[np.uint8], like: VideoFrame) -> VideoFrame:
    out = VideoFrame.from_ndarray(image, format="bgr24")
    out.pts = like.pts
    out.time_base = like.time_base
    return out


class RecognitionTrack(MediaStreamTrack):
    """The phone's video through its pipeline: the newest frame wins.

    ``recv()`` takes the newest frame from ``MediaRelay().subscribe(source,
    buffered=False)``, converts it off the event loop, awaits the pipeline and
    returns the annotated frame with the source's pts/time_base. ``on_result`` is
    called with every ``FrameResult``. ``stop()`` (safe twice) unsubscribes and
    closes the pipeline.
    """

    kind = "video"

    def __init__(
        self,
        source: MediaStreamTrack,
        pipeline: StreamPipeline,
        on_result: Callable[[FrameResult], None],
    ) -> None:
        super().__init__()
        self._relay = MediaRelay()
        self._source: MediaStreamTrack | None = self._relay.subscribe(source, buffered=False)
        self._pipeline: StreamPipeline | None = pipeline
        self._on_result = on_result
        self.frames = 0  # frames received from the phone
        self.last_frame_at = time.monotonic()

    async def recv(self) -> VideoFrame:
        source, pipeline = self._source, self._pipeline
        if source is None or pipeline is None:
            raise MediaStreamError
        frame = await source.recv()
        assert isinstance(frame, VideoFrame)
        self.frames += 1
        self.last_frame_at = time.monotonic()
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(None, _to_bgr, frame)
        try:
            result = await pipeline.process(image)
        except Exception as exc:
            if self.readyState == "live":
                log.exception("pipeline failed; ending this stream")
            raise MediaStreamError from exc
        if self.readyState != "live":
            raise MediaStreamError
        self._on_result(result)
        return await loop.run_in_executor(None, partial(_to_video_frame, result.frame, frame))

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
        stall_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.id = session_id
        self.pc = pc
        self.created = time.monotonic()
        self.track: RecognitionTrack | None = None
        self.channel: RTCDataChannel | None = None
        self.events_sent = 0
        self.events_dropped = 0
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
            pipeline, self._pipeline = self._pipeline, None
            self.track = RecognitionTrack(track, pipeline, self._send_events)
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
        events: Sequence[RecognitionEvent] = result.events
        channel = self.channel
        if not events or channel is None or channel.readyState != "open":
            return
        for event in events:
            if channel.bufferedAmount > MAX_CHANNEL_BUFFER:
                self.events_dropped += 1
                continue
            channel.send(event.to_json())
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
                if now - track.last_frame_at > self._stall_timeout:
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
            log.info("peer %s: closed (%d frames)", self.id, self.track.frames if self.track else 0)


class PeerManager:
    """Answers offers (at most ``max_sessions`` peers at a time) and closes peers."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_sessions: int,
        ice_servers: Sequence[RTCIceServer] = (),
        negotiate_timeout: float = 10.0,
        stall_timeout: float = 5.0,
        connect_timeout: float = 20.0,
    ) -> None:
        self._engine = engine
        self._max_sessions = max_sessions
        self._ice_servers = list(ice_servers)
        self._negotiate_timeout = negotiate_timeout
        self._stall_timeout = stall_timeout
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, PeerSession] = {}
        self._reserved = 0  # offers being negotiated, counted against the limit
        self._closed = False

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    @property
    def sessions(self) -> tuple[PeerSession, ...]:
        return tuple(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions) + self._reserved

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Answer ``offer`` (after ``check_offer``); raises ``OfferError``."""
        check_offer(offer)
        if self._closed:
            raise OfferError(503, "the server is shutting down")
        if len(self) >= self._max_sessions:
            raise OfferError(
                503, f"all {self._max_sessions} sessions are in use; try again when one ends"
            )
        self._reserved += 1
        try:
            session = self._open_session()
        finally:
            self._reserved -= 1
        self._sessions[session.id] = session
        try:
            answer = await asyncio.wait_for(self._negotiate(session, offer), self._negotiate_timeout)
        except BaseException as exc:
            await session.close()
            if isinstance(exc, TimeoutError):
                raise OfferError(
                    503, f"ICE gathering did not finish in {self._negotiate_timeout:g} s "
                    "(are the server.ice_servers reachable?)",
                ) from exc
            raise
        await session.start()
        log.info("peer %s: answered (%d of %d sessions)", session.id, len(self), self._max_sessions)
        return answer

    def _open_session(self) -> PeerSession:
        session_id = "phone-" + secrets.token_hex(4)
        pipeline = self._engine.pipeline(session_id)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))
        return PeerSession(
            session_id,
            pc,
            pipeline,
            on_closed=self._forget,
            stall_timeout=self._stall_timeout,
            connect_timeout=self._connect_timeout,
        )

    @staticmethod
    async def _negotiate(session: PeerSession, offer: RTCSessionDescription) -> RTCSessionDescription:
        try:
            await session.pc.setRemoteDescription(offer)
        except OperationError as exc:
            raise OfferError(415, f"no codec in common: {exc} (the server takes VP8 or H264)") from exc
        except ValueError as exc:
            raise OfferError(400, f"the offer is not usable: {exc}") from exc
        if session.track is None:
            raise OfferError(400, "the offer sends no video the server can receive")
        await session.pc.setLocalDescription(await session.pc.createAnswer())
        local = session.pc.localDescription
        return RTCSessionDescription(sdp=local.sdp, type=local.type)

    def _forget(self, session: PeerSession) -> None:
        self._sessions.pop(session.id, None)

    async def close(self) -> None:
        """Close every peer and refuse new offers; safe to call twice."""
        self._closed = True
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
