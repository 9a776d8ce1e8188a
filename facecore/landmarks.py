"""dlib's 5-point shape predictor in numpy: the landmarks dlib's ResNet chips are cut from.

The predictor (Kazemi and Sullivan's ensemble of regression trees, as dlib's
``shape_predictor`` runs it) starts from a mean shape placed in the face rectangle
and refines it in cascade levels. At each level it reads the grey level of a fixed
set of pixels, each anchored to a point of the current shape (so the pixels move
with the face), and every tree of the level adds the offset stored in the leaf its
pixel comparisons lead to. `ShapePredictor.predict` does that for all faces and all
trees of a level at once.

The model comes from ``shape_predictor_5_face_landmarks.dat``, converted once to an
``.npz`` by ``facestream models prepare`` (`trainer.dlib.landmarks`); this module only
reads the ``.npz``. Arrays in it (C levels, T trees of S splits and S + 1 leaves
each, F feature pixels a level, P shape points):

    initial_shape [P, 2]        float32, the mean shape, rectangle-normalised (0..1)
    anchor        [C, F]        int32, the shape point each feature pixel follows
    deltas        [C, F, 2]     float32, its offset from that point in the mean shape
    split_pixels  [C, T, S, 2]  int32, the two feature pixels a split compares
    split_thresh  [C, T, S]     float32, left child when pixel1 - pixel2 > thresh
    leaf_values   [C, T, S+1, P, 2]  float32, the shape offset of each leaf

dlib's 5 points: the image-left eye's outer and inner corner, the image-right eye's
outer and inner corner, the base of the nose. `landmark_box` gives the rectangle the
predictor wants from YuNet's landmarks (see its docstring for how it was measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.errors import ModelLoadError

__all__ = ["LANDMARK_BOX", "ShapePredictor", "landmark_box", "landmark_box_from"]

_ARRAYS = ("initial_shape", "anchor", "deltas", "split_pixels", "split_thresh", "leaf_values")

# The rectangle dlib's HOG detector would give, from YuNet's 5 landmarks: the landmarks
# are similarity-fitted onto ``LANDMARK_BOX_REFERENCE`` (the dlib_resnet_v1 template,
# 150x150 chip pixels), and the box is the axis-aligned square of side ``side`` centred
# on ``centre`` in that frame, mapped back to the image. ``centre`` and ``side`` are the
# medians over 491 faces of lfw10 and orl that both YuNet and dlib's HOG detector
# (upsampled once) found, of dlib's box mapped into that frame
# (``bench/front_end.py --derive-box``, docs/alignment.md).
LANDMARK_BOX = {"centre": (71.33, 71.15), "side": 126.08}
LANDMARK_BOX_REFERENCE: tuple[tuple[float, float], ...] = (
    (45.38, 46.51),
    (100.12, 45.48),
    (72.12, 77.06),
    (51.47, 100.57),
    (98.29, 99.71),
)


@dataclass(frozen=True, eq=False)
class ShapePredictor:
    """A loaded predictor (arrays as the module docstring lists them)."""

    initial_shape: NDArray[np.float32]
    anchor: NDArray[np.int32]
    deltas: NDArray[np.float32]
    split_pixels: NDArray[np.int32]
    split_thresh: NDArray[np.float32]
    leaf_values: NDArray[np.float32]

    @classmethod
    def load(cls, path: Path) -> ShapePredictor:
        """The predictor in the ``.npz`` at ``path``; ModelLoadError when it is not one."""
        try:
            with np.load(path) as data:
                arrays = {name: np.ascontiguousarray(data[name]) for name in _ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot read the landmark model {path}: {exc}") from exc
        predictor = cls(**arrays)
        levels, trees, splits = predictor.split_thresh.shape
        if (
            predictor.leaf_values.shape[:3] != (levels, trees, splits + 1)
            or (splits + 1) & splits
            or predictor.split_pixels.shape != (levels, trees, splits, 2)
            or predictor.anchor.shape[0] != levels
        ):
            raise ModelLoadError(f"the landmark model {path} has inconsistent array shapes")
        return predictor

    @property
    def depth(self) -> int:
        return int(self.split_thresh.shape[2] + 1).bit_length() - 1

    def predict(self, image: NDArray[np.uint8], rects: NDArray[np.floating]) -> NDArray[np.float64]:
        """Points [N, P, 2] in image pixels for face rectangles [N, 4] (left, top,
        right, bottom, dlib's convention: the predictor maps (0, 0) to the top-left
        and (1, 1) to (right, bottom)) in a BGR [H, W, 3] or grey [H, W] image."""
        rects = np.asarray(rects, np.float64).reshape(-1, 4)
        origin = rects[:, None, :2]
        extent = rects[:, None, 2:] - origin
        height, width = image.shape[:2]
        faces = len(rects)
        shape = np.repeat(self.initial_shape[None], faces, axis=0)  # [N, P, 2]
        trees = np.arange(self.split_thresh.shape[1])
        rows = np.arange(faces)[:, None, None]
        for level in range(len(self.anchor)):
            linear = _similarity_linear(self.initial_shape, shape)  # [N, 2, 2]
            moved = np.einsum("nij,fj->nfi", linear, self.deltas[level])
            points = moved + shape[:, self.anchor[level]]  # [N, F, 2] float32, like dlib
            at = np.floor(points * extent + origin + 0.5).astype(np.int64)
            x, y = at[..., 0], at[..., 1]
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            sampled = image[np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)]
            if image.ndim == 3:
                sampled = _intensity(sampled)
            values = np.where(inside, sampled, 0).astype(np.float32)  # [N, F]
            node = np.zeros((faces, len(trees)), np.int64)
            pairs, thresh = self.split_pixels[level], self.split_thresh[level]
            for _ in range(self.depth):
                compared = values[rows, pairs[trees, node]]  # [N, T, 2]
                node = 2 * node + np.where(
                    compared[..., 0] - compared[..., 1] > thresh[trees, node], 1, 2
                )
            leaves = node - thresh.shape[1]
            # tree by tree in float32, as dlib adds them: the sum's rounding decides
            # which pixel the next level reads when a point falls near a pixel edge
            steps = np.concatenate([shape[:, None], self.leaf_values[level][trees, leaves]], 1)
            shape = np.cumsum(steps, axis=1, dtype=np.float32)[:, -1]
        return shape.astype(np.float64) * extent + origin


def _similarity_linear(
    source: NDArray[np.float32], target: NDArray[np.float32]
) -> NDArray[np.float32]:
    """The 2x2 part [N, 2, 2] of the least-squares similarity taking ``source`` [P, 2]
    onto each of ``target`` [N, P, 2] (rotation and scale; reflection cannot occur
    between two face shapes)."""
    src = np.asarray(source, np.float64)
    dst = np.asarray(target, np.float64)
    src = src - src.mean(axis=0)
    dst = dst - dst.mean(axis=1, keepdims=True)
    norm = float((src**2).sum())
    a = (src[None, :, 0] * dst[..., 0] + src[None, :, 1] * dst[..., 1]).sum(axis=1) / norm
    b = (src[None, :, 0] * dst[..., 1] - src[None, :, 1] * dst[..., 0]).sum(axis=1) / norm
    return np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], 1).astype(np.float32)


def _intensity(pixels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """dlib's pixel intensity of colour pixels [..., 3]: the integer mean of the channels."""
    return (pixels.astype(np.uint16).sum(axis=-1) // 3).astype(np.uint8)


def landmark_box_from(
    landmarks: NDArray[np.floating],
    reference: NDArray[np.floating],
    centre: tuple[float, float],
    side: float,
) -> NDArray[np.float64]:
    """Axis-aligned squares [N, 4] (left, top, right, bottom) for YuNet landmarks
    [N, 5, 2]: centre and side given in the frame of ``reference`` [5, 2] (see
    `LANDMARK_BOX`)."""
    landmarks = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    reference = np.asarray(reference, np.float32)
    linear = _similarity_linear(reference, landmarks.astype(np.float32)).astype(np.float64)
    offset = np.asarray(centre, np.float64) - reference.mean(axis=0)
    middle = landmarks.mean(axis=1) + np.einsum("nij,j->ni", linear, offset)
    half = side * np.hypot(linear[:, 0, 0], linear[:, 1, 0])[:, None] / 2.0
    return np.concatenate([middle - half, middle + half], axis=1)


def landmark_box(landmarks: NDArray[np.floating]) -> NDArray[np.float64]:
    """`landmark_box_from` with the measured `LANDMARK_BOX` constants."""
    return landmark_box_from(
        landmarks,
        np.asarray(LANDMARK_BOX_REFERENCE),
        LANDMARK_BOX["centre"],
        float(LANDMARK_BOX["side"]),
    )
