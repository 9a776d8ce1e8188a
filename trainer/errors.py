"""Errors raised by the trainer package.

Hierarchy::

    TrainerError(Exception)        base class for everything the trainer raises
     ├── DlibFormatError(TrainerError, ValueError)
     │                             a dlib ``serialize()`` file is truncated, corrupt,
     │                             or holds a layer/network this reader does not know;
     │                             the message names the byte offset
     ├── ExportCheckError(TrainerError)
     │                             an exported ONNX model failed to load in ONNX Runtime
     │                             or its output differs from the torch model
     └── TrainerBusyError(TrainerError, FacestreamError)
                                   another trainer holds ``state_dir/trainer.lock`` (the
                                   service, or another ``--once``); the message names
                                   its process id. The ``facestream`` command reports
                                   it as one line
"""

from __future__ import annotations

from facecore.errors import FacestreamError

__all__ = ["DlibFormatError", "ExportCheckError", "TrainerBusyError", "TrainerError"]


class TrainerError(Exception):
    """Base class for trainer errors."""


class DlibFormatError(TrainerError, ValueError):
    """A dlib model file could not be read; the message names the byte offset."""


class ExportCheckError(TrainerError):
    """An exported ONNX model does not run in ONNX Runtime or does not match torch."""


class TrainerBusyError(TrainerError, FacestreamError):
    """Another trainer is running on the same state folder; only one may publish."""
