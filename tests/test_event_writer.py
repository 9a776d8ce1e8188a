"""EventWriter: an events file that cannot be written is a clear error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.errors import OutputError
from streamer.live.events import EventWriter, RecognitionEvent

EVENT = RecognitionEvent(1.0, "video file clip.mp4", 0, 1, "Ada", 0.95, (1, 2, 3, 4))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_is_an_output_error_naming_the_file() -> None:
    # `run --events` on a full disk printed three chained OSError tracebacks
    writer = EventWriter("/dev/full")
    with pytest.raises(OutputError, match=r"cannot write events to /dev/full: No space left"):
        writer.write([EVENT])
    with pytest.raises(OutputError, match="/dev/full"):
        writer.close()  # the line still buffered cannot be flushed either
    writer.close()  # and a second close is quiet


def test_events_are_written_as_json_lines(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    writer = EventWriter(target)
    writer.write([EVENT, EVENT])
    writer.close()
    assert len(target.read_text(encoding="utf-8").splitlines()) == 2
