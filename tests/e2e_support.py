"""Helpers for runs with real processes: a temporary facestream installation whose
`facestream` commands (the trainer, ``serve --http``) run as subprocesses, and the
steps of enrolling a person over the HTTP API while a stream runs.

Used by tests/test_end_to_end.py and bench/enroll_latency.py. Not a test module
(pytest collects only ``test_*.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import cv2
import numpy as np
from enroll_support import enrollment_settings
from numpy.typing import NDArray

from enrollment.store import EnrollmentStore
from facecore.bundle import MANIFEST_FILE, BundleManifest
from facecore.config import Settings
from facecore.publish import current_bundle_dir

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    """A `facestream` subprocess whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


@dataclass
class Installation:
    """A temporary facestream installation and the processes started on it.

    ``code``: the source tree the `facestream` commands run from (this repository;
    another checkout for before/after measurements)."""

    state_dir: Path
    global_options: list[str]
    env: dict[str, str]
    logs: Path
    code: Path = REPO_ROOT
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def create(cls, shared_dir: Path, root: Path, code: Path = REPO_ROOT) -> Installation:
        """State under ``root/state``, logs under ``root/logs``, YuNet from the shared
        models and the dlib ResNet from the user's cache (converted there if missing)."""
        return cls.of(enrollment_settings(shared_dir, root / "state"), root / "logs", code)

    @classmethod
    def of(cls, settings: Settings, logs: Path, code: Path = REPO_ROOT) -> Installation:
        """The installation on ``settings``' state, cache and models folders, logging
        under ``logs``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(code)
        logs.mkdir(parents=True)
        options = ["--state-dir", str(settings.state_dir), "--cache-dir", str(settings.cache_dir)]
        if settings.models_dir is not None:
            options += ["--models-dir", str(settings.models_dir)]
        return cls(settings.state_dir, options, env, logs, code)

    @property
    def bundles(self) -> Path:
        return self.state_dir / "bundles"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "facestream", *args, *self.global_options]

    def attempt(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``facestream ARGS`` to completion, whatever its exit status."""
        return subprocess.run(
            self.command(*args), env=self.env, cwd=self.code, capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    def run(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``facestream ARGS`` to completion; its output (it must succeed)."""
        done = self.attempt(*args, timeout=timeout)
        assert done.returncode == 0, f"facestream {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """Start ``facestream ARGS``, its output in ``logs/NAME.log``."""
        return self.start_command(name, self.command(*args), env)

    def start_command(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Process:
        """Start any program beside the installation (HAProxy, say), logged the same way."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, env={**self.env, **(env or {})}, cwd=self.code,
                stdout=out, stderr=subprocess.STDOUT,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def serve(self, token: str) -> tuple[Process, str]:
        """Start ``facestream serve --http`` on a free loopback port: (process, URL)."""
        port = free_port()
        process = self.start("serve", "serve", "--http", "--host", "127.0.0.1",
                             "--port", str(port), "--token", token)
        return process, f"http://127.0.0.1:{port}"

    def current_manifest(self) -> BundleManifest | None:
        directory = current_bundle_dir(self.bundles)
        if directory is None:
            return None
        try:
            return BundleManifest.from_json((directory / MANIFEST_FILE).read_text("utf-8"))
        except FileNotFoundError:  # pruned between reading the link and the manifest
            return None

    def stop_all(self) -> None:
        """Kill whatever still runs (newest first)."""
        for process in reversed(self.processes):
            process.stop(signal.SIGKILL if process.popen.poll() is None else signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def served_version(http: aiohttp.ClientSession, url: str) -> int | None:
    """The bundle version the server at ``url`` serves (``/api/config``)."""
    async with http.get(url + "/api/config") as response:
        assert response.status == 200
        version = (await response.json())["bundle_version"]
        return None if version is None else int(version)


async def until(condition: Callable[[], object], timeout: float, what: str,
                *logs: Process) -> None:
    """Wait for ``condition``; on timeout fail with the tail of each process's log."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = "\n".join(f"--- {p.name}:\n{p.output()[-3000:]}" for p in logs)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{detail}")
        await asyncio.sleep(0.05)


def commit_times(state_dir: Path, name: str) -> tuple[float, float]:
    """Unix times of the first and the last commit of a sample of ``name``."""
    with EnrollmentStore(state_dir / "enrollment") as store:
        samples = store.samples(store.find_person(name).id)
    created = sorted(
        dt.datetime.fromisoformat(s.created.replace("Z", "+00:00")).timestamp() for s in samples
    )
    return created[0], created[-1]


async def enroll_over_http(
    http: aiohttp.ClientSession,
    url: str,
    name: str,
    photos: list[tuple[str, bytes]],
) -> None:
    """Create ``name`` and upload ``photos`` (file name, bytes) as the admin page does;
    every photo must be accepted."""
    async with http.post(url + "/api/people", json={"name": name}) as response:
        assert response.status == 201, await response.text()
        person = await response.json()
    form = aiohttp.FormData()
    for filename, data in photos:
        form.add_field("photo", io.BytesIO(data), filename=filename)
    async with http.post(f"{url}/api/people/{person['id']}/samples", data=form) as response:
        upload = await response.json()
        assert response.status == 200 and upload["accepted"] == len(photos), upload


def enrollment_photos(photo: Path, frames: list[NDArray[np.uint8]]) -> list[tuple[str, bytes]]:
    """A person's photo and two stills of the clip, as files to upload."""
    stills = [(f"still-{i}.png", cv2.imencode(".png", frames[i])[1].tobytes()) for i in (10, 30)]
    return [(photo.name, photo.read_bytes()), *stills]
