"""Hot reload: the BundleWatcher follows ``bundles/current`` and refuses bad bundles."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pipeline_support import mean_colour_backbone, stand_in_bundle

from facecore.bundle import HEAD_FILE, Bundle
from facecore.config import RecognitionSettings, Settings
from facecore.detector import Detector
from facecore.publish import CURRENT, publish
from streamer.errors import BundleRefusedError
from streamer.live.engine import Engine
from streamer.live.fonts import FontSet

CPU = RecognitionSettings(device="cpu")


def _publish(bundles: Path, backbone: Path, **kwargs: object) -> Bundle:
    return publish(
        bundles,
        lambda directory, version: stand_in_bundle(directory, backbone, version=version, **kwargs),
    )


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    return tmp_path / "bundles"


@pytest.fixture
def backbone(tmp_path: Path) -> Path:
    return mean_colour_backbone(tmp_path / "mean.onnx")


@pytest.fixture
def engine(yunet_path: Path, bundles: Path, backbone: Path) -> Iterator[Engine]:
    first = _publish(bundles, backbone)
    with Engine(Detector(yunet_path), fonts=FontSet(), recognition=CPU, bundle=first) as engine:
        yield engine


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_watcher_swaps_in_each_published_bundle(
    engine: Engine, bundles: Path, backbone: Path, tmp_path: Path
) -> None:
    watcher = engine.watch(bundles, interval=0.05)
    serving = engine.recognizer.model.embedder
    _publish(bundles, backbone, labels=("red", "blue", "green"))
    assert _wait_for(lambda: engine.bundle_version == 2)
    assert engine.bundle.manifest.labels == ("red", "blue", "green")
    assert engine.recognizer.model.embedder is serving  # same backbone: only the gallery changed
    other = mean_colour_backbone(tmp_path / "other.onnx", name="another_backbone")
    _publish(bundles, other)
    assert _wait_for(lambda: engine.bundle_version == 3)
    assert engine.recognizer.model.embedder is not serving  # a new backbone: a new session
    assert watcher.swaps == 2 and watcher.refused == 0
    engine.close()
    assert not watcher._thread.is_alive()
    watcher.close()


def test_bad_bundles_are_refused_and_the_old_one_keeps_serving(
    engine: Engine, bundles: Path, backbone: Path, tmp_path: Path
) -> None:
    watcher = engine.watch(bundles, interval=3600)  # checked by hand below
    assert watcher.check() is False  # nothing new
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + os.urandom(200))
    _publish(bundles, garbage)  # its hashes match, but it is no network
    assert watcher.check() is False
    (bundles / CURRENT).unlink()  # the pointer is gone: nothing to load, keep serving
    assert watcher.check() is False
    tampered = _publish(bundles, backbone, labels=("only",))
    (tampered.path / HEAD_FILE).write_bytes(b"tampered")  # no longer its manifest's hash
    assert watcher.check() is False
    assert watcher.refused == 2 and engine.bundle_version == 1
    assert engine.recognizer.model.version == 1
    _publish(bundles, backbone, labels=("red", "blue", "green"))
    assert watcher.check() is True and engine.bundle_version == 4


def test_a_bundle_folder_deleted_and_published_again_is_a_new_bundle(
    engine: Engine, bundles: Path, backbone: Path
) -> None:
    """A user deleting the served bundle by hand, then erasing someone: the server must
    not keep the erased person because the new bundle has the old one's name."""
    watcher = engine.watch(bundles, interval=3600)  # checked by hand below
    served = _publish(bundles, backbone, labels=("Ada", "Bob"))
    assert watcher.check() and engine.bundle.manifest.labels == ("Ada", "Bob")
    shutil.rmtree(served.path)
    (bundles / CURRENT).unlink()
    erased = _publish(bundles, backbone, labels=("Ada",))  # Bob erased
    assert erased.path == served.path  # the same name: nothing on disk says it was used
    assert watcher.check() and engine.bundle.manifest.labels == ("Ada",)
    # with ``current`` still naming the deleted folder, its number is not given again
    shutil.rmtree(erased.path)
    renumbered = _publish(bundles, backbone, labels=("Ada", "Cy"))
    assert renumbered.manifest.version == erased.manifest.version + 1
    assert watcher.check() and engine.bundle.manifest.labels == ("Ada", "Cy")
    assert watcher.check() is False  # and the same bundle is not loaded twice


def test_a_gallery_of_another_width_is_refused(
    engine: Engine, tmp_path: Path, backbone: Path
) -> None:
    bundle = stand_in_bundle(tmp_path / "v9", backbone, version=9)
    wide = replace(bundle, gallery=replace(bundle.gallery, weights=np.eye(2, 5, dtype=np.float32)))
    with pytest.raises(
        BundleRefusedError, match="gallery rows have 5 values, its backbone makes 3"
    ):
        engine.swap_bundle(wide)
    assert engine.bundle_version == 1


def test_a_bundle_of_another_front_end_is_refused(
    engine: Engine, tmp_path: Path, backbone: Path
) -> None:
    """A dlib ResNet gallery embedded from template chips (a bundle from before the
    dlib_5 front end) would not match the chips the model now wants."""
    bundle = stand_in_bundle(tmp_path / "v8", backbone, version=8)
    stale = replace(bundle, manifest=replace(bundle.manifest, backbone_name="dlib_resnet_v1"))
    with pytest.raises(BundleRefusedError, match=r"'yunet_template' front end.*rebuild"):
        engine.swap_bundle(stale)
    assert engine.bundle_version == 1


def test_engine_starts_from_the_published_bundle(
    yunet_path: Path, tmp_path: Path, backbone: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        models_dir=yunet_path.parent,
        recognition=CPU,
    )
    with Engine.from_settings(settings, watch=False) as engine:
        assert engine.bundle_version is None  # nothing published: everyone is unknown
    _publish(settings.state_dir / "bundles", backbone)
    _publish(settings.state_dir / "bundles", backbone)
    with Engine.from_settings(settings) as engine:
        assert engine.bundle_version == 2
        assert engine.recognizer.model is not None
    (settings.state_dir / "bundles" / "v000002" / HEAD_FILE).write_bytes(b"broken")
    with Engine.from_settings(settings, watch=False) as engine:
        assert engine.bundle_version is None  # a broken bundle is not served
        engine.swap_bundle(None)
    # one that is gone is said once, in words, not again by the watcher's first look
    shutil.rmtree(settings.state_dir / "bundles" / "v000002")
    caplog.clear()
    with caplog.at_level(logging.ERROR), Engine.from_settings(settings) as engine:
        time.sleep(0.6)  # two of the watcher's turns
        assert engine.bundle_version is None
    gone = settings.state_dir / "bundles" / "v000002"
    assert [r.getMessage() for r in caplog.records] == [
        f"bundle {gone} is gone (deleted by hand?); every face is unknown until a good "
        "bundle is published"
    ]
