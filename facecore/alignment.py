"""Face alignment: warp a face to a recognizer's input chip from its 5 landmarks.

Training and serving both call ``align_faces`` so the network always sees chips of
the geometry it was fitted on. A template is [5, 2] float32: where the 5 YuNet
landmarks (right eye, left eye, nose tip, right mouth corner, left mouth corner)
should land in a chip of ``size`` (width, height) pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["align_face", "align_faces", "crop_with_margin", "similarity_transform"]


def similarity_transform(
    src: NDArray[np.floating], dst: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping
    ``src`` [K, 2] onto ``dst`` [K, 2] (Umeyama 1991). Returns a [2, 3] matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float(np.trace(np.diag(singular) @ sign)) / variance if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_face(
    image: NDArray[np.uint8],
    landmarks: NDArray[np.floating],
    template: NDArray[np.floating],
    size: tuple[int, int],
) -> NDArray[np.uint8]:
    """One chip [h, w, 3] uint8 in the image's colour order.

    When the face is more than twice the chip's size, the region around it is
    halved with a Gaussian pyramid first, so the bilinear warp does not alias.
    """
    matrix = similarity_transform(landmarks, template)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    if scale < 0.5:
        image, matrix = _shrink_region(image, matrix, size, scale)
    return cv2.warpAffine(
        image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def align_faces(
    image: NDArray[np.uint8],
    landmarks: NDArray[np.floating],
    template: NDArray[np.floating],
    size: tuple[int, int],
) -> NDArray[np.uint8]:
    """Chips [N, h, w, 3] uint8 for landmarks [N, 5, 2] of faces in ``image``."""
    width, height = size
    chips = np.empty((len(landmarks), height, width, 3), np.uint8)
    for i, points in enumerate(landmarks):
        chips[i] = align_face(image, points, template, size)
    return chips


def _shrink_region(
    image: NDArray[np.uint8], matrix: NDArray[np.float64], size: tuple[int, int], scale: float
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """Crop the part of ``image`` the chip samples, pyramid-halve it until the warp
    scale is at least 0.5, and return it with the matching chip transform."""
    width, height = size
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64)
    source = corners @ inverse.T
    x0, y0 = np.floor(source.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(source.max(axis=0)).astype(int) + 2
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image.shape[1]), min(y1, image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return image, matrix
    region = image[y0:y1, x0:x1]
    matrix = matrix.copy()
    matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    while scale < 0.5 and min(region.shape[:2]) >= 4:
        region = cv2.pyrDown(region)
        matrix[:, :2] *= 2.0
        scale *= 2.0
    return region, matrix


def crop_with_margin(
    image: NDArray[np.uint8],
    xyxy: NDArray[np.floating],
    landmarks: NDArray[np.floating],
    margin: float = 0.5,
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """A square crop around one face, ``margin`` times its box size on each side
    (clipped to the image), and the landmarks [5, 2] in the crop's pixels.

    Enrollment keeps this crop so any backbone can re-align the face later.
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = max(round(cx - side / 2), 0)
    top = max(round(cy - side / 2), 0)
    right = min(round(cx + side / 2), image.shape[1])
    bottom = min(round(cy + side / 2), image.shape[0])
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    shifted = np.asarray(landmarks, np.float32) - np.array([left, top], np.float32)
    return crop, shifted
