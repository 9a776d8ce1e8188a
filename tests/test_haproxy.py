"""Several boxes as the README's "Several boxes" section sets them up: two
``facestream serve`` processes, each with its own state directory, sharing one
PostgreSQL store and one bundles folder, one trainer, and Debian's real ``haproxy``
in front, running the shipped ``deploy/haproxy/facestream.cfg`` (its addresses and
certificate swapped for loopback ones).

An enrollment made through one box is named by a phone on the other; the phone
page opened through the balancer in a real browser signs in and names him (the
FSBOX cookie keeps the browser on the box it signed in to); killing a box sends new
sessions, even those pinned to it, to the other."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from browser_support import ARTIFACTS, CHROMIUM, PHONE, chromium, make_y4m
from e2e_support import (
    REPO_ROOT,
    Installation,
    Process,
    enroll_over_http,
    enrollment_photos,
    free_port,
    until,
)
from enroll_support import LIN_FACING, FramesTrack, Phone, clip_frames, connect_phone
from yarl import URL

from facecore.bundle import MANIFEST_FILE, BundleManifest
from facecore.publish import current_bundle_dir
from streamer.web.auth import COOKIE_NAME
from streamer.web.tls import make_self_signed

HAPROXY_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "facestream.cfg"
TOKEN = "several-boxes-test-token-0123456789"
LIN = "Lin-Manuel Miranda"
STICKY_COOKIE = "FSBOX"

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None or not CHROMIUM.exists(),
    reason="needs Debian's haproxy and chromium (make test installs them)",
)


def balancer_config(shipped: str, https: int, http: int, pem: Path,
                    boxes: dict[str, int]) -> str:
    """The shipped configuration with loopback addresses and a test certificate; each
    replaced line must be there, so a change to the shipped file fails here."""
    replacements = [
        (r"bind :443 ssl crt \S+", f"bind 127.0.0.1:{https} ssl crt {pem}"),
        (r"bind :80\b", f"bind 127.0.0.1:{http}"),
        *((rf"server {name} \S+", f"server {name} 127.0.0.1:{port}")
          for name, port in boxes.items()),
    ]
    for pattern, replacement in replacements:
        shipped, count = re.subn(pattern, replacement, shipped)
        assert count == 1, f"{pattern!r} is not in {HAPROXY_CONFIG}"
    return shipped


@pytest.fixture
def boxes(shared_dir: Path, tmp_path: Path, postgres_url: str) -> Iterator[list[Installation]]:
    shared_bundles = tmp_path / "shared-bundles"
    made = []
    for name in ("box1", "box2"):
        box = Installation.create(shared_dir, tmp_path / name)
        box.global_options += ["--bundles-dir", str(shared_bundles)]
        box.env["FACESTREAM_ENROLLMENT_DATABASE_URL"] = postgres_url
        made.append(box)
    try:
        yield made
    finally:
        for box in made:
            box.stop_all()


def _published(bundles: Path) -> BundleManifest | None:
    directory = current_bundle_dir(bundles)
    if directory is None or not (directory / MANIFEST_FILE).is_file():
        return None
    return BundleManifest.from_json((directory / MANIFEST_FILE).read_text("utf-8"))


def _session(context: ssl.SSLContext, pinned_to: str | None = None) -> aiohttp.ClientSession:
    """A browser: cookies kept (for an IP address too), trusting the test certificate;
    ``pinned_to``: it already holds the FSBOX cookie of that box."""
    jar = aiohttp.CookieJar(unsafe=True)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), cookie_jar=jar)
    if pinned_to is not None:
        jar.update_cookies({STICKY_COOKIE: pinned_to}, URL("https://127.0.0.1/"))
    return http


async def _until_routed(url: str, context: ssl.SSLContext, box: str, pid: str,
                        balancer: Process) -> None:
    """Wait until HAProxy sends a browser pinned to ``box`` there (its checks passed).
    Each try is a new browser: one sent elsewhere would be pinned there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with _session(context, pinned_to=box) as http, http.get(url + "/ready") as r:
            if r.status == 200 and r.headers["X-Facestream-Worker"] == pid:
                return
        assert loop.time() < deadline, f"HAProxy never sent {box} its browser:\n" + (
            balancer.output()[-3000:])
        await asyncio.sleep(0.2)


async def test_two_boxes_behind_haproxy_share_enrollments_and_survive_a_dead_box(
    boxes: list[Installation], shared_dir: Path, shared_file: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    frames = clip_frames(shared_file("media/short_hamilton_clip.mp4"), LIN_FACING)
    ports = {f"box{i}": free_port() for i in (1, 2)}
    servers: dict[str, Process] = {}
    for (name, port), box in zip(ports.items(), boxes, strict=True):
        servers[name] = box.start(
            "serve", "serve", "--http", "--host", "127.0.0.1", "--port", str(port),
            "--token", TOKEN, "--trusted-proxies", "127.0.0.1",
        )
    trainer = boxes[0].start("trainer", "trainer")
    pids = {name: str(process.popen.pid) for name, process in servers.items()}

    cert, key = tmp_path / "lb-cert.pem", tmp_path / "lb-key.pem"
    make_self_signed(cert, key)
    pem = tmp_path / "lb.pem"  # HAProxy takes the certificate and its key in one file
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    https, http_port = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(balancer_config(HAPROXY_CONFIG.read_text(), https, http_port, pem, ports))
    # the global section Debian's /etc/haproxy/haproxy.cfg would give, logging to stderr
    global_config = tmp_path / "global.cfg"
    global_config.write_text("global\n    log stderr format raw local0\n")
    checked = subprocess.run(["haproxy", "-c", "-f", str(global_config), "-f", str(config)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    balancer = boxes[0].start_command(
        "haproxy", ["haproxy", "-db", "-f", str(global_config), "-f", str(config)]
    )
    url = f"https://127.0.0.1:{https}"
    context = ssl.create_default_context(cafile=str(cert))
    everyone = [balancer, trainer, *servers.values()]
    phones: list[Phone] = []
    try:
        for name, process in servers.items():
            await until(lambda p=process: "open in a browser" in p.output(), 90,
                        f"{name} to listen", process)
        for name in servers:  # HAProxy's checks see it up
            await _until_routed(url, context, name, pids[name], balancer)

        # plain HTTP to the balancer is sent to HTTPS
        async with aiohttp.ClientSession() as plain:
            async def redirected() -> str:
                async with plain.get(f"http://127.0.0.1:{http_port}/login",
                                     allow_redirects=False) as r:
                    return f"{r.status} {r.headers.get('Location')}"
            assert await redirected() == f"301 https://127.0.0.1:{http_port}/login"

        # a browser on box1 (by its FSBOX cookie) signs in and enrolls Lin
        async with _session(context, pinned_to="box1") as browser:
            async with browser.post(url + "/login", data={"token": TOKEN},
                                    allow_redirects=False) as r:
                assert r.status == 303, await r.text()
                assert r.headers["X-Facestream-Worker"] == pids["box1"]
                signed_in = r.cookies[COOKIE_NAME]
                assert signed_in["secure"], "the browser spoke HTTPS to the balancer"
            await enroll_over_http(browser, url, LIN, enrollment_photos(
                shared_file("media/lin-manuel-miranda.png"), frames))
            async with browser.get(url + "/api/people") as r:
                assert r.headers["X-Facestream-Worker"] == pids["box1"]
                assert [p["name"] for p in (await r.json())["people"]] == [LIN]

        # the trainer hears of it through PostgreSQL and publishes to the shared folder
        bundles = tmp_path / "shared-bundles"
        await until(lambda: (m := _published(bundles)) is not None and LIN in m.labels, 120,
                    f"a bundle with {LIN}", trainer)

        # a phone on box2 is named: box2 read the bundle of box1's enrollment
        async with _session(context, pinned_to="box2") as phone_http:
            phone = await connect_phone(url, TOKEN, FramesTrack(frames), http=phone_http)
        phones.append(phone)
        assert phone.worker == pids["box2"]
        await until(lambda: phone.first_named(LIN) is not None, 60,
                    f"box2 to name {LIN}", *servers.values())

        # the phone page through the balancer, as a phone opens it (the QR code's link):
        # its sign-in, page, config and offer must all reach the one box
        camera = make_y4m(shared_file("media/short_hamilton_clip.mp4"),
                          tmp_path / "camera.y4m", range(100))
        async with chromium(f"{url}/login#token={TOKEN}", camera, tmp_path / "profile") as page:
            await page.send("Emulation.setDeviceMetricsOverride", **PHONE)
            assert await page.until(
                "location.pathname === '/' && document.readyState === 'complete'", 15
            ), await page.evaluate("location.href")
            await page.evaluate("document.getElementById('start').click()")
            names = "[...document.querySelectorAll('#people .person:not(.unknown) .person-name')]"
            named = await page.until(
                f"{names}.some(e => /lin.manuel miranda/i.test(e.textContent))", 45
            )
            assert named, await page.evaluate(
                "document.body.dataset.state + ': ' "
                "+ document.getElementById('overlay-text').textContent"
            )
            await page.screenshot(ARTIFACTS / "phone-page-through-haproxy.png")

        # box1 dies: new sessions go to box2, a browser pinned to box1 too
        downs = balancer.output().count("box1 is DOWN")  # once already, before it listened
        servers["box1"].stop(signal.SIGKILL)
        for pinned in ("box1", None):
            async with _session(context, pinned_to=pinned) as phone_http:
                phone = await connect_phone(url, TOKEN, FramesTrack(frames), http=phone_http)
            phones.append(phone)
            assert phone.worker == pids["box2"], (pinned, phone.worker)
        await until(lambda: phones[-1].first_named(LIN) is not None, 60,
                    f"box2 to name {LIN} in a new session", servers["box2"])
        await until(lambda: balancer.output().count("box1 is DOWN") > downs, 30,
                    "HAProxy's health check to take box1 out", balancer)
        assert balancer.popen.poll() is None
    finally:
        await asyncio.gather(*(phone.close() for phone in phones))
        for process in everyone:
            process.stop()
