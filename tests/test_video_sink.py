"""VideoFileSink: a video that could not be written whole is an error, not a success."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.errors import OutputError
from streamer.live.runner import VideoFileSink

FRAME = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def test_finished_video_reads_back(tmp_path: Path) -> None:
    sink = VideoFileSink(tmp_path / "out.mp4", 30.0, (160, 120))
    for _ in range(5):
        sink.write(FRAME)
    sink.close()
    sink.close()
    assert sink.written == 5


def test_video_cut_short_by_a_full_disk_is_refused(tmp_path: Path) -> None:
    # on a full disk cv2.VideoWriter says nothing: `run --output` printed its summary,
    # exited 0 and left an mp4 without its moov that no player opens
    path = tmp_path / "out.mp4"
    sink = VideoFileSink(path, 30.0, (160, 120))
    for _ in range(5):
        sink.write(FRAME)
    writer = sink._writer

    class FullDisk:
        def write(self, frame: np.ndarray) -> None:
            writer.write(frame)

        def release(self) -> None:  # what ENOSPC leaves: the start of the file only
            writer.release()
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])

    sink._writer = FullDisk()  # type: ignore[assignment]
    with pytest.raises(OutputError, match=r"cannot write video .*out\.mp4: the file written "
                                          r"cannot be read back"):
        sink.close()
