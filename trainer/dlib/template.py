"""Measuring the alignment template that makes YuNet landmarks give dlib's face chips.

dlib's ResNet was trained on chips cut by dlib's own pipeline: its 5-point shape
predictor (four eye corners and the base of the nose), then
``get_face_chip_details(shape, size=150, padding=0.25)``, a rectangle and an angle
in the image that ``extract_image_chip`` maps onto the 150x150 chip. YuNet's five
points are other points (eye centres, nose tip, mouth corners), so the template
that puts them where dlib's chip has them is measured, not guessed:

1. for every face found by both pipelines, take dlib's chip transform
   (`ChipGeometry.transform`, image -> chip pixels) and map YuNet's landmarks
   through it (`to_chip`): where this face's YuNet points lie in dlib's chip;
2. the template is the per-coordinate median of those points (`derive_template`);
3. `evaluate_template` says how well it does: the spread of each point, how far
   each face's points are from the template after their best similarity fit, and
   how the chip `facecore.alignment.align_faces` cuts differs from dlib's chip
   (`compare_chip`: scale, rotation, shift, overall offset).

Pure numpy: the dlib side lives in `trainer.dlib.reference`, the measurement run in
``bench/derive_template.py``; the resulting numbers are the ``dlib_resnet_v1``
template in `facecore.registry` and are documented in ``docs/alignment.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from facecore.alignment import chip_mapping, similarity_transform

__all__ = [
    "DLIB_CHIP_PADDING",
    "DLIB_CHIP_SIZE",
    "ChipDifference",
    "ChipGeometry",
    "TemplateFit",
    "compare_chip",
    "derive_landmark_box",
    "derive_template",
    "evaluate_template",
    "to_chip",
]

DLIB_CHIP_SIZE = 150  # dlib_face_recognition_resnet_model_v1 takes 150x150 chips
DLIB_CHIP_PADDING = 0.25  # the padding dlib's compute_face_descriptor uses
_GRID = 16  # compare_chip measures the offset on a _GRID x _GRID lattice of chip pixels


@dataclass(frozen=True)
class ChipGeometry:
    """dlib's ``chip_details`` as plain numbers.

    ``rect`` is (left, top, right, bottom) in image pixels, ``angle`` the rotation
    in radians, ``size`` the chip's (columns, rows).
    """

    rect: tuple[float, float, float, float]
    angle: float
    size: tuple[int, int]

    def transform(self) -> NDArray[np.float64]:
        """The [2, 3] similarity mapping image pixels to chip pixels, as dlib's
        ``get_mapping_to_chip`` builds it: the rect's corners, rotated by ``angle``
        about its centre, go to the chip's corners (top-left -> (0, 0), top-right ->
        (cols - 1, 0), bottom-right -> (cols - 1, rows - 1))."""
        return chip_mapping(self.rect, self.angle, self.size)


def to_chip(matrix: NDArray[np.floating], points: NDArray[np.floating]) -> NDArray[np.float64]:
    """Points [..., 2] mapped through an affine [2, 3] matrix."""
    points = np.asarray(points, np.float64)
    return points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix, np.float64)[:, 2]


def derive_template(chip_points: NDArray[np.floating]) -> NDArray[np.float64]:
    """The template [5, 2]: the per-coordinate median of YuNet's landmarks mapped into
    dlib's chip, ``chip_points`` [F, 5, 2] for F faces. The median keeps the odd
    face where the two detectors disagree (a profile, a wrong landmark) from
    pulling the template."""
    chip_points = np.asarray(chip_points, np.float64)
    if chip_points.ndim != 3 or chip_points.shape[1:] != (5, 2) or len(chip_points) == 0:
        raise ValueError(f"expected chip points [F, 5, 2] with F > 0, got {chip_points.shape}")
    return np.median(chip_points, axis=0)


def derive_landmark_box(
    landmarks: NDArray[np.floating],
    boxes: NDArray[np.floating],
    reference: NDArray[np.floating],
) -> tuple[tuple[float, float], float]:
    """The ``(centre, side)`` of `facecore.landmarks.LANDMARK_BOX`: dlib's detector
    boxes [F, 4] (left, top, right, bottom) of F faces, mapped into the frame of
    ``reference`` [5, 2] by the similarity that fits each face's YuNet ``landmarks``
    [F, 5, 2] onto it; the per-coordinate median of the centres and the median side
    (the mean of width and height, ``right - left`` as dlib's predictor measures it)."""
    centres, sides = [], []
    for points, box in zip(np.asarray(landmarks), np.asarray(boxes, np.float64), strict=True):
        matrix = similarity_transform(points, reference)
        centres.append(to_chip(matrix, (box[:2] + box[2:]) / 2))
        sides.append((box[2] - box[0] + box[3] - box[1]) / 2 * np.hypot(*matrix[:, 0]))
    if not sides:
        raise ValueError("no faces to measure the landmark box on")
    centre = np.median(np.array(centres), axis=0)
    return (float(centre[0]), float(centre[1])), float(np.median(sides))


@dataclass(frozen=True)
class ChipDifference:
    """How the chip aligned from YuNet's landmarks with a template differs from dlib's
    chip of the same face: the similarity taking dlib's chip to ours, as ``scale``
    (> 1: the face looks bigger in ours), ``rotation`` (degrees), ``shift`` (chip
    pixels the chip's centre moves), and ``offset``: the RMS distance, in chip pixels,
    between where the two chips put the same image point, over the whole chip."""

    scale: float
    rotation: float
    shift: float
    offset: float


def compare_chip(
    landmarks: NDArray[np.floating],
    dlib_transform: NDArray[np.floating],
    template: NDArray[np.floating],
    size: tuple[int, int] = (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE),
) -> ChipDifference:
    """Compare our chip of a face (YuNet ``landmarks`` [5, 2] in image pixels, aligned
    with ``template`` as `facecore.alignment.align_faces` does) with dlib's
    (``dlib_transform`` [2, 3], image -> chip)."""
    ours = similarity_transform(landmarks, template)
    relative = _compose(ours, _invert(np.asarray(dlib_transform, np.float64)))  # dlib -> ours
    cols, rows = size
    xs, ys = np.meshgrid(np.linspace(0, cols - 1, _GRID), np.linspace(0, rows - 1, _GRID))
    lattice = np.stack([xs.ravel(), ys.ravel()], axis=1)
    moved = to_chip(relative, lattice) - lattice
    centre = np.array([(cols - 1) / 2, (rows - 1) / 2])
    return ChipDifference(
        scale=float(np.hypot(relative[0, 0], relative[1, 0])),
        rotation=float(np.degrees(np.arctan2(relative[1, 0], relative[0, 0]))),
        shift=float(np.linalg.norm(to_chip(relative, centre) - centre)),
        offset=float(np.sqrt((moved**2).sum(axis=1).mean())),
    )


@dataclass(frozen=True)
class TemplateFit:
    """How a template fits F faces (distances in chip pixels).

    ``spread`` [5, 2]: robust standard deviation (1.4826 x median absolute
    deviation) of each point of the faces mapped into dlib's chip.
    ``fit_residual`` [F]: RMS distance of a face's YuNet points, similarity-fitted
    onto the template, from the template (pose, expression and landmark noise).
    ``chips`` (F): `compare_chip` of each face: our chip against dlib's own.
    """

    template: NDArray[np.float64]
    spread: NDArray[np.float64]
    fit_residual: NDArray[np.float64]
    chips: tuple[ChipDifference, ...]

    @property
    def offset(self) -> NDArray[np.float64]:
        """[F] each face's `ChipDifference.offset`."""
        return np.array([c.offset for c in self.chips])


def evaluate_template(
    template: NDArray[np.floating],
    landmarks: NDArray[np.floating],
    dlib_transforms: NDArray[np.floating],
    size: tuple[int, int] = (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE),
) -> TemplateFit:
    """Measure ``template`` [5, 2] on F faces: YuNet ``landmarks`` [F, 5, 2] in image
    pixels and dlib's chip transforms [F, 2, 3] of the same faces."""
    template = np.asarray(template, np.float64)
    landmarks = np.asarray(landmarks, np.float64)
    dlib_transforms = np.asarray(dlib_transforms, np.float64)
    chip_points = np.stack([to_chip(m, p) for m, p in zip(dlib_transforms, landmarks, strict=True)])
    deviation = np.median(np.abs(chip_points - np.median(chip_points, axis=0)), axis=0)
    residual = np.array(
        [
            np.sqrt(((to_chip(similarity_transform(p, template), p) - template) ** 2).sum(1).mean())
            for p in landmarks
        ]
    )
    return TemplateFit(
        template=template,
        spread=1.4826 * deviation,
        fit_residual=residual,
        chips=tuple(
            compare_chip(p, m, template, size)
            for p, m in zip(landmarks, dlib_transforms, strict=True)
        ),
    )


def _compose(outer: NDArray[np.float64], inner: NDArray[np.float64]) -> NDArray[np.float64]:
    """The affine [2, 3] applying ``inner`` then ``outer``."""
    linear = outer[:, :2] @ inner[:, :2]
    return np.hstack([linear, (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _invert(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """The inverse of an invertible affine [2, 3]."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2])[:, None]])
