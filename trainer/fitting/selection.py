"""Which head to publish, and its threshold: the prototype baseline or the fitted
cosine head, judged on a held-out split.

1. Each person's samples are split (stratified): ``held_out_fraction`` of them, at
   least one, are held out; a person with a single sample keeps it in training and
   is counted in ``Split.single_sample_people``.
2. Both heads are built from the training samples only: the prototypes (the mean
   unit embedding of each person) and the cosine head fitted from them (``trainer.fitting.fit``)
   on the training samples' clean and augmented embeddings, stopped early on the
   held-out loss, with the prototypes' calibrated threshold (3) as its "unknown"
   level. The rows of people with a single sample are not fitted: they stay their
   prototypes. Nothing of theirs is held out, so the held-out figures cannot show
   what fitting does to them, and a row fitted to one photo and its augmented copies
   learns that photo (measured: with the 50 people of the labelled sets enrolled
   beside the demo people, Lin's fitted row scored at most 0.927 on the demo clip,
   under its threshold of 0.933, where his prototype scores 0.95 on most stage
   frames; the clip named nobody).
3. Each is calibrated for the target false-accept rate (``trainer.evaluation.calibrate``:
   the model's population calibration for this many people, moved towards the
   gallery's own evidence as it grows) on strangers: people are dealt into groups,
   and each group's samples are scored against the same kind of head built without
   that group (prototypes of the others; the cosine head fitted on the others for the
   same number of epochs), so every impostor score comes from a person the head never
   saw. Then each is scored by its identification accuracy on the held-out samples at
   that threshold.
4. The cosine head is published only when its accuracy is strictly higher; on a tie
   the simpler baseline wins. The published weights are then rebuilt from *all*
   samples (prototypes of all samples; or the cosine head re-fitted on all samples for
   the epoch count early stopping chose), and keep the threshold calibrated in 3.

With nothing to hold out (every person has one sample) no fitted head can be judged:
the baseline is published, calibrated on strangers as in 3; its reported accuracy is
then measured on the samples it was built from, and says little.

``select_baseline`` is steps 1-3 for the baseline alone, with no fitting (cheap: the
trainer publishes it at once); ``select_head`` takes it and goes on with the fitted
head, calling ``checkpoint`` between fits so that a caller can abandon the work (it
raises) when the enrolled people change meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from facecore.calibration import PopulationCalibration
from trainer.evaluation.calibrate import (
    Calibration,
    OpenSetScores,
    PairScores,
    calibrate,
    known_scores,
    pair_scores,
    unseen_scores,
)
from trainer.fitting.fit import CosineHead, FitConfig, FitResult, fit_cosine_head
from trainer.fitting.gallery import prototypes

__all__ = [
    "FITTED_ROW_SAMPLES",
    "Candidate",
    "Selection",
    "Split",
    "select_baseline",
    "select_head",
    "stratified_split",
]

UNSEEN_FOLDS = 5  # groups of people left out in turn to score strangers
# The fewest samples whose row a fitted head fits: with fewer, nothing of the person's
# can be held out to judge the row, and it stays their prototype (step 2 above).
FITTED_ROW_SAMPLES = 2


@dataclass(frozen=True)
class Split:
    train: NDArray[np.intp]  # sample indices
    held_out: NDArray[np.intp]
    single_sample_people: int  # their only sample stays in training


@dataclass(frozen=True)
class Candidate:
    """One head: its threshold calibrated on strangers, its figures on held-out probes."""

    kind: str  # "prototypes" or "cosine"
    scores: OpenSetScores
    calibration: Calibration

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def accuracy(self) -> float:
        return self.scores.accuracy(self.threshold)

    def figures(self) -> dict[str, float]:
        """The candidate's numbers, for the manifest and the report."""
        return {
            "accuracy": self.accuracy,
            "rank1": self.scores.rank1(),
            "threshold": self.threshold,
            "far": self.scores.false_accept_rate(self.threshold),
            "frr": self.scores.false_reject_rate(self.threshold),
            "probes": float(len(self.scores.genuine)),
            "impostor_scores": float(self.calibration.impostor_count),
            "threshold_prior": self.calibration.prior,
            "threshold_gallery_weight": self.calibration.weight,
        }


@dataclass(frozen=True)
class Selection:
    kind: str  # the published head: "prototypes" or "cosine"
    head: CosineHead  # the published rows are ``head.unit_weights()``
    threshold: float
    split: Split
    pairs: PairScores  # probe-to-probe scores of all samples (a backbone diagnostic)
    baseline: Candidate
    cosine: Candidate | None  # None when nothing could be held out
    fit: FitResult | None  # the held-out fit that chose the epoch count
    probes: NDArray[np.float32]  # [M, D] the embeddings the candidates were scored on
    reason: str

    @property
    def calibration(self) -> Calibration:
        """How the published head's threshold was reached."""
        chosen = self.cosine if self.kind == "cosine" and self.cosine else self.baseline
        return chosen.calibration


def stratified_split(labels: NDArray[np.intp], fraction: float, seed: int) -> Split:
    """Hold out ``round(fraction * n)`` of each person's ``n`` samples, at least one and
    never all of them; people with a single sample stay in training."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    single = 0
    for person in np.unique(labels):
        members = np.flatnonzero(labels == person)
        if len(members) == 1:
            single += 1
            train.extend(members.tolist())
            continue
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        shuffled = rng.permutation(members)
        held.extend(shuffled[:count].tolist())
        train.extend(shuffled[count:].tolist())
    return Split(np.sort(np.asarray(train, np.intp)), np.sort(np.asarray(held, np.intp)), single)


def select_baseline(
    clean: NDArray[np.float32],
    labels: NDArray[np.intp],
    *,
    people: int,
    target_far: float,
    fallback_threshold: float,
    config: FitConfig,
    prior: PopulationCalibration | None = None,
) -> Selection:
    """The prototype baseline alone, exactly as ``select_head`` builds and judges it,
    with no fitting: the prototypes of all samples, with the threshold calibrated on
    strangers and the figures on the held-out samples (all samples when nothing can
    be held out). ``cosine`` and ``fit`` are None.

    ``clean`` [N, D] are unit embeddings of the samples, ``labels`` [N] their person's
    row in 0..people-1 (every row has a sample)."""
    if len(clean) == 0 or people == 0:
        raise ValueError("select_baseline needs at least one sample")
    split = stratified_split(labels, config.held_out_fraction, config.seed)
    pairs = pair_scores(clean, labels, config.seed)
    everyone = _prototype_matrix(clean, labels, people)
    no_copies = np.zeros((len(clean), 0, clean.shape[1]), np.float32)  # nothing is fitted
    data = _Data(clean, no_copies, labels, people, config, target_far, fallback_threshold, prior)
    if len(split.held_out) == 0:
        baseline = data.candidate("prototypes", everyone, split.train, split.train)
        return Selection(
            "prototypes", CosineHead(everyone), baseline.threshold, split, pairs, baseline,
            None, None, clean,
            "no person has two samples, so none can be held out to judge a fitted head",
        )
    initial = _prototype_matrix(clean[split.train], labels[split.train], people)
    baseline = data.candidate("prototypes", initial, split.train, split.held_out)
    return Selection(
        "prototypes", CosineHead(everyone), baseline.threshold, split, pairs, baseline,
        None, None, clean[split.held_out],
        "the prototypes, published before a cosine head is fitted to compete with them",
    )


def select_head(
    clean: NDArray[np.float32],
    augmented: NDArray[np.float32],
    labels: NDArray[np.intp],
    *,
    people: int,
    target_far: float,
    fallback_threshold: float,
    config: FitConfig,
    progress: bool = True,
    baseline: Selection | None = None,
    checkpoint: Callable[[], None] = lambda: None,
    prior: PopulationCalibration | None = None,
) -> Selection:
    """Choose and build the head to publish (see the module docstring).

    ``clean`` [N, D] and ``augmented`` [N, A, D] are unit embeddings of the samples,
    ``labels`` [N] their person's row in 0..people-1 (every row has a sample).
    ``baseline``: ``select_baseline``'s result on the same samples, when the caller
    has it already. ``checkpoint`` is called before each fit; whatever it raises
    abandons the selection."""
    if baseline is None:
        baseline = select_baseline(
            clean, labels, people=people, target_far=target_far,
            fallback_threshold=fallback_threshold, config=config, prior=prior,
        )
    split = baseline.split
    if len(split.held_out) == 0:
        return baseline
    data = _Data(clean, augmented, labels, people, config, target_far, fallback_threshold,
                 prior, checkpoint)
    train, held = split.train, split.held_out
    initial = _prototype_matrix(clean[train], labels[train], people)
    reject = _reject_level(baseline.threshold)
    x, y = data.training_set(train)
    checkpoint()
    fit = fit_cosine_head(
        x, y, initial, config, reject=reject, held_out=(clean[held], labels[held]),
        fixed_rows=data.unjudged_rows, progress=progress,
    )
    cosine = data.candidate(
        "cosine", fit.head.unit_weights(), train, held, (fit.best_epoch, reject)
    )
    prototypes_accuracy = baseline.baseline.accuracy
    if not cosine.accuracy > prototypes_accuracy:
        return replace(
            baseline, cosine=cosine, fit=fit,
            reason=f"the cosine head's held-out accuracy {cosine.accuracy:.4f} does not beat "
            f"the prototypes' {prototypes_accuracy:.4f}",
        )
    x, y = data.training_set(np.arange(len(clean)))
    checkpoint()
    final = fit_cosine_head(
        x, y, _prototype_matrix(clean, labels, people), config, reject=reject,
        epochs=fit.best_epoch, fixed_rows=data.unjudged_rows, progress=progress,
    )
    return Selection(
        "cosine", final.head, cosine.threshold, split, baseline.pairs, baseline.baseline,
        cosine, fit, clean[held],
        f"the cosine head's held-out accuracy {cosine.accuracy:.4f} beats the "
        f"prototypes' {prototypes_accuracy:.4f}",
    )


@dataclass(frozen=True)
class _Data:
    clean: NDArray[np.float32]  # [N, D]
    augmented: NDArray[np.float32]  # [N, A, D]
    labels: NDArray[np.intp]  # [N] rows 0..people-1
    people: int
    config: FitConfig
    target_far: float
    fallback_threshold: float
    prior: PopulationCalibration | None  # the model's population calibration
    checkpoint: Callable[[], None] = lambda: None  # called before each fit

    @property
    def unjudged_rows(self) -> NDArray[np.bool_]:
        """[people] the rows of people with a single sample, whom no held-out sample
        can judge: the cosine head leaves them as their prototypes."""
        return np.bincount(self.labels, minlength=self.people) < FITTED_ROW_SAMPLES

    def candidate(
        self,
        kind: str,
        weights: NDArray[np.float32],
        train: NDArray[np.intp],
        probes: NDArray[np.intp],
        fitting: tuple[int, float] | None = None,
    ) -> Candidate:
        """The head ``weights`` [K, D] built from the ``train`` samples (``fitting``:
        fitted as in ``strangers``), calibrated on strangers, scored on ``probes``."""
        genuine, rival = known_scores(self.clean[probes], self.labels[probes], weights)
        impostor, pair = self.strangers(train, fitting)
        scores = OpenSetScores(genuine, rival, impostor, pair)
        shift = 0.0
        if fitting is not None and len(pair):
            _, prototype_pairs = self.strangers(train, None)
            shift = float(np.median(pair) - np.median(prototype_pairs))
        calibration = calibrate(
            scores, self.target_far, self.fallback_threshold, prior=self.prior,
            people=self.people, prior_shift=shift,
        )
        return Candidate(kind, scores, calibration)

    def training_set(
        self, samples: NDArray[np.intp], rows: NDArray[np.intp] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.intp]]:
        """Clean and augmented embeddings of ``samples`` as one training set, labelled
        with ``rows`` (default: the samples' own labels)."""
        labels = self.labels[samples] if rows is None else rows
        copies = self.augmented.shape[1]
        dimension = self.clean.shape[1]
        x = np.concatenate([self.clean[samples], self.augmented[samples].reshape(-1, dimension)])
        y = np.concatenate([labels, np.repeat(labels, copies)])
        return x.astype(np.float32), y.astype(np.intp)

    def strangers(
        self, train: NDArray[np.intp], fitting: tuple[int, float] | None
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Impostor scores of every sample as a stranger: (best [M], pairs [P]).

        People are dealt into up to ``UNSEEN_FOLDS`` groups; for each group a gallery
        is built from the training samples of everybody else (prototypes; then, with
        ``fitting`` = (epochs, reject level), the cosine head fitted from them as the
        candidate was) and every sample of the group is scored against it: a person
        the gallery never saw."""
        groups = np.array_split(
            np.random.default_rng(self.config.seed).permutation(self.people),
            min(self.people, UNSEEN_FOLDS),
        )
        best: list[NDArray[np.float32]] = []
        pairs: list[NDArray[np.float32]] = []
        for group in groups:
            kept = np.setdiff1d(np.arange(self.people), group)
            if len(kept) == 0:
                continue
            row = np.full(self.people, -1, np.intp)
            row[kept] = np.arange(len(kept))
            members = train[row[self.labels[train]] >= 0]
            weights = _prototype_matrix(self.clean[members], row[self.labels[members]], len(kept))
            if fitting is not None:
                x, y = self.training_set(members, row[self.labels[members]])
                self.checkpoint()
                fitted = fit_cosine_head(
                    x, y, weights, self.config, reject=fitting[1], epochs=fitting[0],
                    fixed_rows=self.unjudged_rows[kept], progress=False,
                )
                weights = fitted.head.unit_weights()
            strangers = np.flatnonzero(np.isin(self.labels, group))
            found = unseen_scores(self.clean[strangers], np.full(len(strangers), -1), weights)
            best.append(found[0])
            pairs.append(found[1])
        if not best:
            empty = np.zeros(0, np.float32)
            return empty, empty
        return np.concatenate(best), np.concatenate(pairs)


def _prototype_matrix(
    embeddings: NDArray[np.float32], labels: NDArray[np.intp], people: int
) -> NDArray[np.float32]:
    """[people, D]: row k is the prototype of the samples labelled k."""
    names, weights = prototypes(embeddings, [str(int(k)) for k in labels])
    if len(names) != people:
        raise ValueError(f"every one of {people} people needs a sample, {len(names)} have one")
    rows = np.empty_like(weights)
    rows[[int(n) for n in names]] = weights
    return rows


def _reject_level(threshold: float) -> float:
    """The fitted head's "unknown" level: the baseline's calibrated threshold, as a
    cosine (a fallback or an unreachable threshold is clipped into [-1, 1])."""
    return float(np.clip(threshold, -1.0, 1.0))
