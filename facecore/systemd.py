"""systemd's service notification protocol, without libsystemd.

Under ``Type=notify`` systemd passes a unix datagram socket in ``NOTIFY_SOCKET`` and
waits for ``READY=1`` on it before it counts the service as started; ``STATUS=...``
is shown by ``systemctl status``; ``STOPPING=1`` announces a clean shutdown. Outside
systemd the variable is unset and every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``"READY=1"``, ``"STATUS=..."``, several joined by newlines) to
    systemd. Returns False when not run under a notify-type service."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode("utf-8"))
    return True
