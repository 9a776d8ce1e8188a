"""The simplest head: one mean embedding (prototype) per person, the baseline the
trainer's fitted head has to beat.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_THRESHOLD", "prototypes"]

log = logging.getLogger(__name__)

# The threshold when there is nothing to calibrate on: a model without a population
# calibration (`facecore.calibration`) and a gallery without a single impostor score
# (one person); the log and the manifest say so. dlib's own rule, Euclidean distance
# 0.6 between raw descriptors whose norms are about 1.4, is 1 - (0.6 / 1.4) ** 2 / 2
# = 0.91.
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
