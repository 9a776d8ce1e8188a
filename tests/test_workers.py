"""``facestream serve --workers 2`` as a real process tree: real aiortc phones get
named faces back from two worker processes on one port, ``/metrics`` sums both
workers' figures and they move as frames flow, a sign-in made in one worker holds
(and a sign-out ends it) in the other, a worker killed with SIGKILL is started again
and serves, SIGTERM stops them all, and a supervisor killed with SIGKILL takes its
workers with it. Also the shared session file on its own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from e2e_support import free_port
from enroll_support import LIN_FACING, FramesTrack, clip_frames
from prometheus_client.parser import text_string_to_metric_families
from webrtc_support import (
    REPO_ROOT,
    TOKEN,
    Client,
    LiveServer,
    build_people_bundle,
    connect,
    server_settings,
)

from streamer.web.auth import COOKIE_NAME, Sessions

CLIP = "media/short_hamilton_clip.mp4"


def test_sessions_are_one_set_for_every_process(tmp_path: Path) -> None:
    path = tmp_path / "server" / "sessions.json"
    first, second = Sessions(path, TOKEN), Sessions(path, TOKEN)  # two workers' views
    a = first.open()
    assert second.valid(a)  # opened by the other: read from the file
    b = second.open()  # made on what the file held, so ``a`` is kept
    assert first.valid(a) and first.valid(b) and second.valid(a)
    first.revoke(b)
    assert not second.valid(b) and second.valid(a)
    assert not Sessions(path, "another-token-0123456789").valid(a)
    assert not first.valid(a)  # the token change dropped them from the file for good


def _pids(text: str) -> list[int]:
    found = re.search(r"2 workers \(pids (\d+), (\d+)\)", text)
    return [int(found.group(1)), int(found.group(2))] if found else []


async def _wait(condition: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)


def _named(client: Client) -> bool:
    return len(client.frames) >= 20 and any(
        str(e["name"]).replace("-", " ").casefold() == "lin manuel miranda" for e in client.events
    )


async def _scrape(url: str) -> Samples:
    """Every sample of ``url``: (name, labels) -> value."""
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        text = await r.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _stage_count(samples: Samples, stage: str) -> float:
    return samples.get(("facestream_stage_seconds_count", (("stage", stage),)), 0.0)


async def _worker_of(url: str, cookie: str) -> tuple[int, str]:
    """A fresh connection (so the kernel may pick either worker): status, worker pid."""
    async with aiohttp.ClientSession(cookies={COOKIE_NAME: cookie}) as fresh, fresh.get(
        url + "/api/config"
    ) as r:
        return r.status, r.headers["X-Facestream-Worker"]


async def test_two_workers_serve_phones_survive_a_kill_and_stop_on_sigterm(
    shared_dir: Path, shared_file: object, tmp_path: Path
) -> None:
    # Lin facing the camera, looped: a loaded machine may take a while to name him
    frames = clip_frames(shared_file(CLIP), LIN_FACING)  # type: ignore[operator]
    settings = server_settings(shared_dir, tmp_path / "state", tmp_path / "cache")
    build_people_bundle(settings, shared_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "facestream", "serve", "--workers", "2", "--max-sessions", "8",
        "--http", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN,
        "--state-dir", str(settings.state_dir), "--cache-dir", str(settings.cache_dir),
        "--models-dir", str(shared_dir / "models"), "--metrics-port", str(free_port()),
    ]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    clients: list[Client] = []
    try:
        await _wait(lambda: _pids(log.read_text()), 120, "two workers listening", log)
        pids = _pids(log.read_text())
        port = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        assert port, log.read_text()
        metrics_url = re.search(r"metrics: (http://\S+)", log.read_text())
        assert metrics_url, log.read_text()
        server = LiveServer(f"http://127.0.0.1:{port.group(1)}", web.Application(), None)

        # a phone in each worker: the kernel hashes each connection to one, so offer
        # until both have one, hanging up on phones that land where one is already
        tried = []
        for _ in range(40):
            client = await connect(server, FramesTrack(frames))
            tried.append(client.worker)
            if client.worker in {c.worker for c in clients}:
                # hung up once connected, its worker hears DTLS close at once (before
                # that, only its connect timeout would release it)
                await asyncio.wait_for(client.channel_open.wait(), 30)
                await client.close()
            else:
                clients.append(client)
            if len(clients) == len(pids):
                break
        workers = [c.worker for c in clients]
        assert set(workers) == {str(p) for p in pids}, tried
        for client in clients:
            assert await client.wait_for(lambda c=client: _named(c), timeout=60), (
                client.worker, len(client.frames), client.events[:3])

        active = ("facestream_active_sessions", ())
        deadline = time.monotonic() + 15  # the phones hung up on are released meanwhile
        while (before := await _scrape(metrics_url.group(1)))[active] != len(clients):
            assert time.monotonic() < deadline, before[active]  # both workers' sessions
            await asyncio.sleep(0.2)
        assert before[("facestream_bundle_version", ())] == 1
        assert before[("facestream_asyncio_tasks", ())] > 0  # both workers' event loops
        assert 0 < before[("facestream_bundle_created_timestamp_seconds", ())] <= time.time()
        assert before[("facestream_faces_embedded_total", ())] > 0
        assert before[("facestream_recognition_batch_faces_count", ())] > 0
        # the trainer's figures are the trainer's port's (here: every worker's trainer
        # gauges at 0 read as "no trainer active")
        assert not [name for name, _ in before if name.startswith("facestream_trainer_")]
        for stage in ("convert_in", "detect", "recognize", "annotate", "convert_out", "total"):
            assert _stage_count(before, stage) > 0, stage

        # a second server on this port (from another state folder) or on this state
        # folder (on another port) is refused, and leaves this one's figures alone
        options = ["--http", "--host", "127.0.0.1", "--token", TOKEN, "--cache-dir",
                   str(settings.cache_dir), "--models-dir", str(shared_dir / "models")]
        rivals = [
            ["--workers", "2", "--port", port.group(1), "--state-dir", str(tmp_path / "other")],
            ["--port", "0", "--state-dir", str(settings.state_dir),
             "--metrics-port", str(free_port())],
        ]
        refusals = [
            rf"cannot listen on 127\.0\.0\.1:{port.group(1)}: address already in use",
            rf"another facestream serve \(process {process.pid}\) runs on the state folder",
        ]
        for rival, refusal in zip(rivals, refusals, strict=True):
            done = subprocess.run(
                [sys.executable, "-m", "facestream", "serve", *options, *rival], env=env,
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
            )
            assert done.returncode == 2, done.stdout + done.stderr
            assert re.search(refusal, done.stderr, re.IGNORECASE), done.stderr
        await asyncio.sleep(2)
        after = await _scrape(metrics_url.group(1))
        frames_in = ("facestream_frames_total", (("direction", "in"),))
        frames_out = ("facestream_frames_total", (("direction", "out"),))
        # two seconds of 15 fps from each phone: well over one frame each
        assert after[frames_out] - before[frames_out] > 2 * len(clients), (before, after)
        assert after[frames_in] >= after[frames_out] > 0
        assert _stage_count(after, "detect") > _stage_count(before, "detect")

        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/login", data={"token": TOKEN},
                                 allow_redirects=False) as r:
                assert r.status == 303
                cookie = r.cookies[COOKIE_NAME].value
            seen = {await _worker_of(server.url, cookie) for _ in range(12)}
            assert {worker for _, worker in seen} == {str(p) for p in pids}, seen
            assert {status for status, _ in seen} == {200}  # signed in on both
            async with aiohttp.ClientSession(cookies={COOKIE_NAME: cookie}) as signed, \
                    signed.post(server.url + "/logout", allow_redirects=False) as r:
                assert r.status == 303
            seen = {await _worker_of(server.url, cookie) for _ in range(12)}
            assert {status for status, _ in seen} == {401}, seen  # signed out on both

        for client in clients:
            await client.close()
        clients.clear()

        os.kill(pids[0], signal.SIGKILL)
        await _wait(lambda: "died (signal SIGKILL)" in log.read_text(), 30, "the death seen", log)
        await _wait(lambda: len(re.findall(r"worker \d started \(pid", log.read_text())) >= 3,
                    30, "a new worker", log)
        new = int(re.findall(r"worker \d started \(pid (\d+)\)", log.read_text())[-1])
        assert new not in pids
        deadline = time.monotonic() + 90
        while not any(c.worker == str(new) for c in clients):  # until it listens
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            client = await connect(server, FramesTrack(frames))
            clients.append(client)
            if client.worker != str(new):
                # once connected, as above: hung up sooner, each held one of the 8
                # sessions for the 20 s connect timeout, and a run under load ran out
                await asyncio.wait_for(client.channel_open.wait(), 30)
                await client.close()
                clients.pop()
                await asyncio.sleep(0.5)
        assert await clients[-1].wait_for(lambda: _named(clients[-1]), timeout=60)
    finally:
        for client in clients:
            await client.close()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    for pid in [pids[1], new]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _gone(pid: int) -> bool:
    """No such process, or a zombie: a worker orphaned by the test is no child of ours,
    so whoever adopted it (PID 1, which may not reap) decides when it goes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"  # the state, after "(comm)"


async def test_workers_stop_when_the_supervisor_is_killed(
    shared_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "facestream", "serve", "--workers", "2", "--http",
        "--host", "127.0.0.1", "--port", "0", "--token", TOKEN,
        "--state-dir", str(tmp_path / "state"), "--cache-dir", str(tmp_path / "cache"),
        "--models-dir", str(shared_dir / "models"),
    ]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        await _wait(lambda: _pids(log.read_text()), 120, "two workers listening", log)
        pids = _pids(log.read_text())
        port = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        assert port, log.read_text()
        process.kill()  # no SIGTERM to the workers from it: they must see it go
        process.wait(10)
        await _wait(lambda: all(_gone(p) for p in pids), 10, "the workers to stop", log)
    finally:
        process.kill()
        process.wait(10)
        for pid in pids:  # orphans the fix failed to stop: ours to end
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert text.count(f"the supervisor (pid {process.pid}) is gone: stopping") == 2, text
    assert "Traceback" not in text, text
    with socket.socket() as again:  # as the next ``serve`` binds (no SO_REUSEPORT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", int(port.group(1))))
        again.listen()


def test_a_port_in_use_fails_a_start_with_workers_clearly(
    shared_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env.update(PYTHONPATH=str(REPO_ROOT))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "facestream", "serve", "--workers", "2", "--http",
             "--host", "127.0.0.1", "--port", str(port), "--token", TOKEN,
             "--state-dir", str(tmp_path / "state"), "--cache-dir", str(tmp_path / "cache"),
             "--models-dir", str(shared_dir / "models")],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(
        rf"facestream: error: cannot listen on 127\.0\.0\.1:{port}: address already in use",
        done.stderr, re.IGNORECASE,
    ), done.stderr
    assert "Traceback" not in done.stderr


def _facestream(args: list[str], tmp_path: Path, shared_dir: Path,
                **environ: str) -> subprocess.CompletedProcess[str]:
    """``facestream ARGS`` with its own state and the shared models, to its end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env.update(PYTHONPATH=str(REPO_ROOT), **environ)
    return subprocess.run(
        [sys.executable, "-m", "facestream", "--state-dir", str(tmp_path / "state"),
         "--cache-dir", str(tmp_path / "cache"), "--models-dir", str(shared_dir / "models"),
         *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


SERVE = ["serve", "--http", "--host", "127.0.0.1", "--token", TOKEN]


@pytest.mark.parametrize("command", [
    [*SERVE, "--port", "0"], [*SERVE, "--port", "0", "--workers", "2"], ["trainer", "--once"],
])
def test_a_metrics_port_in_use_fails_the_start_clearly(
    command: list[str], shared_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        key = "SERVER" if command[0] == "serve" else "TRAINER"
        done = _facestream(command, tmp_path, shared_dir,
                           **{f"FACESTREAM_{key}_METRICS_PORT": str(port)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.endswith(
        f"facestream: error: cannot listen on 127.0.0.1:{port} for /metrics: "
        "address already in use\n"
    ), done.stderr
    assert "http://127.0.0.1" not in done.stdout  # no address announced that is not served


def test_a_metrics_host_that_does_not_resolve_fails_the_start_clearly(
    shared_dir: Path, tmp_path: Path
) -> None:
    done = _facestream([*SERVE, "--port", "0", "--metrics-port", str(free_port())], tmp_path,
                       shared_dir, FACESTREAM_SERVER_METRICS_HOST="nosuch.invalid")
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(
        r"^facestream: error: cannot listen on nosuch\.invalid:\d+ for /metrics: \S",
        done.stderr, re.MULTILINE,
    ), done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_on_the_server_port_is_refused_before_listening(
    shared_dir: Path, tmp_path: Path
) -> None:
    port = str(free_port())
    done = _facestream([*SERVE, "--port", port, "--metrics-port", port], tmp_path, shared_dir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        f"facestream: error: server.metrics_port = {port} (from command line --metrics-port): "
        "is also server.port on 127.0.0.1; give /metrics a port of its own\n"
    )
