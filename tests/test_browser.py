"""The phone page in a real browser: Debian's headless Chromium with a fake camera
that plays the shared clip, against the real server over HTTPS. Driven through the
DevTools protocol; leaves a screenshot in test-artifacts/phone-page.png."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from webrtc_support import TOKEN, build_people_bundle, live_server, server_settings

from facecore.config import Settings
from streamer.engine import Engine
from streamer.server import PEERS

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PHONE = {"width": 412, "height": 915, "deviceScaleFactor": 2, "mobile": True}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file() or shutil.which("ffmpeg") is None,
    reason="needs /usr/bin/chromium and ffmpeg",
)


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("browser")
    settings = server_settings(shared_dir, root / "state", root / "cache")
    build_people_bundle(settings, shared_dir)
    return settings


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    with Engine.from_settings(settings, watch=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def camera_file(shared_file: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip as the Y4M Chromium's fake camera plays (640x360, 100 frames, looped)."""
    clip = shared_file("media/short_hamilton_clip.mp4")
    y4m = tmp_path_factory.mktemp("camera") / "clip.y4m"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(clip),
            "-vf",
            "scale=640:360",
            "-frames:v",
            "100",
            "-pix_fmt",
            "yuv420p",
            str(y4m),
        ],
        check=True,
        timeout=60,
    )
    return y4m


class DevTools:
    """The least of the Chrome DevTools protocol: commands on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: object) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json(timeout=30)
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]  # type: ignore[no-any-return]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float) -> Any:
        """Poll ``expression`` until it is truthy; its last value (falsy on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        value = await self.evaluate(expression)
        while not value and loop.time() < deadline:
            await asyncio.sleep(0.25)
            value = await self.evaluate(expression)
        return value


@asynccontextmanager
async def chromium(url: str, camera: Path, profile: Path) -> AsyncIterator[DevTools]:
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--ignore-certificate-errors",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        f"--window-size={PHONE['width']},{PHONE['height']}",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        endpoint = None
        while endpoint is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "chromium exited before it opened DevTools"
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            endpoint = found.group(1) if found else None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{endpoint}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_phone_page_shows_the_annotated_video_and_who_is_in_view(
    settings: Settings, engine: Engine, camera_file: Path, tmp_path: Path
) -> None:
    async with live_server(settings, engine, https=True) as server:
        # the QR code's link: the login page signs in from the #token fragment
        url = f"{server.url}/login#token={TOKEN}"
        async with chromium(url, camera_file, tmp_path / "profile") as page:
            await page.send("Emulation.setDeviceMetricsOverride", **PHONE)
            assert await page.until(
                "location.pathname === '/' && !!document.getElementById('start')", 15
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
            shot = await page.send("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "phone-page.png").write_bytes(base64.b64decode(shot["data"]))

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
