"""The process-wide part of the live pipeline.

One `Engine` per process holds one `Detector` (one YuNet instance per worker
thread), a small thread pool for the CPU stages (detection, alignment, annotation;
one frame per worker, so OpenCV's own threading is turned down to one thread),
one `BatchRecognizer` (its batcher thread alone owns the ONNX session) and the
current bundle. Each stream gets its own `StreamPipeline` from ``pipeline()``.

A bundle becomes an `ActiveModel` in ``prepare()``: a bundle with the backbone
already serving reuses that session and front end (only the gallery changes); a
new backbone gets a new session, warmed up and checked against the gallery, in the
caller's thread. A bundle cut with another front end than its model now wants is
refused (`facecore.frontend.check_front_end`).
``install()`` hands it to the recognizer, which switches between two batches.
``use_people()`` gives the engine the enrollment store's people as they are now (the
server, ``run`` and ``webcam`` read them whenever the store changes,
`streamer.enroll.people`): a person erased since the bundle was
fitted is unknown from the next batch on, and a renamed one carries the new name,
without waiting for the trainer to publish again.

With ``recognition.backend = "triton"`` the engine holds one `TritonConnection`
instead, and a backbone's embedder is a `TritonEmbedder` of the model named as the
bundle's backbone; a Triton that does not answer the warm-up does not refuse the
bundle (faces are unknown until Triton answers), a Triton serving another network does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from numpy.typing import NDArray

from facecore.bundle import Bundle, load_bundle
from facecore.config import RecognitionSettings, Settings, TrackingSettings
from facecore.cpus import usable_cpus
from facecore.detector import Detector
from facecore.embedder import ChipEmbedder, Embedder
from facecore.errors import BundleError, InferenceServerError, ModelError
from facecore.faces import Faces
from facecore.frontend import FrontEnd, check_front_end
from facecore.publish import bundles_dir, current_bundle_dir
from facecore.text import counted
from facecore.triton import TritonConnection, TritonEmbedder
from streamer.errors import BundleRefusedError, ClosedError
from streamer.live.annotate import Overlay
from streamer.live.fonts import FontSet
from streamer.live.pipeline import StreamPipeline
from streamer.live.recognizer import ActiveModel, BatchRecognizer, EnrolledPeople
from streamer.live.reload import POLL_SECONDS, BundleWatcher
from streamer.live.tracker import scene_signature, view_quality

__all__ = ["Engine"]

log = logging.getLogger(__name__)

T = TypeVar("T")
WARM_UP_BATCH = 2


class Engine:
    """Process-wide: one Detector, one BatchRecognizer (one batcher thread owning
    the ONNX session), the current bundle. A context manager; ``close()`` joins
    every thread and is safe to call twice."""

    def __init__(
        self,
        detector: Detector,
        *,
        fonts: FontSet,
        recognition: RecognitionSettings | None = None,
        tracking: TrackingSettings | None = None,
        bundle: Bundle | None = None,
        workers: int | None = None,
        opencv_threads: int | None = 1,
    ) -> None:
        if opencv_threads is not None:
            # frames are detected in parallel, one per worker: OpenCV's own threads
            # inside each call would only fight them for the same cores (this is
            # process-wide, as the engine is)
            cv2.setNumThreads(opencv_threads)
        self.detector = detector
        self.fonts = fonts
        self.recognition = recognition or RecognitionSettings()
        self.tracking = tracking or TrackingSettings()
        self._triton: TritonConnection | None = None
        if self.recognition.backend == "triton":
            self._triton = TritonConnection(
                self.recognition.triton_url,
                timeout_s=self.recognition.triton_timeout_ms / 1000.0,
                retry_s=self.recognition.triton_retry_s,
            )
        self.recognizer = BatchRecognizer(
            batch_size=self.recognition.batch_size, batch_wait_ms=self.recognition.batch_wait_ms
        )
        self._people: EnrolledPeople | None = None
        self._installing = threading.Lock()  # the watcher's thread and the loop's
        self._warned_another_store: str | None = None  # the bundle folder last warned of
        if bundle is not None:
            try:
                self.install(self.prepare(bundle))  # logs what it serves from the start
            except BundleRefusedError:
                self.recognizer.close()
                if self._triton is not None:
                    self._triton.close()
                raise
        self._pool = ThreadPoolExecutor(
            max_workers=workers or min(4, usable_cpus()), thread_name_prefix="facestream-cpu"
        )
        self._pipelines: weakref.WeakSet[StreamPipeline] = weakref.WeakSet()
        self._watcher: BundleWatcher | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, watch: bool = True) -> Engine:
        """The detector and settings from ``settings``, the bundle that
        ``state_dir/bundles/current`` points at (none: every face is "unknown"), and,
        with ``watch``, a `BundleWatcher` that swaps in each new published bundle."""
        detector = Detector.from_settings(settings)
        published = bundles_dir(settings)
        bundle = None
        current = current_bundle_dir(published)
        if current is not None:
            try:
                bundle = load_bundle(current)
            except BundleError as exc:
                log.error("%s; every face is unknown until a good bundle is published", exc)
        fonts = FontSet(settings.font)
        try:
            engine = cls(
                detector,
                fonts=fonts,
                recognition=settings.recognition,
                tracking=settings.tracking,
                bundle=bundle,
            )
        except BundleRefusedError as exc:
            log.error("%s; every face is unknown until a good bundle is published", exc)
            engine = cls(
                detector, fonts=fonts, recognition=settings.recognition, tracking=settings.tracking
            )
        if watch:  # a bundle refused above is not looked at again until current moves on
            engine.watch(published, looked_at=current)
        return engine

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bundle(self) -> Bundle | None:
        model = self.recognizer.model
        return model.bundle if model is not None else None

    @property
    def bundle_version(self) -> int | None:
        model = self.recognizer.model
        return model.version if model is not None else None

    def pipeline(self, stream_id: str, *, overlay: Overlay | None = None) -> StreamPipeline:
        """A new pipeline for one stream (its own tracks), sharing this engine."""
        if self._closed:
            raise ClosedError("the engine is closed")
        pipeline = StreamPipeline(self, stream_id, overlay=overlay or Overlay())
        self._pipelines.add(pipeline)
        return pipeline

    def prepare(self, bundle: Bundle) -> ActiveModel:
        """Make ``bundle`` ready to serve without disturbing the one serving: reuse
        the serving session when the backbone is the same, else build and warm up a
        new one. Raises `BundleRefusedError` when the bundle cannot serve."""
        manifest = bundle.manifest
        current = self.recognizer.model
        try:
            check_front_end(manifest)
            if current is not None and current.front_end.serves(manifest):
                front_end = current.front_end  # same landmark model: no need to load it again
            else:
                front_end = FrontEnd.of_bundle(bundle)
        except BundleError as exc:
            raise BundleRefusedError(str(exc)) from exc
        if (
            current is not None
            and current.backbone == manifest.backbone_sha256
            and current.embedder.preprocessing == manifest.preprocessing
        ):
            embedder, dimension = current.embedder, current.embedder.dimension
        else:
            embedder, dimension = self._new_embedder(bundle)
        width = bundle.gallery.weights.shape[1]
        if len(bundle.gallery.labels) and width != dimension:
            raise BundleRefusedError(
                f"bundle {bundle.path}: its gallery rows have {width} values, "
                f"its backbone makes {dimension}"
            )
        return ActiveModel(bundle, embedder, front_end)

    def install(self, model: ActiveModel | None) -> None:
        """Serve ``model`` from the next recognition batch on (None: nobody known),
        with the people last given to `use_people`."""
        with self._installing:
            if model is not None:
                model = dataclasses.replace(model, people=self._people)
            self.recognizer.swap(model)
        if model is None:
            log.info("no bundle: every face is unknown")
        else:
            log.info(
                "serving bundle version %d (%s) from %s",
                model.version,
                counted(len(model.gallery.labels), "person"),
                model.bundle.path,
            )
            self._warn_if_another_store(model)

    def use_people(self, people: EnrolledPeople) -> None:
        """Name faces as the store has its people at ``people.revision`` from the next
        batch on (see the module docstring); every stream re-decides its tracks."""
        with self._installing:
            self._people = people
            serving = self.recognizer.model
            if serving is None:
                return
            model = dataclasses.replace(serving, people=people)
            self._warn_if_another_store(model)
            if model.gallery.labels == serving.gallery.labels:
                return
            self.recognizer.swap(model)
        log.info(
            "bundle version %d named as the store has its people at revision %d: %s "
            "(%d erased since it was fitted)",
            model.version, people.revision, counted(len(model.gallery.labels), "person"),
            len(model.bundle.gallery.labels) - len(model.gallery.labels),
        )

    def _warn_if_another_store(self, model: ActiveModel) -> None:
        """Say once per bundle that it names its own people: erasures and renames in
        this store cannot reach it."""
        if not model.of_another_store or self._warned_another_store == str(model.bundle.path):
            return
        self._warned_another_store = str(model.bundle.path)
        log.warning(
            "bundle version %d was fitted on another enrollment store (id %s; this one is "
            "%s): faces are named as it has them, and removals and renames made here do not "
            "reach it. A server and its trainer must share one store "
            "(enrollment.database_url) as well as the bundles folder",
            model.version, model.bundle.manifest.store_id,
            model.people.store_id if model.people else "unknown",
        )

    def swap_bundle(self, bundle: Bundle | None) -> None:
        """``install(prepare(bundle))``: thread-safe; takes effect between batches,
        no frame is lost. Builds a session when the backbone is new, so call it
        off the event loop."""
        self.install(self.prepare(bundle) if bundle is not None else None)

    def watch(
        self, bundles_dir: Path, *, interval: float = POLL_SECONDS, looked_at: Path | None = None
    ) -> BundleWatcher:
        """Start following ``bundles_dir/current`` (closed with the engine).
        ``looked_at``: a bundle folder already tried (default: the one serving)."""
        if self._watcher is None:
            if looked_at is None and self.bundle is not None:
                looked_at = self.bundle.path
            self._watcher = BundleWatcher(self, bundles_dir, interval=interval, loaded=looked_at)
        return self._watcher

    def detect(
        self, frame: NDArray[np.uint8]
    ) -> tuple[Faces, NDArray[np.float32], NDArray[np.float32]]:
        """Faces in ``frame``, their `view_quality` [N] and the frame's
        `scene_signature` (runs in a worker thread)."""
        faces = self.detector.detect(frame)
        return faces, view_quality(frame, faces), scene_signature(frame)

    async def run_cpu(self, function: Callable[..., T], *args: object) -> T:
        """Run CPU work on the engine's pool, off the event loop."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        except RuntimeError as exc:
            if self._closed:
                raise ClosedError("the engine is closed") from exc
            raise

    def close(self) -> None:
        """Stop watching, close every pipeline, the recognizer and the pool. Safe twice."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.close()
        for pipeline in list(self._pipelines):
            pipeline.close()
        self.recognizer.close()
        if self._triton is not None:
            self._triton.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _new_embedder(self, bundle: Bundle) -> tuple[ChipEmbedder, int]:
        """A session for the bundle's backbone, run once on a warm-up batch."""
        width, height = bundle.manifest.preprocessing.size
        embedder: ChipEmbedder
        try:
            if self._triton is not None:
                embedder = TritonEmbedder(
                    self._triton,
                    bundle.manifest.backbone_name,
                    bundle.manifest.preprocessing,
                    backbone_sha256=bundle.manifest.backbone_sha256,
                    dimension=int(bundle.gallery.weights.shape[1]),
                )
            else:
                embedder = Embedder.load(
                    bundle.backbone_path,
                    bundle.manifest.preprocessing,
                    device=self.recognition.device,
                    threads=self.recognition.threads,
                )
            out = embedder.embed_raw(np.full((WARM_UP_BATCH, height, width, 3), 128, np.uint8))
        except InferenceServerError as exc:
            log.error("%s; bundle %s serves once Triton answers", exc, bundle.path)
            return embedder, embedder.dimension
        except ModelError as exc:
            raise BundleRefusedError(
                f"bundle {bundle.path}: its backbone cannot serve: {exc}"
            ) from exc
        except Exception as exc:  # onnxruntime's run errors have no exported base class
            raise BundleRefusedError(
                f"bundle {bundle.path}: its backbone failed on a warm-up batch: {exc}"
            ) from exc
        if out.ndim != 2 or len(out) != WARM_UP_BATCH or not np.isfinite(out).all():
            raise BundleRefusedError(
                f"bundle {bundle.path}: its backbone gave {out.shape} non-finite or misshapen "
                f"embeddings for a warm-up batch of {WARM_UP_BATCH}"
            )
        return embedder, int(out.shape[1])
