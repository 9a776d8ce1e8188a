"""Helpers for the WebRTC server tests: real settings, a real bundle of the shared
people, the real server on a loopback port, and a real aiortc client.

Not a test module (pytest collects only ``test_*.py``); the test files import it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from facecore.config import Settings, load_settings
from facecore.registry import MODELS, model_cache_dir, model_path
from streamer.live.engine import Engine
from streamer.web.server import create_app
from streamer.web.tls import ensure_certificate, server_ssl_context

TOKEN = "test-token-0123456789abcdef"
# request bodies of every shape a JSON route must answer with a 400, and what its
# reason must say
BAD_JSON_BODIES: list[tuple[bytes, str]] = [
    (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
    (b"[" * 200_000, "nested too deeply"),
    (b"", r"not JSON \(Expecting value, line 1 column 1\)"),
    (b'{"sdp": "v=0",', "not JSON"),
    (b'"\xff\xfe"', "not UTF-8"),
    (b"1" * 5000, "number too long"),
    (b"null", "is null, not an object"),
    (b"42", "is a number"),
    (b'"name"', "is a string"),
    (b"true", "is a boolean"),
    (b"[1, 2]", "is an array"),
]
REPO_ROOT = Path(__file__).resolve().parent.parent


def server_settings(
    shared_dir: Path, state_dir: Path, cache_dir: Path, **server: object
) -> Settings:
    """Settings that find YuNet in the shared models folder; ``server`` sets
    ``server.*`` keys (e.g. ``max_sessions=1``)."""
    cli: dict[str, object] = {
        "state_dir": str(state_dir),
        "cache_dir": str(cache_dir),
        "models_dir": str(shared_dir / "models"),
        **{f"server.{k}": v for k, v in server.items()},
    }
    return load_settings(cli, {})


def build_people_bundle(settings: Settings, shared_dir: Path) -> None:
    """Convert the dlib ResNet into the settings' cache (once per cache) and publish a
    bundle of the shared people (Lin-Manuel Miranda, Alex Lacamoire, Barack Obama,
    Joe Biden) into ``state_dir/bundles``."""
    from pipeline_support import publish_people

    from trainer.dlib.export import prepare_dlib_resnet
    from trainer.dlib.landmarks import prepare_landmark_model

    if not (model_cache_dir(settings) / MODELS["dlib_resnet_v1"].filename).is_file():
        dat = model_path(settings, "dlib_resnet_v1_dat", download=False)
        prepare_dlib_resnet(dat, model_cache_dir(settings))
    prepare_landmark_model(settings, download=False)
    publish_people(settings, shared_dir / "people")


@dataclass
class LiveServer:
    url: str
    app: web.Application
    ssl_context: ssl.SSLContext | None  # a client context trusting the server's certificate


@asynccontextmanager
async def live_server(
    settings: Settings,
    engine: Engine,
    *,
    https: bool = False,
    stall_timeout: float = 5.0,
    extend: Callable[[web.Application], None] | None = None,
    token: str = TOKEN,
) -> AsyncIterator[LiveServer]:
    """The real application on 127.0.0.1, a free port, HTTP or HTTPS (self-signed);
    ``extend`` adds to the application before it starts (routes, Enroll mode)."""
    app = create_app(settings, engine, token, secure=https, stall_timeout=stall_timeout)
    if extend is not None:
        extend(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server_context = client_context = None
    if https:
        pair = ensure_certificate(settings)
        server_context = server_ssl_context(pair)
        client_context = ssl.create_default_context(cafile=str(pair.cert))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if https else "http"
    try:
        yield LiveServer(f"{scheme}://127.0.0.1:{port}", app, client_context)
    finally:
        await runner.cleanup()


class RecordingTrack(MediaStreamTrack):
    """Passes ``source``'s frames on and keeps the last ``keep`` of them by pts."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, keep: int = 300) -> None:
        super().__init__()
        self._source = source
        self._keep = keep
        self.sent: dict[int, VideoFrame] = {}

    async def recv(self) -> VideoFrame:
        frame = await self._source.recv()
        assert isinstance(frame, VideoFrame)
        self.sent[frame.pts] = frame
        while len(self.sent) > self._keep:
            del self.sent[next(iter(self.sent))]
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


@dataclass
class Client:
    """A connected aiortc peer: what it received back."""

    pc: RTCPeerConnection
    events: list[dict[str, object]] = field(default_factory=list)  # RecognitionEvents
    messages: list[dict[str, object]] = field(default_factory=list)  # typed: "presence"...
    frames: list[VideoFrame] = field(default_factory=list)
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    worker: str = ""  # the X-Facestream-Worker (pid) that answered the offer
    _reader: asyncio.Task[None] | None = None

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


async def post_offer(
    server: LiveServer, body: object, *, token: str | None = TOKEN, raw: bytes | None = None
) -> tuple[int, dict[str, object]]:
    status, answer, _ = await post_offer_answered(server, body, token=token, raw=raw)
    return status, answer


async def post_offer_answered(
    server: LiveServer, body: object, *, token: str | None = TOKEN, raw: bytes | None = None
) -> tuple[int, dict[str, object], str]:
    """``post_offer``, and the pid of the process that answered."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + "/api/webrtc/offer",
            data=data,
            headers={**headers, "Content-Type": "application/json"},
            ssl=server.ssl_context if server.ssl_context is not None else True,
        ) as response,
    ):
        return response.status, await response.json(), response.headers["X-Facestream-Worker"]


async def connect(
    server: LiveServer, track: MediaStreamTrack, *, keep_frames: int = 400, codec: str | None = None
) -> Client:
    """Offer ``track`` with an ``events`` data channel (and only ``codec``, e.g.
    ``"video/H264"``, when given); collect what comes back."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client = Client(pc)
    channel = pc.createDataChannel("events")
    channel.on("open", client.channel_open.set)

    def received(text: str) -> None:
        message = json.loads(text)
        (client.messages if "type" in message else client.events).append(message)

    channel.on("message", received)

    async def read(remote: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                return
            client.frames.append(frame)
            del client.frames[:-keep_frames]

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "video":
            client._reader = asyncio.ensure_future(read(remote))

    transceiver = pc.addTransceiver(track, direction="sendrecv")
    if codec is not None:
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in capabilities if c.mimeType == codec])
    await pc.setLocalDescription(await pc.createOffer())
    status, answer, client.worker = await post_offer_answered(
        server, {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
    )
    if status != 200:
        await pc.close()
        raise AssertionError(f"offer refused: {status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=str(answer["sdp"]), type="answer"))
    return client
