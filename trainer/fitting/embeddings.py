"""Embeddings of enrollment samples, clean and augmented, through the store's cache.

The store caches one vector per (sample content hash, key). Clean embeddings are
kept under ``embedding_key(backbone)``: the backbone's sha256 and a fingerprint of
its front end (kind, template, landmark model) and preprocessing (a chip, hence its
embedding, depends on all of them); the ``copies`` augmented embeddings of a sample are kept as one
flattened [copies * D] vector under ``"<embedding key>+<recipe key>"``. A change of
backbone, alignment or augmentation recipe therefore never reuses stale vectors.
Only missing vectors are computed: a sample is embedded clean when its clean vector
is missing, and augmented when its augmented ones are (and a recipe is asked for: the
prototypes need only clean vectors, so the trainer asks for those first). Vectors
are cached batch by batch, so an interrupted pass keeps what it did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from enrollment.store import EnrollmentStore, Sample
from trainer.backbone import Backbone
from trainer.fitting.augment import Augmentation, augment_chips, seed_of

__all__ = ["SampleEmbeddings", "embed_samples", "embedding_key"]

BATCH_SIZE = 32  # samples per ONNX call (each brings its augmented copies along)


@dataclass(frozen=True)
class SampleEmbeddings:
    clean: NDArray[np.float32]  # [N, D] unit rows, one per sample, in the samples' order
    augmented: NDArray[np.float32]  # [N, copies, D] unit rows
    computed: int  # samples embedded by this call (the others came from the cache)


def embedding_key(backbone: Backbone) -> str:
    """The cache key of a backbone's clean embeddings: ``<sha256>/<fingerprint of the
    front end and preprocessing>``. The template-only front end keeps the
    fingerprint it had before front ends existed, so its cache stays valid."""
    parts: list[object] = [np.asarray(backbone.template, np.float64).round(6).tolist(),
                           asdict(backbone.embedder.preprocessing)]
    front_end = backbone.front_end
    if front_end.kind != "yunet_template":
        parts.append([front_end.kind, front_end.predictor_sha256])
    chips = json.dumps(parts)
    return f"{backbone.sha256}/{hashlib.sha256(chips.encode()).hexdigest()[:16]}"


def embed_samples(
    store: EnrollmentStore,
    backbone: Backbone,
    samples: Sequence[Sample],
    recipe: Augmentation | None,
    *,
    progress: bool = True,
) -> SampleEmbeddings:
    """Clean and augmented embeddings of ``samples``, from the cache where possible.

    With ``recipe`` None only the clean embeddings are made (``augmented`` is then
    [N, 0, D]): all that the prototypes need. Only the vectors missing from the cache
    are computed, so a later call with the recipe adds just the augmented ones."""
    dimension = backbone.embedder.dimension
    copies = recipe.copies if recipe is not None else 0
    key = embedding_key(backbone)
    aug_key = f"{key}+{recipe.key}" if recipe is not None else None
    clean = store.cached_embeddings(key, samples)
    augmented: dict[str, NDArray[np.float32]] = {}
    if aug_key is not None:
        augmented = {
            digest: vector.reshape(copies, dimension)
            for digest, vector in store.cached_embeddings(aug_key, samples).items()
            if vector.size == copies * dimension
        }
    missing = [s for s in samples
               if s.sha256 not in clean or (aug_key is not None and s.sha256 not in augmented)]
    bar = tqdm(total=len(missing), desc="embedding samples", unit="sample",
               disable=None if progress else True)
    with bar:
        for start in range(0, len(missing), BATCH_SIZE):
            batch = missing[start : start + BATCH_SIZE]
            fresh_clean, fresh_augmented = _embed_batch(
                store, backbone, [s for s in batch if s.sha256 not in clean],
                [s for s in batch if aug_key is not None and s.sha256 not in augmented],
                recipe,
            )
            store.cache_embeddings(key, fresh_clean)
            if aug_key is not None:
                store.cache_embeddings(
                    aug_key, {k: v.reshape(-1) for k, v in fresh_augmented.items()}
                )
            clean.update(fresh_clean)
            augmented.update(fresh_augmented)
            bar.update(len(batch))
    if not samples:
        return SampleEmbeddings(
            np.zeros((0, dimension), np.float32), np.zeros((0, copies, dimension), np.float32), 0
        )
    return SampleEmbeddings(
        np.stack([clean[s.sha256] for s in samples]).astype(np.float32),
        np.stack([augmented.get(s.sha256, np.zeros((0, dimension), np.float32))
                  for s in samples]).astype(np.float32),
        len(missing),
    )


def _embed_batch(
    store: EnrollmentStore,
    backbone: Backbone,
    plain: Sequence[Sample],
    varied: Sequence[Sample],
    recipe: Augmentation | None,
) -> tuple[dict[str, NDArray[np.float32]], dict[str, NDArray[np.float32]]]:
    """In a single ONNX call: the clean embedding of each of ``plain``, and the
    ``recipe.copies`` augmented embeddings of each of ``varied``."""
    chips = {
        s.sha256: backbone.front_end.chips(store.load_crop(s), s.landmarks[None])[0]
        for s in (*plain, *varied)
    }
    copies = recipe.copies if recipe is not None and varied else 0
    parts = [np.stack([chips[s.sha256] for s in plain])] if plain else []
    if recipe is not None and copies:
        made = augment_chips(np.stack([chips[s.sha256] for s in varied]),
                             [seed_of(s.sha256) for s in varied], recipe)
        parts.append(made.reshape(-1, *made.shape[2:]))
    dimension = backbone.embedder.dimension
    vectors = (backbone.embedder.embed(np.concatenate(parts)) if parts
               else np.zeros((0, dimension), np.float32))
    n = len(plain)
    augmented = vectors[n:].reshape(len(varied), copies, dimension)
    return (
        {s.sha256: vectors[i] for i, s in enumerate(plain)},
        {s.sha256: augmented[i] for i, s in enumerate(varied)},
    )
