"""The phone page in a real browser: Debian's headless Chromium with a fake camera
that plays the shared clip, against the real server over HTTPS (in this process, or
`facestream serve` as a user runs it, killed and started again, or frozen with
SIGSTOP). Driven through the DevTools protocol; leaves screenshots in
test-artifacts/phone-*.png."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import (
    ARTIFACTS,
    NARROW_PHONE,
    PHONE,
    SMALL_PHONE,
    DevTools,
    chromium,
    make_y4m,
    needs_chromium,
)
from e2e_support import Installation, Process, free_port, until
from webrtc_support import TOKEN, build_people_bundle, live_server, server_settings

from enrollment.store import EnrollmentStore
from facecore.config import Settings
from streamer.live.engine import Engine
from streamer.web.server import PEERS
from trainer.service import TrainerService

pytestmark = needs_chromium

LONG_NAME = "Lin Manuel Miranda de la Vega Fernández y López-Hamilton"
STATE = "document.body.dataset.state"

# the returned video plays: its time moves on within a second
PLAYING = (
    "(async v => { const t = v.currentTime; await new Promise(r => setTimeout(r, 1000));"
    " return v.videoWidth > 0 && v.currentTime > t; })(document.getElementById('remote'))"
)
# the page's states as it goes through them: "state: status | overlay title | retry line"
RECORD_STATES = """(() => {
  window.statesSeen = [];
  const text = (id) => document.getElementById(id)?.textContent ?? '';
  const note = () => {
    const now = `${document.body.dataset.state}: ${text('status-text')} | `
      + `${text('overlay-title')} | ${text('retry-when')}`;
    if (statesSeen[statesSeen.length - 1] !== now) statesSeen.push(now);
  };
  new MutationObserver(note).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
  note();
})()"""


def on_screen(selector: str, phone: dict[str, object] = SMALL_PHONE) -> str:
    """Whether all of the element ``selector`` is shown across ``phone``'s width."""
    return (
        "(e => { const r = e?.getBoundingClientRect();"
        f" return Boolean(r?.width) && r.left >= 0 && r.right <= {phone['width']}; }})"
        f"(document.querySelector({selector!r}))"
    )


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

            # the server drops the phone: the page says so and reconnects by itself
            await page.evaluate(RECORD_STATES)
            dropped = {session.id for session in server.app[PEERS].sessions}
            for session in server.app[PEERS].sessions:
                await session.close()
            assert await page.until(f"{STATE} !== 'live'", 15)
            assert await page.until(f"{STATE} === 'live' && {PLAYING}", 30)
            seen = await page.evaluate("window.statesSeen")
            assert "retrying: Retry in 1 s | Connection lost | Reconnecting in 1 s." in seen, seen
            assert {session.id for session in server.app[PEERS].sessions}.isdisjoint(dropped)

            await page.evaluate("document.getElementById('start').click()")  # stop
            assert await page.until("document.body.dataset.state === 'idle'", 5)
            assert await page.evaluate("document.querySelectorAll('#people li').length") == 0
            assert await page.until("!document.getElementById('local').srcObject", 5)


# ---- a real `facestream serve` that goes away and comes back -----------------------------------


@pytest.fixture
def installation(settings: Settings, tmp_path: Path) -> Iterator[Installation]:
    """`facestream` commands on the module's state folder (its people and bundle)."""
    setup = Installation.of(settings, tmp_path / "logs")
    try:
        yield setup
    finally:
        setup.stop_all()


async def _serve(setup: Installation, port: int, name: str) -> Process:
    """`facestream serve` as a user runs it (HTTPS, one process) on 127.0.0.1:``port``,
    once it listens."""
    process = setup.start(
        name, "serve", "--host", "127.0.0.1", "--port", str(port), "--token", TOKEN
    )
    await until(lambda: "open in a browser" in process.output(), 90, f"{name} to listen", process)
    return process


async def _live(page: DevTools, *logs: Process) -> None:
    """Sign in from the QR code's link, start the camera, see the video come back."""
    shown = await page.until("location.pathname === '/' && document.readyState === 'complete'", 30)
    assert shown, await page.evaluate("location.href")
    await page.emulate_phone(SMALL_PHONE)
    await page.tap("#start")
    live = await page.until(f"{STATE} === 'live' && {PLAYING}", 45)
    assert live, await page.evaluate("document.body.innerText") + "".join(
        p.output()[-2000:] for p in logs
    )


async def test_the_page_reconnects_by_itself_when_the_server_comes_back(
    installation: Installation, camera_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = await _serve(installation, port, "serve-1")
    async with chromium(f"{url}/login#token={TOKEN}", camera_file, tmp_path / "profile") as page:
        await _live(page, server)
        await page.evaluate(RECORD_STATES)

        # the server is killed: the page says so and tries again, waiting longer each time
        server.stop(signal.SIGKILL)
        retrying = await page.until(f"{STATE} === 'retrying'", 60)
        assert retrying, await page.evaluate("window.statesSeen")
        assert await page.evaluate("document.getElementById('start-label').textContent") == "Stop"
        waiting = "document.getElementById('retry-when').textContent"
        third = await page.until(f"/in 4 s \\(attempt 3\\)/.test({waiting})", 20)
        assert third, await page.evaluate("window.statesSeen")
        status = await page.evaluate("document.getElementById('status-text').textContent")
        assert re.fullmatch(r"Retry in [34] s", status), status
        # "Reconnect now" tries at once, 2 s or more early (and fails: the server is down)
        await page.tap("#retry-now")
        fourth = await page.until(f"/attempt 4\\)/.test({waiting})", 2)
        assert fourth, await page.evaluate("window.statesSeen")
        # the wait stops growing at 15 s (16 s by doubling)
        fifth = await page.until(f"/in 15 s \\(attempt 5\\)/.test({waiting})", 12)
        assert fifth, await page.evaluate("window.statesSeen")
        status = await page.evaluate("document.getElementById('status-text').textContent")
        assert status == "Retry in 15 s"
        # a screen reader hears the state once, not the countdown every second
        said = await page.evaluate("document.getElementById('status-said').textContent")
        assert said == "Reconnecting", said
        for element in ("#status", "#retry-now", "#overlay-text"):
            assert await page.evaluate(on_screen(element)), element
        await page.screenshot(ARTIFACTS / "phone-reconnecting.png")
        # on a 360 px phone too, the whole status shows (the icon gives way)
        await page.emulate_phone(NARROW_PHONE)
        assert await page.evaluate(on_screen("#status", NARROW_PHONE))
        fits = "(e => e.scrollWidth <= e.clientWidth)(document.getElementById('status-text'))"
        assert await page.evaluate(fits), status
        await page.emulate_phone(SMALL_PHONE)

        # the server comes back on the same port: the page is live again, untouched
        server = await _serve(installation, port, "serve-2")
        back = await page.until(f"{STATE} === 'live' && {PLAYING}", 60)
        seen = await page.evaluate("window.statesSeen")
        assert back, seen
        assert any(s.startswith("retrying: Retry in 1 s | Connection lost") for s in seen), seen
        assert any(re.match(r"retrying: Retry in 8 s .*\(attempt 4\)", s) for s in seen), seen
        assert not any(s.startswith("error") for s in seen), seen

        # Stop ends the retrying: with the server back, the page stays stopped
        server.stop(signal.SIGKILL)
        assert await page.until(f"{STATE} === 'retrying'", 60)
        await page.tap("#start")
        assert await page.until(f"{STATE} === 'idle'", 5)
        assert await page.until("!document.getElementById('local').srcObject", 5)
        server = await _serve(installation, port, "serve-3")
        await asyncio.sleep(4.0)  # past the next retry's time
        assert await page.evaluate(STATE) == "idle"


async def test_a_hidden_page_lets_the_camera_go_and_reconnects_when_shown(
    installation: Installation, camera_file: Path, tmp_path: Path
) -> None:
    """The server goes away while the phone's user switches to another app (here:
    another tab in front): the page makes no attempt while hidden and turns the camera
    off, and reconnects with it as soon as it is shown again."""
    port = free_port()
    server = await _serve(installation, port, "serve-1")
    async with chromium(f"https://127.0.0.1:{port}/login#token={TOKEN}", camera_file,
                        tmp_path / "profile") as page:
        await _live(page, server)
        server.stop(signal.SIGKILL)
        assert await page.until(f"{STATE} === 'retrying'", 60)
        other_tab = await page.send("Target.createTarget", url="about:blank")
        assert await page.until("document.visibilityState === 'hidden'", 10)
        waiting = "document.getElementById('retry-when').textContent"
        shown_later = f"{waiting} === 'Reconnects when this page is shown again.'"
        assert await page.until(shown_later, 10), await page.evaluate(waiting)
        camera_off = "!document.getElementById('local').srcObject"
        assert await page.until(camera_off, 5)
        await page.evaluate(RECORD_STATES)

        # the server is back, the page still hidden: past the next retry's time (at
        # most 4 s after the third attempt), it has made none
        server = await _serve(installation, port, "serve-2")
        await asyncio.sleep(5.0)
        seen = await page.evaluate("window.statesSeen")
        assert all(s.startswith("retrying") for s in seen), seen
        assert await page.evaluate(camera_off)

        await page.send("Target.closeTarget", targetId=other_tab["targetId"])
        assert await page.until("document.visibilityState === 'visible'", 10)
        back = await page.until(f"{STATE} === 'live' && {PLAYING}", 45)
        assert back, await page.evaluate("window.statesSeen")
        assert not await page.evaluate(camera_off)


async def test_the_page_says_when_no_video_comes_back_and_when_it_does_again(
    installation: Installation, camera_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    server = await _serve(installation, port, "serve")
    url = f"https://127.0.0.1:{port}/login#token={TOKEN}"
    async with chromium(url, camera_file, tmp_path / "profile") as page:
        await _live(page, server)
        await page.evaluate(RECORD_STATES)
        # the server frozen for a few seconds (a long garbage collection, a swapping
        # machine): its video stops, the link stays up (ICE consent lasts ~30 s)
        server.popen.send_signal(signal.SIGSTOP)
        try:
            stalled = await page.until(f"{STATE} === 'stalled'", 10)
            status = await page.evaluate("document.getElementById('status-text').textContent")
            note = await page.evaluate("document.getElementById('stage-note')?.innerText")
            fits = [await page.evaluate(on_screen(e)) for e in ("#status", "#stage-note")]
            await page.screenshot(ARTIFACTS / "phone-no-video.png")
        finally:
            server.popen.send_signal(signal.SIGCONT)
        assert stalled, await page.evaluate("window.statesSeen")
        assert (status, note, fits) == ("No video", "No video from the server", [True, True])
        assert await page.until(f"{STATE} === 'live' && {PLAYING}", 15), await page.evaluate(
            "window.statesSeen"
        )
        seen = await page.evaluate("window.statesSeen")
        assert not any(s.startswith(("retrying", "error")) for s in seen), seen
        assert await page.evaluate("document.getElementById('status-text').textContent") == "Live"
        assert not await page.evaluate(on_screen("#stage-note"))
