"""The enrollment store: enrolled people and their face samples.

Where it lives is one setting: by default a folder of this installation
(``settings.state_dir / "enrollment"``: a SQLite file and the crops' files, see
``enrollment.sqlite``); with ``enrollment.database_url`` a PostgreSQL database that
several boxes share (``enrollment.postgres``). Both behave the same: every change to
people or samples raises ``revision()``, and the trainer re-fits when it moves
(``wait_for_change``); caching embeddings does not move it. A change commits whole
or not at all, its crop included.

One ``EnrollmentStore`` per thread (it owns a database connection); open another one
in each thread or process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from enrollment.database import SOURCES, Database, Session, is_postgres_url
from enrollment.errors import (
    AmbiguousPersonError,
    DuplicatePersonError,
    DuplicateSampleError,
    StoreError,
    UnknownPersonError,
    UnknownSampleError,
)
from enrollment.names import ID_HEX_DIGITS, clean_name, name_key
from enrollment.postgres import PostgresDatabase
from enrollment.sqlite import SqliteDatabase
from facecore.config import Settings, check_database_url

__all__ = [
    "SOURCES",
    "STORE_DIR",
    "EnrollmentStore",
    "Person",
    "Quality",
    "Sample",
    "crop_sha256",
    "open_database",
    "store_exists",
    "store_location",
]

log = logging.getLogger(__name__)

STORE_DIR = "enrollment"  # under the state directory
STORE_ID_BITS = 53  # `identity()`: exact in JSON and in both databases' integers
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
    path: Path | None  # the crop's PNG file (SQLite store); None: in the database
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


def open_database(location: Path | str) -> Database:
    """The database at ``location``: a ``postgresql://`` URL, or the folder of a SQLite
    store (made when missing)."""
    if isinstance(location, str) and not location.strip():
        # Path("") is the current folder: a store would be made wherever one stands
        raise StoreError("no store given: a postgresql:// URL or a folder is needed")
    if is_postgres_url(location):
        return PostgresDatabase(str(location))
    if isinstance(location, str) and "://" in location:
        scheme = location.partition("://")[0]
        raise StoreError(f"the enrollment database URL must be postgresql://..., not {scheme}://")
    return SqliteDatabase(Path(location))


def store_exists(location: Path | str) -> bool:
    """Whether opening ``location`` would find a store rather than make one: a folder
    counts once it exists (the store makes it; one whose database is lost is opened, to
    be refused saying so); a URL always does (PostgreSQL's tables are made by whichever
    service opens it first, and a bad URL fails to open, saying why)."""
    if isinstance(location, str) and ("://" in location or not location.strip()):
        return True
    return Path(location).is_dir()


def store_location(settings: Settings) -> Path | str:
    """``enrollment.database_url`` when set, else ``state_dir/enrollment``. Raises
    StoreError when the URL is not a ``postgresql://`` (or ``postgres://``) URL: the
    setting names a database, and anything else would be taken for a folder."""
    url = settings.enrollment.database_url
    if not url:
        return settings.state_dir / STORE_DIR
    try:  # load_settings checked it already; Settings made by hand were not
        check_database_url(url)
    except ValueError as err:
        raise StoreError(f"enrollment.database_url {err}") from None
    return url


class EnrollmentStore:
    """People and face samples at ``location``: the folder of a SQLite store (made
    when missing) or a ``postgresql://`` URL; see the module docstring."""

    def __init__(self, location: Path | str) -> None:
        self.db = open_database(location)
        self.where = self.db.where  # for messages: the folder or the URL

    @classmethod
    def from_settings(cls, settings: Settings) -> EnrollmentStore:
        """The store of this installation (`store_location`)."""
        return cls(store_location(settings))

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

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

    def identity(self) -> str:
        """A random id of this store, made once with it: a bundle records it, so that a
        server whose store is not the one its bundle was fitted on (a shared bundles
        folder, a store copied to PostgreSQL) can tell ids and revisions apart. Made on
        the first call for a store from before it existed."""
        rows = self.db.query("SELECT value FROM meta WHERE key = 'store_id'")
        if not rows:
            with self.db.transaction() as session:  # another process may make it first
                session.execute(
                    "INSERT INTO meta (key, value) VALUES ('store_id', ?) "
                    "ON CONFLICT (key) DO NOTHING",
                    (secrets.randbits(STORE_ID_BITS),),
                )
            rows = self.db.query("SELECT value FROM meta WHERE key = 'store_id'")
        return f"{int(rows[0][0]):x}"

    def revision(self) -> int:
        """A number that rises with every committed change to people or samples."""
        return int(self.db.query("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    def wait_for_change(self, revision: int, timeout: float) -> None:
        """Return once ``revision()`` is no longer ``revision``, or after ``timeout`` s."""
        self.db.wait_for_change(revision, timeout)

    def add_person(self, name: str) -> Person:
        name = clean_name(name)
        now = _now()
        person_id = secrets.token_hex(ID_HEX_DIGITS // 2)
        with self.db.change() as conn:
            self._check_name_free(conn, name, person_id)
            conn.execute(
                "INSERT INTO people (id, name, name_key, created, updated) VALUES (?, ?, ?, ?, ?)",
                (person_id, name, name_key(name), now, now),
            )
        return Person(person_id, name, now, now, 0)

    def find_person(self, name_or_id: str) -> Person:
        """The person a user means by ``name_or_id``: the one with this id or display
        name (names compare without case). Every command and route that takes a
        person resolves it here. Raises AmbiguousPersonError when it is one person's
        id and another's name (possible only with names stored before names of an
        id's shape were refused), rather than pick one and act on the wrong person."""
        rows = self._people("WHERE p.id = ? OR p.name_key = ?", (name_or_id, name_key(name_or_id)))
        if not rows:
            raise UnknownPersonError(name_or_id)
        if len(rows) > 1:  # ids and name keys are each unique: one of each
            by_id, by_name = sorted(rows, key=lambda p: p.id != name_or_id)
            raise AmbiguousPersonError(name_or_id, by_id.id, by_id.name, by_name.id)
        return rows[0]

    def get_person(self, person_id: str) -> Person:
        """The person with this id (never a name: for ids the program holds)."""
        rows = self._people("WHERE p.id = ?", (person_id,))
        if not rows:
            raise UnknownPersonError(person_id)
        return rows[0]

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
            return self.get_person(exc.existing_id), False

    def list_people(self) -> list[Person]:
        return self._people("", ())

    def rename_person(self, person_id: str, name: str) -> Person:
        name = clean_name(name)
        with self.db.change() as conn:
            self._require_person(conn, person_id)
            self._check_name_free(conn, name, person_id)
            conn.execute(
                "UPDATE people SET name = ?, name_key = ?, updated = ? WHERE id = ?",
                (name, name_key(name), _now(), person_id),
            )
        return self.get_person(person_id)

    def remove_person(self, person_id: str) -> None:
        """Erase a person: their rows, their cached embeddings, their sample files."""
        with self.db.change() as conn:
            self._require_person(conn, person_id)
            conn.execute("DELETE FROM people WHERE id = ?", (person_id,))  # cascades
        self.db.erase(person_id, None)

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
        try:
            with self.db.change() as conn:
                self._require_person(conn, person_id)
                duplicate = conn.execute(
                    "SELECT s.id, p.name FROM samples s JOIN people p ON p.id = s.person_id "
                    "WHERE s.sha256 = ?",
                    (digest,),
                ).fetchone()
                if duplicate is not None:
                    raise DuplicateSampleError(digest, duplicate[0], duplicate[1])
                self.db.put_crop(conn, person_id, sample_id, png.tobytes())
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
            self.db.discard_crop(person_id, sample_id)  # not committed: nor its crop
            raise
        path = self.db.crop_path(person_id, sample_id)
        return Sample(sample_id, person_id, path, _frozen(points), quality, source, digest, now)

    def remove_sample(self, sample_id: str) -> None:
        with self.db.change() as conn:
            query = "SELECT person_id FROM samples WHERE id = ?"
            row = conn.execute(query, (sample_id,)).fetchone()
            if row is None:
                raise UnknownSampleError(sample_id)
            conn.execute("DELETE FROM samples WHERE id = ?", (sample_id,))  # and its embeddings
            conn.execute("UPDATE people SET updated = ? WHERE id = ?", (_now(), row[0]))
        self.db.erase(row[0], sample_id)

    def samples(self, person_id: str | None = None) -> list[Sample]:
        """Samples, oldest first: everyone's, or one person's."""
        if person_id is None:
            rows = self.db.query(f"SELECT {_SAMPLE_COLUMNS} FROM samples ORDER BY created, id")
        else:
            rows = self.db.query(
                f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE person_id = ? ORDER BY created, id",
                (person_id,),
            )
            if not rows and not self.db.query("SELECT 1 FROM people WHERE id = ?", (person_id,)):
                raise UnknownPersonError(person_id)
        return [self._sample(row) for row in rows]

    def load_crop(self, sample: Sample) -> NDArray[np.uint8]:
        """The sample's crop [h, w, 3] uint8 BGR, checked against its content hash."""
        png = self.db.read_crop(sample.person_id, sample.id)
        crop = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        if crop is None or crop_sha256(crop) != sample.sha256:
            where = sample.path or self.where
            raise StoreError(f"sample {sample.id} ({where}) is damaged: content hash differs")
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
            rows = self.db.query(
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
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO embeddings (backbone_sha256, sample_sha256, vector) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM samples WHERE sha256 = ?) "
                "ON CONFLICT (backbone_sha256, sample_sha256) "
                "DO UPDATE SET vector = excluded.vector",
                rows,
            )

    # --- internals ------------------------------------------------------------------

    def _people(self, where: str, params: Sequence[object]) -> list[Person]:
        rows = self.db.query(
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
            path=self.db.crop_path(person_id, sample_id),
            landmarks=_frozen(np.asarray(json.loads(landmarks), np.float32)),
            quality=Quality(face_px, sharp, frontal, score),
            source=source,
            sha256=digest,
            created=at,
        )

    @staticmethod
    def _require_person(conn: Session, person_id: str) -> None:
        if conn.execute("SELECT 1 FROM people WHERE id = ?", (person_id,)).fetchone() is None:
            raise UnknownPersonError(person_id)

    @staticmethod
    def _check_name_free(conn: Session, name: str, person_id: str) -> None:
        row = conn.execute(
            "SELECT id, name FROM people WHERE name_key = ? AND id != ?",
            (name_key(name), person_id),
        ).fetchone()
        if row is not None:
            raise DuplicatePersonError(name, row[0], row[1])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _frozen(points: NDArray[np.float32]) -> NDArray[np.float32]:
    points = np.array(points, np.float32)
    points.setflags(write=False)
    return points
