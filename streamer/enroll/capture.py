"""Live capture of enrollment samples: which views of a face to keep, and why.

`examine` looks at one camera frame (CPU work, for a worker thread) and returns the
largest face as a `Candidate`, or what is wrong with the view. Its head pose
(`head_pose`) decides which of a `CapturePlan`'s poses it fills; a `PoseCollector`
keeps good, varied candidates and says which pose to ask the person for next.
Everything here is pure: no I/O, no clock (the caller passes the time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from enrollment.ingest import DEFAULT_POLICY, IngestPolicy
from enrollment.quality import measure_quality
from enrollment.store import Quality
from facecore.alignment import crop_with_margin, similarity_transform
from facecore.detector import Detector
from facecore.registry import ARCFACE_112_TEMPLATE

__all__ = [
    "GUIDANCE",
    "Candidate",
    "CapturePlan",
    "Pose",
    "PoseCollector",
    "examine",
    "head_pose",
]

REGION_MARGIN = 1.0  # frame kept around a candidate face, in face box sizes per side
GUIDANCE = {
    "straight": "Look straight at the camera",
    "left": "Turn your head a little to your left",
    "right": "Turn your head a little to your right",
    "up": "Tilt your head up a little",
    "any": "Move your head slowly, a little each way",
    "no_face": "No face in view: look at the camera",
    "several_faces": "Only the person being enrolled should be in view",
    "too_small": "Come closer to the camera",
    "too_blurred": "Hold still: the picture is blurred",
    "turned_away": "Turn back towards the camera",
}
_TEMPLATE = np.asarray(ARCFACE_112_TEMPLATE, np.float64)
_EYE_DISTANCE = float(np.hypot(*(_TEMPLATE[1] - _TEMPLATE[0])))
_RIM = [0, 1, 3, 4]  # eyes and mouth corners: everything but the nose


@dataclass(frozen=True)
class Pose:
    """Where the nose tip sits once the eyes and mouth corners are aligned to a frontal
    face, in eye distances: ``yaw`` > 0 when the person turns to their own left,
    ``up`` > 0 when they tilt their head up. About 0.15 is a slight turn."""

    yaw: float
    up: float

    def distance(self, other: Pose) -> float:
        return float(np.hypot(self.yaw - other.yaw, self.up - other.up))


def head_pose(landmarks: NDArray[np.floating]) -> Pose:
    """The `Pose` of a face from its 5 YuNet landmarks [5, 2] (in an unmirrored image)."""
    points = np.asarray(landmarks, np.float64)
    matrix = similarity_transform(points[_RIM], _TEMPLATE[_RIM])
    nose = matrix[:, :2] @ points[2] + matrix[:, 2]
    offset = (nose - _TEMPLATE[2]) / _EYE_DISTANCE
    return Pose(yaw=float(offset[0]), up=float(-offset[1]))


@dataclass(frozen=True)
class Candidate:
    """A good view of the face, kept until commit: the part of the frame around it
    (``region`` [h, w, 3] BGR) with its box [4] and landmarks [5, 2] in region pixels."""

    region: NDArray[np.uint8] = field(repr=False)
    xyxy: NDArray[np.float32] = field(repr=False)
    landmarks: NDArray[np.float32] = field(repr=False)
    quality: Quality
    pose: Pose


def examine(
    detector: Detector, frame: NDArray[np.uint8], policy: IngestPolicy = DEFAULT_POLICY
) -> Candidate | str:
    """The largest face of a BGR ``frame`` as a `Candidate`, or the `GUIDANCE` key of
    what is wrong with it. CPU work: run it in a worker thread."""
    faces = detector.detect(frame)
    if len(faces) == 0:
        return "no_face"
    order = np.argsort(-faces.area)
    if len(faces) > 1 and faces.area[order[0]] < policy.dominance * faces.area[order[1]]:
        return "several_faces"
    xyxy, landmarks = faces.xyxy[order[0]], faces.landmarks[order[0]]
    quality = measure_quality(frame, xyxy, landmarks)
    if quality.face_px < policy.min_face_px:
        return "too_small"
    if quality.sharpness < policy.min_sharpness:
        return "too_blurred"
    if quality.frontalness < policy.min_frontalness:
        return "turned_away"
    region, points = crop_with_margin(frame, xyxy, landmarks, REGION_MARGIN)
    shift = landmarks[0] - points[0]
    box = (xyxy - np.tile(shift, 2)).astype(np.float32)
    # a copy: the frame goes on to the pipeline, the region waits for the commit
    return Candidate(region.copy(), box, points, quality, head_pose(landmarks))


@dataclass(frozen=True)
class CapturePlan:
    """What one live enrollment collects. Pose thresholds are `Pose` units, relative
    to the person's first straight view."""

    poses: tuple[tuple[str, int], ...] = (("straight", 3), ("left", 2), ("right", 2), ("up", 1))
    straight_yaw: float = 0.1  # |yaw| of the first straight view, which sets the reference
    turn: float = 0.15  # yaw change that counts as a turn
    tilt: float = 0.07  # up change that counts as a tilt
    min_step: float = 0.04  # pose change that makes a view new
    same_pose_gap_s: float = 1.0  # ...or this much time since the pose's last sample
    min_gap_s: float = 0.15  # between any two samples
    patience_s: float = 4.0  # guidance moves on from a pose not reached in this time
    timeout_s: float = 45.0
    min_samples: int = 4  # at the timeout, commit only with at least this many

    @property
    def target(self) -> int:
        return sum(count for _, count in self.poses)


class PoseCollector:
    """Keeps good, varied candidates following a `CapturePlan`. Pure: the caller
    passes the time (seconds, any monotonic clock)."""

    def __init__(self, plan: CapturePlan, now: float) -> None:
        self.plan = plan
        self.started = now
        self.kept: list[tuple[str, Candidate, float]] = []  # (pose name, candidate, time)
        self._reference: Pose | None = None
        self._cursor = 0  # index in plan.poses of the pose asked for
        self._asked_since = now

    @property
    def count(self) -> int:
        return len(self.kept)

    @property
    def full(self) -> bool:
        return self.count >= self.plan.target

    def timed_out(self, now: float) -> bool:
        return now - self.started >= self.plan.timeout_s

    def asking(self, now: float) -> str:
        """The pose the guidance asks for now ("any" once every pose is full or skipped)."""
        poses = self.plan.poses
        while self._cursor < len(poses):
            name, wanted = poses[self._cursor]
            if self._kept_of(name) < wanted and now - self._asked_since < self.plan.patience_s:
                return name
            self._cursor += 1
            self._asked_since = now
        return "any"

    def consider(self, candidate: Candidate, now: float) -> bool:
        """Keep ``candidate`` when it fills a missing pose and is not a near-duplicate."""
        if self.full or (self.kept and now - self.kept[-1][2] < self.plan.min_gap_s):
            return False
        name = self._classify(candidate.pose)
        asking = self.asking(now)
        wanted = dict(self.plan.poses)
        if name is not None and self._kept_of(name) < wanted.get(name, 0):
            if not self._repeats(name, candidate.pose, now):
                return self._keep(name, candidate, now)
            return False
        step = self.plan.min_step
        distinct = all(candidate.pose.distance(c.pose) >= step for _, c, _ in self.kept)
        if asking == "any" and distinct:
            return self._keep("any", candidate, now)
        return False

    def _keep(self, name: str, candidate: Candidate, now: float) -> bool:
        if self._reference is None:
            self._reference = candidate.pose
        self.kept.append((name, candidate, now))
        poses = self.plan.poses
        if self._cursor < len(poses) and name == poses[self._cursor][0]:
            self._asked_since = now  # progress on the pose asked for: more patience
        return True

    def _classify(self, pose: Pose) -> str | None:
        ref, plan = self._reference, self.plan
        if ref is None:
            return "straight" if abs(pose.yaw) < plan.straight_yaw else None
        yaw, up = pose.yaw - ref.yaw, pose.up - ref.up
        if yaw >= plan.turn:
            return "left"
        if yaw <= -plan.turn:
            return "right"
        if up >= plan.tilt:
            return "up"
        if abs(yaw) < plan.turn / 2 and abs(up) < plan.tilt / 2:
            return "straight"
        return None

    def _kept_of(self, name: str) -> int:
        return sum(1 for kept_name, _, _ in self.kept if kept_name == name)

    def _repeats(self, name: str, pose: Pose, now: float) -> bool:
        for kept_name, candidate, at in self.kept:
            close = pose.distance(candidate.pose) < self.plan.min_step
            if kept_name == name and close and now - at < self.plan.same_pose_gap_s:
                return True
        return False
