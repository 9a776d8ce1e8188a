"""What the trainer publishes: a bundle built from a chosen head, checked, with its
figures and its training report.

A build (``BundleBuilder.build``, ``facecore.publish``'s build step) writes into the
staging directory the bundle (``facecore.bundle.write_bundle``: the backbone is
hard-linked, from the model file or the previous bundle), checks that the exported
head scores as the torch head does, and writes the training report
(``trainer.fitting.report``), so that all of it appears at once with the ``current`` switch.

The trainer publishes in two phases, recorded as the manifest metric ``phase``:

* ``PHASE_BASELINE`` (1): the prototypes, published as soon as the store changes,
  *without* a report: a fitted head is still being trained to compete with them.
  When it does not beat them they stay in force and their report, which then holds
  both candidates' figures, is added to the published bundle (``complete_report``:
  each file renamed into place, ``report.json`` last). A report is not part of the
  model: no hash covers it and ``load_bundle`` does not read it.
* ``PHASE_FITTED`` (2): the fitted cosine head that beat them, published with its
  report as the next version.

A bundle is *settled* (``settled``) once it has its ``report.json``: nothing is left
to fit for the store revision it was built from.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from enrollment.store import Person
from facecore.bundle import Bundle, BundleManifest, write_bundle
from facecore.errors import BundleError
from facecore.files import fsync_path
from trainer.backbone import Backbone
from trainer.fitting.fit import CosineHead
from trainer.fitting.gallery import DEFAULT_THRESHOLD
from trainer.fitting.report import REPORT_FILES, REPORT_JSON, ReportContext, write_report
from trainer.fitting.selection import Selection

__all__ = [
    "EXPORT_TOLERANCE",
    "PHASE_BASELINE",
    "PHASE_FITTED",
    "BundleBuilder",
    "Fitted",
    "check_export",
    "settled",
]

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-5  # max |numpy on the written head - torch head| on the probes
PHASE_BASELINE = 1.0  # the prototypes, published at once; their report comes later
PHASE_FITTED = 2.0  # the fitted head that beat them, published with its report


@dataclass(frozen=True)
class Fitted:
    """What one phase chose, for its build step."""

    phase: float  # PHASE_BASELINE or PHASE_FITTED
    revision: int  # the store revision it was fitted on
    store_id: str  # of the store it was fitted on (`EnrollmentStore.identity`)
    created: str  # ISO 8601, UTC
    people: tuple[Person, ...]  # one head row each
    sample_counts: tuple[int, ...]  # per person
    people_without_samples: int
    embedded: int  # samples embedded (clean, or their augmented copies) in this phase
    selection: Selection | None  # None when nobody has a sample
    roster_sha256: str  # of the people and samples it was fitted on (BundleManifest's)
    sample_ids: tuple[str, ...]  # the samples it was fitted on


def settled(directory: Path) -> bool:
    """The bundle in ``directory`` has its training report (see the module docstring)."""
    return (directory / REPORT_JSON).is_file()


@dataclass(frozen=True)
class BundleBuilder:
    """Builds the trainer's bundles. ``publish_pause`` (seconds) sleeps at the end of
    each build, when the bundle is complete but not yet published: a test hook to
    kill the process mid-publish."""

    backbone: Backbone
    augmented_copies: int
    target_far: float
    publish_pause: float = 0.0

    def build(
        self, fitted: Fitted, directory: Path, version: int, *, link_from: Path | None
    ) -> Bundle:
        """``publish``'s build step: the bundle, its export check and (for a fitted
        head) its report, in the staging ``directory``; ``link_from`` is the bundle
        in force, whose backbone file may be linked."""
        backbone = self.backbone
        head, probes = _head(fitted, backbone.embedder.dimension)
        selection = fitted.selection
        metrics = _metrics(fitted, self.target_far)
        manifest = BundleManifest(
            version=version,
            created=fitted.created,
            store_revision=fitted.revision,
            store_id=fitted.store_id,
            backbone_name=backbone.name,
            backbone_sha256=backbone.sha256,
            preprocessing=backbone.embedder.preprocessing,
            template=tuple((float(x), float(y)) for x, y in backbone.template),
            front_end=backbone.front_end.kind,
            head_kind=selection.kind if selection else "prototypes",
            head_sha256="",
            labels=tuple(p.name for p in fitted.people),
            person_ids=tuple(p.id for p in fitted.people),
            threshold=selection.threshold if selection else DEFAULT_THRESHOLD,
            metrics=metrics,
            threshold_reason=selection.calibration.reason if selection else "nobody enrolled",
            roster_sha256=fitted.roster_sha256,
            sample_ids=fitted.sample_ids,
        )
        bundle = write_bundle(
            directory, backbone=backbone.path, weights=head.unit_weights(), manifest=manifest,
            backbone_sha256=backbone.sha256, link_from=link_from,
            landmarks=backbone.front_end.predictor_path,
            landmarks_sha256=backbone.front_end.predictor_sha256 or None,
        )
        difference = check_export(bundle, head, probes)
        if fitted.phase == PHASE_FITTED:
            write_report(directory, selection, self._context(fitted, bundle.manifest, difference))
        if self.publish_pause > 0:
            log.warning("test hook: pausing %.1f s before publishing %s",
                        self.publish_pause, directory)
            time.sleep(self.publish_pause)
        return bundle

    def complete_report(self, bundle: Bundle, fitted: Fitted) -> None:
        """Add the training report of ``fitted`` (whose head ``bundle`` serves: the
        export check is repeated) to the published ``bundle``; it is then settled."""
        head, probes = _head(fitted, self.backbone.embedder.dimension)
        difference = check_export(bundle, head, probes)
        scratch = Path(tempfile.mkdtemp(prefix=".report-", dir=bundle.path.parent))
        try:
            write_report(scratch, fitted.selection,
                         self._context(fitted, bundle.manifest, difference))
            written = [name for name in REPORT_FILES if (scratch / name).is_file()]
            for name in sorted(written, key=lambda name: name == REPORT_JSON):  # json last
                os.replace(scratch / name, bundle.path / name)
            fsync_path(bundle.path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _context(
        self, fitted: Fitted, manifest: BundleManifest, difference: float
    ) -> ReportContext:
        return ReportContext(
            version=manifest.version,
            created=manifest.created,
            store_revision=fitted.revision,
            backbone_name=self.backbone.name,
            backbone_sha256=self.backbone.sha256,
            target_far=self.target_far,
            people=tuple(zip((p.name for p in fitted.people), fitted.sample_counts, strict=True)),
            people_without_samples=fitted.people_without_samples,
            embedded_this_run=fitted.embedded,
            augmented_copies=self.augmented_copies,
            export_max_abs_diff=difference,
        )


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


def _head(fitted: Fitted, dimension: int) -> tuple[CosineHead, NDArray[np.float32]]:
    """The head to export and the probes [M, D] to check it on."""
    if fitted.selection is None:
        nobody = np.zeros((0, dimension), np.float32)
        return CosineHead(nobody), nobody
    return fitted.selection.head, fitted.selection.probes


def _metrics(fitted: Fitted, target_far: float) -> dict[str, float]:
    """The manifest's figures: the phase, the counts and the candidates' figures."""
    metrics = {
        "phase": fitted.phase,
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
