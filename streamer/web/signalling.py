"""Signalling checks: which offers the server answers, and the ICE server list.

``check_offer`` rejects, before any peer connection is made, what cannot be served:
SDP that does not parse, lacks WebRTC's DTLS lines or sends no video (400), or video
in no codec the server decodes (415). Its reasons name the SDP line or section at
fault; the parser's own exception goes to the log only. ``parse_ice_servers`` turns
``settings.server.ice_servers`` strings into aiortc's ``RTCIceServer`` records, or
raises ``ConfigError`` naming the entry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from aiortc import RTCIceServer, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from facecore.errors import ConfigError

__all__ = ["ACCEPTED_VIDEO_CODECS", "OfferError", "check_offer", "parse_ice_servers"]

log = logging.getLogger(__name__)

ACCEPTED_VIDEO_CODECS = frozenset({"video/vp8", "video/h264"})
_ICE_SERVER = re.compile(
    r"(?P<scheme>stuns?|turns?):(?:(?P<user>[^:@/]+):(?P<password>[^@/]*)@)?"
    r"(?P<host>[^:@/?]+)(?::(?P<port>\d{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)


class OfferError(Exception):
    """An offer the server will not answer: ``status`` is the HTTP status to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_ice_servers(entries: Iterable[str], origin: str | None = None) -> list[RTCIceServer]:
    """``stun:host:port`` and ``turn:user:password@host:port[?transport=tcp]``
    strings (``settings.server.ice_servers``, given by ``origin``) as
    ``RTCIceServer`` records."""
    servers = []
    for entry in entries:
        match = _ICE_SERVER.fullmatch(entry.strip())
        if match is None:
            raise ConfigError(
                "expected stun:HOST[:PORT] or turn:USER:PASSWORD@HOST[:PORT][?transport=udp|tcp]",
                key="server.ice_servers",
                value=entry,
                origin=origin,
            )
        scheme, user = match["scheme"], match["user"]
        if scheme.startswith("turn") != (user is not None):
            reason = (
                "a TURN server needs USER:PASSWORD@"
                if user is None
                else "STUN takes no credentials"
            )
            raise ConfigError(reason, key="server.ice_servers", value=entry, origin=origin)
        url = f"{scheme}:{match['host']}" + (f":{match['port']}" if match["port"] else "")
        if match["transport"]:
            url += f"?transport={match['transport']}"
        servers.append(RTCIceServer(urls=url, username=user, credential=match["password"]))
    return servers


def check_offer(description: RTCSessionDescription) -> None:
    """Reject, before any resource is made, an offer that is not SDP, sends no
    video, or offers no video codec the server decodes (VP8, H.264)."""
    if description.type != "offer":
        raise OfferError(400, f'expected "type": "offer", got {description.type!r}')
    try:
        parsed = aiortc_sdp.SessionDescription.parse(description.sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        number, line = _first_unreadable_line(description.sdp)
        log.info("unreadable SDP at line %d %r: %s: %s", number, line, type(exc).__name__, exc)
        shown = line if len(line) <= 80 else line[:80] + "…"
        raise OfferError(
            400, f"the offer is not a valid SDP description: line {number} cannot be read: {shown}"
        ) from exc
    if not parsed.media:
        raise OfferError(400, "the SDP has no media sections")
    for number, media in enumerate(parsed.media, 1):
        # aiortc drops a section's DTLS parameters without a valid a=setup line
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError(
                400,
                f"the offer is not a WebRTC offer: media section {number} ({media.kind}) needs "
                "an a=setup line (actpass, active or passive) and an a=fingerprint line",
            )
    videos = [
        m for m in parsed.media if m.kind == "video" and m.direction in ("sendrecv", "sendonly")
    ]
    if not videos:
        raise OfferError(400, "the offer sends no video (add a camera track, direction sendrecv)")
    offered = {c.mimeType.lower() for c in videos[0].rtp.codecs}
    if not offered & ACCEPTED_VIDEO_CODECS:
        raise OfferError(
            415, f"no video codec the server can take: offered {sorted(offered)}, need VP8 or H264"
        )


def _first_unreadable_line(sdp: str) -> tuple[int, str]:
    """The (1-based number, text) of the line at which ``sdp`` stops parsing: the
    lines before it parse and adding it fails. Bisects on prefixes, so a large
    offer costs a few parses, not one per line."""
    lines = sdp.splitlines()
    good, bad = 0, len(lines)  # a prefix of `good` lines parses, of `bad` lines does not
    while bad - good > 1:
        middle = (good + bad) // 2
        try:
            aiortc_sdp.SessionDescription.parse("\r\n".join(lines[:middle]) + "\r\n")
        except Exception:  # as in check_offer
            bad = middle
        else:
            good = middle
    return bad, lines[bad - 1] if lines else ""
