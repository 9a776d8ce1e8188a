"""The server follows the enrollment store's people, so that faces are named as the
store has them now, not as the served bundle had them when it was fitted.

A bundle holds the people of the store revision it was fitted on. Without this, a
person erased from the admin page or by ``facestream enroll remove`` would still be
named until the trainer publishes again (seconds with the trainer service, never
while nobody runs ``trainer --once``), and a renamed person would keep the old name.
So every ``POLL_SECONDS`` the server reads the store's revision (one small query, in
the enrollment worker's thread) and, when it has moved, gives the engine the people
as they are (`Engine.use_people`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from enrollment.errors import StoreError
from enrollment.store import EnrollmentStore
from streamer.enroll.worker import EnrollmentWorker
from streamer.errors import ClosedError
from streamer.live.engine import Engine
from streamer.live.recognizer import EnrolledPeople

__all__ = ["POLL_SECONDS", "follow_people"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def follow_people(app: web.Application, engine: Engine, worker: EnrollmentWorker) -> None:
    """Have ``engine`` follow the people of ``worker``'s store while ``app`` runs."""

    async def following(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_follow(engine, worker), name="facestream-people")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(following)


async def _follow(engine: Engine, worker: EnrollmentWorker) -> None:
    seen: int | None = None
    failing = False
    while True:
        try:
            people = await worker.call(_people_since(seen))
        except ClosedError:
            return
        except StoreError as exc:  # PostgreSQL down: the names stay, the next turn retries
            if not failing:
                log.warning("cannot read the enrollment store's people: %s", exc)
            failing = True
        else:
            if failing:
                log.info("the enrollment store's people can be read again")
            failing = False
            if people is not None:
                seen = people.revision
                engine.use_people(people)
        await asyncio.sleep(POLL_SECONDS)


def _people_since(seen: int | None) -> Callable[[EnrollmentStore], EnrolledPeople | None]:
    """A store job: the store's people, or None while its revision is still ``seen``."""

    def job(store: EnrollmentStore) -> EnrolledPeople | None:
        revision = store.revision()
        if revision == seen:
            return None
        return EnrolledPeople(revision, {p.id: p.name for p in store.list_people()})

    return job
