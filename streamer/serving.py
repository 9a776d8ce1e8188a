"""Running the server: one per state folder (``server_lock``), what its processes
share (``prepare``), the announcement once it listens, and one server process's life
(``run_server``). ``facestream serve``
(``streamer/serve_cli.py``) runs one in its own process; ``streamer/workers.py`` runs
several.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from facecore import systemd
from facecore.config import Settings, ensure_private_dir
from facecore.errors import ConfigError
from facecore.files import PidLock, os_reason

if TYPE_CHECKING:
    from aiohttp import web

    from streamer.web.tls import CertificatePair

__all__ = ["SERVER_LOCK", "Prepared", "announce_ready", "prepare", "run_server", "server_lock"]

TASK_SAMPLE_S = 1.0  # how often the event loop's task count is put into the metrics
SERVER_LOCK = "serve.lock"  # in STATE_DIR/server


@contextlib.contextmanager
def server_lock(settings: Settings) -> Iterator[None]:
    """Hold ``STATE_DIR/server/serve.lock`` while the server runs: a second ``serve`` on
    the same state folder would empty the first one's metrics folder and share its
    sign-ins. `ConfigError`, naming the holder's pid, when another server holds it."""
    path = settings.state_dir / "server" / SERVER_LOCK
    try:
        ensure_private_dir(path.parent)
        lock = PidLock(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the server lock {path}: {os_reason(exc)}") from exc
    with contextlib.closing(lock):
        if not lock.acquire():
            raise ConfigError(
                f"another facestream serve ({lock.holder()}) runs on the state folder "
                f"{settings.state_dir}: stop it first (for more processes use --workers N; "
                "for a second server, another --state-dir)"
            )
        yield


@dataclass(frozen=True)
class Prepared:
    """What every server process shares, made once before any listens."""

    addresses: tuple[str, ...]
    pair: CertificatePair | None
    token: str
    token_created: bool


def prepare(settings: Settings) -> Prepared:
    """Check the metrics port, the ICE servers and the trusted proxies; make (or load)
    the certificate and the token."""
    from streamer.web import announce, tls
    from streamer.web.auth import load_or_create_token
    from streamer.web.forwarded import parse_trusted_proxies
    from streamer.web.signalling import parse_ice_servers

    server = settings.server
    _check_metrics_port(settings)
    parse_ice_servers(server.ice_servers, settings.origins.get("server.ice_servers"))
    parse_trusted_proxies(server.trusted_proxies, settings.origins.get("server.trusted_proxies"))
    addresses = tuple(announce.lan_addresses(server.host))
    pair = None if server.http else tls.ensure_certificate(settings, list(addresses))
    token, created = load_or_create_token(settings)
    return Prepared(addresses, pair, token, created)


def _check_metrics_port(settings: Settings) -> None:
    """Refuse ``/metrics`` on the server's own port and address, before either listens."""
    server = settings.server
    wildcard = ("", "0.0.0.0", "::")  # every interface: they overlap any other address
    same_host = (server.metrics_host == server.host or server.metrics_host in wildcard
                 or server.host in wildcard)
    if server.metrics_port and server.metrics_port == server.port and same_host:
        raise ConfigError(
            f"is also server.port on {server.host or '*'}; give /metrics a port of its own",
            key="server.metrics_port",
            value=server.metrics_port,
            origin=settings.origins.get("server.metrics_port"),
        )


def announce_ready(settings: Settings, prepared: Prepared, port: int, out: TextIO) -> None:
    """Print the addresses (and a new token, the certificate) and tell systemd."""
    from streamer.web import announce
    from streamer.web.auth import token_path

    scheme = "http" if settings.server.http else "https"
    urls = announce.server_urls(scheme, list(prepared.addresses), port)
    token = _token_line(settings, prepared, token_path(settings), shown=out.isatty())
    behind = bool(settings.server.trusted_proxies)
    metrics = None
    if settings.server.metrics_port:  # first: a busy port fails before addresses are shown
        from facecore.metrics_export import serve_metrics

        host = settings.server.metrics_host
        bound = serve_metrics(host, settings.server.metrics_port)
        metrics = f"metrics: http://{host}:{bound}/metrics"
    print(_startup_text(scheme, urls, prepared.pair, token, behind), file=out, flush=True)
    if metrics is not None:
        print(metrics, file=out, flush=True)
    if urls:
        # the token rides in the fragment, which browsers never send; only on a
        # terminal, so it does not end up in a service's journal
        target = urls[0] + (f"login#token={prepared.token}" if out.isatty() else "")
        print(announce.qr_text(target), file=out, flush=True)
    systemd.notify(f"READY=1\nSTATUS=serving on {urls[0] if urls else scheme}")


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
            with _stop_on_signal() as stop:  # before READY=1: a stop right after it counts
                listening(_bound_port(runner, server.port))
                sampler = asyncio.create_task(_sample_tasks()) if server.metrics_port else None
                await stop.wait()
            if sampler is not None:
                sampler.cancel()
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


def _token_line(settings: Settings, prepared: Prepared, path: Path, *, shown: bool) -> str:
    """What the start says of the token: a new one is printed; a stored one too on a
    terminal (a start that made it may have failed before printing it), and only its
    file elsewhere, so that it does not end up in a service's journal."""
    if settings.server.token is not None:
        return "access token: the one given (server.token)"
    if prepared.token_created or shown:
        new = "new, " if prepared.token_created else ""
        return f"access token ({new}stored in {path}): {prepared.token}"
    return f"access token: stored in {path}"


def _startup_text(
    scheme: str,
    urls: Sequence[str],
    pair: CertificatePair | None,
    token: str,
    behind_proxy: bool,
) -> str:
    from streamer.web.tls import fingerprint

    lines = []
    if scheme == "http" and behind_proxy:
        lines.append(
            "plain HTTP behind a load balancer (server.trusted_proxies): phones open "
            "the balancer's https:// address, not this one"
        )
    elif scheme == "http":
        lines.append(
            "WARNING: plain HTTP (--http): phones will not open the camera; "
            "use it on this machine (http://localhost) or for tests only."
        )
    if pair is not None:
        kind = "self-signed certificate" if pair.self_signed else "certificate"
        lines.append(f"{kind}: {pair.cert}")
        lines.append(f"  SHA-256 fingerprint: {fingerprint(pair.cert)}")
    lines.append(token)
    if urls:
        local = all("://127." in url or "://[::1]" in url for url in urls)
        lines.append("open in a browser:" if local else "open on a phone on the same network:")
        lines.extend(f"  {url}" for url in urls)
    else:
        lines.append("no network address found; open it on this machine (localhost)")
    return "\n".join(lines)


async def _sample_tasks() -> None:
    """Keep ``facestream_asyncio_tasks`` current: in multiprocess mode (the server's
    whenever metrics are on) the listener reads what each process last set, so a
    gauge cannot be computed at scrape time."""
    from streamer import metrics

    while True:
        metrics.ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        await asyncio.sleep(TASK_SAMPLE_S)


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[asyncio.Event]:
    """An event that SIGINT or SIGTERM sets, while the block runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
