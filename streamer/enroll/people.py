"""Faces are named as the enrollment store has its people now, not as the bundle in
force had them when it was fitted: in the server and in ``facestream run`` and
``webcam``.

A bundle holds the people of the store revision it was fitted on. Without this, a
person erased from the admin page or by ``facestream enroll remove`` would still be
named until the trainer publishes again (seconds with the trainer service, never
while nobody runs ``trainer --once``), and a renamed person would keep the old name.
So every ``POLL_SECONDS`` the store's revision is read (one small query, in the
enrollment worker's thread) and, when it has moved, the engine is given the people
as they are (`Engine.use_people`).

`following_people` does that while a block runs. ``run`` and ``webcam``
(`streamer.cli`) have it read the people once before the block starts, so that a
file run at full speed names no erased person in its first frames; the server
(`follow_people`, for as long as its application runs) starts without waiting and
reads them within its first turn. A store that cannot be read (PostgreSQL down) is
warned of once: faces keep the names they had, and each turn tries again. A SQLite
store not made yet is not made here (`EnrollmentWorker.call_if_stored`): until one
is, faces are named as the bundle has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from enrollment.errors import StoreError
from enrollment.store import EnrollmentStore
from streamer.enroll.worker import EnrollmentWorker
from streamer.errors import ClosedError
from streamer.live.engine import Engine
from streamer.live.recognizer import EnrolledPeople

if TYPE_CHECKING:  # `run` and `webcam` import this module: no web server for them
    from aiohttp import web

__all__ = ["POLL_SECONDS", "follow_people", "following_people"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def follow_people(app: web.Application, engine: Engine, worker: EnrollmentWorker) -> None:
    """Have ``engine`` follow the people of ``worker``'s store while ``app`` runs
    (without holding up its start for the first read)."""

    async def following(app: web.Application) -> AsyncIterator[None]:
        async with following_people(engine, worker, read_first=False):
            yield

    app.cleanup_ctx.append(following)


@contextlib.asynccontextmanager
async def following_people(
    engine: Engine, worker: EnrollmentWorker, *, read_first: bool = True
) -> AsyncIterator[None]:
    """Have ``engine`` follow the people of ``worker``'s store while the block runs.
    With ``read_first``, the block starts once they have been read (or could not be:
    faces are then named as the bundle has them), not before."""
    follower = _Follower(engine, worker)
    if read_first:
        with contextlib.suppress(ClosedError):  # closed: the task below ends at once
            await follower.turn()
    task = asyncio.create_task(follower.follow(now=not read_first), name="facestream-people")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Follower:
    """The people last given to the engine, and whether the last read failed."""

    def __init__(self, engine: Engine, worker: EnrollmentWorker) -> None:
        self.engine = engine
        self.worker = worker
        self.seen: int | None = None  # the store revision whose people the engine has
        self.failing = False

    async def follow(self, *, now: bool) -> None:
        """A turn every ``POLL_SECONDS`` (the first at once with ``now``) until
        cancelled or the worker is closed."""
        with contextlib.suppress(ClosedError):
            if now:
                await self.turn()
            while True:
                await asyncio.sleep(POLL_SECONDS)
                await self.turn()

    async def turn(self) -> None:
        """Give the engine the store's people if its revision has moved since the last
        turn. Raises `ClosedError` once the worker is closed."""
        try:
            people = await self.worker.call_if_stored(_people_since(self.seen))
        except StoreError as exc:  # PostgreSQL down: the names stay, the next turn retries
            if not self.failing:
                log.warning("cannot read the enrollment store's people: %s", exc)
            self.failing = True
            return
        if self.failing:
            log.info("the enrollment store's people can be read again")
        self.failing = False
        if people is not None:
            self.seen = people.revision
            self.engine.use_people(people)


def _people_since(seen: int | None) -> Callable[[EnrollmentStore], EnrolledPeople | None]:
    """A store job: the store's people, or None while its revision is still ``seen``."""

    def job(store: EnrollmentStore) -> EnrolledPeople | None:
        revision = store.revision()
        if revision == seen:
            return None
        names = {p.id: p.name for p in store.list_people()}
        return EnrolledPeople(revision, names, store.identity())

    return job
