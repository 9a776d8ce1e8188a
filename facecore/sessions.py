"""The one place ONNX Runtime sessions are made.

``device="auto"`` takes the CUDA provider when this onnxruntime build has it *and*
a GPU answers; otherwise the CPU. ``onnxruntime-gpu`` lists the CUDA provider even
on a machine without a GPU, so we ask the session which provider it really got.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from facecore.errors import ModelLoadError

__all__ = ["DEVICES", "create_session"]

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def create_session(path: Path, *, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """An inference session for the model at ``path``.

    ``threads`` is ONNX Runtime's intra-op thread count (0: its default, one per
    core). Raises ``ModelLoadError`` for a file ONNX Runtime cannot load, or when
    ``device="cuda"`` is asked for and no GPU is usable.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # a missing GPU under "auto" is expected, not an error
    wants_cuda = device != "cpu" and _CUDA in ort.get_available_providers()
    providers = [_CUDA, _CPU] if wants_cuda else [_CPU]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    if device == "cuda" and session.get_providers()[0] != _CUDA:
        raise ModelLoadError(
            f"device 'cuda' was asked for, but ONNX Runtime could not use a GPU for {path}; "
            "use device 'auto' or 'cpu'"
        )
    return session
