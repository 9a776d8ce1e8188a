"""Scores, the "unknown" threshold for a target false-accept rate, and the figures.

All scores are cosine similarities of unit embeddings: a probe [D] against a gallery
row [D] (``embeddings @ weights.T``, as the server scores), or a probe against another
probe. Two kinds of impostor attempt are scored:

* open-set (leave-one-person-out): a probe against the rows of everybody *except* its
  own person, best row kept. This is exactly what the server sees when a person who
  is not enrolled walks in: ``Gallery.match`` keeps the best row;
* pairs: a probe against a probe of a different person. A person enrolled from a
  single photo has that photo's embedding as their row, so these are the scores such
  a row gives to strangers.

The threshold is the smallest one whose false-accept rate is at most the target on
both kinds. With few impostor scores the empirical rate cannot resolve a small target
(100 scores cannot show 1e-3), so a Gaussian fitted to the impostor scores gives the
tail too, and the higher of the two thresholds is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Calibration",
    "OpenSetScores",
    "PairScores",
    "calibrate",
    "calibrate_threshold",
    "open_set_scores",
    "pair_scores",
    "roc_curve",
]

MAX_PAIR_PROBES = 3000  # pairs grow as N^2: a larger store is subsampled for them


@dataclass(frozen=True)
class OpenSetScores:
    """How one gallery scores a set of labelled probes.

    ``genuine`` [N]: each probe against its own person's row. ``impostor`` [N]: each
    probe's best score among the other people's rows (empty when the gallery has a
    single row: then nobody else can be falsely accepted)."""

    genuine: NDArray[np.float32]
    impostor: NDArray[np.float32]

    @property
    def correct(self) -> NDArray[np.bool_]:
        """[N] the probe's own row beats every other row (rank-1 identification)."""
        if len(self.impostor) == 0:
            return np.ones(len(self.genuine), bool)
        return self.genuine > self.impostor

    def accuracy(self, threshold: float) -> float:
        """Identification accuracy: the fraction of probes named correctly, i.e. their
        own row is the best one and scores at least ``threshold``."""
        if len(self.genuine) == 0:
            return float("nan")
        return float(np.mean(self.correct & (self.genuine >= threshold)))

    def rank1(self) -> float:
        """Identification accuracy without a threshold (closed set)."""
        return float(np.mean(self.correct)) if len(self.genuine) else float("nan")

    def false_accept_rate(self, threshold: float) -> float:
        """Fraction of open-set impostor attempts that score at least ``threshold``."""
        return float(np.mean(self.impostor >= threshold)) if len(self.impostor) else 0.0

    def false_reject_rate(self, threshold: float) -> float:
        """Fraction of probes whose own row scores below ``threshold``."""
        return float(np.mean(self.genuine < threshold)) if len(self.genuine) else float("nan")


@dataclass(frozen=True)
class PairScores:
    """Probe-to-probe scores: ``genuine`` for pairs of the same person, ``impostor``
    for pairs of different people (each unordered pair once)."""

    genuine: NDArray[np.float32]
    impostor: NDArray[np.float32]


@dataclass(frozen=True)
class Calibration:
    """A threshold and how it was reached (see the module docstring)."""

    threshold: float  # max(empirical, gaussian) over both kinds, or the fallback
    empirical: float  # from the scores alone (-inf when there were none)
    gaussian: float  # from normal fits to the scores (-inf when there were none)
    target_far: float
    impostor_count: int  # open-set and pair scores together
    fallback: bool  # True when there were no impostor scores at all


def open_set_scores(
    embeddings: NDArray[np.float32], labels: NDArray[np.intp], weights: NDArray[np.float32]
) -> OpenSetScores:
    """Score probes [N, D] with person indices ``labels`` [N] against ``weights`` [K, D]."""
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    similarity = embeddings @ weights.T
    rows = np.arange(len(labels))
    genuine = similarity[rows, labels].astype(np.float32)
    if weights.shape[0] < 2:
        return OpenSetScores(genuine, np.zeros(0, np.float32))
    others = similarity.copy()
    others[rows, labels] = -np.inf
    return OpenSetScores(genuine, others.max(axis=1).astype(np.float32))


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
        empirical = float(np.nextafter(ordered[allowed], np.inf))
    if target_far <= 0.0:
        gaussian = np.inf
    elif target_far >= 1.0:
        gaussian = -np.inf
    else:
        spread = float(ordered.std()) if len(ordered) > 1 else 0.0
        gaussian = NormalDist(float(ordered.mean()), max(spread, 1e-6)).inv_cdf(1.0 - target_far)
    return empirical, float(gaussian)


def calibrate(
    open_set: OpenSetScores, pairs: PairScores, target_far: float, fallback: float
) -> Calibration:
    """The threshold whose false-accept rate is at most ``target_far`` for both open-set
    and pair impostors; ``fallback`` when there are no impostor scores at all."""
    found = [calibrate_threshold(s, target_far) for s in (open_set.impostor, pairs.impostor)]
    empirical = max(e for e, _ in found)
    gaussian = max(g for _, g in found)
    count = len(open_set.impostor) + len(pairs.impostor)
    if count == 0:
        return Calibration(fallback, empirical, gaussian, target_far, 0, True)
    threshold = max(empirical, gaussian)
    return Calibration(float(threshold), empirical, gaussian, target_far, count, False)


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
