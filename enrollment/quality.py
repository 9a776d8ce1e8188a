"""How good a detected face is as an enrollment sample: size, sharpness, frontalness.

The face is first aligned to a fixed 112x112 chip (ArcFace's 5-point template) whatever
backbone is in use, so the figures compare across photos, cameras and models.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from enrollment.store import Quality
from facecore.alignment import align_face
from facecore.registry import ARCFACE_112_TEMPLATE

__all__ = ["FULL_SHARPNESS", "FULL_SIZE_PX", "frontalness", "measure_quality"]

CHIP_SIZE = (112, 112)
TEMPLATE = np.asarray(ARCFACE_112_TEMPLATE, np.float32)
# the inner face in the chip (eyebrows to chin, cheek to cheek): sharpness is measured
# here so that background, hair and the chip's black border do not count
_INNER = (slice(36, 104), slice(24, 88))
FULL_SIZE_PX = 128.0  # a face at least this wide gets the full size term of the score
FULL_SHARPNESS = 100.0  # Laplacian variance that gets the full sharpness term
# sideways nose offset (in half eye distances) taken as a profile: the nose lines up
# with an eye at about 45 degrees of yaw, where the yaw term is then 1/3
_PROFILE_OFFSET = 1.5


def measure_quality(
    image: NDArray[np.uint8], xyxy: NDArray[np.floating[Any]], landmarks: NDArray[np.floating[Any]]
) -> Quality:
    """Quality of one face in a BGR ``image``, from its box [4] and landmarks [5, 2].

    ``face_px`` is the square root of the box area; ``sharpness`` the variance of the
    Laplacian over the aligned inner face (sharp photos score 75 to 800, a blur of
    2 chip pixels about 10 to 50); ``frontalness`` see `frontalness`; ``score`` is the
    product of the three, each scaled to [0, 1] (`FULL_SIZE_PX`, `FULL_SHARPNESS`).
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    face_px = float(np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)))
    chip = align_face(image, np.asarray(landmarks, np.float32), TEMPLATE, CHIP_SIZE)
    grey = cv2.cvtColor(chip, cv2.COLOR_BGR2GRAY)[_INNER]
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    frontal = frontalness(landmarks)
    score = min(1.0, face_px / FULL_SIZE_PX) * min(1.0, sharpness / FULL_SHARPNESS) * frontal
    return Quality(face_px=face_px, sharpness=sharpness, frontalness=frontal, score=score)


def frontalness(landmarks: NDArray[np.floating[Any]]) -> float:
    """1.0 for a face looking straight at the camera, falling to 0 as it turns: the
    product of a yaw term (the nose's sideways offset from the eyes' midpoint, in half
    eye distances) and a pitch term (how far the nose sits between the eyes and the
    mouth, against the template's frontal face). Roll (a tilted head) does not count."""
    yaw, pitch = _nose_position(np.asarray(landmarks, np.float64))
    yaw_term = 1.0 - min(abs(yaw) / _PROFILE_OFFSET, 1.0)
    pitch_term = 1.0 - min(abs(pitch - _FRONTAL_PITCH) / _FRONTAL_PITCH, 1.0)
    return float(yaw_term * pitch_term)


def _nose_position(points: NDArray[np.float64]) -> tuple[float, float]:
    """(sideways offset of the nose from the eyes' midpoint / half the eye distance,
    nose depth below the eyes / mouth depth below the eyes), in the eyes' frame."""
    right_eye, left_eye, nose, right_mouth, left_mouth = points
    across = left_eye - right_eye
    eye_distance = float(np.hypot(*across))
    if eye_distance < 1e-6:
        return 1.0, 0.0
    across /= eye_distance
    down = np.array([-across[1], across[0]])
    eyes = (right_eye + left_eye) / 2.0
    mouth_depth = float((((right_mouth + left_mouth) / 2.0) - eyes) @ down)
    sideways = float((nose - eyes) @ across) / (eye_distance / 2.0)
    depth = float((nose - eyes) @ down) / mouth_depth if mouth_depth > 1e-6 else 0.0
    return sideways, depth


_FRONTAL_PITCH = _nose_position(TEMPLATE.astype(np.float64))[1]
