"""The trainer service: re-fit and publish a bundle whenever the enrollment store changes.

One run (``TrainerService.run_once``) works in two phases (``trainer.fitting.building``), so
that a new person is named within seconds and the better head follows:

1. read the store's revision; when the current bundle was built from that revision,
   or from the same people and samples (ids and names: the manifest's
   ``roster_sha256``), with the same backbone (file, alignment template,
   preprocessing), is settled (it has its training report) and intact (its files
   hash to its manifest's sums, as the streamer checks), there is nothing to do; a
   damaged one is replaced;
2. the baseline: embed the samples' clean chips (``trainer.fitting.embeddings``; cached, so
   only new samples cost anything), build the prototypes and calibrate their
   threshold (``trainer.fitting.selection.select_baseline``: no fitting), and publish them at
   once, without their report;
3. the fitted head: embed the augmented chips and fit the cosine head against the
   baseline (``select_head``). If it beats the baseline it is published as the next
   version, with its report; if not, the baseline stays in force and its report,
   with both heads' figures, is added to it. When the store's revision moves during
   this phase, the fit is abandoned: the next run starts over with a fresh baseline.

Publishing (``facecore.publish``) builds each bundle in a staging directory (the
bundle, the export check of the head, the report) that the ``current`` pointer
switch makes visible at once. A crash or a stop at any point leaves the previous
bundle in force; the next run removes the half-built directory. Only one trainer
per store publishes at a time (``trainer.lock``).

``serve`` waits for the store's revision to move (``EnrollmentStore.wait_for_change``:
a single-row read every quarter second on SQLite, LISTEN/NOTIFY on PostgreSQL) and
runs as soon as it does, and at least every ``settings.trainer.poll_seconds`` in any
case. A PostgreSQL store that cannot be reached, at start or later, is retried with
a doubling wait (up to ``enrollment.connect_retry_max_s``) rather than ending the
service. It reports to systemd (``READY=1``, ``STATUS=``) when run as a notify-type
service. SIGTERM is turned into ``StopRequested`` by the command
(``trainer.train_cli``), which unwinds whatever is in progress and exits cleanly.
Python drops an exception raised while a finalizer runs (``Exception ignored in``),
so the signal also sets the ``stopping`` event that ``serve`` checks on every turn:
a SIGTERM that lands in a garbage collection still stops the service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from enrollment.database import retry_delay
from enrollment.errors import StoreUnavailableError
from enrollment.store import EnrollmentStore, Person, Sample
from facecore import systemd
from facecore.bundle import MANIFEST_FILE, Bundle, BundleManifest, check_bundle, load_bundle
from facecore.calibration import find_calibration
from facecore.config import Settings
from facecore.errors import BundleError, FacestreamError
from facecore.publish import bundles_dir, current_bundle_dir, publish, remove_version, versions
from facecore.registry import get_spec
from facecore.text import counted, listed
from trainer import metrics
from trainer.backbone import Backbone
from trainer.fitting.augment import Augmentation
from trainer.fitting.building import PHASE_BASELINE, PHASE_FITTED, BundleBuilder, Fitted, settled
from trainer.fitting.embeddings import embed_samples
from trainer.fitting.fit import FitConfig
from trainer.fitting.gallery import DEFAULT_THRESHOLD, look_alike_pairs
from trainer.fitting.selection import FITTED_ROW_SAMPLES, Selection, select_baseline, select_head
from trainer.lock import trainer_lock

__all__ = [
    "StopRequested",
    "TrainerService",
    "describe",
]

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0  # after a failed run, wait this long before retrying the same revision


class StopRequested(BaseException):
    """The service was asked to stop (SIGTERM) and unwinds from wherever it was.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way may
    swallow it."""


class _Superseded(Exception):
    """The store's revision moved while a head was being fitted for an older one."""


@dataclass(frozen=True)
class _Roster:
    """People with at least one sample (one head row each, in the store's name order),
    their samples, each sample's row, and how many people have none."""

    revision: int
    store_id: str
    people: tuple[Person, ...]
    samples: tuple[Sample, ...]
    labels: NDArray[np.intp]  # [N]
    without: int

    @property
    def sha256(self) -> str:
        """Digest of what a bundle is made of: each person's id and name, in row order,
        and each sample's id and row. The revision and the people without samples are
        left out: a person added and taken away again with no sample changes nothing."""
        people = [[p.id, p.name] for p in self.people]
        samples = [[s.id, int(row)] for s, row in zip(self.samples, self.labels, strict=True)]
        text = json.dumps([people, samples], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def single_sample_people(self) -> tuple[Person, ...]:
        """The people with one sample: nothing of theirs can be held out, and a fitted
        head leaves their rows as their prototypes."""
        counts = np.bincount(self.labels, minlength=len(self.people))
        return tuple(p for p, n in zip(self.people, counts, strict=True) if n < FITTED_ROW_SAMPLES)

    def fitted(self, phase: float, embedded: int, selection: Selection | None) -> Fitted:
        return Fitted(
            phase=phase,
            revision=self.revision,
            store_id=self.store_id,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            people=self.people,
            sample_counts=tuple(int(np.sum(self.labels == k)) for k in range(len(self.people))),
            people_without_samples=self.without,
            embedded=embedded,
            selection=selection,
            roster_sha256=self.sha256,
            sample_ids=tuple(s.id for s in self.samples),
        )


class TrainerService:
    """Owns the enrollment store connection, the backbone's ONNX session and, once a
    run or ``serve`` has taken it, the trainer lock.

    ``backbone``, ``recipe`` and ``config`` default to the settings' recognizer and the
    standard augmentation and fitting recipes. ``publish_pause`` (seconds) sleeps
    inside each build step, after the bundle is complete and before it is published:
    a test hook to kill the process mid-publish."""

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
        self.notify = notify
        with contextlib.ExitStack() as opened:
            self.lock = opened.enter_context(trainer_lock(settings))
            self.store = opened.enter_context(EnrollmentStore.from_settings(settings))
            self.store_id = self.store.identity()  # read once: a store keeps its identity
            self.backbone = backbone or Backbone.from_settings(settings)
            self.prior = find_calibration(settings, get_spec(self.backbone.name))
            opened.pop_all()
        if self.prior is None:
            log.warning("%s has no population calibration: thresholds come from the "
                        "gallery's own few scores (run `facestream eval calibrate`)",
                        self.backbone.name)
        else:
            log.info("population calibration: %s", self.prior.describe())
        self.builder = BundleBuilder(
            self.backbone, self.recipe.copies, settings.trainer.target_far, publish_pause
        )
        # (the files' stat stamp, intact): the last `intact` verdict
        self._checked: tuple[tuple[object, ...], bool] | None = None
        # (store revision, bundle version): a revision found to hold the people and
        # samples of that bundle, so that polls at that revision do not read them again
        self._unchanged: tuple[int, int] | None = None
        # the damaged bundle folder last warned of (see `_report_damaged`)
        self._reported_damaged: Path | None = None
        # the bundle in force whose older versions `_remove_erased` last went through
        self._erasures_removed_below: int | None = None

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Close the store and release the lock (safe twice)."""
        self.store.close()
        self.lock.close()

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
            self._report_damaged(directory, exc)
            return None

    def built_from(self, revision: int, roster: _Roster | None = None) -> bool:
        """The current bundle was built from this store's ``revision`` (or from the same
        people and samples as ``roster``, read at it) with this backbone, front end
        (kind, template, landmark model) and preprocessing (settled or not): a bundle
        from another front end is rebuilt, its vectors re-embedded."""
        manifest = self.current_manifest()
        if manifest is None:
            return False
        if manifest.store_id and manifest.store_id != self.store_id:
            return False  # another store's revisions and ids: this one's are published
        same_content = (
            manifest.store_revision == revision
            or self._unchanged == (revision, manifest.version)
            or (roster is not None and manifest.roster_sha256 == roster.sha256)
        )
        return (
            same_content
            and manifest.backbone_sha256 == self.backbone.sha256
            and manifest.template == self._template()
            and manifest.front_end == self.backbone.front_end.kind
            and manifest.landmarks_sha256 == self.backbone.front_end.predictor_sha256
            and manifest.preprocessing == self.backbone.embedder.preprocessing
        )

    def up_to_date(self, revision: int, roster: _Roster | None = None) -> bool:
        """``built_from(revision, roster)``, settled and intact: nothing is left to do."""
        directory = current_bundle_dir(self.bundles_dir)
        return (
            directory is not None
            and self.built_from(revision, roster)
            and settled(directory)
            and self.intact(directory)
        )

    def intact(self, directory: Path) -> bool:
        """The bundle's model files hash to its manifest's sums (`check_bundle`, the
        streamer's check: it refuses a damaged bundle, and every face would be unknown);
        a damaged one is logged. ``serve`` asks on every turn: the files are hashed
        again only when one of them is replaced or written (inode, size, mtime)."""
        try:
            stamp = tuple(
                (e.name, e.inode(), e.stat().st_size, e.stat().st_mtime_ns)
                for e in sorted(os.scandir(directory), key=lambda e: e.name)
            )
        except OSError:
            stamp = ()  # gone or unreadable: check_bundle says what is wrong
        if self._checked is None or not stamp or self._checked[0] != stamp:
            try:
                check_bundle(directory)
                self._checked = (stamp, True)
            except BundleError as exc:
                self._report_damaged(directory, exc)
                self._checked = (stamp, False)
        return self._checked[1]

    def _report_damaged(self, directory: Path, reason: Exception) -> None:
        """Warn that the current bundle is damaged, once per bundle folder: a run reads
        it several times, and a poll that cannot publish would say it again each turn."""
        if self._reported_damaged == directory:
            return
        self._reported_damaged = directory
        if not directory.is_dir():
            log.warning("current names %s, which is gone: a new bundle will be published",
                        directory)
        else:
            log.warning("the current bundle is damaged, a new one will be published: %s",
                        reason)

    def _template(self) -> tuple[tuple[float, float], ...]:
        return tuple((float(x), float(y)) for x, y in self.backbone.template)

    def run_once(self) -> Bundle | None:
        """Bring the published model up to date with the store, both phases (see the
        module docstring). Returns the bundle in force that this run published or
        settled, or None when there was nothing to do. Counted in
        ``trainer.metrics.TRAINER_RUNS`` and timed in ``TRAINER_RUN_SECONDS``.

        Takes the trainer lock first: `TrainerBusyError` when another trainer has it."""
        start = time.monotonic()
        outcome = "unfinished"  # failed, stopped or busy
        try:
            bundle = self._run_once()
            outcome = "up_to_date" if bundle is None else "published"
            return bundle
        finally:
            metrics.TRAINER_RUNS.labels(outcome).inc()
            if outcome != "up_to_date":
                metrics.TRAINER_RUN_SECONDS.observe(time.monotonic() - start)

    def _run_once(self) -> Bundle | None:
        self.lock.acquire(wait=False)
        revision = self.store.revision()
        if self.up_to_date(revision):
            in_force = self.current_manifest()
            metrics.TRAINER_BUNDLE_VERSION.set(in_force.version if in_force else 0)
            self._remove_erased(in_force)  # after a run killed before it did
            return None
        roster = self._roster(revision)
        shown, manifest = current_bundle_dir(self.bundles_dir), self.current_manifest()
        if shown is not None and manifest is not None and self.up_to_date(revision, roster):
            # e.g. a person added and removed again when none of their photos was taken
            log.info("store revision %d has the people and samples of %s: it stays",
                     revision, shown.name)
            self._unchanged = (revision, manifest.version)
            self._remove_erased(manifest)
            return None
        if shown is not None and manifest is not None and manifest.store_id not in (
            "", roster.store_id
        ):
            log.warning(
                "%s was fitted on another enrollment store (id %s; this one is %s): this "
                "store's people are published over it. Servers and trainers sharing %s "
                "must share one store (enrollment.database_url)",
                shown.name, manifest.store_id, roster.store_id, self.bundles_dir,
            )
        self.notify(f"STATUS=publishing the prototypes of store revision {revision}")
        clean = embed_samples(self.store, self.backbone, roster.samples, None,
                              progress=self.progress)
        log.info("%s of %s (%d embedded now, %d from the cache)",
                 counted(len(roster.samples), "sample"), counted(len(roster.people), "person"),
                 clean.computed, len(roster.samples) - clean.computed)
        if single := roster.single_sample_people:
            log.warning(
                "%s one sample each (%s): none can be held out to check how well they "
                "are named, and a fitted head leaves each of their rows as that photo's "
                "embedding; 3-5 photos each name them more reliably",
                "1 person has" if len(single) == 1 else f"{len(single)} people have",
                listed([p.name for p in single]),
            )
        self._warn_of_look_alikes(roster, clean.clean)
        baseline = None
        if roster.samples:
            baseline = select_baseline(
                clean.clean, roster.labels, people=len(roster.people),
                target_far=self.settings.trainer.target_far,
                fallback_threshold=DEFAULT_THRESHOLD, config=self.config, prior=self.prior,
            )
        prototypes = roster.fitted(PHASE_BASELINE, clean.computed, baseline)
        current = current_bundle_dir(self.bundles_dir)
        if current is not None and self.built_from(revision, roster) and self.intact(current):
            bundle = load_bundle(current)  # published by a run stopped before it settled
        else:
            bundle = self._publish(prototypes)
        try:
            final = self._fit(roster, clean.clean, baseline)
        except _Superseded:
            log.info("the store moved on from revision %d while its head was fitted: the "
                     "fit is abandoned, the next run starts from its prototypes", revision)
            return bundle
        if final is not None and final.phase == PHASE_FITTED:
            return self._publish(final)
        self.builder.complete_report(bundle, final or prototypes)
        log.info("%s stays: %s", bundle.path.name,
                 final.selection.reason if final and final.selection else "nobody to fit")
        return bundle

    @staticmethod
    def _warn_of_look_alikes(roster: _Roster, clean: NDArray[np.float32]) -> None:
        """Say which people have photos as alike as one person's (`look_alike_pairs`)."""
        for i, j, score in look_alike_pairs(clean, roster.labels):
            first, second = (roster.people[roster.labels[k]].name for k in (i, j))
            log.warning(
                "a photo of %s and one of %s score %.3f, as one person's photos do: "
                "is one person enrolled under both names, or a photo under the wrong "
                "one? The admin page shows each person's photos",
                first, second, score,
            )

    def _fit(
        self, roster: _Roster, clean: NDArray[np.float32], baseline: Selection | None
    ) -> Fitted | None:
        """The second phase: the fitted head if it beats ``baseline`` (PHASE_FITTED),
        else the baseline with both heads' figures; None when nobody has a sample.
        Raises `_Superseded` when the store's revision moves meanwhile."""
        if baseline is None:
            return None

        def checkpoint() -> None:
            if self.store.revision() != roster.revision:
                raise _Superseded

        self.notify(f"STATUS=fitting a head on store revision {roster.revision}")
        checkpoint()
        embedded = 0
        augmented = np.zeros((len(clean), 0, clean.shape[1]), np.float32)
        if len(baseline.split.held_out):
            embeddings = embed_samples(self.store, self.backbone, roster.samples, self.recipe,
                                       progress=self.progress)
            embedded, augmented = embeddings.computed, embeddings.augmented
        selection = select_head(
            clean, augmented, roster.labels, people=len(roster.people),
            target_far=self.settings.trainer.target_far, fallback_threshold=DEFAULT_THRESHOLD,
            config=self.config, progress=self.progress, baseline=baseline,
            checkpoint=checkpoint, prior=self.prior,
        )
        if selection.threshold > 1.0:
            log.warning("threshold %.4f is above any cosine: at a false-accept rate of %g "
                        "these samples let nobody be named; enroll more, better samples",
                        selection.threshold, self.settings.trainer.target_far)
        phase = PHASE_FITTED if selection.kind == "cosine" else PHASE_BASELINE
        return roster.fitted(phase, embedded, selection)

    def _publish(self, fitted: Fitted) -> Bundle:
        bundle = publish(
            self.bundles_dir,
            functools.partial(self._build, fitted),
            keep=self.settings.trainer.keep_versions,
        )
        log.info("published %s (phase %d): %s, %s head, threshold %.4f, "
                 "store revision %d", bundle.path.name, fitted.phase,
                 counted(len(fitted.people), "person"),
                 bundle.manifest.head_kind, bundle.manifest.threshold, fitted.revision)
        log.info("threshold: %s", bundle.manifest.threshold_reason)
        metrics.TRAINER_BUNDLE_VERSION.set(bundle.manifest.version)
        self._remove_erased(bundle.manifest)
        self.notify(f"STATUS={describe(bundle)}")
        return bundle

    def _remove_erased(self, current: BundleManifest | None) -> None:
        """Remove the older versions that hold a sample the ``current`` bundle was not
        built from: erased since, alone or with its person. Older versions are kept for
        servers still loading one, never to keep what a user erased. One that does not
        list its samples (from before 2026-12-07) or cannot be read goes too. Done after
        each publish and on the first check that finds nothing to publish (a trainer
        killed between its publish and this leaves them to the next one); the folder is
        read again only when another bundle is in force."""
        if current is None or current.version == self._erasures_removed_below:
            return
        self._erasures_removed_below = current.version
        kept = set(current.sample_ids)
        for version in versions(self.bundles_dir):
            if version >= current.version:
                continue
            path = self.bundles_dir / f"v{version:06d}"
            try:
                old = BundleManifest.from_json((path / MANIFEST_FILE).read_text("utf-8"))
                erased = not kept.issuperset(old.sample_ids) or bool(
                    old.person_ids and not old.sample_ids
                )
            except (OSError, ValueError, KeyError, TypeError, BundleError):
                erased = True
            if not erased:
                continue
            try:
                remove_version(self.bundles_dir, version)
            except OSError as exc:
                log.warning("cannot remove %s, which holds samples erased since: %s", path, exc)
            else:
                log.info("removed %s: it held samples erased since", path.name)

    def _build(self, fitted: Fitted, directory: Path, version: int) -> Bundle:
        current = current_bundle_dir(self.bundles_dir)
        if current is not None and not self.intact(current):
            current = None  # its backbone may be the damaged file: never link it
        return self.builder.build(fitted, directory, version, link_from=current)

    def _roster(self, revision: int) -> _Roster:
        listed = self.store.list_people()
        samples = self.store.samples()
        with_samples = {s.person_id for s in samples}
        people = [p for p in listed if p.id in with_samples]
        row = {p.id: k for k, p in enumerate(people)}
        samples = [s for s in samples if s.person_id in row]  # added after list_people
        labels = np.asarray([row[s.person_id] for s in samples], np.intp)
        return _Roster(revision, self.store_id, tuple(people), tuple(samples),
                       labels, len(listed) - len(people))

    # --- the service loop -----------------------------------------------------------

    def serve(self, stopping: threading.Event | None = None) -> None:
        """Follow the store and publish on every change, until ``StopRequested`` (or
        KeyboardInterrupt) unwinds it, or ``stopping`` is set. Waits for the trainer
        lock first when another trainer holds it. A failed run is logged and retried
        when the store changes again or after ``RETRY_SECONDS``; a store that cannot
        be reached is retried after a doubling wait."""
        self._take_lock()
        self.notify("READY=1\nSTATUS=watching the enrollment store")
        log.info("trainer watching %s (a full check every %.1f s), publishing into %s",
                 self.store.where, self.settings.trainer.poll_seconds, self.bundles_dir)
        failed: tuple[int, float] | None = None  # (revision, monotonic time)
        attempt = 0
        while stopping is None or not stopping.is_set():
            try:
                failed = self._follow(failed)
                if attempt:
                    log.info("the enrollment store %s is reachable again", self.store.where)
                    self.notify("STATUS=watching the enrollment store")
                attempt = 0
            except StoreUnavailableError as exc:
                attempt += 1
                delay = retry_delay(attempt, self.settings.enrollment.connect_retry_max_s)
                log.error("%s; trying again in %.0f s", exc, delay)
                self.notify(f"STATUS={exc}; trying again in {delay:.0f} s")
                time.sleep(delay)
        raise StopRequested("stopped by a signal")

    def _take_lock(self) -> None:
        """Hold the trainer lock, waiting as a standby (``TRAINER_ACTIVE`` 0) for it."""
        if not self.lock.held:
            metrics.TRAINER_ACTIVE.set(0)
            self.lock.acquire(wait=True)
        metrics.TRAINER_ACTIVE.set(1)

    def _follow(self, failed: tuple[int, float] | None) -> tuple[int, float] | None:
        """One turn of ``serve``: a run when one is due, then the wait for a change.
        Returns the failed run to remember, if any."""
        self._take_lock()  # again after a lost connection dropped it
        revision = self.store.revision()
        retry_due = failed is None or failed[0] != revision or (
            time.monotonic() - failed[1] >= RETRY_SECONDS
        )
        if retry_due:
            try:
                bundle = self.run_once()
            except StoreUnavailableError:
                raise
            except FacestreamError as exc:
                log.error("training store revision %d failed: %s", revision, exc)
                self.notify(f"STATUS=training store revision {revision} failed: {exc}")
                failed = (revision, time.monotonic())
            else:
                failed = None
                if bundle is not None:
                    self.notify(f"STATUS={describe(bundle)}")
        self.store.wait_for_change(revision, self.settings.trainer.poll_seconds)
        return failed


def describe(bundle: Bundle) -> str:
    """One line about a published bundle, for logs and ``systemctl status``."""
    m = bundle.manifest
    return (f"serving {bundle.path.name}: {counted(len(m.labels), 'person')}, {m.head_kind} head, "
            f"threshold {m.threshold:.3f}, store revision {m.store_revision}")
