"""Compare the front ends (how a YuNet face becomes a dlib ResNet chip) with dlib-bin's
own pipeline, on the shared verification sets, and print the table of
docs/benchmarks.md.

Candidates, each run through ``facestream eval verify`` (same pairs, 10 folds):
the template fit of YuNet's landmarks (``yunet_template``); dlib's 5-point landmarks
(numpy port) in YuNet's box (``dlib_5:yunet_box``) and in the box derived from
YuNet's landmarks (``dlib_5``, the default front end); that one with flip-averaged
embeddings (``dlib_5+flip``); and dlib-bin's HOG + 5-point + chip + descriptor.
"ms / face" is the front end alone (landmarks and chip; for dlib-bin its 5-point
model and ``get_face_chip``), per image.

``--derive-box`` instead measures the constants of the landmark-derived box
(`facecore.landmarks.LANDMARK_BOX`) against dlib's HOG detector (upsampled once) on
the faces of lfw10 and orl both detectors find, and says how the landmarks found
from it differ from those found from dlib's own box.

    FACESTREAM_SHARED=../shared python bench/front_end.py [--sets lfw10,orl]
    FACESTREAM_SHARED=../shared python bench/front_end.py --derive-box
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from machine import cpu_description, shared_dir

from facecore.config import Settings, load_settings
from facecore.detector import Detector
from facecore.frontend import FrontEnd
from facecore.landmarks import LANDMARK_BOX_REFERENCE, landmark_box, landmark_box_from
from facecore.registry import get_spec
from trainer.dlib.reference import DlibPipeline, match_boxes
from trainer.dlib.template import derive_landmark_box
from trainer.evaluation.cli import run_verify
from trainer.evaluation.embedding import Candidate

CANDIDATES = (
    Candidate("yunet_template"),
    Candidate("dlib_5", box="yunet"),
    Candidate("dlib_5"),
    Candidate("dlib_5", flip=True),
)


def _settings(shared: Path) -> Settings:
    # the shared YuNet unless the caller names a models folder
    return load_settings({}, {"FACESTREAM_MODELS_DIR": str(shared / "models"), **os.environ})


def _table(settings: Settings, shared: Path, sets: list[str]) -> None:
    print(f"{dt.date.today()}, {cpu_description()}\n")
    print(
        "| set | front end | accuracy (10 folds) | no face | ms / face |\n"
        "| --- | --- | ---: | ---: | ---: |"
    )
    for name in sets:
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            columns = run_verify(
                settings, shared / "datasets" / name, list(CANDIDATES), reference="dlib"
            )
        for column in columns:
            v = column.verification
            print(
                f"| {name} | {column.title} | {100 * v.accuracy:.2f} ± {100 * v.accuracy_std:.2f}% "
                f"| {column.no_face} | {column.ms_per_face:.1f} |"
            )


def _derive_box(settings: Settings, shared: Path) -> None:
    detector = Detector.from_settings(settings)
    dlib = DlibPipeline.from_settings(settings)
    front_end = FrontEnd.for_model(settings, get_spec("dlib_resnet_v1"))
    assert front_end.predictor is not None
    landmarks, boxes, images, sets = [], [], [], []
    for name, pattern in (("lfw10", "datasets/lfw10/*/*.jpg"), ("orl", "datasets/orl/*/*.pgm")):
        for path in sorted(shared.glob(pattern)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            faces = detector.detect(image)
            found = dlib.detect(image)
            for box, match in zip(found, match_boxes(found, faces.xyxy), strict=True):
                if match >= 0:
                    landmarks.append(faces.landmarks[match])
                    boxes.append(box)
                    images.append(image)
                    sets.append(name)
    reference = np.asarray(LANDMARK_BOX_REFERENCE)
    for name in dict.fromkeys(sets):
        mine = np.array(sets) == name
        centre, side = derive_landmark_box(
            np.array(landmarks)[mine], np.array(boxes)[mine], reference
        )
        print(
            f"{name} alone, {mine.sum()} faces: centre ({centre[0]:.2f}, {centre[1]:.2f}), "
            f"side {side:.2f}"
        )
    centre, side = derive_landmark_box(np.array(landmarks), np.array(boxes), reference)
    print(
        f"{len(boxes)} faces found by both: centre ({centre[0]:.2f}, {centre[1]:.2f}), "
        f"side {side:.2f} (in the frame of the dlib_resnet_v1 template)"
    )
    derived = landmark_box_from(np.array(landmarks), reference, centre, side)
    in_use = landmark_box(np.array(landmarks))
    for label, rects in (("just derived", derived), ("LANDMARK_BOX in use", in_use)):
        gaps = []
        for image, rect, box in zip(images, rects, boxes, strict=True):
            ours = front_end.predictor.predict(image, rect[None])[0]
            theirs = front_end.predictor.predict(image, np.asarray(box)[None])[0]
            eyes = np.linalg.norm(theirs[:2].mean(0) - theirs[2:4].mean(0))
            gaps.append(np.sqrt(((ours - theirs) ** 2).sum(1).mean()) / eyes)
        gap = 100 * np.array(gaps)
        print(
            f"{label}: landmarks from the box vs from dlib's box, RMS in % of the eye "
            f"distance: median {np.median(gap):.2f}, p90 {np.percentile(gap, 90):.2f}, "
            f"max {gap.max():.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="lfw10,orl", help="datasets under shared/datasets")
    parser.add_argument("--derive-box", action="store_true", help="measure LANDMARK_BOX")
    args = parser.parse_args()
    shared = shared_dir()
    settings = _settings(shared)
    if args.derive_box:
        _derive_box(settings, shared)
    else:
        _table(settings, shared, args.sets.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
