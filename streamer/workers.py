"""``facestream serve --workers N``: N server processes on one port, and the small
supervisor that keeps them running.

The parent makes what the workers share once (the token, the certificate, the state
directory; ``streamer.serving.prepare``), resolves port 0 to a real port, then starts the
workers with multiprocessing's *spawn* (fresh interpreters: nothing of the parent's
state is copied). Each worker runs its own engine and application and binds the
port with ``SO_REUSEPORT``, so the kernel spreads new connections over them; a
WebRTC session lives in the worker that answered its offer (signalling is the one
``POST /api/webrtc/offer``), which names itself in the ``X-Facestream-Worker``
header of the answer.

The parent announces the addresses and sends systemd ``READY=1`` once every worker
listens. A worker that dies is started again after a pause that doubles (1 s up to
30 s) while it keeps dying within a minute of its start; its phones reconnect to the
others meanwhile. SIGTERM or SIGINT to the parent stops every worker (SIGTERM, then
SIGKILL after ``STOP_TIMEOUT_S``). A worker whose parent is gone, however it died
(SIGKILL, say, which leaves it no time to stop them), stops itself as on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TextIO

from facecore import systemd
from facecore.config import ServerSettings, Settings
from facecore.errors import ConfigError, FacestreamError
from facecore.metrics_export import process_dead
from streamer.serving import Prepared, announce_ready, prepare, run_server

__all__ = ["supervise"]

log = logging.getLogger(__name__)

FIRST_RESTART_S = 1.0
MAX_RESTART_S = 30.0
STABLE_S = 60.0  # a worker that ran this long starts the backoff afresh when it dies
STOP_TIMEOUT_S = 20.0  # below systemd's TimeoutStopSec=30s
START_TIMEOUT_S = 300.0  # a first start converts no models (ExecStartPre did), but be kind


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection  # the parent's end: the worker says ("listening", pid) or ("failed", why)
    started: float
    delay: float = FIRST_RESTART_S  # the pause before the next restart


def supervise(settings: Settings, out: TextIO) -> int:
    """Run ``settings.server.workers`` server processes until SIGTERM or SIGINT."""
    prepared = prepare(settings)
    context = multiprocessing.get_context("spawn")
    wake_read, wake_write = socket.socketpair()
    stop: list[int] = []
    with _signals_to(wake_write, stop), _reserved_port(settings.server) as port:
        # origins is a read-only mapping, which does not pickle; the workers only need
        # it for error messages, and the parent already checked every value
        shared = replace(
            settings,
            server=replace(settings.server, port=port),
            origins=dict(settings.origins),
        )
        workers = [_start(context, shared, prepared, i) for i in range(settings.server.workers)]
        try:
            _wait_until_listening(workers)
            announce_ready(settings, prepared, port, out)
            pids = ", ".join(str(w.process.pid) for w in workers)
            print(f"{len(workers)} workers (pids {pids})", file=out, flush=True)
            _keep_running(context, shared, prepared, workers, wake_read, stop)
            systemd.notify("STOPPING=1")
            print("facestream: shutting down", file=out, flush=True)
        finally:
            _stop_all(workers)
            wake_read.close()
            wake_write.close()
    return 0


def _start(context: multiprocessing.context.SpawnContext, settings: Settings,
           prepared: Prepared, index: int) -> _Worker:
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(
        target=_worker_main, args=(settings, prepared, child_end),
        name=f"facestream-worker-{index}", daemon=False,
    )
    process.start()
    child_end.close()
    log.info("worker %d started (pid %s)", index, process.pid)
    return _Worker(index, process, parent_end, time.monotonic())


def _wait_until_listening(workers: list[_Worker]) -> None:
    """Return once every worker listens; a worker that fails first fails the start."""
    waiting = {w.conn: w for w in workers}
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting:
        sentinels = {w.process.sentinel: w for w in waiting.values()}
        ready = wait([*waiting, *sentinels], timeout=max(deadline - time.monotonic(), 0.0))
        if not ready:
            raise ConfigError(f"the server workers did not start in {START_TIMEOUT_S:.0f} s")
        for item in ready:
            worker = waiting.get(item) or sentinels[item]  # type: ignore[call-overload]
            message = _receive(worker.conn)
            if message is None or message[0] != "listening":
                why = message[1] if message else f"it exited with code {worker.process.exitcode}"
                raise ConfigError(f"server worker {worker.index} did not start: {why}")
            waiting.pop(worker.conn, None)


def _keep_running(context: multiprocessing.context.SpawnContext, settings: Settings,
                  prepared: Prepared, workers: list[_Worker], wake: socket.socket,
                  stop: list[int]) -> None:
    """Restart dead workers until a signal arrives on ``wake``."""
    restarts: dict[int, float] = {}  # worker index -> when to start it again
    while not stop:
        alive = {w.process.sentinel: w for w in workers if w.index not in restarts}
        timeout = max(min(restarts.values()) - time.monotonic(), 0.0) if restarts else None
        for item in wait([wake, *alive], timeout=timeout):
            if item is wake:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
                continue
            worker = alive[item]  # type: ignore[index]
            worker.process.join()
            worker.conn.close()
            process_dead(worker.process.pid or 0)
            lived = time.monotonic() - worker.started
            if lived > STABLE_S:
                worker.delay = FIRST_RESTART_S
            log.warning(
                "worker %d (pid %s) died (%s) after %.0f s; starting it again in %.0f s",
                worker.index, worker.process.pid, _exit_text(worker.process.exitcode),
                lived, worker.delay,
            )
            restarts[worker.index] = time.monotonic() + worker.delay
        for index, when in list(restarts.items()):
            if when <= time.monotonic() and not stop:
                old = workers[index]
                new = _start(context, settings, prepared, index)
                new.delay = min(old.delay * 2, MAX_RESTART_S)
                workers[index] = new
                del restarts[index]


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid or 0, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for worker in workers:
        worker.process.join(max(deadline - time.monotonic(), 0.0))
        if worker.process.is_alive():
            log.warning("worker %d (pid %s) did not stop; killing it",
                        worker.index, worker.process.pid)
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        process_dead(worker.process.pid or 0)


def _receive(conn: Connection) -> tuple[str, object] | None:
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


@contextlib.contextmanager
def _signals_to(wake: socket.socket, stop: list[int]) -> Iterator[None]:
    """SIGTERM and SIGINT append to ``stop`` and wake the supervisor's ``wait``."""
    wake.setblocking(False)

    def handler(signum: int, frame: object) -> None:
        stop.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    old_fd = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _reserved_port(server: ServerSettings) -> Iterator[int]:
    """``server.port``, or for port 0 a free one, held (bound, not listening, so it
    gets no connections) with SO_REUSEPORT until the workers are gone."""
    if server.port != 0:
        _check_free(server)
        yield server.port
        return
    family, kind, proto, _, address = socket.getaddrinfo(
        server.host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
        yield int(holder.getsockname()[1])


def _check_free(server: ServerSettings) -> None:
    """Refuse a port another server listens on. The workers bind it with SO_REUSEPORT,
    which would let them share it with another ``serve --workers`` unseen (the kernel
    would split the phones between the two); a bind without it is refused instead."""
    family, kind, proto, _, address = socket.getaddrinfo(
        server.host or None, server.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {server.host}:{server.port}: {exc.strerror}"
            ) from exc


def _worker_main(settings: Settings, prepared: Prepared, conn: Connection) -> None:
    """One worker: the server as ``facestream serve`` runs it, on the shared port."""
    import asyncio

    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: the parent stops us
    os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears the parent only (NotifyAccess=main)
    _stop_with_the_supervisor()

    def listening(port: int) -> None:
        conn.send(("listening", os.getpid()))

    try:
        asyncio.run(run_server(settings, prepared, listening, reuse_port=True))
    except FacestreamError as exc:  # a user's error: the parent says it, without a traceback
        conn.send(("failed", " ".join(str(exc).splitlines())))
        raise SystemExit(2) from None
    finally:
        conn.close()


def _stop_with_the_supervisor() -> None:
    """SIGTERM this worker once its supervisor is gone, however it died: a worker left
    behind would go on answering on the shared port (SO_REUSEPORT) beside the next
    ``serve``. The parent's sentinel (a pipe whose write end only the parent holds)
    becomes readable when the parent exits, so the kernel tells us; PR_SET_PDEATHSIG
    would fire on the exit of the parent *thread* that started us instead."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing: nothing to watch
        return

    def watch() -> None:
        wait([parent.sentinel])
        log.warning("the supervisor (pid %s) is gone: stopping", parent.pid)
        # the way the supervisor stops us: run_server closes its peers and returns (if
        # it has not set its handler yet, SIGTERM ends the process, which has none)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="facestream-supervisor-watch", daemon=True).start()
