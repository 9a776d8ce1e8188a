"""The enrollment store on PostgreSQL: one database shared by several boxes.

``enrollment.database_url = "postgresql://USER@HOST/DB"`` (a password is better kept in
``~/.pgpass`` or ``PGPASSWORD`` than in the URL). The only module that touches
``psycopg``; every ``psycopg.Error`` becomes a ``StoreError`` here, and a server that
cannot be reached, or a connection lost, a ``StoreUnavailableError``: the next call
connects again.

Synchronous ``psycopg``, like the SQLite store, rather than its async API: the server
runs every store call in its one enrollment thread (``streamer/enroll/worker.py``), so
the event loop never waits on the database, and the server, the trainer and the
``enroll`` CLI share one `EnrollmentStore` interface.

The crops live in the database (table ``crops``, ``bytea``), not in files: a sample and
its image commit in one transaction, so a connection lost mid-enrollment leaves
nothing half-written, and no box needs a shared filesystem for the store.

Writers take the one ``meta`` revision row ``FOR UPDATE`` first, so they run one at a
time, as on SQLite. Every change raises the revision and sends ``NOTIFY
facestream_enrollment`` (delivered at commit); ``wait_for_change`` LISTENs for it, so
the trainer learns of a new sample without polling.

The schema is versioned (``MIGRATIONS``; the table ``schema_migrations`` records what
was applied). Opening a store applies the missing migrations in one transaction,
under an advisory lock so that two boxes starting together do not both apply them; a
store from a newer facestream is refused with the versions named.

Erasure: ``remove_person`` and ``remove_sample`` delete the rows (people, samples,
crops, embeddings) in one transaction, then run ``VACUUM FULL`` on those tables. A
plain VACUUM would only mark the dead rows' space free: their bytes stay in the
table's pages until reused (seen in the tests with ``pageinspect``). VACUUM FULL
rewrites each table into new files and drops the old ones, so no page of the
database holds the removed face. It locks each table for its run: a second or two
for ten thousand crops, and removals are rare. What it cannot reach: WAL segments
written before the removal keep the image until they are recycled after a
checkpoint; archived WAL, base backups and replicas are the operator's to expire; a
filesystem may keep the dropped files' blocks until they are reused (as it does for
any deleted file).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from enrollment.database import SOURCES, Cursor
from enrollment.errors import StoreError, StoreUnavailableError
from facecore.config import redacted_url

__all__ = ["CHANNEL", "MIGRATIONS", "AdvisoryLock", "PostgresDatabase"]

log = logging.getLogger(__name__)

CHANNEL = "facestream_enrollment"  # NOTIFY channel; the payload is the new revision
CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK = 0x66730001  # advisory lock keys (any 64-bit numbers, fixed)

# Migration N (1-based) brings the schema from version N-1 to N. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('revision', 0);
    CREATE TABLE people (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        name_key TEXT COLLATE "C" NOT NULL UNIQUE,
        created TEXT NOT NULL,
        updated TEXT NOT NULL
    );
    CREATE TABLE samples (
        id TEXT PRIMARY KEY,
        person_id TEXT NOT NULL REFERENCES people (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL UNIQUE,
        landmarks TEXT NOT NULL,
        face_px DOUBLE PRECISION NOT NULL,
        sharpness DOUBLE PRECISION NOT NULL,
        frontalness DOUBLE PRECISION NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL CHECK (source IN {SOURCES!r}),
        created TEXT NOT NULL
    );
    CREATE INDEX samples_person ON samples (person_id);
    -- written before its sample's row in the same transaction: the check waits for COMMIT
    CREATE TABLE crops (
        sample_id TEXT PRIMARY KEY
            REFERENCES samples (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
        png BYTEA NOT NULL
    );
    ALTER TABLE crops ALTER COLUMN png SET STORAGE EXTERNAL;  -- PNG is compressed already
    CREATE TABLE embeddings (
        backbone_sha256 TEXT NOT NULL,
        sample_sha256 TEXT NOT NULL REFERENCES samples (sha256) ON DELETE CASCADE,
        vector BYTEA NOT NULL,
        PRIMARY KEY (backbone_sha256, sample_sha256)
    );
    CREATE INDEX embeddings_sample ON embeddings (sample_sha256);
    """,
)


class _Session:
    """The store's ``?`` placeholders as psycopg's ``%s`` (the store's SQL has no other
    ``?`` or ``%``), on the transaction's connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self._conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)


class PostgresDatabase:
    """The store in the PostgreSQL database at ``url``: one connection for queries and
    writes, one more for LISTEN once ``wait_for_change`` is used. Use it from the
    thread that made it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted_url(url)
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._closed = False
        try:
            with self._errors("open"):
                self._migrate(self._connection())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._closed = True
        for conn in (self._conn, self._listener):
            if conn is not None:
                conn.close()
        self._conn = self._listener = None

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._errors("read"):
            return self._connection().execute(sql.replace("?", "%s"), params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[_Session]:
        with self._errors("write"):
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
                yield _Session(conn)

    @contextmanager
    def change(self) -> Iterator[_Session]:
        with self.transaction() as session:
            yield session
            session.execute(
                "WITH raised AS (UPDATE meta SET value = value + 1 WHERE key = 'revision' "
                "RETURNING value) SELECT pg_notify(?, raised.value::text) FROM raised",
                (CHANNEL,),
            )

    def put_crop(self, session: _Session, person_id: str, sample_id: str, png: bytes) -> None:
        session.execute("INSERT INTO crops (sample_id, png) VALUES (?, ?)", (sample_id, png))

    def discard_crop(self, person_id: str, sample_id: str) -> None:
        """Nothing to do: the crop's row rolled back with the transaction."""

    def read_crop(self, person_id: str, sample_id: str) -> bytes:
        rows = self.query("SELECT png FROM crops WHERE sample_id = ?", (sample_id,))
        if not rows:
            raise StoreError(f"sample {sample_id} has no crop in {self.where}")
        return bytes(rows[0][0])

    def crop_path(self, person_id: str, sample_id: str) -> Path | None:
        return None

    def erase(self, person_id: str, sample_id: str | None) -> None:
        """Rewrite the tables the rows were deleted from (see the module docstring)."""
        with self._errors("erase the deleted rows from"):
            self._connection().execute("VACUUM FULL crops, embeddings, samples, people")

    def wait_for_change(self, revision: int, timeout: float) -> None:
        """Wait for a NOTIFY on ``CHANNEL``. Notifications queued while nobody waited
        are dropped first, then the revision is read, so a change made before the
        wait returns at once and a stale notification never wakes it."""
        with self._errors("listen"):
            listener = self._listening()
            for _ in listener.notifies(timeout=0):
                pass
            if self._revision() != revision:
                return
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                pass

    # --- internals ------------------------------------------------------------------

    def _revision(self) -> int:
        return int(self.query("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"the enrollment database {self.where} is closed")
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.url, self.where)
        return self._conn

    def _listening(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            listener = _connect(self.url, self.where)
            listener.execute(f"LISTEN {CHANNEL}")
            self._listener = listener
        return self._listener

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """psycopg's errors as the store's; a broken connection is dropped, so that
        the next call connects again. A lost server drops both: when it restarts, the
        one not in use does not know it is dead until it is used (and fails then)."""
        try:
            yield
        except psycopg.Error as exc:
            broken = [c for c in (self._conn, self._listener) if c is not None and c.broken]
            if broken or isinstance(exc, psycopg.OperationalError):
                for conn in (self._conn, self._listener):
                    if conn is not None:
                        conn.close()
                raise StoreUnavailableError(
                    f"the enrollment database {self.where} is unreachable ({doing}): "
                    f"{_first_line(exc)}"
                ) from exc
            raise StoreError(
                f"cannot {doing} the enrollment database {self.where}: {_first_line(exc)}"
            ) from exc

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            version = int(row.fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the enrollment database {self.where} was written by a newer facestream "
                    f"(schema {version}, this one reads up to {len(MIGRATIONS)}): upgrade "
                    "facestream on this box"
                )
            for number in range(version + 1, len(MIGRATIONS) + 1):
                log.info("enrollment database %s: applying migration %d", self.where, number)
                conn.execute(MIGRATIONS[number - 1])
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock, held by a connection of its own: the
    server drops it when the holder's connection ends, even when the holder is killed
    or its box is cut off (once the server notices the dead connection)."""

    def __init__(self, url: str, key: int) -> None:
        self.url = url
        self.where = redacted_url(url)
        self.key = key
        self.held = False
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._session()  # a server that cannot be reached is an error now, not later

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when it is held now. A lock held on a
        connection that was lost is gone: it is taken again, on a new connection, if
        it is free (a server that restarted ended the old one: that is no outage)."""
        if self.held and not self._session_alive():
            self._drop()
        if self.held:
            return True
        try:
            row = self._session().execute(
                "SELECT pg_try_advisory_lock(%s)", (self.key,)
            ).fetchone()
            self.held = bool(row[0])
        except psycopg.Error as exc:
            self._drop()
            raise StoreUnavailableError(
                f"the enrollment database {self.where} is unreachable (lock): "
                f"{_first_line(exc)}"
            ) from exc
        return self.held

    def holder(self) -> str:
        """Who holds the lock, for messages: its application name and address."""
        try:
            row = self._session().execute(
                "SELECT a.application_name, a.client_addr FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                (self.key,),
            ).fetchone()
        except psycopg.Error:
            return "unknown"
        if row is None:
            return "nobody now"
        return f"{row[0] or 'unnamed'} from {row[1] or 'a local socket'}"

    def close(self) -> None:
        self._closed = True
        self._drop()  # ends the session: the lock goes with it

    def _session_alive(self) -> bool:
        """Whether the session holding the lock, and so the lock, still exists."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _session(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"the lock on {self.where} is closed")
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.url, self.where)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.held = False


def _connect(url: str, where: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=f"facestream pid {os.getpid()} on {socket.gethostname()}",
        )
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"the enrollment database {where} is unreachable: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

