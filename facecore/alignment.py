"""Face alignment: warp a face to a recognizer's input chip.

Two geometries, both a similarity warp of the image (`warp_chip`):

* ``align_faces``: a template [5, 2] float32 says where the 5 YuNet landmarks (right
  eye, left eye, nose tip, right mouth corner, left mouth corner) land in a chip of
  ``size`` (width, height) pixels;
* ``dlib_chip_transform``: dlib's own chip (``get_face_chip_details`` then
  ``extract_image_chip``) from dlib's 5 points (eye corners and the base of the nose).

Training and serving never call these directly for recognition chips: they go through
`facecore.frontend.FrontEnd`, which picks the geometry the model wants.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DLIB_MEAN_FACE_5",
    "align_face",
    "align_faces",
    "chip_mapping",
    "crop_with_margin",
    "dlib_chip_transform",
    "similarity_transform",
    "warp_chip",
]

# dlib's mean face for its 5-point shape (get_face_chip_details, in
# dlib/image_transforms/interpolation.h): where the image-left eye's outer and inner
# corners, the image-right eye's outer and inner corners and the base of the nose sit
# in a unit square chip before padding.
DLIB_MEAN_FACE_5: tuple[tuple[float, float], ...] = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)


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
    """One chip [h, w, 3] uint8 in the image's colour order (`warp_chip`)."""
    return warp_chip(image, similarity_transform(landmarks, template), size)


def warp_chip(
    image: NDArray[np.uint8], matrix: NDArray[np.floating], size: tuple[int, int]
) -> NDArray[np.uint8]:
    """The chip of ``size`` (width, height) that the [2, 3] similarity ``matrix``
    (image -> chip pixels) maps the image onto, bilinear, black outside the image.

    When the face is more than twice the chip's size, the region around it is
    halved with a Gaussian pyramid first, so the bilinear warp does not alias.
    """
    matrix = np.asarray(matrix, np.float64)
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


def chip_mapping(
    rect: tuple[float, float, float, float], angle: float, size: tuple[int, int]
) -> NDArray[np.float64]:
    """The [2, 3] similarity mapping image pixels to chip pixels for dlib's
    ``chip_details`` (``rect`` left, top, right, bottom in the image, ``angle`` in
    radians, ``size`` the chip's columns and rows), as ``get_mapping_to_chip`` builds
    it: the rect's corners, rotated by ``angle`` about its centre, go to the chip's
    corners (top-left -> (0, 0), top-right -> (cols - 1, 0), bottom-right ->
    (cols - 1, rows - 1))."""
    left, top, right, bottom = rect
    centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    corners = np.array([[left, top], [right, top], [right, bottom]]) - centre
    cols, rows = size
    chip = np.array([[0.0, 0.0], [cols - 1.0, 0.0], [cols - 1.0, rows - 1.0]])
    return similarity_transform(corners @ rotation.T + centre, chip)


def dlib_chip_transform(
    shape: NDArray[np.floating], size: int = 150, padding: float = 0.25
) -> NDArray[np.float64]:
    """The [2, 3] image -> chip matrix of dlib's ``get_face_chip_details(shape, size,
    padding)`` for dlib's 5 points ``shape`` [5, 2]: the similarity from the padded
    mean face (`DLIB_MEAN_FACE_5`, scaled to ``size``) onto the points gives the
    chip's angle and scale, its rect is the chip's square (``size`` times that scale
    wide) around the mapped chip centre, and `chip_mapping` turns that into the warp."""
    mean_face = (np.asarray(DLIB_MEAN_FACE_5) + padding) / (2 * padding + 1) * size
    to_image = similarity_transform(mean_face, shape)
    angle = float(np.arctan2(to_image[1, 0], to_image[0, 0]))
    scale = float(np.hypot(to_image[0, 0], to_image[1, 0]))
    cx, cy = to_image[:, :2] @ np.array([size / 2.0, size / 2.0]) + to_image[:, 2]
    half = (size * scale - 1.0) / 2.0  # dlib's centered_drect: right - left = width - 1
    return chip_mapping((cx - half, cy - half, cx + half, cy + half), angle, (size, size))


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
