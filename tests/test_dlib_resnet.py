"""dlib's face-recognition ResNet read without dlib, rebuilt in torch and exported to ONNX.

The reference is dlib itself (``dlib-bin``): on real 150x150 face chips that dlib cuts
from the shared photos and video, ``compute_face_descriptor(chip)`` and the ONNX model
must agree to 1e-4 per component.  (Measured: about 4e-7, i.e. float32 rounding from a
different summation order in the convolutions; descriptors have norms of about 1.4 and
the same-person distance threshold is 0.6, so 1e-4 is far below anything that matters.)
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray

from facecore.download import sha256_file
from trainer.dlib import export as onnx_export
from trainer.dlib.export import export_onnx, prepare_dlib_resnet
from trainer.dlib.format import (
    Affine,
    AvgPool,
    Conv,
    DlibReader,
    Fc,
    MaxPool,
    TagOrSkip,
    parse_dat,
    read_dat,
)
from trainer.dlib.resnet import DlibResNet
from trainer.errors import DlibFormatError, ExportCheckError

TOLERANCE = 1e-4
VIDEO_FRAMES = 20


def _face_models_dir() -> Path:
    """face_recognition_models' data folder, found without importing the package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    return _face_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def model(dat_path: Path) -> DlibResNet:
    return DlibResNet.from_dat(dat_path)


@pytest.fixture(scope="module")
def onnx_path(dat_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_dlib_resnet(dat_path, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def session(onnx_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: NDArray[np.float32]) -> NDArray[np.float32]:
    (out,) = session.run(["embeddings"], {"chips": x})
    return out


@pytest.fixture(scope="module")
def dlib_reference(shared_dir: Path, shared_file: Callable[[str], Path]
                   ) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """dlib's own 150x150 chips of every face in the photos and in 20 video frames,
    with dlib's descriptors of them: ``([N,150,150,3] uint8 RGB, [N,128])``."""
    dlib = pytest.importorskip("dlib")
    cv2 = pytest.importorskip("cv2")
    models = _face_models_dir()
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    facerec = dlib.face_recognition_model_v1(
        str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    images = [dlib.load_rgb_image(str(shared_file(f"media/{p.name}")))
              for p in sorted((shared_dir / "media").iterdir()) if p.suffix in (".jpg", ".png")]
    video = cv2.VideoCapture(str(shared_file("media/short_hamilton_clip.mp4")))
    total = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, VIDEO_FRAMES).astype(int).tolist())
    for index in range(total):
        ok, frame = video.read()
        if not ok:
            break
        if index in wanted:
            images.append(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB
    video.release()

    chips = [dlib.get_face_chip(img, landmarks(img, box), size=150, padding=0.25)
             for img in images for box in detector(img, 1)]
    descriptors = [np.array(facerec.compute_face_descriptor(chip)) for chip in chips]
    return np.stack(chips), np.stack(descriptors)


# --- the file format ---------------------------------------------------------------


def test_reader_primitives() -> None:
    r = DlibReader(bytes.fromhex("0100" "81 11" "02 80 12" "01 0d") + b"loss_metric_2"
                   + bytes.fromhex("03 0ad7a3 81 1c" "01 10 81 04" "01 00 01 0b") + b"10")
    assert (r.read_int(), r.read_int(), r.read_uint()) == (0, -17, 0x1280)
    assert r.read_string() == "loss_metric_2"
    assert np.float32(r.read_float()) == np.float32(0.04)
    assert (r.read_float(), r.read_float()) == (1.0, 0.0)
    assert (r.read_bool(), r.read_bool()) == (True, False)
    with pytest.raises(DlibFormatError, match=r"truncated file.*byte offset 38"):
        r.read_int()


def test_parses_the_recognition_network(dat_path: Path) -> None:
    net = read_dat(dat_path)
    assert net.input.rows == net.input.cols == 150
    np.testing.assert_allclose(net.input.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    assert np.float32(net.loss.distance_threshold) == np.float32(0.6)
    convs = [layer for layer in net.layers if isinstance(layer, Conv)]
    assert len(convs) == 29
    assert convs[0].weight.shape == (32, 3, 7, 7)
    assert (convs[0].stride, convs[0].padding) == ((2, 2), (0, 0))
    # dlib's default: no padding on strided convs, size // 2 otherwise.
    assert all(c.padding == ((0, 0) if c.stride != (1, 1) else (1, 1)) for c in convs[1:])
    assert sum(isinstance(layer, Affine) for layer in net.layers) == 29  # bn already folded
    assert sum(isinstance(layer, TagOrSkip) for layer in net.layers) == 14 + 2 * 4
    assert [layer.window for layer in net.layers if isinstance(layer, MaxPool | AvgPool)] \
        == [(3, 3), (2, 2), (2, 2), (2, 2), (2, 2), (0, 0)]
    fc = net.layers[-1]
    assert isinstance(fc, Fc) and fc.weight.shape == (128, 256) and fc.bias is None


def test_truncated_file_raises(dat_path: Path, tmp_path: Path) -> None:
    data = dat_path.read_bytes()
    half = tmp_path / "half.dat"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="byte offset"):
        read_dat(half)


def test_wrong_file_raises() -> None:
    with pytest.raises(DlibFormatError, match="byte offset 0"):
        parse_dat(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(DlibFormatError, match="unsupported loss layer 'loss_multiclass_log_'"):
        parse_dat(bytes.fromhex("0101 0114") + b"loss_multiclass_log_")


# --- parity -----------------------------------------------------------------------


def test_onnx_matches_dlib_on_real_face_chips(
        dlib_reference: tuple[NDArray[np.uint8], NDArray[np.float64]],
        model: DlibResNet, session: ort.InferenceSession) -> None:
    chips, expected = dlib_reference
    assert len(chips) >= 15, "too few faces found to make the comparison meaningful"
    actual = _run(session, model.normalise(chips))
    assert actual.shape == expected.shape
    diff = np.abs(actual - expected).max()
    assert diff <= TOLERANCE, f"ONNX vs dlib max abs difference {diff:.3g}"


def test_torch_matches_onnx(model: DlibResNet, session: ort.InferenceSession) -> None:
    x = torch.rand(4, 3, 150, 150, generator=torch.Generator().manual_seed(1)) * 1.1 - 0.5
    with torch.no_grad():
        expected = model(x).numpy()
    diff = np.abs(_run(session, x.numpy()) - expected).max()
    assert diff <= TOLERANCE, f"torch vs ONNX max abs difference {diff:.3g}"


def test_dynamic_batch_axis(session: ort.InferenceSession) -> None:
    rng = np.random.default_rng(2)
    batch = (rng.random((64, 3, 150, 150), dtype=np.float32) * 1.1 - 0.5).astype(np.float32)
    one = _run(session, batch[:1])
    many = _run(session, batch)
    assert one.shape == (1, 128) and many.shape == (64, 128)
    np.testing.assert_allclose(many[:1], one, atol=1e-5)


# --- export and cache -------------------------------------------------------------


def test_metadata_records_the_preprocessing(onnx_path: Path, model: DlibResNet,
                                            dat_path: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    pre = json.loads(meta["preprocessing"])
    assert np.float32(pre["mean"]).tolist() == list(model.input_mean_rgb)  # exact float32
    assert (pre["scale"], pre["colour"], pre["size"]) == (1 / 256, "rgb", [150, 150])
    assert (meta["embedding_dim"], meta["distance_threshold"]) == ("128", "0.6")
    assert meta["source_sha256"] == sha256_file(dat_path)
    assert onnx_path.name == f"dlib_resnet_v1-{meta['source_sha256'][:16]}.onnx"


def test_prepare_returns_the_cached_file(dat_path: Path, onnx_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object, **kwargs: object) -> float:
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    assert prepare_dlib_resnet(dat_path, onnx_path.parent) == onnx_path


def test_failed_check_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    good = tmp_path / "tiny.onnx"
    assert export_onnx(tiny, good, input_size=8, metadata={"k": "v"}) <= TOLERANCE
    assert {p.key: p.value for p in onnx.load(str(good)).metadata_props} == {"k": "v"}

    monkeypatch.setattr(onnx_export, "_max_abs_diff_vs_torch", lambda *args: 1.0)
    bad = tmp_path / "bad.onnx"
    with pytest.raises(ExportCheckError, match="differs from torch"):
        export_onnx(tiny, bad, input_size=8, metadata={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]
