"""Chip augmentations for fitting the head: the same face, as a camera might also see it.

Every function takes and returns aligned chips, uint8 BGR, [N, H, W, 3] or one
[H, W, 3]. Each augmented copy applies, in this order: a mirror flip (faces are
nearly symmetric and the alignment templates are), a small rotation, scale and shift
around the chip's centre (borders reflected, so no black corners), a lighting change
(contrast, brightness, gamma), a Gaussian blur, and JPEG re-compression.

Copies are reproducible: the random generator of a sample is seeded from its content
hash, so the trainer can cache augmented embeddings alongside the clean ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["Augmentation", "augment_chip", "augment_chips", "seed_of"]


@dataclass(frozen=True)
class Augmentation:
    """How many augmented copies of each chip, and how strongly each is changed."""

    copies: int = 4  # augmented chips per sample (the clean chip is not counted)
    flip_probability: float = 0.5
    max_rotation_deg: float = 8.0  # uniform in [-max, +max]
    max_scale: float = 0.08  # zoom factor uniform in [1 - max, 1 + max]
    max_shift: float = 0.04  # fraction of the chip side, each axis
    max_contrast: float = 0.25  # gain uniform in [1 - max, 1 + max]
    max_brightness: float = 25.0  # offset in grey levels, uniform in [-max, +max]
    max_gamma: float = 0.3  # gamma uniform in [1 - max, 1 + max]
    blur_probability: float = 0.3
    max_blur_sigma: float = 1.5  # pixels of a 150-pixel chip; scaled with the chip size
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (25, 90)  # inclusive range

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError(f"copies must be >= 0, got {self.copies}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(
                f"jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}"
            )

    @property
    def key(self) -> str:
        """A short fingerprint of these settings: cached augmented embeddings are
        valid only for the recipe that made them."""
        text = json.dumps(asdict(self), sort_keys=True)
        return "aug-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def seed_of(sample_sha256: str) -> int:
    """A generator seed from a sample's hex content hash."""
    return int(sample_sha256[:16], 16)


def augment_chip(
    chip: NDArray[np.uint8], rng: np.random.Generator, recipe: Augmentation
) -> NDArray[np.uint8]:
    """One augmented copy of ``chip`` [H, W, 3] uint8 BGR."""
    height, width = chip.shape[:2]
    out = chip[:, ::-1] if rng.random() < recipe.flip_probability else chip

    angle = rng.uniform(-recipe.max_rotation_deg, recipe.max_rotation_deg)
    zoom = 1.0 + rng.uniform(-recipe.max_scale, recipe.max_scale)
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, zoom)
    matrix[:, 2] += rng.uniform(-recipe.max_shift, recipe.max_shift, 2) * (width, height)
    out = cv2.warpAffine(
        np.ascontiguousarray(out), matrix, (width, height),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101,
    )

    gain = 1.0 + rng.uniform(-recipe.max_contrast, recipe.max_contrast)
    offset = rng.uniform(-recipe.max_brightness, recipe.max_brightness)
    gamma = 1.0 + rng.uniform(-recipe.max_gamma, recipe.max_gamma)
    levels = np.arange(256, dtype=np.float64)
    table = 255.0 * (levels / 255.0) ** gamma
    table = np.clip((table - 127.5) * gain + 127.5 + offset, 0, 255).astype(np.uint8)
    out = cv2.LUT(out, table)

    if rng.random() < recipe.blur_probability:
        sigma = rng.uniform(0.3, 1.0) * recipe.max_blur_sigma * width / 150.0
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)

    if rng.random() < recipe.jpeg_probability:
        quality = int(rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a {out.shape} chip")
        out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(out, np.uint8)


def augment_chips(
    chips: NDArray[np.uint8], seeds: list[int], recipe: Augmentation
) -> NDArray[np.uint8]:
    """``recipe.copies`` augmented copies of each chip: [N, H, W, 3] -> [N, copies, H, W, 3].

    Chip ``i`` is augmented with a generator seeded by ``seeds[i]``, so the result does
    not depend on which other chips are in the batch."""
    if len(seeds) != len(chips):
        raise ValueError(f"one seed per chip: {len(chips)} chips, {len(seeds)} seeds")
    out = np.empty((len(chips), recipe.copies, *chips.shape[1:]), np.uint8)
    for i, (chip, seed) in enumerate(zip(chips, seeds, strict=True)):
        rng = np.random.default_rng(seed)
        for j in range(recipe.copies):
            out[i, j] = augment_chip(chip, rng, recipe)
    return out
