"""Scores, the "unknown" threshold for a target false-accept rate, and the figures.

All scores are cosine similarities of unit embeddings: a probe [D] against a gallery
row [D] (``embeddings @ weights.T``, as the server scores). A probe of person ``p``
makes two kinds of impostor score, both computed as if ``p`` were not enrolled
(leave-one-person-out: ``p``'s own row is left out):

* pairs: the probe against each other person's row, one score per (probe, other
  person) pair: the 1:1 false-accept rate;
* open set: the probe's best score among the other people's rows. This is exactly
  what the server sees when a person who is not enrolled walks in, since
  ``Gallery.match`` keeps the best row: the 1:N false-accept rate.

A fitted head's other rows were trained with ``p``'s samples as negatives, which
flatters them; ``trainer.fitting.selection`` therefore re-fits the head without ``p``'s group
of people before scoring ``p`` as a stranger (``unseen_scores``).

The gallery's own threshold is the smallest one whose false-accept rate is at most the
target for both kinds. With few impostor scores the empirical rate cannot resolve a
small target (100 scores cannot show 1e-3), so a normal distribution fitted to the
scores gives the tail too, and the higher of the two thresholds is used.

A small gallery's own scores say little, so the published threshold starts from the
model's population calibration (`facecore.calibration`: the threshold that keeps a
gallery of this many people at the target rate) and moves towards the gallery's own
threshold only as its evidence grows: the gallery's weight is its impostor count over
``OWN_EVIDENCE / target_far`` (the count at which ten false accepts are expected),
capped at one. The prior describes probes scored against probes (or prototypes); a
fitted head's rows score every probe differently, so for it the prior is moved by
``prior_shift``: how far the median of its impostor scores lies from the prototypes'
on the same strangers (`trainer.fitting.selection`). Without a population
calibration the gallery's own threshold is used alone, and the reason says so.

Probe-to-probe scores (``pair_scores``) describe the backbone itself; the report
plots them, the threshold does not use them (a gallery row is not a probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from facecore.calibration import PopulationCalibration, per_row_far

__all__ = [
    "Calibration",
    "OpenSetScores",
    "PairScores",
    "calibrate",
    "calibrate_threshold",
    "known_scores",
    "pair_scores",
    "roc_curve",
    "unseen_scores",
]

OWN_EVIDENCE = 10  # expected false accepts at which the gallery's own scores take over
MAX_PAIR_PROBES = 3000  # pairs grow as N^2: a larger store is subsampled for them


@dataclass(frozen=True)
class OpenSetScores:
    """How one gallery scores known people's probes and unseen people's probes.

    ``genuine`` [G]: each known probe against its own person's row; ``rival`` [G]: its
    best score among the other rows (-inf when there is no other row). ``impostor``
    [M]: each unseen probe's best row; ``pairs`` [P]: each unseen probe against each
    row. An unseen probe is one whose person is left out of the gallery."""

    genuine: NDArray[np.float32]
    rival: NDArray[np.float32]
    impostor: NDArray[np.float32]
    pairs: NDArray[np.float32]

    @property
    def correct(self) -> NDArray[np.bool_]:
        """[G] the probe's own row beats every other row (rank-1 identification)."""
        return self.genuine > self.rival

    def accuracy(self, threshold: float) -> float:
        """Identification accuracy: the fraction of known probes named correctly, i.e.
        their own row is the best one and scores at least ``threshold``."""
        if len(self.genuine) == 0:
            return float("nan")
        return float(np.mean(self.correct & (self.genuine >= threshold)))

    def rank1(self) -> float:
        """Identification accuracy without a threshold (closed set)."""
        return float(np.mean(self.correct)) if len(self.genuine) else float("nan")

    def false_accept_rate(self, threshold: float) -> float:
        """Fraction of unseen probes named as somebody (open set, 1:N)."""
        return float(np.mean(self.impostor >= threshold)) if len(self.impostor) else 0.0

    def false_reject_rate(self, threshold: float) -> float:
        """Fraction of known probes whose own row scores below ``threshold``."""
        return float(np.mean(self.genuine < threshold)) if len(self.genuine) else float("nan")


@dataclass(frozen=True)
class PairScores:
    """Probe-to-probe scores: ``genuine`` for pairs of the same person, ``impostor``
    for pairs of different people (each unordered pair once). They describe the
    backbone; the threshold is calibrated on gallery scores (``OpenSetScores``)."""

    genuine: NDArray[np.float32]
    impostor: NDArray[np.float32]


@dataclass(frozen=True)
class Calibration:
    """A threshold and how it was reached (see the module docstring)."""

    threshold: float  # the prior moved towards the gallery's own by ``weight``
    empirical: float  # from the gallery's scores alone (-inf when there were none)
    gaussian: float  # from normal fits to the scores (-inf when there were none)
    target_far: float
    impostor_count: int  # open-set and pair scores together
    fallback: bool  # True when there was neither a prior nor an impostor score
    prior: float  # the population calibration's threshold (nan: the model has none)
    weight: float  # how far the gallery's own threshold counts, 0..1
    reason: str  # one line for the log and the manifest


def known_scores(
    probes: NDArray[np.float32], labels: NDArray[np.intp], weights: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(genuine [N], rival [N]) of probes [N, D] whose person is row ``labels`` [N] of
    ``weights`` [K, D]."""
    if len(probes) != len(labels):
        raise ValueError(f"{len(probes)} probes but {len(labels)} labels")
    similarity = probes @ weights.T
    rows = np.arange(len(labels))
    genuine = similarity[rows, labels].astype(np.float32)
    similarity[rows, labels] = -np.inf
    rival = similarity.max(axis=1, initial=-np.inf).astype(np.float32)
    return genuine, rival


def unseen_scores(
    probes: NDArray[np.float32], own_rows: NDArray[np.intp], weights: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(best [M], pairs [P]) of probes [M, D] as strangers to ``weights`` [K, D]: the
    row ``own_rows[i]`` of probe i's own person is left out (-1: it has none). Probes
    left with no row to score against are dropped."""
    if len(probes) != len(own_rows):
        raise ValueError(f"{len(probes)} probes but {len(own_rows)} rows")
    similarity = (probes @ weights.T).astype(np.float32)
    mask = np.ones(similarity.shape, bool)
    enrolled = np.flatnonzero(own_rows >= 0)
    mask[enrolled, own_rows[enrolled]] = False
    scorable = mask.any(axis=1)
    best = np.where(mask, similarity, -np.inf).max(axis=1, initial=-np.inf)[scorable]
    return best.astype(np.float32), similarity[mask]


def pair_scores(
    embeddings: NDArray[np.float32], labels: NDArray[np.intp], seed: int = 0
) -> PairScores:
    """All probe-to-probe scores of up to ``MAX_PAIR_PROBES`` probes (a random subset,
    fixed by ``seed``, when there are more)."""
    if len(embeddings) > MAX_PAIR_PROBES:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), MAX_PAIR_PROBES, False))
        embeddings, labels = embeddings[keep], labels[keep]
    upper = np.triu_indices(len(embeddings), k=1)
    similarity = (embeddings @ embeddings.T)[upper].astype(np.float32)
    same = labels[upper[0]] == labels[upper[1]]
    return PairScores(similarity[same], similarity[~same])


def calibrate_threshold(impostor: NDArray[np.float32], target_far: float) -> tuple[float, float]:
    """(empirical, gaussian) thresholds for one set of impostor scores.

    Empirical: the lowest threshold at which at most ``floor(target_far * n)`` scores
    are accepted (a score is accepted when it is >= the threshold). Gaussian: the
    ``1 - target_far`` quantile of a normal with the scores' mean and spread."""
    if len(impostor) == 0:
        return -np.inf, -np.inf
    ordered = np.sort(np.asarray(impostor, np.float64))[::-1]
    allowed = int(np.floor(target_far * len(ordered)))
    if allowed >= len(ordered):
        empirical = -np.inf
    else:
        # the next float32 up: scores are float32, and so is the server's comparison
        empirical = float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))
    if target_far <= 0.0:
        gaussian = np.inf
    elif target_far >= 1.0:
        gaussian = -np.inf
    else:
        spread = float(ordered.std()) if len(ordered) > 1 else 0.0
        gaussian = NormalDist(float(ordered.mean()), max(spread, 1e-6)).inv_cdf(1.0 - target_far)
    return empirical, float(gaussian)


def calibrate(
    scores: OpenSetScores,
    target_far: float,
    fallback: float,
    *,
    prior: PopulationCalibration | None = None,
    people: int = 1,
    prior_shift: float = 0.0,
) -> Calibration:
    """The threshold for a gallery of ``people`` at an open-set false-accept rate of
    ``target_far``: the population ``prior`` moved towards the gallery's own threshold
    (at most ``target_far`` for both open-set and pair impostors) as its evidence
    grows; without a prior, the gallery's own, or ``fallback`` with no impostor score."""
    found = [calibrate_threshold(s, target_far) for s in (scores.impostor, scores.pairs)]
    empirical = max(e for e, _ in found)
    gaussian = max(g for _, g in found)
    count = len(scores.impostor) + len(scores.pairs)
    own = float(max(empirical, gaussian))
    if prior is None:
        if count == 0:
            reason = (f"no population calibration for this model and no impostor score: "
                      f"the default {fallback:.4f} (run `facestream eval calibrate`)")
            return Calibration(fallback, empirical, gaussian, target_far, 0, True, np.nan, 1.0,
                               reason)
        reason = (f"no population calibration for this model: the gallery's own {count} "
                  f"impostor scores alone give {own:.4f} (run `facestream eval calibrate`)")
        return Calibration(own, empirical, gaussian, target_far, count, False, np.nan, 1.0,
                           reason)
    row_far = per_row_far(target_far, people)
    start = prior.threshold(row_far) + prior_shift
    weight = min(1.0, count * target_far / OWN_EVIDENCE) if count else 0.0
    threshold = start + weight * (own - start) if count else start
    reason = (
        f"population prior {start:.4f} ({prior.describe()}; per-row false-accept rate "
        f"{row_far:.2e} with {people} {'person' if people == 1 else 'people'} enrolled, "
        f"target {target_far:g}"
        + (f"; moved {prior_shift:+.4f} for a fitted head" if prior_shift else "")
        + ")"
        + (f", the gallery's own {count} impostor scores ({own:.4f}) weigh {weight:.2f}"
           if count else ", no impostor score of the gallery's own")
        + f": {threshold:.4f}"
    )
    return Calibration(float(threshold), empirical, gaussian, target_far, count, False, start,
                       weight, reason)


def roc_curve(
    genuine: NDArray[np.float32], impostor: NDArray[np.float32]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(false-accept rate, true-accept rate, threshold), one point per distinct score,
    thresholds falling, both rates rising from 0 to 1."""
    thresholds = np.unique(np.concatenate([genuine, impostor]).astype(np.float64))[::-1]
    thresholds = np.concatenate([[np.inf], thresholds])
    far = _accepted_fraction(impostor, thresholds)
    tar = _accepted_fraction(genuine, thresholds)
    return far, tar, thresholds


def _accepted_fraction(
    scores: NDArray[np.float32], thresholds: NDArray[np.float64]
) -> NDArray[np.float64]:
    if len(scores) == 0:
        return np.zeros(len(thresholds))
    ordered = np.sort(np.asarray(scores, np.float64))
    below = np.searchsorted(ordered, thresholds, side="left")
    return (len(ordered) - below) / len(ordered)
