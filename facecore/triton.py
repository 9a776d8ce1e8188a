"""Recognition on a Triton Inference Server, behind the in-process embedder's interface.

`TritonConnection` owns one asyncio loop thread and one ``tritonclient.grpc.aio``
client (a gRPC channel); a process needs one, shared by every `TritonEmbedder`.
`TritonEmbedder` has the `Embedder` methods the streamer uses (``preprocessing``,
``dimension``, ``embed``, ``embed_raw``), so the pipeline does not know which it has.
Its calls block the calling thread (the recognizer's batcher thread) while the request
runs on the connection's loop; Triton batches requests of every worker and box with
its dynamic batcher.

Triton serves the graph ``facestream models triton-repo`` writes (facecore.triton_repo):
uint8 BGR chips in, embeddings out. On its first answer the embedder checks the
model's config against the bundle (names, dims, the source file's sha256 and the
preprocessing baked into the graph) and raises `ModelLoadError` when it is another
model. Triton that is down or slow raises `InferenceServerError`: after one, calls
fail at once, without a request, for ``retry_s`` (so a slow Triton does not slow the
video), and then Triton is asked again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from facecore.embedder import CHIPS, ChipEmbedder, Preprocessing
from facecore.errors import InferenceServerError, ModelLoadError
from facecore.triton_repo import PARAM_BACKBONE_SHA256, PARAM_PREPROCESSING, preprocessing_text

__all__ = ["TritonConnection", "TritonEmbedder"]

T = TypeVar("T")

# gRPC's default reconnect backoff grows to two minutes; a Triton that restarts
# should be found again within a retry or two
_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
]
_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


class TritonConnection:
    """One gRPC client of the Triton server at ``url`` (host:port) and the loop
    thread it runs on. ``timeout_s`` bounds each request; after a failure, calls
    fail at once for ``retry_s``. A context manager; ``close()`` is safe twice."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, retry_s: float = 2.0) -> None:
        try:
            from tritonclient.grpc import aio
        except ImportError as exc:
            raise ModelLoadError(
                "recognition.backend = 'triton' needs the tritonclient package: "
                "pip install 'facestream[triton]'"
            ) from exc
        self.url = url
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._failed_at: float | None = None
        self._failure = ""
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="facestream-triton", daemon=True
        )
        self._thread.start()

        async def connect() -> Any:  # the channel belongs to the loop it is made on
            return aio.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

        self._client = self._submit(connect()).result()

    def __enter__(self) -> TritonConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the loop thread. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._submit(self._client.close()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def model_config(self, model: str) -> Any:
        """Triton's ``ModelConfig`` message of ``model``."""
        response = self._call(self._client.get_model_config(model, client_timeout=self.timeout_s))
        return response.config

    def infer(self, model: str, name: str, data: NDArray[Any], output: str) -> NDArray[Any]:
        """``output`` of ``model`` for the input tensor ``name`` = ``data``."""
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import np_to_triton_dtype

        tensor = InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        result = self._call(
            self._client.infer(
                model,
                [tensor],
                outputs=[InferRequestedOutput(output)],
                client_timeout=self.timeout_s,
            )
        )
        return np.asarray(result.as_numpy(output))

    def _call(self, request: Coroutine[Any, Any, T]) -> T:
        """Run one request on the loop and wait for it, translating tritonclient's
        errors: `InferenceServerError` when Triton is unreachable or late,
        `ModelLoadError` when it refuses the request."""
        from tritonclient.utils import InferenceServerException

        with self._lock:
            closed, failure = self._closed, self._failure
            since = None if self._failed_at is None else time.monotonic() - self._failed_at
        if closed:
            request.close()
            raise InferenceServerError(self.url, "connection is closed")
        if since is not None and since < self.retry_s:
            request.close()
            raise InferenceServerError(
                self.url, f"{failure}; asking again in {self.retry_s - since:.1f} s"
            )
        late = f"did not answer within {self.timeout_s * 1000:.0f} ms"
        try:
            # the client's own deadline ends the request; the margin covers a loop
            # that is slow to report it
            answer = self._submit(request).result(timeout=self.timeout_s + 5.0)
        except InferenceServerException as exc:
            status = str(exc.status())
            if status not in _UNAVAILABLE:
                raise ModelLoadError(f"Triton at {self.url} refused the request: {exc}") from exc
            reason = (
                late
                if status == "StatusCode.DEADLINE_EXCEEDED"
                else f"is unreachable ({exc.message()})"
            )
            self._failed(reason)
            raise InferenceServerError(self.url, reason) from exc
        except TimeoutError as exc:
            self._failed(late)
            raise InferenceServerError(self.url, late) from exc
        with self._lock:
            self._failed_at = None
        return answer

    def _failed(self, reason: str) -> None:
        with self._lock:
            self._failed_at, self._failure = time.monotonic(), reason

    def _submit(self, request: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(request, self._loop)


class TritonEmbedder(ChipEmbedder):
    """The recognition network ``model`` served by Triton, for chips made with
    ``preprocessing``; ``backbone_sha256`` and ``dimension`` are what the bundle
    needs (its backbone file's hash, its gallery's width; 0 for a gallery of nobody:
    the model's own), checked on first contact.
    Holds no resources of its own: the connection is closed by its owner."""

    def __init__(
        self,
        connection: TritonConnection,
        model: str,
        preprocessing: Preprocessing,
        *,
        backbone_sha256: str,
        dimension: int,
    ) -> None:
        self.connection = connection
        self.model = model
        self.preprocessing = preprocessing
        self.backbone_sha256 = backbone_sha256
        self.dimension = dimension
        self.provider = f"triton {connection.url}"
        self.output_name: str | None = None  # known once the config is checked
        self.max_batch = 1  # the model's max_batch_size, read with the config

    def _run(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        output = self.output_name or self._check_model()
        # Triton refuses a request past the model's max_batch_size: send it in parts
        parts = [
            self.connection.infer(self.model, CHIPS, np.ascontiguousarray(part), output)
            for part in np.split(chips, range(self.max_batch, len(chips), self.max_batch))
        ]
        return np.concatenate(parts).astype(np.float32, copy=False).reshape(len(chips), -1)

    def _check_model(self) -> str:
        """Check that Triton's ``model`` is the bundle's network; its output name."""
        config = self.connection.model_config(self.model)
        where = f"Triton model {self.model} at {self.connection.url}"
        hint = "write the repository again with `facestream models triton-repo`"
        width, height = self.preprocessing.size
        inputs = [(i.name, list(i.dims)) for i in config.input]
        if inputs != [(CHIPS, [height, width, 3])]:
            raise ModelLoadError(
                f"{where} takes {inputs}, not {CHIPS} [{height}, {width}, 3]; {hint}"
            )
        outputs = [(o.name, list(o.dims)) for o in config.output]
        wanted = [self.dimension] if self.dimension else [outputs[0][1][0]] if outputs else []
        if len(outputs) != 1 or outputs[0][1] != wanted or wanted[0] < 1:
            raise ModelLoadError(
                f"{where} gives {outputs}, the bundle's gallery wants [{self.dimension}]"
            )
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        served = parameters.get(PARAM_BACKBONE_SHA256)
        if served != self.backbone_sha256:
            raise ModelLoadError(
                f"{where} is the network with sha256 {served}, the bundle's backbone is "
                f"{self.backbone_sha256}; {hint}"
            )
        if parameters.get(PARAM_PREPROCESSING) != preprocessing_text(self.preprocessing):
            raise ModelLoadError(
                f"{where} was written for preprocessing {parameters.get(PARAM_PREPROCESSING)}, "
                f"the bundle's is {preprocessing_text(self.preprocessing)}; {hint}"
            )
        self.dimension = wanted[0]
        self.max_batch = max(1, int(config.max_batch_size))
        self.output_name = outputs[0][0]
        return self.output_name
