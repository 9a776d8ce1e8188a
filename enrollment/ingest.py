"""Photos in, enrollment samples out, with a result for every file.

A photo is checked by its content, never by its name (only a folder import skips
files whose name says they are no photo: README, notes.txt): the header is read first (with
Pillow, which does not decode the pixels) to refuse an oversized image before it
takes memory, then OpenCV decodes it (Pillow decodes HEIF, an iPhone's photos,
through pillow-heif, and AVIF, whose EXIF orientation OpenCV ignores). Then the
face: exactly one, or one clearly the largest; big enough; sharp enough. What is
kept is a square crop with margin around the face and its 5 landmarks in the crop
(`facecore.alignment.crop_with_margin`), so any backbone can re-align it later.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from enrollment.errors import DuplicateSampleError, InvalidNameError
from enrollment.names import clean_name, folder_person_name, name_key
from enrollment.quality import measure_quality
from enrollment.store import EnrollmentStore, Quality, Sample
from facecore.alignment import crop_with_margin
from facecore.detector import Detector
from facecore.errors import SourceError
from facecore.text import listed

__all__ = [
    "DEFAULT_POLICY",
    "FOLDER_OUTCOMES",
    "IngestPolicy",
    "IngestResult",
    "Outcome",
    "import_folder",
    "ingest_face",
    "ingest_photo",
]


class Outcome(StrEnum):
    """What happened to one file; every value but ACCEPTED and NOT_AN_IMAGE is a
    rejection."""

    ACCEPTED = "accepted"
    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    UNREADABLE = "unreadable"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    FACE_TOO_SMALL = "face_too_small"
    TOO_BLURRED = "too_blurred"
    TURNED_AWAY = "turned_away"
    DUPLICATE = "duplicate"
    NOT_IN_PERSON_FOLDER = "not_in_person_folder"
    BROKEN_LINK = "broken_link"  # a symbolic link to nothing, or a loop of links
    NESTED_FOLDER = "nested_folder"  # a folder inside a person's folder: not read
    # a file whose name says that it is no photo (README, notes.txt), beside the
    # photos of a folder import: skipped, not a failure
    NOT_AN_IMAGE = "not_an_image"
    # a person's folder from which no one was enrolled: its name is not a usable
    # name, it cannot be listed, or none of its photos was accepted
    FOLDER_REJECTED = "folder_rejected"


# the outcomes of results that are about a folder, not a file
FOLDER_OUTCOMES = frozenset({Outcome.NESTED_FOLDER, Outcome.FOLDER_REJECTED})


@dataclass(frozen=True)
class IngestPolicy:
    max_bytes: int = 64 * 1024 * 1024  # a file larger than this is not read
    # width x height from the header, before decoding; a JPEG is decoded at 1/2, 1/4 or
    # 1/8 of its size to fit (libjpeg scales as it decodes), other formats are refused
    max_pixels: int = 40_000_000
    min_face_px: float = 64.0  # face box side (sqrt of its area) in the photo
    min_sharpness: float = 25.0  # Quality.sharpness; sharp photos score 75 and more
    # Quality.frontalness: below it, a profile or the back of a head, whose landmarks
    # are guesses (a three-quarter view scores about 1/3; LFW's photos 0.25 and more)
    min_frontalness: float = 0.2
    dominance: float = 2.0  # with several faces, the largest must have this x the area
    margin: float = 0.5  # crop margin on each side, in face box sizes
    stored_face_px: float = 320.0  # larger faces are scaled down to this in the crop


DEFAULT_POLICY = IngestPolicy()
# `_decode` checks the header's size against IngestPolicy.max_pixels before any pixel
# is decoded; Pillow's own check would answer first, past 89 MP (a warning) or 179 MP
# (an error), in words of its own. Nothing else in facestream opens images with Pillow.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class IngestResult:
    path: str  # the file (or the name given for uploaded bytes)
    accepted: bool
    reason: str  # for people: what was taken, or why the file was rejected
    sample_id: str | None  # the new sample when accepted
    outcome: Outcome  # the same, for programs: never match on `reason`'s text


class _Rejected(Exception):
    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def ingest_photo(
    store: EnrollmentStore,
    detector: Detector,
    person_id: str,
    image: bytes | Path | str,
    source: str,
    *,
    policy: IngestPolicy = DEFAULT_POLICY,
    name: str | None = None,
) -> IngestResult:
    """Make one sample for ``person_id`` from a photo (its bytes, or a file path).

    ``source`` is the store's sample source ("photo", "folder", "live"); ``name``
    labels uploaded bytes in the result. Every problem with the photo is a rejected
    result; a person that does not exist raises UnknownPersonError.
    """
    if isinstance(image, bytes):
        label = name or "(uploaded photo)"
    else:
        label = name or str(image)
    try:
        frame = _decode(_read(image, policy), policy)
        height, width = frame.shape[:2]
        if min(height, width) < policy.min_face_px:
            raise _Rejected(
                Outcome.FACE_TOO_SMALL,
                f"image too small ({width}x{height}): a face must be at least "
                f"{policy.min_face_px:g} px across",
            )
        faces = detector.detect(frame)
        index, note = _choose_face(faces.area, policy)
        sample = _store_face(
            store, person_id, frame, faces.xyxy[index], faces.landmarks[index], source, policy
        )
    except _Rejected as rejected:
        return IngestResult(label, False, rejected.reason, None, rejected.outcome)
    return IngestResult(label, True, note, sample.id, Outcome.ACCEPTED)


def ingest_face(
    store: EnrollmentStore,
    person_id: str,
    frame: NDArray[np.uint8],
    xyxy: NDArray[np.float32],
    landmarks: NDArray[np.float32],
    source: str,
    *,
    policy: IngestPolicy = DEFAULT_POLICY,
    name: str = "(camera frame)",
) -> IngestResult:
    """Make one sample from a face already found in a BGR ``frame`` (box [4],
    landmarks [5, 2], e.g. one row of a ``Faces``): the same size, sharpness and
    duplicate checks as a photo. For live capture, where the caller picks the face."""
    try:
        sample = _store_face(store, person_id, frame, xyxy, landmarks, source, policy)
    except _Rejected as rejected:
        return IngestResult(name, False, rejected.reason, None, rejected.outcome)
    return IngestResult(name, True, "face taken", sample.id, Outcome.ACCEPTED)


def import_folder(
    store: EnrollmentStore,
    detector: Detector,
    folder: Path,
    progress: bool = True,
    *,
    policy: IngestPolicy = DEFAULT_POLICY,
    on_result: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Enroll every photo of ``folder/<person>/``: one sub-folder per person, named
    with ``_`` for a space (`folder_person_name`). A person who exists already gets
    the new samples; one created here but left without any accepted photo is removed
    again (also when the import is interrupted), and their folder reported.
    Everything not read is reported and skipped, the import going on: files directly
    in ``folder``, a person's folder whose name is not a usable name (`clean_name`)
    or that cannot be listed, folders inside a person's folder, broken links (and
    link loops), files whose name says they are no photo (`NOT_AN_IMAGE`). Hidden
    files (``.DS_Store``) are ignored. ``on_result`` gets each result as soon as it
    is known."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"cannot import {folder}: it is not a folder")
    results: list[IngestResult] = []

    def keep(result: IngestResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        entries, broken = _entries(folder)
    except OSError as exc:
        raise SourceError(f"cannot import {folder}: {exc.strerror}") from exc
    for result in broken:
        keep(result)
    jobs: dict[Path, tuple[str, list[Path]]] = {}
    for entry in entries:
        if not entry.is_dir():
            if _plainly_not_a_photo(entry):
                keep(_skipped(entry, Outcome.NOT_AN_IMAGE, _NOT_AN_IMAGE))
            else:
                keep(_skipped(entry, Outcome.NOT_IN_PERSON_FOLDER, _NOT_IN_FOLDER))
            continue
        try:
            name = clean_name(folder_person_name(entry.name))
            inside, problems = _entries(entry)
        except InvalidNameError as exc:
            reason = f"folder not imported, its name is not a usable person name: {exc}"
            keep(_skipped(entry, Outcome.FOLDER_REJECTED, reason))
            continue
        except OSError as exc:
            reason = f"folder not imported, it cannot be read ({exc.strerror})"
            keep(_skipped(entry, Outcome.FOLDER_REJECTED, reason))
            continue
        for result in problems:
            keep(result)
        photos = []
        for path in inside:
            if path.is_file() and _plainly_not_a_photo(path):
                keep(_skipped(path, Outcome.NOT_AN_IMAGE, _NOT_AN_IMAGE))
            elif path.is_file():
                photos.append(path)
            elif path.is_dir():
                keep(_skipped(path, Outcome.NESTED_FOLDER, _NESTED))
            else:  # reading a pipe would block the import
                keep(_skipped(path, Outcome.UNREADABLE, _NOT_A_FILE))
        if photos:
            jobs[entry] = (name, photos)
    by_name: dict[str, list[Path]] = {}
    for entry, (name, _) in jobs.items():
        by_name.setdefault(name_key(name), []).append(entry)
    for alike in (entries for entries in by_name.values() if len(entries) > 1):
        # Dave/ and dave/ (or José in two Unicode spellings) would pour two sets of
        # photos, perhaps of two people, into one person unseen
        folders = listed([ascii(entry.name) for entry in alike])
        for entry in alike:
            name, _ = jobs.pop(entry)
            reason = (f"folder not imported: the folders {folders} all name {name}; "
                      "put the photos of one person in one folder")
            keep(_skipped(entry, Outcome.FOLDER_REJECTED, reason))
    total = sum(len(photos) for _, photos in jobs.values())
    with tqdm(total=total, unit="photo", file=sys.stderr, disable=not progress) as bar:
        for person_dir, (name, photos) in jobs.items():
            bar.set_description(name)  # cleaned: no control or bidi characters
            person, created = store.get_or_add_person(name)
            try:
                for path in photos:
                    keep(ingest_photo(store, detector, person.id, path, "folder", policy=policy))
                    bar.update()
            finally:  # interrupted too: no one is left enrolled without a sample
                dropped = created and store.get_person(person.id).sample_count == 0
                if dropped:
                    store.remove_person(person.id)
            if dropped:
                reason = f"no photo was accepted: {person.name} was not enrolled"
                keep(_skipped(person_dir, Outcome.FOLDER_REJECTED, reason))
    return results


_NOT_IN_FOLDER = "not in a person's sub-folder (FOLDER/NAME/PHOTO), skipped"
_NESTED = "a folder inside a person's folder is not read (photos go in FOLDER/NAME/), skipped"
_NOT_A_FILE = "not a regular file (a pipe, socket or device), skipped"
_NOT_AN_IMAGE = "not an image, skipped"
# what data sets and folders of photos hold beside the photos; any other name, an
# image's extension or none, is judged by the content
_NOT_PHOTO_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".json", ".csv", ".tsv", ".xml",
    ".yaml", ".yml", ".ini", ".db", ".py", ".sh", ".zip", ".gz", ".tar", ".mat",
})
_NOT_PHOTO_NAMES = frozenset({"readme", "license", "licence", "copying", "authors", "notice"})


def _plainly_not_a_photo(path: Path) -> bool:
    """Whether the name says that the file is no photo (README, notes.txt)."""
    suffix = path.suffix.lower()
    return suffix in _NOT_PHOTO_SUFFIXES or (not suffix and path.name.lower() in _NOT_PHOTO_NAMES)


def _entries(folder: Path) -> tuple[list[Path], list[IngestResult]]:
    """The visible entries of ``folder`` that exist, sorted; and a result for each
    one that does not (a broken link or a loop of links). Raises OSError when the
    folder cannot be listed."""
    entries, broken = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            entry.stat()  # follows links: fails on a dangling one and on a loop
        except OSError as exc:
            if entry.is_symlink():
                reason = f"broken link ({exc.strerror}), skipped"
                broken.append(_skipped(entry, Outcome.BROKEN_LINK, reason))
            else:
                reason = f"unreadable ({exc.strerror}), skipped"
                broken.append(_skipped(entry, Outcome.UNREADABLE, reason))
            continue
        entries.append(entry)
    return entries, broken


def _skipped(path: Path, outcome: Outcome, reason: str) -> IngestResult:
    return IngestResult(str(path), False, reason, None, outcome)


def _read(image: bytes | Path | str, policy: IngestPolicy) -> bytes:
    """The file's bytes, once its size is known to be sensible."""
    try:
        size = len(image) if isinstance(image, bytes) else Path(image).stat().st_size
        if size == 0:
            raise _Rejected(Outcome.EMPTY_FILE, "empty file (0 bytes)")
        if size > policy.max_bytes:
            raise _Rejected(
                Outcome.FILE_TOO_LARGE,
                f"file too large ({size / 2**20:.0f} MB, limit {policy.max_bytes / 2**20:.0f} MB)",
            )
        return image if isinstance(image, bytes) else Path(image).read_bytes()
    except OSError as exc:
        raise _Rejected(Outcome.UNREADABLE, f"unreadable file ({exc.strerror})") from exc


def _decode(data: bytes, policy: IngestPolicy) -> NDArray[np.uint8]:
    """BGR pixels of an image file's content; the header's size is checked first."""
    pillow_heif.register_heif_opener()  # idempotent: HEIF files open in Pillow
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            kind = probe.format
            if kind in PILLOW_DECODED and width * height <= policy.max_pixels:
                return _decode_with_pillow(probe)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _Rejected(
            Outcome.UNREADABLE, "unreadable file (not an image, or in a format not supported)"
        ) from exc
    # a JPEG larger than the limit (a 48, 108 or 200 MP phone photo) is decoded at 1/2,
    # 1/4 or 1/8 of its size: libjpeg scales it as it decodes, never holding it whole
    scale = 1
    while kind == "JPEG" and scale < 8 and width * height > policy.max_pixels * scale**2:
        scale *= 2
    if width * height > policy.max_pixels * scale**2:
        raise _Rejected(
            Outcome.IMAGE_TOO_LARGE,
            f"image too large ({width}x{height} = {width * height / 1e6:.0f} MP, "
            f"limit {policy.max_pixels / 1e6:.0f} MP)",
        )
    try:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_COLOR[scale])
    except cv2.error as exc:
        raise _Rejected(Outcome.UNREADABLE, "unreadable file (damaged image)") from exc
    if frame is None or frame.size == 0:
        raise _Rejected(Outcome.UNREADABLE, "unreadable file (damaged or unsupported image)")
    return frame


def _decode_with_pillow(image: Image.Image) -> NDArray[np.uint8]:
    """BGR pixels of an opened image, decoded by Pillow and turned upright by its EXIF
    orientation."""
    try:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError) as exc:
        raise _Rejected(Outcome.UNREADABLE, "unreadable file (damaged image)") from exc
    return cv2.cvtColor(np.asarray(upright), cv2.COLOR_RGB2BGR)


# formats Pillow decodes: OpenCV cannot read HEIF and ignores AVIF's EXIF orientation
PILLOW_DECODED = frozenset({"HEIF", "AVIF"})
_REDUCED_COLOR = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _choose_face(area: NDArray[np.float32], policy: IngestPolicy) -> tuple[int, str]:
    """The index of the face to take and a note saying which; rejects ambiguity."""
    if len(area) == 0:
        raise _Rejected(Outcome.NO_FACE, "no face found")
    if len(area) == 1:
        return 0, "one face"
    order = np.argsort(-area)
    ratio = float(area[order[0]] / max(float(area[order[1]]), 1e-6))
    if ratio < policy.dominance:
        shown = math.floor(ratio * 10) / 10  # 1.96 rounded would read "2.0x, 2x needed"
        raise _Rejected(
            Outcome.SEVERAL_FACES,
            f"{len(area)} faces and none clearly the largest (the largest has {shown:.1f}x "
            f"the area of the next, {policy.dominance:g}x needed): use a photo of one person",
        )
    return int(order[0]), f"largest of {len(area)} faces taken ({ratio:.1f}x the area of the next)"


def _store_face(
    store: EnrollmentStore,
    person_id: str,
    frame: NDArray[np.uint8],
    xyxy: NDArray[np.float32],
    landmarks: NDArray[np.float32],
    source: str,
    policy: IngestPolicy,
) -> Sample:
    quality = measure_quality(frame, xyxy, landmarks)
    if quality.face_px < policy.min_face_px:
        raise _Rejected(
            Outcome.FACE_TOO_SMALL,
            f"face too small ({quality.face_px:.0f} px, at least {policy.min_face_px:g} needed)",
        )
    if quality.sharpness < policy.min_sharpness:
        raise _Rejected(
            Outcome.TOO_BLURRED,
            f"too blurred (sharpness {quality.sharpness:.0f}, at least "
            f"{policy.min_sharpness:g} needed)",
        )
    if quality.frontalness < policy.min_frontalness:
        raise _Rejected(
            Outcome.TURNED_AWAY,
            f"face turned too far from the camera (frontalness {quality.frontalness:.2f}, at "
            f"least {policy.min_frontalness:g} needed): use a photo facing the camera",
        )
    crop, points = _stored_crop(frame, xyxy, landmarks, quality, policy)
    try:
        return store.add_sample(person_id, crop, points, quality, source)
    except DuplicateSampleError as exc:
        raise _Rejected(
            Outcome.DUPLICATE,
            f"duplicate of an existing sample (sample {exc.sample_id} of {exc.person_name})",
        ) from exc


def _stored_crop(
    frame: NDArray[np.uint8],
    xyxy: NDArray[np.float32],
    landmarks: NDArray[np.float32],
    quality: Quality,
    policy: IngestPolicy,
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """The crop with margin, scaled down when the face is larger than needed."""
    crop, points = crop_with_margin(frame, xyxy, landmarks, policy.margin)
    scale = policy.stored_face_px / quality.face_px
    if scale >= 1.0:
        return crop, points
    height, width = crop.shape[:2]
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    factor = np.array([size[0] / width, size[1] / height], np.float32)
    return small, (points + 0.5) * factor - 0.5  # pixel centres map onto pixel centres
