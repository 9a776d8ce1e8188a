"""The benchmark scripts run as a user runs them (short settings): each makes what it
needs on a fresh cache, measures, and prints its table. Their figures are not judged
here (docs/benchmarks.md holds them); that they run and measure real work is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from triton_support import triton_env


def test_every_bench_script_answers_help(repo_root: Path, shared_dir: Path) -> None:
    """Each script imports (the GPU one too, which cannot run here) and says what it
    does, without running."""
    scripts = sorted(p for p in (repo_root / "bench").glob("*.py") if p.name != "machine.py")
    env = {**os.environ, "FACESTREAM_SHARED": str(shared_dir)}
    running = {
        script.name: subprocess.Popen(
            [sys.executable, str(script), "--help"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo_root, env=env,
        )
        for script in scripts
    }
    assert {"gpu.py", "triton_recognition.py", "webrtc.py"} <= set(running)
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, (name, err[-2000:])
        assert out.startswith(f"usage: {name}"), (name, out[:200])


def _bench(repo_root: Path, shared_dir: Path, script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(repo_root / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=repo_root,
        env={**os.environ, "FACESTREAM_SHARED": str(shared_dir)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _table(output: str) -> list[list[str]]:
    """The rows of the markdown table in ``output``, each a list of cells."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.fixture(scope="module")
def triton_ready(repo_root: Path) -> None:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
    if triton_env(repo_root) is None:
        pytest.skip("no Triton server environment: `make triton-env` makes .venv-triton")


def test_webrtc_bench_in_process_and_through_triton(
    repo_root: Path, shared_dir: Path, triton_ready: None
) -> None:
    output = _bench(
        repo_root, shared_dir, "webrtc.py", "--sessions", "1", "--seconds", "3",
        "--warmup", "2", "--recognition", "onnxruntime,triton",
    )
    rows = _table(output)
    assert [(row[0], row[2]) for row in rows] == [("onnxruntime", "1"), ("triton", "1")]
    for row in rows:
        assert float(row[3]) > 0, row  # frames came back, stamped and read
        assert re.fullmatch(r"\d+ ms", row[9]), row  # the server's CPU time was counted


def test_triton_recognition_bench(
    repo_root: Path, shared_dir: Path, triton_ready: None
) -> None:
    output = _bench(
        repo_root, shared_dir, "triton_recognition.py",
        "--batches", "1,8", "--callers", "1,2", "--seconds", "1",
    )
    rows = _table(output)
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (callers, batch, backend)
        for callers in ("1", "2")
        for batch in ("1", "8")
        for backend in ("in-process", "triton")
    ]
    for row in rows:
        assert float(row[4]) > 0, row
    # Triton ran every request of one caller as sent; it ran chips, not nothing
    assert [row[5] for row in rows if row[:3] == ["1", "8", "triton"]] == ["8.0"]
    gap = re.search(r"differ by at most (\S+)", output)
    assert gap is not None and float(gap.group(1)) <= 1e-4, output
