"""A Triton Inference Server model repository for a recognition network.

``write_triton_repo(directory, source, ...)`` writes one model::

    DIR/<name>/config.pbtxt     platform onnxruntime_onnx, dynamic batching
    DIR/<name>/1/model.onnx     the network rewritten by ``with_chip_input``

so Triton takes uint8 BGR chips [N, H, W, 3] as the in-process session does (a
quarter of the bytes of float NCHW over the network, and the same embeddings). The
config's input and output names, types and dims are read from that rewritten graph,
never typed in. Two ``parameters`` record what the model is, and `TritonEmbedder`
checks them against the bundle it serves: the sha256 of the source ONNX file (the
bundle's ``backbone_sha256``) and the preprocessing baked into the graph.

``<name>`` is the registry name of the model (the bundle's ``backbone_name``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from facecore.download import sha256_file
from facecore.embedder import Preprocessing, with_chip_input
from facecore.errors import ModelError, ModelLoadError
from facecore.files import os_reason

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_DELAY_US",
    "MODEL_FILE",
    "PARAM_BACKBONE_SHA256",
    "PARAM_PREPROCESSING",
    "TensorConfig",
    "TritonModelConfig",
    "preprocessing_text",
    "triton_model_config",
    "write_triton_repo",
]

MODEL_FILE = "model.onnx"
MODEL_VERSION = "1"
PARAM_BACKBONE_SHA256 = "facestream_backbone_sha256"
PARAM_PREPROCESSING = "facestream_preprocessing"
# Triton batches across every worker and box: room for several streams' faces, and a
# queue delay well under a frame's time at 15 fps
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_DELAY_US = 2000

_TRITON_TYPES = {
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str  # Triton's name: "TYPE_UINT8", "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension; -1 = any size


@dataclass(frozen=True)
class TritonModelConfig:
    """What ``config.pbtxt`` says (one input, one output)."""

    name: str
    max_batch_size: int
    input: TensorConfig
    output: TensorConfig
    max_queue_delay_us: int
    backbone_sha256: str
    preprocessing: Preprocessing

    def to_pbtxt(self) -> str:
        """The config in Triton's protobuf text format."""
        parameters = {
            PARAM_BACKBONE_SHA256: self.backbone_sha256,
            PARAM_PREPROCESSING: preprocessing_text(self.preprocessing),
        }
        lines = [
            f"name: {_quoted(self.name)}",
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {self.max_batch_size}",
            *_tensor("input", self.input),
            *_tensor("output", self.output),
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {self.max_queue_delay_us}",
            "}",
        ]
        for key, value in parameters.items():
            lines += [
                "parameters {",
                f"  key: {_quoted(key)}",
                f"  value {{ string_value: {_quoted(value)} }}",
                "}",
            ]
        return "\n".join(lines) + "\n"


def preprocessing_text(preprocessing: Preprocessing) -> str:
    """The preprocessing as the config records it (compared as text)."""
    return json.dumps(asdict(preprocessing), sort_keys=True)


def triton_model_config(
    model: onnx.ModelProto,
    *,
    name: str,
    backbone_sha256: str,
    preprocessing: Preprocessing,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> TritonModelConfig:
    """The config of ``model``, a graph made by ``with_chip_input``."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must not be negative, got {max_queue_delay_us}")
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or not model.graph.output:
        raise ModelLoadError("a recognition model must have one input and an embedding output")
    return TritonModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        input=_tensor_config(inputs[0]),
        output=_tensor_config(model.graph.output[0]),
        max_queue_delay_us=max_queue_delay_us,
        backbone_sha256=backbone_sha256,
        preprocessing=preprocessing,
    )


def write_triton_repo(
    directory: Path,
    source: Path,
    *,
    name: str,
    preprocessing: Preprocessing,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> TritonModelConfig:
    """Write model ``name`` (the ONNX network at ``source``) into the repository
    ``directory``, replacing an earlier copy; its config is returned. `ModelError`
    when ``directory`` cannot be written (read-only, or a file is in the way)."""
    try:
        network = onnx.load(str(source))
    except Exception as exc:  # protobuf's DecodeError and onnx's own, no shared base
        raise ModelLoadError(f"cannot read the ONNX model {source}: {exc}") from exc
    rewritten = with_chip_input(network, preprocessing)
    config = triton_model_config(
        rewritten,
        name=name,
        backbone_sha256=sha256_file(source),
        preprocessing=preprocessing,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
    )
    version_dir = directory / name / MODEL_VERSION
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
        _replace(version_dir / MODEL_FILE, rewritten.SerializeToString())
        _replace(directory / name / "config.pbtxt", config.to_pbtxt().encode())
    except OSError as err:
        raise ModelError(
            f"cannot write the Triton model repository {directory}: {os_reason(err, directory)}"
        ) from err
    return config


def _tensor_config(value: onnx.ValueInfoProto) -> TensorConfig:
    tensor = value.type.tensor_type
    if tensor.elem_type not in _TRITON_TYPES:
        raise ModelLoadError(
            f"tensor {value.name} has ONNX type {TensorProto.DataType.Name(tensor.elem_type)}, "
            f"which facestream does not map to Triton"
        )
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if not dims or dims[0] != -1:
        raise ModelLoadError(
            f"tensor {value.name} has shape {dims}: Triton's batching needs a free "
            "first (batch) dimension"
        )
    return TensorConfig(value.name, _TRITON_TYPES[tensor.elem_type], tuple(dims[1:]))


def _tensor(kind: str, tensor: TensorConfig) -> list[str]:
    return [
        f"{kind} [",
        "  {",
        f"    name: {_quoted(tensor.name)}",
        f"    data_type: {tensor.data_type}",
        f"    dims: [ {', '.join(str(d) for d in tensor.dims)} ]",
        "  }",
        "]",
    ]


def _quoted(text: str) -> str:
    """A protobuf text-format string: JSON's escapes are a subset of its own."""
    return json.dumps(text)


def _replace(path: Path, data: bytes) -> None:
    """Write by rename, so a Triton polling the repository never reads half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
