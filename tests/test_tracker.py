"""Tracking: stable ids, when to recognise, and the per-track identity vote."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from facecore.bundle import Gallery
from facecore.config import TrackingSettings
from facecore.detector import Detector
from facecore.faces import Faces
from streamer.live.tracker import Tracker, view_quality

SETTINGS = TrackingSettings(iou_threshold=0.3, max_age_frames=5, recheck_frames=10)


def _faces(*boxes: tuple[float, float, float, float]) -> Faces:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    width = xyxy[:, 2:3] - xyxy[:, 0:1]
    offsets = np.array([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.25], [0.15, 0.25]])
    landmarks = centre[:, None, :] + offsets[None] * width[:, None, :]
    return Faces(xyxy, landmarks.astype(np.float32), np.full(len(xyxy), 0.9, np.float32))


def _quality(n: int, value: float = 0.5) -> np.ndarray:
    return np.full(n, value, np.float32)


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


GALLERY = Gallery(("Ada", "Bo"), np.stack([_unit(1, 0, 0, 0), _unit(0, 1, 0, 0)]), 0.8)


def _toward(label: int, similarity: float) -> np.ndarray:
    """A unit embedding with ``similarity`` to person ``label`` and less to the other."""
    v = np.zeros(4, np.float32)
    v[label] = similarity
    v[2] = np.sqrt(1 - similarity**2)
    return v


def _tracker(settings: TrackingSettings = SETTINGS, **kwargs: object) -> Tracker:
    tracker = Tracker(settings, **kwargs)
    tracker.set_model(GALLERY, "backbone-1")
    return tracker


def test_moving_faces_keep_their_ids() -> None:
    tracker = _tracker()
    seen = []
    for step in range(20):
        a = (100 + 5 * step, 100, 160 + 5 * step, 170)
        b = (400 - 4 * step, 50 + 2 * step, 440 - 4 * step, 100 + 2 * step)
        order = (a, b) if step % 2 else (b, a)  # detection order must not matter
        update = tracker.update(_faces(*order), _quality(2))
        ids = dict(zip((order.index(a), order.index(b)), update.track_ids, strict=True))
        seen.append((ids[0], ids[1]))
    assert len(set(seen)) == 1 and seen[0][0] != seen[0][1]


def test_small_fast_face_follows_by_its_centre() -> None:
    tracker = _tracker()
    first = tracker.update(_faces((100, 100, 130, 130)), _quality(1)).track_ids[0]
    # moved 10 px right and down: IoU 0.29, below the threshold; centre 0.47 faces away
    moved = tracker.update(_faces((110, 110, 140, 140)), _quality(1)).track_ids[0]
    assert moved == first
    far = tracker.update(_faces((200, 200, 230, 230)), _quality(1)).track_ids[0]
    assert far != first


def test_tracks_expire_after_max_age_with_their_evidence() -> None:
    tracker = _tracker()
    box = (100, 100, 180, 190)
    first = tracker.update(_faces(box), _quality(1)).track_ids
    tracker.observe(first, _toward(0, 0.9)[None], _quality(1))
    for _ in range(SETTINGS.max_age_frames):  # gone for max_age frames: kept
        tracker.update(_faces(), _quality(0))
    again = tracker.update(_faces(box), _quality(1))
    assert again.track_ids[0] == first[0] and not again.recognize[0]
    assert tracker.views(again.track_ids)[0].name == "Ada"
    for _ in range(SETTINGS.max_age_frames + 1):  # one frame longer: expired
        tracker.update(_faces(), _quality(0))
    assert len(tracker) == 0
    fresh = tracker.update(_faces(box), _quality(1))
    assert fresh.track_ids[0] != first[0] and fresh.recognize[0]
    assert tracker.views(fresh.track_ids)[0].name is None


def test_recognition_on_appearance_better_view_and_interval() -> None:
    tracker = _tracker(min_recheck_gap=3, better_view_gain=1.3)
    box = (100, 100, 180, 190)
    asked = []
    qualities = [0.5] * 5 + [0.9] + [0.5] * 20
    for q in qualities:
        asked.append(bool(tracker.update(_faces(box), _quality(1, q)).recognize[0]))
    frames = [i for i, a in enumerate(asked) if a]
    # appears at 0; a better view at 5; then every recheck_frames (10) from there
    assert frames == [0, 5, 15, 25]


def test_an_unknown_face_is_looked_at_again_sooner_than_a_named_one() -> None:
    tracker = _tracker(unknown_recheck_frames=3)
    box = (100, 100, 180, 190)
    asked = []
    for frame in range(30):
        update = tracker.update(_faces(box), _quality(1))
        if update.recognize[0]:
            asked.append(frame)
            # unknown (0.6 < 0.8) until frame 9, then clearly Ada
            embedding = _toward(0, 0.6 if frame < 9 else 0.99)
            tracker.observe(update.track_ids, embedding[None], _quality(1, 0.9))
    # unknown: every 3 frames; named at 18, once four views of Ada outweigh the three
    # unknown ones by switch_ratio (1.5); then every recheck_frames (10)
    assert asked == [0, 3, 6, 9, 12, 15, 18, 28]
    assert tracker.views(update.track_ids)[0].name == "Ada"

    nobody = Tracker(SETTINGS, unknown_recheck_frames=3)
    nobody.set_model(Gallery.empty(4, 0.8), "backbone-1")
    asked = []
    for frame in range(12):
        update = nobody.update(_faces(box), _quality(1))
        if update.recognize[0]:
            asked.append(frame)
            nobody.observe(update.track_ids, _toward(0, 0.99)[None], _quality(1))
    assert asked == [0, 10]  # with nobody enrolled there is no one to find


def test_dropped_recognition_is_asked_again() -> None:
    tracker = _tracker()
    update = tracker.update(_faces((0, 0, 50, 50)), _quality(1))
    assert update.recognize[0]
    assert not tracker.update(_faces((0, 0, 50, 50)), _quality(1)).recognize[0]
    tracker.retry(update.track_ids)
    assert tracker.update(_faces((0, 0, 50, 50)), _quality(1)).recognize[0]


def test_recognitions_are_spread_over_frames() -> None:
    tracker = _tracker(max_recognitions_per_frame=4)
    boxes = [(100 * i, 0, 100 * i + 60, 70) for i in range(6)]
    quality = np.linspace(0.9, 0.4, 6).astype(np.float32)
    first = tracker.update(_faces(*boxes), quality)
    assert first.recognize.tolist() == [True] * 4 + [False] * 2  # the best views first
    second = tracker.update(_faces(*boxes), quality)
    assert second.recognize.tolist() == [False] * 4 + [True] * 2  # the rest, next frame
    for _ in range(SETTINGS.recheck_frames - 2):
        tracker.update(_faces(*boxes), quality)
    counts = [int(tracker.update(_faces(*boxes), quality).recognize.sum()) for _ in range(4)]
    assert counts == [4, 2, 0, 0]


def test_without_tracking_every_face_is_recognised_every_frame() -> None:
    tracker = _tracker(replace(SETTINGS, enabled=False))
    boxes = [(0, 0, 50, 50), (100, 0, 150, 50)]
    for _ in range(3):
        update = tracker.update(_faces(*boxes), _quality(2))
        assert update.recognize.all()
        changes = tracker.observe(update.track_ids, np.stack([_toward(0, 0.9)] * 2), _quality(2))
    # named from the latest frame alone: one odd frame does flip it
    changes = tracker.observe(update.track_ids[:1], _toward(1, 0.85)[None], _quality(1))
    assert [c.name for c in changes] == ["Bo"]


def test_vote_resists_one_odd_frame_and_overturns_a_wrong_guess() -> None:
    tracker = _tracker()
    ids = tracker.update(_faces((0, 0, 80, 90)), _quality(1)).track_ids
    first = tracker.observe(ids, _toward(0, 0.85)[None], _quality(1))
    assert [(c.name, round(c.confidence, 2)) for c in first] == [("Ada", 0.85)]
    # one better match for Bo does not flip the name ...
    assert tracker.observe(ids, _toward(1, 0.95)[None], _quality(1)) == ()
    assert tracker.views(ids)[0].name == "Ada"
    # ... a second one does: 0.95 + 0.95 >= 1.5 x 0.85
    changed = tracker.observe(ids, _toward(1, 0.95)[None], _quality(1))
    assert [c.name for c in changed] == ["Bo"]
    assert tracker.views(ids)[0].confidence == pytest.approx(0.95, abs=1e-3)


def test_low_similarity_is_unknown_and_weighted_by_view_quality() -> None:
    tracker = _tracker()
    ids = tracker.update(_faces((0, 0, 80, 90)), _quality(1)).track_ids
    changes = tracker.observe(ids, _toward(0, 0.5)[None], _quality(1, 0.2))
    assert [(c.name, c.track_id) for c in changes] == [(None, ids[0])]
    # a much better view of Ada outweighs the poor unknown one at once
    changes = tracker.observe(ids, _toward(0, 0.9)[None], _quality(1, 0.9))
    assert [c.name for c in changes] == ["Ada"]


def test_new_gallery_redecides_from_kept_embeddings() -> None:
    tracker = _tracker()
    ids = tracker.update(_faces((0, 0, 80, 90)), _quality(1)).track_ids
    tracker.observe(ids, _toward(0, 0.9)[None], _quality(1))
    renamed = Gallery(("Ada Lovelace", "Bo"), GALLERY.weights, 0.8)
    changes = tracker.set_model(renamed, "backbone-1")
    assert [c.name for c in changes] == ["Ada Lovelace"]
    assert not tracker.update(_faces((0, 0, 80, 90)), _quality(1)).recognize[0]
    # a new backbone: old embeddings mean nothing, ask again (the name stays till then)
    assert tracker.set_model(renamed, "backbone-2") == ()
    assert tracker.update(_faces((0, 0, 80, 90)), _quality(1)).recognize[0]


def test_without_a_model_new_faces_are_unknown_once() -> None:
    tracker = Tracker(SETTINGS)
    first = tracker.update(_faces((0, 0, 80, 90), (200, 0, 280, 90)), _quality(2))
    assert not first.recognize.any()
    assert [c.name for c in first.changes] == [None, None]
    second = tracker.update(_faces((0, 0, 80, 90), (200, 0, 280, 90)), _quality(2))
    assert second.changes == ()
    tracker.set_model(GALLERY, "backbone-1")  # a bundle arrives: recognise them now
    assert tracker.update(_faces((0, 0, 80, 90), (200, 0, 280, 90)), _quality(2)).recognize.all()


def test_view_quality_prefers_large_sharp_frontal_faces(shared_file, yunet_path) -> None:
    image = cv2.imread(str(shared_file("media/obama.jpg")))
    detector = Detector(yunet_path)
    faces = detector.detect(image).largest()
    sharp = view_quality(image, faces)[0]
    assert 0 < sharp <= 1
    blurred = cv2.GaussianBlur(image, (0, 0), 4)
    assert view_quality(blurred, faces)[0] < 0.6 * sharp
    small = cv2.resize(image, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    small_faces = detector.detect(small).largest()
    assert view_quality(small, small_faces)[0] < 0.6 * sharp
    turned = faces.landmarks.copy()
    turned[0, 2, 0] = turned[0, 1, 0]  # nose under the left eye: a face turned aside
    profile = Faces(faces.xyxy, turned, faces.score)
    assert view_quality(image, profile)[0] < 0.6 * sharp
