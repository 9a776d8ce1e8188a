"""Enrollment to recognition: from the commit of a new person's samples to the first
frame of a running stream that names them.

Real processes on a temporary state folder: `facestream trainer` and `facestream
serve --http`, and a real aiortc client streaming the part of the shared clip where
Lin-Manuel Miranda faces the camera. The four shared people are imported first. Each
trial removes Lin over the HTTP API, waits until the server serves a bundle without
him (his face is then reported as unknown), waits a random 1-3 s (so the trainer's
polling phase is sampled), and enrolls him again over the HTTP API (his photo and two
stills of the clip, committed one sample at a time). Timed from the commit of his
last sample (and, in brackets, his first) to:

* published: ``bundles/current`` names him (watched from this process);
* served: the server reports that bundle's version (``/api/config``);
* named: the first recognition event naming him on the stream's ``events`` channel.

    FACESTREAM_SHARED=../shared .venv/bin/python bench/enroll_latency.py [--trials 5]
    .venv/bin/python bench/enroll_latency.py --code /tmp/older-checkout   # before/after

``--code`` runs the trainer and the server from another source tree (the client side
stays this one's), for before/after numbers on the same machine; ``--busy N`` keeps N
more processes spinning on the CPU during the trials, for numbers under load. Prints
a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The end-to-end helpers live in tests/.
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import aiohttp  # noqa: E402 - after the path set-up
from e2e_support import (  # noqa: E402
    Installation,
    Process,
    commit_times,
    enroll_over_http,
    enrollment_photos,
    served_version,
    until,
)
from enroll_support import LIN_FACING, FramesTrack, Phone, clip_frames, connect_phone  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
FOLDER_LIN = "Lin Manuel Miranda"  # as `enroll import` names lin_manuel_miranda/
LIN = "Lin-Manuel Miranda"
GOAL_S = 5.0


@dataclass(frozen=True)
class Trial:
    first_commit: float  # unix times
    last_commit: float
    published: float
    served: float
    named: float


class Timeline:
    """When each bundle version was first seen published (``current``) and served."""

    def __init__(self, setup: Installation, http: aiohttp.ClientSession, url: str) -> None:
        self.setup, self.http, self.url = setup, http, url
        self.published: dict[int, tuple[float, tuple[str, ...]]] = {}  # version -> (at, labels)
        self.served: dict[int, float] = {}
        self.serving: int | None = None

    async def follow(self) -> None:
        while True:
            manifest = self.setup.current_manifest()
            if manifest is not None and manifest.version not in self.published:
                self.published[manifest.version] = (time.time(), manifest.labels)
            try:
                self.serving = await served_version(self.http, self.url)
            except aiohttp.ClientConnectionError:
                self.serving = None
            if self.serving is not None:
                self.served.setdefault(self.serving, time.time())
            await asyncio.sleep(0.05)

    def first_naming(self, name: str, after: float) -> tuple[int, float] | None:
        """(version, time published) of the first bundle published after ``after``
        that names ``name``."""
        found = sorted((at, v) for v, (at, labels) in self.published.items()
                       if at > after and name in labels)
        return (found[0][1], found[0][0]) if found else None


@dataclass
class Stage:
    """The running installation, the streaming phone and what is known of the bundles."""

    setup: Installation
    http: aiohttp.ClientSession
    url: str
    phone: Phone
    timeline: Timeline
    photos: list[tuple[str, bytes]]  # what enrolls Lin
    processes: tuple[Process, ...]  # whose logs explain a time-out

    def serves_without(self, name: str) -> bool:
        serving = self.timeline.serving
        labels = self.timeline.published.get(serving) if serving is not None else None
        return labels is not None and name not in labels[1]

    async def trial(self, remove: str) -> Trial:
        """Remove ``remove``, wait for a bundle without them to be served, then enroll
        Lin again and time it."""
        timeline = self.timeline
        async with self.http.delete(f"{self.url}/api/people/{remove}") as response:
            assert response.status == 204, await response.text()
        removed = time.time()
        await until(lambda: any(at > removed and remove not in labels
                                for at, labels in timeline.published.values()), 90,
                    f"a bundle without {remove}", *self.processes)
        await until(lambda: self.serves_without(remove), 30, "the server to serve it",
                    *self.processes)
        await asyncio.sleep(random.uniform(1.0, 3.0))
        await enroll_over_http(self.http, self.url, LIN, self.photos)
        first, last = commit_times(self.setup.state_dir, LIN)
        await until(lambda: self.phone.first_named(LIN, after=last), 90,
                    f"an event naming {LIN}", *self.processes)
        await until(lambda: (naming := timeline.first_naming(LIN, after=first)) is not None
                    and naming[0] in timeline.served, 10, "the served time")
        naming = timeline.first_naming(LIN, after=first)
        named = self.phone.first_named(LIN, after=last)
        assert naming is not None and named is not None
        return Trial(first, last, naming[1], timeline.served[naming[0]], named)


async def run(shared: Path, code: Path, trials: int, busy: int, root: Path) -> list[Trial]:
    setup = Installation.create(shared, root, code)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(busy)]
    try:
        setup.run("enroll", "import", str(shared / "people"))
        trainer = setup.start("trainer", "trainer")
        server, url = setup.serve(TOKEN)
        frames = clip_frames(shared / "media" / "short_hamilton_clip.mp4", LIN_FACING)
        photos = enrollment_photos(shared / "media" / "lin-manuel-miranda.png", frames)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            timeline = Timeline(setup, http, url)
            follower = asyncio.ensure_future(timeline.follow())
            phone = None
            try:
                await until(lambda: timeline.serving is not None, 120,
                            "the first bundle to be served", trainer, server)
                phone = await connect_phone(url, TOKEN, FramesTrack(frames))
                await until(lambda: phone.first_named(FOLDER_LIN), 60,
                            f"an event naming {FOLDER_LIN}", server)
                stage = Stage(setup, http, url, phone, timeline, photos, (trainer, server))
                results = []
                for number in range(trials):
                    done = await stage.trial(FOLDER_LIN if number == 0 else LIN)
                    results.append(done)
                    print(f"  trial {number + 1}: {done.named - done.last_commit:.2f} s",
                          file=sys.stderr)
                return results
            finally:
                follower.cancel()
                if phone is not None:
                    await phone.close()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        setup.stop_all()


def table(label: str, results: list[Trial]) -> str:
    rows = [
        f"| {label} | {n} | {t.published - t.last_commit:.2f} | {t.served - t.last_commit:.2f} "
        f"| {t.named - t.last_commit:.2f} ({t.named - t.first_commit:.2f}) |"
        for n, t in enumerate(results, 1)
    ]
    named = [t.named - t.last_commit for t in results]
    from_first = [t.named - t.first_commit for t in results]
    rows.append(
        f"| {label} | median | | | **{statistics.median(named):.2f}** "
        f"({statistics.median(from_first):.2f}) |"
    )
    rows.append(f"| {label} | max | | | **{max(named):.2f}** ({max(from_first):.2f}) |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--code", type=Path, default=REPO,
                        help="source tree the trainer and the server run from (default: this)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="CPU-spinning processes to run beside (default 0)")
    parser.add_argument("--label", help="row label (default: the --code folder's name)")
    args = parser.parse_args()
    shared = Path(os.environ.get("FACESTREAM_SHARED", REPO.parent / "shared")).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        results = asyncio.run(
            run(shared, args.code.resolve(), args.trials, args.busy, Path(scratch))
        )
    label = args.label or args.code.resolve().name
    if args.busy:
        label += f", {args.busy} busy"
    print(f"\nseconds after the commit of the last sample (of the first), goal {GOAL_S:g} s\n")
    print("| code | trial | published | served | named |")
    print("| --- | --- | --- | --- | --- |")
    print(table(label, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
