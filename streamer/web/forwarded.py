"""Who the client is behind a load balancer: ``X-Forwarded-For`` and
``X-Forwarded-Proto``, believed only from the proxies named in
``server.trusted_proxies``.

Behind HAProxy every request comes from HAProxy's address, so without this the
wrong-token limiter would count every phone as one client (and lock them all out
together), and a server on plain HTTP behind a TLS-terminating proxy would not
know the browser spoke HTTPS (the session cookie's ``Secure``). A request from
any other address keeps its own peer address and scheme, whatever headers it
sends, so a client cannot claim to be someone else. (aiohttp-remotes does the
same job, but its strict mode refuses every request that does not come through a
proxy, and its relaxed mode believes anyone.)

The client is the rightmost ``X-Forwarded-For`` address that is not a trusted
proxy: each proxy appends the address it saw, so everything right of that one was
written by a trusted hop, and anything left of it by the client itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from facecore.errors import ConfigError

__all__ = ["Network", "client_address", "forwarded_middleware", "parse_trusted_proxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def parse_trusted_proxies(values: Sequence[str], origin: str | None = None) -> tuple[Network, ...]:
    """``values`` (addresses like ``10.0.0.5`` or networks like ``10.0.0.0/24``) as
    networks; a clear ``ConfigError`` for anything else."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(
                "expected an IP address or network such as 10.0.0.5 or 10.0.0.0/24",
                key="server.trusted_proxies", value=value, origin=origin,
            ) from None
    return tuple(networks)


def _is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: str, trusted: Sequence[Network]) -> str | None:
    """The client's address: ``peer`` unless it is a trusted proxy, then the
    rightmost address of ``forwarded_for`` that is not."""
    if not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def forwarded_middleware(trusted: Sequence[Network]) -> Middleware:
    """A middleware that, for requests from ``trusted`` proxies, takes the client's
    address from ``X-Forwarded-For`` and the scheme from ``X-Forwarded-Proto``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if trusted and _is_trusted(request.remote, trusted):
            remote = client_address(
                request.remote, request.headers.get("X-Forwarded-For", ""), trusted
            )
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
            scheme = proto if proto in ("http", "https") else request.scheme
            request = request.clone(remote=remote, scheme=scheme)
        return await handler(request)

    return middleware
