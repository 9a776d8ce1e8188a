"""Recognition on NVIDIA Triton Inference Server: the settings, the model repository
``facestream models triton-repo`` writes, and a real tritonserver (tests/triton_support.py)
answering the streamer: tritonclient gRPC -> Triton's dynamic batcher -> the python
backend -> ONNX Runtime. Triton down: the stream keeps its video, faces unknown,
until Triton is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from e2e_support import free_port
from onnx import TensorProto, helper
from pipeline_support import (
    RGB,
    STAGE,
    clip_frames,
    label_of,
    live_settings,
    mean_colour_backbone,
    people_folder,
    publish_people,
)
from triton_support import start_triton, to_python_backend, triton_env

from facecore.alignment import align_faces
from facecore.bundle import Bundle
from facecore.config import Settings, load_settings
from facecore.detector import Detector
from facecore.download import sha256_file
from facecore.embedder import CHIPS, Embedder, Preprocessing
from facecore.errors import ConfigError, InferenceServerError, ModelLoadError
from facecore.registry import MODELS, model_path
from facecore.triton import TritonConnection, TritonEmbedder
from facecore.triton_repo import (
    DEFAULT_MAX_BATCH_SIZE,
    PARAM_BACKBONE_SHA256,
    PARAM_PREPROCESSING,
    preprocessing_text,
    write_triton_repo,
)
from facestream.cli import main
from streamer.live.engine import Engine
from streamer.live.fonts import FontSet

DLIB = "dlib_resnet_v1"
DLIB_PREPROCESSING = Preprocessing.of_model(MODELS[DLIB])
PHOTOS = ("media/obama.jpg", "media/biden.jpg", "media/two_people.jpg", "media/alex-lacamoire.png")


def test_backend_settings(tmp_path: Path) -> None:
    assert load_settings({}, {}).recognition.backend == "onnxruntime"
    config = tmp_path / "facestream.toml"
    config.write_text('[recognition]\nbackend = "triton"\ntriton_url = "gpu-box:8001"\n')
    settings = load_settings(
        {"config": str(config)}, {"FACESTREAM_RECOGNITION_TRITON_TIMEOUT_MS": "250"}
    )
    assert settings.recognition.backend == "triton"
    assert settings.recognition.triton_url == "gpu-box:8001"
    assert settings.recognition.triton_timeout_ms == 250.0
    with pytest.raises(ConfigError, match=r"recognition.backend = 'tensorrt'.*onnxruntime, triton"):
        load_settings({}, {"FACESTREAM_RECOGNITION_BACKEND": "tensorrt"})
    with pytest.raises(ConfigError, match=r"recognition.triton_timeout_ms.*at least 1"):
        load_settings({}, {"FACESTREAM_RECOGNITION_TRITON_TIMEOUT_MS": "0"})


def test_repository_config_comes_from_the_onnx_file(tmp_path: Path) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")
    source = mean_colour_backbone(tmp_path / "mean_colour.onnx")
    config = write_triton_repo(
        tmp_path / "repo", source, name="mean_colour", preprocessing=RGB, max_batch_size=16
    )
    parsed = text_format.Parse(
        (tmp_path / "repo" / "mean_colour" / "config.pbtxt").read_text(),
        model_config_pb2.ModelConfig(),
    )
    # what Triton will run: the graph in the repository, read back by ONNX Runtime
    session = ort.InferenceSession(
        str(tmp_path / "repo" / "mean_colour" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    (given,), (made,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == (CHIPS, "tensor(uint8)", [8, 8, 3])
    assert (made.name, made.type, made.shape[1:]) == ("embeddings", "tensor(float)", [3])
    assert parsed.name == "mean_colour" and parsed.platform == "onnxruntime_onnx"
    assert parsed.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in parsed.input] == [
        (CHIPS, model_config_pb2.TYPE_UINT8, [8, 8, 3])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in parsed.output] == [
        ("embeddings", model_config_pb2.TYPE_FP32, [3])
    ]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == config.max_queue_delay_us
    assert 0 < config.max_queue_delay_us <= 5000  # small: a frame lasts 66 ms
    parameters = {key: value.string_value for key, value in parsed.parameters.items()}
    assert parameters == {
        PARAM_BACKBONE_SHA256: sha256_file(source),
        PARAM_PREPROCESSING: preprocessing_text(RGB),
    }


def test_repository_refuses_a_fixed_batch_dimension(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["chips"], ["embeddings"])],
        "fixed",
        [helper.make_tensor_value_info("chips", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 192])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fixed.onnx")
    with pytest.raises(ModelLoadError, match=r"shape \[1, 8, 8, 3\].*free first \(batch\)"):
        write_triton_repo(tmp_path / "repo", tmp_path / "fixed.onnx", name="f", preprocessing=RGB)


def test_triton_down_is_a_clear_error_at_once() -> None:
    pytest.importorskip("tritonclient.grpc.aio")
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with TritonConnection(url, timeout_s=2.0, retry_s=30.0) as connection:
        embedder = TritonEmbedder(connection, DLIB, RGB, backbone_sha256="0" * 64, dimension=3)
        chips = np.zeros((2, 8, 8, 3), np.uint8)
        start = time.monotonic()
        with pytest.raises(InferenceServerError, match=f"Triton server at {url} is unreachable"):
            embedder.embed(chips)
        # within retry_s it does not even ask, and says when it will
        with pytest.raises(InferenceServerError, match=r"asking again in (29\.\d|30\.0) s"):
            embedder.embed(chips)
        assert time.monotonic() - start < 2.0
    connection.close()  # twice is fine


# --- a real Triton server ------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("triton")
    return live_settings(shared_dir, root / "state", root / "cache")


@pytest.fixture(scope="module")
def triton_url(
    settings: Settings, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A tritonserver serving the dlib ResNet from a repository written by
    ``facestream models triton-repo``."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
    env = triton_env(repo_root)
    if env is None:
        pytest.skip(
            "no Triton server environment: `make triton-env` makes .venv-triton "
            "(nvidia-pytriton needs numpy < 2, so it cannot share .venv), or set "
            "FACESTREAM_TRITON_ENV"
        )
    work = tmp_path_factory.mktemp("tritonserver")
    repository = work / "models"
    status = main(
        [
            "models",
            "triton-repo",
            str(repository),
            "--cache-dir",
            str(settings.cache_dir),
            "--models-dir",
            str(settings.models_dir),
            # a long wait, so that the requests of one test are surely batched together
            "--max-queue-delay-us",
            "50000",
        ]
    )
    assert status == 0
    to_python_backend(repository / DLIB)
    server = start_triton(env, repository, work, (DLIB,))
    yield server.grpc_url
    server.stop()


@pytest.fixture(scope="module")
def chips(settings: Settings, shared_file) -> np.ndarray:
    """Aligned dlib chips of every face in a few shared photos."""
    detector = Detector.from_settings(settings)
    template = np.asarray(MODELS[DLIB].template, np.float32)
    parts = []
    for photo in PHOTOS:
        image = cv2.imread(str(shared_file(photo)))
        faces = detector.detect(image)
        parts.append(align_faces(image, faces.landmarks, template, MODELS[DLIB].input_size))
    found = np.concatenate(parts)
    assert len(found) >= 5
    return found


def _dlib_on(connection: TritonConnection, settings: Settings) -> TritonEmbedder:
    """The dlib ResNet on Triton, as a bundle of it asks for it."""
    backbone = sha256_file(model_path(settings, DLIB))
    return TritonEmbedder(
        connection, DLIB, DLIB_PREPROCESSING, backbone_sha256=backbone, dimension=128
    )


def test_triton_gives_the_embeddings_of_onnx_runtime(
    settings: Settings, triton_url: str, chips: np.ndarray
) -> None:
    local = Embedder.load(model_path(settings, DLIB), DLIB_PREPROCESSING, device="cpu")
    with TritonConnection(triton_url, timeout_s=10.0) as connection:
        remote = _dlib_on(connection, settings)
        np.testing.assert_allclose(remote.embed_raw(chips), local.embed_raw(chips), atol=1e-4)
        np.testing.assert_allclose(remote.embed(chips), local.embed(chips), atol=1e-4)
        assert remote.embed(chips[:0]).shape == (0, 128)


def test_a_batch_past_the_models_max_batch_size_goes_in_parts(
    settings: Settings, triton_url: str, chips: np.ndarray
) -> None:
    many = chips[np.arange(DEFAULT_MAX_BATCH_SIZE + 6) % len(chips)]  # the repository's limit
    local = Embedder.load(model_path(settings, DLIB), DLIB_PREPROCESSING, device="cpu")
    with TritonConnection(triton_url, timeout_s=30.0) as connection:
        remote = _dlib_on(connection, settings)
        np.testing.assert_allclose(remote.embed(many), local.embed(many), atol=1e-4)


def test_triton_batches_requests_of_several_threads(
    settings: Settings, triton_url: str, chips: np.ndarray
) -> None:
    import tritonclient.grpc as grpcclient

    path = model_path(settings, DLIB)
    stats = grpcclient.InferenceServerClient(triton_url)

    def counts() -> tuple[int, int]:
        (model,) = stats.get_inference_statistics(DLIB).model_stats
        return model.inference_count, model.execution_count

    with TritonConnection(triton_url, timeout_s=10.0) as connection:
        remote = _dlib_on(connection, settings)
        remote.embed(chips[:1])  # checks the model config once, before the threads
        before = counts()
        results: dict[int, np.ndarray] = {}
        threads = [
            threading.Thread(target=lambda i=i: results.update({i: remote.embed(chips[i : i + 1])}))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Triton counts a request once its response is out: wait for the four
    deadline = time.monotonic() + 5.0
    while counts()[0] - before[0] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    inferences, executions = (now - then for now, then in zip(counts(), before, strict=True))
    stats.close()
    assert inferences == 4
    assert executions < 4  # Triton ran requests of different threads as one batch
    local = Embedder.load(path, DLIB_PREPROCESSING, device="cpu")
    for i, row in results.items():
        np.testing.assert_allclose(row, local.embed(chips[i : i + 1]), atol=1e-4)


def test_triton_serving_another_network_is_refused(
    settings: Settings, triton_url: str, chips: np.ndarray
) -> None:
    with TritonConnection(triton_url, timeout_s=10.0) as connection:
        other = TritonEmbedder(
            connection, DLIB, DLIB_PREPROCESSING, backbone_sha256="f" * 64, dimension=128
        )
        with pytest.raises(ModelLoadError, match=r"sha256 .* the bundle's backbone is f{64}"):
            other.embed(chips)
        moved = replace(DLIB_PREPROCESSING, mean=(0.0, 0.0, 0.0))
        path = model_path(settings, DLIB)
        other = TritonEmbedder(
            connection, DLIB, moved, backbone_sha256=sha256_file(path), dimension=128
        )
        with pytest.raises(ModelLoadError, match="written for preprocessing"):
            other.embed(chips)


class Proxy:
    """A TCP forwarder on a fixed port that can be shut (nothing listens: Triton is
    down for its clients) and opened again (Triton is back); with ``delay``, each of
    Triton's answers arrives that much later (Triton is slow)."""

    def __init__(self, port: int, target: str, *, delay: float = 0.0) -> None:
        self.port = port
        self.delay = delay
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._pipes:
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pipes |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if source is up_reader:
                        await asyncio.sleep(self.delay)
                    sink.write(data)
                    await sink.drain()
            sink.close()

        # shut() ends the connections; a pipe cancelled in its sleep just stops
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_slow_triton_is_a_timeout(
    settings: Settings, triton_url: str, chips: np.ndarray
) -> None:
    proxy = Proxy(free_port(), triton_url)
    url = f"127.0.0.1:{proxy.port}"

    def embed_while_triton_slows_down() -> None:
        with TritonConnection(url, timeout_s=10.0, retry_s=0.0) as connection:
            embedder = _dlib_on(connection, settings)
            embedder.embed(chips[:1])  # connected, model checked
            proxy.delay, connection.timeout_s = 0.5, 0.2
            start = time.monotonic()
            with pytest.raises(InferenceServerError, match=f"{url} did not answer within 200 ms"):
                embedder.embed(chips[:2])
            assert time.monotonic() - start < 1.0

    await proxy.open()
    try:
        await asyncio.to_thread(embed_while_triton_slows_down)
    finally:
        await proxy.shut()


@pytest.fixture(scope="module")
def bundle(
    settings: Settings, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Bundle:
    folder = people_folder(
        shared_dir, tmp_path_factory.mktemp("people") / "all", ("lin_manuel_miranda", "joe_biden")
    )
    return publish_people(settings, folder)


async def test_stream_keeps_its_video_while_triton_is_down_and_recognizes_when_back(
    settings: Settings,
    triton_url: str,
    bundle: Bundle,
    shared_file,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = Proxy(free_port(), triton_url)
    recognition = replace(
        settings.recognition,
        backend="triton",
        triton_url=f"127.0.0.1:{proxy.port}",
        triton_timeout_ms=2000.0,
        triton_retry_s=0.2,
    )
    frames = clip_frames(shared_file("media/short_hamilton_clip.mp4"), STAGE)[:40]
    miranda = label_of(bundle, "Miranda")
    caplog.set_level(logging.INFO, logger="streamer.live")
    with Engine(
        Detector.from_settings(settings),
        fonts=FontSet(settings.font),
        recognition=recognition,
        bundle=bundle,  # Triton is down: the bundle is kept, not refused
    ) as engine:
        assert engine.bundle_version == bundle.manifest.version
        pipeline = engine.pipeline("stage")
        for frame in frames[:15]:  # Triton down: video, every face unknown
            result = await pipeline.process(frame)
            assert result.frame.shape == frame.shape
            assert result.tracks and all(view.name is None for view in result.tracks)
        failures = [r for r in caplog.records if "faces are unknown until" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in caplog.records]
        assert f"Triton server at 127.0.0.1:{proxy.port} is unreachable" in failures[0].message
        assert engine.recognizer.failed > 0

        await proxy.open()  # Triton is back
        try:
            named = []
            for frame in frames[15:]:
                result = await pipeline.process(frame)
                named += [view.name for view in result.tracks]
                await asyncio.sleep(0.05)  # give the channel its reconnect time
        finally:
            await proxy.shut()
        assert miranda in named, named
        assert any("recognition works again" in r.getMessage() for r in caplog.records)
