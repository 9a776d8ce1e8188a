"""Errors raised by the trainer package.

Hierarchy::

    TrainerError(Exception)        base class for everything the trainer raises
     ├── DlibFormatError(TrainerError, ValueError)
     │                             a dlib ``serialize()`` file is truncated, corrupt,
     │                             or holds a layer/network this reader does not know;
     │                             the message names the byte offset
     └── ExportCheckError(TrainerError)
                                   an exported ONNX model failed to load in ONNX Runtime
                                   or its output differs from the torch model
"""

from __future__ import annotations

__all__ = ["DlibFormatError", "ExportCheckError", "TrainerError"]


class TrainerError(Exception):
    """Base class for trainer errors."""


class DlibFormatError(TrainerError, ValueError):
    """A dlib model file could not be read; the message names the byte offset."""


class ExportCheckError(TrainerError):
    """An exported ONNX model does not run in ONNX Runtime or does not match torch."""
