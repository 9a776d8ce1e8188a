"""`facestream webcam` with a real window: the command runs as a process on a
virtual X display (Xvfb) with the shared clip as its camera and the shared people's
bundle, its window is grabbed (ffmpeg's x11grab) and its keys are typed (xdotool).
Also the clear errors for a camera that does not exist and for no display at all."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from e2e_support import Installation
from enroll_support import enrollment_settings
from numpy.typing import NDArray
from webrtc_support import build_people_bundle

from streamer.live.annotate import KNOWN

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("Xvfb", "xdotool", "ffmpeg")),
    reason="needs Xvfb, xdotool and ffmpeg (Debian: xvfb xdotool ffmpeg)",
)

SharedFile = Callable[[str], Path]
CLIP_SIZE = (640, 360)  # the shared clip's width and height
FPS_CORNER = (slice(0, 32), slice(0, 110))  # where the frame rate is written: rows, columns


@pytest.fixture(scope="module")
def installation(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Installation:
    """An installation whose published bundle knows the four shared people."""
    root = tmp_path_factory.mktemp("webcam")
    setup = Installation.create(shared_dir, root)
    build_people_bundle(enrollment_settings(shared_dir, setup.state_dir), shared_dir)
    return setup


@pytest.fixture
def display() -> Iterator[str]:
    """A virtual X display (Xvfb, 1280x800), on a number of its own choosing."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # written once the server accepts clients
    assert number.isdigit(), "Xvfb did not start"
    try:
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def _xdotool(display: str, *args: str) -> str:
    done = subprocess.run(
        ["xdotool", *args],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout.strip()


def _window(
    display: str, timeout: float, size: tuple[int, int] = CLIP_SIZE
) -> tuple[str, tuple[int, int, int, int]] | None:
    """The shown window named facestream once it has ``size``: (id, (x, y, w, h))."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for window in _xdotool(
            display, "search", "--onlyvisible", "--name", "^facestream$"
        ).split():
            shape = dict(
                line.split("=", 1)
                for line in _xdotool(display, "getwindowgeometry", "--shell", window).splitlines()
            )
            geometry = tuple(int(shape[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
            if geometry[2:] == size:
                return window, geometry  # type: ignore[return-value]
        time.sleep(0.2)
    return None


def _grab(display: str, geometry: tuple[int, int, int, int]) -> NDArray[np.uint8]:
    """What the screen shows at ``geometry`` [h, w, 3] BGR."""
    x, y, width, height = geometry
    done = subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "x11grab",
            "-video_size",
            f"{width}x{height}",
            "-i",
            f"{display}+{x},{y}",
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "pipe:",
        ],
        capture_output=True,
        timeout=20,
        check=True,
    )
    return np.frombuffer(done.stdout, np.uint8).reshape(height, width, 3)


def _known_box_pixels(image: NDArray[np.uint8]) -> int:
    """Pixels of the colour of a known person's box and label."""
    return int(np.all(np.abs(image.astype(np.int16) - KNOWN) <= 12, axis=2).sum())


def _fps_text_pixels(image: NDArray[np.uint8]) -> int:
    """White pixels in the corner where the frame rate is written."""
    return int(np.all(image[FPS_CORNER] >= 225, axis=2).sum())


def _clip_frames(clip: Path) -> list[NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return frames


def _until(probe: Callable[[], int], accept: Callable[[int], bool], timeout: float) -> list[int]:
    """Probe the window until ``accept`` takes a value; all the values seen."""
    deadline = time.monotonic() + timeout
    seen = [probe()]
    while not accept(seen[-1]) and time.monotonic() < deadline:
        time.sleep(0.3)
        seen.append(probe())
    return seen


def test_webcam_window_shows_the_overlay_and_obeys_its_keys(
    installation: Installation, display: str, shared_file: SharedFile, tmp_path: Path
) -> None:
    clip = shared_file("media/short_hamilton_clip.mp4")
    raw = _clip_frames(clip)
    # the clip itself has (almost) none of the overlay's colours
    raw_known = max(_known_box_pixels(frame) for frame in raw)
    raw_fps = max(_fps_text_pixels(frame) for frame in raw)
    assert raw_known < 50 and raw_fps < 20, (raw_known, raw_fps)

    webcam = installation.start(
        "webcam", "webcam", "--source", str(clip), "--loop", env={"DISPLAY": display}
    )
    try:
        found = _window(display, 60)
        assert found, f"no window named facestream\n{webcam.output()[-3000:]}"
        window, geometry = found

        def known() -> int:
            return _known_box_pixels(_grab(display, geometry))

        def fps_text() -> int:
            return _fps_text_pixels(_grab(display, geometry))

        seen = _until(known, lambda n: n > 10 * raw_known + 200, 30)
        assert seen[-1] > 10 * raw_known + 200, f"no known person's box on screen: {seen}"
        cv2.imwrite(str(tmp_path / "webcam-window.png"), _grab(display, geometry))
        seen = _until(fps_text, lambda n: n > 5 * raw_fps + 40, 10)
        assert seen[-1] > 5 * raw_fps + 40, f"no frame rate on screen: {seen}"

        _xdotool(display, "windowfocus", "--sync", window)
        _xdotool(display, "key", "f")  # the frame rate goes away ...
        seen = _until(fps_text, lambda n: n <= raw_fps, 10)
        assert seen[-1] <= raw_fps, f"the frame rate is still shown after f: {seen}"
        _xdotool(display, "key", "f")  # ... and comes back
        seen = _until(fps_text, lambda n: n > 5 * raw_fps + 40, 10)
        assert seen[-1] > 5 * raw_fps + 40, f"the frame rate did not come back: {seen}"

        _xdotool(display, "key", "q")
        returncode = webcam.popen.wait(15)
    finally:
        webcam.stop()
    output = webcam.output()
    assert returncode == 0, output[-3000:]
    summary = re.search(r"^(\d+) frames in .* names seen: (.*)$", output, re.MULTILINE)
    assert summary, output[-3000:]
    assert int(summary.group(1)) > 30 and "Lin Manuel Miranda" in summary.group(2)
    assert "Traceback" not in output


def test_webcam_errors_are_clear(installation: Installation, display: str) -> None:
    present = {p.name for p in Path("/dev").glob("video*")}
    index = next(i for i in range(7, 64) if f"video{i}" not in present)

    def webcam(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            installation.command("webcam", *args),
            env=env,
            cwd=installation.code,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    missing = webcam("--source", str(index), env={**installation.env, "DISPLAY": display})
    assert missing.returncode != 0
    assert f"camera {index} (/dev/video{index}) cannot be opened" in missing.stderr
    assert "Traceback" not in missing.stderr and "WARN" not in missing.stderr, missing.stderr

    headless = {k: v for k, v in installation.env.items() if k != "DISPLAY"}
    nowhere = webcam("--source", "0", env=headless)
    assert nowhere.returncode == 2, nowhere.stderr  # an error, not Qt aborting the process
    assert "no display (DISPLAY is not set)" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


def test_a_camera_larger_than_the_screen_opens_a_window_that_fits(
    installation: Installation, display: str, shared_file: SharedFile, tmp_path: Path
) -> None:
    """A 1080p camera on the 1280x800 screen: the window opened at 1920x1080, its
    right and bottom off the screen. It opens at 1280x720, the picture's shape."""
    big = tmp_path / "1080p.mp4"
    writer = cv2.VideoWriter(str(big), cv2.VideoWriter_fourcc(*"mp4v"), 30, (1920, 1080))
    for frame in _clip_frames(shared_file("media/short_hamilton_clip.mp4"))[:60]:
        writer.write(cv2.resize(frame, (1920, 1080)))
    writer.release()
    webcam = installation.start(
        "webcam-1080p", "webcam", "--source", str(big), "--loop", env={"DISPLAY": display}
    )
    try:
        found = _window(display, 60, size=(1280, 720))
        assert found, f"no 1280x720 window named facestream\n{webcam.output()[-3000:]}"
    finally:
        webcam.stop()
