"""Prometheus metrics of the trainer (``prometheus-client``), exposed when
``trainer.metrics_port`` is set (`facecore.metrics_export`); the server's are in
`streamer.metrics`, so that each process exposes only its own figures.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "TRAINER_ACTIVE",
    "TRAINER_BUNDLE_VERSION",
    "TRAINER_RUNS",
    "TRAINER_RUN_SECONDS",
]

RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800)

TRAINER_RUNS = Counter(
    "facestream_trainer_runs",
    "Trainer runs, by outcome: published, up_to_date, unfinished (failed, stopped, busy)",
    ["outcome"],
)
TRAINER_RUN_SECONDS = Histogram(
    "facestream_trainer_run_seconds", "Duration of a trainer run", buckets=RUN_BUCKETS
)
TRAINER_BUNDLE_VERSION = Gauge(
    "facestream_trainer_bundle_version",
    "Version of the bundle in force as the trainer last published or checked it (0: none)",
)
TRAINER_ACTIVE = Gauge(
    "facestream_trainer_active",
    "1 while this trainer holds the trainer lock and publishes; 0 while it waits (a standby)",
)
