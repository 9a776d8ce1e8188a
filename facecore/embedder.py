"""Embedder: aligned face chips in, L2-normalised embeddings out, one ONNX call a batch.

Chips are [N, H, W, 3] uint8 in OpenCV's BGR order, as ``facecore.frontend.FrontEnd``
cuts them.
The network's own input convention (size, colour order, mean, scale) comes from
its ``Preprocessing`` record, written next to the model, and is checked against
the graph at load time, never guessed from it.

That convention is done inside the session: ``with_chip_input`` puts the colour
swap, mean, scale and NCHW transpose in front of the network's graph, so the
session takes the uint8 chips as they are. On a GPU this sends a quarter of the
bytes and takes the per-pixel work off the CPU, which was most of a batch's time
there (docs/benchmarks.md, GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from facecore.errors import ModelError, ModelLoadError
from facecore.registry import ModelSpec, describe_kind
from facecore.sessions import create_session

__all__ = [
    "CHIPS",
    "ChipEmbedder",
    "Embedder",
    "Preprocessing",
    "check_chips",
    "unit_rows",
    "with_chip_input",
]

CHIPS = "chips_uint8_bgr"  # the input name of a network rewritten by with_chip_input


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

    @classmethod
    def of_model(cls, spec: ModelSpec) -> Preprocessing:
        """The input convention the registry pins for the recognizer ``spec``; raises
        `ModelError` for a model that is not a recognizer."""
        if (
            spec.kind != "recognizer"
            or spec.input_size is None
            or spec.colour is None
            or spec.mean is None
            or spec.scale is None
        ):
            raise ModelError(f"{spec.name} is {describe_kind(spec)}, not a recognizer")
        return cls(size=spec.input_size, colour=spec.colour, mean=spec.mean, scale=spec.scale)


def with_chip_input(model: onnx.ModelProto, preprocessing: Preprocessing) -> onnx.ModelProto:
    """``model`` (one float input [N, 3, H, W]) rewritten to take uint8 BGR chips
    [N, H, W, 3] as its input ``CHIPS``."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise ModelLoadError("a recognition model must have one input and an embedding output")
    network_input = inputs[0].name
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    width, height = preprocessing.size
    if len(dims) != 4 or dims[1:] != [3, height, width]:
        raise ModelLoadError(
            f"model input is {dims}, but its preprocessing record says [N, 3, {height}, {width}]"
        )
    order = (2, 1, 0) if preprocessing.colour == "rgb" else (0, 1, 2)
    constants = [
        numpy_helper.from_array(np.asarray(order, np.int64), "chips_channel_order"),
        numpy_helper.from_array(np.asarray(preprocessing.mean, np.float32), "chips_mean"),
        numpy_helper.from_array(np.asarray(preprocessing.scale, np.float32), "chips_scale"),
    ]
    nodes = [
        helper.make_node("Cast", [CHIPS], ["chips_float"], to=TensorProto.FLOAT),
        helper.make_node(
            "Gather", ["chips_float", "chips_channel_order"], ["chips_ordered"], axis=3
        ),
        helper.make_node("Sub", ["chips_ordered", "chips_mean"], ["chips_centred"]),
        helper.make_node("Mul", ["chips_centred", "chips_scale"], ["chips_scaled"]),
        helper.make_node("Transpose", ["chips_scaled"], [network_input], perm=[0, 3, 1, 2]),
    ]
    chips = helper.make_tensor_value_info(CHIPS, TensorProto.UINT8, [dims[0], height, width, 3])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    kept_inputs = [i for i in graph.input if i.name in initializers]  # old IRs list them
    del graph.input[:]
    graph.input.extend([chips, *kept_inputs])
    graph.initializer.extend(constants)
    network_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + network_nodes)
    return rewritten


def check_chips(chips: NDArray[np.uint8], size: tuple[int, int]) -> None:
    """Raise ValueError unless ``chips`` are [N, height, width, 3] uint8 for ``size``
    (width, height)."""
    width, height = size
    if chips.ndim != 4 or chips.shape[1:] != (height, width, 3) or chips.dtype != np.uint8:
        raise ValueError(
            f"expected chips [N, {height}, {width}, 3] uint8, got {chips.dtype} {chips.shape}"
        )


def unit_rows(raw: NDArray[np.float32]) -> NDArray[np.float32]:
    """Each row of ``raw`` [N, D] scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return raw / np.maximum(norms, np.float32(1e-12))


class ChipEmbedder:
    """What serving needs of an embedder: `Embedder` runs the network in this process,
    `facecore.triton.TritonEmbedder` on a Triton server. Each gives ``_run``; the
    checks around it are the same for both."""

    preprocessing: Preprocessing
    dimension: int  # D, the width of an embedding

    @property
    def size(self) -> tuple[int, int]:
        return self.preprocessing.size

    def embed(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """[N, H, W, 3] uint8 BGR chips -> [N, D] float32, each row of unit length."""
        return unit_rows(self.embed_raw(chips))

    def embed_raw(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The network's output as it is, [N, D] float32."""
        check_chips(chips, self.preprocessing.size)
        if len(chips) == 0:
            return np.zeros((0, self.dimension), np.float32)
        return self._run(chips)

    def _run(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The network on N > 0 checked chips: [N, D] float32."""
        raise NotImplementedError


class Embedder(ChipEmbedder):
    """Runs a recognition network on uint8 chips. Only one thread should call
    ``embed`` at a time per session when throughput matters (the streamer's batcher
    thread does)."""

    def __init__(self, session: ort.InferenceSession, preprocessing: Preprocessing) -> None:
        """``session`` runs a network made by ``with_chip_input``; ``load`` makes both."""
        inputs, outputs = session.get_inputs(), session.get_outputs()
        width, height = preprocessing.size
        if (
            len(inputs) != 1
            or inputs[0].name != CHIPS
            or list(inputs[0].shape[1:]) != [height, width, 3]
        ):
            raise ModelLoadError(
                f"expected a session taking {CHIPS} [N, {height}, {width}, 3] "
                f"(made by Embedder.load), got {[(i.name, i.shape) for i in inputs]}"
            )
        self.session = session
        self.preprocessing = preprocessing
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.dimension = int(outputs[0].shape[-1])
        self.provider = session.get_providers()[0]

    @classmethod
    def load(
        cls, path: Path, preprocessing: Preprocessing, *, device: str = "auto", threads: int = 0
    ) -> Embedder:
        """The recognition network at ``path``, ready for chips. Raises
        ``ModelLoadError`` for a file that is not such a network (truncated, say)."""
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf's DecodeError and onnx's own, no shared base
            raise ModelLoadError(f"cannot read the ONNX model {path}: {exc}") from exc
        rewritten = with_chip_input(model, preprocessing).SerializeToString()
        session = create_session(rewritten, device=device, threads=threads, name=str(path))
        return cls(session, preprocessing)

    def _run(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        (out,) = self.session.run([self.output_name], {self.input_name: chips})
        return np.asarray(out, np.float32).reshape(len(chips), -1)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run dummy batches so the first real frame does not pay for lazy set-up."""
        width, height = self.preprocessing.size
        for n in batch_sizes:
            self.embed_raw(np.zeros((n, height, width, 3), np.uint8))
