"""What the benchmark scripts share: where they ran, the shared data, real face
chips cut from it, and a median timer.

The scripts run as files (``python bench/pipeline.py``), so this module is imported
from their own folder.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.config import Settings
from facecore.cpus import usable_cpus
from facecore.detector import Detector
from facecore.frontend import FrontEnd
from facecore.registry import MODELS

__all__ = [
    "cpu_description",
    "enroll_and_train",
    "face_chips",
    "median_seconds",
    "prepare_models",
    "shared_dir",
]

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``FACESTREAM_SHARED``, or ``../shared`` beside the repository."""
    return Path(os.environ.get("FACESTREAM_SHARED") or REPO.parent / "shared")


def cpu_description() -> str:
    """The processor model and how many CPUs this process may use."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    info = dict(line.split(":", 1) for line in lines.splitlines() if ":" in line)
    model = info.get("Model name", "?").strip()
    return f"{model}, {info.get('CPU(s)', '?').strip()} CPUs ({usable_cpus()} usable)"


def prepare_models(settings: Settings) -> None:
    """``facestream models prepare`` into the settings' cache and models folders: the
    dlib ResNet and its landmark model converted (once per cache), YuNet found. What
    it prints goes to stderr: a script's stdout is its table (or a child's channel)."""
    from facestream.cli import main

    folders = ["--cache-dir", str(settings.cache_dir), "--models-dir", str(settings.models_dir)]
    with contextlib.redirect_stdout(sys.stderr):
        status = main(["models", "prepare", *folders])
    if status != 0:
        raise SystemExit("facestream models prepare failed")


def enroll_and_train(settings: Settings, folder: Path) -> None:
    """What ``facestream enroll import FOLDER`` then ``facestream trainer --once`` do:
    the benchmarks serve the bundle a user of these people gets."""
    from enrollment.ingest import import_folder
    from enrollment.store import EnrollmentStore
    from facecore.detector import Detector
    from trainer.service import TrainerService

    with EnrollmentStore.from_settings(settings) as store:
        import_folder(store, Detector.from_settings(settings, min_face_px=0), folder, False)
    with TrainerService(settings, progress=False) as trainer:
        trainer.run_once()


def face_chips(shared: Path, detector: Detector, landmarks: Path) -> NDArray[np.uint8]:
    """[N, 150, 150, 3] uint8: the faces of a few shared photos, cut as the dlib
    ResNet's front end cuts them (``landmarks``: its 5-point model's ``.npz``)."""
    spec = MODELS["dlib_resnet_v1"]
    assert spec.template is not None and spec.input_size is not None
    front_end = FrontEnd.load(spec.landmarks, spec.template, spec.input_size, landmarks)
    chips = []
    for name in ("obama.jpg", "biden.jpg", "two_people.jpg", "lin-manuel-miranda.png"):
        image = cv2.imread(str(shared / "media" / name))
        chips.append(front_end.chips(image, detector.detect(image).landmarks))
    return np.concatenate(chips)


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``work``, after 3 untimed ones
    (cuDNN's algorithm search, lazy allocations, connections)."""
    for _ in range(3):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
