"""The "dlib_5" front end: the .dat reader and numpy port of dlib's 5-point shape
predictor, dlib's chip geometry, the landmark-derived box and the front end recorded
in (and carried by) bundles, checked against dlib-bin (reference only) on the real
model file and the shared photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecore.alignment import crop_with_margin, dlib_chip_transform, warp_chip
from facecore.bundle import LANDMARKS_FILE, BundleManifest, load_bundle, write_bundle
from facecore.detector import Detector
from facecore.embedder import Preprocessing
from facecore.errors import BundleError, ModelLoadError
from facecore.frontend import FrontEnd, check_front_end
from facecore.landmarks import ShapePredictor, landmark_box
from facecore.registry import DLIB_LANDMARKS, MODELS, get_spec, resolve_model
from trainer.dlib.landmarks import parse_shape_predictor, prepare_shape_predictor
from trainer.dlib.reference import DlibPipeline, match_boxes
from trainer.errors import DlibFormatError

PHOTOS = (
    "obama.jpg",
    "obama2.jpg",
    "biden.jpg",
    "two_people.jpg",
    "obama_and_biden.jpg",
    "lin-manuel-miranda.png",
    "alex-lacamoire.png",
)
SPEC = MODELS["dlib_resnet_v1"]


@pytest.fixture(scope="module")
def dat_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shape_predictor_5_face_landmarks.dat, found and checksum-verified by the registry."""
    return resolve_model(
        get_spec("dlib_shape_predictor_5_dat"),
        explicit=None,
        models_dir=None,
        cache_dir=tmp_path_factory.mktemp("cache"),
        download=False,
    )


@pytest.fixture(scope="module")
def npz_path(dat_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("models") / MODELS[DLIB_LANDMARKS].filename
    return prepare_shape_predictor(dat_path, target)


@pytest.fixture(scope="module")
def predictor(npz_path: Path) -> ShapePredictor:
    return ShapePredictor.load(npz_path)


@pytest.fixture(scope="module")
def dlib(dat_path: Path) -> DlibPipeline:
    pytest.importorskip("dlib")
    resnet = resolve_model(
        get_spec("dlib_resnet_v1_dat"),
        explicit=None,
        models_dir=None,
        cache_dir=dat_path.parent,
        download=False,
    )
    return DlibPipeline(dat_path, resnet)


@pytest.fixture(scope="module")
def photos(shared_dir: Path) -> dict[str, np.ndarray]:
    return {name: cv2.imread(str(shared_dir / "media" / name)) for name in PHOTOS}


def test_the_real_model_file_is_read(npz_path: Path, predictor: ShapePredictor) -> None:
    # dlib's 5-point model: 15 cascade levels of 500 depth-4 trees over 800 pixels
    assert predictor.initial_shape.shape == (5, 2)
    assert predictor.split_thresh.shape == (15, 500, 15)
    assert predictor.leaf_values.shape == (15, 500, 16, 5, 2)
    assert predictor.anchor.shape == (15, 800) and predictor.deltas.shape == (15, 800, 2)
    assert predictor.depth == 4
    assert int(predictor.split_pixels.max()) < 800 and int(predictor.anchor.max()) < 5
    # the mean shape lies inside the unit box: the eye corners above the nose
    assert ((predictor.initial_shape > 0) & (predictor.initial_shape < 1)).all()
    assert predictor.initial_shape[:4, 1].max() < predictor.initial_shape[4, 1]
    # a second prepare finds the file and does not convert again
    before = npz_path.stat().st_mtime_ns
    assert prepare_shape_predictor(Path("/nonexistent.dat"), npz_path) == npz_path
    assert npz_path.stat().st_mtime_ns == before


def test_a_truncated_file_is_a_clear_error(dat_path: Path, tmp_path: Path) -> None:
    data = dat_path.read_bytes()
    cut = tmp_path / "shape_predictor_5_face_landmarks.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match=r"shape_predictor_5_face_landmarks\.dat.*truncated"):
        prepare_shape_predictor(cut, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
    with pytest.raises(DlibFormatError, match="bytes left"):
        parse_shape_predictor(data + b"\x00")
    with pytest.raises(ModelLoadError, match="landmark model"):
        ShapePredictor.load(cut)


def test_landmarks_equal_dlibs_on_the_photos(
    predictor: ShapePredictor, dlib: DlibPipeline, photos: dict[str, np.ndarray]
) -> None:
    """For dlib's own HOG boxes, the port finds exactly dlib's (integer) points."""
    faces = 0
    for image in photos.values():
        boxes = dlib.detect(image)
        ours = predictor.predict(image, boxes)
        assert np.array_equal(ours, dlib.landmarks(image, boxes))
        faces += len(boxes)
    assert faces == 10
    # grey images (ORL's) and a box partly outside the image work the same way
    grey = cv2.cvtColor(photos["obama.jpg"], cv2.COLOR_BGR2GRAY)
    box = dlib.detect(photos["obama.jpg"])
    box[:, :2] -= box[:, 2:] - box[:, :2]  # twice as big, reaching past the edge
    expected = dlib.landmarks(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), box)
    assert np.array_equal(predictor.predict(grey, box), expected)


def test_chip_equals_dlibs_get_face_chip(
    predictor: ShapePredictor, dlib: DlibPipeline, photos: dict[str, np.ndarray]
) -> None:
    for name, image in photos.items():
        boxes = dlib.detect(image)
        theirs = dlib.chips(image, boxes)
        for box, shape, chip in zip(boxes, predictor.predict(image, boxes), theirs, strict=True):
            matrix = dlib_chip_transform(shape, 150, 0.25)
            assert np.allclose(matrix, dlib.chip_geometry(image, box).transform(), atol=1e-6)
            ours = warp_chip(image, matrix, (150, 150))
            # dlib truncates its bilinear samples and shrinks big faces its own way
            difference = np.abs(ours.astype(np.int16) - chip).mean()
            assert difference < 2.5, (name, difference)
    # another person's chip is far from it
    obama, biden = (dlib.chips(photos[n], dlib.detect(photos[n]))[0] for n in PHOTOS[:3:2])
    assert np.abs(obama.astype(np.int16) - biden).mean() > 20


def test_landmark_box_stands_in_for_dlibs_box(
    predictor: ShapePredictor,
    dlib: DlibPipeline,
    photos: dict[str, np.ndarray],
    yunet_path: Path,
) -> None:
    """The box derived from YuNet's landmarks gives (nearly) the landmarks dlib's own
    detector box gives."""
    detector = Detector(yunet_path)
    gaps = []
    for name, image in photos.items():
        faces = detector.detect(image)
        boxes = dlib.detect(image)
        matched = match_boxes(boxes, faces.xyxy)
        assert (matched >= 0).all(), name
        ours = predictor.predict(image, landmark_box(faces.landmarks[matched]))
        theirs = predictor.predict(image, boxes)
        eyes = np.linalg.norm(theirs[:, :2].mean(1) - theirs[:, 2:4].mean(1), axis=1)
        gaps.extend(np.sqrt(((ours - theirs) ** 2).sum(2).mean(1)) / eyes)
    # RMS distance in eye distances (the smallest face's points are 1 px apart in 20)
    assert len(gaps) == 10 and np.median(gaps) < 0.03 and max(gaps) < 0.08, gaps


def test_front_end_cuts_the_same_chip_from_an_enrollment_crop(
    npz_path: Path, photos: dict[str, np.ndarray], yunet_path: Path
) -> None:
    front_end = FrontEnd.load("dlib_5", SPEC.template, SPEC.input_size, npz_path)
    image = photos["biden.jpg"]
    face = Detector(yunet_path).detect(image).largest()
    crop, points = crop_with_margin(image, face.xyxy[0], face.landmarks[0])
    from_crop = front_end.chips(crop, points[None])
    from_image = front_end.chips(image, face.landmarks)
    assert from_crop.shape == (1, 150, 150, 3)
    assert np.abs(from_crop.astype(np.int16) - from_image).mean() < 1.0
    template = FrontEnd.load("yunet_template", SPEC.template, SPEC.input_size)
    assert not front_end.same_chips(template) and front_end.same_chips(front_end)
    assert np.abs(template.chips(image, face.landmarks).astype(np.int16) - from_image).mean() > 3


def _manifest(**fields: object) -> BundleManifest:
    base = BundleManifest(
        version=3,
        created="2026-01-01T00:00:00+00:00",
        store_revision=0,
        backbone_name="dlib_resnet_v1",
        backbone_sha256="",
        preprocessing=Preprocessing.of_model(SPEC),
        template=SPEC.template or (),
        head_kind="prototypes",
        head_sha256="",
        labels=(),
        person_ids=(),
        threshold=0.9,
    )
    return dataclasses.replace(base, **fields)


def test_bundles_record_and_carry_their_front_end(tmp_path: Path, npz_path: Path) -> None:
    backbone = tmp_path / "backbone.onnx"
    backbone.write_bytes(b"not a network: the manifest checks come first")
    weights = np.zeros((0, 128), np.float32)
    bundle = write_bundle(
        tmp_path / "v3",
        backbone=backbone,
        weights=weights,
        manifest=_manifest(front_end="dlib_5"),
        landmarks=npz_path,
    )
    assert (bundle.path / LANDMARKS_FILE).is_file()
    loaded = load_bundle(bundle.path)
    assert loaded.manifest.front_end == "dlib_5" and loaded.manifest.landmarks_sha256
    front_end = FrontEnd.of_bundle(loaded)
    assert front_end.kind == "dlib_5" and front_end.predictor is not None
    # a bundle from before front ends were recorded: cut with the template
    old = tmp_path / "old.json"
    old.write_text(_manifest().to_json().replace('"front_end": "yunet_template",', ""))
    assert '"front_end"' not in old.read_text()
    assert BundleManifest.from_json(old.read_text()).front_end == "yunet_template"
    # ...which the dlib ResNet no longer wants: refused, saying what to do
    stale = write_bundle(tmp_path / "v2", backbone=backbone, weights=weights, manifest=_manifest())
    with pytest.raises(BundleError, match=r"'yunet_template' front end.*'dlib_5'.*rebuild"):
        FrontEnd.of_bundle(stale)
    with pytest.raises(BundleError, match="holds no landmark model"):
        check_front_end(_manifest(front_end="dlib_5"))
    # a landmark file that is not the one the manifest names is caught on load
    (bundle.path / LANDMARKS_FILE).unlink()
    (bundle.path / LANDMARKS_FILE).write_bytes(b"other")
    with pytest.raises(BundleError, match=LANDMARKS_FILE):
        load_bundle(bundle.path)
