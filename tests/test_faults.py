"""Faults with real processes: a bundle publisher, a store writer and `facestream
serve` taking uploads, each killed with SIGKILL at seeded random moments; a disk that
fills up under the store (a tiny tmpfs, needs root); a bundles folder mounted
read-only under the trainer; a network stream that vanishes
and comes back under a running `facestream run`. (A bundle corrupted on disk:
tests/test_reload.py; an HTTP camera that vanishes: tests/test_sources.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from e2e_support import Installation, Process, free_port, until
from enroll_support import clip_frames
from pipeline_support import mean_colour_backbone

from enrollment.errors import StoreError
from enrollment.files import TEMP_PREFIX
from enrollment.store import EnrollmentStore, Quality
from facecore.bundle import load_bundle
from facecore.errors import BundleError
from facecore.publish import current_bundle_dir, versions

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SEED = 14
TOKEN = "faults-test-token-0123456789abcdef"
LANDMARKS = np.array([[20, 24], [44, 24], [32, 36], [22, 48], [42, 48]], np.float32)
QUALITY = Quality(face_px=64.0, sharpness=100.0, frontalness=0.9, score=0.8)

# publishes stand-in bundles for ever: bundles dir, backbone
PUBLISHER = """
import sys
from pathlib import Path
from pipeline_support import stand_in_bundle
from facecore.publish import publish
bundles, backbone = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while True:
    labels = lambda v: ("a",) * (v % 3 + 1)
    publish(bundles, lambda d, v: stand_in_bundle(d, backbone, version=v, labels=labels(v)))
"""

# adds random samples to one person for ever: store root
WRITER = """
import sys
import numpy as np
from enrollment.store import EnrollmentStore, Quality
store = EnrollmentStore(sys.argv[1])
person = store.get_or_add_person("Writer")[0]
landmarks = np.array([[20, 24], [44, 24], [32, 36], [22, 48], [42, 48]], np.float32)
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", flush=True)
while True:
    crop = rng.integers(0, 256, (96, 96, 3), np.uint8)
    store.add_sample(person.id, crop, landmarks, Quality(64.0, 100.0, 0.9, 0.8), "photo")
    if rng.random() < 0.3:
        store.remove_sample(store.samples(person.id)[0].id)
"""


def _start(code: str, *args: str) -> subprocess.Popen[str]:
    """``python -c code args`` with this tree and tests/ on the path, once it is ready."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS)])}
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _kill_after(child: subprocess.Popen[str], delay: float) -> None:
    time.sleep(delay)
    child.kill()
    assert child.wait(10) == -signal.SIGKILL
    assert child.stdout is not None
    child.stdout.close()


def test_a_publisher_killed_at_random_moments_always_leaves_a_complete_bundle(
    tmp_path: Path,
) -> None:
    bundles = tmp_path / "bundles"
    backbone = mean_colour_backbone(tmp_path / "mean.onnx")
    rng = random.Random(SEED)
    seen: list[int] = []
    for _ in range(20):
        publisher = _start(PUBLISHER, str(bundles), str(backbone))
        _kill_after(publisher, rng.uniform(0.0, 0.25))
        current = current_bundle_dir(bundles)
        if current is None:  # killed before its first publish finished
            assert not seen and not versions(bundles)
            continue
        bundle = load_bundle(current)  # every hash checked: a complete bundle
        assert bundle.manifest.version == int(current.name[1:])
        assert len(bundle.manifest.labels) == bundle.manifest.version % 3 + 1
        assert not seen or bundle.manifest.version >= seen[-1]
        seen.append(bundle.manifest.version)
        for version in versions(bundles):  # the kept older ones are complete too
            load_bundle(bundles / f"v{version:06d}")
    assert len(seen) >= 15 and seen[-1] > 20, seen  # most runs published, many times over
    # a load that races the publisher sees a complete bundle or one already pruned
    publisher = _start(PUBLISHER, str(bundles), str(backbone))
    loads = pruned = 0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            current = current_bundle_dir(bundles)
            assert current is not None
            try:
                load_bundle(current)
                loads += 1
            except BundleError:
                assert not current.exists(), f"{current} is there but does not load"
                pruned += 1
    finally:
        _kill_after(publisher, 0.0)
    assert loads > 10, (loads, pruned)


def _check_store(root: Path) -> int:
    """The store opens, every row has its file and its file its row, every crop
    matches its hash; the number of samples."""
    with EnrollmentStore(root) as store:
        samples = store.samples()
        for sample in samples:
            store.load_crop(sample)
        files = {p for p in (root / "samples").rglob("*") if p.is_file()}
    assert files == {s.path for s in samples}, "files without rows, or rows without files"
    assert not [p for p in files if p.name.startswith(TEMP_PREFIX)]
    return len(samples)


def test_a_store_writer_killed_at_random_moments_leaves_a_clean_store(tmp_path: Path) -> None:
    root = tmp_path / "enrollment"
    rng = random.Random(SEED)
    counts = []
    for run in range(6):
        writer = _start(WRITER, str(root), str(run))
        _kill_after(writer, rng.uniform(0.05, 0.4))
        counts.append(_check_store(root))
    assert counts[-1] > 0 and counts == sorted(counts), counts  # commits are kept


async def test_the_server_killed_during_uploads_leaves_a_clean_store(
    shared_dir: Path, shared_file: object, tmp_path: Path
) -> None:
    clip = shared_file("media/short_hamilton_clip.mp4")  # type: ignore[operator]
    photos = [cv2.imencode(".png", f)[1].tobytes() for f in clip_frames(clip, range(84, 144))]
    setup = Installation.create(shared_dir, tmp_path)
    rng = random.Random(SEED)
    committed = 0  # uploads answered 200 so far
    try:
        for kill in range(2):
            server, url = setup.serve(TOKEN)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                await _listening(http, url, server)
                if kill == 0:
                    async with http.post(url + "/api/people", json={"name": "Lin"}) as response:
                        assert response.status == 201
                answered: list[int] = []
                uploads = asyncio.ensure_future(
                    _upload_forever(http, url, photos[kill::2], answered)
                )
                await until(lambda a=answered: a, 60, "an accepted upload", server)
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                server.stop(signal.SIGKILL)  # mid-upload: the worker may be writing
                with contextlib.suppress(aiohttp.ClientError):
                    await uploads
            committed += len(answered)
            assert _check_store(setup.state_dir / "enrollment") >= committed  # all kept
    finally:
        setup.stop_all()


async def _listening(http: aiohttp.ClientSession, url: str, server: Process) -> None:
    async def answers() -> bool:
        try:
            async with http.get(url + "/api/config") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    deadline = time.monotonic() + 120
    while not await answers():
        assert time.monotonic() < deadline, server.output()[-3000:]
        await asyncio.sleep(0.1)


async def _upload_forever(
    http: aiohttp.ClientSession, url: str, photos: list[bytes], answered: list[int]
) -> None:
    """Upload one photo per request; ``answered`` gets the number of each accepted one."""
    for number, photo in enumerate(photos):
        form = aiohttp.FormData()
        form.add_field("photo", photo, filename=f"{number}.png")
        async with http.post(url + "/api/people/Lin/samples", data=form) as response:
            if response.status == 200:
                answered.append(number)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 2 MiB tmpfs (needs root, as in CI); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_refuses_the_sample_clearly_and_loses_nothing(tiny_disk: Path) -> None:
    root = tiny_disk / "enrollment"
    rng = np.random.default_rng(SEED)
    noise = lambda: rng.integers(0, 256, (200, 200, 3), np.uint8)  # noqa: E731 - ~120 kB PNG
    with EnrollmentStore(root) as store:
        person = store.add_person("Disk")
        kept = [store.add_sample(person.id, noise(), LANDMARKS, QUALITY, "photo") for _ in range(3)]
        filler = tiny_disk / "filler"
        with filler.open("wb") as out:  # the rest of the disk, but a few kB
            free = shutil.disk_usage(tiny_disk).free
            out.write(b"\0" * max(0, free - 16 * 1024))
        with pytest.raises(StoreError, match=r"cannot write the sample file .*No space left"):
            store.add_sample(person.id, noise(), LANDMARKS, QUALITY, "photo")
        assert [s.id for s in store.samples(person.id)] == [s.id for s in kept]
    assert _check_store(root) == 3
    filler.unlink()
    with EnrollmentStore(root) as store:  # space again: the store goes on
        store.add_sample(person.id, noise(), LANDMARKS, QUALITY, "photo")
    assert _check_store(root) == 4


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """An empty folder mounted read-only (a tmpfs; needs root, as in CI), as a shared
    filesystem exported read-only would be; skipped where it cannot be mounted."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_read_only_bundles_folder_is_a_clear_error_and_the_trainer_waits_it_out(
    shared_dir: Path, tmp_path: Path, read_only_dir: Path
) -> None:
    box = Installation.create(shared_dir, tmp_path / "box")
    box.global_options += ["--bundles-dir", str(read_only_dir)]
    once = box.attempt("trainer", "--once", timeout=120)
    assert once.returncode == 2, once.stdout + once.stderr
    assert (f"facestream: error: cannot publish a model bundle in {read_only_dir}: "
            "Read-only file system") in once.stderr, once.stderr
    assert "mounted read-only" in once.stderr and "Traceback" not in once.stderr

    trainer = box.start("trainer", "trainer")  # the service logs it and keeps running
    try:
        await until(lambda: "cannot publish a model bundle" in trainer.output(), 90,
                    "the trainer to report the read-only folder", trainer)
        assert trainer.popen.poll() is None and "Traceback" not in trainer.output()
        subprocess.run(["mount", "-o", "remount,rw", str(read_only_dir)], check=True)
        box.run("enroll", "add", "Barack Obama", str(shared_dir / "media" / "obama.jpg"))
        await until(lambda: current_bundle_dir(read_only_dir) is not None, 60,
                    "a bundle once the folder can be written and the store changes", trainer)
    finally:
        trainer.stop()


def _stream(clip: Path, port: int, frames: int) -> subprocess.Popen[bytes]:
    """ffmpeg serving ``frames`` frames of the clip at its rate as MPEG-TS on a TCP
    port (an IP camera's stream), to the first client that connects."""
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip),
         "-frames:v", str(frames), "-an", "-c:v", "mpeg2video", "-q:v", "5",
         "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to serve a stream")
def test_run_resumes_a_stream_that_vanishes_and_comes_back(
    shared_dir: Path, shared_file: object, tmp_path: Path
) -> None:
    clip = shared_file("media/short_hamilton_clip.mp4")  # type: ignore[operator]
    setup = Installation.create(shared_dir, tmp_path)
    port = free_port()
    first = _stream(clip, port, 30)
    output = tmp_path / "annotated.mp4"
    run = setup.start("run", "run", "--source", f"tcp://127.0.0.1:{port}",
                      "--output", str(output))
    try:
        _wait(output.exists, 60, "frames of the stream", run)
        time.sleep(0.5)
        first.kill()  # the camera vanishes (if its 30 frames are not all out yet)
        first.wait(10)
        _wait(lambda: "stopped delivering; retrying" in run.output(), 20, "the message", run)
        second = _stream(clip, port, 60)  # ... and comes back
        _wait(lambda: "is back" in run.output(), 30, "the reconnection", run)
        second.wait(30)
        assert run.stop(signal.SIGINT) == 0, run.output()
    finally:
        setup.stop_all()
        if first.poll() is None:
            first.kill()
    written = cv2.VideoCapture(str(output))
    count = int(written.get(cv2.CAP_PROP_FRAME_COUNT))
    written.release()
    summary = run.output().strip().splitlines()[-1]
    assert f"{count} frames in" in summary, (count, run.output())
    assert run.output().index("stopped delivering") < run.output().index("is back")
    assert count > 30, run.output()  # more than the first stream had: it resumed


def _wait(condition: Callable[[], object], timeout: float, what: str, process: Process) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{process.output()[-3000:]}")
        time.sleep(0.05)
