"""The recognition backbone the trainer embeds with: the registry's recognizer,
its preprocessing and its front end (how chips are cut), loaded once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.config import Settings
from facecore.download import sha256_file
from facecore.embedder import Embedder, Preprocessing
from facecore.errors import ConfigError
from facecore.frontend import FrontEnd
from facecore.registry import describe_kind, get_spec, model_path

__all__ = ["Backbone"]


@dataclass(frozen=True)
class Backbone:
    name: str
    path: Path
    sha256: str
    embedder: Embedder
    front_end: FrontEnd

    @property
    def template(self) -> NDArray[np.float32]:
        """[5, 2] chip pixels: the model's template (recorded in bundles)."""
        return self.front_end.template

    @classmethod
    def from_settings(cls, settings: Settings) -> Backbone:
        name = settings.recognition.model
        spec = get_spec(name)
        if spec.kind != "recognizer" or spec.template is None:
            reason = (
                f"{describe_kind(spec)}, not a recognizer"
                if spec.kind != "recognizer"
                else "a recognizer without an alignment template, which the trainer needs"
            )
            raise ConfigError(
                reason,
                key="recognition.model",
                value=name,
                origin=settings.origins.get("recognition.model"),
            )
        path = model_path(settings, name)
        embedder = Embedder.load(
            path,
            Preprocessing.of_model(spec),
            device=settings.recognition.device,
            threads=settings.recognition.threads,
        )
        return cls(
            name=name,
            path=path,
            sha256=sha256_file(path),
            embedder=embedder,
            front_end=FrontEnd.for_model(settings, spec),
        )

    def embed_faces(
        self, image: NDArray[np.uint8], landmarks: NDArray[np.floating]
    ) -> NDArray[np.float32]:
        """Unit embeddings [N, D] of the faces with ``landmarks`` [N, 5, 2] in ``image``."""
        return self.embedder.embed(self.front_end.chips(image, landmarks))

    def embed_crops(
        self, crops: list[NDArray[np.uint8]], landmarks: NDArray[np.floating]
    ) -> NDArray[np.float32]:
        """Unit embeddings [N, D] of enrollment crops, each with its landmarks [5, 2]."""
        chips = [
            self.front_end.chips(crop, points[None])
            for crop, points in zip(crops, landmarks, strict=True)
        ]
        if not chips:
            return np.zeros((0, self.embedder.dimension), np.float32)
        return self.embedder.embed(np.concatenate(chips))
