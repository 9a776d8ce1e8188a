"""Enroll mode: head pose and view selection on real faces, then a live enrollment of
Lin-Manuel Miranda from the shared clip, sent by a real aiortc client over loopback
to the real server, that must land in the store as a person with good samples."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import web
from enroll_support import (
    LIN_FRAMES,
    FramesTrack,
    clip_frames,
    connect_phone,
    enrollment_settings,
)
from numpy.typing import NDArray

from enrollment.store import EnrollmentStore, Quality
from facecore.config import Settings
from facecore.detector import Detector
from facecore.embedder import Embedder, Preprocessing
from facecore.frontend import FrontEnd
from facecore.registry import ARCFACE_112_TEMPLATE, MODELS, model_path
from streamer.enroll.api import add_enrollment_routes
from streamer.enroll.camera import attach_live_enrollment
from streamer.enroll.capture import (
    Candidate,
    CapturePlan,
    Pose,
    PoseCollector,
    examine,
    head_pose,
)
from streamer.live.engine import Engine
from streamer.web.server import create_app

SharedFile = Callable[[str], Path]
TOKEN = "live-enroll-test-token-0123456789"
FAST_PLAN = CapturePlan(patience_s=1.5, timeout_s=40.0)


@pytest.fixture(scope="module")
def detector(yunet_path: Path) -> Detector:
    return Detector(yunet_path)


@pytest.fixture(scope="module")
def lin_frames(shared_file: SharedFile) -> list[NDArray[np.uint8]]:
    return clip_frames(shared_file("media/short_hamilton_clip.mp4"), LIN_FRAMES)


# --- head pose and view selection ------------------------------------------------------


def test_head_pose_of_the_template_and_its_similar_copies() -> None:
    template = np.asarray(ARCFACE_112_TEMPLATE, np.float64)
    pose = head_pose(template)
    assert abs(pose.yaw) < 1e-9 and abs(pose.up) < 1e-9
    angle = np.deg2rad(25.0)
    rotation = 3.0 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = template @ rotation.T + [400.0, 120.0]
    pose = head_pose(moved)  # a tilted (rolled), larger, shifted face: still frontal
    assert abs(pose.yaw) < 1e-9 and abs(pose.up) < 1e-9
    eye = np.hypot(*(template[1] - template[0]))
    turned = template.copy()
    turned[2] += [0.2 * eye, -0.1 * eye]  # nose towards the image's right and up
    pose = head_pose(turned)
    assert pose.yaw == pytest.approx(0.2, abs=0.02) and pose.up == pytest.approx(0.1, abs=0.02)


def test_head_pose_on_real_faces(detector: Detector, lin_frames: list[NDArray[np.uint8]]) -> None:
    # frame 88: Lin looks at the camera; frame 124: he has turned to his right (his
    # nose towards the image's left): yaw < 0
    straight = head_pose(detector.detect(lin_frames[88 - LIN_FRAMES.start]).largest().landmarks[0])
    turned = head_pose(detector.detect(lin_frames[124 - LIN_FRAMES.start]).largest().landmarks[0])
    assert abs(straight.yaw) < 0.1
    assert turned.yaw < straight.yaw - 0.2
    # mirroring the frame mirrors the turn
    mirrored = cv2.flip(lin_frames[124 - LIN_FRAMES.start], 1)
    assert head_pose(detector.detect(mirrored).largest().landmarks[0]).yaw > 0.2


def test_examine_reports_what_is_wrong(
    detector: Detector, lin_frames: list[NDArray[np.uint8]], shared_file: SharedFile
) -> None:
    frame = lin_frames[0]
    found = examine(detector, frame)
    assert isinstance(found, Candidate)
    assert found.quality.face_px > 80 and found.region.shape[0] > 2 * found.quality.face_px
    # the region keeps the face where its box says
    again = detector.detect(found.region).largest()
    assert np.allclose(again.xyxy[0], found.xyxy, atol=3)
    assert examine(detector, np.full((360, 640, 3), 90, np.uint8)) == "no_face"
    assert examine(detector, cv2.resize(frame, None, fx=0.5, fy=0.5)) == "too_small"
    assert examine(detector, cv2.GaussianBlur(frame, (0, 0), 4)) == "too_blurred"
    (profile,) = clip_frames(shared_file("media/short_hamilton_clip.mp4"), range(25, 26))
    assert examine(detector, profile) == "turned_away"  # the clip's close-up in profile
    pair = cv2.imread(str(shared_file("media/two_people.jpg")))
    assert examine(detector, pair) == "several_faces"


def _candidate(yaw: float, up: float) -> Candidate:
    empty = np.zeros((1, 1, 3), np.uint8)
    quality = Quality(100.0, 100.0, 1.0, 1.0)
    return Candidate(empty, np.zeros(4, np.float32), np.zeros((5, 2), np.float32), quality,
                     Pose(yaw, up))


def test_collector_follows_the_plan() -> None:
    plan = CapturePlan(poses=(("straight", 2), ("left", 1), ("up", 1)), patience_s=3.0)
    collector = PoseCollector(plan, now=0.0)
    assert collector.asking(0.0) == "straight"
    assert not collector.consider(_candidate(0.3, 0.0), 0.1)  # no reference yet
    assert collector.consider(_candidate(0.02, -0.1), 0.2)
    assert not collector.consider(_candidate(0.03, -0.1), 0.3)  # the same view again
    assert not collector.consider(_candidate(0.02, -0.05), 0.31)  # too soon after one
    assert collector.consider(_candidate(0.07, -0.1), 0.5)  # a little different: kept
    assert collector.asking(0.5) == "left"
    assert not collector.consider(_candidate(-0.3, -0.1), 0.7)  # right: not in this plan
    assert collector.consider(_candidate(0.25, -0.1), 0.9)  # left of the reference
    assert collector.asking(1.0) == "up"
    assert collector.asking(3.0) == "up"  # patience runs from the last progress (0.9)
    assert collector.asking(4.0) == "any"  # up never came: any distinct view now
    assert not collector.consider(_candidate(0.26, -0.1), 4.1)  # too close to the left one
    assert collector.consider(_candidate(-0.3, -0.1), 4.2)
    assert collector.full and collector.count == plan.target == 4
    assert [name for name, _, _ in collector.kept] == ["straight", "straight", "left", "any"]
    assert not collector.timed_out(plan.timeout_s - 0.01)
    assert collector.timed_out(plan.timeout_s)


# --- a live enrollment over WebRTC -----------------------------------------------------


@dataclass
class Server:
    url: str
    settings: Settings


@pytest.fixture
async def server(shared_dir: Path, tmp_path: Path) -> AsyncIterator[Server]:
    settings = enrollment_settings(shared_dir, tmp_path / "state")  # with the dlib ResNet
    with Engine.from_settings(settings, watch=False) as engine:
        app = create_app(settings, engine, TOKEN, secure=False)
        add_enrollment_routes(app, settings)
        attach_live_enrollment(app, FAST_PLAN)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield Server(f"http://127.0.0.1:{runner.addresses[0][1]}", settings)
        finally:
            await runner.cleanup()


async def test_live_enrollment_over_webrtc(
    server: Server, lin_frames: list[NDArray[np.uint8]], shared_file: SharedFile,
    detector: Detector,
) -> None:
    phone = await connect_phone(server.url, TOKEN, FramesTrack(lin_frames))
    try:
        # a message nested past the JSON parser's depth is ignored, like any non-message
        phone.channel.send("[" * 1000 + "]" * 1000)
        # bad names, then a start that is cancelled: nothing is stored
        phone.send({"type": "enroll", "name": "  \t "})
        assert await phone.wait_for(lambda: bool(phone.enroll_messages()), 10)
        failed = phone.enroll_messages()[-1]
        assert failed["state"] == "failed" and "empty" in str(failed["reason"])
        phone.send({"type": "enroll", "name": "Lin\u202e Miranda"})
        assert await phone.wait_for(lambda: len(phone.enroll_messages()) == 2, 10)
        failed = phone.enroll_messages()[-1]
        assert failed["state"] == "failed" and "U+202E" in str(failed["reason"]), failed
        phone.send({"type": "enroll", "name": "Nobody Yet"})
        phone.send({"type": "enroll", "action": "cancel"})
        assert await phone.wait_for(
            lambda: phone.enroll_messages()[-1]["state"] == "cancelled", 10
        )

        phone.received.clear()
        phone.send({"type": "enroll", "name": "Lin-Manuel Miranda"})
        assert await phone.wait_for(
            lambda: any(m["state"] in ("done", "failed") for m in phone.enroll_messages()), 60
        ), phone.enroll_messages()
        messages = phone.enroll_messages()
        # the same person again, typed another way: the result names him as stored
        phone.received.clear()
        phone.send({"type": "enroll", "name": "  lin-manuel   MIRANDA "})
        assert await phone.wait_for(
            lambda: any(m["state"] in ("done", "failed") for m in phone.enroll_messages()), 60
        ), phone.enroll_messages()
        again = phone.enroll_messages()[-1]
    finally:
        await phone.close()

    assert again["state"] == "done" and again["existing"] is True, again
    assert again["person"] == "Lin-Manuel Miranda"
    final = messages[-1]
    assert final["state"] == "done", final
    assert final["person"] == "Lin-Manuel Miranda" and final["existing"] is False
    assert final["count"] == FAST_PLAN.target == final["target"]
    collecting = [m for m in messages if m["state"] == "collecting"]
    counts = [m["count"] for m in collecting]
    assert counts == sorted(counts) and counts[0] == 0 and len(set(counts)) > 3  # progress
    asked = {m["pose"] for m in collecting}
    assert {"straight", "left"} <= asked
    assert all(isinstance(m["guidance"], str) and m["guidance"] for m in collecting)
    assert [m["state"] for m in messages[-2:]] == ["saving", "done"]

    with EnrollmentStore(server.settings.state_dir / "enrollment") as store:
        assert [p.name for p in store.list_people()] == ["Lin-Manuel Miranda"]
        person = store.find_person("Lin-Manuel Miranda")
        assert person.id == final["person_id"] == again["person_id"]
        samples = store.samples(person.id)
        assert len(samples) >= FAST_PLAN.target + again["count"]
        assert {s.source for s in samples} == {"live"}
        crops = [store.load_crop(s) for s in samples]
    poses = []
    for sample, crop in zip(samples, crops, strict=True):
        face = detector.detect(crop).largest()  # the stored landmarks are the face's
        width = float(face.xyxy[0, 2] - face.xyxy[0, 0])
        # in the crop's pixels (in the frame's they would be off by the crop's origin, a
        # face's width or more); YuNet itself moves a turned face's mouth corners by over
        # a tenth of its width between the frame and the crop (seen: 9.9 px of 84)
        assert np.abs(face.landmarks[0] - sample.landmarks).max() < 0.15 * width
        poses.append(head_pose(sample.landmarks))
    # varied: the views span a real range of head turns
    yaws = [p.yaw for p in poses]
    assert max(yaws) - min(yaws) > 0.2
    landmarks = [s.landmarks for s in samples]
    _assert_same_person(crops, landmarks, server.settings, shared_file, detector)


def _assert_same_person(
    crops: list[NDArray[np.uint8]],
    landmarks: list[NDArray[np.float32]],
    settings: Settings,
    shared_file: SharedFile,
    detector: Detector,
) -> None:
    """Every stored view is Lin-Manuel Miranda by the real dlib ResNet: closer to his
    shared photo than any view is to Barack Obama's."""
    spec = MODELS["dlib_resnet_v1"]
    embedder = Embedder.load(
        model_path(settings, spec.name), Preprocessing.of_model(spec), device="cpu"
    )
    front_end = FrontEnd.for_model(settings, spec)  # the stored crops, cut as served

    def embed(images: list[NDArray[np.uint8]], points: list[NDArray[np.float32]]) -> NDArray:
        chips = [
            front_end.chips(image, face[None]) for image, face in zip(images, points, strict=True)
        ]
        return embedder.embed(np.concatenate(chips))

    names = ("media/lin-manuel-miranda.png", "media/obama.jpg")
    photos = [cv2.imread(str(shared_file(name))) for name in names]
    lin, obama = embed(photos, [detector.detect(p).largest().landmarks[0] for p in photos])
    views = embed(crops, landmarks)
    assert (views @ lin).min() > 0.85
    assert (views @ lin).min() > (views @ obama).max()
