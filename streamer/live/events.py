"""Recognition events: one when a track's identity is first decided or changes.

As JSON, one object per line::

    {"time": 1767225600.123, "stream": "phone-1", "frame": 412, "track": 7,
     "name": "Ada Lovelace", "confidence": 0.913, "box": [120, 48, 212, 160]}

``frame`` is the frame's number in the stream, from 0, as the pipeline received it
(for ``run`` on a file, its position in the file); ``name`` is ``"unknown"`` for a
face no known person matches; ``box`` is ``[x0, y0, x1, y1]`` in frame pixels.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from facecore.text import counted
from streamer.errors import OutputError

__all__ = ["UNKNOWN", "EventWriter", "RecognitionEvent"]

UNKNOWN = "unknown"


@dataclass(frozen=True)
class RecognitionEvent:
    time: float  # unix seconds
    stream: str
    frame: int  # number of the frame in the stream, from 0
    track: int
    name: str  # "unknown" allowed
    confidence: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1

    def to_json(self) -> str:
        return json.dumps(
            {
                "time": round(self.time, 3),
                "stream": self.stream,
                "frame": self.frame,
                "track": self.track,
                "name": self.name,
                "confidence": round(self.confidence, 3),
                "box": list(self.box),
            },
            ensure_ascii=False,
        )


class EventWriter:
    """Writes events as JSON lines to a file, or to stdout for ``"-"``."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self._owned = self.target != "-"
        self._out: TextIO = sys.stdout
        if self._owned:
            try:
                self._out = Path(self.target).open("w", encoding="utf-8", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise OutputError(f"cannot write events to {self.target}: {exc.strerror}") from exc
        self.written = 0
        self._closed = False

    def write(self, events: tuple[RecognitionEvent, ...] | list[RecognitionEvent]) -> None:
        try:
            for event in events:
                self._out.write(event.to_json() + "\n")
                self.written += 1
            if events and not self._owned:
                self._out.flush()
        except OSError as exc:
            if not self._owned:
                raise  # stdout: a reader that went away (`| head`) is the caller's to handle
            raise self._failed(exc) from None

    def close(self) -> None:
        """Close the file (stdout stays open). Safe to call twice."""
        if not self._closed:
            self._closed = True
            if self._owned:
                try:
                    self._out.close()
                except OSError as exc:  # the last lines could not be flushed (a full disk)
                    raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(
            f"cannot write events to {self.target}: {exc.strerror or exc} "
            f"(after {counted(self.written, 'event')})"
        )
