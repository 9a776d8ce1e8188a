"""``facestream serve``: the WebRTC server for phones.

``register_serve(subparsers, parents)`` adds the verb; ``streamer/cli.py`` calls it.
Heavy modules (aiortc, the engine) are imported inside the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from facecore import systemd
from facecore.cli import Subparsers, add_command
from facecore.config import Settings
from facecore.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    from streamer.web.tls import CertificatePair

__all__ = ["Prepared", "announce_ready", "prepare", "register_serve", "run_server", "serve"]

DESCRIPTION = """\
Serve the phone page over HTTPS: open one of the printed addresses on a phone on the
same network (or scan the QR code), allow the camera, and the video comes back with
names on the faces.

Access needs a token: a random one is made on first run, printed and stored in
STATE_DIR/server/token (owner-only); --token or FACESTREAM_TOKEN sets one instead.
Without --cert/--key a self-signed certificate is made in STATE_DIR/tls and its
SHA-256 fingerprint printed: the phone warns once, compare the fingerprint."""

EPILOG = """\
examples:
  facestream serve
  facestream serve --port 9443 --cert fullchain.pem --key privkey.pem
  facestream serve --http --host 127.0.0.1      # local testing only: no camera on phones
  FACESTREAM_SERVER_ICE_SERVERS=stun:stun.example.org:3478 facestream serve"""


def register_serve(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers["facestream"],
        "serve",
        parents=parents,
        handler=serve,
        help="serve the phone page and recognise faces in phone video (WebRTC)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add = parser.add_argument
    add(
        "--host",
        dest="server.host",
        default=None,
        metavar="ADDR",
        help="address to listen on (default 0.0.0.0: every interface)",
    )
    add("--port", dest="server.port", default=None, metavar="N", help="TCP port (default 8443)")
    add(
        "--http",
        dest="server.http",
        action="store_true",
        default=None,
        help="plain HTTP, for local testing only (phones open the camera only over HTTPS)",
    )
    add(
        "--cert-file",
        "--cert",
        dest="server.cert_file",
        default=None,
        metavar="PEM",
        help="TLS certificate chain (with --key); default: a self-signed one",
    )
    add(
        "--key-file",
        "--key",
        dest="server.key_file",
        default=None,
        metavar="PEM",
        help="TLS private key",
    )
    add(
        "--token",
        dest="server.token",
        default=None,
        metavar="TOKEN",
        help="access token (or FACESTREAM_TOKEN); default: the stored random one",
    )
    add(
        "--max-sessions",
        dest="server.max_sessions",
        default=None,
        metavar="N",
        help="phones served at once; more get 503 (default 4)",
    )
    add(
        "--ice-servers",
        "--ice-server",
        dest="server.ice_servers",
        default=None,
        metavar="URLS",
        help="comma-separated stun:HOST:PORT / turn:USER:PASS@HOST:PORT for other networks",
    )
    add(
        "--workers",
        dest="server.workers",
        default=None,
        metavar="N",
        help="server processes sharing the port (default 1); a phone stays with the one "
        "that answered it, and --max-sessions counts per process",
    )


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM: in this process, or with
    ``server.workers`` > 1 in that many worker processes on the one port."""
    if settings.server.workers > 1:
        from streamer.workers import supervise

        return supervise(settings, sys.stdout)
    asyncio.run(_serve(settings, sys.stdout))
    return 0


@dataclass(frozen=True)
class Prepared:
    """What every server process shares, made once before any listens."""

    addresses: tuple[str, ...]
    pair: CertificatePair | None
    token: str
    token_created: bool


def prepare(settings: Settings) -> Prepared:
    """Check the ICE servers and make (or load) the certificate and the token."""
    from streamer.web import announce, tls
    from streamer.web.auth import load_or_create_token
    from streamer.web.signalling import parse_ice_servers

    server = settings.server
    parse_ice_servers(server.ice_servers, settings.origins.get("server.ice_servers"))
    addresses = tuple(announce.lan_addresses(server.host))
    pair = None if server.http else tls.ensure_certificate(settings, list(addresses))
    token, created = load_or_create_token(settings)
    return Prepared(addresses, pair, token, created)


def announce_ready(settings: Settings, prepared: Prepared, port: int, out: TextIO) -> None:
    """Print the addresses (and a new token, the certificate) and tell systemd."""
    from streamer.web import announce
    from streamer.web.auth import token_path

    scheme = "http" if settings.server.http else "https"
    urls = announce.server_urls(scheme, list(prepared.addresses), port)
    new_token = (prepared.token, token_path(settings)) if prepared.token_created else None
    print(_startup_text(scheme, urls, prepared.pair, new_token), file=out, flush=True)
    if urls:
        # the token rides in the fragment, which browsers never send; only on a
        # terminal, so it does not end up in a service's journal
        target = urls[0] + (f"login#token={prepared.token}" if out.isatty() else "")
        print(announce.qr_text(target), file=out, flush=True)
    systemd.notify(f"READY=1\nSTATUS=serving on {urls[0] if urls else scheme}")


async def _serve(settings: Settings, out: TextIO) -> None:
    prepared = prepare(settings)

    def listening(port: int) -> None:
        announce_ready(settings, prepared, port, out)

    await run_server(settings, prepared, listening)
    print("facestream: shutting down", file=out, flush=True)


async def run_server(
    settings: Settings,
    prepared: Prepared,
    listening: Callable[[int], None],
    *,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM; ``listening(port)`` once the socket is open.
    ``reuse_port``: share the port with the other workers (SO_REUSEPORT)."""
    from aiohttp import web

    from streamer.enroll.api import add_enrollment_routes
    from streamer.enroll.camera import attach_live_enrollment
    from streamer.live.engine import Engine
    from streamer.web import tls
    from streamer.web.server import create_app

    server = settings.server
    ssl_context = None if prepared.pair is None else tls.server_ssl_context(prepared.pair)
    engine = Engine.from_settings(settings)
    try:
        app = create_app(settings, engine, prepared.token, secure=not server.http)
        add_enrollment_routes(app, settings)
        attach_live_enrollment(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, server.host, server.port, ssl_context=ssl_context,
                reuse_port=reuse_port or None,
            )
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {server.host}:{server.port}: {exc.strerror}",
                ) from exc
            listening(_bound_port(runner, server.port))
            await _wait_for_signal()
            systemd.notify("STOPPING=1")
        finally:
            await runner.cleanup()
    finally:
        engine.close()


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    """The port the server listens on (``asked``, unless that was 0: any free one)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


def _startup_text(
    scheme: str,
    urls: Sequence[str],
    pair: CertificatePair | None,
    new_token: tuple[str, Path] | None,
) -> str:
    from streamer.web.tls import fingerprint

    lines = []
    if scheme == "http":
        lines.append(
            "WARNING: plain HTTP (--http): phones will not open the camera; "
            "use it on this machine (http://localhost) or for tests only."
        )
    if pair is not None:
        kind = "self-signed certificate" if pair.self_signed else "certificate"
        lines.append(f"{kind}: {pair.cert}")
        lines.append(f"  SHA-256 fingerprint: {fingerprint(pair.cert)}")
    if new_token is not None:
        lines.append(f"access token (new, stored in {new_token[1]}): {new_token[0]}")
    if urls:
        local = all("://127." in url or "://[::1]" in url for url in urls)
        lines.append("open in a browser:" if local else "open on a phone on the same network:")
        lines.extend(f"  {url}" for url in urls)
    else:
        lines.append("no network address found; open it on this machine (localhost)")
    return "\n".join(lines)


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
