"""Helpers for the live pipeline tests: real settings (YuNet from the shared models,
the dlib ResNet converted into a cache folder), bundles of the shared people, and
frames of the shared clip.

Small real ONNX graphs stand in for a backbone where the test is about plumbing.
`serve_folder` serves files over HTTP, as a web server does (`python -m http.server`
when it answers no Range request).

Not a test module (pytest collects only ``test_*.py``); the test files import it.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

from facecore.bundle import Bundle, BundleManifest, write_bundle
from facecore.config import Settings, load_settings
from facecore.embedder import Embedder, Preprocessing
from facecore.frontend import FrontEnd
from facecore.registry import MODELS, model_cache_dir, model_path, recorded_checksum_matches
from streamer.live.recognizer import ActiveModel

CLIP = "media/short_hamilton_clip.mp4"
CLIP_FRAMES = 275
# the clip's shots (cuts after frames 19, 81 and 210)
WIDE_STAGE = range(0, 20)  # Lin-Manuel Miranda small on stage, Alex Lacamoire at the piano
PROFILE = range(20, 82)  # Lin-Manuel Miranda in profile, close, before a dark audience
STAGE = range(82, 211)  # close-ups of Lin-Manuel Miranda singing: one face
AUDIENCE = range(211, 275)  # Barack and Michelle Obama among the audience


def live_settings(shared_dir: Path, state_dir: Path, cache_dir: Path, **keys: object) -> Settings:
    """Settings that find YuNet in the shared models folder and the dlib ResNet
    converted (once per ``cache_dir``) into ``cache_dir``; ``keys`` are dotted
    settings (``{"tracking.enabled": False}`` as ``**{...}``)."""
    from trainer.dlib.export import prepare_dlib_resnet
    from trainer.dlib.landmarks import prepare_landmark_model

    cli: dict[str, object] = {
        "state_dir": str(state_dir),
        "cache_dir": str(cache_dir),
        "models_dir": str(shared_dir / "models"),
        **keys,
    }
    settings = load_settings(cli, {})
    converted = model_cache_dir(settings) / MODELS["dlib_resnet_v1"].filename
    if not recorded_checksum_matches(converted):  # missing, damaged, or never recorded
        source = model_path(settings, "dlib_resnet_v1_dat", download=False)
        prepare_dlib_resnet(source, model_cache_dir(settings))
    prepare_landmark_model(settings, download=False)
    return settings


def people_folder(shared_dir: Path, into: Path, people: Iterable[str]) -> Path:
    """A folder of the chosen shared people (``"barack_obama"``...), as symlinks."""
    into.mkdir(parents=True)
    for person in people:
        (into / person).symlink_to(shared_dir / "people" / person, target_is_directory=True)
    return into


def publish_people(settings: Settings, folder: Path) -> Bundle:
    """What ``facestream enroll import FOLDER`` then ``facestream trainer --once`` do,
    in this process: the bundle a user enrolling these people gets, with the
    trainer's own threshold."""
    from enrollment.ingest import import_folder
    from enrollment.store import EnrollmentStore
    from facecore.detector import Detector
    from trainer.service import TrainerService

    with EnrollmentStore.from_settings(settings) as store:
        import_folder(store, Detector.from_settings(settings, min_face_px=0), folder, False)
    with TrainerService(settings, progress=False) as trainer:
        bundle = trainer.run_once()
    assert bundle is not None, f"the trainer published nothing for {folder}"
    return bundle


def label_of(bundle: Bundle, surname: str) -> str:
    """The bundle's display name of the person whose name ends with ``surname``."""
    (label,) = [name for name in bundle.manifest.labels if name.endswith(surname)]
    return label


def clip_frames(clip: Path, frames: range) -> list[NDArray[np.uint8]]:
    """The BGR frames ``frames`` of a video file."""
    capture = cv2.VideoCapture(str(clip))
    kept = []
    for index in range(frames.stop):
        ok, frame = capture.read()
        assert ok, f"{clip} has no frame {index}"
        if index in frames:
            kept.append(frame)
    capture.release()
    return kept


SIZE = 8
RGB = Preprocessing(size=(SIZE, SIZE), colour="rgb", mean=(100.0, 100.0, 100.0), scale=0.01)
TEMPLATE = ((2.0, 3.0), (6.0, 3.0), (4.0, 4.5), (2.5, 6.0), (5.5, 6.0))


def mean_colour_backbone(path: Path, size: int = SIZE, name: str = "mean_colour") -> Path:
    """A real ONNX graph standing in for a backbone: chips [N, 3, size, size] -> their
    mean colour [N, 3]; ``name`` changes the file's bytes, not what it computes."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["chips"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embeddings"]),
        ],
        name,
        [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def stand_in_bundle(
    directory: Path,
    backbone: Path,
    *,
    version: int = 1,
    preprocessing: Preprocessing = RGB,
    labels: tuple[str, ...] = ("red", "blue"),
) -> Bundle:
    weights = np.eye(3, dtype=np.float32)[[0, 2, 1]][: len(labels)]  # red, blue, green
    manifest = BundleManifest(
        version=version,
        created="2026-01-01T00:00:00+00:00",
        store_revision=0,
        backbone_name="mean_colour",
        backbone_sha256="",
        preprocessing=preprocessing,
        template=TEMPLATE,
        head_kind="prototypes",
        head_sha256="",
        labels=labels,
        person_ids=("",) * len(labels),
        threshold=0.5,
    )
    return write_bundle(directory, backbone=backbone, weights=weights, manifest=manifest)


def active(bundle: Bundle) -> ActiveModel:
    embedder = Embedder.load(bundle.backbone_path, bundle.manifest.preprocessing, device="cpu")
    return ActiveModel(bundle, embedder, FrontEnd.of_bundle(bundle))


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server`'s handler, answering ``Range: bytes=A-[B]`` with 206
    as web servers do (FFmpeg seeks so to an MP4's index at the end of the file)."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if wanted is None or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start = int(wanted.group(1))
        end = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data[start : end + 1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_folder(folder: Path, *, ranges: bool = True) -> Iterator[str]:
    """Serve ``folder`` over HTTP on loopback, in a thread: yields its base URL.
    ``ranges=False``: as `python -m http.server`, which answers every GET whole."""
    handler = functools.partial(_RangeHandler if ranges else _QuietHandler,
                                directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
