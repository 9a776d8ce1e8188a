"""Soak: what a real server keeps after many WebRTC sessions and photo uploads.

Starts ``facestream serve --http`` (one process, metrics on) on a temporary state
folder, then:

* ``--cycles`` WebRTC sessions, one after another, each a real aiortc client that
  sends the shared clip (320x240) until an annotated frame comes back, then leaves:
  every other one cleanly (``close()``: DTLS close_notify, SCTP abort), the others
  vanish: their UDP sockets are closed under them, so the server hears nothing more
  (no BYE, ICE cut) and must notice the silence itself (the stall timeout);
* ``--uploads`` enrollment photo uploads over the HTTP API, each one removed again.

Every ``--every`` cycles, once the server holds no session, it samples the server
process: resident memory (VmRSS), threads, open file descriptors (``/proc``) and the
tasks on its event loop (``facestream_asyncio_tasks`` on the metrics listener).
Prints a markdown table: each figure after the first ``--every`` cycles (caches and
codecs warm) and at the end, its growth per 1,000 cycles (the least-squares slope
over those samples) and the noise band (the largest distance of a sample from that
line; growth inside it is allocator noise, not a leak).

    FACESTREAM_SHARED=../shared .venv/bin/python bench/soak.py              # 1000 + 1000
    .venv/bin/python bench/soak.py --cycles 300 --uploads 300 --every 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
# the process and client helpers live in tests/
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import aiohttp  # noqa: E402 - after the path set-up
from aiortc import RTCPeerConnection  # noqa: E402
from e2e_support import Installation, Process, free_port  # noqa: E402
from enroll_support import FramesTrack, clip_frames  # noqa: E402
from machine import cpu_description, shared_dir  # noqa: E402
from webrtc_support import TOKEN, LiveServer, connect  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIP = "media/short_hamilton_clip.mp4"
PHOTO = "people/barack_obama"  # one face: every upload is accepted
FIGURES = ("RSS MiB", "threads", "open files", "asyncio tasks")
MAX_SESSIONS = 64  # a vanished session stays held for the stall timeout (5 s): ~15 at once


@dataclass(frozen=True)
class Sample:
    done: int  # cycles (or uploads) finished
    values: tuple[float, ...]  # FIGURES


def process_figures(pid: int) -> tuple[float, float, float]:
    """Resident memory (MiB), threads and open file descriptors of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return rss_kib / 1024.0, float(threads), float(len(os.listdir(f"/proc/{pid}/fd")))


async def asyncio_tasks(http: aiohttp.ClientSession, metrics_url: str) -> float:
    async with http.get(metrics_url) as response:
        text = await response.text()
    found = re.search(r"^facestream_asyncio_tasks\s+(\S+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no facestream_asyncio_tasks at {metrics_url}")
    return float(found.group(1))


async def sample(
    http: aiohttp.ClientSession, url: str, metrics_url: str, pid: int, done: int
) -> Sample:
    """The figures once the server holds no session and its task count is fresh."""
    deadline = time.monotonic() + 60
    while True:
        async with http.get(url + "/api/config", headers=AUTH) as response:
            if (await response.json())["sessions"] == 0:
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the server kept sessions open after the clients left")
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.5)  # the sampler sets the gauge every second; stragglers end
    return Sample(done, (*process_figures(pid), await asyncio_tasks(http, metrics_url)))


def vanish(pc: RTCPeerConnection) -> None:
    """Close the peer's UDP sockets under it: nothing it sends afterwards (DTLS
    close_notify, SCTP abort, ICE consent) reaches the server, as when a phone
    loses its network."""
    connections = {t.sender.transport.transport._connection for t in pc.getTransceivers()}
    for connection in connections:
        for protocol in connection._protocols:
            protocol.transport.close()


async def session_cycles(
    server: LiveServer, http: aiohttp.ClientSession, metrics_url: str, pid: int,
    cycles: int, every: int,
) -> tuple[list[Sample], int]:
    """``cycles`` sessions; the samples, and how many got no frame back."""
    frames = [
        cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA)
        for f in clip_frames(shared_dir() / CLIP, range(84, 114))
    ]
    samples = [await sample(http, server.url, metrics_url, pid, 0)]
    unanswered = 0
    for cycle in range(1, cycles + 1):
        track = FramesTrack(frames)
        client = await connect(server, track, keep_frames=2)
        if not await client.wait_for(lambda c=client: bool(c.frames), timeout=20):
            unanswered += 1
        if cycle % 2 == 0:
            vanish(client.pc)
        await client.close()
        track.stop()
        if cycle % every == 0 or cycle == cycles:
            samples.append(await sample(http, server.url, metrics_url, pid, cycle))
            print(f"sessions: {cycle}/{cycles} {samples[-1].values}", file=sys.stderr, flush=True)
    return samples, unanswered


async def upload_cycles(
    url: str, http: aiohttp.ClientSession, metrics_url: str, pid: int, uploads: int, every: int
) -> tuple[list[Sample], int]:
    """``uploads`` photo uploads, each removed again; the samples, and how many
    failed (not accepted, or not removed)."""
    photo = next(p for p in sorted((shared_dir() / PHOTO).iterdir()) if p.is_file())
    async with http.post(url + "/api/people", json={"name": "Soak"}, headers=AUTH) as response:
        person = await response.json()
    samples = [await sample(http, url, metrics_url, pid, 0)]
    failed = 0
    for done in range(1, uploads + 1):
        form = aiohttp.FormData()
        form.add_field("photo", photo.read_bytes(), filename=photo.name)
        target = f"{url}/api/people/{person['id']}/samples"
        async with http.post(target, data=form, headers=AUTH) as response:
            report = await response.json()
        sample_id = report["files"][0]["sample_id"] if response.status == 200 else None
        if sample_id is None:
            failed += 1
        else:
            async with http.delete(f"{url}/api/samples/{sample_id}", headers=AUTH) as response:
                failed += response.status != 204
        if done % every == 0 or done == uploads:
            samples.append(await sample(http, url, metrics_url, pid, done))
            print(f"uploads: {done}/{uploads} {samples[-1].values}", file=sys.stderr, flush=True)
    return samples, failed


def growth(samples: list[Sample], figure: int) -> tuple[float, float, float, float]:
    """(value after warm-up, value at the end, growth per 1,000, noise band) of one
    figure, over the samples from the first one after cycle 0."""
    kept = samples[1:] if len(samples) > 2 else samples
    x = np.array([s.done for s in kept], np.float64)
    y = np.array([s.values[figure] for s in kept], np.float64)
    slope, intercept = np.polyfit(x, y, 1) if len(kept) > 1 else (0.0, y[0])
    band = float(np.abs(y - (slope * x + intercept)).max())
    return float(y[0]), float(y[-1]), float(slope * 1000.0), band


def table(phases: list[tuple[str, list[Sample], int]], every: int) -> str:
    lines = [
        f"| phase | cycles | lost | figure | at cycle 0 | at cycle {every} | at the end | "
        "growth per 1,000 | noise band |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, samples, lost in phases:
        for index, figure in enumerate(FIGURES):
            start, end, per_1000, band = growth(samples, index)
            digits = 1 if index == 0 else 0
            lines.append(
                f"| {name} | {samples[-1].done} | {lost} | {figure} | "
                f"{samples[0].values[index]:.{digits}f} | {start:.{digits}f} | "
                f"{end:.{digits}f} | {per_1000:+.{digits + 1}f} | ±{band:.{digits + 1}f} |"
            )
    return "\n".join(lines)


async def soak(args: argparse.Namespace) -> list[tuple[str, list[Sample], int]]:
    with tempfile.TemporaryDirectory(prefix="facestream-soak-") as tmp:
        setup = Installation.create(shared_dir(), Path(tmp))
        port, metrics_port = free_port(), free_port()
        server: Process = setup.start(
            "serve", "serve", "--http", "--host", "127.0.0.1", "--port", str(port),
            "--token", TOKEN, "--metrics-port", str(metrics_port),
            "--max-sessions", str(MAX_SESSIONS),
        )
        url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            async with aiohttp.ClientSession() as http:
                await listening(http, url, server)
                phases = []
                if args.cycles:
                    live = LiveServer(url, None, None)  # type: ignore[arg-type] - no app here
                    samples, lost = await session_cycles(
                        live, http, metrics_url, server.popen.pid, args.cycles, args.every
                    )
                    phases.append(("WebRTC sessions (half vanish)", samples, lost))
                if args.uploads:
                    samples, lost = await upload_cycles(
                        url, http, metrics_url, server.popen.pid, args.uploads, args.every
                    )
                    phases.append(("photo upload + removal", samples, lost))
            errors = [line for line in server.output().splitlines() if "Traceback" in line]
            if errors:
                print(f"the server logged {len(errors)} tracebacks:\n{server.output()[-4000:]}",
                      file=sys.stderr)
            return phases
        finally:
            setup.stop_all()
            if args.server_log is not None:
                args.server_log.write_text(server.output())


async def listening(http: aiohttp.ClientSession, url: str, server: Process) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"the server exited:\n{server.output()[-3000:]}")
        try:
            async with http.get(url + "/api/config", headers=AUTH) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not listen:\n{server.output()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000, help="WebRTC sessions (default 1000)")
    parser.add_argument("--uploads", type=int, default=1000,
                        help="photo uploads, each removed again (default 1000)")
    parser.add_argument("--every", type=int, default=100, help="sample every N cycles")
    parser.add_argument("--server-log", type=Path, help="keep the server's output here")
    args = parser.parse_args()
    began = time.monotonic()
    phases = asyncio.run(soak(args))
    print(f"\n{cpu_description()}, load average {os.getloadavg()[0]:.1f} at the end, "
          f"{(time.monotonic() - began) / 60:.0f} min\n")
    print(table(phases, args.every))


if __name__ == "__main__":
    main()
