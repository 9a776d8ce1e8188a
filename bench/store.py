"""The enrollment store on SQLite and on PostgreSQL: enrollment and lookup timings.

The same operations, through ``EnrollmentStore``, on the embedded SQLite store (a
temporary folder) and on a temporary PostgreSQL cluster on loopback (Debian's
``postgresql``, started as ``make test`` starts it, ``fsync = on``), one after the
other in one run. First ``enroll import`` of the shared people folder (5 photos: face
detection, crops, store), 5 times on each, removing everyone in between; then the
store's own operations on 100 samples of 20 people, whose crops are the 5 real crops
that import made (394x394 to 777x600 pixels, 150-900 kB as PNG), each copy one pixel
apart so that none is a duplicate.

    FACESTREAM_SHARED=../shared python bench/store.py [--people 20] [--samples 5]

Printed: a Markdown table of the median and 95th-percentile milliseconds of each
operation on each store, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the PostgreSQL cluster helper

from machine import cpu_description, shared_dir  # noqa: E402
from postgres_support import start_cluster  # noqa: E402

from enrollment.ingest import import_folder  # noqa: E402
from enrollment.store import EnrollmentStore, Quality  # noqa: E402
from facecore.detector import Detector  # noqa: E402
from facecore.registry import DETECTOR, MODELS  # noqa: E402

IMPORTS = 5
LANDMARKS = np.array([[48, 60], [102, 60], [75, 88], [52, 115], [98, 115]], np.float32)
QUALITY = Quality(face_px=150.0, sharpness=300.0, frontalness=0.9, score=0.9)
BACKBONE = "0" * 64
DIMENSIONS = 128
OPERATIONS = (
    "enroll import of the 5 shared photos",
    "add a person",
    "add a sample (enrollment)",
    "find a person by name",
    "list people",
    "every sample (the trainer's read)",
    "load one crop",
    "cached embeddings of every sample",
    "revision (the change check)",
    "remove a person (erasure)",
)


def import_people(store: EnrollmentStore, detector: Detector, people: Path,
                  timings: Timings) -> None:
    """``enroll import`` of ``people`` ``IMPORTS`` times, everyone removed in between."""
    for _ in range(IMPORTS):
        for person in store.list_people():
            store.remove_person(person.id)
        with timings.timed("enroll import of the 5 shared photos"):
            results = import_folder(store, detector, people, progress=False)
        assert sum(r.accepted for r in results) == 5, results


def crop_copies(crops: list[NDArray[np.uint8]], count: int) -> list[NDArray[np.uint8]]:
    """``count`` crops cycling through ``crops``, each copy one pixel apart."""
    made = []
    for k in range(count):
        crop = crops[k % len(crops)].copy()
        crop[0, 0, 0] ^= np.uint8(1 + k // len(crops))
        made.append(crop)
    return made


class Timings:
    """Milliseconds per operation name."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {name: [] for name in OPERATIONS}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.ms[name].append((time.perf_counter() - start) * 1000.0)

    def cell(self, name: str) -> str:
        values = sorted(self.ms[name])
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        return f"{statistics.median(values):.2f} / {p95:.2f}"


def exercise(location: Path | str, detector: Detector, shared: Path, people: int,
             per_person: int) -> Timings:
    """Import the shared people; then enroll ``people`` people of ``per_person``
    samples made from their crops, look them up, read what the trainer reads, and
    remove them one by one."""
    timings = Timings()
    rng = np.random.default_rng(0)
    with EnrollmentStore(location) as store:
        import_people(store, detector, shared / "people", timings)
        real = [store.load_crop(sample) for sample in store.samples()]
        for person in store.list_people():
            store.remove_person(person.id)
        crops = crop_copies(real, people * per_person)
        ids = []
        for k in range(people):
            with timings.timed("add a person"):
                ids.append(store.add_person(f"Person {k:03d}").id)
            for crop in crops[k * per_person : (k + 1) * per_person]:
                with timings.timed("add a sample (enrollment)"):
                    store.add_sample(ids[-1], crop, LANDMARKS, QUALITY, "photo")
        samples = store.samples()
        vectors = rng.standard_normal((len(samples), DIMENSIONS)).astype(np.float32)
        by_sha = {s.sha256: v for s, v in zip(samples, vectors, strict=True)}
        store.cache_embeddings(BACKBONE, by_sha)
        for k in range(people):
            name = f"Person {k:03d}"
            _repeat(timings, "find a person by name", lambda n=name: store.find_person(n))
        _repeat(timings, "list people", store.list_people, times=20)
        _repeat(timings, "every sample (the trainer's read)", store.samples, times=20)
        for sample in samples:
            _repeat(timings, "load one crop", lambda s=sample: store.load_crop(s), times=1)
        _repeat(timings, "cached embeddings of every sample",
                lambda: store.cached_embeddings(BACKBONE, samples), times=20)
        _repeat(timings, "revision (the change check)", store.revision, times=200)
        for person_id in ids:
            with timings.timed("remove a person (erasure)"):
                store.remove_person(person_id)
    return timings


def _repeat(timings: Timings, name: str, call: Callable[[], object], times: int = 1) -> None:
    for _ in range(times):
        with timings.timed(name):
            call()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--samples", type=int, default=5, help="samples per person")
    args = parser.parse_args()
    shared = shared_dir()
    detector = Detector(shared / "models" / MODELS[DETECTOR].filename)
    cluster = start_cluster()
    if cluster is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt install postgresql)")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            sqlite = exercise(Path(scratch) / "enrollment", detector, shared, args.people,
                              args.samples)
        postgres = exercise(cluster.create_database(), detector, shared, args.people,
                            args.samples)
        version = cluster.psql("SHOW server_version").strip()
    finally:
        cluster.remove()
    print(f"\n{cpu_description()}; {args.people} people x {args.samples} samples; "
          f"PostgreSQL {version} on loopback TCP, fsync on\n")
    print("| operation | SQLite: median / p95 ms | PostgreSQL: median / p95 ms |")
    print("|---|---:|---:|")
    for name in OPERATIONS:
        print(f"| {name} | {sqlite.cell(name)} | {postgres.cell(name)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
