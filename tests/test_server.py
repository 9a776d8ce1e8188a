"""The web server's edges: token, certificate, announcement, login, and every kind
of bad offer, against the real application on a loopback port."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import os
import queue
import re
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from webrtc_support import (
    BAD_JSON_BODIES,
    TOKEN,
    LiveServer,
    connect,
    live_server,
    post_offer,
    server_settings,
)

from facecore.config import Settings, load_settings
from facecore.errors import ConfigError
from streamer.live.engine import Engine
from streamer.web.announce import lan_addresses, qr_text, server_urls
from streamer.web.auth import COOKIE_NAME, load_or_create_token, token_path
from streamer.web.signalling import parse_ice_servers
from streamer.web.tls import CertificatePair, ensure_certificate, fingerprint, server_ssl_context


def _settings(tmp_path: Path, environ: dict[str, str] | None = None, **cli: object) -> Settings:
    return load_settings(
        {"state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"), **cli},
        environ or {},
    )


# ---- token ------------------------------------------------------------------------------


def test_token_is_made_once_and_kept_private(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    token, created = load_or_create_token(settings)
    assert created and len(token) >= 32
    path = token_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_token(settings) == (token, False)


def test_a_given_token_wins_and_is_never_written(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"FACESTREAM_TOKEN": "from-the-environment-123"})
    assert load_or_create_token(settings) == ("from-the-environment-123", False)
    assert not token_path(settings).exists()
    with pytest.raises(ConfigError, match=r"server\.token"):
        load_or_create_token(_settings(tmp_path, **{"server.token": "short"}))


# ---- certificate --------------------------------------------------------------------------


def test_self_signed_certificate_is_made_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pair = ensure_certificate(settings, ["192.0.2.7"])
    assert pair.self_signed
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.cert.stat().st_mode) == 0o600  # the README: all files 0600
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "192.0.2.7"} <= ips
    first = fingerprint(pair.cert)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", first)
    assert fingerprint(ensure_certificate(settings).cert) == first  # reused, not remade
    pair.cert.chmod(0o644)  # as older versions left it: made private when reused
    assert fingerprint(ensure_certificate(settings).cert) == first
    assert stat.S_IMODE(pair.cert.stat().st_mode) == 0o600
    server_ssl_context(pair)


def test_user_certificate_must_come_with_its_own_key(tmp_path: Path) -> None:
    made = ensure_certificate(_settings(tmp_path / "a"))
    other = ensure_certificate(_settings(tmp_path / "b"))
    with pytest.raises(ConfigError, match="both --cert and --key"):
        ensure_certificate(_settings(tmp_path, **{"server.cert_file": str(made.cert)}))
    given = ensure_certificate(
        _settings(
            tmp_path, **{"server.cert_file": str(made.cert), "server.key_file": str(made.key)}
        )
    )
    assert given == CertificatePair(made.cert, made.key, self_signed=False)
    # a pair that does not load: the error names the file at fault, not "[SSL] PEM lib"
    garbage, missing = tmp_path / "garbage.pem", tmp_path / "missing.pem"
    garbage.write_text("not PEM at all\n")
    for cert, key, fault in [
        (made.cert, other.key, f"the key {other.key} does not match the certificate {made.cert}"),
        (garbage, made.key, f"the certificate {garbage} is not a PEM certificate"),
        (made.key, made.key, f"the certificate {made.key} is not a PEM certificate"),
        (made.cert, garbage, f"the key {garbage} is not a PEM private key"),
        (made.cert, made.cert, f"the key {made.cert} is not a PEM private key"),
        (missing, made.key, f"cannot read the certificate {missing}: No such file"),
        (made.cert, missing, f"cannot read the key {missing}: No such file"),
    ]:
        with pytest.raises(ConfigError) as raised:
            server_ssl_context(CertificatePair(cert, key, self_signed=False))
        assert fault in str(raised.value) and "PEM lib" not in str(raised.value), fault


def test_a_damaged_self_signed_pair_is_made_anew_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    with caplog.at_level(logging.WARNING, logger="streamer.web.tls"):
        pair = ensure_certificate(settings)
    assert not caplog.records  # the first one is made quietly
    other = ensure_certificate(_settings(tmp_path / "other"))
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )
    for path, damage, fault in [
        (pair.cert, b"-----BEGIN CERTIFICATE-----\ncut short", "cert.pem is not a PEM certificate"),
        (pair.key, b"", "key.pem is not a PEM private key"),
        (pair.key, None, "cannot read the key"),
        (pair.key, other.key.read_bytes(), "does not match the certificate"),
        (pair.key, encrypted, "key.pem is encrypted"),
    ]:
        before = fingerprint(pair.cert)
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streamer.web.tls"):
            assert ensure_certificate(settings) == pair
        assert [r.levelname for r in caplog.records] == ["WARNING"], fault
        assert fault in caplog.text and "fingerprint has changed" in caplog.text
        assert fingerprint(pair.cert) != before
        server_ssl_context(pair)  # the new pair loads
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamer.web.tls"):
        kept = fingerprint(ensure_certificate(settings).cert)
    assert kept == fingerprint(pair.cert) and not caplog.records  # a sound pair is kept


# ---- ICE servers and the start-up announcement -------------------------------------------


def test_ice_servers_from_settings() -> None:
    stun, turn = parse_ice_servers(["stun:stun.example.org:3478", "turn:ann:s3cret@10.0.0.2:3478"])
    assert (stun.urls, stun.username) == ("stun:stun.example.org:3478", None)
    assert (turn.urls, turn.username, turn.credential) == ("turn:10.0.0.2:3478", "ann", "s3cret")
    tcp = parse_ice_servers(["turns:u:p@relay.example.org:5349?transport=tcp"])[0]
    assert tcp.urls == "turns:relay.example.org:5349?transport=tcp"
    for bad in ("stun.example.org", "turn:relay.example.org:3478", "stun:u:p@host:1", "http://x"):
        with pytest.raises(ConfigError, match=r"server\.ice_servers"):
            parse_ice_servers([bad])


def _qr_image(text: str) -> np.ndarray:
    """Render terminal half-block QR text (light modules drawn) back to pixels."""
    rows = []
    for line in text.splitlines():
        if line:
            rows.append([255 if ch in "█▀" else 0 for ch in line])
            rows.append([255 if ch in "█▄" else 0 for ch in line])
    image = cv2.resize(np.array(rows, np.uint8), None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(image, 32, 32, 32, 32, cv2.BORDER_CONSTANT, value=255)


def test_announcement_urls_and_a_qr_code_a_camera_can_read() -> None:
    for address in lan_addresses():
        ip = ipaddress.ip_address(address)
        assert ip.version == 4 and not ip.is_loopback and not ip.is_link_local
    assert lan_addresses("192.0.2.9") == ["192.0.2.9"]
    assert server_urls("https", ["192.168.1.20", "fd00::2"], 8443) == [
        "https://192.168.1.20:8443/",
        "https://[fd00::2]:8443/",
    ]
    url = f"https://192.168.1.20:8443/login#token={TOKEN}"
    decoded, _, _ = cv2.QRCodeDetector().detectAndDecode(_qr_image(qr_text(url)))
    assert decoded == url


# ---- the application -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("server")
    return server_settings(shared_dir, root / "state", root / "cache", max_sessions=1)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    with Engine.from_settings(settings, watch=False) as engine:
        yield engine


async def test_without_the_token_only_the_login_page_is_served(
    settings: Settings, engine: Engine
) -> None:
    async with (
        live_server(settings, engine) as server,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/", "/static/app.js", "/api/nothing-here"):
            async with http.get(server.url + path, allow_redirects=False) as r:
                if path.startswith("/api/"):
                    assert r.status == 401
                else:
                    assert (r.status, r.headers["Location"]) == (303, "/login")
        async with http.get(server.url + "/admin", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/login?next=/admin")
        async with http.get(server.url + "/api/config") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["error"] == "Unauthorized"
        async with http.get(server.url + "/login") as r:
            page = await r.text()
            assert r.status == 200 and 'name="token"' in page
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        for public in ("/static/style.css", "/static/login.js", "/static/icon.svg"):
            async with http.get(server.url + public) as r:
                assert r.status == 200, public
        for token in (None, "wrong-token-wrong-token"):
            status, body = await post_offer(server, {"sdp": "v=0", "type": "offer"}, token=token)
            assert status == 401, body


async def test_login_sets_a_strict_http_only_cookie(settings: Settings, engine: Engine) -> None:
    async with (
        live_server(settings, engine) as server,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
    ):
        async with http.post(server.url + "/login", data={"token": "not-it"}) as r:
            assert r.status == 401
            assert 'id="login-error" hidden' not in await r.text()
        async with http.post(
            server.url + "/login", data={"token": TOKEN}, allow_redirects=False
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/")
            cookie = r.headers["Set-Cookie"]
        # a sign-in asked for by the admin page goes back there, and only to a page of ours
        for asked, landing in (("/admin", "/admin"), ("https://elsewhere.example/", "/"),
                               ("//elsewhere.example/admin", "/")):
            async with http.post(server.url + "/login", params={"next": asked},
                                 data={"token": TOKEN}, allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (303, landing), asked
        assert cookie.startswith(COOKIE_NAME + "=") and TOKEN not in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; the HTTPS test checks Secure
        async with http.get(server.url + "/") as r:
            assert r.status == 200 and 'id="remote"' in await r.text()
        async with http.get(server.url + "/api/config") as r:
            config = await r.json()
            assert config == {
                "ice_servers": [],
                "sessions": 0,
                "max_sessions": 1,
                "bundle_version": None,
            }
        async with http.post(server.url + "/logout", allow_redirects=False) as r:
            assert r.status == 303
        async with http.get(server.url + "/", allow_redirects=False) as r:
            assert r.status == 303


# bodies an outsider can post to the login form that aiohttp's form parser cannot read
UNREADABLE_FORMS = [
    ("application/x-www-form-urlencoded", b"token=\xff", "can't decode byte 0xff"),
    ("multipart/form-data; boundary=x", b"junk", "Could not find starting boundary"),
    ("application/x-www-form-urlencoded; charset=klingon", b"token=a", "unknown encoding"),
    ("multipart/form-data; boundary=x",
     b'--x\r\nContent-Disposition: form-data; name="token"\r\nX-A: a\x00b\r\n\r\n'
     b"abc\r\n--x--\r\n", "Invalid HTTP header"),
]


async def test_a_login_form_that_cannot_be_read_is_a_400_logged_in_one_line(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.web.server import SECURITY_HEADERS

    big = io.BytesIO(b"token=" + b"a" * 2**21)  # over the 1 MiB of a form
    async with live_server(settings, engine) as server, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.INFO):
            for content_type, data, reason in UNREADABLE_FORMS:
                async with http.post(server.url + "/login", data=data,
                                     headers={"Content-Type": content_type}) as r:
                    assert (r.status, r.content_type) == (400, "application/json"), reason
                    body = await r.json()
                    assert body["error"] == "Bad Request" and reason in body["reason"], body
                    assert all(r.headers[k] == v for k, v in SECURITY_HEADERS.items())
            async with http.post(server.url + "/login", data=big, headers={
                    "Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert (r.status, r.content_type) == (413, "application/json")
                assert await r.json() == {"error": "Request Entity Too Large",
                                          "reason": "the body may be at most 1 MiB"}
    refused = [r for r in caplog.records if "login form" in r.getMessage()]
    assert len(refused) == len(UNREADABLE_FORMS), caplog.text
    assert all(r.levelno < logging.WARNING and r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text


async def _login(http: aiohttp.ClientSession, server: LiveServer, token: str) -> int:
    async with http.post(
        server.url + "/login", data={"token": token}, allow_redirects=False
    ) as r:
        return r.status


async def test_wrong_tokens_are_slowed_down_per_client(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.web.auth import FIRST_WAIT_S, FREE_TRIES

    guesser = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        live_server(settings, engine) as server,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as user,
        aiohttp.ClientSession(connector=guesser) as http,
    ):
        assert await _login(user, server, TOKEN) == 303  # signed in before the attack
        with caplog.at_level(logging.WARNING, logger="streamer.web.auth"):
            answers = []
            for i in range(30):
                async with http.post(server.url + "/login", data={"token": f"guess-{i:012}"}) as r:
                    answers.append((r.status, r.headers.get("Retry-After"), await r.text()))
        statuses = [status for status, _, _ in answers]
        assert statuses[:FREE_TRIES + 1] == [401] * (FREE_TRIES + 1), statuses
        assert statuses.count(429) >= 20, statuses  # 30 guesses in far less than a second
        for status, retry_after, page in answers:
            if status == 429:
                assert retry_after is not None and int(retry_after) >= FIRST_WAIT_S
                assert "Too many wrong tokens" in page and 'id="login-error" hidden' not in page
        # the failures are logged with the address, never the token
        assert "wrong token (login) from 127.0.0.2" in caplog.text
        assert "guess-" not in caplog.text
        # while it waits, even the right token is refused, as bearer or at the form
        assert await _login(http, server, TOKEN) == 429
        status, body = await post_offer(server, {"sdp": "v=0", "type": "offer"})
        assert status == 400, body  # another client (127.0.0.1) is not slowed down
        async with http.get(
            server.url + "/api/config", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            wait = int(r.headers["Retry-After"])
            assert "try again in" in (await r.json())["reason"]
        async with user.get(server.url + "/api/config") as r:
            assert r.status == 200  # a signed-in browser at the address carries on
        # after the wait, the right token works, and the count starts afresh
        await asyncio.sleep(wait + 0.1)
        assert await _login(http, server, TOKEN) == 303
        for _ in range(FREE_TRIES):
            async with http.get(
                server.url + "/api/config", headers={"Authorization": "Bearer not-the-token"}
            ) as r:
                assert r.status == 401
        assert "wrong token (bearer) from 127.0.0.2" in caplog.text
        assert "not-the-token" not in caplog.text


async def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_on_its_own(
    shared_dir: Path, tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A load balancer at 127.0.0.2 (``server.trusted_proxies``) forwards two phones:
    the one guessing waits, the other signs in, over HTTPS as far as its cookie
    knows. A client at 127.0.0.3 that forges the headers gains nothing by it."""
    from streamer.web.auth import FREE_TRIES

    behind = server_settings(shared_dir, tmp_path / "state", tmp_path / "cache",
                             trusted_proxies="127.0.0.2")
    balancer = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    forger = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))

    async def login(http: aiohttp.ClientSession, token: str, phone: str) -> aiohttp.ClientResponse:
        headers = {"X-Forwarded-For": phone, "X-Forwarded-Proto": "https"}
        async with http.post(server.url + "/login", data={"token": token}, headers=headers,
                             allow_redirects=False) as r:
            return r

    async with (
        live_server(behind, engine) as server,
        aiohttp.ClientSession(connector=balancer) as proxy,
        aiohttp.ClientSession(connector=forger) as forging,
    ):
        with caplog.at_level(logging.WARNING, logger="streamer.web.auth"):
            guesses = [(await login(proxy, f"guess-{i:012}", "198.51.100.7")).status
                       for i in range(FREE_TRIES + 2)]
        assert guesses == [401] * (FREE_TRIES + 1) + [429], guesses
        assert "wrong token (login) from 198.51.100.7" in caplog.text
        assert "from 127.0.0.2" not in caplog.text

        signed_in = await login(proxy, TOKEN, "198.51.100.8")  # another phone, same balancer
        assert signed_in.status == 303
        cookie = signed_in.cookies[COOKIE_NAME]
        assert cookie["secure"], "the phone spoke HTTPS to the balancer: the cookie is Secure"

        forged = [(await login(forging, f"guess-{i:012}", f"198.51.100.{i}")).status
                  for i in range(FREE_TRIES + 2)]
        assert forged[-1] == 429, forged  # counted as 127.0.0.3, whatever it claims
        plain = await login(forging, TOKEN, "198.51.100.9")
        assert plain.status == 429


async def test_sessions_end_at_logout_and_when_the_token_changes(
    shared_dir: Path, tmp_path: Path, engine: Engine
) -> None:
    from streamer.web.auth import sessions_path

    settings = server_settings(shared_dir, tmp_path / "state", tmp_path / "cache")
    cookies = []
    async with live_server(settings, engine) as server:
        for _ in range(2):
            async with aiohttp.ClientSession() as http, http.post(
                server.url + "/login", data={"token": TOKEN}, allow_redirects=False
            ) as r:
                assert r.status == 303
                cookies.append(r.cookies[COOKIE_NAME].value)
        assert cookies[0] != cookies[1]  # a random session each, not a function of the token
    stored = sessions_path(settings)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not any(cookie in stored.read_text() for cookie in cookies)  # only digests

    async def status(server: LiveServer, cookie: str, method: str = "GET", path: str = "/") -> int:
        async with (
            aiohttp.ClientSession(cookies={COOKIE_NAME: cookie}) as http,
            http.request(method, server.url + path, allow_redirects=False) as r,
        ):
            return r.status

    async with live_server(settings, engine) as server:  # a restart keeps them
        assert [await status(server, c) for c in cookies] == [200, 200]
        assert await status(server, cookies[0], "POST", "/logout") == 303
        # a copy of the cookie taken before the logout no longer gets in
        assert await status(server, cookies[0]) == 303
        assert await status(server, cookies[0], path="/api/config") == 401
        assert await status(server, cookies[1]) == 200  # the other browser stays in
        assert await status(server, "made-up-session-id") == 303
    # a new token (the token file deleted, or another FACESTREAM_TOKEN) revokes them all,
    # for good: going back to the old token does not bring them back
    for token in ("a-new-token-0123456789", TOKEN):
        async with live_server(settings, engine, token=token) as server:
            assert await status(server, cookies[1]) == 303


async def _offer_sdp(*tracks: object) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in tracks:
        pc.addTrack(track)  # type: ignore[arg-type]
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _expect(server: LiveServer, body: object, status: int, reason: str, **kw: object) -> None:
    got, answer = await post_offer(server, body, **kw)  # type: ignore[arg-type]
    assert got == status, answer
    assert re.search(reason, str(answer["reason"])), answer
    assert not re.search(r"Traceback|[A-Z][a-z]+Error|int\(\)", str(answer)), answer


async def test_bad_offers_get_clear_errors(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    video = await _offer_sdp(VideoStreamTrack())
    audio_only = await _offer_sdp(AudioStreamTrack())
    vp9_only = re.sub(r"(VP8|H264)/90000", "VP9/90000", video)
    high_profile_only = re.sub(r"VP8/90000", "VP9/90000", video).replace(
        "profile-level-id=42", "profile-level-id=64"
    )
    async with live_server(settings, engine) as server:
        peers = server.app
        await _expect(server, None, 400, "not JSON", raw=b"{not json")
        await _expect(server, ["sdp"], 400, "JSON object")
        await _expect(server, {"sdp": video}, 400, "JSON object")
        await _expect(server, {"sdp": video, "type": "answer"}, 400, '"type": "offer"')
        await _expect(server, {"sdp": video, "type": "bogus"}, 400, '"type": "offer"')
        await _expect(server, {"sdp": "hello", "type": "offer"}, 400, "no media")
        with caplog.at_level(logging.INFO, logger="streamer.web.signalling"):
            await _expect(
                server,
                {"sdp": "v=0\r\nm=video x y\r\n", "type": "offer"},
                400,
                "^the offer is not a valid SDP description: line 2 cannot be read: m=video x y$",
            )
        assert "AssertionError" in caplog.text  # the parser's own words: in the log only
        bad_rtpmap = video.replace("VP8/90000", "VP8/fast", 1).splitlines()
        number = 1 + next(i for i, x in enumerate(bad_rtpmap) if x.endswith("VP8/fast"))
        body = {"sdp": "\r\n".join(bad_rtpmap) + "\r\n", "type": "offer"}
        await _expect(server, body, 400, f"line {number} cannot be read: a=rtpmap:\\d+ VP8/fast$")
        no_setup = re.sub(r"a=setup:.*\r\n", "", video)
        await _expect(server, {"sdp": no_setup, "type": "offer"}, 400, "needs an a=setup line")
        no_fingerprint = re.sub(r"a=fingerprint:.*\r\n", "", video)
        await _expect(server, {"sdp": no_fingerprint, "type": "offer"}, 400, "a=fingerprint line")
        await _expect(server, {"sdp": audio_only, "type": "offer"}, 400, "sends no video")
        recvonly = video.replace("a=sendrecv", "a=recvonly")
        await _expect(server, {"sdp": recvonly, "type": "offer"}, 400, "sends no video")
        await _expect(server, {"sdp": vp9_only, "type": "offer"}, 415, "VP8 or H264")
        await _expect(
            server, {"sdp": high_profile_only, "type": "offer"}, 415, "no codec in common"
        )
        no_ice = re.sub(r"a=ice-(ufrag|pwd):.*\r\n", "", video)
        await _expect(server, {"sdp": no_ice, "type": "offer"}, 400, "not usable")
        from streamer.web.server import PEERS

        assert len(peers[PEERS]) == 0  # nothing was left half-made


async def test_any_json_body_gets_a_400_with_the_security_headers(
    settings: Settings, engine: Engine
) -> None:
    from streamer.web.server import SECURITY_HEADERS

    bodies = [
        *BAD_JSON_BODIES,
        (b'{"sdp": 1, "type": "offer"}', "expected a JSON object"),
        (b'{"sdp": ["v=0"], "type": {"a": []}}', "expected a JSON object"),
        (json.dumps({"sdp": "v=0", "type": ["offer"]}).encode(), "expected a JSON object"),
    ]
    async with live_server(settings, engine) as server, aiohttp.ClientSession() as http:
        for raw, reason in bodies:
            await _expect(server, None, 400, reason, raw=raw)
        # a declared charset is not obeyed: JSON is UTF-8 (RFC 8259)
        async with http.post(
            server.url + "/api/webrtc/offer",
            data=b'{"sdp": "v=0", "type": "offer"}',
            headers={"Authorization": f"Bearer {TOKEN}",
                     "Content-Type": "application/json; charset=no-such-charset"},
        ) as r:
            assert r.status == 400 and "no media" in (await r.json())["reason"]
            assert all(r.headers[k] == v for k, v in SECURITY_HEADERS.items())


async def test_a_server_failure_is_a_500_with_the_security_headers(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.web.server import SECURITY_HEADERS

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug with internal details")

    def extend(app: web.Application) -> None:
        app.router.add_get("/api/broken", broken)

    async with (
        live_server(settings, engine, extend=extend) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        with caplog.at_level(logging.ERROR, logger="streamer.web.server"):
            async with http.get(server.url + "/api/broken") as r:
                assert r.status == 500
                body = await r.json()
                headers = r.headers
    assert body["error"] == "Internal Server Error" and "log" in body["reason"]
    assert "internal details" not in json.dumps(body)
    assert all(headers[k] == v for k, v in SECURITY_HEADERS.items()), headers
    assert "RuntimeError: a bug with internal details" in caplog.text


async def test_every_api_error_is_json_with_the_security_headers(
    settings: Settings, engine: Engine
) -> None:
    from streamer.web.server import SECURITY_HEADERS

    big = io.BytesIO(b"{" + b" " * (50 * 2**20))  # 50 MB: over the 1 MiB of a JSON body
    async with (
        live_server(settings, engine) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        for method, path, data, status, body in [
            ("POST", "/api/webrtc/offer", big, 413,
             {"error": "Request Entity Too Large", "reason": "the body may be at most 1 MiB"}),
            ("GET", "/api/nothing-here", None, 404,
             {"error": "Not Found", "reason": "there is no /api/nothing-here in the API"}),
            ("GET", "/api/webrtc/offer", None, 405,
             {"error": "Method Not Allowed",
              "reason": "GET is not accepted on /api/webrtc/offer; use POST"}),
            ("DELETE", "/api/config", None, 405,
             {"error": "Method Not Allowed",
              "reason": "DELETE is not accepted on /api/config; use GET, HEAD"}),
        ]:
            async with http.request(method, server.url + path, data=data) as r:
                assert (r.status, r.content_type) == (status, "application/json"), path
                assert await r.json() == body
                assert all(r.headers[k] == v for k, v in SECURITY_HEADERS.items()), r.headers
                if status == 405:
                    assert r.headers["Allow"] == body["reason"].split("use ")[1].replace(" ", "")
        async with http.get(server.url + "/nothing-here") as r:  # not the API: as it was
            assert (r.status, await r.text()) == (404, "404: Not Found")
            assert r.headers["X-Content-Type-Options"] == "nosniff"


async def _ready(server: LiveServer) -> int:
    """``GET /ready`` with no token, as a load balancer's health check asks."""
    async with aiohttp.ClientSession() as http, http.get(server.url + "/ready") as r:
        return r.status


async def test_past_the_session_limit_is_503_and_not_ready_until_a_slot_frees(
    settings: Settings, engine: Engine
) -> None:
    from streamer.web.server import PEERS

    async with live_server(settings, engine) as server:
        assert await _ready(server) == 200
        first = await connect(server, VideoStreamTrack())
        assert await first.wait_for(lambda: len(first.frames) > 0, timeout=10)
        body = {"sdp": await _offer_sdp(VideoStreamTrack()), "type": "offer"}
        status, answer = await post_offer(server, body)
        assert status == 503 and "1 sessions are in use" in str(answer["reason"])
        assert await _ready(server) == 503  # a load balancer sends new phones elsewhere
        await first.close()
        peers = server.app[PEERS]
        assert await first.wait_for(lambda: len(peers) == 0, timeout=5)
        assert await _ready(server) == 200
        second = await connect(server, VideoStreamTrack())
        assert await second.wait_for(lambda: len(second.frames) > 0, timeout=10)
        await second.close()


async def test_a_dead_stun_server_delays_the_answer_but_never_hangs_it(
    shared_dir: Path, tmp_path: Path, engine: Engine
) -> None:
    """A STUN server that never answers: the answer still comes (host candidates
    only, which is what a LAN needs) within aiortc's 5 s gathering bound."""
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = silent[0].get_extra_info("sockname")[1]
    try:
        settings = load_settings(
            {
                "state_dir": str(tmp_path / "state"),
                "cache_dir": str(tmp_path / "cache"),
                "server.ice_servers": f"stun:127.0.0.1:{port}",
            },
            {},
        )
        async with live_server(settings, engine) as server:
            loop = asyncio.get_running_loop()
            start = loop.time()
            body = {"sdp": await _offer_sdp(VideoStreamTrack()), "type": "offer"}
            status, answer = await post_offer(server, body)
            assert status == 200 and "typ host" in str(answer["sdp"])
            assert loop.time() - start < 8.0
            from streamer.web.server import PEERS

            await server.app[PEERS].close()
    finally:
        silent[0].close()


# ---- `facestream serve`, as a user runs it -----------------------------------------------------


def _read_until_qr(process: subprocess.Popen[str], timeout: float) -> str:
    """What the server printed up to the first line of its QR code.

    A reader thread does the blocking reads: a selector on the pipe would miss lines
    already pulled into the text wrapper's buffer."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stdout:
            lines.put(line)
            if "█" in line:
                return
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if not line or "█" in line:
            break
    return "".join(seen)


def test_serve_command_prints_what_a_user_needs_and_stops_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "FACESTREAM_STATE_DIR": str(tmp_path / "state"),
        "FACESTREAM_CACHE_DIR": str(settings.cache_dir),
        "FACESTREAM_MODELS_DIR": str(settings.models_dir),
    }
    env.pop("FACESTREAM_TOKEN", None)
    command = [sys.executable, "-m", "facestream", "serve", "--host", "127.0.0.1", "--port", "0"]
    with subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            text = _read_until_qr(process, timeout=60)
            url = re.search(r"(https://127\.0\.0\.1:\d+/)", text)
            assert url, text
            cert = tmp_path / "state" / "tls" / "cert.pem"
            assert f"SHA-256 fingerprint: {fingerprint(cert)}" in text
            stored = (tmp_path / "state" / "server" / "token").read_text().strip()
            assert f": {stored}" in text
            context = ssl.create_default_context(cafile=str(cert))
            with urllib.request.urlopen(url.group(1) + "login", context=context, timeout=10) as r:
                assert r.status == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
    # the next start (not on a terminal, as a service) says where the token is
    with subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as again:
        try:
            text = _read_until_qr(again, timeout=60)
            assert f"access token: stored in {tmp_path / 'state' / 'server' / 'token'}\n" in text
            assert stored not in text
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=15) == 0
        finally:
            if again.poll() is None:
                again.kill()
