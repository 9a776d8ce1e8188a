"""Measure the YuNet -> dlib-chip alignment template on real faces and print it.

For every face found by both YuNet (facecore's Detector, default settings) and dlib's
HOG detector in the shared data (LFW-10, ORL, the media photos, every 5th frame of
the clip), dlib's 5-point chip geometry (150 px, padding 0.25) maps YuNet's 5
landmarks into dlib's chip; the template is their per-coordinate median. Printed:
the template, each point's spread, and per source the residual of fitting the faces'
YuNet points to it and how our chips differ from dlib's (overall offset, scale,
rotation, centre shift), also for a template derived without that source (a
hold-out check) and for the registry's template. See docs/alignment.md.

    FACESTREAM_SHARED=../shared python bench/derive_template.py
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from machine import shared_dir
from numpy.typing import NDArray
from tqdm import tqdm

from facecore.config import load_settings
from facecore.detector import Detector
from facecore.registry import MODELS
from trainer.dlib.reference import DlibPipeline, match_boxes
from trainer.dlib.template import TemplateFit, derive_template, evaluate_template, to_chip

CLIP_STEP = 5  # every 5th frame of the clip: neighbouring frames are near duplicates
POINTS = ("right eye", "left eye", "nose tip", "right mouth", "left mouth")



def _images(shared: Path) -> Iterator[tuple[str, NDArray[np.uint8]]]:
    """(source, BGR image) for every image the template is measured on."""
    for source, pattern in (("lfw10", "datasets/lfw10/*/*.jpg"), ("orl", "datasets/orl/*/*.pgm")):
        for path in sorted(shared.glob(pattern)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                yield source, image
    for path in sorted((shared / "media").glob("*")):
        if path.suffix.lower() in (".jpg", ".png"):
            yield "photos", cv2.imread(str(path), cv2.IMREAD_COLOR)
    capture = cv2.VideoCapture(str(shared / "media" / "short_hamilton_clip.mp4"))
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % CLIP_STEP == 0:
            yield "clip", frame
        index += 1
    capture.release()


def _measure(shared: Path) -> tuple[list[str], NDArray[np.float64], NDArray[np.float64]]:
    """For each face both pipelines found: its source, YuNet landmarks [F, 5, 2] and
    dlib's chip transform [F, 2, 3]."""
    # the shared YuNet unless the caller names a models folder
    settings = load_settings({}, {"FACESTREAM_MODELS_DIR": str(shared / "models"), **os.environ})
    detector = Detector.from_settings(settings)
    dlib = DlibPipeline.from_settings(settings)
    sources: list[str] = []
    landmarks: list[NDArray[np.float32]] = []
    transforms: list[NDArray[np.float64]] = []
    seen: dict[str, list[int]] = {}
    for source, image in tqdm(_images(shared), desc="faces", unit="image"):
        faces = detector.detect(image)
        counts = seen.setdefault(source, [0, 0, 0])
        counts[0] += 1
        boxes = dlib.detect(image)
        matches = match_boxes(boxes, faces.xyxy)
        counts[1] += len(boxes)
        counts[2] += int((matches >= 0).sum())
        for box, match in zip(boxes, matches, strict=True):
            if match < 0:
                continue
            sources.append(source)
            landmarks.append(faces.landmarks[match])
            transforms.append(dlib.chip_geometry(image, box).transform())
    for source, (images, dlib_faces, matched) in seen.items():
        print(f"{source}: {images} images, dlib found {dlib_faces} faces, {matched} also by YuNet")
    return sources, np.array(landmarks, np.float64), np.array(transforms)


def _row(label: str, fit: TemplateFit) -> str:
    r, o = fit.fit_residual, fit.offset
    scale = np.array([abs(c.scale - 1) for c in fit.chips]) * 100
    rotation = np.array([abs(c.rotation) for c in fit.chips])
    shift = np.array([c.shift for c in fit.chips])
    return (
        f"| {label} | {len(r)} | {np.median(r):.2f} / {np.percentile(r, 90):.2f} "
        f"| {np.median(o):.2f} / {np.percentile(o, 90):.2f} | {np.median(scale):.1f}% "
        f"| {np.median(rotation):.1f}° | {np.median(shift):.2f} |"
    )


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    shared = shared_dir()
    sources, landmarks, transforms = _measure(shared)
    if not sources:
        print("no face was found by both pipelines", file=sys.stderr)
        return 1
    chip_points = np.stack([to_chip(m, p) for m, p in zip(transforms, landmarks, strict=True)])
    template = derive_template(chip_points)
    fit = evaluate_template(template, landmarks, transforms)
    registry = np.asarray(MODELS["dlib_resnet_v1"].template, np.float64)

    print(f"\ntemplate from {len(sources)} faces (150x150 chip pixels; median | mean):")
    for point, median, mean, spread in zip(
        POINTS, template, chip_points.mean(axis=0), fit.spread, strict=True
    ):
        print(
            f"  {point:<12} ({median[0]:7.3f}, {median[1]:7.3f})  | ({mean[0]:7.3f}, "
            f"{mean[1]:7.3f})  spread ±({spread[0]:.2f}, {spread[1]:.2f})"
        )
    print("\nregistry tuple:")
    print("(" + ", ".join(f"({x:.2f}, {y:.2f})" for x, y in template) + ")")

    print(
        "\n| faces (template derived from all) | faces | fit residual, median / p90 "
        "| chip offset, median / p90 | scale error | rotation error | centre shift |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    source_array = np.array(sources)
    for source in dict.fromkeys(sources):
        mask = source_array == source
        held_out = derive_template(chip_points[~mask]) if (~mask).any() else template
        for label, candidate in ((source, template), (f"{source}, derived without it", held_out)):
            print(_row(label, evaluate_template(candidate, landmarks[mask], transforms[mask])))
    print(_row("all", fit))
    print(_row("all, the registry's template", evaluate_template(registry, landmarks, transforms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
