"""dlib-bin's own face pipeline: the reference facestream's pipeline is measured against.

HOG face detector -> 5-point shape predictor -> ``get_face_chip`` (150 px, padding
0.25) -> ``compute_face_descriptor``, exactly as dlib's examples run it. It serves
the template derivation (``bench/derive_template.py``), the tests and
``facestream eval verify --reference dlib``; nothing in the product's runtime path
uses it. dlib is imported when a `DlibPipeline` is made, so the ``dlib-bin``
package is only needed there (`ModelError` saying how to install it otherwise).

Images go in as BGR uint8 [H, W, 3] (OpenCV order, like every facestream stage),
boxes as xyxy; dlib objects never leave this module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.config import Settings
from facecore.errors import ModelError
from facecore.registry import get_spec, model_cache_dir, resolve_model
from trainer.dlib.template import DLIB_CHIP_PADDING, DLIB_CHIP_SIZE, ChipGeometry

__all__ = ["SHAPE_PREDICTOR_5", "DlibPipeline", "match_boxes"]

# dlib's 5-point landmark model, shipped in face_recognition_models next to the ResNet.
SHAPE_PREDICTOR_5 = get_spec("dlib_shape_predictor_5_dat")


def _import_dlib() -> Any:
    try:
        return importlib.import_module("dlib")
    except ImportError as err:
        raise ModelError(
            "dlib's reference pipeline needs the dlib-bin package: pip install dlib-bin "
            "(or pip install 'facestream[test]')"
        ) from err


class DlibPipeline:
    """dlib's detector, landmarks, chips and descriptors for BGR images.

    ``upsample`` is how many times the HOG detector doubles the image first (dlib's
    examples use 1: it finds faces down to about 40 px instead of 80 px).
    """

    def __init__(self, shape_predictor: Path, recognizer: Path, *, upsample: int = 1) -> None:
        dlib = _import_dlib()
        self._dlib = dlib
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(shape_predictor))
            self._recognizer = dlib.face_recognition_model_v1(str(recognizer))
        except RuntimeError as err:
            raise ModelError(f"dlib cannot load its models: {err}") from err

    @classmethod
    def from_settings(cls, settings: Settings, *, upsample: int = 1) -> DlibPipeline:
        """With both model files found (and checksum-verified) as the registry finds
        files: models dir, cache, the face_recognition_models package, download."""
        found = [
            resolve_model(
                spec,
                explicit=None,
                models_dir=settings.models_dir,
                cache_dir=model_cache_dir(settings),
            )
            for spec in (SHAPE_PREDICTOR_5, get_spec("dlib_resnet_v1_dat"))
        ]
        return cls(found[0], found[1], upsample=upsample)

    def detect(self, image: NDArray[np.uint8]) -> NDArray[np.float64]:
        """Face boxes [N, 4] xyxy (dlib's inclusive corners) found by the HOG detector."""
        rects = self._detector(_rgb(image), self.upsample)
        return np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64)

    def landmarks(
        self, image: NDArray[np.uint8], boxes: NDArray[np.floating]
    ) -> NDArray[np.float64]:
        """dlib's 5 points [N, 5, 2] for each box: the corners of the image-left eye
        (outer, inner), of the image-right eye (outer, inner), the base of the nose."""
        rgb = _rgb(image)
        return np.array(
            [[(p.x, p.y) for p in self._shape(rgb, box).parts()] for box in boxes], np.float64
        ).reshape(-1, 5, 2)

    def chip_geometry(self, image: NDArray[np.uint8], box: NDArray[np.floating]) -> ChipGeometry:
        """Where dlib's descriptor cuts its 150x150 chip for the face in ``box``."""
        details = self._dlib.get_face_chip_details(
            self._shape(_rgb(image), box), size=DLIB_CHIP_SIZE, padding=DLIB_CHIP_PADDING
        )
        r = details.rect
        return ChipGeometry(
            rect=(r.left(), r.top(), r.right(), r.bottom()),
            angle=float(details.angle),
            size=(int(details.cols), int(details.rows)),
        )

    def chips(self, image: NDArray[np.uint8], boxes: NDArray[np.floating]) -> NDArray[np.uint8]:
        """dlib's own chips [N, 150, 150, 3], BGR."""
        rgb = _rgb(image)
        chips = np.zeros((len(boxes), DLIB_CHIP_SIZE, DLIB_CHIP_SIZE, 3), np.uint8)
        for i, box in enumerate(boxes):
            chip = self._dlib.get_face_chip(
                rgb, self._shape(rgb, box), size=DLIB_CHIP_SIZE, padding=DLIB_CHIP_PADDING
            )
            chips[i] = cv2.cvtColor(np.asarray(chip), cv2.COLOR_RGB2BGR)
        return chips

    def descriptors(
        self, image: NDArray[np.uint8], boxes: NDArray[np.floating]
    ) -> NDArray[np.float32]:
        """dlib's raw 128-d descriptors [N, 128] (compare with Euclidean distance;
        dlib's own rule: the same person below 0.6)."""
        rgb = _rgb(image)
        out = np.zeros((len(boxes), 128), np.float32)
        for i, box in enumerate(boxes):
            out[i] = np.asarray(
                self._recognizer.compute_face_descriptor(
                    rgb, self._shape(rgb, box), num_jitters=0, padding=DLIB_CHIP_PADDING
                ),
                np.float32,
            )
        return out

    def describe_chips(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Raw descriptors [N, 128] of ready-made 150x150 BGR chips (one dlib batch)."""
        rgb = [np.ascontiguousarray(chip[..., ::-1]) for chip in chips]
        if not rgb:
            return np.zeros((0, 128), np.float32)
        return np.asarray(self._recognizer.compute_face_descriptor(rgb), np.float32)

    def _shape(self, rgb: NDArray[np.uint8], box: NDArray[np.floating]) -> Any:
        left, top, right, bottom = (round(float(v)) for v in box)
        return self._predictor(rgb, self._dlib.rectangle(left, top, right, bottom))


def match_boxes(
    dlib_boxes: NDArray[np.floating], yunet_boxes: NDArray[np.floating]
) -> NDArray[np.intp]:
    """For each dlib box [M, 4] xyxy, the index of the same face among YuNet's boxes
    [N, 4] (-1: none): the box that holds the dlib box's centre, nearest to it. dlib's
    HOG boxes are tighter than YuNet's, so box overlap would be a poorer test."""
    dlib_boxes = np.asarray(dlib_boxes, np.float64).reshape(-1, 4)
    yunet_boxes = np.asarray(yunet_boxes, np.float64).reshape(-1, 4)
    matches = np.full(len(dlib_boxes), -1, np.intp)
    if len(yunet_boxes) == 0:
        return matches
    yunet_centres = (yunet_boxes[:, :2] + yunet_boxes[:, 2:]) / 2
    for i, box in enumerate(dlib_boxes):
        centre = (box[:2] + box[2:]) / 2
        inside = ((yunet_boxes[:, :2] <= centre) & (centre <= yunet_boxes[:, 2:])).all(axis=1)
        if inside.any():
            distance = np.linalg.norm(yunet_centres - centre, axis=1)
            matches[i] = int(np.argmin(np.where(inside, distance, np.inf)))
    return matches


def _rgb(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[..., ::-1])
