"""Errors raised by the live pipeline.

    FacestreamError (facecore.errors)
    ├── SourceError (facecore.errors)  a camera, video file or stream URL cannot be
    │                                  opened or read; names the device, file or URL
    └── StreamerError                  the live pipeline cannot go on
        ├── ClosedError                work handed to a pipeline, engine or recognizer
        │                              that was already closed
        ├── BundleRefusedError         a published bundle failed its warm-up check; the
        │                              bundle that was serving keeps serving
        └── OutputError                an output (video file, window) cannot be written

A source that ends (the end of a file) is not an error: ``read()`` returns None.
"""

from __future__ import annotations

from facecore.errors import FacestreamError

__all__ = ["BundleRefusedError", "ClosedError", "OutputError", "StreamerError"]


class StreamerError(FacestreamError):
    """Base of the live pipeline's own errors."""


class ClosedError(StreamerError):
    """A pipeline, engine or recognizer was used after ``close()``."""


class BundleRefusedError(StreamerError):
    """A bundle loaded but could not serve (its backbone failed to run or disagrees
    with its gallery); the message names the bundle and the reason."""


class OutputError(StreamerError):
    """An output video file or display window cannot be opened."""
