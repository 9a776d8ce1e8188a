"""``facestream trainer [--once]``: the trainer service's command.

Heavy imports (torch, onnxruntime, matplotlib) happen inside the handler; see
facecore.cli for the protocol.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from facecore.cli import Subparsers, add_command
from facecore.config import Settings

if TYPE_CHECKING:
    from trainer.service import TrainerService

__all__ = ["PUBLISH_PAUSE_ENV", "register_trainer"]

log = logging.getLogger(__name__)

# Test hook: seconds to sleep inside the publish step, once the new bundle is complete
# but before it is published (to kill the trainer mid-publish). Never set in production.
PUBLISH_PAUSE_ENV = "FACESTREAM_TEST_PUBLISH_PAUSE"


def register_trainer(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers["facestream"],
        "trainer",
        parents=parents,
        handler=_trainer,
        help="re-fit the recognition model whenever the enrolled people change",
        description=(
            "Watch the enrollment store (STATE_DIR/enrollment, or the PostgreSQL store of "
            "enrollment.database_url) and, whenever it changes, re-fit the recognition "
            "head on the enrolled faces and publish a new model bundle into the bundles "
            "folder (STATE_DIR/bundles, or bundles_dir), which running servers pick up. "
            "Embeddings are cached, so adding a person costs seconds. Each bundle carries "
            "a training report (report.json, scores.png, roc.png). A change is seen "
            "within a quarter second (SQLite) or at once (PostgreSQL's NOTIFY); under "
            "systemd (Type=notify) readiness and status are reported, and SIGTERM stops "
            "it cleanly."
        ),
        epilog="examples:\n"
        "  facestream trainer              # run as a service\n"
        "  facestream trainer --once       # one run; says 'nothing to do' when up to date",
    )
    parser.add_argument(
        "--once", action="store_true", help="run once (re-fit if needed) and exit"
    )


def _trainer(settings: Settings, args: argparse.Namespace) -> int:
    from trainer.service import StopRequested, TrainerService, describe

    stopping = threading.Event()  # for a StopRequested that a finalizer swallowed

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        stopping.set()
        raise StopRequested(f"stopped by {signal.Signals(signum).name}")

    pause = float(os.environ.get(PUBLISH_PAUSE_ENV) or 0.0)
    if settings.trainer.metrics_port:
        from facecore.metrics_export import serve_metrics

        port = serve_metrics(settings.trainer.metrics_host, settings.trainer.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.trainer.metrics_host, port)
    previous = signal.signal(signal.SIGTERM, stop)
    service = None
    try:
        if args.once:
            service = TrainerService(settings, publish_pause=pause)
            bundle = service.run_once()
            print("nothing to do: the current bundle is up to date" if bundle is None
                  else f"published {bundle.path}: {describe(bundle)}")
        else:
            service = _open_waiting(settings, pause)
            service.serve(stopping)
    except StopRequested as exc:
        if service is not None:
            service.notify("STOPPING=1")
        log.info("trainer %s (a bundle in the making, if any, is dropped)", exc)
        if args.once:  # unfinished: `trainer --once && ...` must not go on (the service
            return 128 + signal.SIGTERM  # stops as systemd asks it to, with 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if service is not None:
            service.close()
    return 0


def _open_waiting(settings: Settings, pause: float) -> TrainerService:
    """The service, once its store can be reached: a PostgreSQL server that is down at
    start is retried after a doubling wait, not a crash for systemd to restart."""
    from enrollment.database import retry_delay
    from enrollment.errors import StoreUnavailableError
    from facecore import systemd
    from trainer.service import TrainerService

    attempt = 0
    while True:
        try:
            return TrainerService(settings, publish_pause=pause)
        except StoreUnavailableError as exc:
            attempt += 1
            delay = retry_delay(attempt, settings.enrollment.connect_retry_max_s)
            log.error("%s; trying again in %.0f s", exc, delay)
            systemd.notify(f"STATUS={exc}; trying again in {delay:.0f} s")
            time.sleep(delay)
