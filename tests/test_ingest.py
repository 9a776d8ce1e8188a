"""Photos into samples with real YuNet on the shared photos, and every way a photo is
refused: not an image, empty, huge, no face, several faces, too small, too blurred,
a duplicate."""

from __future__ import annotations

import importlib
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
from enroll_support import clip_frames
from PIL import Image

from enrollment.ingest import IngestPolicy, Outcome, import_folder, ingest_face, ingest_photo
from enrollment.quality import frontalness, measure_quality
from enrollment.store import EnrollmentStore
from facecore.detector import Detector
from facecore.errors import SourceError

SharedFile = Callable[[str], Path]


@pytest.fixture(scope="module")
def detector(yunet_path: Path) -> Detector:
    return Detector(yunet_path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EnrollmentStore]:
    with EnrollmentStore(tmp_path / "enrollment") as opened:
        yield opened


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that holds no pixels at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "samples").rglob("*") if p.is_file())


def test_import_shared_people_then_remove_one_and_add_back(
    store: EnrollmentStore, detector: Detector, shared_dir: Path
) -> None:
    people_dir = shared_dir / "people"
    results = import_folder(store, detector, people_dir, progress=False)
    assert [(Path(r.path).name, r.accepted, r.outcome) for r in results] == [
        ("alex-lacamoire.png", True, Outcome.ACCEPTED),
        ("obama.jpg", True, Outcome.ACCEPTED),
        ("obama2.jpg", True, Outcome.ACCEPTED),
        ("biden.jpg", True, Outcome.ACCEPTED),
        ("lin-manuel-miranda.png", True, Outcome.ACCEPTED),
    ]
    people = {p.name: p.sample_count for p in store.list_people()}
    assert people == {
        "Alex Lacamoire": 1, "Barack Obama": 2, "Joe Biden": 1, "Lin Manuel Miranda": 1,
    }
    for sample in store.samples():
        assert sample.source == "folder"
        crop = store.load_crop(sample)
        height, width = crop.shape[:2]
        assert abs(height - width) <= 0.25 * max(height, width)  # square but for image edges
        # the stored landmarks are where YuNet finds the face again in the stored crop
        again = detector.detect(crop).largest()
        assert len(again) == 1
        eye_distance = np.linalg.norm(sample.landmarks[1] - sample.landmarks[0])
        error = np.linalg.norm(again.landmarks[0] - sample.landmarks, axis=1).max()
        assert error < 0.25 * eye_distance, (sample.path, error, eye_distance)  # YuNet jitter
        assert sample.quality.face_px >= 150 and sample.quality.sharpness > 100

    biden = store.find_person("Joe Biden")
    biden_files = [s.path for s in store.samples(biden.id)]
    store.remove_person(biden.id)
    assert not any(p.exists() for p in biden_files)
    assert len(_files(store.db.root)) == 4

    again = import_folder(store, detector, people_dir, progress=False)
    assert {Path(r.path).name: r.outcome for r in again} == {
        "alex-lacamoire.png": Outcome.DUPLICATE,
        "obama.jpg": Outcome.DUPLICATE,
        "obama2.jpg": Outcome.DUPLICATE,
        "biden.jpg": Outcome.ACCEPTED,
        "lin-manuel-miranda.png": Outcome.DUPLICATE,
    }
    returned = store.find_person("joe biden")
    assert returned.id != biden.id and returned.sample_count == 1
    assert len(store.list_people()) == 4 and len(_files(store.db.root)) == 5


def test_bad_and_good_inputs(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile, tmp_path: Path
) -> None:
    obama = cv2.imread(str(shared_file("media/obama.jpg")))
    biden = cv2.imread(str(shared_file("media/biden.jpg")))
    face_px = 282  # Obama's face in obama.jpg
    # Biden pasted small into Obama's photo: two faces, one clearly the largest
    composite = obama.copy()
    small_biden = cv2.resize(biden, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    composite[-small_biden.shape[0]:, : small_biden.shape[1]] = small_biden
    gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
    # Lin-Manuel Miranda close up in profile, turned right away from the camera
    (profile,) = clip_frames(shared_file("media/short_hamilton_clip.mp4"), range(25, 26))
    files = {
        "notes.jpg": b"this is a text file, whatever its name says\n" * 20,
        "empty.png": b"",
        "huge.png": _png_header(8000, 6000),  # 48 MP: refused from its header alone
        "enormous.png": _png_header(100_000, 100_000),  # past Pillow's own limits:
        "large.png": _png_header(13_000, 13_000),  # refused in the same words
        "truncated.jpg": shared_file("media/obama2.jpg").read_bytes()[:300],
        "obama_png.jpg": cv2.imencode(".png", obama)[1].tobytes(),  # a PNG named .jpg
        "gradient.png": cv2.imencode(".png", gradient)[1].tobytes(),
        "background.png": cv2.imencode(".png", obama[:150, :150])[1].tobytes(),
        "two_people.jpg": shared_file("media/two_people.jpg").read_bytes(),
        "three.jpg": shared_file("media/obama_and_biden.jpg").read_bytes(),
        "composite.jpg": cv2.imencode(".jpg", composite, [cv2.IMWRITE_JPEG_QUALITY, 95])[1],
        "tiny.png": cv2.imencode(
            ".png", cv2.resize(obama, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA)
        )[1].tobytes(),
        "blurred.jpg": cv2.imencode(".jpg", cv2.GaussianBlur(obama, (0, 0), 4 * face_px / 112))[1],
        "profile.png": cv2.imencode(".png", profile)[1],
        "thumbnail.png": cv2.imencode(".png", cv2.resize(obama, (40, 30)))[1],
    }
    expected = {
        "notes.jpg": (Outcome.UNREADABLE, "unreadable file"),
        "empty.png": (Outcome.EMPTY_FILE, "empty file"),
        "huge.png": (Outcome.IMAGE_TOO_LARGE, "8000x6000 = 48 MP, limit 40 MP"),
        "enormous.png": (Outcome.IMAGE_TOO_LARGE, "100000x100000 = 10000 MP, limit 40 MP"),
        "large.png": (Outcome.IMAGE_TOO_LARGE, "13000x13000 = 169 MP, limit 40 MP"),
        "truncated.jpg": (Outcome.UNREADABLE, "unreadable file"),
        "obama_png.jpg": (Outcome.ACCEPTED, "one face"),
        "gradient.png": (Outcome.NO_FACE, "no face"),
        "background.png": (Outcome.NO_FACE, "no face"),
        "two_people.jpg": (Outcome.SEVERAL_FACES, "2 faces and none clearly the largest"),
        "three.jpg": (Outcome.SEVERAL_FACES, "3 faces and none clearly the largest"),
        "composite.jpg": (Outcome.ACCEPTED, "largest of 2 faces taken"),
        "tiny.png": (Outcome.FACE_TOO_SMALL, "face too small"),
        "blurred.jpg": (Outcome.TOO_BLURRED, "too blurred"),
        "profile.png": (Outcome.TURNED_AWAY, "face turned too far from the camera"),
        # it said "no face found"
        "thumbnail.png": (Outcome.FACE_TOO_SMALL, "image too small (40x30): a face must be"),
    }
    person = store.add_person("Barack Obama")
    for name, data in files.items():
        (tmp_path / name).write_bytes(bytes(data))
    for name in files:
        revision = store.revision()
        result = ingest_photo(store, detector, person.id, tmp_path / name, "photo")
        outcome, reason = expected[name]
        assert (result.outcome, result.accepted) == (outcome, outcome == Outcome.ACCEPTED), (
            name, result,
        )
        assert reason in result.reason, (name, result.reason)
        assert result.path == str(tmp_path / name)
        if result.accepted:
            assert result.sample_id is not None and store.revision() == revision + 1
        else:
            assert result.sample_id is None and store.revision() == revision
    assert len(_files(store.db.root)) == 2  # the two accepted photos, nothing else

    # the same photo again, as uploaded bytes: a duplicate, named in the result
    again = ingest_photo(
        store, detector, person.id, files["obama_png.jpg"], "photo", name="upload.jpg"
    )
    assert again.outcome == Outcome.DUPLICATE and again.path == "upload.jpg"
    assert "Barack Obama" in again.reason
    missing = ingest_photo(store, detector, person.id, tmp_path / "missing.jpg", "photo")
    assert missing.outcome == Outcome.UNREADABLE and "No such file" in missing.reason


def test_policy_and_large_faces_are_stored_smaller(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile
) -> None:
    person = store.add_person("Joe Biden")
    path = shared_file("media/biden.jpg")  # a 338 px face
    strict = IngestPolicy(min_face_px=400)
    refused = ingest_photo(store, detector, person.id, path, "photo", policy=strict)
    assert refused.outcome == Outcome.FACE_TOO_SMALL
    small = IngestPolicy(stored_face_px=100)
    result = ingest_photo(store, detector, person.id, path, "photo", policy=small)
    assert result.accepted
    [sample] = store.samples(person.id)
    crop = store.load_crop(sample)
    assert max(crop.shape[:2]) < 2.5 * 100  # face 100 px plus 0.5 margin each side
    again = detector.detect(crop).largest()
    assert len(again) == 1
    assert np.abs(again.landmarks[0] - sample.landmarks).max() < 5.0


def test_a_phone_photo_of_more_megapixels_than_the_limit_is_taken_scaled_down(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile
) -> None:
    # a 48 MP phone photo (8000x6000), held sideways with an EXIF orientation, was
    # refused as "image too large (6000x8000 = 48 MP, limit 40 MP)"; a JPEG is decoded
    # at a fraction of its size instead (a PNG of those pixels is still refused, above)
    obama = cv2.imread(str(shared_file("media/obama.jpg")))
    photo = np.full((6000, 8000, 3), 90, np.uint8)
    big = cv2.resize(obama, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    photo[1000 : 1000 + big.shape[0], 2000 : 2000 + big.shape[1]] = big
    upright = Image.fromarray(photo[:, :, ::-1]).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    stored = io.BytesIO()
    upright.save(stored, "JPEG", quality=85, exif=exif)
    person = store.add_person("Barack Obama")
    result = ingest_photo(store, detector, person.id, stored.getvalue(), "photo", name="48mp.jpg")
    assert result.accepted and result.outcome == Outcome.ACCEPTED, result
    [sample] = store.samples(person.id)
    assert sample.quality.frontalness > 0.5  # the face upright, not on its side
    policy = IngestPolicy(max_pixels=500_000)  # 48 MP / 64 is still 0.75 MP
    refused = ingest_photo(store, detector, person.id, stored.getvalue(), "photo", policy=policy)
    assert refused.outcome == Outcome.IMAGE_TOO_LARGE, refused


@pytest.mark.parametrize("kind", ["HEIF", "AVIF"])
def test_iphone_heif_and_sideways_avif_photos_are_enrolled_upright(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile, kind: str
) -> None:
    # an iPhone's HEIC photo was "unreadable file (not an image, or in a format not
    # supported)"; an AVIF held sideways with an EXIF orientation was decoded on its
    # side by OpenCV, and refused as "no face found". (A HEIF's rotation is a box of
    # its own, which libheif applies; pillow-heif writes none, so it is saved upright.)
    pillow_heif.register_heif_opener()  # to save one
    obama = Image.open(shared_file("media/obama.jpg")).convert("RGB")
    stored = io.BytesIO()
    if kind == "AVIF":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to show
        obama.rotate(90, expand=True).save(stored, kind, exif=exif)
    else:
        obama.save(stored, kind)
    person = store.add_person("Barack Obama")
    result = ingest_photo(store, detector, person.id, stored.getvalue(), "photo",
                          name=f"IMG_0001.{kind.lower()}")
    assert result.accepted, result
    [sample] = store.samples(person.id)
    assert sample.quality.frontalness > 0.5  # the face upright, not on its side


def test_import_folder_reports_stray_files_and_drops_people_without_photos(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile, tmp_path: Path
) -> None:
    folder = tmp_path / "people"
    (folder / "nobody_here").mkdir(parents=True)
    (folder / "nobody_here" / "scan.jpg").write_text("no photo")
    (folder / "Ada_Lovelace").mkdir()
    (folder / "Ada_Lovelace" / "ada.jpg").write_bytes(shared_file("media/obama.jpg").read_bytes())
    (folder / "Ada_Lovelace" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "Ada_Lovelace" / "notes.txt").write_text("taken in 1840")
    (folder / "stray.jpg").write_bytes(b"")
    (folder / "README").write_text("a data set")
    results = import_folder(store, detector, folder, progress=False)
    assert {Path(r.path).name: r.outcome for r in results} == {
        "README": Outcome.NOT_AN_IMAGE,  # by its name: no failure
        "stray.jpg": Outcome.NOT_IN_PERSON_FOLDER,
        "ada.jpg": Outcome.ACCEPTED,
        "notes.txt": Outcome.NOT_AN_IMAGE,
        "scan.jpg": Outcome.UNREADABLE,  # an image's name: judged by its content
        "nobody_here": Outcome.FOLDER_REJECTED,
    }
    assert results[-1].reason == "no photo was accepted: Nobody Here was not enrolled"
    assert [p.name for p in store.list_people()] == ["Ada Lovelace"]  # names keep their case
    with pytest.raises(SourceError):
        import_folder(store, detector, folder / "stray.jpg", progress=False)


def test_import_folder_reports_what_it_does_not_read_and_imports_the_rest(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile, tmp_path: Path
) -> None:
    folder = tmp_path / "people"
    ada = folder / "ada_lovelace"
    (ada / "nested").mkdir(parents=True)
    (ada / "1.jpg").write_bytes(shared_file("media/obama.jpg").read_bytes())
    (ada / "nested" / "2.jpg").write_bytes(shared_file("media/obama2.jpg").read_bytes())
    (ada / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (ada / "loop.jpg").symlink_to(ada / "loop.jpg")
    (ada / "up").symlink_to(folder)  # a link back up the tree: not followed
    os.mkfifo(ada / "pipe.jpg")  # reading it would wait forever
    (folder / "loop").symlink_to(folder / "loop")
    for name in ("Ana\u202eLopez", "___", "0123456789abcdef", "grace_hopper"):
        (folder / name).mkdir()
        (folder / name / "g.jpg").write_bytes(shared_file("media/biden.jpg").read_bytes())
    results = import_folder(store, detector, folder, progress=False)
    found = {Path(r.path).relative_to(folder).as_posix(): r for r in results}
    assert {path: r.outcome for path, r in found.items()} == {
        "loop": Outcome.BROKEN_LINK,
        "Ana\u202eLopez": Outcome.FOLDER_REJECTED,
        "___": Outcome.FOLDER_REJECTED,
        "0123456789abcdef": Outcome.FOLDER_REJECTED,
        "ada_lovelace/gone.jpg": Outcome.BROKEN_LINK,
        "ada_lovelace/loop.jpg": Outcome.BROKEN_LINK,
        "ada_lovelace/pipe.jpg": Outcome.UNREADABLE,
        "ada_lovelace/nested": Outcome.NESTED_FOLDER,
        "ada_lovelace/up": Outcome.NESTED_FOLDER,
        "ada_lovelace/1.jpg": Outcome.ACCEPTED,
        "grace_hopper/g.jpg": Outcome.ACCEPTED,
    }
    reasons = {path: r.reason for path, r in found.items()}
    assert reasons["ada_lovelace/gone.jpg"] == "broken link (No such file or directory), skipped"
    assert "Too many levels of symbolic links" in reasons["ada_lovelace/loop.jpg"]
    assert "folder inside a person's folder is not read" in reasons["ada_lovelace/nested"]
    assert "not a regular file" in reasons["ada_lovelace/pipe.jpg"]
    assert "'Ana\\u202eLopez' holds U+202E" in reasons["Ana\u202eLopez"]
    assert "cannot be empty" in reasons["___"]
    assert "shape of a person id" in reasons["0123456789abcdef"]
    assert {p.name: p.sample_count for p in store.list_people()} == {
        "Ada Lovelace": 1, "Grace Hopper": 1,
    }


def test_quality_figures(detector: Detector, shared_file: SharedFile) -> None:
    image = cv2.imread(str(shared_file("media/obama.jpg")))
    face = detector.detect(image).largest()
    sharp = measure_quality(image, face.xyxy[0], face.landmarks[0])
    blurred = measure_quality(cv2.GaussianBlur(image, (0, 0), 5), face.xyxy[0], face.landmarks[0])
    assert 250 < sharp.face_px < 320
    assert sharp.sharpness > 4 * blurred.sharpness
    assert 0.8 < sharp.frontalness <= 1.0 and 0 < sharp.score <= 1
    # the same face turned: the nose moved onto an eye's line
    turned = face.landmarks[0].copy()
    turned[2, 0] = turned[1, 0]
    assert frontalness(turned) < 0.5 * sharp.frontalness


def test_ingest_face_from_a_video_frame(
    store: EnrollmentStore, detector: Detector, shared_file: SharedFile
) -> None:
    capture = cv2.VideoCapture(str(shared_file("media/short_hamilton_clip.mp4")))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok
    person = store.add_person("Lin-Manuel Miranda")
    face = detector.detect(frame).largest()
    assert len(face) == 1
    args = (store, person.id, frame, face.xyxy[0], face.landmarks[0], "live")
    lenient = IngestPolicy(min_face_px=10, min_sharpness=0)
    taken = ingest_face(*args, policy=lenient)
    assert taken.accepted and taken.path == "(camera frame)"
    [sample] = store.samples(person.id)
    assert sample.source == "live" and sample.id == taken.sample_id
    assert ingest_face(*args, policy=lenient).outcome == Outcome.DUPLICATE
    strict = IngestPolicy(min_face_px=face.area[0] ** 0.5 + 1)
    assert ingest_face(*args, policy=strict).outcome == Outcome.FACE_TOO_SMALL


def test_exported_members() -> None:
    for name in ("cli", "database", "errors", "files", "ingest", "names", "quality", "store"):
        module = importlib.import_module(f"enrollment.{name}")
        assert all(hasattr(module, member) for member in module.__all__), name
