"""The trainer on the shared datasets: fitted head vs prototype baseline, and timings.

For LFW-10 and ORL: import the dataset into a fresh enrollment store, run the trainer
once (a full pass: every sample embedded, clean and augmented), run it again (up to
date: nothing to do), then remove one person and enroll them again and run it (only
that person's samples are embedded). Printed per dataset: both heads' held-out
figures at their calibrated thresholds (from the training report), which head was
published, and the timings: each run's total, and in brackets when its first bundle
(the prototypes, published before any fitting) was out.

ORL's faces are 92x112 greyscale photos, smaller than the ingest policy's default
minimum face (64 px), so they are imported with a 32 px minimum.

    FACESTREAM_SHARED=../shared python bench/heads.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine import prepare_models

from enrollment.ingest import DEFAULT_POLICY, IngestPolicy, import_folder
from enrollment.names import folder_person_name
from enrollment.store import EnrollmentStore
from facecore.bundle import Bundle
from facecore.config import load_settings
from facecore.detector import Detector
from facecore.registry import DETECTOR, model_path
from trainer.service import TrainerService

DATASETS = {
    "lfw10": DEFAULT_POLICY,
    "orl": IngestPolicy(min_face_px=32.0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="model cache (default: a temporary one)")
    args = parser.parse_args()
    shared = Path(os.environ.get("FACESTREAM_SHARED", Path(__file__).parents[2] / "shared"))
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or Path(scratch) / "cache"
        for name, policy in DATASETS.items():
            run_dataset(shared, name, policy, Path(scratch) / name, cache)
    return 0


def run_dataset(shared: Path, name: str, policy: IngestPolicy, state: Path, cache: Path) -> None:
    settings = load_settings(
        {"state_dir": str(state), "cache_dir": str(cache),
         "models_dir": str(shared / "models"), "recognition.device": "cpu"},
        {},
    )
    prepare_models(settings)
    detector = Detector(model_path(settings, DETECTOR))
    folder = shared / "datasets" / name
    with EnrollmentStore.from_settings(settings) as store:
        results = import_folder(store, detector, folder, progress=False, policy=policy)
    accepted = sum(r.accepted for r in results)
    print(f"\n== {name}: {accepted} of {len(results)} photos enrolled")
    clock = Clock()

    with TrainerService(settings, progress=False, notify=clock.notify) as service:
        full = clock.run(service)
        bundle = full.bundle
        assert bundle is not None
        metrics = bundle.manifest.metrics
        report = json.loads((bundle.path / "report.json").read_text(encoding="utf-8"))
        print(f"published: {bundle.manifest.head_kind} head, threshold "
              f"{bundle.manifest.threshold:.4f} (target FAR {metrics['target_far']:g})")
        print(f"held out: {metrics['held_out_samples']:.0f} samples of "
              f"{metrics['people']:.0f} people; impostor scores (strangers' best row, and "
              f"each row): {metrics['prototypes_impostor_scores']:.0f}")
        for kind, figures in report["candidates"].items():
            if figures is not None:
                print(f"  {kind:<10} accuracy {figures['accuracy']:.4f} at threshold "
                      f"{figures['threshold']:.4f}  (rank-1 {figures['rank1']:.4f},"
                      f" FAR {figures['far']:.4f}, FRR {figures['frr']:.4f})")

        idle = clock.run(service)
        assert idle.bundle is None

        person = sorted(p for p in folder.iterdir() if p.is_dir())[0]
        with EnrollmentStore.from_settings(settings) as store:
            store.remove_person(store.find_person(folder_person_name(person.name)).id)
            again = import_folder(store, detector, folder, progress=False, policy=policy)
        added = sum(r.accepted for r in again)
        one_more = clock.run(service)
        assert one_more.bundle is not None
    print(f"timings: full pass {full} ({accepted} samples), up to date "
          f"{idle.total:.2f} s, one person re-enrolled ({added} samples) {one_more}")


@dataclass
class Timed:
    bundle: Bundle | None
    total: float  # seconds
    first_publish: float | None  # seconds to the first bundle, when one was published

    def __str__(self) -> str:
        if self.first_publish is None:
            return f"{self.total:.1f} s"
        return f"{self.total:.1f} s (prototypes out at {self.first_publish:.1f} s)"


@dataclass
class Clock:
    """Times runs, and the first publish in each from the service's status messages."""

    started: float = 0.0
    first_publish: float | None = None

    def notify(self, message: str) -> None:
        if message.startswith("STATUS=serving") and self.first_publish is None:
            self.first_publish = time.perf_counter() - self.started

    def run(self, service: TrainerService) -> Timed:
        self.started, self.first_publish = time.perf_counter(), None
        bundle = service.run_once()
        return Timed(bundle, time.perf_counter() - self.started, self.first_publish)


if __name__ == "__main__":
    raise SystemExit(main())
