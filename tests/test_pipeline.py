"""The live pipeline end to end: real YuNet, the real dlib ResNet, a bundle of the
shared people, the shared clip; backpressure, a swap mid-stream, the `run` command."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline_support import (
    AUDIENCE,
    CLIP,
    CLIP_FRAMES,
    PROFILE,
    STAGE,
    WIDE_STAGE,
    clip_frames,
    label_of,
    live_settings,
    people_folder,
    publish_people,
    serve_folder,
)

from facecore.bundle import Bundle
from facecore.config import Settings
from facestream.cli import main
from streamer.cli import apply_key
from streamer.errors import ClosedError
from streamer.live.annotate import Overlay
from streamer.live.engine import Engine
from streamer.live.events import RecognitionEvent
from streamer.live.pipeline import FrameResult, RateMeter
from streamer.live.runner import RunSummary, run_source
from streamer.live.sources import PushSource, SourceFrame, open_source

PEOPLE = ("alex_lacamoire", "barack_obama", "joe_biden", "lin_manuel_miranda")


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("live")
    return live_settings(shared_dir, root / "state", root / "cache")


@pytest.fixture(scope="module")
def bundle(
    settings: Settings, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Bundle:
    folder = people_folder(shared_dir, tmp_path_factory.mktemp("people") / "all", PEOPLE)
    return publish_people(settings, folder)


@pytest.fixture(scope="module")
def engine(settings: Settings, bundle: Bundle) -> Engine:
    with Engine.from_settings(settings, watch=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def clip(shared_file) -> Path:
    return shared_file(CLIP)


@dataclass
class ClipRun:
    tracks: list[tuple]  # per frame: the TrackViews
    events: list[RecognitionEvent]
    dropped: int


@pytest.fixture(scope="module")
def clip_run(engine: Engine, clip: Path) -> ClipRun:
    """The whole clip, every frame, through one pipeline."""
    tracks: list[tuple] = []
    events: list[RecognitionEvent] = []

    def collect(frame: SourceFrame, result: FrameResult, done: float) -> None:
        assert frame.index == len(tracks)
        assert result.frame.shape == frame.image.shape
        tracks.append(result.tracks)
        events.extend(result.events)

    async def go() -> int:
        source = open_source(str(clip))
        pipeline = engine.pipeline("clip")
        try:
            summary = await run_source(source, pipeline, collect)
        finally:
            source.close()
            pipeline.close()
        return summary.dropped

    dropped = asyncio.run(go())
    return ClipRun(tracks, events, dropped)


def test_clip_names_lin_manuel_miranda_on_stage(clip_run: ClipRun, bundle: Bundle) -> None:
    lin = label_of(bundle, "Miranda")
    assert len(clip_run.tracks) == CLIP_FRAMES and clip_run.dropped == 0
    # the stage close-ups start from below (unknown) and are named within a second
    for shot, share in ((STAGE, 0.75), (WIDE_STAGE, 0.8)):
        singer = [_largest(clip_run.tracks[i]) for i in shot]
        assert sum(view is not None and view.name == lin for view in singer) >= share * len(shot)
    for i in AUDIENCE:
        assert all(view.name != lin for view in clip_run.tracks[i])
    assert all(
        view.name != label_of(bundle, "Biden") for views in clip_run.tracks for view in views
    )


def _largest(views: tuple) -> object:
    return max(views, key=lambda v: v.xyxy[2] - v.xyxy[0], default=None)


def test_clip_names_are_decided_once_per_track(clip_run: ClipRun) -> None:
    per_track = collections.defaultdict(list)
    for event in clip_run.events:
        per_track[event.track].append(event.name)
    assert per_track, "no recognition events"
    for track, names in per_track.items():
        assert len(names) <= 2, f"track {track} changed name {len(names) - 1} times: {names}"
    shown = {view.track_id for views in clip_run.tracks for view in views}
    assert shown == set(per_track)  # every face got a decision, as an event
    for views in clip_run.tracks:
        for view in views:
            assert 0.0 <= view.confidence <= 1.0


@pytest.mark.xfail(
    strict=True,
    reason="the dlib ResNet cannot separate the clip's dark audience with these photos: "
    "with the dlib_5 front end Obama's face scores 0.880-0.913 against his prototype, under "
    "the 4-person population threshold (0.939), while Michelle Obama and the man at the right "
    "edge score up to 0.921 and 0.920 against Lin-Manuel Miranda's: no threshold names Obama "
    "without naming a stranger. dlib's own pipeline fails the same way: Obama is never "
    "within 0.6 of his photos (0.629 at best) and an unknown man is (0.588) "
    "(docs/benchmarks.md, bench/clip_reference.py)",
)
def test_clip_names_obama_in_the_audience_and_nobody_else(
    clip_run: ClipRun, bundle: Bundle
) -> None:
    obama, lin = label_of(bundle, "Obama"), label_of(bundle, "Miranda")
    alex = label_of(bundle, "Lacamoire")
    audience = [clip_run.tracks[i] for i in AUDIENCE]
    assert sum(any(v.name == obama for v in views) for views in audience) >= 0.5 * len(audience)
    for i, views in enumerate(clip_run.tracks):
        if i in WIDE_STAGE:
            allowed = {None, lin, alex}
        elif i in STAGE or i in PROFILE:
            allowed = {None, lin}
        else:
            allowed = {None, obama}
        assert {view.name for view in views} <= allowed, (i, [v.name for v in views])


async def test_without_a_bundle_every_face_is_unknown(settings: Settings, clip: Path) -> None:
    empty = Settings(
        state_dir=settings.state_dir.parent / "no-bundle",
        cache_dir=settings.cache_dir,
        models_dir=settings.models_dir,
    )
    with Engine.from_settings(empty, watch=False) as engine:
        assert engine.bundle_version is None
        pipeline = engine.pipeline("nobody")
        events = []
        faces = 0
        for frame in clip_frames(clip, range(205, 240)):  # a cut to the audience inside
            result = await pipeline.process(frame)
            faces += len(result.tracks)
            assert all(view.name is None for view in result.tracks)
            events.extend(result.events)
            assert result.timings_ms["recognize"] == 0.0
        assert faces > 100
        assert {e.name for e in events} == {"unknown"}
        assert len({e.track for e in events}) == len(events)  # once per track


async def test_newest_frame_wins_when_the_source_is_faster(engine: Engine, clip: Path) -> None:
    frames = clip_frames(clip, range(211, 271))  # the audience: 5 to 7 faces a frame
    source = PushSource("fast feed")
    stop = threading.Event()
    fed = 0

    def feeder() -> None:
        nonlocal fed
        period = 1 / 500  # far beyond what two cores can process
        while not stop.is_set():
            source.push(frames[fed % len(frames)])
            fed += 1
            time.sleep(period)
        source.end()

    latencies, totals = [], []

    def collect(frame: SourceFrame, result: FrameResult, done: float) -> None:
        latencies.append((done - frame.captured) * 1000)
        totals.append(result.timings_ms["total"])
        if len(latencies) == 40:
            stop.set()

    pipeline = engine.pipeline("fast")
    thread = threading.Thread(target=feeder)
    thread.start()
    try:
        summary = await run_source(source, pipeline, collect)
    finally:
        stop.set()
        thread.join()
        pipeline.close()
    assert summary.frames >= 40
    assert summary.dropped > summary.frames  # most frames were skipped, not queued
    assert summary.dropped + summary.frames <= fed
    # a frame's latency is its own processing plus at most one frame ahead of it,
    # never a queue: it does not grow over the run
    outside = np.array(latencies) - np.array(totals)
    assert np.median(outside) < 20.0
    assert np.mean(latencies[-10:]) < 3 * np.median(totals) + 50


async def test_gallery_swap_mid_stream_loses_no_frame(
    settings: Settings, shared_dir: Path, clip: Path, tmp_path: Path, bundle: Bundle
) -> None:
    """Start knowing three people (not Lin-Manuel Miranda); publish all four while
    his close-ups stream: every frame is answered, and his track gets his name."""
    three = Settings(
        state_dir=tmp_path / "state", cache_dir=settings.cache_dir, models_dir=settings.models_dir
    )
    folder = people_folder(shared_dir, tmp_path / "three", PEOPLE[:3])
    publish_people(three, folder)
    lin = label_of(bundle, "Miranda")
    with Engine.from_settings(three, watch=False) as engine:
        assert lin not in engine.bundle.manifest.labels
        embedder = engine.recognizer.model.embedder
        pipeline = engine.pipeline("swap")
        frames = clip_frames(clip, range(100, 160))
        names, swap = [], None
        for i, frame in enumerate(frames):
            if i == 20:  # swap from another thread while frames keep coming
                swap = asyncio.create_task(asyncio.to_thread(engine.swap_bundle, bundle))
            result = await pipeline.process(frame)
            names.append(_largest(result.tracks).name)
        await swap
        assert len(names) == len(frames)
        assert names[:20] == [None] * 20
        assert names[-30:] == [lin] * 30
        assert engine.bundle_version == bundle.manifest.version
        assert engine.recognizer.model.embedder is embedder  # same backbone: same session
        pipeline.close()


async def test_closed_pipeline_and_engine_refuse_work(settings: Settings, clip: Path) -> None:
    frame = clip_frames(clip, range(100, 101))[0]
    engine = Engine.from_settings(settings, watch=False)
    first, second = engine.pipeline("a"), engine.pipeline("b")
    result = await first.process(frame)
    assert len(result.tracks) == 1 and result.frame.shape == frame.shape
    assert set(result.timings_ms) == {"detect", "recognize", "annotate", "total"}
    first.close()
    first.close()
    with pytest.raises(ClosedError):
        await first.process(frame)
    await asyncio.to_thread(engine.close)
    engine.close()
    with pytest.raises(ClosedError):
        await second.process(frame)  # the engine closed its pipelines
    with pytest.raises(ClosedError):
        engine.pipeline("c")


async def test_pipeline_overlays(engine: Engine, clip: Path) -> None:
    frame = clip_frames(clip, range(120, 121))[0]
    pipeline = engine.pipeline("overlay")
    plain = (await pipeline.process(frame)).frame
    pipeline.overlay = Overlay(track_ids=True, fps=True)
    await pipeline.process(frame)
    marked = (await pipeline.process(frame)).frame
    corner = (slice(0, 30), slice(0, 120))
    assert np.array_equal(plain[corner], frame[corner])
    assert not np.array_equal(marked[corner], frame[corner])  # the fps counter
    pipeline.close()


def test_webcam_keys() -> None:
    overlay = Overlay()
    overlay, quit_now = apply_key(overlay, ord("t"))
    assert overlay == Overlay(track_ids=True) and not quit_now
    overlay, quit_now = apply_key(overlay, ord("f"))
    assert overlay == Overlay(track_ids=True, fps=True) and not quit_now
    assert apply_key(overlay, ord("x")) == (overlay, False)
    assert apply_key(overlay, ord("q"))[1] and apply_key(overlay, 27)[1]


def test_run_command_writes_video_events_and_a_summary(
    settings: Settings,
    bundle: Bundle,
    clip: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    short = tmp_path / "short.mp4"
    writer = cv2.VideoWriter(str(short), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 360))
    for frame in clip_frames(clip, range(110, 150)):
        writer.write(frame)
    writer.release()
    out, events = tmp_path / "annotated.mp4", tmp_path / "events.jsonl"
    common = _options(settings)
    status = main(
        ["run", "--source", str(short), "--output", str(out), "--events", str(events), *common]
    )
    assert status == 0
    output = capfd.readouterr()
    assert "WARN" not in output.err  # OpenCV's own notes stay out of the user's terminal
    summary = output.out.strip().splitlines()[-1]
    lin = label_of(bundle, "Miranda")
    assert summary.startswith("40 frames in ") and "fps" in summary
    assert summary.endswith(f"1 face seen, names seen: {lin}")
    written = cv2.VideoCapture(str(out))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    ok, first = written.read()
    written.release()
    assert ok and first.shape == (360, 640, 3)
    lines = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    assert [(e["name"], e["track"]) for e in lines] == [(lin, 1)]
    assert set(lines[0]) == {"time", "stream", "frame", "track", "name", "confidence", "box"}

    status = main(["run", "--source", str(short), "--events", "-", *common])
    captured = capfd.readouterr()
    assert status == 0
    assert json.loads(captured.out.splitlines()[0])["name"] == lin
    assert captured.err.strip().splitlines()[-1].startswith("40 frames in ")


def test_run_command_names_a_missing_camera(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    present = {p.name for p in Path("/dev").glob("video*")}
    index = next(i for i in range(10, 64) if f"video{i}" not in present)
    status = main(["run", "--source", str(index), "--state-dir", str(settings.state_dir)])
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        f"facestream: error: camera {index} (/dev/video{index}) cannot be opened"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.jpg", b"not a photo\n"), ("noise.png", bytes(range(256)) * 40)],
    ids=["text", "bytes"],
)
def test_run_command_refuses_a_file_from_which_no_frame_can_be_read(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
) -> None:
    """OpenCV opens these (by their name) and then reads nothing: not a run of 0 frames."""
    source, out = tmp_path / name, tmp_path / "out.mp4"
    source.write_bytes(content)
    status = main(["run", "--source", str(source), "--output", str(out), *_options(settings)])
    assert status == 2
    lines = capsys.readouterr()
    assert lines.out == ""  # no summary
    assert lines.err.strip().splitlines()[-1] == (
        f"facestream: error: video file {source} cannot be decoded as an image or video: "
        "not one frame could be read from it"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no empty video left


def test_run_command_warns_once_when_no_bundle_was_published(
    settings: Settings,
    bundle: Bundle,
    shared_file: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    photo = str(shared_file("media/obama.jpg"))
    empty = tmp_path / "state"
    assert main(["run", "--source", photo, *_options(settings), "--state-dir", str(empty)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"no model bundle in {empty / 'bundles'}: every face is unknown; "
        "run `facestream trainer --once`"
    ]
    # following the store's people makes no store where there was none
    assert not (empty / "enrollment").exists()
    caplog.clear()
    assert main(["run", "--source", photo, *_options(settings)]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_run_command_names_people_as_the_bundle_does_while_the_store_is_down(
    settings: Settings,
    bundle: Bundle,
    shared_file: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL store that cannot be reached is warned of once, as by the server,
    and the run goes on with the bundle's names."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"postgresql://facestream@127.0.0.1:{port}/facestream"
    photo = str(shared_file("media/obama.jpg"))
    assert main(["run", "--source", photo, *_options(settings), "--database-url", down]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("cannot read the enrollment store's people: ")
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.endswith(f"names seen: {label_of(bundle, 'Obama')}"), summary


def _options(settings: Settings) -> list[str]:
    """The global options that point `facestream` at the test's settings."""
    return [
        "--state-dir",
        str(settings.state_dir),
        "--cache-dir",
        str(settings.cache_dir),
        "--models-dir",
        str(settings.models_dir),
    ]


@pytest.mark.parametrize(
    ("targets", "named"),
    [
        (["--output", "c.mp4"], "--output c.mp4 is the same file as --source c.mp4"),
        (["--events", "c.mp4"], "--events c.mp4 is the same file as --source c.mp4"),
        (["--output", "sub/../c.mp4"], "--output sub/../c.mp4 is the same file as --source c.mp4"),
        (["--events", "link.mp4"], "--events link.mp4 is the same file as --source c.mp4"),
        (
            ["--output", "o.mp4", "--events", "o.mp4"],
            "--events o.mp4 is the same file as --output o.mp4",
        ),
    ],
)
def test_run_command_refuses_to_overwrite_its_source(
    settings: Settings,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    targets: list[str],
    named: str,
) -> None:
    source = tmp_path / "c.mp4"
    source.write_bytes(clip.read_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").hardlink_to(source)
    monkeypatch.chdir(tmp_path)
    status = main(["run", "--source", "c.mp4", *targets, *_options(settings)])
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == f"facestream: error: {named}: refusing to overwrite it"
    assert source.read_bytes() == clip.read_bytes()
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("missing/out.mp4", "the directory {tmp}/missing does not exist"),
        ("", "it is a directory; give a file name such as {tmp}/out.mp4"),
        ("out.txt", "'.txt' is not a video format facestream can write; use one of .mp4, "),
        ("out", "a name without an extension is not a video format"),
    ],
)
def test_run_command_says_why_it_cannot_write_the_video(
    settings: Settings,
    clip: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output: str,
    reason: str,
) -> None:
    target = tmp_path / output if output else tmp_path
    status = main(["run", "--source", str(clip), "--output", str(target), *_options(settings)])
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"facestream: error: cannot write video {target}: ")
    assert reason.format(tmp=tmp_path) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_run_command_names_a_read_only_output_directory(
    settings: Settings, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        status = main(
            ["run", "--source", str(clip), "--output", str(folder / "o.mp4"), *_options(settings)]
        )
    finally:
        folder.chmod(0o755)
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.endswith(
        f"cannot write video {folder / 'o.mp4'}: the directory {folder} is not writable"
    )


def test_run_command_says_why_the_kernel_refuses_the_output(
    settings: Settings, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc takes no new files, whoever asks: root included, whom the permission bits
    do not stop (cv2.VideoWriter only says that it failed)."""
    target = Path("/proc/facestream-out.mp4")
    status = main(["run", "--source", str(clip), "--output", str(target), *_options(settings)])
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"facestream: error: cannot write video {target}: cannot create it (")
    assert not target.exists()


def test_run_stopped_by_sigterm_finishes_the_video_and_prints_the_summary(
    settings: Settings, clip: Path, tmp_path: Path
) -> None:
    """systemd and `timeout` stop with SIGTERM: the video must be as playable as
    after Ctrl-C (an mp4 without its index cannot be opened at all). It holds part of
    the file, so the run exits 143, not 0 (`run ... && upload` must not go on)."""
    out = tmp_path / "stopped.mp4"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, "-m", "facestream", "run", "--source", str(clip), "--realtime",
               "--output", str(out), *_options(settings)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        time.sleep(1.0)  # some 30 frames into the 9 s clip
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM after " in stderr, stderr
    summary = stdout.strip().splitlines()[-1]
    assert " in " in summary and "names seen: " in summary
    frames = int(summary.split()[0])
    assert 0 < frames < CLIP_FRAMES
    written = cv2.VideoCapture(str(out))
    assert written.isOpened()
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    ok, first = written.read()
    written.release()
    assert ok and first.shape == (360, 640, 3)


def _run_process(
    settings: Settings, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`facestream run ARGS` as a real process, killed after ``timeout`` s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, "-m", "facestream", "run", *args, *_options(settings)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_run_reads_a_video_file_served_over_http_whole_and_ends(
    settings: Settings, bundle: Bundle, clip: Path, tmp_path: Path
) -> None:
    """A file on a web server is a file, not a live stream: every frame once, in
    order, and the run ends at its end. It was read as a live stream: frames skipped,
    then at the end "stopped delivering; retrying", reopened from the first frame,
    for ever."""
    events = tmp_path / "events.jsonl"
    with serve_folder(clip.parent) as base:
        done = _run_process(settings, "--source", f"{base}/{clip.name}",
                            "--events", str(events), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stopped delivering" not in done.stderr and "is back" not in done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{CLIP_FRAMES} frames in ") and " 0 skipped," in summary, summary
    assert label_of(bundle, "Miranda") in summary
    frames = [json.loads(line)["frame"] for line in events.read_text("utf-8").splitlines()]
    assert frames == sorted(frames) and max(frames) < CLIP_FRAMES


def test_run_says_so_when_no_frame_of_a_served_file_can_be_read(
    settings: Settings, clip: Path
) -> None:
    """The clip's index is at its end: FFmpeg must seek there, which `python -m
    http.server` does not allow (no Range requests). Not one frame comes, and the run
    says so at once, and what to do, instead of reopening the URL every 5 s for ever."""
    with serve_folder(clip.parent, ranges=False) as base:
        url = f"{base}/{clip.name}"
        done = _run_process(settings, "--source", url, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"facestream: error: stream {url} cannot be decoded as an image or video: "
        "not one frame could be read from it; over HTTP, an mp4 whose index is at its "
        "end needs a server that allows seeking (Range requests), or the index moved "
        "first (`ffmpeg -i IN -c copy -movflags +faststart OUT.mp4`)"
    )


def test_run_summary_counts_in_the_singular_and_the_plural() -> None:
    assert RunSummary(1, 0.5, 0, 1).line() == (
        "1 frame in 0.5 s (2.0 fps), 0 skipped, 1 face seen, names seen: none"
    )
    assert RunSummary(2, 1.0, 1, 0, ("Ada",)).line() == (
        "2 frames in 1.0 s (2.0 fps), 1 skipped, 0 faces seen, names seen: Ada"
    )


def test_rate_meter_is_steady_when_frames_finish_in_pairs() -> None:
    meter = RateMeter()
    now, figures = 0.0, []
    for i in range(200):  # 30 frames a second, finishing in pairs 1 ms apart
        now += 0.001 if i % 2 else 0.0657
        figures.append(meter.tick(now))
    assert figures[0] == 0.0
    assert all(27.0 < fps < 33.5 for fps in figures[100:]), (min(figures[100:]), max(figures[100:]))


async def test_overlapping_frames_are_tracked_in_the_order_they_came(
    engine: Engine, shared_file: Callable[[str], Path]
) -> None:
    """The first frame is slow to detect (a big photo), the second fast (a small one):
    its tracking must still wait for the first frame's."""
    big = cv2.resize(cv2.imread(str(shared_file("media/obama.jpg"))), (4000, 3000))
    small = cv2.resize(cv2.imread(str(shared_file("media/biden.jpg"))), (320, 240))
    for _ in range(3):
        pipeline = engine.pipeline("order")
        try:
            first, second = await asyncio.gather(pipeline.process(big), pipeline.process(small))
        finally:
            pipeline.close()
        assert len(first.tracks) == 1 and len(second.tracks) == 1
        # ids are handed out as frames are tracked: the big frame's face came first
        assert first.tracks[0].track_id < second.tracks[0].track_id


def test_engine_detects_with_the_configured_back_end(settings: Settings, clip: Path) -> None:
    frame = clip_frames(clip, range(100, 101))[0]
    found = {}
    for backend in ("onnxruntime", "opencv"):
        chosen = replace(settings, detection=replace(settings.detection, backend=backend))
        with Engine.from_settings(chosen, watch=False) as engine:
            assert engine.detector.backend == backend
            found[backend] = engine.detector.detect(frame).xyxy
    assert len(found["onnxruntime"]) == len(found["opencv"]) == 1
    assert np.abs(found["onnxruntime"] - found["opencv"]).max() < 0.01
