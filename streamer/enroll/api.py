"""The enrollment API and the admin page, on the phone page's server.

Routes (every one needs the token, like the rest of the server)::

    GET    /admin                              the admin page
    GET    /api/people                         {"people": [Person...]}
    POST   /api/people            {"name"}     201 Person; 409 when the name is taken
    GET    /api/people/{person}                Person
    PATCH  /api/people/{person}   {"name"}     Person (renamed); 409 when the name is taken
    DELETE /api/people/{person}                204; the person's samples are erased
    GET    /api/people/{person}/samples        {"person": Person, "samples": [Sample...]}
    POST   /api/people/{person}/samples        multipart photos -> per-file report
    DELETE /api/samples/{sample}               204
    GET    /api/samples/{sample}/thumbnail     a small JPEG of the face crop
    GET    /api/model, /api/model/{version}/files/{name}    see `streamer.web.model_api`

``{person}`` is a person's id or display name (any case); one that is the id of
one person and the name of another is refused with 409, naming both. An upload request's whole
body may be at most ``server.max_upload_mb`` MiB: a larger declared length is refused
at once and a chunked body as soon as it passes the limit, with 413, before the rest
is read. Each file is checked by its content (`enrollment.ingest`), never by its name
or declared type; the report says for each whether it became a sample or why not.
The status is 200 when at least one file was accepted; otherwise 400 (empty files),
415 (not images), 413 (images too large), 409 (duplicates) or 422 (anything else,
e.g. no face), with the report. Errors are JSON ``{"error", "reason"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import cv2
from aiohttp import BodyPartReader, web

from enrollment.errors import (
    AmbiguousPersonError,
    DuplicatePersonError,
    EnrollmentError,
    InvalidNameError,
    StoreError,
    StoreUnavailableError,
    UnknownPersonError,
    UnknownSampleError,
)
from enrollment.ingest import IngestResult, Outcome, ingest_photo
from enrollment.store import EnrollmentStore, Person, Sample
from facecore.config import Settings
from streamer.enroll.people import follow_people
from streamer.enroll.worker import EnrollmentWorker
from streamer.web.model_api import add_model_routes
from streamer.web.server import (
    BODY_ERRORS,
    ENGINE,
    STATIC_DIR,
    bad_request,
    body_error,
    error_response,
    read_json_object,
)

__all__ = [
    "ENROLLMENT",
    "MAX_FILES",
    "THUMBNAIL_PX",
    "UPLOAD_LIMIT",
    "add_enrollment_routes",
    "person_json",
]

log = logging.getLogger(__name__)

ENROLLMENT: web.AppKey[EnrollmentWorker] = web.AppKey("enrollment")
UPLOAD_LIMIT: web.AppKey[int] = web.AppKey("upload_limit")  # bytes per upload request
MAX_FILES = 20  # files per upload request
THUMBNAIL_PX = 160  # longest side of a thumbnail
THUMBNAIL_QUALITY = 85
CHUNK = 64 * 1024

# the status of an upload in which no file was accepted, by the set of outcomes
_ALL_REJECTED = (
    (frozenset({Outcome.EMPTY_FILE}), 400),
    (frozenset({Outcome.UNREADABLE, Outcome.EMPTY_FILE}), 415),
    (frozenset({Outcome.FILE_TOO_LARGE, Outcome.IMAGE_TOO_LARGE}), 413),
    (frozenset({Outcome.DUPLICATE}), 409),
)
_ERROR_STATUS: tuple[tuple[type[EnrollmentError], int], ...] = (
    (UnknownPersonError, 404),
    (UnknownSampleError, 404),
    (AmbiguousPersonError, 409),
    (DuplicatePersonError, 409),
    (InvalidNameError, 400),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_enrollment_routes(app: web.Application, settings: Settings) -> EnrollmentWorker:
    """Add the routes above to the server's ``app`` (made by `streamer.web.server.create_app`,
    whose auth middleware guards them), and have its engine name faces as the store
    has its people (`streamer.enroll.people`). The store worker is closed when the
    application is cleaned up."""
    worker = EnrollmentWorker.from_settings(settings)
    app[ENROLLMENT] = worker
    follow_people(app, app[ENGINE], worker)
    app[UPLOAD_LIMIT] = settings.server.max_upload_mb * 2**20
    app.on_cleanup.append(_close_worker)
    add = app.router
    add.add_get("/admin", _admin_page)
    add.add_get("/api/people", _store_errors(_list_people))
    add.add_post("/api/people", _store_errors(_create_person))
    add.add_get("/api/people/{person}", _store_errors(_get_person))
    add.add_patch("/api/people/{person}", _store_errors(_rename_person))
    add.add_delete("/api/people/{person}", _store_errors(_remove_person))
    add.add_get("/api/people/{person}/samples", _store_errors(_list_samples))
    add.add_post("/api/people/{person}/samples", _store_errors(_upload))
    add.add_delete("/api/samples/{sample}", _store_errors(_remove_sample))
    add.add_get("/api/samples/{sample}/thumbnail", _store_errors(_thumbnail))
    add_model_routes(app)
    return worker


async def _close_worker(app: web.Application) -> None:
    await asyncio.get_running_loop().run_in_executor(None, app[ENROLLMENT].close)


def person_json(person: Person) -> dict[str, object]:
    return {
        "id": person.id,
        "name": person.name,
        "created": person.created,
        "updated": person.updated,
        "sample_count": person.sample_count,
    }


def _sample_json(sample: Sample) -> dict[str, object]:
    quality = sample.quality
    return {
        "id": sample.id,
        "person_id": sample.person_id,
        "source": sample.source,
        "created": sample.created,
        "quality": {
            "face_px": round(quality.face_px, 1),
            "sharpness": round(quality.sharpness, 1),
            "frontalness": round(quality.frontalness, 3),
            "score": round(quality.score, 3),
        },
        "thumbnail": f"/api/samples/{sample.id}/thumbnail",
    }


def _result_json(result: IngestResult) -> dict[str, object]:
    return {
        "name": result.path,
        "accepted": result.accepted,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "sample_id": result.sample_id,
    }


def _store_errors(handler: Handler) -> Handler:
    """Answer the store's errors as JSON: unknown 404, taken name or ambiguous
    reference 409, bad name 400, a database that cannot be reached 503; a store that
    cannot be used 500 (logged)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailableError as exc:
            # its words name the database's host, port and user: for the log, not clients
            log.warning("%s %s: %s", request.method, request.path, exc)
            return error_response(503, "the enrollment database cannot be reached right now; "
                                  "try again shortly (the server's log says why)")
        except EnrollmentError as exc:
            for kind, status in _ERROR_STATUS:
                if isinstance(exc, kind):
                    return error_response(status, str(exc))
            log.error("enrollment store failure on %s %s: %s", request.method, request.path, exc)
            return error_response(500, "the enrollment store failed (the server's log says why)")

    return wrapped


async def _json_name(request: web.Request) -> str:
    """The ``name`` of a JSON body ``{"name": "..."}``; 400 otherwise."""
    shape = 'a JSON object {"name": string}'
    name = (await read_json_object(request, shape)).get("name")
    if not isinstance(name, str):
        raise bad_request(f"expected {shape}")
    return name


async def _admin_page(request: web.Request) -> web.Response:
    text = (STATIC_DIR / "admin.html").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="text/html", charset="utf-8")


# --- people ---------------------------------------------------------------------------


async def _list_people(request: web.Request) -> web.Response:
    people = await request.app[ENROLLMENT].call(lambda store: store.list_people())
    return web.json_response({"people": [person_json(p) for p in people]})


async def _create_person(request: web.Request) -> web.Response:
    name = await _json_name(request)
    person = await request.app[ENROLLMENT].call(lambda store: store.add_person(name))
    return web.json_response(
        person_json(person), status=201, headers={"Location": f"/api/people/{person.id}"}
    )


async def _get_person(request: web.Request) -> web.Response:
    key = request.match_info["person"]
    person = await request.app[ENROLLMENT].call(lambda store: store.find_person(key))
    return web.json_response(person_json(person))


async def _rename_person(request: web.Request) -> web.Response:
    key = request.match_info["person"]
    name = await _json_name(request)

    def rename(store: EnrollmentStore) -> Person:
        return store.rename_person(store.find_person(key).id, name)

    person = await request.app[ENROLLMENT].call(rename)
    return web.json_response(person_json(person))


async def _remove_person(request: web.Request) -> web.Response:
    key = request.match_info["person"]
    await request.app[ENROLLMENT].call(lambda store: store.remove_person(store.find_person(key).id))
    return web.Response(status=204)


# --- samples --------------------------------------------------------------------------


async def _list_samples(request: web.Request) -> web.Response:
    key = request.match_info["person"]

    def listing(store: EnrollmentStore) -> tuple[Person, list[Sample]]:
        person = store.find_person(key)
        return person, store.samples(person.id)

    person, samples = await request.app[ENROLLMENT].call(listing)
    return web.json_response(
        {"person": person_json(person), "samples": [_sample_json(s) for s in samples]}
    )


async def _remove_sample(request: web.Request) -> web.Response:
    sample_id = request.match_info["sample"]
    await request.app[ENROLLMENT].call(lambda store: store.remove_sample(sample_id))
    return web.Response(status=204)


def _find_sample(store: EnrollmentStore, sample_id: str) -> Sample:
    for sample in store.samples():
        if sample.id == sample_id:
            return sample
    raise UnknownSampleError(sample_id)


async def _thumbnail(request: web.Request) -> web.Response:
    sample_id = request.match_info["sample"]

    def thumbnail(store: EnrollmentStore) -> bytes:
        sample = _find_sample(store, sample_id)
        crop = store.load_crop(sample)
        scale = THUMBNAIL_PX / max(crop.shape[:2])
        if scale < 1.0:
            size = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
        if not ok:
            raise StoreError(f"OpenCV could not encode a thumbnail of sample {sample_id}")
        return jpeg.tobytes()

    body = await request.app[ENROLLMENT].call(thumbnail)
    # a face: never kept by the browser, where it would outlive the sample's erasure
    return web.Response(
        body=body, content_type="image/jpeg", headers={"Cache-Control": "no-store"}
    )


async def _upload(request: web.Request) -> web.Response:
    worker, limit = request.app[ENROLLMENT], request.app[UPLOAD_LIMIT]
    if request.content_type != "multipart/form-data":
        return error_response(
            415, f"send the photos as multipart/form-data, not {request.content_type}"
        )
    if request.content_length is not None and request.content_length > limit:
        return _too_large(request, limit)
    key = request.match_info["person"]
    person = await worker.call(lambda store: store.find_person(key))
    try:
        files = await _read_files(request, limit)
    except _TooLarge:
        return _too_large(request, limit)
    except BODY_ERRORS as exc:  # aiohttp's multipart parser on a malformed body
        return error_response(400, f"the multipart body cannot be read: {body_error(exc)}")
    if not files:
        return error_response(400, "the form holds no file: send photos as file fields")
    if len(files) > MAX_FILES:
        return error_response(400, f"at most {MAX_FILES} files per upload, got {len(files)}")

    def ingest(store: EnrollmentStore) -> list[IngestResult]:
        return [
            ingest_photo(store, worker.detector, person.id, data, "photo", name=name)
            for name, data in files
        ]

    results = await worker.call(ingest)
    accepted = sum(r.accepted for r in results)
    body: dict[str, Any] = {
        "person": person_json(await worker.call(lambda store: store.get_person(person.id))),
        "accepted": accepted,
        "rejected": len(results) - accepted,
        "files": [_result_json(r) for r in results],
    }
    status = 200
    if not accepted:
        outcomes = {r.outcome for r in results}
        status = next((code for kinds, code in _ALL_REJECTED if outcomes <= kinds), 422)
        body["error"] = HTTPStatus(status).phrase
        body["reason"] = "no photo was accepted: " + "; ".join(
            f"{r.path}: {r.reason}" for r in results
        )
    return web.json_response(body, status=status)


class _TooLarge(Exception):
    """The upload passed the limit while it was being read."""


async def _read_files(request: web.Request, limit: int) -> list[tuple[str, bytes]]:
    """(file name, content) of every file field, reading at most ``limit`` bytes."""
    reader = await request.multipart()
    files: list[tuple[str, bytes]] = []
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ValueError("nested multipart bodies are not accepted")
        chunks = []
        while chunk := await part.read_chunk(CHUNK):
            total += len(chunk)
            if total > limit:
                raise _TooLarge
            chunks.append(chunk)
        if part.filename is not None:
            files.append((Path(part.filename).name or "(unnamed)", b"".join(chunks)))
    return files


def _too_large(request: web.Request, limit: int) -> web.Response:
    """413, and the connection closed so the rest of the body is not read."""
    log.info("upload from %s refused: over %d bytes", request.remote, limit)
    response = error_response(
        413, f"an upload may be at most {limit / 2**20:g} MiB (server.max_upload_mb): "
        "use a smaller photo, or send fewer at a time"
    )
    response.force_close()
    return response
