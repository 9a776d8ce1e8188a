"""The one place ONNX Runtime sessions are made.

``device="auto"`` takes the CUDA provider when this onnxruntime build has it *and*
an NVIDIA driver is loaded; otherwise the CPU. ``onnxruntime-gpu`` lists the CUDA
provider even on a machine without a GPU (and logs loud errors when asked to use it
there), so "auto" first looks for the driver, and every caller asks the session
which provider it really got. Before a CUDA session, the CUDA and cuDNN libraries of
pip's ``nvidia-*`` packages (``pip install onnxruntime-gpu[cuda,cudnn]``) are loaded
when they are installed; otherwise the system's are used.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from facecore.errors import ModelLoadError

__all__ = ["DEVICES", "create_session", "gpu_present"]

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def create_session(
    model: Path | bytes, *, device: str = "auto", threads: int = 0, name: str | None = None
) -> ort.InferenceSession:
    """An inference session for the model at a path, or serialised in ``bytes``
    (``name`` then says where it came from, for errors).

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
    has_cuda_build = _CUDA in ort.get_available_providers()
    wants_cuda = has_cuda_build and (device == "cuda" or (device == "auto" and gpu_present()))
    # Live batches come in every size up to the batch limit, and cuDNN's default
    # exhaustive search would benchmark each new size in the middle of a stream,
    # stalling it for hundreds of milliseconds; its heuristic choice costs nothing.
    cuda = (_CUDA, {"cudnn_conv_algo_search": "HEURISTIC"})
    providers: list[str | tuple[str, dict[str, str]]] = [cuda, _CPU] if wants_cuda else [_CPU]
    if wants_cuda:
        ort.preload_dlls()
    source = model if isinstance(model, bytes) else str(model)
    name = name or (source if isinstance(source, str) else "a model in memory")
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ModelLoadError(f"ONNX Runtime cannot load {name}: {exc}") from exc
    if device == "cuda" and session.get_providers()[0] != _CUDA:
        raise ModelLoadError(
            f"device 'cuda' was asked for, but ONNX Runtime could not use a GPU for {name}; "
            "use device 'auto' or 'cpu'"
        )
    return session


def gpu_present() -> bool:
    """Whether an NVIDIA driver is loaded on this machine."""
    return _NVIDIA_DRIVER.exists()
