"""Detection and alignment on real photos."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecore.alignment import align_faces, crop_with_margin, similarity_transform
from facecore.detector import BACKENDS, Detector
from facecore.errors import ModelLoadError
from facecore.faces import Faces

ARCFACE_112 = np.array(
    [
        (38.2946, 51.6963),
        (73.5318, 51.5014),
        (56.0252, 71.7366),
        (41.5493, 92.3655),
        (70.7299, 92.2041),
    ],
    np.float32,
)


@pytest.fixture(scope="module")
def detector(yunet_path: Path) -> Detector:
    return Detector(yunet_path, size=640)


def _read(shared_dir: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(shared_dir / "media" / name))
    assert image is not None, name
    return image


def test_two_people_found_left_to_right(detector: Detector, shared_dir: Path) -> None:
    image = _read(shared_dir, "two_people.jpg")
    faces = detector.detect(image)
    assert len(faces) == 2
    left, right = np.argsort(faces.xyxy[:, 0])
    # Boxes are in the original frame's pixels although YuNet ran at 640 wide.
    assert faces.xyxy[right, 0] > image.shape[1] / 2 > faces.xyxy[left, 2]
    assert (faces.score > 0.6).all()
    # Landmarks lie inside their boxes; the right eye (subject's) is left of the left eye.
    for i in range(2):
        x0, y0, x1, y1 = faces.xyxy[i]
        pts = faces.landmarks[i]
        assert ((pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)).all()
        assert pts[0, 0] < pts[1, 0]


def test_detection_size_does_not_move_faces(yunet_path: Path, shared_dir: Path) -> None:
    image = _read(shared_dir, "obama.jpg")
    small = Detector(yunet_path, size=320).detect(image).largest()
    full = Detector(yunet_path, size=2000).detect(image).largest()
    face_width = full.xyxy[0, 2] - full.xyxy[0, 0]
    assert np.abs(small.landmarks - full.landmarks).max() < 0.08 * face_width


def _clip_frames(shared_dir: Path, step: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(shared_dir / "media" / "short_hamilton_clip.mp4"))
    frames = []
    for index in range(275):
        ok, frame = capture.read()
        assert ok
        if index % step == 0:
            frames.append(frame)
    capture.release()
    return frames


def test_onnxruntime_and_opencv_back_ends_find_the_same_faces(
    detector: Detector, shared_dir: Path
) -> None:
    onnx = Detector(detector.model_path, size=640, backend="onnxruntime", device="cpu")
    opencv = Detector(detector.model_path, size=640, backend="opencv")
    photos = ["two_people.jpg", "obama_and_biden.jpg", "obama.jpg", "lin-manuel-miranda.png"]
    images = [_read(shared_dir, name) for name in photos] + _clip_frames(shared_dir, step=10)
    compared = 0
    for image in images:
        ours, theirs = onnx.detect(image), opencv.detect(image)
        assert len(ours) == len(theirs)
        order_ours, order_theirs = np.lexsort(ours.xyxy[:, :2].T), np.lexsort(theirs.xyxy[:, :2].T)
        assert np.abs(ours.xyxy[order_ours] - theirs.xyxy[order_theirs]).max(initial=0) < 0.01
        assert np.abs(ours.landmarks[order_ours] - theirs.landmarks[order_theirs]).max(
            initial=0
        ) < 0.01
        assert np.abs(ours.score[order_ours] - theirs.score[order_theirs]).max(initial=0) < 1e-4
        compared += len(ours)
    assert compared > 60  # the clip's audience shots hold many faces
    with pytest.raises(ValueError, match="backend must be one of"):
        Detector(detector.model_path, backend="dlib")
    assert detector.backend == "onnxruntime"  # the default


def test_no_face_is_empty(detector: Detector) -> None:
    gradient = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    faces = detector.detect(cv2.cvtColor(gradient, cv2.COLOR_GRAY2BGR))
    assert len(faces) == 0
    assert faces.xyxy.shape == (0, 4)


def test_bad_frame_and_bad_model(detector: Detector, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        detector.detect(np.zeros((10, 10), np.uint8))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    for backend in BACKENDS:
        with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
            Detector(broken, backend=backend)


def test_detector_from_several_threads(detector: Detector, shared_dir: Path) -> None:
    images = [_read(shared_dir, n) for n in ("two_people.jpg", "obama.jpg", "biden.jpg")]
    expected = [len(detector.detect(im)) for im in images]
    results: list[list[int]] = []

    def work() -> None:
        results.append([len(detector.detect(im)) for im in images * 3])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected * 3] * 4


def test_faces_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"landmarks must have shape \(2, 5, 2\)"):
        Faces(
            np.zeros((2, 4), np.float32), np.zeros((2, 4, 2), np.float32), np.zeros(2, np.float32)
        )
    faces = Faces(
        np.array([[0, 0, 10, 10], [0, 0, 30, 30]], np.float32),
        np.zeros((2, 5, 2), np.float32),
        np.array([0.9, 0.5], np.float32),
    )
    assert len(faces[faces.score > 0.6]) == 1
    assert faces.largest().xyxy[0, 2] == 30


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = np.deg2rad(20), 1.7, np.array([5.0, -3.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    matrix = similarity_transform(src, src @ rotation.T + shift)
    assert np.allclose(matrix[:, :2], rotation) and np.allclose(matrix[:, 2], shift)


def test_aligned_chips_put_landmarks_on_the_template(detector: Detector, shared_dir: Path) -> None:
    image = _read(shared_dir, "two_people.jpg")
    faces = detector.detect(image)
    chips = align_faces(image, faces.landmarks, ARCFACE_112, (112, 112))
    assert chips.shape == (2, 112, 112, 3) and chips.dtype == np.uint8
    # Detecting again on a chip (padded, so YuNet sees context) finds the eyes near the template.
    for chip in chips:
        padded = cv2.copyMakeBorder(chip, 56, 56, 56, 56, cv2.BORDER_CONSTANT)
        again = Detector(detector.model_path, size=224).detect(padded).largest()
        assert len(again) == 1
        eyes = again.landmarks[0, :2] - 56
        assert np.abs(eyes - ARCFACE_112[:2]).max() < 6


def test_crop_with_margin_keeps_landmarks(detector: Detector, shared_dir: Path) -> None:
    image = _read(shared_dir, "biden.jpg")
    face = detector.detect(image).largest()
    crop, points = crop_with_margin(image, face.xyxy[0], face.landmarks[0], margin=0.5)
    assert crop.shape[0] > face.xyxy[0, 3] - face.xyxy[0, 1]
    # The same face aligned from the crop or the full image gives the same chip.
    from_crop = align_faces(crop, points[None], ARCFACE_112, (112, 112))
    from_image = align_faces(image, face.landmarks, ARCFACE_112, (112, 112))
    assert np.abs(from_crop.astype(int) - from_image.astype(int)).mean() < 2.0
