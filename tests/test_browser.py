"""The phone page in a real browser: Debian's headless Chromium with a fake camera
that plays the shared clip, against the real server over HTTPS. Driven through the
DevTools protocol; leaves a screenshot in test-artifacts/phone-page.png."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import ARTIFACTS, PHONE, chromium, make_y4m, needs_chromium
from webrtc_support import TOKEN, build_people_bundle, live_server, server_settings

from enrollment.store import EnrollmentStore
from facecore.config import Settings
from streamer.live.engine import Engine
from streamer.web.server import PEERS
from trainer.service import TrainerService

pytestmark = needs_chromium

LONG_NAME = "Lin Manuel Miranda de la Vega Fernández y López-Hamilton"


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("browser")
    settings = server_settings(shared_dir, root / "state", root / "cache")
    build_people_bundle(settings, shared_dir)
    # a long name, as a user may give: the live list cuts it to one line on a phone
    with EnrollmentStore.from_settings(settings) as store:
        store.rename_person(store.find_person("Lin Manuel Miranda").id, LONG_NAME)
    with TrainerService(settings, progress=False) as trainer:
        assert trainer.run_once() is not None
    return settings


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    with Engine.from_settings(settings, watch=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def camera_file(shared_file: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip's first 100 frames as the Y4M Chromium's fake camera plays (looped)."""
    clip = shared_file("media/short_hamilton_clip.mp4")
    return make_y4m(clip, tmp_path_factory.mktemp("camera") / "clip.y4m", range(100))


async def test_phone_page_shows_the_annotated_video_and_who_is_in_view(
    settings: Settings, engine: Engine, camera_file: Path, tmp_path: Path
) -> None:
    async with live_server(settings, engine, https=True) as server:
        # the QR code's link: the login page signs in from the #token fragment
        url = f"{server.url}/login#token={TOKEN}"
        async with chromium(url, camera_file, tmp_path / "profile") as page:
            await page.send("Emulation.setDeviceMetricsOverride", **PHONE)
            assert await page.until(
                "location.pathname === '/' && document.readyState === 'complete'", 15
            ), await page.evaluate("location.href")
            await page.evaluate("document.getElementById('start').click()")
            state = await page.until("document.body.dataset.state === 'live'", 30)
            assert state, await page.evaluate(
                "document.body.dataset.state + ': ' "
                "+ document.getElementById('overlay-text').textContent"
            )
            first = await page.until(
                "(v => v.videoWidth > 0 && v.currentTime > 0 && v.currentTime)"
                "(document.getElementById('remote'))",
                20,
            )
            assert first, "the returned video does not play"
            names = "[...document.querySelectorAll('#people .person:not(.unknown) .person-name')]"
            named = await page.until(
                f"{names}.some(e => /lin.manuel miranda/i.test(e.textContent))", 30
            )
            listed = await page.evaluate(names + ".map(e => e.textContent)")
            assert named, f"Lin-Manuel Miranda is not in the list: {listed}"
            assert LONG_NAME in listed
            # his long name is cut to the list's width, and the page does not scroll sideways
            assert await page.evaluate(
                f"{names}.every(e => e.getBoundingClientRect().right <= innerWidth)"
                " && document.documentElement.scrollWidth <= innerWidth"
            ), await page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
            assert await page.evaluate(f"{names}.some(e => e.scrollWidth > e.clientWidth)")
            later = await page.evaluate("document.getElementById('remote').currentTime")
            assert later > first, "the returned video stopped"
            size = await page.evaluate(
                "(v => [v.videoWidth, v.videoHeight])(document.getElementById('remote'))"
            )
            assert size == [640, 360]
            figures = await page.until(
                "(f => /^\\d+$/.test(f.fps) && /^\\d+$/.test(f.rtt) && f)({"
                "fps: document.getElementById('fps').textContent,"
                "rtt: document.getElementById('rtt').textContent})",
                10,
            )
            assert figures and int(figures["fps"]) > 0, figures
            await asyncio.sleep(1.0)  # let the list and figures settle for the picture
            await page.screenshot(ARTIFACTS / "phone-page.png")

            # the server drops the phone: the page says so and reconnects on request
            for session in server.app[PEERS].sessions:
                await session.close()
            assert await page.until("document.body.dataset.state === 'error'", 15)
            title = await page.evaluate("document.getElementById('overlay-title').textContent")
            assert title == "Connection lost"
            assert await page.evaluate("document.getElementById('start-label').textContent") == (
                "Reconnect"
            )
            await page.evaluate("document.getElementById('start').click()")
            assert await page.until("document.body.dataset.state === 'live'", 30)

            await page.evaluate("document.getElementById('start').click()")  # stop
            assert await page.until("document.body.dataset.state === 'idle'", 5)
            assert await page.evaluate("document.querySelectorAll('#people li').length") == 0
            assert await page.until("!document.getElementById('local').srcObject", 5)
