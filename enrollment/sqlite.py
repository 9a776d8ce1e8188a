"""The enrollment store on SQLite: the embedded default, one folder per installation.

Layout of the folder (``settings.state_dir / "enrollment"``), owner-only because face
data is biometric (directories 0700, files 0600; SQLite gives its ``-wal`` and ``-shm``
files the same mode)::

    store.sqlite3                        people, samples, the embedding cache, the revision
    samples/<person_id>/<sample_id>.png  one face crop with margin per sample

The only module that touches ``sqlite3``; every ``sqlite3.Error`` becomes a
``StoreError`` here. SQLite runs in WAL mode with a busy timeout, so one process can
write (the server) while another reads (the trainer).

Crash safety: a sample's file is written under a temporary name, fsynced and renamed
while the database's write lock is held, and only then is its row committed. A crash
before the commit leaves a file without a row; opening the store (which takes the same
lock, so it never races a writer) deletes such files. A crash can therefore lose only
the change that was in flight, never a committed one, and never leaves a half sample.

One ``SqliteDatabase`` per thread (it owns one SQLite connection).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from enrollment.database import SOURCES, Session
from enrollment.errors import StoreError
from enrollment.files import remove_path, write_private_file
from facecore.config import ensure_private_dir
from facecore.text import counted

__all__ = ["BUSY_TIMEOUT_MS", "DATABASE", "SCHEMA_VERSION", "WAKE_SECONDS", "SqliteDatabase"]

log = logging.getLogger(__name__)

DATABASE = "store.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000  # how long a writer waits for another process's write lock
WAKE_SECONDS = 0.25  # how often wait_for_change reads the revision (one single-row read)
_SAMPLES = "samples"
_SCRUB_TIMEOUT_MS = 200  # how long erasing waits for readers to leave the write-ahead log

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS people (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    person_id TEXT NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL UNIQUE,
    landmarks TEXT NOT NULL,
    face_px REAL NOT NULL,
    sharpness REAL NOT NULL,
    frontalness REAL NOT NULL,
    score REAL NOT NULL,
    source TEXT NOT NULL CHECK (source IN {SOURCES!r}),
    created TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS samples_person ON samples (person_id);
CREATE TABLE IF NOT EXISTS embeddings (
    backbone_sha256 TEXT NOT NULL,
    sample_sha256 TEXT NOT NULL REFERENCES samples (sha256) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    PRIMARY KEY (backbone_sha256, sample_sha256)
) STRICT;
CREATE INDEX IF NOT EXISTS embeddings_sample ON embeddings (sample_sha256);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class SqliteDatabase:
    """The store in the folder ``root``: one SQLite connection to its database, in WAL
    mode, foreign keys on, deleted content zeroed (``secure_delete``), and the crops'
    files. Use it from the thread that made it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = path = self.root / DATABASE
        self.where = str(self.root)
        self._samples_dir = self.root / _SAMPLES
        try:
            if not self.root.exists():  # one the user made (enroll copy --to) keeps its mode
                ensure_private_dir(self.root)
            ensure_private_dir(self._samples_dir)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            path.chmod(0o600)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the enrollment database {path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            self._configure(conn)
            self._remove_orphans()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of one read statement (its own snapshot of the committed state)."""
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the enrollment database {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. BEGIN IMMEDIATE takes the write lock at once, so what
        the body reads stays true until it commits; an exception rolls it back."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot write the enrollment database {self.path}: {exc}") from exc

    @contextmanager
    def change(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that also raises the store's revision."""
        with self.transaction() as conn:
            yield conn
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")

    def put_crop(self, session: Session, person_id: str, sample_id: str, png: bytes) -> None:
        """Write the crop's file while the transaction holds the write lock; the store
        deletes it again when the transaction does not commit."""
        path = self._crop_file(person_id, sample_id)
        try:
            ensure_private_dir(path.parent)
            write_private_file(path, png)
        except OSError as exc:
            raise StoreError(f"cannot write the sample file {path}: {exc}") from exc

    def discard_crop(self, person_id: str, sample_id: str) -> None:
        """Remove the file of a crop whose row was not committed."""
        self._crop_file(person_id, sample_id).unlink(missing_ok=True)

    def read_crop(self, person_id: str, sample_id: str) -> bytes:
        path = self._crop_file(person_id, sample_id)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read sample {sample_id} ({path}): {exc}") from exc

    def crop_path(self, person_id: str, sample_id: str) -> Path | None:
        return self._crop_file(person_id, sample_id)

    def erase(self, person_id: str, sample_id: str | None) -> None:
        """Delete the files of committed-away samples, then push the deleted rows out
        of the write-ahead log so no copy of them stays on disk."""
        path = self._samples_dir / person_id
        if sample_id is not None:
            path = self._crop_file(person_id, sample_id)
        try:
            remove_path(path)
        except OSError as exc:
            raise StoreError(
                f"the rows are deleted but {path} could not be erased ({exc}); "
                "it is erased the next time the store is opened"
            ) from exc
        self._scrub()

    def wait_for_change(self, revision: int, timeout: float) -> None:
        """Read the revision every ``WAKE_SECONDS`` (SQLite has no notifications)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(WAKE_SECONDS, left))
            if self.query("SELECT value FROM meta WHERE key = 'revision'")[0][0] != revision:
                return

    def _crop_file(self, person_id: str, sample_id: str) -> Path:
        return self._samples_dir / person_id / f"{sample_id}.png"

    def _scrub(self) -> None:
        """Copy the write-ahead log into the database and truncate it, so that deleted
        rows leave no copy on disk. Waits only briefly for readers: when one holds an
        old snapshot, the log is scrubbed by a later checkpoint instead."""
        conn = self._connection()
        try:
            conn.execute(f"PRAGMA busy_timeout = {_SCRUB_TIMEOUT_MS}")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            message = f"cannot checkpoint the enrollment database {self.path}: {exc}"
            raise StoreError(message) from exc
        if busy:
            log.debug("the write-ahead log of %s is in use; it is scrubbed later", self.path)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the enrollment database {self.path} is closed")
        return self._conn

    def _refuse_a_lost_database(self) -> None:
        """A database without tables (deleted, or emptied) beside stored crops is a lost
        one, not a new store: opening it would take every crop for an orphan and erase
        it. Refused, with nothing changed, so that the database can be restored."""
        try:
            tables = self._connection().execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            people = sum(1 for entry in self._samples_dir.iterdir() if entry.is_dir())
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot read the enrollment store {self.root}: {exc}") from exc
        if tables == 0 and people:
            raise StoreError(
                f"the enrollment database {self.path} is missing or empty, but "
                f"{self._samples_dir} holds the face crops of {counted(people, 'person')}: "
                f"restore the database from a backup, or move {_SAMPLES}/ away to start a "
                "new store; nothing was changed"
            )

    def _remove_orphans(self) -> None:
        """Delete sample files without a committed row (a crash between a sample's file
        write and its commit) and temporary files. Runs under the write lock, so a
        writer in another process is never between its file write and its commit."""
        with self.transaction() as conn:
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

    def _configure(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer facestream (schema {version}, "
                f"this one reads {SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            self._refuse_a_lost_database()
            with self.transaction() as locked:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        locked.execute(statement)
