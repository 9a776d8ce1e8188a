"""Enroll mode: a person enrolled from the phone's camera, live.

The phone starts and stops it on its ``events`` data channel (the same channel the
recognition events come on)::

    phone -> server  {"type": "enroll", "name": "Ada Lovelace"}   start (or restart)
    phone -> server  {"type": "enroll", "action": "cancel"}       stop, nothing saved
    server -> phone  {"type": "enroll", "state": "collecting", "person": "Ada Lovelace",
                      "count": 3, "target": 8, "pose": "left",
                      "guidance": "Turn your head a little to your left"}
    server -> phone  {"type": "enroll", "state": "saving" | "done" | "failed" |
                      "cancelled", "person", "count", "target", "reason"?,
                      "person_id"?, "existing"?}

While collecting, every frame the phone sends is examined off the event loop (one at
a time; frames arriving meanwhile are skipped): the largest face in view must be
clearly the only candidate, big and sharp enough (the thresholds of
`enrollment.ingest.IngestPolicy`). Its head pose (`head_pose`) decides which of the
plan's poses it fills: straight ahead, a little to the person's left and right, and
up, each with its count (`CapturePlan`). The guidance asks for the first pose still
missing; a pose the person does not reach within ``patience_s`` is skipped, and the
rest is then filled with any good view distinct from those kept. A sample too close
to one already kept (same pose, too soon) is skipped. When the plan is full (or at
``timeout_s`` with at least ``min_samples``) the person and the samples are committed
to the store in one worker job (`enrollment.ingest.ingest_face`, source ``"live"``);
a name that is already enrolled gets the new samples.

`attach_live_enrollment(app)` gives every phone of the server its Enroll mode: a
``PeerManager.session_hooks`` entry wires a `LiveEnrollment` to each new peer (the
events channel's messages, ``RecognitionTrack.frame_listeners`` for the frames, the
connection's end for ``close()``). The page's side is ``static/enroll.js``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web
from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamTrack
from numpy.typing import NDArray

from enrollment.errors import EnrollmentError
from enrollment.ingest import DEFAULT_POLICY, IngestPolicy, IngestResult, ingest_face
from enrollment.names import clean_name
from enrollment.store import EnrollmentStore, Person
from streamer.enroll.api import ENROLLMENT
from streamer.enroll.capture import GUIDANCE, Candidate, CapturePlan, PoseCollector, examine
from streamer.enroll.worker import EnrollmentWorker
from streamer.web.server import ENGINE, PEERS
from streamer.web.webrtc import PeerSession

if TYPE_CHECKING:
    from streamer.live.engine import Engine

__all__ = ["MESSAGE_TYPE", "LiveEnrollment", "attach_live_enrollment"]

log = logging.getLogger(__name__)

MESSAGE_TYPE = "enroll"


@dataclass(frozen=True)
class _Committed:
    person: Person
    results: tuple[IngestResult, ...]
    existing: bool


def _commit(
    store: EnrollmentStore, name: str, candidates: list[Candidate], policy: IngestPolicy
) -> _Committed:
    """The person (added unless enrolled already) and a sample per candidate; a person
    added here who ends without any accepted sample is removed again."""
    person, added = store.get_or_add_person(name)
    results = tuple(
        ingest_face(store, person.id, c.region, c.xyxy, c.landmarks, "live",
                    policy=policy, name=f"live view {i + 1}")
        for i, c in enumerate(candidates)
    )
    if added and not any(r.accepted for r in results):
        store.remove_person(person.id)
    else:
        person = store.get_person(person.id)
    return _Committed(person, results, not added)


class LiveEnrollment:
    """Enroll mode of one phone. ``send`` puts a text message on the phone's events
    channel. Call ``on_message`` with what the phone sends on it and ``on_frame``
    with every frame it sends [H, W, 3] BGR, both on the event loop; ``close()``
    (safe twice) drops a collection in progress."""

    def __init__(
        self,
        engine: Engine,
        worker: EnrollmentWorker,
        send: Callable[[str], None],
        *,
        plan: CapturePlan | None = None,
        policy: IngestPolicy = DEFAULT_POLICY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._worker = worker
        self._send = send
        self.plan = plan or CapturePlan()
        self.policy = policy
        self._clock = clock
        self.state = "idle"  # idle, collecting, saving, done, failed, cancelled
        self.name = ""
        self.frames_skipped = 0  # frames that came while one was being examined
        self._collector: PoseCollector | None = None
        self._examining = False
        self._last_sent: tuple[object, ...] = ()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- the phone's side -----------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        """Handle an ``{"type": "enroll", ...}`` message; anything else is ignored."""
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return
        if not isinstance(data, dict) or data.get("type") != MESSAGE_TYPE or self._closed:
            return
        if data.get("action") == "cancel":
            if self.state == "collecting":
                self._collector = None
                self._report("cancelled")
            return
        if self.state == "saving":
            self._report("saving", reason="still saving the previous person")
            return
        try:
            self.name = clean_name(str(data.get("name", "")))
        except EnrollmentError as exc:
            self._collector = None
            self._report("failed", reason=str(exc))
            return
        self._collector = PoseCollector(self.plan, self._clock())
        self._last_sent = ()
        self._report("collecting")

    def on_frame(self, frame: NDArray[np.uint8]) -> None:
        if self._collector is None or self._closed:
            return
        if self._examining:
            self.frames_skipped += 1
            return
        self._examining = True
        self._spawn(self._examine(self._collector, frame))

    def close(self) -> None:
        self._closed = True
        self._collector = None
        for task in list(self._tasks):
            task.cancel()

    # --- internals ------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _examine(self, collector: PoseCollector, frame: NDArray[np.uint8]) -> None:
        try:
            found = await self._engine.run_cpu(examine, self._engine.detector, frame, self.policy)
        except Exception:
            log.exception("live enrollment: examining a frame failed")
            found = "no_face"
        finally:
            self._examining = False
        if collector is not self._collector:
            return  # cancelled or restarted meanwhile
        now = self._clock()
        problem = None
        if isinstance(found, Candidate):
            collector.consider(found, now)
        else:
            problem = found
        enough = collector.count >= self.plan.min_samples
        if collector.full or (collector.timed_out(now) and enough):
            self._collector = None
            self._report("saving", count=collector.count)
            self._spawn(self._save(collector))
        elif collector.timed_out(now):
            self._collector = None
            self._report("failed", count=collector.count, reason=(
                f"only {collector.count} good views in {self.plan.timeout_s:g} s "
                f"({self.plan.min_samples} needed): {GUIDANCE[problem or 'any'].lower()}"
            ))
        else:
            self._report("collecting", pose=collector.asking(now), problem=problem)

    async def _save(self, collector: PoseCollector) -> None:
        candidates = [candidate for _, candidate, _ in collector.kept]
        name, policy = self.name, self.policy
        try:
            committed = await self._worker.call(lambda s: _commit(s, name, candidates, policy))
        except EnrollmentError as exc:
            log.error("live enrollment of %r failed: %s", name, exc)
            self._report("failed", reason=str(exc))
            return
        accepted = sum(r.accepted for r in committed.results)
        log.info("live enrollment: %d of %d views of %r stored (person %s)",
                 accepted, len(candidates), name, committed.person.id)
        if not accepted:
            reasons = "; ".join(sorted({r.reason for r in committed.results}))
            self._report("failed", reason=f"no view could be stored: {reasons}")
            return
        self.name = committed.person.name  # as stored: "ada" joins "Ada Lovelace"
        self._report("done", count=accepted, person_id=committed.person.id,
                     existing=committed.existing)

    def _report(
        self,
        state: str,
        *,
        pose: str | None = None,
        problem: str | None = None,
        count: int | None = None,
        **extra: object,
    ) -> None:
        """Send the state to the phone (a collecting state only when it changed)."""
        self.state = state
        collector = self._collector
        if count is None:
            count = collector.count if collector is not None else 0
        message: dict[str, object] = {
            "type": MESSAGE_TYPE,
            "state": state,
            "person": self.name,
            "count": count,
            "target": self.plan.target,
            **extra,
        }
        if state == "collecting":
            asked = pose or "straight"
            message["pose"] = asked
            message["guidance"] = GUIDANCE[problem or asked]
            key = (state, count, asked, problem)
            if key == self._last_sent:
                return
            self._last_sent = key
        self._send(json.dumps(message, ensure_ascii=False))


def attach_live_enrollment(app: web.Application, plan: CapturePlan | None = None) -> None:
    """Give every phone of ``app`` (made by `streamer.web.server.create_app`, with
    `streamer.enroll.api.add_enrollment_routes` already added) its Enroll mode."""
    hook = partial(_enroll_mode, app[ENGINE], app[ENROLLMENT], plan)
    app[PEERS].session_hooks.append(hook)


def _enroll_mode(
    engine: Engine, worker: EnrollmentWorker, plan: CapturePlan | None, session: PeerSession
) -> None:
    """Wire a `LiveEnrollment` to a new peer: the events channel's messages in, its
    reports out, the phone's frames in; closed with the connection. The session's own
    listeners were registered first, so its channel and track exist when ours run."""

    def send(text: str) -> None:
        channel = session.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)

    live = LiveEnrollment(engine, worker, send, plan=plan)

    def on_datachannel(channel: RTCDataChannel) -> None:
        if channel is session.channel:
            channel.on("message", live.on_message)

    def on_track(track: MediaStreamTrack) -> None:
        recognition = session.track
        if recognition is not None and live.on_frame not in recognition.frame_listeners:
            recognition.frame_listeners.append(live.on_frame)

    def on_state() -> None:
        if session.pc.connectionState in ("failed", "closed"):
            live.close()

    session.pc.on("datachannel", on_datachannel)
    session.pc.on("track", on_track)
    session.pc.on("connectionstatechange", on_state)
