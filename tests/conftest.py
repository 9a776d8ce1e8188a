"""Shared fixtures.

Test data (models, photos, the video) is not in the repository: it comes from the
folder named by FACESTREAM_SHARED, by default ``../shared`` beside the repository.
Every file taken from there is checked against its ``SHA256SUMS`` entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres_support import PostgresCluster, start_cluster

REPO_ROOT = Path(__file__).resolve().parent.parent
YUNET_FILE = "models/face_detection_yunet_2026may.onnx"


def _shared_root() -> Path:
    return Path(os.environ.get("FACESTREAM_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared test-data folder; tests that need it are skipped when it is absent."""
    root = _shared_root()
    if not (root / "SHA256SUMS").is_file():
        pytest.skip(
            f"shared test data not found at {root} (no SHA256SUMS): set FACESTREAM_SHARED "
            "to the folder that holds models/, media/, people/ and datasets/"
        )
    return root


def _checked(shared_dir: Path, relative: str) -> Path:
    """`shared_dir/relative`, after checking it against SHA256SUMS (fails if it differs)."""
    sums = {}
    for line in (shared_dir / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        sums[name] = digest
    path = shared_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing from the shared test data")
    with path.open("rb") as fh:
        actual = hashlib.file_digest(fh, "sha256").hexdigest()
    assert relative in sums, f"{relative} is not listed in {shared_dir / 'SHA256SUMS'}"
    assert actual == sums[relative], f"{path} does not match SHA256SUMS"
    return path


@pytest.fixture(scope="session")
def shared_file(shared_dir: Path) -> Callable[[str], Path]:
    """``shared_file("media/obama.jpg")``: a shared file, checked against SHA256SUMS."""
    return lambda relative: _checked(shared_dir, relative)


@pytest.fixture(scope="session")
def yunet_path(shared_dir: Path) -> Path:
    """The real YuNet detector (face_detection_yunet_2026may.onnx), checksum-verified."""
    return _checked(shared_dir, YUNET_FILE)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server on loopback for the whole run (``make test`` installs
    Debian's ``postgresql``); tests that need it are skipped when it is not installed."""
    cluster = start_cluster()
    if cluster is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a new, empty database on the test server."""
    return postgres_cluster.create_database()
