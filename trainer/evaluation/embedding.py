"""Embeddings of labelled images for evaluation: each image's largest face through
facestream's pipeline (YuNet, a front end, the recognizer) or dlib-bin's own, as
``eval verify`` and ``eval calibrate`` score them.

Heavy modules (cv2, onnxruntime, dlib, tqdm) are imported inside the functions: the
command line imports this module at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from facecore.config import Settings
from facecore.errors import SourceError

if TYPE_CHECKING:
    from trainer.backbone import Backbone

__all__ = [
    "Candidate",
    "Embedded",
    "embed_dlib",
    "embed_facestream",
    "embed_largest_faces",
    "labelled_images",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A front end to measure: its kind, which box the dlib_5 landmark model gets
    ("landmarks": derived from YuNet's landmarks, "yunet": YuNet's box), and whether
    each embedding is averaged with the mirror image's."""

    kind: str
    box: str = "landmarks"
    flip: bool = False

    @property
    def name(self) -> str:
        box = ":yunet_box" if self.box == "yunet" else ""
        return f"{self.kind}{box}{'+flip' if self.flip else ''}"


@dataclass(frozen=True)
class Embedded:
    """One pipeline's output for M images: ``vectors`` [M, D], ``found`` [M] bool
    (a face was detected)."""

    vectors: NDArray[np.float32]
    found: NDArray[np.bool_]
    ms_per_face: float  # the front end's time (landmarks and chip), per image


def labelled_images(folder: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(image, person) for every image of ``folder``'s sub-folders, one per person, in
    sorted order; and the files named as images that OpenCV cannot read, left out
    (a warning names each: one damaged file should not stop a long measurement).
    `SourceError` when no sub-folder holds an image (one person's folder, say)."""
    from facecore.errors import SourceError
    from trainer.fitting.gallery import IMAGE_SUFFIXES

    people = sorted(p for p in folder.iterdir() if p.is_dir())
    named = [
        (image, person.name)
        for person in people
        for image in sorted(person.iterdir())
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not named:
        raise SourceError(f"{folder} has no sub-folder of images (one per person)")
    unreadable = [image for image, _ in named if not _readable(image)]
    for image in unreadable:
        log.warning("%s left out: OpenCV cannot read it as an image", image)
    return [item for item in named if item[0] not in unreadable], unreadable


def embed_largest_faces(settings: Settings, paths: Sequence[Path]) -> Embedded:
    """Unit embeddings of each image's largest face through the model's own front end
    (the centred square where no face is found: ``found`` says which)."""
    from facecore.registry import get_spec

    spec = get_spec(settings.recognition.model)
    return embed_facestream(settings, paths, [Candidate(spec.landmarks)])[0]


def _readable(path: Path) -> bool:
    """Whether OpenCV decodes ``path`` (a JPEG at 1/8 of its size: a quick check)."""
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


def _read(path: Path) -> NDArray[np.uint8]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"OpenCV cannot read the image {path}")
    return image


def _centred_square(shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(left, top, side) of the largest centred square in an image of ``shape``."""
    height, width = shape[:2]
    side = min(height, width)
    return (width - side) / 2, (height - side) / 2, float(side)


def embed_facestream(
    settings: Settings, paths: Sequence[Path], candidates: Sequence[Candidate]
) -> list[Embedded]:
    """For each candidate, unit embeddings of each image's largest YuNet face (the
    centred square where there is none), batched as the recognizer is configured."""
    import time

    from tqdm import tqdm

    from facecore.detector import Detector
    from facecore.frontend import FrontEnd
    from facecore.registry import get_spec
    from trainer.backbone import Backbone

    detector = Detector.from_settings(settings)
    backbone = Backbone.from_settings(settings)
    spec_front_end = backbone.front_end
    front_ends = {
        c.kind: spec_front_end if c.kind == spec_front_end.kind
        else FrontEnd.for_model(settings, get_spec(backbone.name), kind=c.kind)
        for c in candidates
    }
    width, height = size = backbone.embedder.size
    found = np.zeros(len(paths), bool)
    chips = np.zeros((len(candidates), len(paths), height, width, 3), np.uint8)
    seconds = np.zeros(len(candidates))
    for i, path in enumerate(tqdm(paths, desc="facestream: detect, align", unit="image")):
        image = _read(path)
        faces = detector.detect(image).largest()
        found[i] = len(faces) == 1
        left, top, side = _centred_square(image.shape)
        if found[i]:
            landmarks, box = faces.landmarks, faces.xyxy
        else:
            landmarks = (backbone.template * (side / max(size)) + (left, top))[None]
            box = np.array([[left, top, left + side - 1, top + side - 1]])
        for j, candidate in enumerate(candidates):
            start = time.perf_counter()
            chips[j, i] = front_ends[candidate.kind].chips(
                image, landmarks, box if candidate.box == "yunet" else None
            )[0]
            seconds[j] += time.perf_counter() - start
    batch = settings.recognition.batch_size
    results = []
    for j, candidate in enumerate(candidates):
        vectors = np.concatenate([
            _embed(backbone, chips[j, start : start + batch], candidate.flip)
            for start in tqdm(
                range(0, len(paths), batch), desc=f"facestream: embed {candidate.name}",
                unit="batch",
            )
        ])
        results.append(Embedded(vectors, found, 1000 * seconds[j] / max(len(paths), 1)))
    return results


def _embed(backbone: Backbone, chips: NDArray[np.uint8], flip: bool) -> NDArray[np.float32]:
    """Unit embeddings of ``chips``; with ``flip``, of the mean of each chip's and its
    mirror image's embedding."""
    vectors = backbone.embedder.embed(chips)
    if not flip:
        return vectors
    mean = vectors + backbone.embedder.embed(np.ascontiguousarray(chips[:, :, ::-1]))
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def embed_dlib(settings: Settings, paths: Sequence[Path]) -> Embedded:
    """dlib's raw descriptors of each image's largest HOG face (the centred square,
    given to the 5-point model as the detection, where there is none)."""
    import time

    from tqdm import tqdm

    from trainer.dlib.reference import DlibPipeline

    dlib = DlibPipeline.from_settings(settings)
    seconds = 0.0
    found = np.zeros(len(paths), bool)
    vectors = np.zeros((len(paths), 128), np.float32)
    for i, path in enumerate(tqdm(paths, desc="dlib-bin: detect, embed", unit="image")):
        image = _read(path)
        boxes = dlib.detect(image)
        found[i] = len(boxes) > 0
        if found[i]:
            box = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
        else:
            left, top, side = _centred_square(image.shape)
            box = np.array([left, top, left + side - 1, top + side - 1])
        start = time.perf_counter()
        dlib.chips(image, box[None])
        seconds += time.perf_counter() - start
        vectors[i] = dlib.descriptors(image, box[None])[0]
    return Embedded(vectors, found, 1000 * seconds / max(len(paths), 1))
