"""End to end with real processes: people enrolled with the `facestream` command, the
trainer (`facestream trainer`) and the server (`facestream serve --http`) running as
subprocesses on a temporary state folder, and a real aiortc client, like the phone
page, streaming the part of the shared clip where Lin-Manuel Miranda faces the camera.

1. The four shared people are imported; the trainer publishes; the stream names Lin.
2. Lin is removed, then enrolled again over the HTTP API while the stream runs: the
   time from the commit of his samples to the first event naming him is measured
   (goal: under 5 s; recorded as the test property ``enroll_to_named_s`` and printed).
3. A trainer is killed (SIGKILL) in the middle of a publish: the server keeps serving
   the previous bundle, and the next trainer run cleans up and publishes.

Then, without the trainer service: a rename and an erasure reach the live stream, and
`facestream run`, before the trainer runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import cv2
import pytest
from e2e_support import (
    Installation,
    commit_times,
    enroll_over_http,
    enrollment_photos,
    served_version,
    until,
)
from enroll_support import LIN_FACING, FramesTrack, Phone, clip_frames, connect_phone

from facecore.bundle import MANIFEST_FILE
from trainer.train_cli import PUBLISH_PAUSE_ENV

SharedFile = Callable[[str], Path]
TOKEN = "end-to-end-test-token-0123456789"
FOLDER_LIN = "Lin Manuel Miranda"  # as `enroll import` names lin_manuel_miranda/
LIN = "Lin-Manuel Miranda"
LATENCY_GOAL_S = 5.0  # bench/enroll_latency.py measures it (median well under 1 s)
LATENCY_BOUND_S = 15.0  # asserted: three times the goal, as the machine may be shared


@pytest.fixture
def installation(shared_dir: Path, tmp_path: Path) -> Iterator[Installation]:
    setup = Installation.create(shared_dir, tmp_path)
    try:
        yield setup
    finally:
        setup.stop_all()


async def test_enroll_train_serve_reload_and_a_killed_trainer(
    installation: Installation,
    shared_dir: Path,
    shared_file: SharedFile,
    record_property: Callable[..., None],
) -> None:
    setup = installation
    report = setup.run("enroll", "import", str(shared_dir / "people"))
    assert "5 of 5 files accepted" in report

    trainer = setup.start("trainer", "trainer")
    server, url = setup.serve(TOKEN)
    frames = clip_frames(shared_file("media/short_hamilton_clip.mp4"), LIN_FACING)

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        served: list[int | None] = [None]

        async def poll_served() -> None:
            while True:
                try:
                    served[0] = await served_version(http, url)
                except aiohttp.ClientConnectionError:
                    served[0] = None
                await asyncio.sleep(0.2)

        def serving_at_least(version: int) -> bool:
            return served[0] is not None and served[0] >= version

        poller = asyncio.ensure_future(poll_served())
        phone: Phone | None = None
        try:
            # 1. the trainer's first bundle reaches the server; the stream names Lin
            await until(lambda: served[0] is not None, 90, "the first bundle to be served",
                        trainer, server)
            first = setup.current_manifest()
            assert first is not None and FOLDER_LIN in first.labels
            phone = await connect_phone(url, TOKEN, FramesTrack(frames))
            await until(lambda: phone.first_named(FOLDER_LIN), 30,
                        f"an event naming {FOLDER_LIN}", server)

            # 2. remove Lin, then add him back while streaming, and time it
            setup.run("enroll", "remove", FOLDER_LIN, "--yes")
            await until(lambda: (m := setup.current_manifest()) and FOLDER_LIN not in m.labels,
                        60, "a bundle without Lin", trainer)
            without = setup.current_manifest()
            assert without is not None
            await until(lambda: serving_at_least(without.version), 20, "the server to reload",
                        server)
            await asyncio.sleep(1.5)  # the stream now reports Lin's face as unknown
            unknown_since = time.time()
            assert phone.first_named(FOLDER_LIN, after=unknown_since) is None

            # re-enrolled over the HTTP API: his photo and two stills of the clip
            await enroll_over_http(http, url, LIN, enrollment_photos(
                shared_file("media/lin-manuel-miranda.png"), frames))
            first_commit, committed = commit_times(setup.state_dir, LIN)
            await until(lambda: phone.first_named(LIN, after=committed), 60,
                        f"an event naming {LIN}", trainer, server)
            named = phone.first_named(LIN, after=committed)
            assert named is not None
            latency = named - committed
            record_property("enroll_to_named_s", round(latency, 2))
            print(f"\nenrollment commit -> first frame naming {LIN}: {latency:.2f} s "
                  f"({named - first_commit:.2f} s from his first sample; "
                  f"goal {LATENCY_GOAL_S:g} s)")
            assert latency < LATENCY_BOUND_S

            # 3. kill a trainer in the middle of a publish: the old bundle stays in force
            assert trainer.stop() == 0, trainer.output()[-3000:]
            serving = setup.current_manifest()
            assert serving is not None and LIN in serving.labels
            await until(lambda: served[0] == serving.version, 20, "the server to reload")
            paused = setup.start("trainer-paused", "trainer", env={PUBLISH_PAUSE_ENV: "60"})
            setup.run("enroll", "remove", "Joe Biden", "--yes")
            await until(lambda: "test hook: pausing" in paused.output(), 60,
                        "the trainer to reach its publish step", paused)
            paused.stop(signal.SIGKILL)
            killed_at = time.time()
            staging = [p for p in setup.bundles.iterdir() if p.name.startswith(".staging-")]
            assert staging and (staging[0] / MANIFEST_FILE).is_file()  # complete, unpublished
            assert setup.current_manifest() == serving
            await asyncio.sleep(2.0)
            assert served[0] == serving.version
            async with http.get(url + "/api/model") as response:
                model = await response.json()
            # the bundle in force still holds him, but the server names nobody erased
            assert model["version"] == serving.version and "Joe Biden" not in model["labels"]
            assert "Joe Biden" in serving.labels
            assert any(at > killed_at for at, _ in phone.received)  # the stream goes on

            # the next trainer run removes the leftover and publishes the change
            again = setup.start("trainer-again", "trainer")
            await until(lambda: (m := setup.current_manifest()) and "Joe Biden" not in m.labels,
                        60, "a bundle without Joe Biden", again)
            latest = setup.current_manifest()
            assert latest is not None and LIN in latest.labels
            assert not [p for p in setup.bundles.iterdir() if p.name.startswith(".staging-")]
            await until(lambda: serving_at_least(latest.version), 20, "the server to reload",
                        server)
        finally:
            poller.cancel()
            if phone is not None:
                await phone.close()

    assert server.stop() == 0, server.output()[-3000:]
    assert "shutting down" in server.output()
    events = [m for m in (phone.messages if phone else []) if "name" in m]
    assert events and all(
        set(e) >= {"time", "stream", "track", "name", "confidence", "box"} for e in events
    )


async def test_a_rename_or_an_erasure_reaches_the_stream_before_any_trainer_runs(
    installation: Installation, shared_dir: Path, shared_file: SharedFile
) -> None:
    """The README's path without the trainer service: `trainer --once` published a
    bundle, and nobody runs it again. A person renamed on the admin page is named anew,
    and one erased with `enroll remove` is no longer named, on the live stream within
    seconds; the next `trainer --once` removes every bundle that still holds him."""
    setup = installation
    setup.run("enroll", "import", str(shared_dir / "people"))
    setup.run("trainer", "--once", timeout=300)
    fitted = setup.current_manifest()
    assert fitted is not None and FOLDER_LIN in fitted.labels
    server, url = setup.serve(TOKEN)
    frames = clip_frames(shared_file("media/short_hamilton_clip.mp4"), LIN_FACING)
    renamed = "林-曼努尔·米兰达"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for _ in range(600):  # the server starts
            with contextlib.suppress(aiohttp.ClientConnectionError):
                if await served_version(http, url) == fitted.version:
                    break
            await asyncio.sleep(0.1)
        phone = await connect_phone(url, TOKEN, FramesTrack(frames))
        try:
            await until(lambda: phone.first_named(FOLDER_LIN), 30,
                        f"an event naming {FOLDER_LIN}", server)
            async with http.patch(f"{url}/api/people/{FOLDER_LIN}",
                                  json={"name": renamed}) as response:
                assert response.status == 200
            at = time.time()
            await until(lambda: phone.first_named(renamed, after=at), 10,
                        f"an event naming {renamed}", server)
            setup.run("enroll", "remove", renamed, "--yes")  # another process
            at = time.time()
            await until(lambda: phone.first_named("unknown", after=at), 10,
                        "Lin to become unknown", server)
            await asyncio.sleep(1.0)
            assert phone.first_named(renamed, after=at + 0.5) is None
            async with http.get(url + "/api/model") as response:
                model = await response.json()
            assert model["version"] == fitted.version and renamed not in model["labels"]
            assert FOLDER_LIN not in model["labels"]
        finally:
            await phone.close()
    # the served bundle, as published, still holds him until the trainer runs again
    assert FOLDER_LIN in (setup.bundles / f"v{fitted.version:06d}" / MANIFEST_FILE).read_text()
    setup.run("trainer", "--once", timeout=300)
    manifests = [p.read_text("utf-8") for p in setup.bundles.glob("v*/" + MANIFEST_FILE)]
    assert manifests and not [m for m in manifests if FOLDER_LIN in m or renamed in m]
    assert server.stop() == 0, server.output()[-3000:]


def test_run_names_a_renamed_person_anew_and_an_erased_one_nowhere(
    installation: Installation, shared_dir: Path, shared_file: SharedFile, tmp_path: Path
) -> None:
    """`facestream run` names people as the store has them now, not as the bundle that
    `trainer --once` published (nobody runs it again): after `enroll rename` the clip
    names Lin with his new name and never the old one, and after `enroll remove` no
    event names him, not even on a clip that opens on his face (the people are read
    before the first frame)."""
    setup = installation
    setup.run("enroll", "import", str(shared_dir / "people"))
    setup.run("trainer", "--once", timeout=300)
    fitted = setup.current_manifest()
    assert fitted is not None and FOLDER_LIN in fitted.labels
    clip = shared_file("media/short_hamilton_clip.mp4")
    facing = tmp_path / "lin-facing.mp4"  # his close-up, facing the camera from frame 0
    writer = cv2.VideoWriter(str(facing), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 360))
    for frame in clip_frames(clip, LIN_FACING):
        writer.write(frame)
    writer.release()

    def names(source: Path, step: str) -> list[str]:
        """The names in the events of `facestream run` on ``source``."""
        events = tmp_path / f"{step}.jsonl"
        setup.run("run", "--source", str(source), "--events", str(events), timeout=300)
        return [json.loads(line)["name"] for line in events.read_text("utf-8").splitlines()]

    renamed = "林-曼努尔·米兰达"
    setup.run("enroll", "rename", FOLDER_LIN, renamed)
    named = names(clip, "renamed")
    assert renamed in named and FOLDER_LIN not in named, named
    assert renamed in names(facing, "renamed-facing")

    setup.run("enroll", "remove", renamed, "--yes")
    for source, step in ((clip, "removed"), (facing, "removed-facing")):
        named = names(source, step)
        assert "unknown" in named and renamed not in named and FOLDER_LIN not in named, named
    assert setup.current_manifest() == fitted  # the bundle as published still holds him
