"""The enrollment HTTP API on the real server application: people CRUD, photo uploads
(real photos through real YuNet, and every bad upload), thumbnails, the model
endpoint, and the token guard."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from enroll_support import blank_png
from test_facecore_embed_bundle import _mean_colour_model
from webrtc_support import BAD_JSON_BODIES

from enrollment.errors import DuplicatePersonError
from enrollment.store import EnrollmentStore
from facecore.bundle import BundleManifest, write_bundle
from facecore.config import EnrollmentSettings, Settings, load_settings
from facecore.embedder import Preprocessing
from facecore.publish import publish
from streamer.enroll import api as enroll_api
from streamer.enroll.api import add_enrollment_routes
from streamer.enroll.people import following_people
from streamer.enroll.worker import EnrollmentWorker
from streamer.errors import ClosedError
from streamer.live.engine import Engine
from streamer.live.recognizer import EnrolledPeople
from streamer.web.server import create_app

TOKEN = "enroll-api-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SharedFile = Callable[[str], Path]


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    settings: Settings

    async def call(self, method: str, path: str, **kwargs: object) -> tuple[int, object]:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    async def upload(self, person: str, *files: tuple[str, bytes, str]) -> tuple[int, object]:
        form = aiohttp.FormData()
        for name, data, content_type in files:
            # (a BytesIO: aiohttp warns about large raw bytes bodies)
            form.add_field("photo", io.BytesIO(data), filename=name, content_type=content_type)
        return await self.call("POST", f"/api/people/{person}/samples", data=form)


def _settings(shared_dir: Path, tmp_path: Path) -> Settings:
    return load_settings(
        {
            "state_dir": str(tmp_path / "state"),
            "cache_dir": str(tmp_path / "cache"),
            "models_dir": str(shared_dir / "models"),
            "server.max_upload_mb": 1,
        },
        {},
    )


@pytest.fixture
async def api(shared_dir: Path, tmp_path: Path) -> AsyncIterator[Api]:
    async with _serving(_settings(shared_dir, tmp_path)) as running:
        yield running


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[Api]:
    """The server's app with the enrollment routes, on a loopback port."""
    with Engine.from_settings(settings, watch=True) as engine:
        app = create_app(settings, engine, TOKEN, secure=False)
        add_enrollment_routes(app, settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with aiohttp.ClientSession(headers=AUTH) as http:
                yield Api(f"http://127.0.0.1:{runner.addresses[0][1]}", http, settings)
        finally:
            await runner.cleanup()


def _no_face_jpeg(shared_file: SharedFile) -> bytes:
    """A real photo with nobody in it: the bottom quarter of obama.jpg (his suit)."""
    image = cv2.imread(str(shared_file("media/obama.jpg")))
    ok, data = cv2.imencode(".jpg", image[image.shape[0] * 3 // 4 :])
    assert ok
    return data.tobytes()


async def test_without_the_token_nothing_is_served(api: Api) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for method, path in [
            ("GET", "/api/people"),
            ("POST", "/api/people"),
            ("PATCH", "/api/people/x"),
            ("DELETE", "/api/people/x"),
            ("POST", "/api/people/x/samples"),
            ("GET", "/api/samples/x/thumbnail"),
            ("GET", "/api/model"),
        ]:
            async with anonymous.request(method, api.url + path) as response:
                assert response.status == 401, (method, path)
                assert (await response.json())["error"] == "Unauthorized"
        async with anonymous.get(api.url + "/admin", allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login?next=/admin"
    status, page = await api.call("GET", "/admin")
    assert status == 200 and b'src="/static/admin.js"' in page


async def test_people_crud(api: Api) -> None:
    status, created = await api.call("POST", "/api/people", json={"name": "  Zoë   Saldaña "})
    assert status == 201 and created["name"] == "Zoë Saldaña" and created["sample_count"] == 0
    person_id = created["id"]
    status, body = await api.call("POST", "/api/people", json={"name": "zoë saldaña"})
    assert status == 409 and person_id in body["reason"]
    assert "'zoë saldaña' is taken: 'Zoë Saldaña' is already enrolled" in body["reason"]
    await api.call("POST", "/api/people", json={"name": "Ada Lovelace"})
    # the 409 names the person stored, which the user may not see as the same name
    status, strasse = await api.call("POST", "/api/people", json={"name": "STRASSE"})
    assert status == 201
    status, body = await api.call("POST", "/api/people", json={"name": "Straße"})
    assert status == 409, body
    assert body["reason"].startswith(
        f"'Straße' is taken: 'STRASSE' is already enrolled (id {strasse['id']})"
    ), body
    status, body = await api.call("PATCH", f"/api/people/{person_id}", json={"name": "strasse"})
    assert status == 409 and "'strasse' is taken: 'STRASSE'" in body["reason"], body
    status, _ = await api.call("DELETE", f"/api/people/{strasse['id']}")
    assert status == 204

    status, listing = await api.call("GET", "/api/people")
    assert status == 200
    assert [p["name"] for p in listing["people"]] == ["Ada Lovelace", "Zoë Saldaña"]
    status, by_name = await api.call("GET", "/api/people/ZOË SALDAÑA")
    assert status == 200 and by_name["id"] == person_id

    status, renamed = await api.call("PATCH", f"/api/people/{person_id}", json={"name": "Zoe S"})
    assert status == 200 and renamed["name"] == "Zoe S" and renamed["id"] == person_id
    status, _ = await api.call("PATCH", f"/api/people/{person_id}", json={"name": "ada lovelace"})
    assert status == 409
    for bad in [{"name": ""}, {"name": "a\x07b"}, {"nom": "x"}, ["x"]]:
        status, body = await api.call("PATCH", f"/api/people/{person_id}", json=bad)
        assert status == 400 and body["reason"], bad
    status, body = await api.call("POST", "/api/people", data=b"{not json", headers={
        "Content-Type": "application/json"})
    assert status == 400 and "not JSON" in body["reason"]

    status, _ = await api.call("DELETE", f"/api/people/{person_id}")
    assert status == 204
    for method, path in [
        ("GET", f"/api/people/{person_id}"),
        ("GET", "/api/people/Zoe S"),
        ("PATCH", "/api/people/Nobody"),
        ("DELETE", "/api/people/Nobody"),
        ("GET", "/api/people/Nobody/samples"),
        ("DELETE", "/api/samples/0123456789abcdef"),
        ("GET", "/api/samples/0123456789abcdef/thumbnail"),
    ]:
        status, body = await api.call(method, path, json={"name": "x"})
        assert status == 404 and body["error"] == "Not Found", (method, path)
    status, listing = await api.call("GET", "/api/people")
    assert [p["name"] for p in listing["people"]] == ["Ada Lovelace"]


async def test_a_reference_that_is_an_id_and_another_persons_name_erases_no_one(
    api: Api,
) -> None:
    status, ada = await api.call("POST", "/api/people", json={"name": "Ada"})
    assert status == 201
    status, body = await api.call("POST", "/api/people", json={"name": ada["id"]})
    assert status == 400 and "shape of a person id" in body["reason"]
    # a person named like Ada's id, as in a store written before such names were refused
    legacy = "0123456789abcdef"
    with EnrollmentStore.from_settings(api.settings) as store, store.db.change() as conn:
        conn.execute(
            "INSERT INTO people (id, name, name_key, created, updated) VALUES (?, ?, ?, ?, ?)",
            (legacy, ada["id"], ada["id"], ada["created"], ada["created"]),
        )
    for method in ("GET", "PATCH", "DELETE"):
        json_body = {"name": "Eve"} if method == "PATCH" else None
        status, body = await api.call(method, f"/api/people/{ada['id']}", json=json_body)
        assert status == 409, (method, body)
        assert "'Ada'" in body["reason"] and legacy in body["reason"]
    status, listing = await api.call("GET", "/api/people")
    assert sorted(p["name"] for p in listing["people"]) == sorted(["Ada", ada["id"]])


async def test_any_json_body_and_disguised_names_get_a_400(api: Api) -> None:
    from streamer.web.server import SECURITY_HEADERS

    status, ada = await api.call("POST", "/api/people", json={"name": "Ada"})
    assert status == 201
    bodies = [
        *BAD_JSON_BODIES,
        *((json.dumps(v).encode(), "expected a JSON object") for v in (
            {"name": 1}, {"name": None}, {"name": ["Ada"]}, {"name": {"name": "Ada"}}, {}
        )),
    ]
    for method, path in [("POST", "/api/people"), ("PATCH", f"/api/people/{ada['id']}")]:
        for raw, reason in bodies:
            async with api.http.request(
                method, api.url + path, data=raw, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 400, (method, raw[:40])
                assert re.search(reason, (await response.json())["reason"]), (method, raw[:40])
                assert all(response.headers[k] == v for k, v in SECURITY_HEADERS.items())
        for name in ("Ada\u202eadA", "A\u200bda", "\ufeffAda", "Ada\u2066"):
            status, body = await api.call(method, path, json={"name": name})
            assert status == 400 and "invisible or text-direction" in body["reason"], body
    status, listing = await api.call("GET", "/api/people")
    assert [p["name"] for p in listing["people"]] == ["Ada"]


async def test_uploads_good_and_bad(api: Api, shared_file: SharedFile) -> None:
    await api.call("POST", "/api/people", json={"name": "Barack Obama"})
    obama = shared_file("media/obama2.jpg").read_bytes()
    lin_png = shared_file("media/lin-manuel-miranda.png").read_bytes()

    # a good photo, and a PNG that calls itself a JPEG: both judged by content
    status, report = await api.upload("barack obama", ("obama2.jpg", obama, "image/jpeg"))
    assert status == 200 and report["accepted"] == 1 and report["person"]["sample_count"] == 1
    status, report = await api.call("POST", "/api/people", json={"name": "Lin-Manuel Miranda"})
    status, report = await api.upload("Lin-Manuel Miranda", ("photo.jpg", lin_png, "image/jpeg"))
    assert status == 200, report
    assert report["files"][0]["outcome"] == "accepted" and report["files"][0]["name"] == "photo.jpg"

    # every kind of bad file, each alone: no sample is made and the status says why
    bad = [
        (("notes.jpg", b"these are not pixels\n" * 50, "image/jpeg"), 415, "unreadable"),
        (("empty.jpg", b"", "image/jpeg"), 400, "empty_file"),
        (("suit.jpg", _no_face_jpeg(shared_file), "image/jpeg"), 422, "no_face"),
        (("again.jpg", obama, "image/jpeg"), 409, "duplicate"),
    ]
    for file, expected, outcome in bad:
        status, report = await api.upload("Barack Obama", file)
        assert status == expected, (file[0], report)
        assert report["accepted"] == 0 and report["files"][0]["outcome"] == outcome
        assert report["reason"].startswith("no photo was accepted: " + file[0])

    # a mixed upload is a per-file report
    status, report = await api.upload(
        "Barack Obama",
        ("readme.txt", b"hello", "text/plain"),
        ("obama.jpg", shared_file("media/obama.jpg").read_bytes(), "application/octet-stream"),
    )
    assert status == 200 and (report["accepted"], report["rejected"]) == (1, 1)
    assert [f["outcome"] for f in report["files"]] == ["unreadable", "accepted"]

    status, listing = await api.call("GET", "/api/people/Barack Obama/samples")
    assert status == 200 and len(listing["samples"]) == 2
    assert {s["source"] for s in listing["samples"]} == {"photo"}

    # not multipart, no file in the form, unknown person
    status, body = await api.call("POST", "/api/people/Barack Obama/samples", data=obama,
                                  headers={"Content-Type": "image/jpeg"})
    assert status == 415 and "multipart/form-data" in body["reason"]
    status, body = await api.call("POST", "/api/people/Barack Obama/samples",
                                  data=aiohttp.FormData({"comment": "no file here"}),
                                  headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 400
    # a part's header that does not parse is a 400 too, not a server failure
    status, body = await api.call(
        "POST", "/api/people/Barack Obama/samples",
        data=b'--b\r\nContent-Disposition: form-data; name="photo"; filename="a\x00.jpg"\r\n'
        b"\r\nabc\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert status == 400 and "Invalid HTTP header" in body["reason"], body
    status, body = await api.upload("Nobody", ("obama.jpg", obama, "image/jpeg"))
    assert status == 404


async def test_an_upload_over_the_limit_is_refused_before_it_is_read(
    api: Api, shared_file: SharedFile
) -> None:
    await api.call("POST", "/api/people", json={"name": "Joe Biden"})
    limit = api.settings.server.max_upload_mb * 2**20

    # an image too large in pixels, though small in bytes: the same words at any size
    for side, size in ((13000, "13000x13000 = 169 MP"), (30000, "30000x30000 = 900 MP")):
        status, report = await api.upload("Joe Biden", ("huge.png", blank_png(side), "image/png"))
        assert status == 413 and report["files"][0]["outcome"] == "image_too_large", report
        assert f"image too large ({size}, limit 40 MP)" in report["reason"], report

    # a declared length over the limit: refused from the headers alone
    huge = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), np.uint8)
    ok, png = cv2.imencode(".png", huge)
    assert ok and len(png) > limit
    status, body = await api.upload("Joe Biden", ("huge.png", png.tobytes(), "image/png"))
    assert status == 413 and "1 MiB" in body["reason"]

    # a chunked body with no declared length: refused once it passes the limit, while
    # the client is still far from done sending
    total = 256 * 2**20
    sent = 0
    boundary = "facestream-test-boundary"

    async def body_stream() -> AsyncIterator[bytes]:
        nonlocal sent
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; "
            'filename="huge.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        yield head
        block = b"\xff" * 2**16
        while sent < total:
            sent += len(block)
            yield block

    try:
        status, body = await api.call(
            "POST", "/api/people/Joe Biden/samples", data=body_stream(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    except aiohttp.ClientError as exc:  # the server closed the connection on us
        pytest.fail(f"no 413 answer, the connection was dropped: {exc!r}")
    assert status == 413
    assert sent < total // 4, f"the client had sent {sent} bytes before the 413"

    # the server is still fine, and nothing was stored
    status, listing = await api.call("GET", "/api/people/Joe Biden/samples")
    assert status == 200 and listing["samples"] == []
    status, report = await api.upload(
        "Joe Biden", ("biden.jpg", shared_file("media/biden.jpg").read_bytes(), "image/jpeg")
    )
    assert status == 200 and report["accepted"] == 1


async def test_thumbnails_and_sample_removal(api: Api, shared_file: SharedFile) -> None:
    await api.call("POST", "/api/people", json={"name": "Joe Biden"})
    await api.upload("Joe Biden", ("biden.jpg", shared_file("media/biden.jpg").read_bytes(), "x/y"))
    status, listing = await api.call("GET", "/api/people/Joe Biden/samples")
    (sample,) = listing["samples"]
    assert sample["quality"]["face_px"] > 200 and 0 < sample["quality"]["score"] <= 1

    async with api.http.get(api.url + sample["thumbnail"]) as response:
        assert response.status == 200 and response.content_type == "image/jpeg"
        assert response.headers["Cache-Control"] == "no-store"  # a face: never cached
        thumb = cv2.imdecode(np.frombuffer(await response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert thumb is not None and max(thumb.shape[:2]) == enroll_api.THUMBNAIL_PX
    # the face is in the middle of the thumbnail: YuNet finds it there
    from facecore.detector import Detector
    from facecore.registry import DETECTOR, model_path

    detector = Detector(model_path(api.settings, DETECTOR))
    big = cv2.resize(thumb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    face = detector.detect(big).largest()
    assert len(face) == 1
    centre = face.xyxy[0].reshape(2, 2).mean(axis=0) / 2
    assert np.allclose(centre, np.array(thumb.shape[1::-1]) / 2, atol=25)

    sample_file = api.settings.state_dir / "enrollment" / "samples" / sample["person_id"]
    assert len(list(sample_file.iterdir())) == 1
    status, _ = await api.call("DELETE", f"/api/samples/{sample['id']}")
    assert status == 204
    status, _ = await api.call("GET", sample["thumbnail"])
    assert status == 404
    assert list(sample_file.iterdir()) == []
    status, person = await api.call("GET", "/api/people/Joe Biden")
    assert person["sample_count"] == 0

    # deleting a person erases their sample files
    await api.upload("Joe Biden", ("biden.jpg", shared_file("media/biden.jpg").read_bytes(), "x/y"))
    assert len(list(sample_file.iterdir())) == 1
    status, _ = await api.call("DELETE", "/api/people/Joe Biden")
    assert status == 204 and not sample_file.exists()


async def test_model_endpoint_reports_the_bundle_being_served(
    api: Api, tmp_path: Path
) -> None:
    status, model = await api.call("GET", "/api/model")
    assert status == 200 and model["version"] is None and model["report"] is None

    backbone = _mean_colour_model(tmp_path / "mean.onnx", size=8)
    report = {"published": {"head": "prototypes", "reason": "test"}, "people": 2}
    plot = cv2.imencode(".png", np.full((20, 30, 3), 200, np.uint8))[1].tobytes()

    def build(directory: Path, version: int) -> object:
        manifest = BundleManifest(
            version=version, created="2026-01-01T00:00:00Z", store_revision=7,
            backbone_name="mean_colour", backbone_sha256="",
            preprocessing=Preprocessing((8, 8), "bgr", (0.0, 0.0, 0.0), 1.0),
            template=((3.0, 3.0), (5.0, 3.0), (4.0, 4.0), (3.0, 6.0), (5.0, 6.0)),
            head_kind="prototypes", head_sha256="", labels=("Ada", "Zoë"),
            person_ids=("a", "b"), threshold=0.5, metrics={"prototypes_tar": 0.9},
        )
        weights = np.eye(2, 3, dtype=np.float32)
        bundle = write_bundle(directory, backbone=backbone, weights=weights, manifest=manifest)
        (directory / "report.json").write_text(json.dumps(report), encoding="utf-8")
        (directory / "roc.png").write_bytes(plot)
        return bundle

    bundles = api.settings.state_dir / "bundles"
    publish(bundles, build)  # type: ignore[arg-type]
    for _ in range(100):  # the engine's watcher polls every 0.5 s
        status, model = await api.call("GET", "/api/model")
        if model["version"] is not None:
            break
        await asyncio.sleep(0.1)
    assert model["version"] == 1 and model["labels"] == ["Ada", "Zoë"]
    assert model["metrics"] == {"prototypes_tar": 0.9} and model["report"] == report
    assert model["plots"] == ["/api/model/1/files/roc.png"]
    status, data = await api.call("GET", model["plots"][0])
    assert status == 200 and data == plot
    for path in ["/api/model/2/files/roc.png", "/api/model/1/files/manifest.json",
                 "/api/model/1/files/..%2Fmanifest.json", "/api/model/1/files/nope.png"]:
        status, _ = await api.call("GET", path)
        assert status == 404, path


def test_exported_members() -> None:
    for name in ("enroll.api", "enroll.capture", "enroll.worker", "enroll.camera", "web.model_api"):
        module = importlib.import_module(f"streamer.{name}")
        assert module.__all__ and all(hasattr(module, m) for m in module.__all__), name


async def test_the_worker_runs_jobs_in_one_thread_and_closes_twice(
    shared_dir: Path, tmp_path: Path
) -> None:
    worker = EnrollmentWorker.from_settings(_settings(shared_dir, tmp_path))
    names = await asyncio.gather(*(worker.call(lambda _: threading.current_thread().name)
                                   for _ in range(5)))
    assert len(set(names)) == 1 and names[0].startswith("enroll-store")
    person = await worker.call(lambda store: store.add_person("Ada"))
    with pytest.raises(DuplicatePersonError):  # a job's error reaches the caller
        await worker.call(lambda store: store.add_person("ada"))
    worker.close()
    worker.close()
    with pytest.raises(ClosedError):
        await worker.call(lambda store: store.find_person(person.id))
    with EnrollmentStore(tmp_path / "state" / "enrollment") as store:  # closed cleanly
        assert [p.name for p in store.list_people()] == ["Ada"]


async def test_a_job_that_only_reads_makes_no_store_where_there_is_none(
    shared_dir: Path, tmp_path: Path
) -> None:
    """`call_if_stored`, as `run` reads the store's people: None until a store exists."""
    worker = EnrollmentWorker.from_settings(_settings(shared_dir, tmp_path))
    try:
        assert await worker.call_if_stored(lambda store: store.revision()) is None
        assert not (tmp_path / "state" / "enrollment").exists()
        await worker.call(lambda store: store.add_person("Ada"))
        assert await worker.call_if_stored(lambda store: store.revision()) == 1
    finally:
        worker.close()


async def test_following_people_reads_them_before_its_block_unless_told_not_to(
    shared_dir: Path, tmp_path: Path
) -> None:
    """`run` reads the store's people before its first frame (so a short file names no
    erased person at its start), then follows them; the server does not wait."""
    worker = EnrollmentWorker.from_settings(_settings(shared_dir, tmp_path))
    given: list[EnrolledPeople] = []
    engine = cast(Engine, SimpleNamespace(use_people=given.append))
    try:
        ada = await worker.call(lambda store: store.add_person("Ada"))
        async with following_people(engine, worker):
            assert [p.names for p in given] == [{ada.id: "Ada"}]
            await worker.call(lambda store: store.rename_person(ada.id, "Ada L"))
            for _ in range(100):
                if len(given) == 2:
                    break
                await asyncio.sleep(0.05)
            assert [p.names for p in given[1:]] == [{ada.id: "Ada L"}]
        async with following_people(engine, worker, read_first=False):
            assert len(given) == 2  # read by the block's task, later
    finally:
        worker.close()


async def test_a_database_out_of_reach_is_a_503_that_names_none_of_it(
    shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its host, port and user are for the server's log: a token holder gets the what."""
    settings = replace(
        _settings(shared_dir, tmp_path),
        enrollment=EnrollmentSettings(database_url="postgresql://fsuser@127.0.0.1:9/fsdb"),
    )
    async with _serving(settings) as api:
        status, body = await api.call("GET", "/api/people")
    assert status == 503, body
    assert "cannot be reached" in body["reason"]
    assert not [word for word in ("fsuser", "127.0.0.1", "fsdb") if word in body["reason"]]
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records)  # the log says
