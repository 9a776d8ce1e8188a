"""The simplest head: one mean embedding (prototype) per person, the baseline the
trainer's fitted head has to beat.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_THRESHOLD", "LOOK_ALIKE", "look_alike_pairs", "prototypes"]

log = logging.getLogger(__name__)

# The threshold when there is nothing to calibrate on: a model without a population
# calibration (`facecore.calibration`) and a gallery without a single impostor score
# (one person); the log and the manifest say so. dlib's own rule, Euclidean distance
# 0.6 between raw descriptors whose norms are about 1.4, is 1 - (0.6 / 1.4) ** 2 / 2
# = 0.91.
DEFAULT_THRESHOLD = 0.91
# Two photos of different people scoring this much are most likely of one person: a
# photo filed under two names, or a person enrolled twice. Photos of one person taken
# moments apart score up to 0.998 (ORL); different people in the labelled sets at
# most 0.949.
LOOK_ALIKE = 0.99
LOOK_ALIKE_BLOCK = 1024  # rows scored at a time, so that memory stays O(N)
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


def look_alike_pairs(
    embeddings: NDArray[np.float32], labels: NDArray[np.intp], limit: int = 5
) -> list[tuple[int, int, float]]:
    """Up to ``limit`` pairs of samples (i, j, score) of different people whose unit
    ``embeddings`` [N, D] score at least ``LOOK_ALIKE``, highest first; ``labels`` [N]
    are their people."""
    found: list[tuple[int, int, float]] = []
    for start in range(0, len(embeddings), LOOK_ALIKE_BLOCK):
        block = embeddings[start : start + LOOK_ALIKE_BLOCK] @ embeddings.T
        rows, columns = np.nonzero(block >= LOOK_ALIKE)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            i = start + row
            if i < column and labels[i] != labels[column]:
                found.append((i, column, float(block[row, column])))
    return sorted(found, key=lambda pair: -pair[2])[:limit]
