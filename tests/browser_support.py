"""Helpers for the browser tests: Debian's headless Chromium with a fake camera (a Y4M
file made with ffmpeg, or Chromium's own test pattern, which has no face), driven
through the least of the Chrome DevTools protocol, and the phone page's server with
its Enroll mode.

Not a test module (pytest collects only ``test_*.py``); the test files import it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from webrtc_support import LiveServer, live_server

from facecore.config import Settings
from streamer.enroll.api import add_enrollment_routes
from streamer.enroll.camera import attach_live_enrollment
from streamer.enroll.capture import CapturePlan
from streamer.live.engine import Engine

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# a phone: 412x915 CSS px (a large Android phone), 390x844 (an iPhone 12 to 15) and
# 360x780 (many small Android phones)
PHONE = {"width": 412, "height": 915, "deviceScaleFactor": 2, "mobile": True}
SMALL_PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
NARROW_PHONE = {"width": 360, "height": 780, "deviceScaleFactor": 3, "mobile": True}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file() or shutil.which("ffmpeg") is None,
    reason="needs /usr/bin/chromium and ffmpeg",
)


def make_y4m(clip: Path, y4m: Path, frames: range) -> Path:
    """The frames ``frames`` of ``clip`` as the Y4M Chromium's fake camera plays (at
    640x360, looped)."""
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(clip),
            "-vf",
            f"trim=start_frame={frames.start}:end_frame={frames.stop},"
            "setpts=PTS-STARTPTS,scale=640:360",
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

    async def emulate_phone(self, metrics: dict[str, object]) -> None:
        """A phone's viewport (``PHONE``, ``SMALL_PHONE``, ``NARROW_PHONE``) with a touch screen."""
        await self.send("Emulation.setDeviceMetricsOverride", **metrics)
        await self.send("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=5)

    async def tap(self, selector: str) -> None:
        """Press the middle of the element ``selector``, where a finger would: it must be
        visible there (not covered, not outside the viewport)."""
        found = json.dumps(selector)
        point = await self.evaluate(
            f"(e => {{ if (!e) return 'absent'; e.scrollIntoView({{block: 'center'}});"
            "const r = e.getBoundingClientRect(); const x = r.left + r.width / 2,"
            " y = r.top + r.height / 2; if (!r.width || !r.height) return 'not shown';"
            "const top = document.elementFromPoint(x, y);"
            "return e.contains(top) ? [x, y] : 'covered by ' + (top ? top.outerHTML.slice(0, 80)"
            f" : 'nothing'); }})(document.querySelector({found}))"
        )
        assert isinstance(point, list), f"cannot tap {selector}: {point}"
        x, y = point
        # a click there: unlike a touch, its press and release cannot turn into a long
        # press when the machine is slow
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type_text(self, selector: str, text: str) -> None:
        """Focus the field ``selector`` and enter ``text`` as a keyboard (or an input
        method, for any script) does."""
        await self.tap(selector)
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@asynccontextmanager
async def chromium(
    url: str, camera: Path | None, profile: Path, size: tuple[int, int] = (412, 915)
) -> AsyncIterator[DevTools]:
    """Headless Chromium on ``url`` whose camera plays ``camera`` (a Y4M file), or
    Chromium's test pattern when None."""
    fake = [f"--use-file-for-fake-video-capture={camera}"] if camera is not None else []
    # Chromium makes a temporary folder for its singleton socket and leaves it behind
    # when it is stopped: give it one of ours, removed after (short: a socket's path
    # must fit in 108 bytes, which the test's own temporary folder does not)
    with tempfile.TemporaryDirectory(prefix="fs-chromium-", ignore_cleanup_errors=True) as scratch:
        process = await asyncio.create_subprocess_exec(
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            *fake,
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--ignore-certificate-errors",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={size[0]},{size[1]}",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TMPDIR": scratch},
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


@asynccontextmanager
async def enroll_server(
    settings: Settings, engine: Engine, plan: CapturePlan
) -> AsyncIterator[LiveServer]:
    """The server as `facestream serve` builds it (pages, enrollment API, Enroll mode
    following ``plan``) on 127.0.0.1, a free port, HTTPS with a self-signed certificate."""

    def extend(app: web.Application) -> None:
        add_enrollment_routes(app, settings)
        attach_live_enrollment(app, plan)

    async with live_server(settings, engine, https=True, extend=extend) as server:
        yield server
