"""A video jitter buffer that hands a frame to the decoder as soon as it is complete.

aiortc's ``JitterBuffer`` knows a frame is complete only when the first packet of
the *next* frame arrives, so every received frame waits one frame interval (67 ms
at 15 fps) before decoding. Senders mark the last RTP packet of each video frame
(the marker bit: RFC 7741 for VP8, RFC 6184 for H.264; browsers and aiortc both
set it), so ``MarkerJitterBuffer`` emits a frame when its marked packet is in and
every packet before it since the last frame has arrived, and otherwise behaves
as aiortc's (loss, reordering, overflow).

``use_marker_jitter_buffer(receiver)`` installs it on an ``RTCRtpReceiver`` before
its first packet. aiortc keeps the buffer in a private attribute; when a future
aiortc moves it, the receiver keeps its own buffer (one frame more latency) and
the function returns False.
"""

from __future__ import annotations

import logging

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

__all__ = ["MarkerJitterBuffer", "use_marker_jitter_buffer"]

log = logging.getLogger(__name__)

_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.x, a name-mangled private
VIDEO_CAPACITY = 512  # packets, as aiortc's video receiver


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        frame = super()._remove_frame(sequence_number)
        if frame is not None or self._origin is None:
            return frame
        packets = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None


def use_marker_jitter_buffer(receiver: RTCRtpReceiver) -> bool:
    """Give a video ``receiver`` a ``MarkerJitterBuffer``; False if aiortc's layout
    is not the one known here (the receiver is then left as it is)."""
    if not isinstance(getattr(receiver, _ATTRIBUTE, None), JitterBuffer):
        log.debug("this aiortc keeps no %s: frames are decoded one interval late", _ATTRIBUTE)
        return False
    setattr(receiver, _ATTRIBUTE, MarkerJitterBuffer(capacity=VIDEO_CAPACITY, is_video=True))
    return True
