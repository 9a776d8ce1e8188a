"""Helpers for the live pipeline tests: real settings (YuNet from the shared models,
the dlib ResNet converted into a cache folder), bundles of the shared people, and
frames of the shared clip.

Not a test module (pytest collects only ``test_*.py``); the test files import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.bundle import Bundle
from facecore.config import Settings, load_settings
from facecore.registry import MODELS, model_cache_dir, model_path

CLIP = "media/short_hamilton_clip.mp4"
CLIP_FRAMES = 275
# the clip's shots (cuts after frames 19, 81 and 210)
WIDE_STAGE = range(0, 20)  # Lin-Manuel Miranda small on stage, Alex Lacamoire at the piano
STAGE = range(82, 211)  # close-ups of Lin-Manuel Miranda singing: one face
AUDIENCE = range(211, 275)  # Barack and Michelle Obama among the audience


def live_settings(shared_dir: Path, state_dir: Path, cache_dir: Path, **keys: object) -> Settings:
    """Settings that find YuNet in the shared models folder and the dlib ResNet
    converted (once per ``cache_dir``) into ``cache_dir``; ``keys`` are dotted
    settings (``{"tracking.enabled": False}`` as ``**{...}``)."""
    from trainer.onnx_export import prepare_dlib_resnet

    cli: dict[str, object] = {
        "state_dir": str(state_dir),
        "cache_dir": str(cache_dir),
        "models_dir": str(shared_dir / "models"),
        **keys,
    }
    settings = load_settings(cli, {})
    if not (model_cache_dir(settings) / MODELS["dlib_resnet_v1"].filename).is_file():
        source = model_path(settings, "dlib_resnet_v1_dat", download=False)
        prepare_dlib_resnet(source, model_cache_dir(settings))
    return settings


def people_folder(shared_dir: Path, into: Path, people: Iterable[str]) -> Path:
    """A folder of the chosen shared people (``"barack_obama"``...), as symlinks."""
    into.mkdir(parents=True)
    for person in people:
        (into / person).symlink_to(shared_dir / "people" / person, target_is_directory=True)
    return into


def publish_people(settings: Settings, folder: Path) -> Bundle:
    """Build and publish the one-prototype-per-person bundle of ``folder`` into
    ``state_dir/bundles``."""
    from trainer.gallery import build_folder_bundle

    return build_folder_bundle(folder, settings.state_dir / "bundles", settings)


def label_of(bundle: Bundle, surname: str) -> str:
    """The bundle's display name of the person whose name ends with ``surname``."""
    (label,) = [name for name in bundle.manifest.labels if name.endswith(surname)]
    return label


def clip_frames(clip: Path, frames: range) -> list[NDArray[np.uint8]]:
    """The BGR frames ``frames`` of a video file."""
    capture = cv2.VideoCapture(str(clip))
    kept = []
    for index in range(frames.stop):
        ok, frame = capture.read()
        assert ok, f"{clip} has no frame {index}"
        if index in frames:
            kept.append(frame)
    capture.release()
    return kept
