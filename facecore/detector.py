"""Face detection with YuNet, through ONNX Runtime or ``cv2.FaceDetectorYN``.

Both back-ends run the same model file and give the same faces (facecore/yunet.py).
ONNX Runtime is the default: on one thread it takes half OpenCV's CPU time for a
frame, which gave 1.6x the pipeline's frames per second on 2 cores, and it runs on
the GPU too (docs/benchmarks.md).

A ``cv2.FaceDetectorYN`` keeps per-call state (its input size and buffers) and is
not safe to share between threads, so for that back-end ``Detector`` keeps one
instance per thread (``threading.local``); an ONNX Runtime session is shared. Either
way one ``Detector`` may be called from any worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.config import Settings
from facecore.errors import ModelLoadError
from facecore.faces import Faces
from facecore.registry import DETECTOR, model_path
from facecore.yunet import OnnxYuNet

__all__ = ["BACKENDS", "Detector"]

BACKENDS = ("onnxruntime", "opencv")
TOP_K = 5000  # candidates kept before non-maximum suppression, as cv2's default


class Detector:
    """Find faces in BGR uint8 frames [H, W, 3] of any size.

    ``size`` is the longest side the frame is shrunk to before detection (frames
    smaller than that are used as they are); boxes and landmarks are returned in
    the original frame's pixels. Faces whose box is narrower than ``min_face_px``
    (in frame pixels) are dropped.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        size: int = 640,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        min_face_px: int = 0,
        backend: str = "onnxruntime",
        device: str = "auto",
        threads: int = 1,
    ) -> None:
        if size < 32:
            raise ValueError(f"detection size must be at least 32 pixels, got {size}")
        if backend not in BACKENDS:
            raise ValueError(f"detection backend must be one of {BACKENDS}, got {backend!r}")
        self.model_path = Path(model_path)
        self.size = size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face_px = min_face_px
        self.backend = backend
        self._local = threading.local()
        # Load now, in the caller's thread, so a bad model fails here.
        self._onnx: OnnxYuNet | None = None
        if backend == "onnxruntime":
            self._onnx = OnnxYuNet(self.model_path, device=device, threads=threads)
        else:
            self._yunet((size, size))

    @classmethod
    def from_settings(cls, settings: Settings, *, min_face_px: int | None = None) -> Detector:
        """The configured YuNet detector (``min_face_px`` overrides the setting)."""
        detection = settings.detection
        return cls(
            model_path(settings, DETECTOR),
            size=detection.size,
            score_threshold=detection.score_threshold,
            nms_threshold=detection.nms_threshold,
            min_face_px=detection.min_face_px if min_face_px is None else min_face_px,
            backend=detection.backend,
            device=detection.device,
            threads=detection.threads,
        )

    def _yunet(self, input_size: tuple[int, int]) -> cv2.FaceDetectorYN:
        yunet = getattr(self._local, "yunet", None)
        if yunet is None:
            try:
                yunet = cv2.FaceDetectorYN.create(
                    str(self.model_path),
                    "",
                    input_size,
                    self.score_threshold,
                    self.nms_threshold,
                    TOP_K,
                )
            except cv2.error as exc:
                raise ModelLoadError(f"cannot load YuNet from {self.model_path}: {exc}") from exc
            self._local.yunet = yunet
            self._local.input_size = None
        if self._local.input_size != input_size:
            yunet.setInputSize(input_size)
            self._local.input_size = input_size
        return yunet

    def detect(self, frame: NDArray[np.uint8]) -> Faces:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a BGR uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}"
            )
        height, width = frame.shape[:2]
        scale = min(1.0, self.size / max(height, width))
        if scale < 1.0:
            small = cv2.resize(
                frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
        else:
            small = frame
        if self._onnx is not None:
            raw = self._onnx.detect(
                small,
                score_threshold=self.score_threshold,
                nms_threshold=self.nms_threshold,
                top_k=TOP_K,
            )
        else:
            _, raw = self._yunet((small.shape[1], small.shape[0])).detect(small)
        faces = Faces.from_yunet(raw, scale)
        if self.min_face_px and len(faces):
            faces = faces[(faces.xyxy[:, 2] - faces.xyxy[:, 0]) >= self.min_face_px]
        return faces
