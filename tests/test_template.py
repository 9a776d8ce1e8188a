"""The YuNet -> dlib chip template: dlib's chip geometry, the derivation, and the
registry's template on real faces against dlib's own pipeline (dlib-bin, reference
only) and the converted dlib ResNet."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from facecore.alignment import align_face, align_faces
from facecore.detector import Detector
from facecore.embedder import Embedder, Preprocessing
from facecore.errors import ModelError
from facecore.registry import MODELS, get_spec, resolve_model
from trainer.dlib.export import prepare_dlib_resnet
from trainer.dlib.reference import SHAPE_PREDICTOR_5, DlibPipeline, match_boxes
from trainer.dlib.template import (
    ChipGeometry,
    compare_chip,
    derive_template,
    evaluate_template,
    to_chip,
)

TEMPLATE = np.asarray(MODELS["dlib_resnet_v1"].template, np.float32)
CHIP = (150, 150)
PHOTOS = ("obama.jpg", "obama2.jpg", "biden.jpg", "two_people.jpg", "obama_and_biden.jpg",
          "lin-manuel-miranda.png", "alex-lacamoire.png")


@pytest.fixture(scope="module")
def dlib_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """dlib's 5-point model and ResNet .dat, found and checksum-verified by the registry."""
    pytest.importorskip("dlib")
    cache = tmp_path_factory.mktemp("cache")
    return tuple(  # type: ignore[return-value]
        resolve_model(spec, explicit=None, models_dir=None, cache_dir=cache, download=False)
        for spec in (SHAPE_PREDICTOR_5, get_spec("dlib_resnet_v1_dat"))
    )


@pytest.fixture(scope="module")
def dlib(dlib_files: tuple[Path, Path]) -> DlibPipeline:
    return DlibPipeline(*dlib_files)


@pytest.fixture(scope="module")
def embedder(dlib_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    onnx = prepare_dlib_resnet(dlib_files[1], tmp_path_factory.mktemp("models"))
    preprocessing = Preprocessing.of_model(MODELS["dlib_resnet_v1"])
    return Embedder.load(onnx, preprocessing, device="cpu", threads=2)


@pytest.fixture(scope="module")
def detector(yunet_path: Path) -> Detector:
    return Detector(yunet_path)


@pytest.fixture(scope="module")
def photos(shared_dir: Path) -> dict[str, NDArray[np.uint8]]:
    images = {name: cv2.imread(str(shared_dir / "media" / name)) for name in PHOTOS}
    assert all(image is not None for image in images.values())
    return images


@pytest.fixture(scope="module")
def both_found(
    photos: dict[str, NDArray[np.uint8]], detector: Detector, dlib: DlibPipeline
) -> list[tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float64]]]:
    """(image, YuNet landmarks [5, 2], dlib box [4]) of every face both pipelines find."""
    found = []
    for image in photos.values():
        faces, boxes = detector.detect(image), dlib.detect(image)
        for box, match in zip(boxes, match_boxes(boxes, faces.xyxy), strict=True):
            if match >= 0:
                found.append((image, faces.landmarks[match], box))
    return found


# --- dlib's chip geometry ------------------------------------------------------------


def _cut(image: NDArray[np.uint8], geometry: ChipGeometry) -> NDArray[np.uint8]:
    """The chip ``geometry`` describes, cut the way facecore cuts chips (align_face:
    the same warp, with a pyramid step first for large faces, as dlib does)."""
    corners = np.array([[0, 0], [149, 0], [149, 149], [0, 149]], np.float64)
    in_image = to_chip(cv2.invertAffineTransform(geometry.transform()), corners)
    return align_face(image, in_image, corners, geometry.size)


def test_chip_geometry_cuts_dlibs_chip(
    photos: dict[str, NDArray[np.uint8]], dlib: DlibPipeline
) -> None:
    """The transform rebuilt from chip_details reproduces dlib.get_face_chip, also on a
    tilted face (where the angle's sign matters)."""
    upright = photos["biden.jpg"]
    centre = (upright.shape[1] / 2, upright.shape[0] / 2)
    tilted = cv2.warpAffine(upright, cv2.getRotationMatrix2D(centre, 20, 1.0), upright.shape[1::-1])
    for image in (photos["obama.jpg"], photos["lin-manuel-miranda.png"], upright, tilted):
        box = dlib.detect(image)[0]
        geometry = dlib.chip_geometry(image, box)
        theirs = dlib.chips(image, box[None])[0]
        assert np.abs(_cut(image, geometry).astype(float) - theirs).mean() < 2.5
    assert abs(geometry.angle) > 0.1
    flipped = ChipGeometry(geometry.rect, -geometry.angle, geometry.size)
    assert np.abs(_cut(tilted, flipped).astype(float) - theirs).mean() > 10


def test_chip_geometry_corners() -> None:
    geometry = ChipGeometry(rect=(10.0, 20.0, 110.0, 120.0), angle=0.0, size=(150, 150))
    corners = to_chip(geometry.transform(), [[10, 20], [110, 20], [110, 120], [60, 70]])
    assert np.allclose(corners, [[0, 0], [149, 0], [149, 149], [74.5, 74.5]])


# --- the derivation, on known geometry -------------------------------------------------


def _random_similarity(rng: np.random.Generator) -> NDArray[np.float64]:
    angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.3, 3.0)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, rng.uniform(-200, 200)], [s, c, rng.uniform(-200, 200)]])


def test_median_template_resists_outliers() -> None:
    rng = np.random.default_rng(0)
    truth = TEMPLATE.astype(np.float64)
    points = truth + rng.normal(0, 1.0, (200, 5, 2))
    points[:20] += rng.uniform(20, 40, (20, 5, 2))  # 10% faces where the two disagree
    assert np.abs(derive_template(points) - truth).max() < 0.6
    assert np.abs(points.mean(axis=0) - truth).max() > 2.0
    with pytest.raises(ValueError, match=r"\[F, 5, 2\]"):
        derive_template(np.zeros((0, 5, 2)))


def test_evaluate_template_measures_chip_differences() -> None:
    """Faces whose YuNet points sit exactly on the template in dlib's chip fit with no
    residual and no offset; a template 4 px off gives a 4 px shift."""
    rng = np.random.default_rng(1)
    transforms = np.stack([_random_similarity(rng) for _ in range(12)])  # image -> dlib chip
    landmarks = np.stack([to_chip(cv2.invertAffineTransform(m), TEMPLATE) for m in transforms])
    exact = evaluate_template(TEMPLATE, landmarks, transforms)
    assert exact.fit_residual.max() < 1e-6 and exact.offset.max() < 1e-6
    assert np.allclose([c.scale for c in exact.chips], 1.0)
    assert np.allclose(exact.spread, 0.0, atol=1e-6)
    shifted = evaluate_template(TEMPLATE + np.array([4.0, 0.0]), landmarks, transforms)
    assert np.allclose(shifted.offset, 4.0) and np.allclose([c.shift for c in shifted.chips], 4.0)
    assert np.allclose([c.rotation for c in shifted.chips], 0.0, atol=1e-9)
    assert shifted.fit_residual.max() < 1e-6  # the points still fit, only elsewhere
    bigger = compare_chip(landmarks[0], transforms[0], (TEMPLATE - 74.5) * 1.1 + 74.5, CHIP)
    assert bigger.scale == pytest.approx(1.1, abs=1e-5) and bigger.shift < 1e-4


# --- the registry's template on real faces ---------------------------------------------


def test_our_chips_resemble_dlibs(
    both_found: list[tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float64]]],
    dlib: DlibPipeline,
    embedder: Embedder,
) -> None:
    """Every face in the photos: the chip align_faces cuts with the registry's template
    is close to dlib's chip of that face, in pixels and in embedding."""
    assert len(both_found) >= 9
    ours = np.stack([align_faces(img, pts[None], TEMPLATE, CHIP)[0] for img, pts, _ in both_found])
    theirs = np.stack([dlib.chips(img, box[None])[0] for img, _, box in both_found])
    difference = np.abs(ours.astype(float) - theirs).mean(axis=(1, 2, 3))
    # two different people's dlib chips differ by 45-65 grey levels
    strangers = np.abs(theirs[0].astype(float) - theirs[2]).mean()
    assert difference.max() < 36 < strangers
    assert difference.mean() < 26
    cosine = np.sum(embedder.embed(ours) * embedder.embed(theirs), axis=1)
    assert cosine.min() > 0.98, cosine


def test_one_threshold_tells_obama_from_biden(
    photos: dict[str, NDArray[np.uint8]], detector: Detector, embedder: Embedder
) -> None:
    """Obama across his photos and Biden across his match; no two different people
    score as high as the least similar same-person pair."""
    people: list[tuple[str, NDArray[np.float32]]] = []

    def add(name: str, *who: str) -> None:
        faces = detector.detect(photos[name])
        largest = faces[np.argsort(-faces.area)[: len(who)]]
        left_to_right = largest[np.argsort(largest.xyxy[:, 0])]
        assert len(left_to_right) == len(who), name
        chips = align_faces(photos[name], left_to_right.landmarks, TEMPLATE, CHIP)
        people.extend(zip(who, embedder.embed(chips), strict=True))

    add("obama.jpg", "obama")
    add("obama2.jpg", "obama")
    add("biden.jpg", "biden")
    add("two_people.jpg", "obama", "biden")
    add("obama_and_biden.jpg", "biden", "obama")  # and a child, smaller: not taken
    add("lin-manuel-miranda.png", "miranda")
    add("alex-lacamoire.png", "lacamoire")
    names = np.array([n for n, _ in people])
    similarity = np.stack([v for _, v in people]) @ np.stack([v for _, v in people]).T
    upper = np.triu(np.ones_like(similarity, bool), 1)
    same = (names[:, None] == names[None, :]) & upper
    different = (names[:, None] != names[None, :]) & upper
    assert same.sum() == 9 and different.sum() == 27
    assert similarity[same].min() > similarity[different].max() + 0.02


def test_dlib_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, dlib_files: tuple[Path, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(ModelError, match="pip install dlib-bin"):
        DlibPipeline(*dlib_files)
