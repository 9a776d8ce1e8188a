"""The streamer's commands: ``facestream run`` and ``facestream webcam`` (``serve`` is
registered from `streamer.serve_cli`).

Heavy modules (cv2, onnxruntime) are imported inside the handlers, as the protocol in
`facecore.cli` asks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from facecore.cli import Subparsers, add_command
from facecore.config import Settings
from streamer.serve_cli import register_serve

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from streamer.enroll.worker import EnrollmentWorker
    from streamer.live.annotate import Overlay
    from streamer.live.engine import Engine
    from streamer.live.events import EventWriter
    from streamer.live.pipeline import FrameResult, StreamPipeline
    from streamer.live.runner import RunSummary
    from streamer.live.sources import CaptureSource, SourceFrame

__all__ = ["apply_key", "register"]

log = logging.getLogger(__name__)

KEY_QUIT = (ord("q"), 27)  # q, Esc
KEY_TRACK_IDS = ord("t")
KEY_FPS = ord("f")
# Ctrl-C, and SIGTERM from systemd, `timeout` or kill: both end the run with the
# video finished and the summary printed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WINDOW_MAX = (1280, 720)  # webcam's window opens at most this size (width, height)


def register(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    run = add_command(
        subparsers["facestream"],
        "run",
        parents=parents,
        handler=_run,
        help="recognise faces in a video file, stream or camera; write the annotated video",
        description="Run the live pipeline on a video file, a network stream (RTSP/HTTP URL) "
        "or a camera (its index): find faces, follow them, name the people known from the "
        'current bundle (everyone is "unknown" when there is none) as the enrollment store '
        "has them now (someone removed or renamed since it was fitted is unknown or renamed "
        "at once), and write the annotated video and the recognition events. Ends with a "
        "one-line summary. "
        "Stop a camera, a stream or --loop with Ctrl-C (or SIGTERM).",
        epilog="examples:\n"
        "  facestream run --source clip.mp4 --output annotated.mp4\n"
        "  facestream run --source clip.mp4 --events -          # JSON lines on stdout\n"
        "  facestream run --source rtsp://cam.local/stream --events events.jsonl\n"
        "  facestream run --source 0 --output webcam.mp4",
    )
    run.add_argument(
        "--source",
        required=True,
        metavar="FILE|URL|INDEX",
        help="a video file, an rtsp:// or http(s):// URL, or a camera index",
    )
    run.add_argument("--loop", action="store_true", help="start a video file again at its end")
    run.add_argument(
        "--realtime",
        action="store_true",
        help="read a video file at its own frame rate, skipping frames the "
        "pipeline has no time for (as a camera would)",
    )
    run.add_argument("--output", metavar="FILE", help="write the annotated video here (.mp4)")
    run.add_argument(
        "--events", metavar="FILE", help="write recognition events as JSON lines here ('-': stdout)"
    )
    _pipeline_options(run)

    webcam = add_command(
        subparsers["facestream"],
        "webcam",
        parents=parents,
        handler=_webcam,
        help="show a camera with names on the faces, in a local window",
        description="Open a camera and show it in a window with a box and a name on each "
        "face. A video file plays at its own frame rate, as a camera would. Keys: q or Esc "
        "quit, t shows or hides track ids, f shows or hides the frame rate. Ends with a "
        "one-line summary.",
        epilog="examples:\n  facestream webcam\n  facestream webcam --source 1\n"
        "  facestream webcam --source clip.mp4 --loop",
    )
    webcam.add_argument(
        "--source",
        default="0",
        metavar="INDEX|FILE|URL",
        help="a camera index (default: 0), a video file, or an rtsp:// or http(s):// URL",
    )
    webcam.add_argument("--loop", action="store_true", help="start a video file again at its end")
    webcam.add_argument(
        "--events",
        metavar="FILE",
        help="also write recognition events as JSON lines here ('-': stdout)",
    )
    _pipeline_options(webcam)
    register_serve(subparsers, parents)


def _pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-tracking",
        dest="tracking.enabled",
        action="store_const",
        const=False,
        default=None,
        help="recognise every face in every frame (slow; a baseline)",
    )
    parser.add_argument(
        "--detection-size",
        dest="detection.size",
        metavar="PX",
        default=None,
        help="longest image side given to the face detector",
    )
    parser.add_argument(
        "--font",
        dest="font",
        metavar="FILE",
        default=None,
        help="TrueType font for names (default: fontconfig's sans-serif, "
        "with per-script fallbacks)",
    )
    parser.add_argument("--track-ids", action="store_true", help="show each face's track id")


def apply_key(overlay: Overlay, key: int) -> tuple[Overlay, bool]:
    """The webcam window's keys: (the overlay to use, whether to quit)."""
    if key in KEY_QUIT:
        return overlay, True
    if key == KEY_TRACK_IDS:
        return replace(overlay, track_ids=not overlay.track_ids), False
    if key == KEY_FPS:
        return replace(overlay, fps=not overlay.fps), False
    return overlay, False


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from streamer.live.annotate import Overlay
    from streamer.live.runner import check_video_output
    from streamer.live.sources import open_source

    # before anything opens: opening an output for writing empties it
    _refuse_overwriting(args.source, args.output, args.events)
    if args.output:
        check_video_output(Path(args.output))
    source = open_source(args.source, loop=args.loop, realtime=args.realtime)
    try:
        summary = _drive(
            settings, source, Overlay(track_ids=args.track_ids), args.events, args.output,
            progress=True,
        )
    finally:
        source.close()
    print(summary.line(), file=sys.stderr if args.events == "-" else sys.stdout)
    recorded = source.recorded
    if recorded and not args.loop and summary.ended and source.reached < 0.95 * recorded:
        log.warning("%s ended at %.1f s of the %.1f s its header gives: the file may be "
                    "cut short or damaged", source.description, source.reached, recorded)
    if source.finite and not args.loop and summary.signal:
        # the output plays, but holds part of the file: `run ... && next` must not go on
        # (a camera or a stream, which a signal is the way to stop, exits 0)
        log.warning("stopped by %s after %d frames: the output holds part of %s",
                    signal.Signals(summary.signal).name, summary.frames, source.description)
        return 128 + summary.signal
    return 0


def _webcam(settings: Settings, args: argparse.Namespace) -> int:
    import cv2

    from streamer.errors import OutputError
    from streamer.live.annotate import Overlay
    from streamer.live.sources import open_source

    title = "facestream"
    if sys.platform == "linux" and not os.environ.get("DISPLAY"):
        # OpenCV's Qt window would abort the process without an X display
        raise OutputError(
            "cannot open a window: there is no display (DISPLAY is not set); "
            "`facestream run --source ... --output FILE` writes the annotated video instead"
        )
    _refuse_overwriting(args.source, None, args.events)
    source = open_source(args.source, loop=args.loop, realtime=True)
    try:
        try:
            # resizable, keeping the picture's shape, without Qt's toolbar and status bar
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:
            raise OutputError(f"cannot open a window: {exc}") from exc
        summary = _drive(
            settings,
            source,
            Overlay(track_ids=args.track_ids, fps=True),
            args.events,
            None,
            window=title,
        )
    finally:
        source.close()
        cv2.destroyAllWindows()
    print(summary.line(), file=sys.stderr if args.events == "-" else sys.stdout)
    return 0


def _refuse_overwriting(source: str, output: str | None, events: str | None) -> None:
    """Raise `OutputError` when --output or --events names the source file or each
    other: writing one would truncate the other before it is read."""
    from streamer.errors import OutputError
    from streamer.live.sources import parse_source

    spec = parse_source(source)
    named = [("--source", str(spec.target))] if spec.kind == "file" else []
    named += [("--output", output)] if output else []
    named += [("--events", events)] if events and events != "-" else []
    for i, (flag, path) in enumerate(named):
        for other_flag, other in named[i + 1 :]:
            if _same_file(path, other):
                raise OutputError(
                    f"{other_flag} {other} is the same file as {flag} {path}: "
                    "refusing to overwrite it"
                )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # also sees hard links
    except OSError:  # one does not exist yet: compare the names, links resolved
        return Path(a).resolve() == Path(b).resolve()


def _drive(
    settings: Settings,
    source: CaptureSource,
    overlay: Overlay,
    events_target: str | None,
    output: str | None,
    *,
    window: str | None = None,
    progress: bool = False,
) -> RunSummary:
    from enrollment.store import store_location
    from facecore.errors import SourceError
    from streamer.enroll.worker import EnrollmentWorker
    from streamer.live.engine import Engine
    from streamer.live.events import EventWriter
    from streamer.live.sources import PIPE_FORMATS

    store = store_location(settings)
    events = EventWriter(events_target) if events_target else None
    try:
        with Engine.from_settings(settings) as engine:
            _warn_without_bundle(settings)
            # the store's people, read in the worker's thread (`streamer.enroll.people`)
            with contextlib.closing(EnrollmentWorker(store, engine.detector)) as worker:
                summary = asyncio.run(
                    _loop(engine, worker, source, overlay, events, output, window, progress)
                )
    finally:
        if events is not None:
            events.close()
    # OpenCV opens some files that are no image or video (text named .jpg) and then
    # reads nothing from them; no frame was written either, so no video was left
    if source.finite and summary.ended and summary.frames == 0:
        # an mp4 whose index comes last is read by seeking to its end
        hint = ""
        if source.spec.kind == "url":
            hint = (
                "; over HTTP, an mp4 whose index is at its end needs a server that allows "
                "seeking (Range requests), or the index moved first (`ffmpeg -i IN -c copy "
                "-movflags +faststart OUT.mp4`)"
            )
        elif source.pipe:
            hint = f"; {PIPE_FORMATS}"
        raise SourceError(
            f"{source.description} cannot be decoded as an image or video: "
            f"not one frame could be read from it{hint}"
        )
    return summary


def _warn_without_bundle(settings: Settings) -> None:
    """Say why every face will be unknown when nothing was published yet (a bundle
    that is there but cannot be loaded the engine reports itself)."""
    from facecore.publish import bundles_dir, current_bundle_dir

    folder = bundles_dir(settings)
    if current_bundle_dir(folder) is None:
        log.warning("no model bundle in %s: every face is unknown; run `facestream trainer "
                    "--once`", folder)


async def _loop(
    engine: Engine,
    worker: EnrollmentWorker,
    source: CaptureSource,
    overlay: Overlay,
    events: EventWriter | None,
    output: str | None,
    window: str | None,
    progress: bool,
) -> RunSummary:
    from tqdm import tqdm

    from streamer.enroll.people import following_people
    from streamer.live.runner import VideoFileSink, run_source

    # on a terminal only (disable=None): the summary line is what scripts read
    bar = tqdm(total=source.length, unit="frame", file=sys.stderr, leave=False,
               disable=None if progress else True, desc=source.description)
    pipeline = engine.pipeline(source.description, overlay=overlay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopped_by: list[int] = []

    def interrupt(signum: int) -> None:
        stopped_by.append(signum)
        stop.set()
        source.close()  # wakes a read that waits for a camera to come back

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, interrupt, signum)
    sinks: list[VideoFileSink] = []
    window_sized = False

    def on_result(frame: SourceFrame, result: FrameResult, done: float) -> None:
        nonlocal window_sized
        bar.update()
        if events is not None:
            events.write(result.events)
        if output is not None:
            if not sinks:
                height, width = result.frame.shape[:2]
                sinks.append(
                    VideoFileSink(Path(output), source.pace or source.fps or 30.0, (width, height))
                )
            sinks[0].write(result.frame)
        if window is not None:
            if not window_sized:  # the window opens small: give it the picture's size
                _fit_window(window, result.frame)
                window_sized = True
            _show(window, result.frame, pipeline, stop)

    try:
        # names as the store has its people now, read before the first frame is named:
        # a file run at full speed would otherwise name an erased person in its first
        # frames (a Ctrl-C during that read ends the run before its first frame)
        async with following_people(engine, worker):
            summary = await run_source(source, pipeline, on_result, stop=stop)
        return replace(summary, signal=stopped_by[0]) if stopped_by else summary
    finally:
        bar.close()
        source.close()  # before the loop ends: its executor waits for a pending read
        pipeline.close()
        for sink in sinks:
            sink.close()
        # only now: a second signal while the video is being finished changes nothing
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _fit_window(window: str, frame: NDArray[np.uint8]) -> None:
    """The picture's size, or its shape within ``WINDOW_MAX`` (a 1080p or 4K camera's
    picture is larger than many screens; the window can be made larger by hand)."""
    import cv2

    height, width = frame.shape[:2]
    scale = min(1.0, WINDOW_MAX[0] / width, WINDOW_MAX[1] / height)
    cv2.resizeWindow(window, round(width * scale), round(height * scale))


def _show(
    window: str, frame: NDArray[np.uint8], pipeline: StreamPipeline, stop: asyncio.Event
) -> None:
    import cv2

    cv2.imshow(window, frame)
    pipeline.overlay, quit_now = apply_key(pipeline.overlay, cv2.waitKey(1) & 0xFF)
    if quit_now or cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
        stop.set()
