"""What every benchmark script needs to say where it ran and find the shared data.

The scripts run as files (``python bench/pipeline.py``), so this module is imported
from their own folder.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from facecore.config import Settings
from facecore.cpus import usable_cpus

__all__ = ["cpu_description", "enroll_and_train", "shared_dir"]

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
