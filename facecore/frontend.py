"""The front end: how a detected face becomes a recognizer's chip. Every place that
cuts recognition chips (trainer embeddings, evaluation, the live streamer, benches)
calls `FrontEnd.chips`, so a model always sees chips of the geometry it wants.

A model's spec names its front end (`facecore.registry.ModelSpec.landmarks`):

* ``"yunet_template"``: YuNet's 5 landmarks similarity-fitted onto the model's
  template (`facecore.alignment.align_faces`);
* ``"dlib_5"``: dlib's 5-point shape predictor (`facecore.landmarks`) run in a box
  derived from YuNet's landmarks (`facecore.landmarks.landmark_box`; boxes can be
  given instead), then dlib's own chip geometry
  (`facecore.alignment.dlib_chip_transform`, 150 px with padding 0.25 for
  dlib's ResNet). This is the pipeline dlib's ResNet was trained on.

Both need only an image and YuNet's landmarks, so a stored enrollment crop (kept
with its landmarks) can be cut again for any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.alignment import align_face, dlib_chip_transform, warp_chip
from facecore.bundle import LANDMARKS_FILE, Bundle, BundleManifest
from facecore.config import Settings
from facecore.download import sha256_file
from facecore.errors import BundleError, ModelError
from facecore.landmarks import ShapePredictor, landmark_box
from facecore.registry import (
    DLIB_LANDMARKS,
    MODELS,
    FrontEndKind,
    ModelSpec,
    model_path,
)

__all__ = ["DLIB_CHIP_PADDING", "FRONT_ENDS", "FrontEnd", "check_front_end"]

FRONT_ENDS: tuple[FrontEndKind, ...] = ("yunet_template", "dlib_5")
DLIB_CHIP_PADDING = 0.25  # the padding dlib's compute_face_descriptor cuts chips with


@dataclass(frozen=True, eq=False)
class FrontEnd:
    """``kind`` (see the module docstring), the chip ``size`` (width, height), the
    model's ``template`` [5, 2] and, for ``"dlib_5"``, the loaded ``predictor`` with
    the file it came from (``predictor_path``, ``predictor_sha256``)."""

    kind: FrontEndKind
    size: tuple[int, int]
    template: NDArray[np.float32]
    predictor: ShapePredictor | None = None
    predictor_path: Path | None = None
    predictor_sha256: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FRONT_ENDS:
            raise ModelError(f"unknown front end {self.kind!r}; known: {', '.join(FRONT_ENDS)}")
        if self.kind == "dlib_5" and (self.predictor is None or self.size[0] != self.size[1]):
            raise ModelError("the dlib_5 front end needs its shape predictor and square chips")

    @classmethod
    def load(
        cls,
        kind: str,
        template: NDArray[np.floating] | tuple[tuple[float, float], ...],
        size: tuple[int, int],
        predictor: Path | None = None,
    ) -> FrontEnd:
        """A front end of ``kind``; ``predictor`` is the landmark model's ``.npz``
        (needed for ``"dlib_5"`` only)."""
        loaded = sha = None
        if kind == "dlib_5":
            if predictor is None:
                raise ModelError("the dlib_5 front end needs its landmark model file")
            loaded, sha = ShapePredictor.load(predictor), sha256_file(predictor)
        return cls(
            kind,  # type: ignore[arg-type]  # checked in __post_init__
            (int(size[0]), int(size[1])),
            np.asarray(template, np.float32),
            loaded,
            predictor if loaded is not None else None,
            sha or "",
        )

    @classmethod
    def for_model(cls, settings: Settings, spec: ModelSpec, *, kind: str | None = None) -> FrontEnd:
        """The front end ``spec`` (a recognizer) wants, or the one of ``kind`` for its
        chips (to compare front ends), its files found as the registry finds files
        (``models prepare`` converts the landmark model)."""
        if spec.template is None or spec.input_size is None:
            raise ModelError(f"{spec.name} is not a recognizer with an alignment template")
        kind = kind or spec.landmarks
        predictor = model_path(settings, DLIB_LANDMARKS) if kind == "dlib_5" else None
        return cls.load(kind, spec.template, spec.input_size, predictor)

    def serves(self, manifest: BundleManifest) -> bool:
        """Whether this front end cuts the chips ``manifest``'s gallery was embedded
        from (so a new bundle of the same model can reuse it)."""
        return (
            self.kind == manifest.front_end
            and self.predictor_sha256 == manifest.landmarks_sha256
            and self.size == tuple(manifest.preprocessing.size)
            and np.array_equal(self.template, np.asarray(manifest.template, np.float32))
        )

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> FrontEnd:
        """The front end ``bundle``'s gallery was embedded with (`check_front_end`
        first), its landmark model read from the bundle itself."""
        manifest = bundle.manifest
        check_front_end(manifest)
        predictor = bundle.path / LANDMARKS_FILE if manifest.landmarks_sha256 else None
        try:
            return cls.load(
                manifest.front_end, manifest.template, manifest.preprocessing.size, predictor
            )
        except ModelError as exc:
            raise BundleError(f"bundle {bundle.path}: {exc}") from exc

    def chips(
        self,
        image: NDArray[np.uint8],
        landmarks: NDArray[np.floating],
        boxes: NDArray[np.floating] | None = None,
    ) -> NDArray[np.uint8]:
        """Chips [N, h, w, 3] uint8 (the image's colour order) of the faces with YuNet
        ``landmarks`` [N, 5, 2] in ``image``. ``boxes`` [N, 4] (left, top, right,
        bottom), for ``"dlib_5"`` only, replace the box derived from the landmarks."""
        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        width, height = self.size
        chips = np.empty((len(landmarks), height, width, 3), np.uint8)
        if len(landmarks) == 0:
            return chips
        if self.kind == "yunet_template":
            for i, points in enumerate(landmarks):
                chips[i] = align_face(image, points, self.template, self.size)
            return chips
        assert self.predictor is not None  # __post_init__
        rects = landmark_box(landmarks) if boxes is None else np.asarray(boxes, np.float64)
        for i, shape in enumerate(self.predictor.predict(image, rects)):
            matrix = dlib_chip_transform(shape, width, DLIB_CHIP_PADDING)
            chips[i] = warp_chip(image, matrix, self.size)
        return chips

    def same_chips(self, other: FrontEnd) -> bool:
        """Whether chips cut by ``other`` are right for this front end too."""
        return (
            self.kind == other.kind
            and self.size == other.size
            and (self.kind == "dlib_5" or np.array_equal(self.template, other.template))
            and self.predictor_sha256 == other.predictor_sha256
        )


def check_front_end(manifest: BundleManifest) -> None:
    """BundleError when a bundle's gallery was embedded with another front end than
    its backbone's model now wants: its chips, hence its people's vectors, would not
    match the faces the streamer cuts. The trainer rebuilds such a bundle."""
    spec = MODELS.get(manifest.backbone_name)
    wanted = spec.landmarks if spec is not None else manifest.front_end
    if manifest.front_end != wanted:
        raise BundleError(
            f"bundle version {manifest.version} was built with the {manifest.front_end!r} "
            f"front end, but {manifest.backbone_name} now cuts its chips with {wanted!r}: "
            "let the trainer rebuild it (`facestream trainer --once`, or the trainer service)"
        )
    if wanted == "dlib_5" and not manifest.landmarks_sha256:
        raise BundleError(
            f"bundle version {manifest.version} uses the dlib_5 front end but holds no "
            "landmark model"
        )
