"""Exposing the server's and the trainer's metrics (`streamer.metrics`,
`trainer.metrics`): the multiprocess directory, the ``/metrics``
listener, a dead worker's gauges. Imports ``prometheus_client`` only inside its
functions, so that ``use_multiprocess_dir`` can run before anything imports it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from facecore.errors import ConfigError

__all__ = ["process_dead", "serve_metrics", "use_multiprocess_dir"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess_dir(directory: Path) -> None:
    """Make ``directory`` empty and the place every process of this server writes its
    figures. Call before anything imports ``prometheus_client``'s metric values: the
    server calls it first thing, its workers inherit the variable."""
    if "prometheus_client" in sys.modules:  # its values would stay in this process
        raise RuntimeError("prometheus_client was imported before the multiprocess dir was set")
    from facecore.config import ensure_private_dir

    shutil.rmtree(directory, ignore_errors=True)  # a past run's figures: its pids are gone
    ensure_private_dir(directory)
    os.environ[MULTIPROC_ENV] = str(directory)


def serve_metrics(host: str, port: int) -> int:
    """Expose ``/metrics`` on ``host:port`` from a background thread; the bound port.
    In multiprocess mode the figures of every process writing to the directory.
    A port in use or a host that does not resolve is a `ConfigError`."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as exc:  # socket.gaierror too; worded as the main port's error is
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} for /metrics: {reason[:1].lower()}{reason[1:]}"
        ) from exc
    return int(server.server_address[1])


def process_dead(pid: int) -> None:
    """Drop the live gauges of server process ``pid`` (after it exited)."""
    if MULTIPROC_ENV in os.environ:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)
