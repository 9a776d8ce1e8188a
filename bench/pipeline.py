"""Live pipeline speed: the shared clip end to end, with tracking and without.

For each frame size (the clip itself at 640x360, else re-encoded to that size in a
temporary file; decoding is part of the cost) and each tracking mode, two feeds:

* ``max``: the file read as fast as the pipeline takes it (lossless): frames per
  second end to end, decoding to annotated frame;
* ``paced``: the file read at ``--rate`` frames per second, newest frame wins (as a
  camera): per-frame latency from the frame's arrival to its annotated result,
  p50 and p99, and how many frames were skipped.

Recognition uses the bundle ``enroll import ../shared/people`` and ``trainer --once``
make, in a temporary state folder; "named" is the share of face detections that carried
a name, and the names seen. Tracking off recognises every face in every frame (the
baseline). All rows come from one run; the load average says how busy the machine was.

    FACESTREAM_SHARED=../shared python bench/pipeline.py --size 640x360 --size 1280x720
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from machine import cpu_description, enroll_and_train, prepare_models, shared_dir

from facecore.bundle import load_bundle
from facecore.config import Settings, load_settings
from facecore.publish import current_bundle_dir
from streamer.live.engine import Engine
from streamer.live.pipeline import FrameResult
from streamer.live.runner import run_source
from streamer.live.sources import CaptureSource, SourceFrame, parse_source

STAGES = ("detect", "recognize", "annotate", "total")


@dataclass
class Row:
    size: str
    detector: str
    tracking: bool
    feed: str
    frames: int = 0
    seconds: float = 0.0
    dropped: int = 0
    faces: int = 0
    named: int = 0
    names: set[str] = field(default_factory=set)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    latency_ms: list[float] = field(default_factory=list)
    recognitions: int = 0
    cpu_ours: float = 0.0  # share of all cores this process used during the run
    cpu_all: float = 0.0  # share of all cores busy (any process) during the run
    best_fps: float = 0.0  # the best of the runs (this row is the median one)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def markdown(self) -> str:
        stages = " | ".join(f"{np.mean(self.stage_ms[s]):.1f}" for s in STAGES)
        p50, p99 = np.percentile(self.latency_ms, [50, 99])
        share = self.named / self.faces if self.faces else 0.0
        names = ", ".join(sorted(self.names)) or "none"
        return (
            f"| {self.size} | {self.detector} | {'on' if self.tracking else 'off'} | {self.feed} "
            f"| {self.frames} "
            f"| {self.fps:.1f} | {self.best_fps:.1f} | {stages} | {p50:.1f} | {p99:.1f} "
            f"| {self.dropped} | {self.recognitions} | {share:.0%} ({names}) "
            f"| {self.cpu_ours:.0%} / {self.cpu_all:.0%} |"
        )


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)



def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


def _video(clip: Path, size: tuple[int, int], repeat: int, into: Path) -> Path:
    """The clip itself at its own size, else re-encoded (MPEG-4) at ``size``,
    ``repeat`` times over."""
    capture = cv2.VideoCapture(str(clip))
    native = (
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    if native == size and repeat == 1:
        capture.release()
        return clip
    path = into / f"clip-{size[0]}x{size[1]}.mp4"
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame if frame.shape[1::-1] == size else cv2.resize(frame, size))
    capture.release()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    for _ in range(repeat):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return path


def _settings(
    args: argparse.Namespace, state: Path, tracking: bool, detector: str = "onnxruntime"
) -> Settings:
    cli = {
        "state_dir": str(state),
        "models_dir": str(args.shared / "models"),
        "tracking.enabled": tracking,
        "recognition.device": args.device,
        "detection.device": args.device,
        "detection.backend": detector,
    }
    if args.cache_dir is not None:
        cli["cache_dir"] = str(args.cache_dir)
    return load_settings(cli, {})


async def _measure(engine: Engine, video: Path, row: Row, rate: float | None) -> None:
    spec = parse_source(str(video))
    warm = engine.pipeline("warm-up")
    source = CaptureSource(spec)
    for _ in range(8):
        frame = source.read()
        if frame is not None:
            await warm.process(frame.image)
    source.close()
    warm.close()
    faces_before = engine.recognizer.faces

    def collect(frame: SourceFrame, result: FrameResult, done: float) -> None:
        row.latency_ms.append((done - frame.captured) * 1000.0)
        for stage in STAGES:
            row.stage_ms[stage].append(result.timings_ms[stage])
        row.faces += len(result.tracks)
        for view in result.tracks:
            if view.name is not None:
                row.named += 1
                row.names.add(view.name)

    source = CaptureSource(spec, pace=rate) if rate else CaptureSource(spec)
    pipeline = engine.pipeline(f"{row.size} {row.feed}")
    busy, total = _busy_jiffies()
    ours = time.process_time()
    try:
        summary = await run_source(source, pipeline, collect)
    finally:
        source.close()
        pipeline.close()
    busy_after, total_after = _busy_jiffies()
    cores = os.cpu_count() or 1
    row.cpu_ours = (time.process_time() - ours) / (summary.seconds * cores)
    row.cpu_all = (busy_after - busy) / max(total_after - total, 1)
    row.frames, row.seconds, row.dropped = summary.frames, summary.seconds, summary.dropped
    row.recognitions = engine.recognizer.faces - faces_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=_size,
        action="append",
        metavar="WxH",
        help="frame size (repeatable; default 640x360 and 1280x720)",
    )
    parser.add_argument("--rate", type=float, default=30.0, help="paced feed, frames/s")
    parser.add_argument(
        "--no-tracking",
        dest="modes",
        action="store_const",
        const=(False,),
        default=(True, False),
        help="only the baseline (recognise every face)",
    )
    parser.add_argument(
        "--tracking-only",
        dest="modes",
        action="store_const",
        const=(True,),
        help="only the rows with tracking",
    )
    parser.add_argument("--repeat", type=int, default=1, help="clip passes per run")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per row; the row shows the median-fps run"
    )
    parser.add_argument(
        "--detector",
        type=lambda text: text.split(","),
        default=["onnxruntime"],
        help="detection back-ends to compare, e.g. onnxruntime,opencv (default: onnxruntime)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--cache-dir", type=Path, help="where the converted ONNX is kept")
    parser.add_argument("--shared", type=Path, default=shared_dir(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.size or [(640, 360), (1280, 720)]

    with tempfile.TemporaryDirectory(prefix="facestream-bench-") as temp:
        root = Path(temp)
        settings = _settings(args, root / "state", True)
        prepare_models(settings)
        enroll_and_train(settings, args.shared / "people")
        bundle = load_bundle(current_bundle_dir(settings.state_dir / "bundles") or Path())
        clip = args.shared / "media" / "short_hamilton_clip.mp4"
        load_before = os.getloadavg()
        rows = []
        for size in sizes:
            video = _video(clip, size, args.repeat, root)
            for detector, tracking in itertools.product(args.detector, args.modes):
                with Engine.from_settings(
                    _settings(args, settings.state_dir, tracking, detector), watch=False
                ) as engine:
                    for feed, rate in (("max", None), (f"paced {args.rate:g}/s", args.rate)):
                        runs = []
                        for _ in range(args.runs):
                            runs.append(Row(f"{size[0]}x{size[1]}", detector, tracking, feed))
                            asyncio.run(_measure(engine, video, runs[-1], rate))
                        runs.sort(key=lambda r: r.fps)
                        row = runs[len(runs) // 2]
                        row.best_fps = runs[-1].fps
                        rows.append(row)
                        print(
                            f"measured {row.size} {detector} tracking "
                            f"{'on' if tracking else 'off'} {feed}",
                            file=sys.stderr,
                        )
        load_after = os.getloadavg()

    print(
        f"machine: {cpu_description()}; {platform.system()} {platform.release()}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    print(
        f"python {platform.python_version()}, onnxruntime {ort.__version__} "
        f"({args.device}), opencv {cv2.__version__}; bundle: {len(bundle.manifest.labels)} people, "
        f"threshold {bundle.manifest.threshold}; clip x{args.repeat} per run; each row is the "
        f"median of {args.runs} runs by fps; CPU: this process / all processes, share of all "
        "cores during the run\n"
    )
    print(
        "| size | detector | tracking | feed | frames | fps | best fps | detect ms | recognize ms "
        "| annotate ms | total ms | latency p50 ms | latency p99 ms | skipped | faces embedded "
        "| named | CPU |"
    )
    print("| --- | --- | --- | --- |" + " ---: |" * 11 + " --- | ---: |")
    for row in rows:
        print(row.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
