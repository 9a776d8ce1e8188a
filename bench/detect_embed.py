"""Face-core speed on this machine's CPU: YuNet per frame, the embedder per face, and
dlib-bin's own descriptor for scale, all in one run. Prints a markdown table.

* YuNet: clip frames scaled to 640x360, 640x480 and 1280x720, detected at full size,
  through each back-end (ONNX Runtime on one thread; OpenCV with its own threads):
  wall time, and the CPU time of all threads per frame;
* embedder: the dlib ResNet ONNX export (converted into the cache if needed) on
  ONNX Runtime's CPU provider with 2 intra-op threads, batches of 1, 8 and 32 real
  face chips; ms per face = ms per batch / batch size;
* dlib-bin: ``compute_face_descriptor`` on the same chips, one per call.

Each figure is given as the median and the best of several timed repeats after a
warm-up; the load average printed with them says how busy the machine was.

    FACESTREAM_SHARED=../shared python bench/detect_embed.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from machine import cpu_description, shared_dir
from numpy.typing import NDArray

from facecore.config import load_settings
from facecore.detector import Detector
from facecore.embedder import Embedder, Preprocessing
from facecore.frontend import FrontEnd
from facecore.registry import DETECTOR, MODELS, model_cache_dir, model_path
from trainer.dlib.export import prepare_dlib_resnet
from trainer.dlib.landmarks import prepare_landmark_model
from trainer.dlib.reference import DlibPipeline

THREADS = 2
FRAMES = 30  # clip frames timed per resolution
REPEATS = 7


def _time_ms(
    work: Callable[[], object],
    repeats: int = REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> NDArray[np.float64]:
    """(median, best) milliseconds of ``work`` over ``repeats`` runs after a warm-up,
    by ``clock`` (wall time, or ``time.process_time`` for the CPU time of all this
    process's threads). The best run shows the machine undisturbed; on a shared
    machine the median can be several times slower."""
    work()  # warm-up: lazy allocations, first-run kernel selection
    times = []
    for _ in range(repeats):
        start = clock()
        work()
        times.append(clock() - start)
    return 1000 * np.array([statistics.median(times), min(times)])


def _detect_all(detector: Detector, frames: list[NDArray[np.uint8]]) -> None:
    for frame in frames:
        detector.detect(frame)


def _frames(shared: Path) -> list[NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(shared / "media" / "short_hamilton_clip.mp4"))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, FRAMES).astype(int).tolist())
    frames = []
    for index in range(total):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(frame)
    capture.release()
    return frames


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    shared = shared_dir()
    settings = load_settings({}, {"FACESTREAM_MODELS_DIR": str(shared / "models"), **os.environ})
    yunet = model_path(settings, DETECTOR)
    frames = _frames(shared)
    rows: list[tuple[str, str, NDArray[np.float64]]] = []

    for (width, height), backend in itertools.product(
        ((640, 360), (640, 480), (1280, 720)), ("onnxruntime", "opencv")
    ):
        detector = Detector(yunet, size=width, backend=backend, device="cpu")
        scaled = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
        for clock, unit in (
            (time.perf_counter, "ms / frame"),
            (time.process_time, "CPU ms / frame"),
        ):
            work = partial(_detect_all, detector, scaled)
            ms = _time_ms(work, clock=clock) / len(scaled)
            rows.append((f"YuNet detection ({backend}), {width}x{height} frame", unit, ms))

    spec = MODELS["dlib_resnet_v1"]
    source = model_path(settings, "dlib_resnet_v1_dat")
    onnx = prepare_dlib_resnet(source, model_cache_dir(settings))
    prepare_landmark_model(settings)
    embedder = Embedder.load(onnx, Preprocessing.of_model(spec), device="cpu", threads=THREADS)
    front_end = FrontEnd.for_model(settings, spec)
    chips = []
    detector = Detector(yunet)
    for name in ("obama.jpg", "biden.jpg", "two_people.jpg", "lin-manuel-miranda.png"):
        image = cv2.imread(str(shared / "media" / name))
        chips.append(front_end.chips(image, detector.detect(image).landmarks))
    pool = np.concatenate(chips)
    for batch in (1, 8, 32):
        chips_batch = pool[np.arange(batch) % len(pool)]
        ms = _time_ms(lambda c=chips_batch: embedder.embed(c)) / batch
        rows.append((f"embedder (dlib ResNet ONNX), batch {batch}", "ms / face", ms))

    dlib = DlibPipeline.from_settings(settings)
    ms = _time_ms(lambda: [dlib.describe_chips(pool[i : i + 1]) for i in range(len(pool))])
    rows.append(("dlib-bin compute_face_descriptor, one chip a call", "ms / face", ms / len(pool)))

    import dlib as dlib_module  # the reference pipeline loaded it already

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    system = f"{platform.system()} {platform.release()}"
    print(f"machine: {cpu_description()}; {system}; load average {load}")
    print(
        f"python {platform.python_version()}, onnxruntime {ort.__version__} (CPU provider, "
        f"{THREADS} intra-op threads), opencv {cv2.__version__} ({cv2.getNumThreads()} threads), "
        f"dlib {dlib_module.__version__}; {REPEATS} timed runs after a warm-up\n"
    )
    print("| what | unit | median | best |\n| --- | --- | ---: | ---: |")
    for what, unit, (median, best) in rows:
        print(f"| {what} | {unit} | {median:.1f} | {best:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
