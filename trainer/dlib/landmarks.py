"""Convert dlib's 5-point shape predictor (``shape_predictor_5_face_landmarks.dat``) to
the ``.npz`` that `facecore.landmarks.ShapePredictor` reads.

The ``.dat`` is a ``shape_predictor`` written with dlib's ``serialize()``: an int
version (1), the initial shape (a column matrix: rows and columns written negated,
then the values), the forests (a vector per cascade level of regression trees, each
a vector of splits ``idx1, idx2, thresh`` and a vector of leaf column matrices), the
anchor indices and the deltas (per level, a vector of ``(x, y)`` float pairs). The
primitives are read by `trainer.dlib.format.DlibReader`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.config import Settings
from facecore.download import sha256_file
from facecore.files import fsync_path
from facecore.registry import (
    DLIB_LANDMARKS,
    ensure_model_cache,
    get_spec,
    model_cache_dir,
    model_path,
    record_checksum,
    recorded_checksum_matches,
)
from trainer.dlib.format import DlibReader
from trainer.errors import DlibFormatError

__all__ = ["parse_shape_predictor", "prepare_landmark_model", "prepare_shape_predictor"]

log = logging.getLogger(__name__)

_VERSION = 1


def _read_column(r: DlibReader) -> NDArray[np.float32]:
    """A ``matrix<float,0,1>``."""
    at = r.pos
    rows, cols = -r.read_int(), -r.read_int()  # dlib writes the dimensions negated
    if rows < 0 or cols != 1:
        raise r.error(f"expected a column matrix, got {rows}x{cols}", at)
    return np.array([r.read_float() for _ in range(rows)], np.float32)


def _read_tree(r: DlibReader) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32]]:
    at = r.pos
    splits = r.read_uint()
    pixels = np.empty((splits, 2), np.int32)
    thresh = np.empty(splits, np.float32)
    for i in range(splits):
        pixels[i] = r.read_uint(), r.read_uint()
        thresh[i] = r.read_float()
    leaves = np.stack([_read_column(r) for _ in range(r.read_uint())])
    if len(leaves) != splits + 1 or (splits + 1) & splits:
        raise r.error(f"a tree with {splits} splits has {len(leaves)} leaves", at)
    return pixels, thresh, leaves


def parse_shape_predictor(data: bytes) -> dict[str, NDArray[np.generic]]:
    """The arrays `facecore.landmarks.ShapePredictor` holds, from a ``.dat``'s bytes.
    Raises DlibFormatError (naming the byte offset) for anything else."""
    r = DlibReader(data)
    r.expect_version(_VERSION, "shape_predictor")
    initial = _read_column(r)
    levels = [[_read_tree(r) for _ in range(r.read_uint())] for _ in range(r.read_uint())]
    anchors = [[r.read_uint() for _ in range(r.read_uint())] for _ in range(r.read_uint())]
    deltas = [
        [(r.read_float(), r.read_float()) for _ in range(r.read_uint())]
        for _ in range(r.read_uint())
    ]
    if r.pos != len(data):
        raise r.error(f"{len(data) - r.pos} bytes left after the shape predictor")
    if not levels or len(anchors) != len(levels) or len(deltas) != len(levels):
        raise r.error(
            f"{len(levels)} cascade levels, {len(anchors)} anchor lists, {len(deltas)} delta lists"
        )
    try:  # the numpy predictor walks every tree of a level at once: they must match
        return {
            "initial_shape": initial.reshape(-1, 2),
            "anchor": np.array(anchors, np.int32),
            "deltas": np.array(deltas, np.float32),
            "split_pixels": np.array([[t[0] for t in level] for level in levels], np.int32),
            "split_thresh": np.array([[t[1] for t in level] for level in levels], np.float32),
            "leaf_values": np.array(
                [[t[2].reshape(-1, len(initial) // 2, 2) for t in level] for level in levels],
                np.float32,
            ),
        }
    except ValueError as exc:
        raise DlibFormatError(f"the cascade levels differ in shape: {exc}") from exc


def prepare_shape_predictor(source: Path, target: Path) -> Path:
    """Convert ``source`` (.dat) to ``target`` (.npz) once, its sha256 recorded beside
    it; a later call finds it, or converts again when it no longer matches the record.
    DlibFormatError names ``source`` when it is not a shape predictor; `ModelError`
    when ``target``'s folder cannot be written."""
    if recorded_checksum_matches(target):
        return target
    if target.exists():
        log.warning("the cached landmark model %s is damaged: converting again", target)
    try:
        arrays = parse_shape_predictor(Path(source).read_bytes())
    except DlibFormatError as exc:
        raise DlibFormatError(f"{source}: {exc}") from exc
    ensure_model_cache(target.parent)
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        np.savez(out, **arrays)
    fsync_path(partial)
    partial.replace(target)
    record_checksum(target)
    log.info("converted %s (sha256 %s) to %s", source, sha256_file(source)[:16], target)
    return target


def prepare_landmark_model(settings: Settings, *, download: bool = True) -> Path:
    """`prepare_shape_predictor` from the registry's ``.dat`` (found as the registry
    finds files) into ``cache_dir/models``, named as the registry's
    ``DLIB_LANDMARKS`` spec says."""
    source = model_path(settings, get_spec(DLIB_LANDMARKS).derived_from or "", download=download)
    return prepare_shape_predictor(
        source, model_cache_dir(settings) / get_spec(DLIB_LANDMARKS).filename
    )
