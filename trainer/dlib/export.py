"""Export embedders to ONNX, checked against torch, and cache the dlib ResNet conversion.

The exported graph has one input ``chips`` ``[batch,3,S,S]`` float32 (already
normalised) and one output ``embeddings`` ``[batch,D]``; the batch axis is dynamic.
The preprocessing is stored in the model's ``metadata_props`` so loaders read it
instead of guessing it from the graph.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from facecore.download import sha256_file
from facecore.registry import ensure_model_cache, record_checksum, recorded_checksum_matches
from trainer.dlib.resnet import DlibResNet
from trainer.errors import ExportCheckError

__all__ = ["export_onnx", "prepare_dlib_resnet"]

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "chips"
OUTPUT_NAME = "embeddings"
CHECK_TOLERANCE = 1e-4


def _max_abs_diff_vs_torch(model: nn.Module, onnx_path: Path, input_size: int) -> float:
    """Run a random batch through torch and ONNX Runtime (CPU); max abs difference."""
    gen = torch.Generator().manual_seed(0)
    # Normalised chips lie in about [-0.5, 0.6]: (0..255 - mean) / 256.
    chips = torch.rand(3, 3, input_size, input_size, generator=gen) * 1.1 - 0.5
    with torch.no_grad():
        expected = model(chips).numpy()
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: chips.numpy()})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ExportCheckError(f"ONNX Runtime could not run {onnx_path.name}: {exc}") from exc
    if actual.shape != expected.shape:
        raise ExportCheckError(f"ONNX output shape {actual.shape}, torch {expected.shape}")
    return float(np.max(np.abs(actual - expected)))


def export_onnx(model: nn.Module, path: Path, *, input_size: int,
                metadata: dict[str, str]) -> float:
    """Export ``model`` to ``path`` (opset 17, dynamic batch) and return the checked diff.

    The file is written to a temporary name in the same folder, checked with ONNX
    Runtime on CPU against torch (raises :class:`ExportCheckError` above 1e-4), and only
    then moved into place with ``os.replace``, so ``path`` never holds a bad model.
    """
    path = Path(path)
    model = model.eval()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs
            # onnxscript; this project does not depend on it.  It also warns that it
            # cannot fold the reversed pad lists of F.pad (ONNX Runtime folds them).
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1",
                                    category=UserWarning)
            torch.onnx.export(
                model, (torch.zeros(1, 3, input_size, input_size),), str(tmp),
                dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = _max_abs_diff_vs_torch(model, tmp, input_size)
        log.info("ONNX export %s: max abs diff vs torch %.3g", path.name, diff)
        if not diff <= CHECK_TOLERANCE:
            raise ExportCheckError(
                f"ONNX output differs from torch by {diff:.3g} (> {CHECK_TOLERANCE})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def _dlib_metadata(model: DlibResNet, source: Path, digest: str) -> dict[str, str]:
    """``preprocessing`` holds the fields of ``facecore.embedder.Preprocessing`` as JSON:
    the network wants NCHW ``(pixel - mean) * scale`` in ``colour`` order."""

    def f32(value: float) -> float:
        return float(str(np.float32(value)))  # shortest decimal of the stored float32

    preprocessing = {
        "size": [model.input_size, model.input_size],
        "colour": "rgb",
        "mean": [f32(m) for m in model.input_mean_rgb],
        "scale": model.input_scale,
    }
    return {
        "model": "dlib_resnet_v1",
        "source_file": source.name,
        "source_sha256": digest,
        "preprocessing": json.dumps(preprocessing),
        "embedding_dim": str(model.embedding_dim),
        "embedding_normalised": "false",
        "distance_threshold": str(f32(model.distance_threshold)),
    }


def prepare_dlib_resnet(source: Path, cache_dir: Path) -> Path:
    """Convert dlib's ResNet ``.dat`` to ONNX once, its sha256 recorded beside it;
    later calls return the cached file while it matches that record, and convert again
    when it does not (damaged). `ModelError` when ``cache_dir`` cannot be written."""
    source, cache_dir = Path(source), Path(cache_dir)
    digest = sha256_file(source)
    target = cache_dir / f"dlib_resnet_v1-{digest[:16]}.onnx"
    if recorded_checksum_matches(target):
        log.info("using cached ONNX conversion %s", target)
        return target
    if target.exists():
        log.warning("the cached ONNX conversion %s is damaged: converting again", target)
    ensure_model_cache(cache_dir)
    model = DlibResNet.from_dat(source)
    export_onnx(model, target, input_size=model.input_size,
                metadata=_dlib_metadata(model, source, digest))
    record_checksum(target)
    log.info("converted %s to %s", source.name, target)
    return target
