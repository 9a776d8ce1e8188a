"""``facestream serve``: the WebRTC server for phones.

``register_serve(subparsers, parents)`` adds the verb; ``streamer/cli.py`` calls it.
Heavy modules (aiortc, the engine) are imported inside the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from facecore.cli import Subparsers, add_command
from facecore.config import Settings

__all__ = ["register_serve", "serve"]

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
        "--trusted-proxies",
        "--trusted-proxy",
        dest="server.trusted_proxies",
        default=None,
        metavar="ADDRS",
        help="comma-separated addresses or networks of load balancers whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed (see README, Several boxes)",
    )
    add(
        "--workers",
        dest="server.workers",
        default=None,
        metavar="N",
        help="server processes sharing the port (default 1); a phone stays with the one "
        "that answered it, and --max-sessions counts per process",
    )
    add(
        "--metrics-port",
        dest="server.metrics_port",
        default=None,
        metavar="N",
        help="Prometheus /metrics over plain HTTP on server.metrics_host (default "
        "127.0.0.1) port N (default 0: none)",
    )


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM: in this process, or with
    ``server.workers`` > 1 in that many worker processes on the one port."""
    from streamer.serving import server_lock

    with server_lock(settings):
        if settings.server.metrics_port:  # before anything imports prometheus_client
            from facecore.metrics_export import use_multiprocess_dir

            use_multiprocess_dir(settings.state_dir / "server" / "metrics")
        if settings.server.workers > 1:
            from streamer.workers import supervise

            return supervise(settings, sys.stdout)
        asyncio.run(_serve(settings, sys.stdout))
    return 0


async def _serve(settings: Settings, out: TextIO) -> None:
    from streamer.serving import announce_ready, prepare, run_server

    prepared = prepare(settings)

    def listening(port: int) -> None:
        announce_ready(settings, prepared, port, out)

    await run_server(settings, prepared, listening)
    print("facestream: shutting down", file=out, flush=True)


