"""Helpers for the enrollment tests: frames of the shared clip, a camera-like track
that loops them, and a real aiortc "phone" with the page's ``events`` channel.

Not a test module (pytest collects only ``test_*.py``); the test files import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import platformdirs
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

from facecore.config import Settings, load_settings
from facecore.registry import MODELS, model_cache_dir, model_path, recorded_checksum_matches


def enrollment_settings(shared_dir: Path, state_dir: Path) -> Settings:
    """Settings with YuNet from the shared models folder and the dlib ResNet in the
    user's cache, where `facestream models prepare` puts it: it is converted there
    when missing (once per machine, about 15 s)."""
    cache = platformdirs.user_cache_path("facestream")
    settings = load_settings(
        {"state_dir": str(state_dir), "cache_dir": str(cache),
         "models_dir": str(shared_dir / "models")},
        {},
    )
    converted = model_cache_dir(settings) / MODELS["dlib_resnet_v1"].filename
    if not recorded_checksum_matches(converted):  # missing, damaged, or never recorded
        from trainer.dlib.export import prepare_dlib_resnet

        dat = model_path(settings, "dlib_resnet_v1_dat", download=False)
        prepare_dlib_resnet(dat, model_cache_dir(settings))
    from trainer.dlib.landmarks import prepare_landmark_model

    prepare_landmark_model(settings, download=False)
    return settings


# the clip's close-ups of Lin-Manuel Miranda on stage: one face in every frame
LIN_FRAMES = range(84, 212)
# the part of those in which he faces the camera: every frame scores at least 0.946
# against his shared photo with the dlib ResNet (his turned views score down to 0.92)
LIN_FACING = range(144, 187)


def blank_png(side: int) -> bytes:
    """A real, all-black PNG of side x side pixels (1 bit each), written row by row so
    that a huge one (30000 x 30000: 900 MP in 110 kB) takes no memory to make."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    idat = b"".join(pixels.compress(row) for _ in range(side)) + pixels.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def clip_frames(clip: Path, frames: range) -> list[NDArray[np.uint8]]:
    """The BGR frames ``frames`` of a video file."""
    capture = cv2.VideoCapture(str(clip))
    kept = []
    index = 0
    while index < frames.stop:
        ok, frame = capture.read()
        if not ok:
            break
        if index in frames:
            kept.append(frame)
        index += 1
    capture.release()
    if len(kept) != len(frames):
        raise AssertionError(f"{clip} has no frames {frames.start}..{frames.stop - 1}")
    return kept


class FramesTrack(MediaStreamTrack):
    """Loops over BGR frames at ``fps``, like a camera."""

    kind = "video"

    def __init__(self, frames: list[NDArray[np.uint8]], fps: float = 15.0) -> None:
        super().__init__()
        self._frames = frames
        self._fps = fps
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._index / self._fps
        await asyncio.sleep(max(0.0, due - loop.time()))
        frame = VideoFrame.from_ndarray(self._frames[self._index % len(self._frames)], "bgr24")
        frame.pts = round(self._index * 90000 / self._fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._index += 1
        return frame


@dataclass
class Phone:
    """A connected aiortc peer, like the phone page: every message that came back on
    the ``events`` channel, with the wall-clock time (``time.time()``) it arrived."""

    pc: RTCPeerConnection
    channel: RTCDataChannel
    received: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    worker: str = ""  # the X-Facestream-Worker (pid) of the server that answered

    @property
    def messages(self) -> list[dict[str, object]]:
        return [message for _, message in self.received]

    def enroll_messages(self) -> list[dict[str, object]]:
        return [m for m in self.messages if m.get("type") == "enroll"]

    def first_named(self, name: str, after: float = 0.0) -> float | None:
        """When the first recognition event naming ``name`` arrived after ``after``."""
        return next(
            (at for at, m in self.received if at > after and m.get("name") == name), None
        )

    def send(self, message: dict[str, object]) -> None:
        self.channel.send(json.dumps(message))

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        await self.pc.close()


async def connect_phone(
    url: str, token: str, track: MediaStreamTrack, http: aiohttp.ClientSession | None = None
) -> Phone:
    """Offer ``track`` to the server at ``url`` with an ``events`` channel, as the
    phone page does; returns once the channel is open. ``http``: the session to post
    the offer with (its cookies, its TLS context); a new one by default."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")
    phone = Phone(pc, channel)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", lambda text: phone.received.append((time.time(), json.loads(text))))
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
    try:
        async with contextlib.AsyncExitStack() as stack:
            if http is None:
                http = await stack.enter_async_context(aiohttp.ClientSession())
            response = await stack.enter_async_context(http.post(
                url + "/api/webrtc/offer", json=offer,
                headers={"Authorization": f"Bearer {token}"},
            ))
            if response.status != 200:
                raise AssertionError(f"offer refused: {response.status} {await response.text()}")
            answer = await response.json()
            phone.worker = response.headers["X-Facestream-Worker"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), 10)
    except BaseException:
        await pc.close()
        raise
    return phone
