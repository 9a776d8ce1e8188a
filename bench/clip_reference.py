"""Can dlib's own reference pipeline name Barack Obama in the clip's audience shot?

The enrollment photos (``shared/people/<person>/``): the largest face of each photo
(dlib's HOG detector, upsampling once; YuNet's box where HOG finds none) -> dlib's
5-point landmarks -> ``compute_face_descriptor``. The audience shot (frames 211-274)
through the same landmarks and descriptor, with two box sources: dlib's HOG detector
and YuNet (facecore's Detector, default settings). Faces are grouped across frames
by box centre; Obama's face is the group whose centre lies in ``OBAMA_REGION``
(checked by eye on frames 211, 230 and 247), every other face is not an enrolled
person. Printed per box source, a markdown table: per face, the Euclidean distance
to Obama's nearest photo, the nearest person, and how often dlib's rule (the nearest
person, if below 0.6) names it Obama; then the best threshold on that rule.

    FACESTREAM_SHARED=../shared python bench/clip_reference.py
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from machine import shared_dir
from numpy.typing import NDArray

from enrollment.names import folder_person_name
from facecore.config import load_settings
from facecore.detector import Detector
from trainer.dlib.reference import DlibPipeline
from trainer.fitting.gallery import IMAGE_SUFFIXES

AUDIENCE = range(211, 275)  # the audience shot, as in tests/pipeline_support.py
OBAMA = "Barack Obama"
# x0, y0, x1, y1 (640x360 frame): Obama's face box centre, (347-355, 88-92) from
# YuNet; Michelle Obama's is near (410-423, 132-136), the face behind him (279-292, 44-47)
OBAMA_REGION = (320, 60, 390, 115)
GROUP_PX = 40.0  # a face in the next frame is the same face if its centre is this close
DLIB_THRESHOLD = 0.6  # dlib's rule: the same person below this distance


@dataclass(frozen=True)
class Sighting:
    """One face in one frame: its box centre (x, y) and its distance [P] to each
    enrolled person's nearest photo."""

    frame: int
    centre: NDArray[np.float64]
    distances: NDArray[np.float32]


def _largest(boxes: NDArray[np.floating]) -> NDArray[np.float64]:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(boxes[int(np.argmax(area))], np.float64)


def _enroll(
    folder: Path, dlib: DlibPipeline, detector: Detector
) -> tuple[list[str], NDArray[np.float32], NDArray[np.intp]]:
    """The people's names, one descriptor per photo [M, 128] and its person [M]."""
    names: list[str] = []
    vectors: list[NDArray[np.float32]] = []
    owners: list[int] = []
    for person_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        names.append(folder_person_name(person_dir.name))
        for photo in sorted(p for p in person_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
            boxes = dlib.detect(image)
            source = "HOG"
            if len(boxes) == 0:
                boxes, source = detector.detect(image).xyxy, "YuNet"
            if len(boxes) == 0:
                print(f"{photo.name}: no face, skipped")
                continue
            print(f"{names[-1]}: {photo.name}, face from {source}")
            vectors.append(dlib.descriptors(image, _largest(boxes)[None])[0])
            owners.append(len(names) - 1)
    return names, np.stack(vectors), np.array(owners, np.intp)


def _audience(clip: Path) -> list[tuple[int, NDArray[np.uint8]]]:
    capture = cv2.VideoCapture(str(clip))
    frames = []
    for index in range(AUDIENCE.stop):
        ok, frame = capture.read()
        if not ok:
            break
        if index in AUDIENCE:
            frames.append((index, frame))
    capture.release()
    return frames


def _group(sightings: list[Sighting]) -> list[list[Sighting]]:
    """Sightings grouped into faces: each joins the face whose last centre is
    nearest, within GROUP_PX, and not already seen in its frame."""
    groups: list[list[Sighting]] = []
    for sighting in sorted(sightings, key=lambda s: s.frame):
        free = [g for g in groups if g[-1].frame < sighting.frame]
        gaps = [float(np.linalg.norm(g[-1].centre - sighting.centre)) for g in free]
        if gaps and min(gaps) <= GROUP_PX:
            free[int(np.argmin(gaps))].append(sighting)
        else:
            groups.append([sighting])
    return groups


def _is_obama(group: list[Sighting]) -> bool:
    x, y = np.median([s.centre for s in group], axis=0)
    x0, y0, x1, y1 = OBAMA_REGION
    return bool(x0 <= x <= x1 and y0 <= y <= y1)


def _table(groups: list[list[Sighting]], names: list[str]) -> None:
    obama = names.index(OBAMA)
    print(
        "| face (box centre) | frames | distance to Obama: min / median / max "
        "| nearest person (its frames) | named Obama at 0.6 | named someone else at 0.6 |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for group in sorted(groups, key=lambda g: (not _is_obama(g), -len(g))):
        d = np.array([s.distances for s in group])
        nearest, best = d.argmin(axis=1), d.min(axis=1)
        named = best < DLIB_THRESHOLD
        x, y = np.median([s.centre for s in group], axis=0)
        label = f"Obama ({x:.0f}, {y:.0f})" if _is_obama(group) else f"other ({x:.0f}, {y:.0f})"
        most, count = collections.Counter(nearest.tolist()).most_common(1)[0]
        lo, mid, hi = np.percentile(d[:, obama], [0, 50, 100])
        print(
            f"| {label} | {len(group)} | {lo:.3f} / {mid:.3f} / {hi:.3f} "
            f"| {names[most]} ({count}) | {int((named & (nearest == obama)).sum())} "
            f"| {int((named & (nearest != obama)).sum())} |"
        )


def _best_separation(groups: list[list[Sighting]], names: list[str]) -> str:
    """The most Obama frames the nearest-person rule names Obama at any threshold
    that names no other face Obama, and what naming him in half his frames costs."""
    obama = names.index(OBAMA)

    def obama_distances(want_obama: bool) -> NDArray[np.float32]:
        # the distance to Obama of the sightings whose nearest person is Obama
        d = np.array([s.distances for g in groups if _is_obama(g) == want_obama for s in g])
        d = d.reshape(-1, len(names))
        return d[d.argmin(axis=1) == obama, obama]

    own, others = obama_distances(True), obama_distances(False)
    total = sum(len(g) for g in groups if _is_obama(g))
    if total == 0:
        return "best separation: none, Obama's face was not found"
    limit = float(others.min()) if len(others) else float("inf")
    line = (
        f"best separation: {int((own < limit).sum())} of {total} Obama frames named Obama with "
        f"no other face named Obama (threshold just below {limit:.3f}, the nearest other face's)"
    )
    half = (total + 1) // 2
    if half <= len(own):
        at = float(np.sort(own)[half - 1])
        line += (
            f"; naming him in {half} frames takes a threshold above {at:.3f}, "
            f"which names {int((others <= at).sum())} other-face frames Obama"
        )
    return line


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    shared = shared_dir()
    settings = load_settings({}, {"FACESTREAM_MODELS_DIR": str(shared / "models"), **os.environ})
    detector = Detector.from_settings(settings)
    dlib = DlibPipeline.from_settings(settings)
    names, photos, owners = _enroll(shared / "people", dlib, detector)
    if OBAMA not in names:
        print(f"no photos of {OBAMA} under {shared / 'people'}", file=sys.stderr)
        return 1
    frames = _audience(shared / "media" / "short_hamilton_clip.mp4")
    for source in ("dlib HOG", "YuNet"):
        sightings = []
        for index, frame in frames:
            boxes = dlib.detect(frame) if source == "dlib HOG" else detector.detect(frame).xyxy
            vectors = dlib.descriptors(frame, boxes)
            gaps = np.linalg.norm(vectors[:, None, :] - photos[None], axis=2)  # [F, M]
            per_person = np.stack([gaps[:, owners == p].min(axis=1) for p in range(len(names))])
            for box, distances in zip(boxes, per_person.T, strict=True):
                centre = (np.asarray(box[:2], np.float64) + box[2:]) / 2
                sightings.append(Sighting(index, centre, distances))
        groups = _group(sightings)
        print(
            f"\n### {source} boxes: {len(sightings)} faces in "
            f"{len({s.frame for s in sightings})} of {len(frames)} audience frames\n"
        )
        if not sightings:
            continue
        _table(groups, names)
        print(f"\n{_best_separation(groups, names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
