"""The enrollment store's SQLite database: schema, connection settings, transactions.

The only module that touches ``sqlite3``; every ``sqlite3.Error`` becomes a
``StoreError`` here. The file is created owner-only (0600); SQLite gives its ``-wal``
and ``-shm`` files the same mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from enrollment.errors import StoreError

__all__ = ["BUSY_TIMEOUT_MS", "SCHEMA_VERSION", "SOURCES", "Database"]

log = logging.getLogger(__name__)

SOURCES = ("photo", "folder", "live")  # where a sample came from
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000  # how long a writer waits for another process's write lock
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


class Database:
    """One SQLite connection to the store's database, in WAL mode, foreign keys on,
    deleted content zeroed (``secure_delete``). Use it from the thread that made it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            path.chmod(0o600)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the enrollment database {path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            self._configure(conn)
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

    def scrub(self) -> None:
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
            with self.transaction() as locked:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        locked.execute(statement)
