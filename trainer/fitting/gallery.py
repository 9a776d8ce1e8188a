"""The simplest bundle: one mean embedding (prototype) per person, one threshold.

``build_folder_bundle`` makes it from a folder with one sub-folder of photos per
person (``../shared/people`` style) and publishes it; the trainer service uses
``prototypes`` as the baseline its fitted head has to beat.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from enrollment.names import folder_person_name
from facecore.bundle import Bundle, BundleManifest, write_bundle
from facecore.config import Settings
from facecore.detector import Detector
from facecore.publish import publish
from trainer.backbone import Backbone

__all__ = ["DEFAULT_THRESHOLD", "build_folder_bundle", "prototypes"]

log = logging.getLogger(__name__)

# Cosine similarity of unit dlib-ResNet embeddings at or above which a face is taken
# as a known person. dlib's own rule, Euclidean distance 0.6 between raw descriptors
# whose norms are about 1.4, is 1 - (0.6 / 1.4) ** 2 / 2 = 0.91; on the shared photos
# the same person scores 0.94 or more and different people 0.90 or less.
DEFAULT_THRESHOLD = 0.91
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff"}


def prototypes(
    embeddings: NDArray[np.float32], labels: Sequence[str]
) -> tuple[tuple[str, ...], NDArray[np.float32]]:
    """One unit-length mean embedding per distinct label, in first-seen order:
    (names (K,), weights [K, D])."""
    names = tuple(dict.fromkeys(labels))
    label_array = np.asarray(labels)
    weights = np.stack([embeddings[label_array == name].mean(axis=0) for name in names])
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return names, weights.astype(np.float32)


def build_folder_bundle(
    folder: Path, bundles_dir: Path, settings: Settings, threshold: float = DEFAULT_THRESHOLD
) -> Bundle:
    """Embed the largest face of every photo under ``folder/<person>/`` and publish
    a prototype bundle into ``bundles_dir``. Photos without a face are skipped
    with a log line; a person with no usable photo is left out."""
    detector = Detector.from_settings(settings, min_face_px=0)
    backbone = Backbone.from_settings(settings)
    vectors: list[NDArray[np.float32]] = []
    labels: list[str] = []
    for person_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        for photo in sorted(p for p in person_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
            faces = detector.detect(image) if image is not None else None
            if faces is None or len(faces) == 0:
                log.warning("%s: no face found, skipped", photo)
                continue
            vectors.append(backbone.embed_faces(image, faces.largest().landmarks)[0])
            labels.append(folder_person_name(person_dir.name))
    if not vectors:
        raise ValueError(f"no face found in any photo under {folder}")
    names, weights = prototypes(np.stack(vectors), labels)

    def build(directory: Path, version: int) -> Bundle:
        manifest = BundleManifest(
            version=version,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            store_revision=0,
            backbone_name=backbone.name,
            backbone_sha256=backbone.sha256,
            preprocessing=backbone.embedder.preprocessing,
            template=tuple((float(x), float(y)) for x, y in backbone.template),
            front_end=backbone.front_end.kind,
            head_kind="prototypes",
            head_sha256="",
            labels=names,
            person_ids=("",) * len(names),
            threshold=threshold,
        )
        return write_bundle(
            directory,
            backbone=backbone.path,
            backbone_sha256=backbone.sha256,
            weights=weights,
            manifest=manifest,
            landmarks=backbone.front_end.predictor_path,
            landmarks_sha256=backbone.front_end.predictor_sha256 or None,
        )

    return publish(bundles_dir, build, keep=settings.trainer.keep_versions)
