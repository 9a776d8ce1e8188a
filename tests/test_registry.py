from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import importlib.util
import os
import socket
import threading
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from facecore import registry
from facecore.config import Recognizer, Settings
from facecore.errors import ChecksumError, ConfigError, ModelError, ModelNotFoundError
from facecore.registry import (
    MODELS,
    ModelSpec,
    model_cache_dir,
    model_path,
    record_checksum,
    resolve_model,
)
from facestream.cli import main

PAYLOAD = b"not really a model, but pinned like one\n" * 1000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder and the http://127.0.0.1:PORT URL that serves it."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http", daemon=True
    )
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.onnx"


def make_spec(*urls: str, payload: bytes = PAYLOAD, size: int | None = -1) -> ModelSpec:
    return ModelSpec(
        name="test_model",
        version="1",
        kind="detector",
        filename="model.onnx",
        urls=urls,
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload) if size == -1 else size,
        licence="test",
    )


def test_registry_entries_are_consistent() -> None:
    assert {"yunet_2026may", "dlib_resnet_v1_dat", "dlib_resnet_v1", "sface_2021dec"} <= set(MODELS)
    with pytest.raises(TypeError):
        MODELS["x"] = MODELS["yunet_2026may"]  # type: ignore[index]
    for name, spec in MODELS.items():
        assert spec.name == name
        if spec.derived_from is not None:
            source = MODELS[spec.derived_from]
            assert source.sha256 is not None
            suffix = {"recognizer": ".onnx", "landmarks": ".npz"}[spec.kind]
            assert spec.filename == f"{name}-{source.sha256[:16]}{suffix}"
        if spec.kind == "recognizer":
            assert spec.template is not None and len(spec.template) == 5
            # the eyes are about level (dlib's chip tilts them by 1 degree, see
            # docs/alignment.md) and the subject's right eye is on the image's left
            (rx, ry), (lx, ly) = spec.template[0], spec.template[1]
            assert rx < lx and ry == pytest.approx(ly, abs=1.5)
    dlib = MODELS["dlib_resnet_v1"]
    assert (dlib.input_size, dlib.colour, dlib.embedding_size) == ((150, 150), "rgb", 128)
    # dlib's ResNet is fed dlib's own chips; SFace keeps its template
    assert (dlib.landmarks, MODELS["sface_2021dec"].landmarks) == ("dlib_5", "yunet_template")
    assert MODELS["dlib_shape_predictor_5"].derived_from == "dlib_shape_predictor_5_dat"
    assert dlib.scale == pytest.approx(1 / 256)
    sface = MODELS["sface_2021dec"]
    assert (sface.colour, sface.mean, sface.scale) == ("rgb", (0.0, 0.0, 0.0), 1.0)
    # the recognition.model setting takes these names, and only these
    recognizers = [name for name, spec in MODELS.items() if spec.kind == "recognizer"]
    assert list(typing.get_args(Recognizer)) == recognizers


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="sha256"):
        dataclasses.replace(make_spec(), sha256="abc")
    with pytest.raises(ValueError, match="5 points"):
        dataclasses.replace(make_spec(), template=((0.0, 0.0),))


def test_resolution_order_explicit_models_dir_cache(tmp_path: Path) -> None:
    spec = make_spec()
    dirs = {name: tmp_path / name for name in ("explicit", "models", "cache")}
    for folder in dirs.values():
        folder.mkdir()
        (folder / spec.filename).write_bytes(PAYLOAD)
    explicit = dirs["explicit"] / spec.filename

    def resolve(explicit: Path | None, models_dir: Path | None) -> Path:
        return resolve_model(
            spec,
            explicit=explicit,
            models_dir=models_dir,
            cache_dir=dirs["cache"],
            download=False,
        )

    assert resolve(explicit, dirs["models"]) == explicit
    assert resolve(None, dirs["models"]) == dirs["models"] / spec.filename
    assert resolve(None, None) == dirs["cache"] / spec.filename
    (dirs["models"] / spec.filename).unlink()
    assert resolve(None, dirs["models"]) == dirs["cache"] / spec.filename


def test_missing_explicit_path_is_not_replaced_by_another_copy(tmp_path: Path) -> None:
    spec = make_spec()
    (tmp_path / spec.filename).write_bytes(PAYLOAD)
    with pytest.raises(ModelNotFoundError, match=r"nowhere\.onnx"):
        resolve_model(spec, explicit=tmp_path / "nowhere.onnx", models_dir=None, cache_dir=tmp_path)


def test_download_from_local_server(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    (root / "model.onnx").write_bytes(PAYLOAD)
    cache = tmp_path / "cache" / "models"
    spec = make_spec(closed_port_url(), f"{base}/missing.onnx", f"{base}/model.onnx")
    path = resolve_model(spec, explicit=None, models_dir=None, cache_dir=cache, progress=False)
    assert path == cache / spec.filename
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == [spec.filename]  # no temp file left
    (root / "model.onnx").unlink()  # now served from the cache, no network needed
    assert resolve_model(spec, explicit=None, models_dir=None, cache_dir=cache) == path


def test_download_shows_progress_on_stderr(
    served: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, base = served
    (root / "model.onnx").write_bytes(PAYLOAD)
    resolve_model(
        make_spec(f"{base}/model.onnx"), explicit=None, models_dir=None, cache_dir=tmp_path
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "model.onnx" in captured.err


def test_download_with_unpinned_size(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    (root / "model.onnx").write_bytes(PAYLOAD)
    spec = make_spec(f"{base}/model.onnx", size=None)
    path = resolve_model(spec, explicit=None, models_dir=None, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "served_bytes",
    [b"something else entirely", PAYLOAD[:-1], PAYLOAD + b"x", PAYLOAD[:-1] + b"?"],
    ids=["different", "truncated", "too-long", "same-size-altered"],
)
def test_wrong_download_is_rejected_and_not_kept(
    served: tuple[Path, str], tmp_path: Path, served_bytes: bytes
) -> None:
    root, base = served
    (root / "model.onnx").write_bytes(served_bytes)
    cache = tmp_path / "cache"
    spec = make_spec(f"{base}/model.onnx")
    with pytest.raises(ChecksumError) as caught:
        resolve_model(spec, explicit=None, models_dir=None, cache_dir=cache, progress=False)
    assert caught.value.expected_sha256 == spec.sha256
    assert caught.value.expected_size == len(PAYLOAD)
    assert spec.sha256 in str(caught.value)
    assert list(cache.iterdir()) == []


def test_wrong_first_url_falls_back_to_the_next(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    (root / "bad.onnx").write_bytes(b"bad")
    (root / "good.onnx").write_bytes(PAYLOAD)
    spec = make_spec(f"{base}/bad.onnx", f"{base}/good.onnx")
    path = resolve_model(spec, explicit=None, models_dir=None, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_truncated_file_in_cache_is_rejected(tmp_path: Path) -> None:
    spec = make_spec("http://127.0.0.1:9/never-asked")
    (tmp_path / spec.filename).write_bytes(PAYLOAD[:100])
    with pytest.raises(ChecksumError) as caught:
        resolve_model(spec, explicit=None, models_dir=None, cache_dir=tmp_path)
    assert caught.value.path == tmp_path / spec.filename
    assert caught.value.actual_size == 100
    message = str(caught.value)
    assert str(tmp_path / spec.filename) in message
    assert f"{len(PAYLOAD)} bytes" in message and "100 bytes" in message


def test_wrong_file_in_models_dir_is_rejected(tmp_path: Path) -> None:
    spec = make_spec()
    (tmp_path / spec.filename).write_bytes(b"x" * len(PAYLOAD))
    with pytest.raises(ChecksumError, match=spec.sha256 or ""):
        resolve_model(spec, explicit=None, models_dir=tmp_path, cache_dir=tmp_path / "c")


def test_no_network_names_file_urls_and_where_to_put_it(tmp_path: Path) -> None:
    url = closed_port_url()
    spec = make_spec(url)
    models_dir = tmp_path / "models"
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(
            spec, explicit=None, models_dir=models_dir, cache_dir=tmp_path / "c", progress=False
        )
    message = str(caught.value)
    assert "model.onnx" in message
    assert url in message
    assert str(models_dir / "model.onnx") in message
    assert "--models-dir" in message
    assert "\n" not in message
    assert caught.value.destination == models_dir / "model.onnx"
    assert not any((tmp_path / "c").iterdir())


def test_a_cache_that_cannot_be_written_is_named_before_any_download(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = served
    (root / "model.onnx").write_bytes(PAYLOAD)
    spec = make_spec(f"{url}/model.onnx")
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    with pytest.raises(ModelError) as caught:
        resolve_model(spec, explicit=None, models_dir=None, cache_dir=in_the_way / "models",
                      progress=False)
    assert type(caught.value) is ModelError
    assert str(caught.value) == (
        f"cannot write the model cache {in_the_way / 'models'}: Not a directory"
    )
    if os.geteuid() == 0:
        return  # root writes through the mode
    read_only = tmp_path / "read-only"
    read_only.mkdir(0o500)
    with pytest.raises(ModelError) as caught:
        resolve_model(spec, explicit=None, models_dir=None, cache_dir=read_only, progress=False)
    assert type(caught.value) is ModelError  # not "download failed" for every URL
    assert str(caught.value) == f"cannot write the model cache {read_only}: Permission denied"


def test_download_disabled(tmp_path: Path) -> None:
    spec = make_spec("https://example.invalid/model.onnx")
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(spec, explicit=None, models_dir=None, cache_dir=tmp_path, download=False)
    assert "https://example.invalid/model.onnx" in str(caught.value)
    assert str(tmp_path / "model.onnx") in str(caught.value)


def test_real_yunet_resolves_through_models_dir(yunet_path: Path, tmp_path: Path) -> None:
    path = resolve_model(
        MODELS["yunet_2026may"],
        explicit=None,
        models_dir=yunet_path.parent,
        cache_dir=tmp_path,
        download=False,
    )
    assert path == yunet_path
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path, models_dir=yunet_path.parent)
    assert model_path(settings, "yunet_2026may", download=False) == yunet_path


def test_dlib_weights_resolve_from_the_installed_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face_recognition_models is not installed (pip install '.[trainer]')")
    spec = MODELS["dlib_resnet_v1_dat"]
    path = resolve_model(spec, explicit=None, models_dir=None, cache_dir=tmp_path, download=False)
    assert path.name == spec.filename
    assert path.parent.parent.name == "face_recognition_models"
    assert path.stat().st_size == spec.size


def test_derived_model_comes_from_the_cache_or_asks_for_prepare(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="facestream models prepare"):
        model_path(settings, "dlib_resnet_v1")
    converted = model_cache_dir(settings) / MODELS["dlib_resnet_v1"].filename
    converted.parent.mkdir(parents=True)
    converted.write_bytes(b"onnx")
    record_checksum(converted)
    assert model_path(settings, "dlib_resnet_v1") == converted


def test_unknown_model_names(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        model_path(settings, "nope")
    bad = dataclasses.replace(
        settings, recognition=dataclasses.replace(settings.recognition, model="arcface")
    )
    with pytest.raises(ConfigError, match=r"recognition\.model = 'arcface'"):
        model_path(bad, "arcface")


def test_fetch_force_keeps_the_cached_copy_until_a_new_one_is_verified(
    served: tuple[Path, str], yunet_path: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`models fetch --force` deleted a good copy before the download, which then failed
    offline; a wrong copy's error said to run the very `models fetch` that gave it."""
    root, base = served
    spec = MODELS["yunet_2026may"]
    cache = tmp_path / "cache"
    cached = cache / "models" / spec.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(yunet_path.read_bytes())
    common = ["--cache-dir", str(cache), "--state-dir", str(tmp_path / "state")]

    def urls(*given: str) -> None:
        replaced = {**MODELS, spec.name: dataclasses.replace(spec, urls=given)}
        monkeypatch.setattr(registry, "MODELS", types.MappingProxyType(replaced))

    urls(closed_port_url())  # offline
    assert main(["models", "fetch", "--force", spec.name, *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"facestream: error: {spec.name} could not be downloaded again (")
    assert err.endswith(f"); {cached} is kept as it was\n")
    assert cached.read_bytes() == yunet_path.read_bytes()
    assert main(["models", "list", *common]) == 0
    (row,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith(spec.name)]
    assert row.endswith(f"  {cached}")

    cached.write_bytes(b"damaged")
    assert main(["models", "fetch", spec.name, *common]) == 2
    assert capsys.readouterr().err.endswith(
        f"; run `facestream models fetch --force {spec.name}` to download it again\n")
    (root / spec.filename).write_bytes(yunet_path.read_bytes())
    urls(f"{base}/{spec.filename}")
    assert main(["models", "fetch", "--force", spec.name, *common]) == 0
    assert capsys.readouterr().out == f"{spec.name}: {cached}\n"
    assert cached.read_bytes() == yunet_path.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == [spec.filename]  # no temp file

    models_dir = tmp_path / "models"  # looked at before the cache: --force cannot mend it
    models_dir.mkdir()
    (models_dir / spec.filename).write_bytes(b"damaged")
    assert main(["models", "fetch", "--force", spec.name, "--models-dir", str(models_dir),
                 *common]) == 2
    assert capsys.readouterr().err == (
        f"facestream: error: {models_dir / spec.filename} is not the expected file: sha256 "
        f"{hashlib.sha256(b'damaged').hexdigest()}, 7 bytes; expected sha256 {spec.sha256}, "
        f"{spec.size} bytes; replace it with a good copy or delete it\n"
    )
