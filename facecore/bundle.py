"""The model bundle: what the trainer publishes and the streamer serves.

A bundle is a directory::

    manifest.json   BundleManifest as JSON: versions, hashes, preprocessing, labels,
                    threshold, metrics
    backbone.onnx   the recognition network (chips -> embeddings)
    head.npz        ``weights`` [K, D] float32, one unit-length row per person

The backbone and the head stay separate files: a new bundle that only adds a
person keeps the same backbone hash, so a running server swaps in the new [K, D]
head without building a new ONNX Runtime session (reload in milliseconds).
Scoring is one matrix product, ``similarity = embeddings @ weights.T``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.download import sha256_file
from facecore.embedder import Preprocessing
from facecore.errors import BundleError
from facecore.files import fsync_path

__all__ = [
    "BACKBONE_FILE",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "MANIFEST_FILE",
    "Bundle",
    "BundleManifest",
    "Gallery",
    "load_bundle",
    "write_bundle",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.npz"


@dataclass(frozen=True)
class BundleManifest:
    version: int
    created: str  # ISO 8601, UTC
    store_revision: int
    backbone_name: str
    backbone_sha256: str
    preprocessing: Preprocessing
    template: tuple[tuple[float, float], ...]  # 5 points, chip pixels
    head_kind: str  # "prototypes" or "cosine"
    head_sha256: str
    labels: tuple[str, ...]  # display names, one per head row
    person_ids: tuple[str, ...]  # enrollment ids ("" when built from a folder)
    threshold: float  # cosine similarity at or above which a face is that person
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> BundleManifest:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"bundle format {data.get('format_version')!r} is not supported "
                f"(this facestream reads format {FORMAT_VERSION})"
            )
        pre = data.pop("preprocessing")
        data["preprocessing"] = Preprocessing(
            size=tuple(pre["size"]),
            colour=pre["colour"],
            mean=tuple(pre["mean"]),
            scale=pre["scale"],
        )
        data["template"] = tuple(tuple(p) for p in data["template"])
        data["labels"] = tuple(data["labels"])
        data["person_ids"] = tuple(data["person_ids"])
        return cls(**data)


@dataclass(frozen=True)
class Gallery:
    """Known people as one [K, D] matrix of unit rows, and the match threshold."""

    labels: tuple[str, ...]
    weights: NDArray[np.float32]
    threshold: float

    def __post_init__(self) -> None:
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.labels):
            raise ValueError(
                f"Gallery weights must be [K={len(self.labels)}, D], got {self.weights.shape}"
            )

    @classmethod
    def empty(cls, dimension: int = 0, threshold: float = 1.0) -> Gallery:
        return cls((), np.zeros((0, dimension), np.float32), threshold)

    def match(
        self, embeddings: NDArray[np.float32]
    ) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        """Best person index per row of ``embeddings`` [N, D] (-1 when nobody scores
        at least ``threshold``) and that best similarity [N]."""
        n = len(embeddings)
        if len(self.labels) == 0 or n == 0:
            return np.full(n, -1, np.intp), np.zeros(n, np.float32)
        similarity = embeddings @ self.weights.T
        best = similarity.argmax(axis=1)
        score = similarity[np.arange(n), best].astype(np.float32)
        return np.where(score >= self.threshold, best, -1), score


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: BundleManifest
    gallery: Gallery

    @property
    def backbone_path(self) -> Path:
        return self.path / BACKBONE_FILE


def load_bundle(path: Path) -> Bundle:
    """Read and validate a bundle directory: manifest, file hashes, head shape.

    Raises ``BundleError`` naming what is wrong; never returns a half-valid bundle.
    """
    path = Path(path)
    try:
        manifest = BundleManifest.from_json((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"bundle {path} has no readable {MANIFEST_FILE}: {exc}") from exc
    for name, expected in (
        (BACKBONE_FILE, manifest.backbone_sha256),
        (HEAD_FILE, manifest.head_sha256),
    ):
        try:
            actual = sha256_file(path / name)
        except OSError as exc:
            raise BundleError(f"bundle {path} is missing {name}: {exc}") from exc
        if actual != expected:
            raise BundleError(
                f"bundle {path}: {name} has sha256 {actual}, manifest says {expected}"
            )
    try:
        with np.load(path / HEAD_FILE) as head:
            weights = np.asarray(head["weights"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle {path}: cannot read {HEAD_FILE}: {exc}") from exc
    try:
        gallery = Gallery(manifest.labels, weights, manifest.threshold)
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {exc}") from exc
    if len(manifest.person_ids) != len(manifest.labels):
        raise BundleError(
            f"bundle {path}: {len(manifest.labels)} labels but {len(manifest.person_ids)} ids"
        )
    return Bundle(path, manifest, gallery)


def write_bundle(
    path: Path,
    *,
    backbone: Path,
    weights: NDArray[np.float32],
    manifest: BundleManifest,
) -> Bundle:
    """Write a complete bundle into the new directory ``path`` (hashes filled in)
    and fsync it. Publishing it (the pointer switch) is ``facecore.publish``'s job."""
    path = Path(path)
    path.mkdir(mode=0o700)
    data = backbone.read_bytes()
    (path / BACKBONE_FILE).write_bytes(data)
    np.savez(path / HEAD_FILE, weights=np.asarray(weights, np.float32))
    manifest = replace(
        manifest,
        backbone_sha256=hashlib.sha256(data).hexdigest(),
        head_sha256=sha256_file(path / HEAD_FILE),
    )
    (path / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    for name in (BACKBONE_FILE, HEAD_FILE, MANIFEST_FILE):
        fsync_path(path / name)
    fsync_path(path)
    return load_bundle(path)
