"""Glass-to-glass latency and returned frame rate of the WebRTC server.

N aiortc clients on loopback each send 640x480 video at 15 fps to a real server
(``streamer.web.server`` with the real Engine and a bundle of the shared people, run in
a child process so clients and server do not share a GIL). Every frame carries its
number as a barcode in its bottom rows (which the annotation never draws on); a
client reads the number back from each returned frame, so latency is measured from
the moment a frame was handed to the client's WebRTC stack to the moment its
annotated copy came out of the client's decoder.

Phones encode their video on their own chips, so by default the clients do not
encode on the server's CPUs: the stamped clip is encoded once before the run and
each client sends those packets in a loop (``--client-encoding live`` has aiortc
encode every frame in the clients instead). The clients still decode what comes
back. ``--server-cpus`` and ``--client-cpus`` keep the server process and the
clients on separate CPUs.

    .venv/bin/python bench/webrtc.py                    # N = 1, 2, 4, 8
    .venv/bin/python bench/webrtc.py --sessions 4 --seconds 30
    .venv/bin/python bench/webrtc.py --server-cpus 0 --client-cpus 1
    .venv/bin/python bench/webrtc.py --workers 1,2 --sessions 4,8
    .venv/bin/python bench/webrtc.py --workers 1,4,8 --sessions 8,16,32 \
        --recognition onnxruntime,triton

``--workers 1,2`` runs the real ``facestream serve --http --workers W`` for each W
in turn (W = 1: one process, as ``serve`` runs by default) instead of the bare
application, and counts the CPU time of the whole process tree.
``--recognition onnxruntime,triton`` runs every row with recognition in-process and
then through Triton (``recognition.backend = "triton"``): a Triton of your own at
``--triton-url``, or the nvidia-pytriton wheel's tritonserver started on this machine
as bench/triton_recognition.py starts it (whose CPU time "server CPU" then counts).

Prints a markdown table: per-session returned fps (mean, and the slowest and
fastest session), latency p50/p99 over every returned frame, p99 over the first and
the second half of the measured time (a backlog shows as growth), and the share of
frames that did not come back (dropped by the newest-frame-wins stages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from triton_recognition import executions, wheel_triton  # noqa: E402 - after the path set-up
from triton_support import TritonServer  # noqa: E402

from facecore.config import Settings, load_settings  # noqa: E402
from streamer.web.jitter import use_marker_jitter_buffer  # noqa: E402

WIDTH, HEIGHT = 640, 480
STRIP = 16  # rows of barcode at the bottom
BITS = 20  # 16 bits of frame number, 4 of checksum
CELL = WIDTH // BITS
TOKEN = "bench-token-0123456789abcdef"
CLOCK = 90000
CLIENT_BITRATE = 1_000_000  # what a phone sends for 640x480 (Chrome: 0.5-2.5 Mbit/s)


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


def stamped(frames: list[NDArray[np.uint8]]) -> list[NDArray[np.uint8]]:
    """The frames, each stamped with its index (the clip loops: a frame's number
    names it within one loop, which lasts far longer than any latency)."""
    out = [frame.copy() for frame in frames]
    for number, image in enumerate(out):
        stamp(image, number)
    return out


def encode_clip(frames: list[NDArray[np.uint8]], fps: float, codec: str) -> list[bytes]:
    """Each frame encoded once, as a phone's hardware encoder would: one keyframe at
    the start of the loop (so the loop joins up), then inter frames; no lag."""
    if codec == "video/VP8":
        context = av.CodecContext.create("libvpx", "w")
        context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    else:  # constrained baseline, as Safari sends it
        context = av.CodecContext.create("libx264", "w")
        context.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"}
    context.width, context.height, context.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    context.time_base = fractions.Fraction(1, round(fps))
    context.bit_rate = CLIENT_BITRATE
    context.gop_size = len(frames)
    packets = []
    for number, image in enumerate(frames):
        frame = VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = number
        packets.extend(bytes(packet) for packet in context.encode(frame))
    packets.extend(bytes(packet) for packet in context.encode(None))
    if len(packets) != len(frames):
        raise RuntimeError(f"{len(frames)} frames encoded into {len(packets)} packets")
    return packets


class StampedTrack(MediaStreamTrack):
    """The stamped clip in a loop at ``fps``; remembers when each frame was handed
    on. With ``encoded`` (``encode_clip``), it hands on those packets, which aiortc
    sends as they are; without, frames for aiortc's own encoder."""

    kind = "video"

    def __init__(
        self, frames: list[NDArray[np.uint8]], fps: float, encoded: list[bytes] | None
    ) -> None:
        super().__init__()
        self._frames = frames
        self._encoded = encoded
        self._period = 1.0 / fps
        self._start: float | None = None
        self.count = 0
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> VideoFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self._start is None:
            self._start = now
        due = self._start + self.count * self._period
        if due > now:
            await asyncio.sleep(due - now)
        number = self.count % len(self._frames)
        if self._encoded is None:
            data: VideoFrame | av.Packet = VideoFrame.from_ndarray(
                self._frames[number], format="bgr24"
            )
        else:
            data = av.Packet(self._encoded[number])
        data.pts = round(self.count * self._period * CLOCK)
        data.time_base = fractions.Fraction(1, CLOCK)
        self.sent_at[number] = time.perf_counter()
        self.count += 1
        return data


@dataclass
class Session:
    pc: RTCPeerConnection
    track: StampedTrack
    received: list[tuple[float, int, float]] = field(default_factory=list)  # (t, n, latency)
    unreadable: int = 0
    reader: asyncio.Task[None] | None = None


async def open_session(
    url: str,
    frames: list[NDArray[np.uint8]],
    encoded: list[bytes] | None,
    fps: float,
    codec: str,
) -> Session:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = StampedTrack(frames, fps, encoded)
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
    recognition: str  # recognition.backend
    workers: int | None  # serve --workers; None: the bare application in one child
    sessions: int
    fps_mean: float
    fps_min: float
    fps_max: float
    p50_ms: float
    p99_ms: float
    p99_halves_ms: tuple[float, float]  # over the first and the second half of the time
    returned: float  # share of sent frames that came back
    server_cpu_ms: float  # server process CPU time per returned frame
    client_cpu: float  # cores the clients used (encoding, decoding, reading stamps)


def cpu_seconds(pid: int, *, descendants: bool = False) -> float:
    """User + system CPU time of process ``pid`` (all its threads), and with
    ``descendants`` of its living descendants (the workers of ``serve --workers``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # gone meanwhile
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*") if descendants else ():
        with contextlib.suppress(FileNotFoundError):
            children = (task / "children").read_text().split()
            total += sum(cpu_seconds(int(c), descendants=True) for c in children)
    return total


async def measure(url: str, server_pids: list[int], recognition: str, workers: int | None,
                  n: int, frames: list[NDArray[np.uint8]], encoded: list[bytes] | None,
                  args: argparse.Namespace) -> Row:
    fps, warmup, seconds = args.fps, args.warmup, args.seconds
    sessions = [await open_session(url, frames, encoded, fps, args.codec) for _ in range(n)]
    await asyncio.sleep(warmup)
    start = time.perf_counter()
    sent0 = [s.track.count for s in sessions]
    server0 = sum(cpu_seconds(pid, descendants=True) for pid in server_pids)
    client0 = cpu_seconds(os.getpid())
    await asyncio.sleep(seconds)
    end = time.perf_counter()
    server_cpu = sum(cpu_seconds(pid, descendants=True) for pid in server_pids) - server0
    client_cpu = cpu_seconds(os.getpid()) - client0
    sent = [s.track.count - c for s, c in zip(sessions, sent0, strict=True)]
    windows = [[r for r in s.received if start <= r[0] < end] for s in sessions]
    for s in sessions:
        await close_session(s)
    rates = [len(w) / (end - start) for w in windows]
    middle = (start + end) / 2
    latencies = latencies_ms([r[2] for w in windows for r in w])
    halves = (
        latencies_ms([r[2] for w in windows for r in w if r[0] < middle]),
        latencies_ms([r[2] for w in windows for r in w if r[0] >= middle]),
    )
    return Row(
        recognition=recognition,
        workers=workers,
        sessions=n,
        fps_mean=float(np.mean(rates)),
        fps_min=float(np.min(rates)),
        fps_max=float(np.max(rates)),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        p99_halves_ms=(float(np.percentile(halves[0], 99)), float(np.percentile(halves[1], 99))),
        returned=sum(len(w) for w in windows) / max(1, sum(sent)),
        server_cpu_ms=1000.0 * server_cpu / max(1, sum(len(w) for w in windows)),
        client_cpu=client_cpu / (end - start),
    )


def latencies_ms(seconds: list[float]) -> NDArray[np.float64]:
    """Latencies in ms (a NaN when there are none, so percentiles print as nan)."""
    return np.array(seconds or [np.nan], np.float64) * 1000.0


async def wait_idle(url: str, timeout: float = 20.0) -> None:
    """Until the server has released every session: asked on 8 fresh connections in
    a row, so that with several workers each is asked (the kernel picks one each)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {TOKEN}"},
        connector=aiohttp.TCPConnector(force_close=True),
    ) as http:
        while time.monotonic() < deadline:
            counts = []
            for _ in range(8):
                async with http.get(url + "/api/config") as response:
                    counts.append((await response.json())["sessions"])
            if not any(counts):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the server kept sessions open after the clients left")


# ---- the server, in a child process ---------------------------------------------------


def prepare_settings(
    shared: Path, state: Path, cache: Path, max_sessions: int, overrides: list[str]
) -> Settings:
    from machine import enroll_and_train, prepare_models

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
    prepare_models(settings)
    if not (state / "bundles" / "current").exists():
        enroll_and_train(settings, shared / "people")
    return settings


async def serve_child(
    shared: Path, state: Path, cache: Path, max_sessions: int, overrides: list[str]
) -> None:
    import signal

    from aiohttp import web

    from streamer.live.engine import Engine
    from streamer.web.server import create_app

    settings = prepare_settings(shared, state, cache, max_sessions, overrides)
    engine = Engine.from_settings(settings, watch=False)
    app = create_app(settings, engine, TOKEN, secure=False)
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
    frames = stamped(clip_frames(args.shared / "media" / "short_hamilton_clip.mp4"))
    encoded = None if args.client_encoding == "live" else encode_clip(frames, args.fps, args.codec)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="facestream-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        for recognition in args.recognition:
            settings, triton_url, triton_pids = list(args.setting), None, []
            if recognition == "triton":
                triton_url, triton_pids = triton_for(Path(tmp), args, stack)
                settings += ["recognition.backend=triton", f"recognition.triton_url={triton_url}"]
            for workers in args.workers or [None]:
                child, url = await start_server(Path(tmp), workers, args, settings)
                try:
                    for n in args.sessions:
                        ran = executions(triton_url) if triton_url else (0, 0)
                        row = await measure(
                            url, [child.pid, *triton_pids], recognition, workers, n,
                            frames, encoded, args,
                        )
                        rows.append(row)
                        done = f"{recognition} workers={workers} N={n}: done"
                        if triton_url:
                            done += triton_work(triton_url, ran)
                        print(done, file=sys.stderr, flush=True)
                        await wait_idle(url)
                finally:
                    child.terminate()
                    child.wait(timeout=30)
    return rows


def triton_for(
    tmp: Path, args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[str, list[int]]:
    """The Triton the triton rows use, and the pids whose CPU time they count."""
    if args.triton_url:
        return args.triton_url, []
    server = stack.enter_context(start_triton(tmp, args))
    return server.grpc_url, [server.process.pid]


def triton_work(url: str, before: tuple[int, int]) -> str:
    """What Triton ran since ``before`` (``executions``); none is an error: the row
    would not have recognized through Triton."""
    after = executions(url)
    faces, runs = after[0] - before[0], after[1] - before[1]
    if not faces:
        raise RuntimeError("Triton recognized no face: the server did not use it")
    return f", Triton ran {faces} faces in {runs} batches"


@contextlib.contextmanager
def start_triton(tmp: Path, args: argparse.Namespace) -> Iterator[TritonServer]:
    """The nvidia-pytriton wheel's tritonserver serving the benchmark's backbone."""
    settings = prepare_settings(
        args.shared, tmp / "state", tmp / "cache", max(args.sessions), args.setting
    )
    with wheel_triton(settings, tmp / "triton", settings.recognition.batch_size) as server:
        yield server


async def start_server(
    tmp: Path, workers: int | None, args: argparse.Namespace, settings: list[str]
) -> tuple[subprocess.Popen[str], str]:
    """The server child (``workers`` None) or ``facestream serve --workers``, and its URL."""
    pinned = ["--cpus", ",".join(map(str, args.server_cpus))] if args.server_cpus else []
    if workers is None:
        command = [
            sys.executable, __file__, "--serve-child", str(tmp), "--shared", str(args.shared),
            "--max-sessions", str(max(args.sessions)),
            *(f"--setting={item}" for item in settings), *pinned,
        ]
    else:
        state, cache = tmp / "state", tmp / "cache"
        prepare_settings(args.shared, state, cache, max(args.sessions), settings)
        taskset = ["taskset", "-c", pinned[1]] if pinned else []
        command = [
            *taskset, sys.executable, "-m", "facestream", "serve", "--http",
            "--host", "127.0.0.1", "--port", "0", "--token", TOKEN,
            "--workers", str(workers), "--max-sessions", str(max(args.sessions)),
            "--state-dir", str(state), "--cache-dir", str(cache),
            "--models-dir", str(args.shared / "models"),
        ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for item in settings if workers is not None else []:
        key, value = item.split("=", 1)
        env["FACESTREAM_" + key.upper().replace(".", "_")] = value
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert child.stdout is not None
    url = ""
    while True:
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        if not line:
            raise RuntimeError("the server exited before it listened")
        if workers is None:
            return child, f"http://127.0.0.1:{json.loads(line)['port']}"
        if found := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
            url = found.group(1)
        if (workers == 1 and "█" in line) or "workers (pids" in line:  # after the addresses
            # the rest of its output is not read: into the void, not a full pipe
            threading.Thread(target=child.stdout.read, daemon=True).start()
            return child, url


def table(rows: list[Row], fps: float) -> str:
    lines = [
        f"| recognition | workers | sessions | returned fps per session (sent {fps:g}) | "
        "slowest – fastest | "
        "latency p50 | latency p99 | p99 1st / 2nd half | frames returned | "
        "server CPU per frame | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.recognition} | {r.workers or '-'} | {r.sessions} | "
            f"{r.fps_mean:.1f} | {r.fps_min:.1f} – {r.fps_max:.1f} | "
            f"{r.p50_ms:.0f} ms | {r.p99_ms:.0f} ms | "
            f"{r.p99_halves_ms[0]:.0f} / {r.p99_halves_ms[1]:.0f} ms | {r.returned:.0%} | "
            f"{r.server_cpu_ms:.0f} ms | {r.client_cpu:.2f} cores |"
        )
    return "\n".join(lines)


def backends(text: str) -> list[str]:
    """A ``--recognition`` value: comma-separated recognition back-ends."""
    names = text.split(",")
    if unknown := set(names) - {"onnxruntime", "triton"}:
        raise argparse.ArgumentTypeError(f"unknown back-end {', '.join(sorted(unknown))}")
    return names


def cpus(text: str) -> set[int]:
    """A ``--server-cpus`` value: comma-separated CPU numbers."""
    return {int(x) for x in text.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 8], help="comma-separated N values (default 1,2,4,8)")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--codec", choices=["video/VP8", "video/H264"], default="video/VP8",
                        help="the codec the clients offer (Chrome: VP8; Safari: H264)")
    parser.add_argument("--client-encoding", choices=["once", "live"], default="once",
                        help="once: the clip is encoded before the run and the clients send "
                        "the packets, as phones encode on their own chips (default); live: "
                        "each client encodes every frame with aiortc, on these CPUs")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per N")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FACESTREAM_SHARED", REPO.parent / "shared")))
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting, e.g. detection.size=320 (repeatable)")
    parser.add_argument("--server-cpus", type=cpus, metavar="LIST",
                        help="CPUs the server process may use, e.g. 0 (default: all)")
    parser.add_argument("--client-cpus", type=cpus, metavar="LIST",
                        help="CPUs the clients may use, e.g. 1 (default: all)")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated W values: run `facestream serve --workers W` "
                        "for each (default: the bare application in one child process)")
    parser.add_argument("--recognition", type=backends, default=["onnxruntime"],
                        help="comma-separated recognition back-ends to run every row with: "
                        "onnxruntime (in-process, the default), triton")
    parser.add_argument("--triton-url", help="a running Triton (host:port, gRPC) serving "
                        "`facestream models triton-repo`; default: start the wheel's")
    parser.add_argument("--cpus", type=cpus, help=argparse.SUPPRESS)  # the server child's
    parser.add_argument("--max-sessions", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--serve-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child is not None:
        if args.cpus:  # before the server starts a thread: they all inherit it
            os.sched_setaffinity(0, args.cpus)
        state = args.serve_child / "state"
        asyncio.run(serve_child(args.shared, state, args.serve_child / "cache",
                                args.max_sessions, args.setting))
        return
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    rows = asyncio.run(run(args))
    clients = sorted(os.sched_getaffinity(0))  # the server child inherits them unless told
    servers = sorted(args.server_cpus or clients)
    print(f"\n{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end), "
          f"server on CPUs {servers}, clients on CPUs {clients}, "
          f"{WIDTH}x{HEIGHT} {args.codec} at {args.fps:g} fps, "
          f"clients encode {args.client_encoding}, "
          f"{args.seconds:g} s measured per row"
          + (f", settings {' '.join(args.setting)}" if args.setting else "") + "\n")
    print(table(rows, args.fps))


if __name__ == "__main__":
    main()
