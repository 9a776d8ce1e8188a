"""What every benchmark script needs to say where it ran and find the shared data.

The scripts run as files (``python bench/pipeline.py``), so this module is imported
from their own folder.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from facecore.cpus import usable_cpus

__all__ = ["cpu_description", "shared_dir"]

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
