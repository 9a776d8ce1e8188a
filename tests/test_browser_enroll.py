"""The phone page's Enroll mode in a real browser: Debian's headless Chromium on a
phone-sized touch screen, against the real server over HTTPS, signs in, starts the
camera, switches to Enroll, types a name in Chinese and enrolls the person its fake
camera shows (Lin-Manuel Miranda, from the shared clip); with Chromium's own test
pattern as the camera (no face) the page says why nothing was saved; once the page
has reconnected, the panel no longer claims a person deleted meanwhile is enrolled.
Leaves screenshots in test-artifacts/enroll-*.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_support import (
    ARTIFACTS,
    SMALL_PHONE,
    DevTools,
    chromium,
    enroll_server,
    make_y4m,
    needs_chromium,
)
from enroll_support import LIN_FRAMES, enrollment_settings
from webrtc_support import TOKEN

from enrollment.store import EnrollmentStore
from facecore.config import Settings
from streamer.enroll.capture import CapturePlan
from streamer.live.engine import Engine
from streamer.web.server import PEERS

pytestmark = needs_chromium

NAME = "林曼努尔"
PANEL = "document.querySelector('[data-panel=\"enroll\"]')"
NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return enrollment_settings(shared_dir, tmp_path_factory.mktemp("browser-enroll") / "state")


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    with Engine.from_settings(settings, watch=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def lin_camera(shared_file: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip's close-ups of Lin-Manuel Miranda, turning his head, as a camera."""
    clip = shared_file("media/short_hamilton_clip.mp4")
    return make_y4m(clip, tmp_path_factory.mktemp("camera") / "lin.y4m", LIN_FRAMES)


async def _live_in_enroll_mode(page: DevTools) -> None:
    """From the signed-in page: the camera on, the link up, the Enroll tab chosen."""
    shown = await page.until("location.pathname === '/' && document.readyState === 'complete'", 30)
    assert shown, await page.evaluate("location.href + ' ' + document.body.innerText")
    assert await page.evaluate(NO_OVERFLOW), "the page is wider than the phone"
    await page.tap("#start")
    state = await page.until("document.body.dataset.state === 'live'", 30)
    assert state, await page.evaluate("document.getElementById('overlay-text').textContent")
    await page.tap('.modes [data-mode="enroll"]')
    assert await page.evaluate(f"!{PANEL}.hidden && document.body.dataset.mode === 'enroll'")
    assert await page.evaluate(NO_OVERFLOW), "the Enroll mode is wider than the phone"


def _enroll_text() -> str:
    return f"{PANEL}.innerText"


async def test_enroll_a_person_from_the_phone(
    settings: Settings, engine: Engine, lin_camera: Path, tmp_path: Path
) -> None:
    plan = CapturePlan(patience_s=1.5, timeout_s=40.0)
    async with (
        enroll_server(settings, engine, plan) as server,
        chromium(server.url + "/", lin_camera, tmp_path / "profile") as page,
    ):
        await page.emulate_phone(SMALL_PHONE)
        # no QR code: the login page, and the token typed in
        assert await page.until(
            "location.pathname === '/login' && document.readyState === 'complete'", 15
        )
        await page.type_text("#token", TOKEN)
        await page.tap("#login-form button[type=submit]")
        await _live_in_enroll_mode(page)

        start = ".enroll-form button[type=submit]"
        assert await page.evaluate(f"document.querySelector('{start}').disabled")
        await page.type_text("#enroll-name", NAME)
        assert await page.evaluate(f"!document.querySelector('{start}').disabled")
        await page.tap(start)
        collecting = await page.until(
            f"{PANEL}.dataset.enroll === 'collecting' && "
            "/^[1-9]\\d*\\//.test(document.querySelector('.enroll-count').textContent)",
            30,
        )
        assert collecting, await page.evaluate(_enroll_text())
        assert NAME in await page.evaluate("document.querySelector('.enroll-who').textContent")
        assert await page.evaluate("document.querySelector('.enroll-guidance').textContent")
        assert await page.evaluate(NO_OVERFLOW)
        await page.screenshot(ARTIFACTS / "enroll-collecting.png")

        finished = await page.until(
            f"['done', 'failed'].includes({PANEL}.dataset.enroll) && {PANEL}.dataset.enroll",
            60,
        )
        assert finished == "done", await page.evaluate(_enroll_text())
        title = await page.evaluate("document.querySelector('.enroll-result-title').innerText")
        assert title == f"{NAME} is enrolled"
        shown = await page.evaluate("document.querySelector('.enroll-result').innerText")
        assert f"{plan.target} face samples saved" in shown
        assert await page.evaluate(NO_OVERFLOW)
        await page.screenshot(ARTIFACTS / "enroll-done.png")

    with EnrollmentStore(settings.state_dir / "enrollment") as store:
        person = store.find_person(NAME)
        samples = store.samples(person.id)
    assert person.name == NAME
    assert len(samples) == plan.target and {s.source for s in samples} == {"live"}


async def test_enroll_refuses_without_a_face(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    plan = CapturePlan(timeout_s=6.0)
    async with enroll_server(settings, engine, plan) as server:
        # the QR code's link signs in; the camera is Chromium's test pattern: no face
        url = f"{server.url}/login#token={TOKEN}"
        async with chromium(url, None, tmp_path / "profile") as page:
            await page.emulate_phone(SMALL_PHONE)
            await _live_in_enroll_mode(page)

            # without a name there is nothing to start, and the page says so
            hint = await page.evaluate(
                "(h => !h.hidden && h.textContent)(document.getElementById('enroll-hint'))"
            )
            assert hint and "name" in hint, hint
            await page.screenshot(ARTIFACTS / "enroll-idle.png")
            await page.type_text("#enroll-name", "Nobody Here")
            await page.tap(".enroll-form button[type=submit]")
            guidance = await page.until(
                "(g => /no face/i.test(g.textContent) && g.textContent)"
                "(document.querySelector('.enroll-guidance'))",
                15,
            )
            assert guidance == "No face in view: look at the camera", await page.evaluate(
                _enroll_text()
            )
            finished = await page.until(
                f"['done', 'failed'].includes({PANEL}.dataset.enroll) && {PANEL}.dataset.enroll",
                plan.timeout_s + 15,
            )
            assert finished == "failed", await page.evaluate(_enroll_text())
            shown = await page.evaluate("document.querySelector('.enroll-result').innerText")
            assert "Enrollment did not finish" in shown and "no face in view" in shown.lower()
            assert await page.evaluate("document.getElementById('enroll-phase').textContent") == (
                "Not saved"
            )
            await page.screenshot(ARTIFACTS / "enroll-refused.png")

    with EnrollmentStore(settings.state_dir / "enrollment") as store:
        assert "Nobody Here" not in [p.name for p in store.list_people()]


async def test_after_a_reconnection_the_panel_claims_no_one_enrolled(
    settings: Settings, engine: Engine, lin_camera: Path, tmp_path: Path
) -> None:
    """The panel's "X is enrolled" belongs to the session that enrolled X: X may be
    deleted before the page reconnects, and the panel must not say it still."""
    name = "Lin-Manuel Miranda"
    plan = CapturePlan(patience_s=1.5, timeout_s=40.0)
    async with (
        enroll_server(settings, engine, plan) as server,
        chromium(f"{server.url}/login#token={TOKEN}", lin_camera, tmp_path / "profile") as page,
    ):
        await page.emulate_phone(SMALL_PHONE)
        await _live_in_enroll_mode(page)
        await page.type_text("#enroll-name", name)
        await page.tap(".enroll-form button[type=submit]")
        finished = await page.until(
            f"['done', 'failed'].includes({PANEL}.dataset.enroll) && {PANEL}.dataset.enroll",
            60,
        )
        assert finished == "done", await page.evaluate(_enroll_text())
        assert f"{name} is enrolled" in await page.evaluate(_enroll_text())

        # deleted (from the People page, another phone, the command line) ...
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.get(f"{server.url}/api/people", ssl=server.ssl_context) as r:
                people = {p["name"]: p["id"] for p in (await r.json())["people"]}
            url = f"{server.url}/api/people/{people[name]}"
            async with http.delete(url, ssl=server.ssl_context) as r:
                assert r.status == 204, await r.text()
        # ... and the link is lost: the page reconnects by itself, its panel afresh
        for session in server.app[PEERS].sessions:
            await session.close()
        assert await page.until("document.body.dataset.state !== 'live'", 15)
        back = await page.until("document.body.dataset.state === 'live'", 30)
        assert back, await page.evaluate("document.body.innerText")
        shown = await page.evaluate(_enroll_text())
        assert "is enrolled" not in shown, shown
        assert await page.evaluate(f"{PANEL}.dataset.enroll") == "idle"
        assert await page.evaluate("!document.querySelector('.enroll-form').hidden")
        assert await page.evaluate(NO_OVERFLOW)
        await page.screenshot(ARTIFACTS / "enroll-after-reconnect.png")
