"""Recognition through NVIDIA Triton Inference Server against the in-process ONNX
Runtime session, on one machine and the same real face chips: faces per second at
batch 1, 8, 32 and 128, from one caller and from several at once (as the recognizers
of several server workers call one Triton), and the batch sizes Triton really ran.

In-process, each caller has a session of its own, as each server worker has; through
Triton, each has a connection of its own (``TritonConnection``) to the one server.

Without ``--triton-url`` the script starts the tritonserver of the ``nvidia-pytriton``
wheel, as the tests do (tests/triton_support.py; ``make triton-env`` makes its
environment), on the repository ``facestream models triton-repo`` writes. That wheel
has no onnxruntime backend, so the network runs in ONNX Runtime inside Triton's
python backend (on the GPU where the Triton environment has onnxruntime-gpu): what
is measured is Triton's batching, gRPC and the python stub's copies on top of ONNX
Runtime, not Triton's own onnxruntime backend. ``--triton-url`` measures a Triton of
your own that serves that repository instead.

    FACESTREAM_SHARED=../shared .venv/bin/python bench/triton_recognition.py
    .venv/bin/python bench/triton_recognition.py --callers 1,4,8 --triton-url gpu-box:8001
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from machine import cpu_description, face_chips, prepare_models, shared_dir
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from triton_support import TritonServer, start_triton, to_python_backend, triton_env  # noqa: E402

from facecore.config import Settings, load_settings  # noqa: E402
from facecore.detector import Detector  # noqa: E402
from facecore.download import sha256_file  # noqa: E402
from facecore.embedder import Embedder, Preprocessing  # noqa: E402
from facecore.registry import DLIB_LANDMARKS, MODELS, model_path  # noqa: E402
from facecore.sessions import gpu_present  # noqa: E402
from facecore.triton import TritonConnection, TritonEmbedder  # noqa: E402
from facestream.cli import main as facestream  # noqa: E402

MODEL = "dlib_resnet_v1"
PREPROCESSING = Preprocessing.of_model(MODELS[MODEL])


@dataclass(frozen=True)
class Row:
    backend: str
    callers: int
    batch: int
    call_ms: float  # median time of one caller's call
    faces_per_s: float  # all callers together
    triton_batch: float | None  # faces per execution Triton ran (its own statistics)


def prepared(shared: Path) -> Settings:
    """The settings of a user with the shared models, after ``facestream models
    prepare`` (which converts the dlib ResNet and its landmark model once)."""
    settings = load_settings({"models_dir": str(shared / "models")}, {})
    prepare_models(settings)
    return settings


@contextlib.contextmanager
def wheel_triton(settings: Settings, work: Path, max_batch: int) -> Iterator[TritonServer]:
    """The nvidia-pytriton wheel's tritonserver on the repository the user's command
    writes."""
    env = triton_env(REPO)
    if env is None:
        raise SystemExit(
            "no Triton environment: `make triton-env` makes .venv-triton, "
            "or give --triton-url of a Triton serving `facestream models triton-repo`"
        )
    repository = work / "models"
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the table
        written = facestream(
            [
                "models", "triton-repo", str(repository), "--max-batch-size", str(max_batch),
                "--cache-dir", str(settings.cache_dir), "--models-dir", str(settings.models_dir),
            ]
        )
    if written != 0:
        raise SystemExit("facestream models triton-repo failed")
    to_python_backend(repository / MODEL)
    server = start_triton(env, repository, work, (MODEL,))
    try:
        yield server
    finally:
        server.stop()


def executions(url: str) -> tuple[int, int]:
    """Triton's count of faces run and of executions (batches) run for the model."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        (stats,) = client.get_inference_statistics(MODEL).model_stats
        return stats.inference_count, stats.execution_count
    finally:
        client.close()


def measure(
    embedders: list[Callable[[NDArray[np.uint8]], object]],
    chips: NDArray[np.uint8],
    seconds: float,
) -> tuple[float, float]:
    """Each embedder called in a loop on ``chips`` by a thread of its own for
    ``seconds`` (after a warm-up call each): the median call time and faces per second."""
    for embed in embedders:
        embed(chips)
    start = time.perf_counter()
    deadline = start + seconds
    times: list[list[float]] = [[] for _ in embedders]

    def loop(embed: Callable[[NDArray[np.uint8]], object], own: list[float]) -> None:
        while (begun := time.perf_counter()) < deadline:
            embed(chips)
            own.append(time.perf_counter() - begun)

    threads = [
        threading.Thread(target=loop, args=(embed, own))
        for embed, own in zip(embedders, times, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    calls = sum(len(own) for own in times)
    return 1000 * statistics.median(t for own in times for t in own), calls * len(chips) / elapsed


def run(args: argparse.Namespace, settings: Settings, url: str) -> tuple[list[Row], float, str]:
    """The rows, the largest difference between Triton's and the in-process
    embeddings, and the in-process session's provider."""
    backbone = model_path(settings, MODEL)
    landmarks = model_path(settings, DLIB_LANDMARKS)
    pool = face_chips(args.shared, Detector.from_settings(settings), landmarks)
    rows: list[Row] = []
    for callers in args.callers:
        sessions = [Embedder.load(backbone, PREPROCESSING) for _ in range(callers)]
        connections = [TritonConnection(url, timeout_s=60.0) for _ in range(callers)]
        remote = [
            TritonEmbedder(
                c, MODEL, PREPROCESSING, backbone_sha256=sha256_file(backbone), dimension=128
            )
            for c in connections
        ]
        try:
            for batch in args.batches:
                chips = pool[np.arange(batch) % len(pool)]
                call_ms, rate = measure([s.embed for s in sessions], chips, args.seconds)
                rows.append(Row("in-process", callers, batch, call_ms, rate, None))
                before = executions(url)
                call_ms, rate = measure([e.embed for e in remote], chips, args.seconds)
                after = executions(url)
                ran = (after[0] - before[0]) / max(1, after[1] - before[1])
                rows.append(Row("triton", callers, batch, call_ms, rate, ran))
                print(f"callers={callers} batch={batch}: done", file=sys.stderr, flush=True)
        finally:
            for connection in connections:
                connection.close()
    chips = pool[np.arange(32) % len(pool)]
    with TritonConnection(url, timeout_s=60.0) as connection:
        served = TritonEmbedder(
            connection, MODEL, PREPROCESSING, backbone_sha256=sha256_file(backbone), dimension=128
        )
        local = Embedder.load(backbone, PREPROCESSING)
        gap = float(np.abs(served.embed(chips) - local.embed(chips)).max())
    return rows, gap, local.session.get_providers()[0]


def table(rows: list[Row]) -> str:
    lines = [
        "| callers | batch | recognition | ms per call | faces per s | faces per Triton run |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        ran = "-" if r.triton_batch is None else f"{r.triton_batch:.1f}"
        lines.append(
            f"| {r.callers} | {r.batch} | {r.backend} | {r.call_ms:.1f} | "
            f"{r.faces_per_s:.0f} | {ran} |"
        )
    return "\n".join(lines)


def main() -> None:
    numbers = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=numbers, default=[1, 8, 32, 128],
                        help="comma-separated batch sizes (default 1,8,32,128)")
    parser.add_argument("--callers", type=numbers, default=[1, 4],
                        help="comma-separated counts of callers at once (default 1,4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per row")
    parser.add_argument("--triton-url", help="a running Triton (host:port, gRPC) serving "
                        "`facestream models triton-repo`; default: start the wheel's")
    parser.add_argument("--shared", type=Path, default=shared_dir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facestream-bench-") as tmp:
        settings = prepared(args.shared)
        with contextlib.ExitStack() as stack:
            url = args.triton_url or stack.enter_context(
                wheel_triton(settings, Path(tmp), max(args.batches))
            ).grpc_url
            rows, gap, provider = run(args, settings, url)
    device = "GPU" if gpu_present() else "no GPU"
    print(f"\n{cpu_description()}, {device}; in-process: onnxruntime {ort.__version__} "
          f"({provider}); Triton: "
          f"{args.triton_url or 'the nvidia-pytriton wheel, python backend'}; "
          f"{args.seconds:g} s per row\n")
    print(table(rows))
    print(f"\nTriton vs in-process: embeddings differ by at most {gap:.1e}")


if __name__ == "__main__":
    main()
