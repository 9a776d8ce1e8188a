"""Embedder preprocessing and batching, the bundle format and the publish pointer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from facecore.bundle import Bundle, BundleManifest, Gallery, load_bundle, write_bundle
from facecore.download import sha256_file
from facecore.embedder import Embedder, Preprocessing
from facecore.errors import BundleError, ModelLoadError
from facecore.publish import current_bundle_dir, publish, versions
from facecore.sessions import create_session


def _mean_colour_model(path: Path, size: int = 8) -> Path:
    """A tiny real ONNX graph: [N,3,size,size] -> per-channel means [N,3].

    It shows exactly what the embedder fed the network (colour order, mean, scale)."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["chips"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embeddings"]),
        ],
        "mean_colour",
        [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _mean_colour_model(tmp_path / "mean.onnx")


RGB = Preprocessing(size=(8, 8), colour="rgb", mean=(10.0, 20.0, 30.0), scale=0.5)


def test_preprocessing_reaches_the_network(model: Path) -> None:
    embedder = Embedder.load(model, RGB, device="cpu")
    chips = np.zeros((2, 8, 8, 3), np.uint8)
    chips[..., 0], chips[..., 1], chips[..., 2] = 100, 50, 0  # B, G, R
    raw = embedder.embed_raw(chips)
    # rgb order: R=0, G=50, B=100, minus (10, 20, 30), times 0.5
    assert np.allclose(raw, [[-5.0, 15.0, 35.0]] * 2)
    unit = embedder.embed(chips)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    bgr = Embedder.load(model, replace(RGB, colour="bgr"), device="cpu")
    assert np.allclose(bgr.embed_raw(chips), [[45.0, 15.0, -15.0]] * 2)


@pytest.mark.parametrize("n", [0, 1, 7, 64, 100])
def test_any_batch_size(model: Path, n: int) -> None:
    embedder = Embedder.load(model, RGB, device="cpu")
    chips = np.random.default_rng(n).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    out = embedder.embed(chips)
    assert out.shape == (n, 3) and out.dtype == np.float32


def test_wrong_chips_and_wrong_record(model: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"\[N, 3, 112, 112\]"):
        Embedder.load(model, replace(RGB, size=(112, 112)))
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 3\] uint8"):
        Embedder.load(model, RGB).embed(np.zeros((1, 9, 8, 3), np.uint8))
    with pytest.raises(ModelLoadError, match=r"made by Embedder\.load"):
        Embedder(create_session(model, device="cpu"), RGB)  # a float-input session


def test_truncated_model_is_refused(model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model.read_bytes()[:40])
    with pytest.raises(ModelLoadError, match=r"cut\.onnx"):
        create_session(cut)
    with pytest.raises(ModelLoadError, match=r"cut\.onnx"):
        Embedder.load(cut, RGB)


def test_cuda_asked_without_a_gpu_is_a_clear_error(model: Path) -> None:
    session = create_session(model, device="auto")
    if session.get_providers()[0] == "CUDAExecutionProvider":
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="cuda"):
        create_session(model, device="cuda")


def test_gallery_match() -> None:
    weights = np.eye(3, dtype=np.float32)
    gallery = Gallery(("a", "b", "c"), weights, threshold=0.8)
    emb = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.5], [0, 0, 1]], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index, score = gallery.match(emb)
    assert list(index) == [0, -1, 2]
    assert score[2] == pytest.approx(1.0)
    empty_index, _ = Gallery.empty(3).match(emb)
    assert list(empty_index) == [-1, -1, -1]


def _manifest(version: int = 1) -> BundleManifest:
    return BundleManifest(
        version=version,
        created="2026-11-25T00:00:00+00:00",
        store_revision=4,
        backbone_name="mean",
        backbone_sha256="",
        preprocessing=RGB,
        template=((1.0, 1.0),) * 5,
        head_kind="prototypes",
        head_sha256="",
        labels=("Zoë", "王小明"),
        person_ids=("p1", "p2"),
        threshold=0.5,
        metrics={"acc": 1.0},
    )


def _weights() -> np.ndarray:
    return np.array([[1, 0, 0], [0, 1, 0]], np.float32)


def test_bundle_round_trip_and_tamper(model: Path, tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", backbone=model, weights=_weights(), manifest=_manifest())
    again = load_bundle(tmp_path / "b")
    assert again.manifest == bundle.manifest
    assert again.manifest.labels == ("Zoë", "王小明")
    assert oct((tmp_path / "b").stat().st_mode & 0o777) == "0o700"
    for name in ("head.npz", "manifest.json"):  # whatever the umask
        assert oct((tmp_path / "b" / name).stat().st_mode & 0o777) == "0o600", name
    # a field that a newer facestream adds within the format is ignored, not refused
    manifest = tmp_path / "b" / "manifest.json"
    newer = json.loads(manifest.read_text(encoding="utf-8")) | {"added_later": [1, 2]}
    assert BundleManifest.from_json(json.dumps(newer)) == bundle.manifest
    # A bundle whose head no longer matches its manifest is refused, never half-loaded.
    np.savez(tmp_path / "b" / "head.npz", weights=np.ones((2, 3), np.float32))
    with pytest.raises(BundleError, match=r"head\.npz has sha256"):
        load_bundle(tmp_path / "b")


def test_bundle_with_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest\.json"):
        load_bundle(tmp_path / "empty")


def test_publish_keeps_versions_and_switches_pointer(model: Path, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    assert current_bundle_dir(bundles) is None

    def build(directory: Path, version: int):
        return write_bundle(
            directory, backbone=model, weights=_weights(), manifest=_manifest(version)
        )

    for _ in range(4):
        published = publish(bundles, build, keep=2)
    assert versions(bundles) == [3, 4]
    assert current_bundle_dir(bundles) == bundles / "v000004"
    assert published.manifest.version == 4
    assert published.path == bundles / "v000004"  # where it was renamed to
    assert load_bundle(published.path).manifest == published.manifest


def test_a_known_backbone_is_linked_not_copied(model: Path, tmp_path: Path) -> None:
    digest = sha256_file(model)
    linked = write_bundle(tmp_path / "a", backbone=model, weights=_weights(),
                          manifest=_manifest(), backbone_sha256=digest)
    assert os.stat(linked.backbone_path).st_ino == os.stat(model).st_ino
    assert linked.manifest.backbone_sha256 == digest
    assert load_bundle(linked.path).manifest == linked.manifest
    # with no hash given the file is copied, and hashed as it is copied
    copied = write_bundle(tmp_path / "b", backbone=model, weights=_weights(),
                          manifest=_manifest())
    assert os.stat(copied.backbone_path).st_ino != os.stat(model).st_ino
    assert copied.manifest.backbone_sha256 == digest


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than ``tmp_path`` (tmpfs), where no link reaches."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no /dev/shm on another file system than the temporary folder")
    with tempfile.TemporaryDirectory(dir=shm) as folder:
        yield Path(folder)


def test_a_backbone_on_another_file_system_is_linked_from_the_previous_bundle(
    model: Path, tmp_path: Path, other_file_system: Path
) -> None:
    source = other_file_system / "mean.onnx"  # a model cache on another mount
    shutil.copyfile(model, source)
    digest = sha256_file(source)

    def write(name: str, **options: object) -> Bundle:
        return write_bundle(tmp_path / name, backbone=source, weights=_weights(),
                            manifest=_manifest(), backbone_sha256=digest, **options)

    first = write("v1")  # no link reaches the source: a checked copy
    assert os.stat(first.backbone_path).st_nlink == 1
    second = write("v2", link_from=first.path)
    assert os.stat(second.backbone_path).st_ino == os.stat(first.backbone_path).st_ino
    # a previous bundle with another backbone is not linked from
    other = write_bundle(tmp_path / "other", backbone=_mean_colour_model(tmp_path / "m.onnx", 4),
                         weights=_weights(), manifest=_manifest())
    third = write("v3", link_from=other.path)
    assert os.stat(third.backbone_path).st_ino != os.stat(other.backbone_path).st_ino
    assert load_bundle(third.path).manifest.backbone_sha256 == digest
    # a model file that changed since it was hashed is not published
    source.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="changed since it was loaded"):
        write("v4")
    # a linked backbone is still checked when it loads: both links are refused
    first.backbone_path.write_bytes(b"corrupt")
    for bundle in (first, second):
        with pytest.raises(BundleError, match=r"backbone\.onnx has sha256"):
            load_bundle(bundle.path)


def test_crash_during_publish_keeps_the_old_bundle(model: Path, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    publish(
        bundles,
        lambda d, v: write_bundle(d, backbone=model, weights=_weights(), manifest=_manifest(v)),
    )
    # A real process dies (os._exit) half way through writing the next bundle.
    script = f"""
import os, sys
from pathlib import Path
from facecore.publish import publish
def build(directory, version):
    directory.mkdir()
    (directory / "backbone.onnx").write_bytes(b"half")
    os._exit(9)
publish(Path({str(bundles)!r}), build)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    assert result.returncode == 9
    assert current_bundle_dir(bundles) == bundles / "v000001"
    assert load_bundle(bundles / "current").manifest.version == 1
    leftovers = [p.name for p in bundles.iterdir() if p.name.startswith(".staging")]
    assert leftovers, "the crashed build should have left its staging directory"
    publish(
        bundles,
        lambda d, v: write_bundle(d, backbone=model, weights=_weights(), manifest=_manifest(v)),
    )
    assert sorted(os.listdir(bundles)) == ["current", "v000001", "v000002"]
