"""GPU speed of the CUDA path, with the CPU of the same machine beside it. Prints a
markdown table; with ``--json FILE`` also writes the figures.

* recognition: the dlib ResNet ONNX on real face chips, batches of 1, 8, 32 and 128,
  in faces per second, on the CUDA and the CPU provider:
  ``uint8 chips in (now)`` - ``Embedder.embed`` as the recognizer calls it: the chips
  go in as they are and the session does the preprocessing;
  ``float input from numpy (before)`` - the network's float input made on the CPU and
  copied in, as the embedder did before;
  ``on device`` - the chips already on the GPU (I/O binding): the network alone;
* detection: YuNet per frame at 640x360 and 1280x720 on the CUDA provider, on ONNX
  Runtime's CPU provider (one thread, the default) and through OpenCV;
* agreement: the largest difference between CUDA and CPU embeddings and boxes.

    FACESTREAM_SHARED=../shared python bench/gpu.py --recognizer PATH_TO_ONNX
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from machine import face_chips, median_seconds, shared_dir
from numpy.typing import NDArray

from facecore.detector import Detector
from facecore.embedder import CHIPS, Embedder, Preprocessing
from facecore.registry import MODELS
from facecore.sessions import create_session, gpu_present

BATCHES = (1, 8, 32, 128)
REPEATS = 20



def _gpu_name() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown GPU"


def _clip_frames(shared: Path, count: int) -> list[NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(shared / "media" / "short_hamilton_clip.mp4"))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames[::4]


def _float_input(chips: NDArray[np.uint8], preprocessing: Preprocessing) -> NDArray[np.float32]:
    """The network's float input made with numpy on the CPU: the path before the
    preprocessing moved into the session (the baseline)."""
    x = chips[..., ::-1] if preprocessing.colour == "rgb" else chips
    x = (x.astype(np.float32) - np.asarray(preprocessing.mean, np.float32)) * preprocessing.scale
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _run_float(
    session: ort.InferenceSession, chips: NDArray[np.uint8], preprocessing: Preprocessing
) -> object:
    return session.run(None, {session.get_inputs()[0].name: _float_input(chips, preprocessing)})


def _recognition(onnx: Path, pool: NDArray[np.uint8]) -> tuple[list[dict[str, object]], float]:
    preprocessing = Preprocessing.of_model(MODELS["dlib_resnet_v1"])
    embedders = {
        device: Embedder.load(onnx, preprocessing, device=device) for device in ("cuda", "cpu")
    }
    plain = {device: create_session(onnx, device=device) for device in ("cuda", "cpu")}
    rows: list[dict[str, object]] = []
    gpu = embedders["cuda"].session
    for batch in BATCHES:
        chips = pool[np.arange(batch) % len(pool)]
        binding = gpu.io_binding()
        binding.bind_ortvalue_input(CHIPS, ort.OrtValue.ortvalue_from_numpy(chips, "cuda", 0))
        binding.bind_output(gpu.get_outputs()[0].name, "cuda")
        ways: dict[str, Callable[[], object]] = {
            "on device (the network alone)": lambda b=binding: gpu.run_with_iobinding(b)
        }
        for device in ("cuda", "cpu"):
            embedder, session = embedders[device], plain[device]
            ways[f"{device}, uint8 chips in (now)"] = lambda e=embedder, c=chips: e.embed(c)
            ways[f"{device}, float input from numpy (before)"] = partial(
                _run_float, session, chips, preprocessing
            )
        for way, work in ways.items():
            seconds = median_seconds(work, repeats=5 if way.startswith("cpu") else REPEATS)
            rows.append(
                {
                    "what": f"recognition, {way}",
                    "batch": batch,
                    "ms": 1000 * seconds,
                    "faces_per_s": batch / seconds,
                }
            )
    chips = pool[np.arange(32) % len(pool)]
    gap = np.abs(embedders["cuda"].embed(chips) - embedders["cpu"].embed(chips)).max()
    return rows, float(gap)


def _detection(
    yunet: Path, frames: list[NDArray[np.uint8]]
) -> tuple[list[dict[str, object]], float]:
    rows: list[dict[str, object]] = []
    worst = 0.0
    for width, height in ((640, 360), (1280, 720)):
        scaled = [cv2.resize(f, (width, height)) for f in frames]
        detectors = {
            "onnxruntime CUDA": Detector(yunet, size=width, device="cuda"),
            "onnxruntime CPU, 1 thread": Detector(
                yunet, size=width, backend="onnxruntime", device="cpu"
            ),
            "opencv": Detector(yunet, size=width, backend="opencv"),
        }
        for way, detector in detectors.items():
            work = partial(lambda d, s: [d.detect(f) for f in s], detector, scaled)
            seconds = median_seconds(work, repeats=5)
            rows.append(
                {
                    "what": f"detection {width}x{height}, {way}",
                    "batch": 1,
                    "ms": 1000 * seconds / len(scaled),
                    "faces_per_s": len(scaled) / seconds,
                }
            )
        for frame in scaled:
            on_gpu = detectors["onnxruntime CUDA"].detect(frame)
            on_cpu = detectors["onnxruntime CPU, 1 thread"].detect(frame)
            if len(on_gpu) != len(on_cpu):
                worst = float("inf")
            elif len(on_gpu):
                order_gpu = np.lexsort(on_gpu.xyxy[:, :2].T)
                order_cpu = np.lexsort(on_cpu.xyxy[:, :2].T)
                gap = np.abs(on_gpu.xyxy[order_gpu] - on_cpu.xyxy[order_cpu]).max()
                worst = max(worst, float(gap))
    return rows, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recognizer",
        type=Path,
        required=True,
        help="the dlib ResNet ONNX (`facestream models prepare` makes it)",
    )
    parser.add_argument(
        "--landmarks",
        type=Path,
        required=True,
        help="the dlib 5-point landmark model .npz (`facestream models prepare` makes it)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not (gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers()):
        print("bench/gpu.py needs an NVIDIA GPU and onnxruntime-gpu", file=sys.stderr)
        return 2
    shared = shared_dir()
    yunet = shared / "models" / "face_detection_yunet_2026may.onnx"
    frames = _clip_frames(shared, count=120)
    pool = face_chips(shared, Detector(yunet, device="cpu"), args.landmarks)
    recognition, embedding_gap = _recognition(args.recognizer, pool)
    detection, box_gap = _detection(yunet, frames)
    header = (
        f"{_gpu_name()}; {os.cpu_count()} CPUs; python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, opencv {cv2.__version__}; median of timed runs"
    )
    print(header + "\n\n| what | batch | ms per call | faces (or frames) per s |")
    print("| --- | ---: | ---: | ---: |")
    for row in recognition + detection:
        print(f"| {row['what']} | {row['batch']} | {row['ms']:.2f} | {row['faces_per_s']:.0f} |")
    print(
        f"\nCUDA vs CPU: embeddings differ by at most {embedding_gap:.2e}, "
        f"boxes by at most {box_gap:.3f} px"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "header": header,
                    "rows": recognition + detection,
                    "embedding_gap": embedding_gap,
                    "box_gap": box_gap,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
