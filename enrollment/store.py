"""The enrollment store: enrolled people and their face samples, on disk.

Layout under ``root`` (``settings.state_dir / "enrollment"``), owner-only because face
data is biometric (directories 0700, files 0600)::

    store.sqlite3                        people, samples, the embedding cache, the revision
    samples/<person_id>/<sample_id>.png  one face crop with margin per sample

SQLite runs in WAL mode with a busy timeout, so one process can write (the server)
while another reads (the trainer). Every change to people or samples raises
``revision()``; the trainer re-fits when it moves. Caching embeddings does not move it.

Crash safety: a sample's file is written under a temporary name, fsynced and renamed
while the database's write lock is held, and only then is its row committed. A crash
before the commit leaves a file without a row; opening the store (which takes the same
lock, so it never races a writer) deletes such files. A crash can therefore lose only
the change that was in flight, never a committed one, and never leaves a half sample.

One ``EnrollmentStore`` per thread (it owns one SQLite connection); open another one
in each thread or process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from enrollment.database import SOURCES, Database
from enrollment.errors import (
    DuplicatePersonError,
    DuplicateSampleError,
    StoreError,
    UnknownPersonError,
    UnknownSampleError,
)
from enrollment.files import remove_path, write_private_file
from enrollment.names import clean_name, name_key
from facecore.config import Settings, ensure_private_dir

__all__ = [
    "DATABASE",
    "SOURCES",
    "STORE_DIR",
    "EnrollmentStore",
    "Person",
    "Quality",
    "Sample",
    "crop_sha256",
]

log = logging.getLogger(__name__)

STORE_DIR = "enrollment"  # under the state directory
DATABASE = "store.sqlite3"
_SAMPLES = "samples"
_PERSON_COLUMNS = "p.id, p.name, p.created, p.updated, COUNT(s.id)"
_SAMPLE_COLUMNS = (
    "id, person_id, landmarks, face_px, sharpness, frontalness, score, source, sha256, created"
)
_IN_CHUNK = 500  # hashes per "IN (...)" query


@dataclass(frozen=True)
class Person:
    id: str
    name: str  # display name, any script, unique without regard to case
    created: str  # ISO 8601, UTC
    updated: str  # last rename or sample change
    sample_count: int


@dataclass(frozen=True)
class Quality:
    face_px: float  # face box side in the source image, pixels (sqrt of the box area)
    sharpness: float  # variance of the Laplacian over the aligned face
    frontalness: float  # 1 = looking straight at the camera, 0 = profile
    score: float  # overall, in [0, 1]; higher is a better sample


@dataclass(frozen=True)
class Sample:
    id: str
    person_id: str
    path: Path  # the crop, a PNG
    landmarks: NDArray[np.float32] = field(compare=False)  # [5, 2] in crop pixels, YuNet order
    quality: Quality
    source: str  # "photo" | "folder" | "live"
    sha256: str  # crop_sha256 of the crop's pixels
    created: str  # ISO 8601, UTC


def crop_sha256(crop: NDArray[np.uint8]) -> str:
    """The content hash of a crop: sha256 of its shape and pixels (not of the PNG file,
    so it does not depend on the encoder)."""
    digest = hashlib.sha256(f"{crop.shape[0]}x{crop.shape[1]}x{crop.shape[2]}:".encode())
    digest.update(np.ascontiguousarray(crop).tobytes())
    return digest.hexdigest()


class EnrollmentStore:
    """People and face samples in ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / DATABASE
        self._samples_dir = self.root / _SAMPLES
        try:
            ensure_private_dir(self.root)
            ensure_private_dir(self._samples_dir)
        except OSError as exc:
            raise StoreError(f"cannot create the enrollment store {self.root}: {exc}") from exc
        self._db = Database(self.path)
        try:
            self._remove_orphans()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_settings(cls, settings: Settings) -> EnrollmentStore:
        """The store of this installation: ``settings.state_dir / "enrollment"``."""
        return cls(settings.state_dir / STORE_DIR)

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EnrollmentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- people ---------------------------------------------------------------------

    def revision(self) -> int:
        """A number that rises with every committed change to people or samples."""
        return int(self._db.query("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    def add_person(self, name: str) -> Person:
        name = clean_name(name)
        now = _now()
        person_id = secrets.token_hex(8)
        with self._db.change() as conn:
            self._check_name_free(conn, name, person_id)
            conn.execute(
                "INSERT INTO people (id, name, name_key, created, updated) VALUES (?, ?, ?, ?, ?)",
                (person_id, name, name_key(name), now, now),
            )
        return Person(person_id, name, now, now, 0)

    def find_person(self, name_or_id: str) -> Person:
        """The person with this id or display name (names compare without case)."""
        rows = self._people("WHERE p.id = ? OR p.name_key = ?", (name_or_id, name_key(name_or_id)))
        if not rows:
            raise UnknownPersonError(name_or_id)
        return next((p for p in rows if p.id == name_or_id), rows[0])

    def get_or_add_person(self, name: str) -> tuple[Person, bool]:
        """The person with this display name, added when there is none; and whether
        it was added. Safe against another process adding the same name meanwhile."""
        name = clean_name(name)
        found = self._people("WHERE p.name_key = ?", (name_key(name),))
        if found:
            return found[0], False
        try:
            return self.add_person(name), True
        except DuplicatePersonError as exc:  # added by another process since the look-up
            return self.find_person(exc.existing_id), False

    def list_people(self) -> list[Person]:
        return self._people("", ())

    def rename_person(self, person_id: str, name: str) -> Person:
        name = clean_name(name)
        with self._db.change() as conn:
            self._require_person(conn, person_id)
            self._check_name_free(conn, name, person_id)
            conn.execute(
                "UPDATE people SET name = ?, name_key = ?, updated = ? WHERE id = ?",
                (name, name_key(name), _now(), person_id),
            )
        return self.find_person(person_id)

    def remove_person(self, person_id: str) -> None:
        """Erase a person: their rows, their cached embeddings, their sample files."""
        with self._db.change() as conn:
            self._require_person(conn, person_id)
            conn.execute("DELETE FROM people WHERE id = ?", (person_id,))  # cascades
        self._erase(self._samples_dir / person_id)

    # --- samples --------------------------------------------------------------------

    def add_sample(
        self,
        person_id: str,
        crop: NDArray[np.uint8],
        landmarks: NDArray[np.floating[Any]],
        quality: Quality,
        source: str,
    ) -> Sample:
        """Store a face crop [h, w, 3] uint8 BGR with its landmarks [5, 2] (crop pixels).

        Raises DuplicateSampleError when the same crop is already stored (for anyone)
        and UnknownPersonError when the person does not exist.
        """
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8 or crop.size == 0:
            raise ValueError(f"a crop must be [h, w, 3] uint8, got {crop.dtype} {crop.shape}")
        points = np.asarray(landmarks, np.float32)
        if points.shape != (5, 2) or not np.isfinite(points).all():
            raise ValueError(f"landmarks must be [5, 2] finite numbers, got {points.shape}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        digest = crop_sha256(crop)
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            raise StoreError(f"OpenCV could not encode a {crop.shape} crop as PNG")
        sample_id = secrets.token_hex(8)
        now = _now()
        path = self._samples_dir / person_id / f"{sample_id}.png"
        try:
            with self._db.change() as conn:
                self._require_person(conn, person_id)
                duplicate = conn.execute(
                    "SELECT s.id, p.name FROM samples s JOIN people p ON p.id = s.person_id "
                    "WHERE s.sha256 = ?",
                    (digest,),
                ).fetchone()
                if duplicate is not None:
                    raise DuplicateSampleError(digest, duplicate[0], duplicate[1])
                try:
                    write_private_file(path, png.tobytes())
                except OSError as exc:
                    raise StoreError(f"cannot write the sample file {path}: {exc}") from exc
                conn.execute(
                    f"INSERT INTO samples ({_SAMPLE_COLUMNS}) VALUES ({', '.join('?' * 10)})",
                    (
                        sample_id, person_id, json.dumps(points.tolist()), float(quality.face_px),
                        float(quality.sharpness), float(quality.frontalness),
                        float(quality.score), source, digest, now,
                    ),
                )
                conn.execute("UPDATE people SET updated = ? WHERE id = ?", (now, person_id))
        except BaseException:
            path.unlink(missing_ok=True)  # not committed: the file must not stay either
            raise
        return Sample(sample_id, person_id, path, _frozen(points), quality, source, digest, now)

    def remove_sample(self, sample_id: str) -> None:
        with self._db.change() as conn:
            query = "SELECT person_id FROM samples WHERE id = ?"
            row = conn.execute(query, (sample_id,)).fetchone()
            if row is None:
                raise UnknownSampleError(sample_id)
            conn.execute("DELETE FROM samples WHERE id = ?", (sample_id,))  # and its embeddings
            conn.execute("UPDATE people SET updated = ? WHERE id = ?", (_now(), row[0]))
        self._erase(self._samples_dir / row[0] / f"{sample_id}.png")

    def samples(self, person_id: str | None = None) -> list[Sample]:
        """Samples, oldest first: everyone's, or one person's."""
        if person_id is None:
            rows = self._db.query(f"SELECT {_SAMPLE_COLUMNS} FROM samples ORDER BY created, id")
        else:
            rows = self._db.query(
                f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE person_id = ? ORDER BY created, id",
                (person_id,),
            )
            if not rows and not self._db.query("SELECT 1 FROM people WHERE id = ?", (person_id,)):
                raise UnknownPersonError(person_id)
        return [self._sample(row) for row in rows]

    def load_crop(self, sample: Sample) -> NDArray[np.uint8]:
        """The sample's crop [h, w, 3] uint8 BGR, checked against its content hash."""
        try:
            data = np.fromfile(sample.path, np.uint8)
        except OSError as exc:
            raise StoreError(f"cannot read sample {sample.id} ({sample.path}): {exc}") from exc
        crop = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if crop is None or crop_sha256(crop) != sample.sha256:
            raise StoreError(f"sample {sample.id} ({sample.path}) is damaged: content hash differs")
        return crop

    # --- embedding cache ------------------------------------------------------------

    def cached_embeddings(
        self, backbone_sha256: str, samples: Sequence[Sample]
    ) -> dict[str, NDArray[np.float32]]:
        """Cached embeddings [D] float32 of these samples for this backbone, by sample
        sha256; samples without one are absent from the result."""
        hashes = list(dict.fromkeys(s.sha256 for s in samples))
        found: dict[str, NDArray[np.float32]] = {}
        for start in range(0, len(hashes), _IN_CHUNK):
            chunk = hashes[start : start + _IN_CHUNK]
            rows = self._db.query(
                "SELECT sample_sha256, vector FROM embeddings WHERE backbone_sha256 = ? "
                f"AND sample_sha256 IN ({', '.join('?' * len(chunk))})",
                (backbone_sha256, *chunk),
            )
            for digest, blob in rows:
                found[digest] = np.frombuffer(blob, "<f4").astype(np.float32)
        return found

    def cache_embeddings(
        self, backbone_sha256: str, vectors: Mapping[str, NDArray[np.float32]]
    ) -> None:
        """Remember embeddings [D] by sample sha256. A vector for a sample that is no
        longer stored (deleted meanwhile) is dropped, so nothing of a deleted person
        comes back. Does not move the revision."""
        rows = []
        for digest, vector in vectors.items():
            array = np.asarray(vector, np.float32)
            if array.ndim != 1 or not np.isfinite(array).all():
                raise ValueError(f"embedding for {digest} must be [D] finite, got {array.shape}")
            rows.append((backbone_sha256, digest, array.astype("<f4").tobytes(), digest))
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings (backbone_sha256, sample_sha256, vector) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM samples WHERE sha256 = ?)",
                rows,
            )

    # --- internals ------------------------------------------------------------------

    def _people(self, where: str, params: Sequence[object]) -> list[Person]:
        rows = self._db.query(
            f"SELECT {_PERSON_COLUMNS} FROM people p LEFT JOIN samples s ON s.person_id = p.id "
            f"{where} GROUP BY p.id ORDER BY p.name_key",
            params,
        )
        return [Person(*row) for row in rows]

    def _sample(self, row: Sequence[Any]) -> Sample:
        sample_id, person_id, landmarks, face_px, sharp, frontal, score, source, digest, at = row
        return Sample(
            id=sample_id,
            person_id=person_id,
            path=self._samples_dir / person_id / f"{sample_id}.png",
            landmarks=_frozen(np.asarray(json.loads(landmarks), np.float32)),
            quality=Quality(face_px, sharp, frontal, score),
            source=source,
            sha256=digest,
            created=at,
        )

    @staticmethod
    def _require_person(conn: sqlite3.Connection, person_id: str) -> None:
        if conn.execute("SELECT 1 FROM people WHERE id = ?", (person_id,)).fetchone() is None:
            raise UnknownPersonError(person_id)

    @staticmethod
    def _check_name_free(conn: sqlite3.Connection, name: str, person_id: str) -> None:
        row = conn.execute(
            "SELECT id FROM people WHERE name_key = ? AND id != ?", (name_key(name), person_id)
        ).fetchone()
        if row is not None:
            raise DuplicatePersonError(name, row[0])

    def _erase(self, path: Path) -> None:
        """Delete committed-away sample files, then push the deleted rows out of the
        write-ahead log so no copy of them stays on disk."""
        try:
            remove_path(path)
        except OSError as exc:
            raise StoreError(
                f"the rows are deleted but {path} could not be erased ({exc}); "
                "it is erased the next time the store is opened"
            ) from exc
        self._db.scrub()

    def _remove_orphans(self) -> None:
        """Delete sample files without a committed row (a crash between a sample's file
        write and its commit) and temporary files. Runs under the write lock, so a
        writer in another process is never between its file write and its commit."""
        with self._db.transaction() as conn:
            people = {row[0] for row in conn.execute("SELECT id FROM people")}
            known = {f"{p}/{s}.png" for p, s in conn.execute("SELECT person_id, id FROM samples")}
            try:
                for folder in self._samples_dir.iterdir():
                    if folder.name not in people or not folder.is_dir():
                        log.info("removing %s: no such person in the store", folder)
                        remove_path(folder)
                        continue
                    for file in folder.iterdir():
                        if f"{folder.name}/{file.name}" not in known:
                            log.info("removing %s: not a committed sample", file)
                            remove_path(file)
            except OSError as exc:
                raise StoreError(f"cannot clean up {self._samples_dir}: {exc}") from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _frozen(points: NDArray[np.float32]) -> NDArray[np.float32]:
    points = np.array(points, np.float32)
    points.setflags(write=False)
    return points
