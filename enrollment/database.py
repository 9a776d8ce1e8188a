"""What the enrollment store needs from a database; `enrollment.store.open_database`
picks one.

Two implement it: `SqliteDatabase` (``enrollment.sqlite``; the embedded default, a
folder with a SQLite file and one PNG file per sample) and `PostgresDatabase`
(``enrollment.postgres``; one server shared by several boxes, the crops in the
database). The store's SQL is written once, in the dialect both accept, with ``?``
placeholders; each database keeps its own schema and where the crops live.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

__all__ = ["POSTGRES_SCHEMES", "SOURCES", "Database", "Session", "is_postgres_url",
           "retry_delay"]

SOURCES = ("photo", "folder", "live")  # where a sample came from
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Session(Protocol):
    """The statements of one write transaction (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, params: Sequence[object] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[object]], /) -> Any: ...


class Database(Protocol):
    where: str  # for messages: the folder, or the URL without its password

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of one read statement (its own snapshot of the committed state)."""
        ...

    def transaction(self) -> AbstractContextManager[Session]:
        """A write transaction, holding the store's write lock from its start, so that
        what the body reads stays true until it commits; an exception rolls it back."""
        ...

    def change(self) -> AbstractContextManager[Session]:
        """A write transaction that also raises the store's revision."""
        ...

    def put_crop(self, session: Session, person_id: str, sample_id: str, png: bytes) -> None:
        """Store a sample's PNG as part of the transaction ``session`` (before its row)."""
        ...

    def discard_crop(self, person_id: str, sample_id: str) -> None:
        """Undo ``put_crop`` of a transaction that did not commit (rows roll back by
        themselves; a file does not)."""
        ...

    def read_crop(self, person_id: str, sample_id: str) -> bytes:
        ...

    def crop_path(self, person_id: str, sample_id: str) -> Path | None:
        """The crop's file, for a database that keeps crops in files; None otherwise."""
        ...

    def erase(self, person_id: str, sample_id: str | None) -> None:
        """After a committed delete of a person (``sample_id`` None) or one sample:
        remove what outlives the rows (files, copies in logs or dead rows)."""
        ...

    def wait_for_change(self, revision: int, timeout: float) -> None:
        """Return once the revision is no longer ``revision``, or after ``timeout`` s."""
        ...

    def close(self) -> None: ...


def retry_delay(attempt: int, most: float) -> float:
    """Seconds to wait before retrying a database that cannot be reached, after
    ``attempt`` failures in a row: 1, 2, 4 ... up to ``most``."""
    return min(2.0 ** max(attempt - 1, 0), most)


def is_postgres_url(location: Path | str) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)
