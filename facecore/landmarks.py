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
        """Points [N, P, 2] in whole image pixels, as dlib gives them, for face
        rectangles [N, 4] (left, top, right, bottom, dlib's convention: the predictor
        maps (0, 0) to the top-left and (1, 1) to (right, bottom)) in a BGR
        [H, W, 3] or grey [H, W] image."""
        rects = np.asarray(rects, np.float64).reshape(-1, 4)
        origin = rects[:, None, :2]
        extent = rects[:, None, 2:] - origin
        height, width = image.shape[:2]
        faces = len(rects)
        shape = np.repeat(self.initial_shape[None], faces, axis=0)  # [N, P, 2]
        levels, trees, splits = self.split_thresh.shape
        points_per_shape = self.leaf_values.shape[3] * 2
        first_split = np.arange(trees) * splits  # each tree's root in the flat arrays
        first_leaf = np.arange(trees) * (splits + 1)
        face_row = np.arange(faces)[:, None] * self.anchor.shape[1]
        pixels = image.reshape(height * width, -1)
        mean_shape = self.initial_shape.astype(np.float64)
        mean_shape -= mean_shape.mean(axis=0)
        for level in range(levels):
            linear = _similarity_linear(mean_shape, shape)  # [N, 2, 2]
            moved = self.deltas[level] @ linear.transpose(0, 2, 1)
            points = moved + shape[:, self.anchor[level]]  # [N, F, 2] float32, like dlib
            at = np.floor(points * extent + origin + 0.5).astype(np.int64)
            x, y = at[..., 0], at[..., 1]
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            sampled = pixels[np.where(inside, y * width + x, 0)]  # [N, F, channels]
            # dlib's pixel intensity: the integer mean of the channels; 0 outside
            grey = sampled.sum(axis=2, dtype=np.uint16) // sampled.shape[2]
            values = np.where(inside, grey, 0).astype(np.float32).ravel()  # N x F
            pairs = self.split_pixels[level].reshape(-1, 2)
            thresh = self.split_thresh[level].ravel()
            node = np.zeros((faces, trees), np.int64)
            for _ in range(self.depth):
                split = first_split + node
                difference = values[face_row + pairs[split, 0]] - values[face_row + pairs[split, 1]]
                node = 2 * node + np.where(difference > thresh[split], 1, 2)
            leaves = self.leaf_values[level].reshape(-1, points_per_shape)[
                first_leaf + node - splits
            ]  # [N, T, P * 2]
            # tree by tree in float32, as dlib adds them: the sum's rounding decides
            # which pixel the next level reads when a point falls near a pixel edge
            steps = np.concatenate([shape.reshape(faces, 1, -1), leaves], 1)
            shape = np.cumsum(steps, axis=1, dtype=np.float32)[:, -1].reshape(faces, -1, 2)
        # dlib's full_object_detection holds integer points: its chips, the ones
        # its ResNet was trained on, are cut from the rounded shape
        return np.floor(shape.astype(np.float64) * extent + origin + 0.5)


def _similarity_linear(
    centred: NDArray[np.float64], target: NDArray[np.floating]
) -> NDArray[np.float32]:
    """The 2x2 part [N, 2, 2] of the least-squares similarity taking a shape [P, 2]
    (given ``centred`` on its mean) onto each of ``target`` [N, P, 2], in float64 like
    dlib's find_similarity_transform (rotation and scale; reflection cannot occur
    between two face shapes)."""
    dst = np.asarray(target, np.float64)
    dst = dst - dst.mean(axis=1, keepdims=True)
    norm = float((centred**2).sum())
    a = (dst * centred).sum(axis=(1, 2)) / norm
    b = (dst[..., 1] * centred[:, 0] - dst[..., 0] * centred[:, 1]).sum(axis=1) / norm
    return np.stack([a, -b, b, a], axis=1).reshape(-1, 2, 2).astype(np.float32)


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
    reference = np.asarray(reference, np.float64)
    linear = _similarity_linear(reference - reference.mean(axis=0), landmarks).astype(np.float64)
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
