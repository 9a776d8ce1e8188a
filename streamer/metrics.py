"""Prometheus metrics of the server (``prometheus-client``); the trainer's are in
`trainer.metrics`, so that each process exposes only its own figures.

The metric objects are module constants, as Prometheus clients are meant to be used:
counting costs a lock and an add, also where nothing scrapes. They are exposed only
when ``server.metrics_port`` is set, on a plain-HTTP listener of its own bound to
``server.metrics_host`` (default 127.0.0.1; `facecore.metrics_export`): the figures
carry no names or faces, but they say how busy the server is, so the listener is kept
off the phones' port and its token.

The server runs in multiprocess mode when its metrics are on: ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh ``STATE_DIR/server/metrics`` before this
module is first imported, every worker writes its figures there, and the listener
sums them. A dead worker's gauges are dropped; its counters and histograms stay
counted.

No per-session labels: a phone's stream id is new at each connection, so labels by
session would grow without bound. Frames are counted in total over all sessions.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACTIVE_SESSIONS",
    "ASYNCIO_TASKS",
    "BUNDLE_CREATED",
    "BUNDLE_VERSION",
    "FACES_EMBEDDED",
    "FRAMES",
    "RECOGNITION_BATCH",
    "STAGE_SECONDS",
]

# 1 ms to 2.5 s: a stage is a few ms on a GPU, tens of ms on a busy CPU
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

STAGE_SECONDS = Histogram(
    "facestream_stage_seconds",
    "Time a frame spent in each stage: convert_in (the decoded picture to BGR), detect, "
    "recognize, annotate, convert_out (back to the encoder's YUV), total (detect to "
    "annotate). aiortc's own VP8/H.264 decoding and encoding run in its codec threads "
    "and are not in here.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
FRAMES = Counter(
    "facestream_frames",
    "Phone frames, over all sessions: in (taken into a pipeline), out (annotated and "
    "returned), dropped (replaced by a newer one while waiting for a frame slot)",
    ["direction"],
)
ACTIVE_SESSIONS = Gauge(
    "facestream_active_sessions", "WebRTC sessions open", multiprocess_mode="livesum"
)
ASYNCIO_TASKS = Gauge(
    "facestream_asyncio_tasks",
    "Tasks alive on the server's event loop, sampled every second: with no session "
    "open it should stay flat (growth across many sessions is a leak)",
    multiprocess_mode="livesum",
)
FACES_EMBEDDED = Counter("facestream_faces_embedded", "Faces run through the recognizer")
RECOGNITION_BATCH = Histogram(
    "facestream_recognition_batch_faces", "Faces per recognizer call", buckets=BATCH_BUCKETS
)
BUNDLE_VERSION = Gauge(
    "facestream_bundle_version", "Version of the model bundle served (0: none)",
    multiprocess_mode="livemin",  # the lowest: a worker still on the old bundle shows
)
BUNDLE_CREATED = Gauge(
    "facestream_bundle_created_timestamp_seconds",
    "When the served bundle was made (Unix time); its age is time() minus this",
    multiprocess_mode="livemin",
)
