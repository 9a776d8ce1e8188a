"""Errors raised by facestream.

Every error meant for the user derives from `FacestreamError`; the `facestream` command
prints such an error as one line (`facestream: error: ...`) and exits with status 2.
Anything else is a bug and keeps its traceback.

    FacestreamError
    ├── ConfigError            a setting is wrong: names the key, the value and its origin
    ├── ModelError             a model file cannot be used
    │   ├── ModelNotFoundError not on disk and not downloadable: names the file, the
    │   │                      URLs tried and the exact path where to put it by hand
    │   ├── ChecksumError      a file's sha256 or size is not the pinned one (for a
    │   │                      converted file: the one recorded at its conversion)
    │   └── ModelLoadError     the runtime (ONNX Runtime, cv2) refused a file, or a
    │                          Triton model is not the one the bundle needs
    ├── InferenceServerError   the inference server (Triton) is unreachable or did not
    │                          answer in time: names its URL; may pass by itself
    ├── BundleError            a trained bundle is missing, incomplete or inconsistent
    │   └── PublishError       the bundles folder cannot be written (read-only, its owner)
    └── SourceError            a video or image source cannot be opened or read

Foreign errors (OSError, onnxruntime, cv2, sqlite3, tritonclient) are translated where they happen,
with `raise ... from err`, so the cause stays visible with `--log-level debug`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BundleError",
    "ChecksumError",
    "ConfigError",
    "FacestreamError",
    "InferenceServerError",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PublishError",
    "SourceError",
]


class FacestreamError(Exception):
    """Base of every error that facestream reports to the user as one line."""


class ConfigError(FacestreamError):
    """A setting cannot be used.

    With `key`, the message reads ``server.port = 'abc' (from environment
    FACESTREAM_SERVER_PORT): expected an integer``; without, it is `reason` alone (for
    example a config file that is not valid TOML, which names the file and line).
    """

    def __init__(
        self,
        reason: str,
        *,
        key: str | None = None,
        value: object = None,
        origin: str | None = None,
    ) -> None:
        self.reason = reason
        self.key = key
        self.value = value
        self.origin = origin
        if key is None:
            message = reason
        else:
            where = f" (from {origin})" if origin else ""
            message = f"{key} = {_as_written(value)}{where}: {reason}"
        super().__init__(message)


def _as_written(value: object) -> str:
    """A setting's value as a config file writes it (TOML's ``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_written(v) for v in value) + "]"
    return repr(value)


class ModelError(FacestreamError):
    """A model file cannot be found, verified or loaded."""


class ModelNotFoundError(ModelError):
    """A model file is not on disk and could not be downloaded.

    `filename` is the file looked for, `urls` the places tried (each with the reason it
    failed in `failures`), `destination` the exact path where a file put by hand is
    found. `hint`, when given, replaces the standard advice (for a model that is
    produced by a command rather than downloaded).
    """

    def __init__(
        self,
        filename: str,
        *,
        urls: Sequence[str] = (),
        failures: Sequence[str] = (),
        destination: Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.filename = filename
        self.urls = tuple(urls)
        self.failures = tuple(failures)
        self.destination = destination
        parts = [f"model file {filename} not found"]
        if self.failures:
            parts.append("download failed: " + "; ".join(self.failures))
        elif self.urls:
            parts.append("download it from " + " or ".join(self.urls))
        if hint is not None:
            parts.append(hint)
        elif destination is not None:
            parts.append(
                f"put it by hand at {destination}, or in a folder given with "
                "--models-dir DIR (or FACESTREAM_MODELS_DIR)"
            )
        super().__init__("; ".join(parts))


class ChecksumError(ModelError):
    """A model file's content is not the pinned one (wrong file or truncated)."""

    def __init__(
        self,
        path: Path | str,
        *,
        expected_sha256: str | None,
        actual_sha256: str | None,
        expected_size: int | None,
        actual_size: int,
        hint: str = "delete it and fetch it again (facestream models fetch)",
    ) -> None:
        self.path = path  # a Path on disk, or the URL a download came from
        self.expected_sha256 = expected_sha256  # None: a converted file without its record
        self.actual_sha256 = actual_sha256
        self.expected_size = expected_size
        self.actual_size = actual_size
        want_size = "any size" if expected_size is None else f"{expected_size} bytes"
        got_sha = "not computed" if actual_sha256 is None else actual_sha256
        if expected_sha256 is None:  # a converted file without the record of its conversion
            message = f"{path} cannot be checked: no sha256 was recorded for it"
        else:
            message = (
                f"{path} is not the expected file: sha256 {got_sha}, {actual_size} bytes; "
                f"expected sha256 {expected_sha256}, {want_size}"
            )
        super().__init__(f"{message}; {hint}")


class ModelLoadError(ModelError):
    """The inference runtime could not load or run a model file."""


class InferenceServerError(FacestreamError):
    """The inference server cannot be reached or did not answer within its timeout.

    Unlike `ModelLoadError` this may pass: the live recognizer marks faces unknown
    and tries again. `url` is the server's address."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"the Triton server at {url} {reason}")


class BundleError(FacestreamError):
    """A trained bundle (model + gallery + metadata) is missing or inconsistent."""


class PublishError(BundleError):
    """A bundle cannot be written into the bundles folder: it is read-only (a shared
    filesystem mounted so), belongs to another user, or is full."""


class SourceError(FacestreamError):
    """A video, camera or image source cannot be opened or read."""
