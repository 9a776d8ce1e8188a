"""The model bundle: what the trainer publishes and the streamer serves.

A bundle is a directory::

    manifest.json   BundleManifest as JSON: versions, hashes, preprocessing, labels,
                    threshold, metrics
    backbone.onnx   the recognition network (chips -> embeddings)
    head.npz        ``weights`` [K, D] float32, one unit-length row per person
    landmarks.npz   the landmark model the front end runs (``front_end`` "dlib_5"
                    only; `facecore.landmarks`), so the streamer needs no other file

The backbone and the head stay separate files: a new bundle that only adds a
person keeps the same backbone hash, so a running server swaps in the new [K, D]
head without building a new ONNX Runtime session (reload in milliseconds).
Scoring is one matrix product, ``similarity = embeddings @ weights.T``.

Every bundle holds its own ``backbone.onnx``, but not its own copy of the bytes: when
the writer knows the backbone's hash, the file is a hard link to the previous
bundle's or to the model file (``write_bundle``), so publishing costs no 22 MB write.
Model files and bundles are only ever replaced by rename, never rewritten in place,
so a link never sees its content change; ``load_bundle`` checks every hash anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
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
    "LANDMARKS_FILE",
    "MANIFEST_FILE",
    "Bundle",
    "BundleManifest",
    "Gallery",
    "check_bundle",
    "load_bundle",
    "write_bundle",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.npz"
LANDMARKS_FILE = "landmarks.npz"


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
    threshold_reason: str = ""  # how the trainer chose the threshold ("" before 2026-12)
    format_version: int = FORMAT_VERSION
    # how its chips were cut (`facecore.frontend`); bundles from before the field
    # existed were all cut with the template
    front_end: str = "yunet_template"
    landmarks_sha256: str = ""  # of LANDMARKS_FILE; "" when the front end needs none
    # the trainer's digest of the people (ids, names) and samples it was built from, so
    # that a store change that leaves them as they were builds nothing ("" before 2026-12-07)
    roster_sha256: str = ""
    # the enrollment samples it was built from, so that the trainer can remove an older
    # bundle that still holds one erased since (() before 2026-12-07)
    sample_ids: tuple[str, ...] = ()
    # the identity of the store it was fitted on (`EnrollmentStore.identity`): person ids
    # and revisions are those of that store ("" before 2026-12-07)
    store_id: str = ""

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
        data["sample_ids"] = tuple(data.get("sample_ids", ()))
        # a field a newer facestream added within this format is left out: such fields
        # are extras an older reader may ignore (one it must not ignore is a new format),
        # so a box not yet upgraded keeps following the trainer's bundles
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


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
    manifest = check_bundle(path)
    try:
        with np.load(path / HEAD_FILE) as head:
            weights = np.asarray(head["weights"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle {path}: cannot read {HEAD_FILE}: {exc}") from exc
    return _assemble(path, manifest, weights)


def check_bundle(path: Path) -> BundleManifest:
    """The manifest of the bundle directory ``path``, once every model file it names
    (backbone, head, landmarks) hashes to the manifest's sha256: what a server checks
    before it serves a bundle, without loading anything. ``BundleError`` naming the
    file otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path} is gone (deleted by hand?)")
    try:
        manifest = BundleManifest.from_json((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"bundle {path} has no readable {MANIFEST_FILE}: {exc}") from exc
    files = [(BACKBONE_FILE, manifest.backbone_sha256), (HEAD_FILE, manifest.head_sha256)]
    if manifest.landmarks_sha256:
        files.append((LANDMARKS_FILE, manifest.landmarks_sha256))
    for name, expected in files:
        try:
            actual = sha256_file(path / name)
        except OSError as exc:
            raise BundleError(f"bundle {path} is missing {name}: {exc}") from exc
        if actual != expected:
            raise BundleError(
                f"bundle {path}: {name} has sha256 {actual}, manifest says {expected}"
            )
    return manifest


def write_bundle(
    path: Path,
    *,
    backbone: Path,
    weights: NDArray[np.float32],
    manifest: BundleManifest,
    backbone_sha256: str | None = None,
    link_from: Path | None = None,
    landmarks: Path | None = None,
    landmarks_sha256: str | None = None,
) -> Bundle:
    """Write a complete bundle into the new directory ``path`` (hashes filled in)
    and fsync it. Publishing it (the pointer switch) is ``facecore.publish``'s job.

    ``backbone_sha256``, when given, is what ``backbone`` hashes to (the caller hashed
    it when it loaded the model). The backbone is then hard-linked, not copied or
    hashed again: from ``backbone`` itself, or, when that is on another file system
    (a model cache on another mount), from the bundle ``link_from`` (the previous
    one, beside ``path``) if its manifest names the same hash. Otherwise it is copied
    and hashed as it is copied; a copy that does not hash to ``backbone_sha256`` is
    a ``BundleError``.

    ``landmarks``, the front end's landmark model when it has one, goes in as
    ``LANDMARKS_FILE`` the same way (``landmarks_sha256``: its known hash)."""
    path = Path(path)
    path.mkdir(mode=0o700)
    digest = _place_file(backbone, path / BACKBONE_FILE, backbone_sha256, link_from)
    weights = np.asarray(weights, np.float32)
    np.savez(path / HEAD_FILE, weights=weights)
    names = [BACKBONE_FILE, HEAD_FILE, MANIFEST_FILE]
    if landmarks is None:
        landmarks_sha256 = ""
    else:
        landmarks_sha256 = _place_file(landmarks, path / LANDMARKS_FILE, landmarks_sha256, None)
        names.append(LANDMARKS_FILE)
    manifest = replace(
        manifest,
        backbone_sha256=digest,
        head_sha256=sha256_file(path / HEAD_FILE),
        landmarks_sha256=landmarks_sha256,
    )
    (path / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    for name in (HEAD_FILE, MANIFEST_FILE):  # the gallery and the names: biometric data
        (path / name).chmod(0o600)
    for name in names:
        fsync_path(path / name)
    fsync_path(path)
    return _assemble(path, manifest, weights)


def _assemble(path: Path, manifest: BundleManifest, weights: NDArray[np.float32]) -> Bundle:
    """The bundle, once its head is known to fit its manifest."""
    try:
        gallery = Gallery(manifest.labels, weights, manifest.threshold)
    except ValueError as exc:
        raise BundleError(f"bundle {path}: {exc}") from exc
    if len(manifest.person_ids) != len(manifest.labels):
        raise BundleError(
            f"bundle {path}: {len(manifest.labels)} labels but {len(manifest.person_ids)} ids"
        )
    return Bundle(path, manifest, gallery)


def _place_file(source: Path, target: Path, sha256: str | None, link_from: Path | None) -> str:
    """Put the backbone (or another model file) at ``target`` (see ``write_bundle``);
    returns its sha256."""
    if sha256:
        candidates = [source]
        if link_from is not None and _backbone_hash(link_from) == sha256:
            candidates.append(link_from / BACKBONE_FILE)
        for candidate in candidates:
            try:
                os.link(candidate, target)
            except OSError:  # another file system (EXDEV), or gone since
                continue
            return sha256
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, target.open("xb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except OSError as exc:
        raise BundleError(f"cannot copy {source} into {target}: {exc}") from exc
    if sha256 and digest.hexdigest() != sha256:
        raise BundleError(
            f"{source} has sha256 {digest.hexdigest()}, expected {sha256}: "
            "it changed since it was loaded"
        )
    return digest.hexdigest()


def _backbone_hash(bundle: Path) -> str | None:
    """The backbone hash a bundle's manifest names; None when it cannot be read."""
    try:
        text = (bundle / MANIFEST_FILE).read_text(encoding="utf-8")
        return BundleManifest.from_json(text).backbone_sha256
    except (OSError, ValueError, KeyError, TypeError, BundleError):
        return None
