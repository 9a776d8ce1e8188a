"""Tracking: tie each frame's faces into tracks with stable ids, say which faces need
recognising, and name each track from the evidence it has gathered.

A detection joins the track whose last box it overlaps most (IoU at least
``iou_threshold``) or, for a small face that moved more than its own size allows to
overlap, whose box centre is within half a face of its own at a similar size; the
pairs are taken greedily, best first. A track not seen for ``max_age_frames`` frames
expires, and its evidence goes with it; a cut to another shot (the frame's grey
thumbnail changes by more than ``SCENE_CUT`` grey levels on average) ends every track.

A face is recognised when its track appears, when a better view of it comes (a
`view_quality` at least ``better_view_gain`` times the best one recognised so far),
and at least every ``recheck_frames`` frames; a track still unknown to a gallery of
people is re-checked every ``unknown_recheck_frames`` frames, so that a known face
first seen from a poor angle gathers the evidence to be named within a second. At
most ``max_recognitions_per_frame`` faces are recognised in one frame, new faces
first, the best views first; the others wait a frame or two, so a cut to a crowd or
the re-checks of faces that appeared together do not stall one frame. Each
recognition adds an observation (embedding, view quality) to the track's bounded
history; the track's name is a vote over that history against the current gallery:

- an observation votes for its best match when the similarity reaches the gallery's
  threshold (first threshold), with weight quality x similarity; otherwise it votes
  "unknown" with weight quality x threshold;
- the heaviest candidate wins, but a track that already has a name only changes it
  when the challenger's weight reaches ``switch_ratio`` times the current name's
  (second threshold): one odd frame cannot flip a name, and a wrong early guess is
  overturned once better evidence outweighs it.

Embeddings are kept, so a new gallery on the same backbone re-decides every track at
once; a new backbone clears the evidence and asks for every face again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.bundle import Gallery
from facecore.config import TrackingSettings
from facecore.faces import Faces

__all__ = [
    "IdentityChange",
    "TrackUpdate",
    "TrackView",
    "Tracker",
    "scene_signature",
    "view_quality",
]

FULL_DETAIL_PX = 150.0  # a face this wide (the recognizer's chip) gives all it can
SHARPNESS_HALF = 300.0  # Laplacian variance at which the sharpness term is one half
_PATCH = 64  # side of the grey patch the sharpness is measured on
_SIGNATURE_SIZE = (64, 36)  # (width, height) of the grey thumbnail a scene is compared by
SCENE_CUT = 20.0  # mean grey-level change (0-255) of that thumbnail that means a cut


@dataclass(frozen=True)
class TrackView:
    track_id: int
    xyxy: tuple[float, float, float, float]  # box in frame pixels
    name: str | None  # None: unknown
    confidence: float  # similarity behind the name (for unknown: the best one seen)


@dataclass(frozen=True)
class IdentityChange:
    """A track's identity was decided for the first time, or changed."""

    track_id: int
    name: str | None
    confidence: float
    xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackUpdate:
    track_ids: NDArray[np.int64]  # [N] the track of each detection
    recognize: NDArray[np.bool_]  # [N] recognise this face now
    changes: tuple[IdentityChange, ...]  # new tracks named "unknown" when no gallery is set


def view_quality(frame: NDArray[np.uint8], faces: Faces) -> NDArray[np.float32]:
    """[N] how good a view each face is, in (0, 1]: size x frontality x sharpness.

    Size: box width up to the recognizer's chip width. Frontality: how centred the
    nose is between the eyes (a profile scores low). Sharpness: the variance of the
    Laplacian on a small grey patch of the face, squashed to (0, 1).
    """
    quality = np.zeros(len(faces), np.float32)
    height, width = frame.shape[:2]
    for i, (box, points) in enumerate(zip(faces.xyxy, faces.landmarks, strict=True)):
        x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
        x1, y1 = min(int(box[2]) + 1, width), min(int(box[3]) + 1, height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        size = min(float(box[2] - box[0]) / FULL_DETAIL_PX, 1.0)
        eye_r, eye_l, nose = points[0], points[1], points[2]
        eye_span = max(float(np.linalg.norm(eye_l - eye_r)), 1.0)
        off_centre = abs(float(nose[0] - (eye_r[0] + eye_l[0]) / 2.0)) / eye_span
        frontal = float(np.clip(1.0 - 1.5 * off_centre, 0.05, 1.0))
        grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
        patch = cv2.resize(grey, (_PATCH, _PATCH), interpolation=cv2.INTER_AREA)
        variance = float(cv2.Laplacian(patch, cv2.CV_32F).var())
        sharp = variance / (variance + SHARPNESS_HALF)
        quality[i] = max(size * frontal * sharp, 1e-3)
    return quality


def scene_signature(frame: NDArray[np.uint8]) -> NDArray[np.float32]:
    """A [36, 64] grey thumbnail of the frame, to tell a cut to another shot."""
    small = cv2.resize(frame, _SIGNATURE_SIZE, interpolation=cv2.INTER_LINEAR)  # sampled: cheap
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)


def _iou(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """[A, B] intersection over union of boxes a [A, 4] and b [B, 4]."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


class _Track:
    """One tracked face (mutable, owned by its `Tracker`)."""

    __slots__ = (
        "best_quality",
        "confidence",
        "decided",
        "evidence",
        "id",
        "last_recognized",
        "last_seen",
        "name",
        "needs_recognition",
        "xyxy",
    )

    def __init__(self, track_id: int, xyxy: NDArray[np.float32], frame: int, history: int) -> None:
        self.id = track_id
        self.xyxy = xyxy
        self.last_seen = frame
        self.last_recognized = -(10**9)
        self.best_quality = 0.0
        self.needs_recognition = True
        self.evidence: deque[tuple[NDArray[np.float32], float]] = deque(maxlen=history)
        self.name: str | None = None
        self.confidence = 0.0
        self.decided = False

    def box(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = (float(v) for v in self.xyxy)
        return (x0, y0, x1, y1)

    def decide(self, gallery: Gallery | None, switch_ratio: float) -> IdentityChange | None:
        """Vote over the evidence (see the module docstring); the change, if any."""
        name, confidence, mass = None, 0.0, {}
        if gallery is not None and len(gallery.labels) and self.evidence:
            embeddings = np.stack([e for e, _ in self.evidence])
            weights = np.array([w for _, w in self.evidence], np.float32)
            similarity = embeddings @ gallery.weights.T
            best = similarity.argmax(axis=1)
            score = similarity[np.arange(len(best)), best]
            vote = np.where(score >= gallery.threshold, best, -1)
            strength = weights * np.where(vote >= 0, score, gallery.threshold)
            candidates = np.unique(vote)
            totals = [float(strength[vote == c].sum()) for c in candidates]
            winner = int(candidates[int(np.argmax(totals))])
            mass = {
                gallery.labels[c] if c >= 0 else None: m
                for c, m in zip(candidates, totals, strict=True)
            }
            name = gallery.labels[winner] if winner >= 0 else None
            chosen = vote == winner
            confidence = float(np.average(score[chosen], weights=weights[chosen]))
        established = self.decided and name != self.name and mass
        if established and mass[name] < switch_ratio * mass.get(self.name, 0.0):
            return None  # not enough evidence to change an established name
        first = not self.decided
        changed = name != self.name
        self.name, self.confidence, self.decided = name, confidence, True
        if first or changed:
            return IdentityChange(self.id, name, confidence, self.box())
        return None


class Tracker:
    """Tracks for one stream. Not thread-safe: one pipeline drives it, in order."""

    def __init__(
        self,
        settings: TrackingSettings,
        *,
        better_view_gain: float = 1.3,
        min_recheck_gap: int = 5,
        unknown_recheck_frames: int = 5,
        history: int = 16,
        switch_ratio: float = 1.5,
        max_recognitions_per_frame: int = 4,
    ) -> None:
        self.settings = settings
        self.better_view_gain = better_view_gain
        self.min_recheck_gap = min_recheck_gap
        self.unknown_recheck_frames = unknown_recheck_frames
        self.max_recognitions_per_frame = max_recognitions_per_frame
        # tracking off: recognise every face every frame, named from that frame alone
        self.history = history if settings.enabled else 1
        self.switch_ratio = switch_ratio if settings.enabled else 1.0
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._frame = 0
        self._gallery: Gallery | None = None
        self._backbone: str | None = None
        self._signature: NDArray[np.float32] | None = None
        self.cuts = 0  # scene cuts seen (each ends every track)

    def __len__(self) -> int:
        return len(self._tracks)

    def set_model(
        self, gallery: Gallery | None, backbone: str | None
    ) -> tuple[IdentityChange, ...]:
        """Score against a new gallery from now on. Same backbone: every track is
        re-decided from its kept embeddings at once. New backbone (or none): the
        evidence is cleared and every face is recognised again."""
        new_backbone = backbone != self._backbone
        self._gallery, self._backbone = gallery, backbone
        changes = []
        for track in self._tracks.values():
            if new_backbone:
                track.evidence.clear()
                track.needs_recognition = True
                track.best_quality = 0.0
            if backbone is None or track.evidence:
                change = track.decide(gallery, switch_ratio=1.0)
                if change is not None:
                    changes.append(change)
        return tuple(changes)

    def update(
        self,
        faces: Faces,
        quality: NDArray[np.float32],
        signature: NDArray[np.float32] | None = None,
    ) -> TrackUpdate:
        """Match one frame's faces (with their `view_quality`) to tracks. With the
        frame's `scene_signature`, a cut to another shot ends every track first: a
        face in the new shot is not the face that was at its place before."""
        self._frame += 1
        frame = self._frame
        if signature is not None:
            previous, self._signature = self._signature, signature
            if previous is not None and float(np.abs(signature - previous).mean()) > SCENE_CUT:
                self._tracks.clear()
                self.cuts += 1
        track_ids = self._match(faces)
        max_missing = self.settings.max_age_frames
        for track in [t for t in self._tracks.values() if frame - t.last_seen > max_missing]:
            del self._tracks[track.id]
        recognize = np.zeros(len(faces), np.bool_)
        changes = []
        wanted: list[int] = []  # faces never (or not successfully) recognised
        due: list[int] = []  # re-checks: a better view, or the interval is up
        someone_to_find = self._gallery is not None and len(self._gallery.labels) > 0
        for i in (int(i) for i in np.argsort(-quality, kind="stable")):
            track = self._tracks[int(track_ids[i])]
            if self._backbone is None:
                change = None if track.decided else track.decide(None, self.switch_ratio)
                if change is not None:
                    changes.append(change)
                continue
            since = frame - track.last_recognized
            better = quality[i] >= track.best_quality * self.better_view_gain
            interval = self.settings.recheck_frames
            if track.decided and track.name is None and someone_to_find:
                interval = min(interval, self.unknown_recheck_frames)
            if not self.settings.enabled or track.needs_recognition:
                wanted.append(i)
            elif since >= interval or (better and since >= self.min_recheck_gap):
                due.append(i)
        budget = self.max_recognitions_per_frame if self.settings.enabled else len(faces)
        for i in (wanted + due)[:budget]:  # the rest wait a frame or two, still wanted or due
            track = self._tracks[int(track_ids[i])]
            recognize[i] = True
            track.last_recognized = frame
            track.best_quality = max(track.best_quality, float(quality[i]))
            track.needs_recognition = False
        return TrackUpdate(track_ids, recognize, tuple(changes))

    def observe(
        self,
        track_ids: NDArray[np.int64],
        embeddings: NDArray[np.float32],
        weights: NDArray[np.float32],
    ) -> tuple[IdentityChange, ...]:
        """Add recognitions (unit embeddings [n, D], view qualities [n]) made with the
        current backbone, and re-decide those tracks."""
        changes = []
        for track_id, embedding, weight in zip(track_ids, embeddings, weights, strict=True):
            track = self._tracks.get(int(track_id))
            if track is None:
                continue  # expired while its face was being recognised
            track.evidence.append((embedding, max(float(weight), 1e-3)))
            change = track.decide(self._gallery, self.switch_ratio)
            if change is not None:
                changes.append(change)
        return tuple(changes)

    def retry(self, track_ids: NDArray[np.int64]) -> None:
        """These faces were not recognised after all (dropped work): ask again."""
        for track_id in track_ids:
            track = self._tracks.get(int(track_id))
            if track is not None:
                track.needs_recognition = True

    def views(self, track_ids: NDArray[np.int64]) -> tuple[TrackView, ...]:
        """The current state of the given tracks, in order."""
        return tuple(
            TrackView(t.id, t.box(), t.name, t.confidence)
            for t in (self._tracks[int(i)] for i in track_ids)
        )

    def clear(self) -> None:
        """Forget every track and its evidence."""
        self._tracks.clear()

    def _match(self, faces: Faces) -> NDArray[np.int64]:
        boxes = faces.xyxy
        ids = np.zeros(len(faces), np.int64)
        tracks = list(self._tracks.values())
        taken_detections: set[int] = set()
        if tracks and len(faces):
            old = np.stack([t.xyxy for t in tracks])
            iou = _iou(old, boxes)
            side_old = np.sqrt(np.maximum((old[:, 2] - old[:, 0]) * (old[:, 3] - old[:, 1]), 1.0))
            side_new = np.sqrt(
                np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
            )
            centre_old = (old[:, :2] + old[:, 2:]) / 2.0
            centre_new = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            distance = (
                np.linalg.norm(centre_old[:, None] - centre_new[None], axis=2) / side_old[:, None]
            )
            ratio = side_new[None, :] / side_old[:, None]
            near = (distance <= 0.5) & (ratio >= 0.6) & (ratio <= 1.0 / 0.6)
            candidate = (iou >= self.settings.iou_threshold) | near
            affinity = iou + 0.01 * (1.0 - np.minimum(distance, 1.0))
            taken_tracks: set[int] = set()
            for flat in np.argsort(-affinity, axis=None):
                t, d = divmod(int(flat), len(faces))
                if not candidate[t, d] or t in taken_tracks or d in taken_detections:
                    continue
                taken_tracks.add(t)
                taken_detections.add(d)
                ids[d] = tracks[t].id
        for d in range(len(faces)):
            if d in taken_detections:
                track = self._tracks[int(ids[d])]
            else:
                track = _Track(self._next_id, boxes[d].copy(), self._frame, self.history)
                self._tracks[track.id] = track
                self._next_id += 1
                ids[d] = track.id
            track.xyxy = boxes[d].copy()
            track.last_seen = self._frame
        return ids
