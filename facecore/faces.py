"""Faces: the detections of one frame as parallel arrays.

Shapes (N faces):
    xyxy       [N, 4] float32, box corners in frame pixels
    landmarks  [N, 5, 2] float32, YuNet order: right eye, left eye, nose tip,
               right mouth corner, left mouth corner (the subject's right/left)
    score      [N] float32, detector confidence in [0, 1]

"No face" is an empty ``Faces``, never an exception or ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Faces"]


@dataclass(frozen=True)
class Faces:
    xyxy: NDArray[np.float32]
    landmarks: NDArray[np.float32]
    score: NDArray[np.float32]

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        expected = {"xyxy": (n, 4), "landmarks": (n, 5, 2), "score": (n,)}
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if actual != shape:
                raise ValueError(f"Faces.{name} must have shape {shape}, got {actual}")

    @classmethod
    def empty(cls) -> Faces:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
            score=np.zeros((0,), np.float32),
        )

    @classmethod
    def from_yunet(cls, raw: NDArray[np.float32] | None, scale: float = 1.0) -> Faces:
        """Build from ``cv2.FaceDetectorYN.detect`` output: rows of
        ``[x, y, w, h, 10 landmark coords, score]``, divided by ``scale`` to go back
        to frame pixels when detection ran on a resized frame."""
        if raw is None or len(raw) == 0:
            return cls.empty()
        raw = np.asarray(raw, np.float32)
        coords = raw[:, :14] / np.float32(scale)
        x, y, w, h = coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]
        return cls(
            xyxy=np.stack([x, y, x + w, y + h], axis=1),
            landmarks=coords[:, 4:14].reshape(-1, 5, 2).copy(),
            score=raw[:, 14].copy(),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: NDArray[np.bool_] | NDArray[np.intp] | slice | int) -> Faces:
        """Select faces with a boolean mask, an index array, a slice or one index."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Faces(self.xyxy[index], self.landmarks[index], self.score[index])

    @property
    def area(self) -> NDArray[np.float32]:
        """[N] box areas in square pixels."""
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    def largest(self) -> Faces:
        """The single largest face (empty if there is none)."""
        if len(self) == 0:
            return self
        return self[int(np.argmax(self.area))]
