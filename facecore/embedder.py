"""Embedder: aligned face chips in, L2-normalised embeddings out, one ONNX call a batch.

Chips are [N, H, W, 3] uint8 in OpenCV's BGR order, as ``align_faces`` makes them.
The network's own input convention (size, colour order, mean, scale) comes from
its ``Preprocessing`` record, written next to the model, and is checked against
the graph at load time, never guessed from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from facecore.errors import ModelLoadError

__all__ = ["Embedder", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How chips become the network's input: ``(pixel - mean) * scale`` in
    ``colour`` order, laid out NCHW."""

    size: tuple[int, int]  # (width, height)
    colour: str  # "rgb" or "bgr": the order the network wants
    mean: tuple[float, float, float]  # in the network's colour order
    scale: float

    def __post_init__(self) -> None:
        if self.colour not in ("rgb", "bgr"):
            raise ValueError(f"colour must be 'rgb' or 'bgr', got {self.colour!r}")

    def apply(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """[N, H, W, 3] uint8 BGR -> [N, 3, H, W] float32 network input."""
        x = chips[..., ::-1] if self.colour == "rgb" else chips
        x = (x.astype(np.float32) - np.asarray(self.mean, np.float32)) * np.float32(self.scale)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Embedder:
    """Runs a recognition network. Only one thread should call ``embed`` at a time
    per session when throughput matters (the streamer's batcher thread does)."""

    def __init__(self, session: ort.InferenceSession, preprocessing: Preprocessing) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError("a recognition model must have one input and an embedding output")
        shape = inputs[0].shape
        width, height = preprocessing.size
        if len(shape) != 4 or list(shape[1:]) != [3, height, width]:
            raise ModelLoadError(
                f"model input is {shape}, but its preprocessing record says "
                f"[N, 3, {height}, {width}]"
            )
        self.session = session
        self.preprocessing = preprocessing
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.dimension = int(outputs[0].shape[-1])
        self.provider = session.get_providers()[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.preprocessing.size

    def embed(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """[N, H, W, 3] uint8 BGR chips -> [N, D] float32, each row of unit length."""
        raw = self.embed_raw(chips)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return raw / np.maximum(norms, np.float32(1e-12))

    def embed_raw(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The network's output as it is, [N, D] float32."""
        width, height = self.preprocessing.size
        if chips.ndim != 4 or chips.shape[1:] != (height, width, 3) or chips.dtype != np.uint8:
            raise ValueError(
                f"expected chips [N, {height}, {width}, 3] uint8, got {chips.dtype} {chips.shape}"
            )
        if len(chips) == 0:
            return np.zeros((0, self.dimension), np.float32)
        (out,) = self.session.run(
            [self.output_name], {self.input_name: self.preprocessing.apply(chips)}
        )
        return np.asarray(out, np.float32).reshape(len(chips), -1)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run dummy batches so the first real frame does not pay for lazy set-up."""
        width, height = self.preprocessing.size
        for n in batch_sizes:
            self.embed_raw(np.zeros((n, height, width, 3), np.uint8))
