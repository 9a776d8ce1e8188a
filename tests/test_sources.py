"""Frame sources: files, cameras, network streams and the newest-frame-wins mailbox."""

from __future__ import annotations

import http.server
import itertools
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecore.errors import SourceError
from facestream.cli import main
from streamer.live.sources import CaptureSource, PushSource, SourceSpec, open_source, parse_source

CLIP_FRAMES = 275


@pytest.fixture(scope="module")
def clip(shared_file) -> Path:
    return shared_file("media/short_hamilton_clip.mp4")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("0", SourceSpec("camera", 0)),
        (" 2 ", SourceSpec("camera", 2)),
        ("rtsp://cam.local:554/live", SourceSpec("url", "rtsp://cam.local:554/live")),
        ("HTTP://cam/video.mjpg", SourceSpec("url", "HTTP://cam/video.mjpg")),
        ("clip.mp4", SourceSpec("file", "clip.mp4")),
        ("/videos/2024/1.mp4", SourceSpec("file", "/videos/2024/1.mp4")),
    ],
)
def test_parse_source(text: str, spec: SourceSpec) -> None:
    assert parse_source(text) == spec


def test_missing_camera_names_the_device() -> None:
    present = {p.name for p in Path("/dev").glob("video*")}
    index = next(i for i in range(10, 64) if f"video{i}" not in present)
    with pytest.raises(
        SourceError, match=rf"camera {index} \(/dev/video{index}\) cannot be opened"
    ):
        open_source(str(index))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.mp4 does not exist"):
        open_source(str(tmp_path / "nope.mp4"))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(SourceError, match=r"notes\.mp4 cannot be opened as a video"):
        open_source(str(text))


def test_directory_and_empty_sources_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SourceError, match=rf"^{tmp_path} is a directory, not a video file$"):
        open_source(str(tmp_path))
    for empty in ("", "  "):
        with pytest.raises(SourceError, match=r"^the source is empty: give a video file"):
            open_source(empty)
    # as the user sees it from `facestream run`
    for text, error in ((str(tmp_path), "is a directory, not a video file"), ("", "is empty")):
        status = main(["run", "--source", text, "--state-dir", str(tmp_path / "state")])
        assert status == 2
        assert error in capsys.readouterr().err.strip().splitlines()[-1]


def test_unreachable_stream_hides_its_password() -> None:
    with pytest.raises(SourceError, match=r"stream http://\*\*\*@127\.0\.0\.1:1/") as caught:
        open_source("http://admin:hunter2@127.0.0.1:1/video.mjpg")
    assert "hunter2" not in str(caught.value)


def test_file_is_read_whole_in_order_then_ends(clip: Path) -> None:
    source = open_source(str(clip))
    indices = []
    while (frame := source.read()) is not None:
        assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8
        indices.append(frame.index)
    assert indices == list(range(CLIP_FRAMES))
    assert source.dropped == 0
    assert source.read() is None
    source.close()
    source.close()


def test_looping_file_goes_on_past_its_end(clip: Path) -> None:
    source = open_source(str(clip), loop=True)
    try:
        first = source.read()
        assert first is not None
        for _ in range(CLIP_FRAMES + 10):
            frame = source.read()
            assert frame is not None
        assert frame.index == CLIP_FRAMES + 10
        assert np.array_equal(frame.image, _frame_of(clip, 10))
    finally:
        source.close()
    assert source.read() is None


def _frame_of(clip: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(clip))
    for _ in range(index + 1):
        ok, image = capture.read()
        assert ok
    capture.release()
    return image


def test_push_source_newest_frame_wins() -> None:
    source = PushSource()
    for value in range(5):
        assert source.push(np.full((4, 4, 3), value, np.uint8))
    frame = source.read()
    assert frame is not None and frame.index == 4 and frame.image[0, 0, 0] == 4
    assert source.dropped == 4
    source.push(np.zeros((4, 4, 3), np.uint8))
    source.end()
    assert source.push(np.zeros((4, 4, 3), np.uint8)) is False
    last = source.read()
    assert last is not None and last.index == 5  # the waiting frame is still handed out
    assert source.read() is None


def test_lossless_push_waits_for_the_reader() -> None:
    source = PushSource(lossless=True)
    pushed = []

    def producer() -> None:
        for value in range(20):
            source.push(np.full((2, 2, 3), value, np.uint8))
            pushed.append(value)
        source.end()

    thread = threading.Thread(target=producer)
    thread.start()
    time.sleep(0.05)
    assert len(pushed) <= 2  # blocked on the full slot
    values = []
    while (frame := source.read()) is not None:
        values.append(int(frame.image[0, 0, 0]))
    thread.join()
    assert values == list(range(20)) and source.dropped == 0


def test_paced_file_skips_frames_for_a_slow_reader(clip: Path) -> None:
    source = CaptureSource(parse_source(str(clip)), pace=200.0)
    try:
        indices = []
        for _ in range(8):
            time.sleep(0.04)  # a reader much slower than 200 fps
            frame = source.read()
            assert frame is not None
            assert time.monotonic() - frame.captured < 0.03  # fresh, not queued
            indices.append(frame.index)
        assert source.dropped >= 8 * 4
        assert all(b - a >= 4 for a, b in itertools.pairwise(indices))
    finally:
        source.close()


class _MjpegCamera:
    """A real IP-camera stand-in: MJPEG over HTTP from frames of the clip. Each
    connection streams ``per_connection`` frames, then the camera vanishes: the next
    ``outage`` connection attempts are answered 503."""

    def __init__(self, clip: Path, *, per_connection: int, outage: int) -> None:
        capture = cv2.VideoCapture(str(clip))
        self.jpegs = []
        for _ in range(30):
            ok, image = capture.read()
            assert ok
            self.jpegs.append(cv2.imencode(".jpg", image)[1].tobytes())
        capture.release()
        self.per_connection = per_connection
        self.outage = outage
        self.down_left = 0
        self.refused = 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if camera.down_left > 0:
                    camera.down_left -= 1
                    camera.refused += 1
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for k in range(camera.per_connection):
                        jpeg = camera.jpegs[k % len(camera.jpegs)]
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        self.wfile.write(head % len(jpeg) + jpeg + b"\r\n")
                        time.sleep(0.005)
                except OSError:
                    return
                camera.down_left = camera.outage

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def camera(clip: Path) -> Iterator[_MjpegCamera]:
    server = _MjpegCamera(clip, per_connection=25, outage=3)
    yield server
    server.close()


def test_vanished_stream_is_retried_with_backoff_and_resumes(camera: _MjpegCamera) -> None:
    source = CaptureSource(parse_source(camera.url), retry_initial=0.02, retry_max=0.1)
    try:
        indices = []
        while len(indices) < 35:
            frame = source.read()
            assert frame is not None, "the stream ended instead of being retried"
            indices.append(frame.index)
        assert camera.refused == 3  # three attempts while it was gone
        assert source.reconnects == 1
        assert indices == sorted(set(indices))
    finally:
        source.close()


def test_close_interrupts_the_backoff(camera: _MjpegCamera) -> None:
    camera.outage = 10**6  # it never comes back
    source = CaptureSource(parse_source(camera.url), retry_initial=30.0)
    while (frame := source.read()) is not None and frame.index < 24:
        pass
    time.sleep(0.2)  # now waiting 30 s before the next attempt
    began = time.monotonic()
    source.close()
    source.close()
    assert time.monotonic() - began < 2.0
    assert source.read() is None


def test_damaged_stretch_of_a_file_is_skipped_not_the_end(clip: Path, tmp_path: Path) -> None:
    # 100 kB zeroed in the middle of the clip: ffmpeg plays 231 of its 275 frames, and
    # `run` stopped at the first undecodable packet, after 88 of them
    data = bytearray(clip.read_bytes())
    data[200_000:300_000] = bytes(100_000)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    source = open_source(str(damaged))
    frames = 0
    while source.read() is not None:
        frames += 1
    source.close()
    assert frames > 200
