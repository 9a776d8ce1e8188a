"""YuNet run through ONNX Runtime, decoded as ``cv2.FaceDetectorYN`` decodes it.

The same ONNX file serves both back-ends. ONNX Runtime on one thread takes about half
the CPU time of OpenCV's DNN engine for this model (docs/benchmarks.md), and can run
it on the GPU; the decoding below follows OpenCV's ``FaceDetectorYN`` so both give the
same faces (tests/test_facecore_detect_align.py compares them on real photos).

Model outputs, per stride s in (8, 16, 32), one row per cell of the padded input
(row-major, ``(H / s) * (W / s)`` cells): ``cls_s`` and ``obj_s`` [1, cells, 1]
probabilities, ``bbox_s`` [1, cells, 4] (centre offset in cells, log width and height
in strides), ``kps_s`` [1, cells, 10] (five landmarks, offsets in cells).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.sessions import create_session

__all__ = ["OnnxYuNet", "decode_yunet", "padded_size"]

STRIDES = (8, 16, 32)
PAD_MULTIPLE = 32  # the coarsest stride: every feature map then has whole cells


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The input size YuNet is run at: each side rounded up to a multiple of 32."""
    return (-(-width // PAD_MULTIPLE) * PAD_MULTIPLE, -(-height // PAD_MULTIPLE) * PAD_MULTIPLE)


def decode_yunet(
    outputs: dict[str, NDArray[np.float32]],
    padded: tuple[int, int],
    *,
    score_threshold: float,
    nms_threshold: float,
    top_k: int,
) -> NDArray[np.float32]:
    """Faces from YuNet's raw outputs, as rows ``[x, y, w, h, 10 landmark coords, score]``
    [N, 15] in input pixels (``cv2.FaceDetectorYN.detect``'s layout), best first."""
    width, height = padded
    rows = []
    for stride in STRIDES:
        cols = width // stride
        cells = cols * (height // stride)
        cls = np.clip(outputs[f"cls_{stride}"].reshape(cells), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(cells), 0.0, 1.0)
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(score >= score_threshold)
        if keep.size == 0:
            continue
        cell_xy = np.stack([keep % cols, keep // cols], axis=1).astype(np.float32)
        bbox = outputs[f"bbox_{stride}"].reshape(cells, 4)[keep]
        centre = (cell_xy + bbox[:, :2]) * stride
        size = np.exp(bbox[:, 2:]) * stride
        kps = outputs[f"kps_{stride}"].reshape(cells, 5, 2)[keep]
        landmarks = (kps + cell_xy[:, None]) * stride
        rows.append(
            np.concatenate(
                [centre - size / 2, size, landmarks.reshape(-1, 10), score[keep, None]], axis=1
            )
        )
    if not rows:
        return np.zeros((0, 15), np.float32)
    faces = np.concatenate(rows).astype(np.float32)
    # OpenCV runs NMS on integer boxes; doing the same keeps both back-ends identical.
    boxes = [tuple(int(v) for v in box) for box in faces[:, :4]]
    scores = faces[:, 14].tolist()
    keep = cv2.dnn.NMSBoxes(boxes, scores, score_threshold, nms_threshold, top_k=top_k)
    return faces[np.asarray(keep, np.intp).reshape(-1)]


class OnnxYuNet:
    """YuNet in an ONNX Runtime session; ``detect`` takes a BGR uint8 image [H, W, 3].

    An ONNX Runtime session may be run from several threads at once, so one instance
    serves every worker thread.
    """

    def __init__(self, model_path: Path, *, device: str = "cpu", threads: int = 1) -> None:
        self.session = create_session(model_path, device=device, threads=threads)
        self._input = self.session.get_inputs()[0].name
        self._outputs = [output.name for output in self.session.get_outputs()]

    def detect(
        self, image: NDArray[np.uint8], *, score_threshold: float, nms_threshold: float, top_k: int
    ) -> NDArray[np.float32]:
        height, width = image.shape[:2]
        padded = padded_size(width, height)
        blob = np.zeros((1, 3, padded[1], padded[0]), np.float32)
        blob[0, :, :height, :width] = image.transpose(2, 0, 1)
        values = self.session.run(self._outputs, {self._input: blob})
        return decode_yunet(
            dict(zip(self._outputs, values, strict=True)),
            padded,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            top_k=top_k,
        )
