"""The admin page in a real browser: Debian's headless Chromium, against the real
server over HTTPS, lists people whose names are markup (``<script>``, an ``<img>``
with an ``onerror`` handler, ``&``) as text: no element is made from a name and no
script runs. Leaves a screenshot in test-artifacts/admin-names.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from browser_support import ARTIFACTS, SMALL_PHONE, chromium, enroll_server, needs_chromium
from webrtc_support import TOKEN, server_settings

from facecore.config import Settings
from streamer.enroll.capture import CapturePlan
from streamer.live.engine import Engine

pytestmark = needs_chromium

NAMES = [
    "<script>window.injected = 'script'</script>",
    '<img src="/static/icon.svg" onload="window.injected = \'img\'">',
    "Tom & Jerry <b>bold</b> &amp;",
    "王小明",
    # one long word (200 characters, the most a name may have) must wrap, not widen the page
    "Wolfeschlegelsteinhausenbergerdorff" * 5 + "Hubert" * 4 + "B",
]
PERSON_NAMES = "[...document.querySelectorAll('#people .person-name')]"


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("browser-admin")
    return server_settings(shared_dir, root / "state", root / "cache")


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    with Engine.from_settings(settings, watch=False) as engine:
        yield engine


async def test_names_with_markup_are_shown_as_text(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    async with enroll_server(settings, engine, CapturePlan()) as server:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for name in NAMES:
                async with http.post(
                    server.url + "/api/people", json={"name": name}, ssl=server.ssl_context
                ) as r:
                    assert r.status == 201, await r.text()
                    assert (await r.json())["name"] == name
        url = f"{server.url}/login#token={TOKEN}"
        async with chromium(url, None, tmp_path / "profile") as page:
            assert await page.until("location.pathname === '/'", 15)
            await page.evaluate("location.assign('/admin')")
            listed = await page.until(
                f"location.pathname === '/admin' && {PERSON_NAMES}.length === {len(NAMES)}"
                f" && {PERSON_NAMES}.map(e => e.textContent)",
                15,
            )
            assert sorted(listed or []) == sorted(NAMES), listed
            # each name is one text node: no element was made from it
            assert await page.evaluate(
                f"{PERSON_NAMES}.every(e => e.childNodes.length === 1"
                " && e.firstChild.nodeType === Node.TEXT_NODE)"
            )
            assert await page.evaluate(
                "document.querySelectorAll('#people script, #people b,"
                " #people img:not(.samples img)').length"
            ) == 0
            assert await page.evaluate("typeof window.injected") == "undefined"
            # the delete confirmation names the person as text too
            await page.evaluate(
                "document.querySelector('.person-card [data-action=\"delete\"]').click()"
            )
            title = "document.getElementById('confirm-title')"
            shown = await page.evaluate(f"{title}.textContent")
            assert shown in {f"Delete {name}?" for name in NAMES}, shown
            assert await page.evaluate(f"{title}.children.length") == 0
            assert await page.evaluate("typeof window.injected") == "undefined"
            await page.evaluate("document.getElementById('confirm').close()")
            # on a phone the longest name wraps inside the page: nothing to scroll sideways
            await page.emulate_phone(SMALL_PHONE)
            widths = await page.until(
                "innerWidth === 390 && [document.documentElement.scrollWidth, innerWidth]", 15
            )
            assert widths == [390, 390], widths
            await page.evaluate(
                f"{PERSON_NAMES}.find(e => e.textContent.length === 200).scrollIntoView()"
            )
            await page.screenshot(ARTIFACTS / "admin-names.png")
