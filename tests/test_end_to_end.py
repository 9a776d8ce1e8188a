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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import cv2
import pytest
from enroll_support import (
    LIN_FACING,
    FramesTrack,
    Phone,
    clip_frames,
    connect_phone,
    enrollment_settings,
)

from enrollment.store import EnrollmentStore
from facecore.bundle import MANIFEST_FILE, BundleManifest
from facecore.publish import current_bundle_dir
from trainer.train_cli import PUBLISH_PAUSE_ENV

SharedFile = Callable[[str], Path]
TOKEN = "end-to-end-test-token-0123456789"
FOLDER_LIN = "Lin Manuel Miranda"  # as `enroll import` names lin_manuel_miranda/
LIN = "Lin-Manuel Miranda"
LATENCY_GOAL_S = 5.0
LATENCY_BOUND_S = 30.0  # asserted: generous, this machine is shared


@dataclass
class Process:
    """A `facestream` subprocess whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


@dataclass
class Installation:
    """A temporary facestream installation and the processes started on it."""

    state_dir: Path
    global_options: list[str]
    env: dict[str, str]
    logs: Path
    processes: list[Process]

    @property
    def bundles(self) -> Path:
        return self.state_dir / "bundles"

    def run(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``facestream ARGS`` to completion; its output (it must succeed)."""
        done = subprocess.run(
            [sys.executable, "-m", "facestream", *args, *self.global_options],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        assert done.returncode == 0, f"facestream {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "facestream", *args, *self.global_options],
                env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def current_manifest(self) -> BundleManifest | None:
        directory = current_bundle_dir(self.bundles)
        if directory is None:
            return None
        return BundleManifest.from_json((directory / MANIFEST_FILE).read_text("utf-8"))


@pytest.fixture
def installation(shared_dir: Path, tmp_path: Path) -> Iterator[Installation]:
    settings = enrollment_settings(shared_dir, tmp_path / "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    logs = tmp_path / "logs"
    logs.mkdir()
    options = [
        "--state-dir", str(tmp_path / "state"),
        "--cache-dir", str(settings.cache_dir),
        "--models-dir", str(shared_dir / "models"),
    ]
    setup = Installation(tmp_path / "state", options, env, logs, [])
    try:
        yield setup
    finally:
        for process in reversed(setup.processes):
            process.stop(signal.SIGKILL if process.popen.poll() is None else signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _served_version(http: aiohttp.ClientSession, url: str) -> int | None:
    async with http.get(url + "/api/config") as response:
        assert response.status == 200
        version = (await response.json())["bundle_version"]
        return None if version is None else int(version)


async def _until(condition: Callable[[], object], timeout: float, what: str,
                 *logs: Process) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = "\n".join(f"--- {p.name}:\n{p.output()[-3000:]}" for p in logs)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{detail}")
        await asyncio.sleep(0.1)


def _commit_time(state_dir: Path, name: str) -> float:
    """Unix time of the newest sample of ``name``: when it was committed."""
    with EnrollmentStore(state_dir / "enrollment") as store:
        samples = store.samples(store.find_person(name).id)
    created = max(s.created for s in samples)
    return dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()


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
    port = _free_port()
    server = setup.start("serve", "serve", "--http", "--host", "127.0.0.1", "--port", str(port),
                         "--token", TOKEN)
    url = f"http://127.0.0.1:{port}"
    frames = clip_frames(shared_file("media/short_hamilton_clip.mp4"), LIN_FACING)

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        served: list[int | None] = [None]

        async def poll_served() -> None:
            while True:
                try:
                    served[0] = await _served_version(http, url)
                except aiohttp.ClientConnectionError:
                    served[0] = None
                await asyncio.sleep(0.2)

        poller = asyncio.ensure_future(poll_served())
        phone: Phone | None = None
        try:
            # 1. the trainer's first bundle reaches the server; the stream names Lin
            await _until(lambda: served[0] is not None, 90, "the first bundle to be served",
                         trainer, server)
            first = setup.current_manifest()
            assert first is not None and FOLDER_LIN in first.labels
            phone = await connect_phone(url, TOKEN, FramesTrack(frames))
            await _until(lambda: phone.first_named(FOLDER_LIN), 30,
                         f"an event naming {FOLDER_LIN}", server)

            # 2. remove Lin, then add him back while streaming, and time it
            setup.run("enroll", "remove", FOLDER_LIN, "--yes")
            await _until(lambda: (m := setup.current_manifest()) and FOLDER_LIN not in m.labels,
                         60, "a bundle without Lin", trainer)
            without = setup.current_manifest()
            assert without is not None
            await _until(lambda: served[0] == without.version, 20, "the server to reload",
                         server)
            await asyncio.sleep(1.5)  # the stream now reports Lin's face as unknown
            unknown_since = time.time()
            assert phone.first_named(FOLDER_LIN, after=unknown_since) is None

            # re-enrolled over the HTTP API: his photo and two stills of the clip
            async with http.post(url + "/api/people", json={"name": LIN}) as response:
                assert response.status == 201
                person = await response.json()
            form = aiohttp.FormData()
            photos = [("lin.png", shared_file("media/lin-manuel-miranda.png").read_bytes())]
            photos += [(f"still-{i}.png", cv2.imencode(".png", frames[i])[1].tobytes())
                       for i in (10, 30)]
            for name, data in photos:
                form.add_field("photo", io.BytesIO(data), filename=name)
            async with http.post(f"{url}/api/people/{person['id']}/samples", data=form) as response:
                upload = await response.json()
                assert response.status == 200 and upload["accepted"] == 3, upload
            committed = _commit_time(setup.state_dir, LIN)
            await _until(lambda: phone.first_named(LIN, after=committed), 60,
                         f"an event naming {LIN}", trainer, server)
            named = phone.first_named(LIN, after=committed)
            assert named is not None
            latency = named - committed
            record_property("enroll_to_named_s", round(latency, 2))
            print(f"\nenrollment commit -> first frame naming {LIN}: {latency:.2f} s "
                  f"(goal {LATENCY_GOAL_S:g} s)")
            assert latency < LATENCY_BOUND_S

            # 3. kill a trainer in the middle of a publish: the old bundle stays in force
            serving = setup.current_manifest()
            assert serving is not None and LIN in serving.labels
            await _until(lambda: served[0] == serving.version, 20, "the server to reload")
            assert trainer.stop() == 0, trainer.output()[-3000:]
            paused = setup.start("trainer-paused", "trainer", env={PUBLISH_PAUSE_ENV: "60"})
            setup.run("enroll", "remove", "Joe Biden", "--yes")
            await _until(lambda: "test hook: pausing" in paused.output(), 60,
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
            assert model["version"] == serving.version and "Joe Biden" in model["labels"]
            assert any(at > killed_at for at, _ in phone.received)  # the stream goes on

            # the next trainer run removes the leftover and publishes the change
            setup.start("trainer-again", "trainer")
            await _until(lambda: (m := setup.current_manifest()) and "Joe Biden" not in m.labels,
                         60, "a bundle without Joe Biden", *setup.processes[-1:])
            latest = setup.current_manifest()
            assert latest is not None and LIN in latest.labels
            assert not [p for p in setup.bundles.iterdir() if p.name.startswith(".staging-")]
            await _until(lambda: served[0] == latest.version, 20, "the server to reload", server)
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
