"""Tell the user where to point a phone: every non-loopback URL and a QR code.

``server_urls`` lists one URL per address of this machine that a phone on the same
network could reach (IPv4 first, link-local IPv6 left out: browsers cannot open
them without a zone). ``qr_text`` draws a URL as a QR code with Unicode half
blocks, sized for a terminal.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterable

import ifaddr
import segno

__all__ = ["lan_addresses", "qr_text", "server_urls"]


def lan_addresses(host: str = "0.0.0.0") -> list[str]:
    """Addresses a phone could reach the server on, for a server bound to ``host``.

    A wildcard bind (``0.0.0.0``, ``::``, ``""``) means every non-loopback,
    non-link-local address of every interface; a specific ``host`` means itself.
    """
    if host not in ("", "0.0.0.0", "::"):
        return [host]
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(raw)
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            if host == "0.0.0.0" and address.version != 4:
                continue
            found.append(address)
    unique = dict.fromkeys(found)
    return [str(a) for a in sorted(unique, key=lambda a: (a.version, a.packed))]


def server_urls(scheme: str, addresses: Iterable[str], port: int) -> list[str]:
    """``https://192.168.1.20:8443/`` style URLs (IPv6 in brackets)."""
    urls = []
    for address in addresses:
        shown = f"[{address}]" if ":" in address else address
        urls.append(f"{scheme}://{shown}:{port}/")
    return urls


def qr_text(data: str) -> str:
    """A QR code of ``data`` as terminal text (light-on-dark half blocks, with a
    quiet zone), readable by a phone camera from the screen."""
    code = segno.make(data, error="l", micro=False)
    out = io.StringIO()
    code.terminal(out=out, compact=True, border=2)
    return out.getvalue()
