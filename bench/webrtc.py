"""Glass-to-glass latency and returned frame rate of the WebRTC server.

N aiortc clients on loopback each send 640x480 video at 15 fps to a real server
(``streamer.server`` with the real Engine and a bundle of the shared people, run in
a child process so clients and server do not share a GIL). Every frame carries its
number as a barcode in its bottom rows (which the annotation never draws on); a
client reads the number back from each returned frame, so latency is measured from
the moment a frame was handed to the client's encoder to the moment its annotated
copy came out of the client's decoder.

    .venv/bin/python bench/webrtc.py                    # N = 1, 2, 4, 8
    .venv/bin/python bench/webrtc.py --sessions 4 --seconds 30

Prints a markdown table: per-session returned fps (mean, and the slowest and
fastest session), latency p50/p99 over every returned frame, and the share of
frames that did not come back (dropped by the newest-frame-wins stages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamer.jitter import use_marker_jitter_buffer  # noqa: E402 - after the path set-up

WIDTH, HEIGHT = 640, 480
STRIP = 16  # rows of barcode at the bottom
BITS = 20  # 16 bits of frame number, 4 of checksum
CELL = WIDTH // BITS
TOKEN = "bench-token-0123456789abcdef"
CLOCK = 90000


def stamp(image: NDArray[np.uint8], number: int) -> None:
    """Write ``number`` (16 bits) and a 4-bit checksum as black/white cells."""
    value = (number & 0xFFFF) | ((bin(number & 0xFFFF).count("1") % 16) << 16)
    for bit in range(BITS):
        shade = 255 if value >> bit & 1 else 0
        image[HEIGHT - STRIP :, bit * CELL : (bit + 1) * CELL] = shade


def read_stamp(image: NDArray[np.uint8]) -> int | None:
    """The number stamped on a (decoded, lossy) frame, or None if unreadable."""
    grey = image[HEIGHT - STRIP + 4 : HEIGHT - 4].mean(axis=(0, 2))
    cells = grey[: BITS * CELL].reshape(BITS, CELL)[:, 6:-6].mean(axis=1)
    value = sum(1 << bit for bit in range(BITS) if cells[bit] > 128)
    number = value & 0xFFFF
    if value >> 16 != bin(number).count("1") % 16:
        return None
    return number


def clip_frames(clip: Path, count: int = 150) -> list[NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
    capture.release()
    if not frames:
        raise SystemExit(f"no video frames in {clip} (set --shared or FACESTREAM_SHARED)")
    return frames


class StampedTrack(MediaStreamTrack):
    """The clip at ``fps``, each frame stamped with its number; remembers when each
    frame was handed to the encoder."""

    kind = "video"

    def __init__(self, frames: list[NDArray[np.uint8]], fps: float) -> None:
        super().__init__()
        self._frames = frames
        self._period = 1.0 / fps
        self._start: float | None = None
        self.count = 0
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        due = self._start + self.count * self._period
        if due > now:
            await asyncio.sleep(due - now)
        image = self._frames[self.count % len(self._frames)].copy()
        stamp(image, self.count)
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(self.count * self._period * CLOCK)
        frame.time_base = fractions.Fraction(1, CLOCK)
        self.sent_at[self.count & 0xFFFF] = time.perf_counter()
        self.count += 1
        return frame


@dataclass
class Session:
    pc: RTCPeerConnection
    track: StampedTrack
    received: list[tuple[float, int, float]] = field(default_factory=list)  # (t, n, latency)
    unreadable: int = 0
    reader: asyncio.Task[None] | None = None


async def open_session(
    url: str, frames: list[NDArray[np.uint8]], fps: float, codec: str
) -> Session:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = StampedTrack(frames, fps)
    session = Session(pc, track)
    pc.createDataChannel("events")

    async def read(remote: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            number = read_stamp(frame.to_ndarray(format="bgr24"))
            sent = track.sent_at.get(number) if number is not None else None
            if sent is None:
                session.unreadable += 1
            else:
                session.received.append((now, number, now - sent))

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        for receiver in pc.getReceivers():  # decode on the marker bit, as browsers do
            if receiver.track is remote:
                use_marker_jitter_buffer(receiver)
        session.reader = asyncio.ensure_future(read(remote))

    transceiver = pc.addTransceiver(track, direction="sendrecv")
    wanted = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == codec]
    transceiver.setCodecPreferences(wanted)
    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/api/webrtc/offer",
            json={"sdp": pc.localDescription.sdp, "type": "offer"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"offer refused: {response.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(**answer))
    return session


async def close_session(session: Session) -> None:
    if session.reader is not None:
        session.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.reader
    await session.pc.close()
    session.track.stop()


@dataclass(frozen=True)
class Row:
    sessions: int
    fps_mean: float
    fps_min: float
    fps_max: float
    p50_ms: float
    p99_ms: float
    returned: float  # share of sent frames that came back
    server_cpu_ms: float  # server process CPU time per returned frame
    client_cpu: float  # cores the clients used (encoding, decoding, reading stamps)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, server_pid: int, n: int, frames: list[NDArray[np.uint8]],
                  args: argparse.Namespace) -> Row:
    fps, warmup, seconds = args.fps, args.warmup, args.seconds
    sessions = [await open_session(url, frames, fps, args.codec) for _ in range(n)]
    await asyncio.sleep(warmup)
    start = time.perf_counter()
    sent0 = [s.track.count for s in sessions]
    server0, client0 = cpu_seconds(server_pid), cpu_seconds(os.getpid())
    await asyncio.sleep(seconds)
    end = time.perf_counter()
    server_cpu = cpu_seconds(server_pid) - server0
    client_cpu = cpu_seconds(os.getpid()) - client0
    sent = [s.track.count - c for s, c in zip(sessions, sent0, strict=True)]
    windows = [[r for r in s.received if start <= r[0] < end] for s in sessions]
    for s in sessions:
        await close_session(s)
    rates = [len(w) / (end - start) for w in windows]
    latencies = np.array([r[2] for w in windows for r in w]) * 1000.0
    if len(latencies) == 0:
        latencies = np.array([np.nan])
    return Row(
        sessions=n,
        fps_mean=float(np.mean(rates)),
        fps_min=float(np.min(rates)),
        fps_max=float(np.max(rates)),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        returned=sum(len(w) for w in windows) / max(1, sum(sent)),
        server_cpu_ms=1000.0 * server_cpu / max(1, sum(len(w) for w in windows)),
        client_cpu=client_cpu / (end - start),
    )


async def wait_idle(url: str, timeout: float = 20.0) -> None:
    """Until the server has released every session."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        while time.monotonic() < deadline:
            async with http.get(url + "/api/config") as response:
                if (await response.json())["sessions"] == 0:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("the server kept sessions open after the clients left")


# ---- the server, in a child process ---------------------------------------------------


def prepare_settings(
    shared: Path, state: Path, cache: Path, max_sessions: int, overrides: list[str]
) -> object:
    from facecore.config import load_settings
    from facecore.registry import MODELS, model_cache_dir, model_path
    from trainer.gallery import build_folder_bundle
    from trainer.onnx_export import prepare_dlib_resnet

    settings = load_settings(
        {
            "state_dir": str(state),
            "cache_dir": str(cache),
            "models_dir": str(shared / "models"),
            "server.max_sessions": max_sessions,
            **dict(item.split("=", 1) for item in overrides),
        },
        {},
    )
    if not (model_cache_dir(settings) / MODELS["dlib_resnet_v1"].filename).is_file():
        dat = model_path(settings, "dlib_resnet_v1_dat", download=False)
        prepare_dlib_resnet(dat, model_cache_dir(settings))
    if not (state / "bundles" / "current").exists():
        build_folder_bundle(shared / "people", state / "bundles", settings)
    return settings


async def serve_child(
    shared: Path, state: Path, cache: Path, max_sessions: int, overrides: list[str]
) -> None:
    import signal

    from aiohttp import web

    from streamer.engine import Engine
    from streamer.server import create_app

    settings = prepare_settings(shared, state, cache, max_sessions, overrides)
    engine = Engine.from_settings(settings, watch=False)  # type: ignore[arg-type]
    app = create_app(settings, engine, TOKEN, secure=False)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    engine.close()


# ---- main ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[Row]:
    frames = clip_frames(args.shared / "media" / "short_hamilton_clip.mp4")
    with tempfile.TemporaryDirectory(prefix="facestream-bench-") as tmp:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", tmp, "--shared", str(args.shared),
             "--max-sessions", str(max(args.sessions)),
             *(f"--setting={item}" for item in args.setting)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
            url = f"http://127.0.0.1:{json.loads(line)['port']}"
            rows = []
            for n in args.sessions:
                rows.append(
                    await measure(url, child.pid, n, frames, args)
                )
                print(f"N={n}: done", file=sys.stderr, flush=True)
                await wait_idle(url)
            return rows
        finally:
            child.terminate()
            child.wait(timeout=30)


def table(rows: list[Row], fps: float) -> str:
    lines = [
        f"| sessions | returned fps per session (sent {fps:g}) | slowest – fastest | "
        "latency p50 | latency p99 | frames returned | server CPU per frame | client CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.sessions} | {r.fps_mean:.1f} | {r.fps_min:.1f} – {r.fps_max:.1f} | "
            f"{r.p50_ms:.0f} ms | {r.p99_ms:.0f} ms | {r.returned:.0%} | "
            f"{r.server_cpu_ms:.0f} ms | {r.client_cpu:.2f} cores |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 8], help="comma-separated N values (default 1,2,4,8)")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--codec", choices=["video/VP8", "video/H264"], default="video/VP8",
                        help="the codec the clients offer (Chrome: VP8; Safari: H264)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per N")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FACESTREAM_SHARED", REPO.parent / "shared")))
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting, e.g. detection.size=320 (repeatable)")
    parser.add_argument("--max-sessions", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--serve-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child is not None:
        state = args.serve_child / "state"
        asyncio.run(serve_child(args.shared, state, args.serve_child / "cache",
                                args.max_sessions, args.setting))
        return
    rows = asyncio.run(run(args))
    print(f"\n{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end), "
          f"{WIDTH}x{HEIGHT} {args.codec} at {args.fps:g} fps, "
          f"{args.seconds:g} s measured per row"
          + (f", settings {' '.join(args.setting)}" if args.setting else "") + "\n")
    print(table(rows, args.fps))


if __name__ == "__main__":
    main()
