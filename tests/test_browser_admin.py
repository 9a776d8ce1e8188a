"""The admin page in a real browser: Debian's headless Chromium, against the real
server over HTTPS, lists people whose names are markup (``<script>``, an ``<img>``
with an ``onerror`` handler, ``&``) as text: no element is made from a name and no
script runs, and the page fits a phone with a rename form open (screenshots in
test-artifacts/admin-names.png and admin-rename.png); the model card names people as
the store has them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from browser_support import ARTIFACTS, SMALL_PHONE, chromium, enroll_server, needs_chromium
from webrtc_support import TOKEN, build_people_bundle, server_settings

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
            # so does an open rename form (its input kept its natural width: 450 px)
            await page.evaluate(
                "document.querySelector('.person-card [data-action=\"rename\"]').click()"
            )
            widths = await page.until(
                "!document.querySelector('.rename-form').hidden"
                " && [document.documentElement.scrollWidth, innerWidth]", 15
            )
            assert widths == [390, 390], widths
            await page.screenshot(ARTIFACTS / "admin-rename.png")
            await page.evaluate(
                "document.querySelector('.person-card [data-action=\"cancel-rename\"]').click()"
            )
            await page.evaluate(
                f"{PERSON_NAMES}.find(e => e.textContent.length === 200).scrollIntoView()"
            )
            await page.screenshot(ARTIFACTS / "admin-names.png")


async def test_the_admin_page_says_what_went_wrong(
    settings: Settings, engine: Engine, shared_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """Signing in from /admin goes back there; a name past the limit is refused in
    words, not cut; erasing a sample asks first; a person removed elsewhere leaves the
    list; a server out of reach is said so, for every action."""
    async with (
        enroll_server(settings, engine, CapturePlan()) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        people = {}
        for name in ("Barack Obama", "Joe Biden"):
            async with http.post(server.url + "/api/people", json={"name": name},
                                 ssl=server.ssl_context) as r:
                people[name] = (await r.json())["id"]
        form = aiohttp.FormData()
        form.add_field("photo", shared_file("media/obama.jpg").read_bytes(),
                       filename="obama.jpg")
        async with http.post(f"{server.url}/api/people/{people['Barack Obama']}/samples",
                             data=form, ssl=server.ssl_context) as r:
            assert (await r.json())["accepted"] == 1, await r.text()
        async with chromium(f"{server.url}/admin", None, tmp_path / "profile") as page:
            assert await page.until("location.pathname === '/login'", 15)
            assert await page.evaluate("location.search") == "?next=/admin"
            # on a small phone the sign-in card sits in the middle, inside the screen
            await page.emulate_phone(SMALL_PHONE)
            card = "document.querySelector('.login-card').getBoundingClientRect()"
            margins = await page.until(
                f"innerWidth === 390 && (r => [r.left, innerWidth - r.right])({card})", 15)
            assert margins and margins[0] > 0 and abs(margins[0] - margins[1]) < 1, margins
            await page.send("Emulation.clearDeviceMetricsOverride")
            await page.send("Emulation.setTouchEmulationEnabled", enabled=False)
            await page.type_text("#token", TOKEN)
            await page.evaluate("document.getElementById('login-form').requestSubmit()")
            biden = f".person-card[data-id=\"{people['Joe Biden']}\"]"
            obama = f".person-card[data-id=\"{people['Barack Obama']}\"]"
            shown = f"!!document.querySelector('{biden}') && !!document.querySelector('{obama}')"
            assert await page.until(f"location.pathname === '/admin' && {shown}", 15), (
                await page.evaluate("location.href")
            )
            notice = "document.getElementById('notice')"

            async def said(pattern: str) -> str:
                shown = await page.until(
                    f"!{notice}.hidden && /{pattern}/.test({notice}.textContent)"
                    f" && {notice}.textContent", 10)
                assert shown, await page.evaluate(f"{notice}.textContent")
                return str(shown)

            await page.tap(f"{biden} [data-action=rename]")
            await page.evaluate(f"document.querySelector('{biden} .rename-form input')"
                                f".value = '{'Z' * 300}'")
            await page.tap(f"{biden} .rename-form [type=submit]")
            await said("at most 200 characters")
            # the longest name there may be, as one word: the notice wraps it on a phone
            await page.evaluate(f"document.querySelector('{biden} .rename-form input')"
                                f".value = '{'Z' * 200}'")
            await page.tap(f"{biden} .rename-form [type=submit]")
            await said("Renamed Joe Biden to Z{200}")
            form = f"document.querySelector('{biden} .rename-form')"
            assert await page.evaluate(f"{form}.hidden")  # closed once renamed
            await page.tap(f"{biden} [data-action=rename]")
            for kind in ("keyDown", "keyUp"):
                await page.send("Input.dispatchKeyEvent", type=kind, key="Escape",
                                code="Escape", windowsVirtualKeyCode=27)
            assert await page.until(
                f"{form}.hidden && document.activeElement.dataset.action === 'rename'", 5)
            await page.emulate_phone(SMALL_PHONE)
            widths = await page.until(
                "innerWidth === 390 && [document.documentElement.scrollWidth, innerWidth]", 15
            )
            assert widths == [390, 390], widths
            await page.send("Emulation.clearDeviceMetricsOverride")
            await page.send("Emulation.setTouchEmulationEnabled", enabled=False)

            assert await page.until(
                f"document.querySelectorAll('{obama} .sample').length === 1", 10)
            await page.tap(f"{obama} .sample-remove")
            assert await page.evaluate("document.getElementById('confirm').open")
            assert await page.evaluate(
                "document.getElementById('confirm-title').textContent"
            ) == "Remove this sample?"
            await page.tap("#confirm-delete")
            await said("The sample was removed")
            assert await page.until(
                f"document.querySelectorAll('{obama} .sample').length === 0", 10)

            # the page's own refresh waits while it is hidden: the rename meets the 404
            await page.evaluate(
                "Object.defineProperty(document, 'hidden', {value: true, configurable: true})")
            async with http.delete(f"{server.url}/api/people/{people['Joe Biden']}",
                                   ssl=server.ssl_context) as r:
                assert r.status == 204
            await page.tap(f"{biden} [data-action=rename]")
            await page.tap(f"{biden} .rename-form [type=submit]")
            await said("Cannot rename Z{200}: no enrolled person")
            assert await page.until(f"!document.querySelector('{biden}')", 10)
            # in view again, it shows by itself a person added elsewhere, and a rename
            await page.evaluate("delete document.hidden")
            async with http.post(server.url + "/api/people", json={"name": "Grace Hopper"},
                                 ssl=server.ssl_context) as r:
                assert r.status == 201
            async with http.patch(f"{server.url}/api/people/{people['Barack Obama']}",
                                  json={"name": "奥巴马"}, ssl=server.ssl_context) as r:
                assert r.status == 200
            names = f"{PERSON_NAMES}.map(e => e.textContent)"
            listed = await page.until(
                f"(n => n.includes('Grace Hopper') && n.includes('奥巴马') && n)({names})", 10)
            assert listed and "Barack Obama" not in listed, await page.evaluate(names)

            await page.send("Network.enable")
            await page.send("Network.emulateNetworkConditions", offline=True, latency=0,
                            downloadThroughput=-1, uploadThroughput=-1)
            await page.type_text("#new-name", "Ada Lovelace")
            await page.tap("#add-person [type=submit]")
            await said("Cannot add the person: the server cannot be reached")
            await page.tap(f"{obama} [data-action=delete]")
            await page.tap("#confirm-delete")
            await said("Cannot delete 奥巴马: the server cannot be reached")


async def test_the_model_card_drops_an_erased_person_at_once(
    shared_dir: Path, tmp_path: Path
) -> None:
    """The bundle keeps its version when somebody is erased; the card's names follow
    the store (as the stream's do), not the next version."""
    settings = server_settings(shared_dir, tmp_path / "state", tmp_path / "cache")
    build_people_bundle(settings, shared_dir)
    people = "(e => e && e.textContent)([...document.querySelectorAll('#model-facts dt')]" \
        ".find(t => t.textContent === 'People')?.nextElementSibling)"
    with Engine.from_settings(settings, watch=False) as engine:
        async with (
            enroll_server(settings, engine, CapturePlan()) as server,
            chromium(f"{server.url}/login#token={TOKEN}", None, tmp_path / "profile") as page,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        ):
            assert await page.until("location.pathname === '/'", 15)
            await page.evaluate("location.assign('/admin')")
            listed = await page.until(f"{people}", 15)
            assert listed and "Joe Biden" in listed, listed
            async with http.delete(f"{server.url}/api/people/Joe Biden",
                                   ssl=server.ssl_context) as r:
                assert r.status == 204, await r.text()
            after = await page.until(f"!{people}.includes('Joe Biden') && {people}", 15)
            assert after and "Barack Obama" in after, await page.evaluate(people)
