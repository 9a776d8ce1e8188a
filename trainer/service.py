"""The trainer service: re-fit and publish a bundle whenever the enrollment store changes.

One run (``TrainerService.run_once``):

1. read the store's revision; when the current bundle was built from that revision
   with the same backbone (file, alignment template, preprocessing), there is
   nothing to do;
2. embed every sample, clean and augmented (``trainer.embeddings``; cached, so only
   new samples cost anything);
3. choose the head, the prototype baseline or the fitted cosine head, and calibrate
   its threshold (``trainer.selection``);
4. publish (``facecore.publish``): inside the build step the bundle is written, the
   exported head is checked against the torch head, and the training report is
   written into the bundle directory, so that all of it appears at once with the
   ``current`` pointer switch. A crash or a stop at any point leaves the previous
   bundle in force; the next run removes the half-built directory.

``serve`` repeats that every ``settings.trainer.poll_seconds`` and reports to systemd
(``READY=1``, ``STATUS=``) when run as a notify-type service. SIGTERM is turned into
``StopRequested`` by the command (``trainer.train_cli``), which unwinds whatever is in
progress and exits cleanly.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from enrollment.store import EnrollmentStore, Person, Sample
from facecore import systemd
from facecore.bundle import MANIFEST_FILE, Bundle, BundleManifest, write_bundle
from facecore.config import Settings
from facecore.errors import BundleError, FacestreamError
from facecore.publish import current_bundle_dir, publish
from trainer.augment import Augmentation
from trainer.backbone import Backbone
from trainer.embeddings import embed_samples
from trainer.fit import CosineHead, FitConfig
from trainer.gallery import DEFAULT_THRESHOLD
from trainer.report import ReportContext, write_report
from trainer.selection import Selection, select_head

__all__ = [
    "StopRequested",
    "TrainerService",
    "bundles_dir",
    "check_export",
    "describe",
    "enrollment_dir",
]

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-5  # max |numpy on the written head - torch head| on the probes
RETRY_SECONDS = 60.0  # after a failed run, wait this long before retrying the same revision


class StopRequested(BaseException):
    """The service was asked to stop (SIGTERM) and unwinds from wherever it was.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way may
    swallow it."""


def bundles_dir(settings: Settings) -> Path:
    """Where bundles are published: ``state_dir/bundles`` (the streamer reads ``current``)."""
    return settings.state_dir / "bundles"


def enrollment_dir(settings: Settings) -> Path:
    return settings.state_dir / "enrollment"


@dataclass(frozen=True)
class _Fitted:
    """What one run fitted, for its build step."""

    revision: int
    created: str  # ISO 8601, UTC
    people: tuple[Person, ...]  # one head row each
    sample_counts: tuple[int, ...]  # per person
    people_without_samples: int
    embedded: int  # samples embedded by this run
    selection: Selection | None  # None when nobody has a sample


class TrainerService:
    """Owns the enrollment store connection and the backbone's ONNX session.

    ``backbone``, ``recipe`` and ``config`` default to the settings' recognizer and the
    standard augmentation and fitting recipes. ``publish_pause`` (seconds) sleeps
    inside the build step, after the bundle and its report are complete and before
    they are published: a test hook to kill the process mid-publish."""

    def __init__(
        self,
        settings: Settings,
        *,
        backbone: Backbone | None = None,
        recipe: Augmentation | None = None,
        config: FitConfig | None = None,
        progress: bool = True,
        publish_pause: float = 0.0,
        notify: Callable[[str], object] = systemd.notify,
    ) -> None:
        self.settings = settings
        self.bundles_dir = bundles_dir(settings)
        self.recipe = recipe or Augmentation()
        self.config = config or FitConfig()
        self.progress = progress
        self.publish_pause = publish_pause
        self.notify = notify
        self.store = EnrollmentStore(enrollment_dir(settings))
        try:
            self.backbone = backbone or Backbone.from_settings(settings)
        except BaseException:
            self.store.close()
            raise

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TrainerService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- one run --------------------------------------------------------------------

    def current_manifest(self) -> BundleManifest | None:
        """The manifest ``current`` points at; None before the first publish or when it
        cannot be read (then the next run replaces that bundle)."""
        directory = current_bundle_dir(self.bundles_dir)
        if directory is None:
            return None
        try:
            return BundleManifest.from_json((directory / MANIFEST_FILE).read_text("utf-8"))
        except (OSError, ValueError, KeyError, TypeError, BundleError) as exc:
            log.warning("the current bundle %s is unreadable (%s): it will be replaced",
                        directory, exc)
            return None

    def up_to_date(self, revision: int) -> bool:
        """The current bundle was fitted on store ``revision`` with this backbone,
        alignment template and preprocessing."""
        manifest = self.current_manifest()
        return (
            manifest is not None
            and manifest.store_revision == revision
            and manifest.backbone_sha256 == self.backbone.sha256
            and manifest.template == self._template()
            and manifest.preprocessing == self.backbone.embedder.preprocessing
        )

    def _template(self) -> tuple[tuple[float, float], ...]:
        return tuple((float(x), float(y)) for x, y in self.backbone.template)

    def run_once(self) -> Bundle | None:
        """Re-fit and publish if the store changed since the current bundle; returns the
        new bundle, or None when it was up to date."""
        revision = self.store.revision()
        if self.up_to_date(revision):
            return None
        self.notify(f"STATUS=fitting store revision {revision}")
        people, samples, labels, without = self._roster()
        embeddings = embed_samples(
            self.store, self.backbone, samples, self.recipe, progress=self.progress
        )
        log.info("%d samples of %d people (%d embedded now, %d from the cache)",
                 len(samples), len(people), embeddings.computed,
                 len(samples) - embeddings.computed)
        selection = None
        if samples:
            selection = select_head(
                embeddings.clean, embeddings.augmented, labels,
                people=len(people),
                target_far=self.settings.trainer.target_far,
                fallback_threshold=DEFAULT_THRESHOLD,
                config=self.config,
                progress=self.progress,
            )
            log.info("publishing the %s head: %s", selection.kind, selection.reason)
            if selection.threshold > 1.0:
                log.warning("threshold %.4f is above any cosine: at a false-accept rate of %g "
                            "these samples let nobody be named; enroll more, better samples",
                            selection.threshold, self.settings.trainer.target_far)
        fitted = _Fitted(
            revision=revision,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            people=tuple(people),
            sample_counts=tuple(int(np.sum(labels == k)) for k in range(len(people))),
            people_without_samples=without,
            embedded=embeddings.computed,
            selection=selection,
        )
        bundle = publish(
            self.bundles_dir,
            functools.partial(self._build, fitted),
            keep=self.settings.trainer.keep_versions,
        )
        log.info("published %s: %d people, %s head, threshold %.4f, store revision %d",
                 bundle.path.name, len(people), bundle.manifest.head_kind,
                 bundle.manifest.threshold, revision)
        return bundle

    def _build(self, fitted: _Fitted, directory: Path, version: int) -> Bundle:
        """``publish``'s build step: the bundle, its export check and its report, all
        written into the staging ``directory``."""
        selection = fitted.selection
        dimension = self.backbone.embedder.dimension
        if selection is None:
            head = CosineHead(np.zeros((0, dimension), np.float32))
            probes = np.zeros((0, dimension), np.float32)
        else:
            head, probes = selection.head, selection.probes
        manifest = BundleManifest(
            version=version,
            created=fitted.created,
            store_revision=fitted.revision,
            backbone_name=self.backbone.name,
            backbone_sha256=self.backbone.sha256,
            preprocessing=self.backbone.embedder.preprocessing,
            template=self._template(),
            head_kind=selection.kind if selection else "prototypes",
            head_sha256="",
            labels=tuple(p.name for p in fitted.people),
            person_ids=tuple(p.id for p in fitted.people),
            threshold=selection.threshold if selection else DEFAULT_THRESHOLD,
            metrics=_metrics(fitted, self.settings.trainer.target_far),
        )
        bundle = write_bundle(
            directory, backbone=self.backbone.path, weights=head.unit_weights(), manifest=manifest
        )
        difference = check_export(bundle, head, probes)
        write_report(directory, selection, ReportContext(
            version=version,
            created=fitted.created,
            store_revision=fitted.revision,
            backbone_name=self.backbone.name,
            backbone_sha256=self.backbone.sha256,
            target_far=self.settings.trainer.target_far,
            people=tuple(zip((p.name for p in fitted.people), fitted.sample_counts, strict=True)),
            people_without_samples=fitted.people_without_samples,
            embedded_this_run=fitted.embedded,
            augmented_copies=self.recipe.copies,
            export_max_abs_diff=difference,
        ))
        if self.publish_pause > 0:
            log.warning("test hook: pausing %.1f s before publishing %s",
                        self.publish_pause, directory)
            time.sleep(self.publish_pause)
        return bundle

    def _roster(self) -> tuple[list[Person], list[Sample], NDArray[np.intp], int]:
        """People with at least one sample (one head row each, in the store's name
        order), their samples, each sample's row, and how many people have none."""
        listed = self.store.list_people()
        samples = self.store.samples()
        with_samples = {s.person_id for s in samples}
        people = [p for p in listed if p.id in with_samples]
        row = {p.id: k for k, p in enumerate(people)}
        samples = [s for s in samples if s.person_id in row]  # added after list_people
        labels = np.asarray([row[s.person_id] for s in samples], np.intp)
        return people, samples, labels, len(listed) - len(people)

    # --- the service loop -----------------------------------------------------------

    def serve(self) -> None:
        """Poll the store and publish on every change, until ``StopRequested`` (or
        KeyboardInterrupt) unwinds it. A failed run is logged and retried when the
        store changes again or after ``RETRY_SECONDS``."""
        self.notify("READY=1\nSTATUS=watching the enrollment store")
        log.info("trainer watching %s, publishing into %s every %.1f s",
                 self.store.root, self.bundles_dir, self.settings.trainer.poll_seconds)
        failed: tuple[int, float] | None = None  # (revision, monotonic time)
        while True:
            revision = self.store.revision()
            retry_due = failed is None or failed[0] != revision or (
                time.monotonic() - failed[1] >= RETRY_SECONDS
            )
            if retry_due:
                try:
                    bundle = self.run_once()
                except FacestreamError as exc:
                    log.error("training store revision %d failed: %s", revision, exc)
                    self.notify(f"STATUS=training store revision {revision} failed: {exc}")
                    failed = (revision, time.monotonic())
                else:
                    failed = None
                    if bundle is not None:
                        self.notify(f"STATUS={describe(bundle)}")
            time.sleep(self.settings.trainer.poll_seconds)


def describe(bundle: Bundle) -> str:
    """One line about a published bundle, for logs and ``systemctl status``."""
    m = bundle.manifest
    return (f"serving {bundle.path.name}: {len(m.labels)} people, {m.head_kind} head, "
            f"threshold {m.threshold:.3f}, store revision {m.store_revision}")


def check_export(bundle: Bundle, head: CosineHead, probes: NDArray[np.float32]) -> float:
    """Max |scores from the written head.npz (numpy, as the server computes them) -
    scores of the torch head| on ``probes`` [M, D]; BundleError above the tolerance."""
    exported = probes @ bundle.gallery.weights.T
    difference = float(np.max(np.abs(exported - head.scores(probes)))) if exported.size else 0.0
    if not difference <= EXPORT_TOLERANCE:
        raise BundleError(
            f"the exported head in {bundle.path} differs from the torch head by "
            f"{difference:.2e} (tolerance {EXPORT_TOLERANCE:.0e}); not published"
        )
    return difference


def _metrics(fitted: _Fitted, target_far: float) -> dict[str, float]:
    """The manifest's figures: the counts and both candidates' held-out figures."""
    metrics = {
        "people": float(len(fitted.people)),
        "samples": float(sum(fitted.sample_counts)),
        "people_without_samples": float(fitted.people_without_samples),
        "embedded_this_run": float(fitted.embedded),
        "target_far": target_far,
    }
    selection = fitted.selection
    if selection is not None:
        for candidate in (selection.baseline, selection.cosine):
            if candidate is not None:
                for name, value in candidate.figures().items():
                    metrics[f"{candidate.kind}_{name}"] = value
        metrics["train_samples"] = float(len(selection.split.train))
        metrics["held_out_samples"] = float(len(selection.split.held_out))
        metrics["single_sample_people"] = float(selection.split.single_sample_people)
        if selection.fit is not None:
            metrics["fit_epochs"] = float(selection.fit.epochs)
            metrics["fit_best_epoch"] = float(selection.fit.best_epoch)
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
