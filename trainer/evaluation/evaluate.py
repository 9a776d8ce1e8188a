"""Face verification metrics: pairs of images, scores, the 10-fold protocol.

Pure functions over labels and scores; no image is read here. A score is "higher
means more alike" (a cosine similarity, or minus a distance), and a pair is called
the same person when its score is at least the threshold.

* `form_pairs` makes genuine and impostor pairs from per-image labels, seeded;
* `parse_lfw_pairs` reads LFW's ``pairs.txt`` (the standard protocol's folds);
* `verify` runs the protocol: accuracy over the folds, each fold's threshold chosen
  on the others, and the TAR at a fixed FAR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from trainer.evaluation.calibrate import calibrate_threshold

__all__ = [
    "PairLine",
    "Pairs",
    "TarAtFar",
    "Verification",
    "best_threshold",
    "form_pairs",
    "kfold_accuracy",
    "lfw_image_path",
    "pairs_from_paths",
    "parse_lfw_pairs",
    "tar_at_far",
    "verify",
]

FOLDS = 10
FAR = 1e-3


@dataclass(frozen=True)
class Pairs:
    """P pairs of images, as parallel arrays indexing an image list:
    ``first``, ``second`` [P] intp, ``same`` [P] bool (genuine pair), ``fold`` [P]
    intp in 0 .. folds - 1."""

    first: NDArray[np.intp]
    second: NDArray[np.intp]
    same: NDArray[np.bool_]
    fold: NDArray[np.intp]

    def __post_init__(self) -> None:
        n = len(self.first)
        for name in ("first", "second", "same", "fold"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"Pairs.{name} must have shape ({n},), got {shape}")

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, mask: NDArray[np.bool_]) -> Pairs:
        return Pairs(self.first[mask], self.second[mask], self.same[mask], self.fold[mask])

    @property
    def folds(self) -> int:
        """The number of folds that hold at least one pair."""
        return len(np.unique(self.fold))


def _impostor_total(codes: NDArray[np.intp]) -> int:
    """How many pairs of images have different label codes."""
    n = len(codes)
    return n * (n - 1) // 2 - int(sum(k * (k - 1) // 2 for k in np.bincount(codes)))


def _draw_impostors(
    codes: NDArray[np.intp], count: int, rng: np.random.Generator
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``count`` distinct pairs (i < j) of images with different label codes, drawn
    uniformly; ``count`` must not exceed `_impostor_total`."""
    n, total = len(codes), _impostor_total(codes)
    if count == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    if 4 * count >= total:  # a large share of all there are (at most a few thousand)
        partners = [np.flatnonzero(codes[i + 1 :] != codes[i]) + i + 1 for i in range(n)]
        first = np.repeat(np.arange(n), [len(p) for p in partners])
        chosen = np.sort(rng.choice(total, size=count, replace=False))
        return first[chosen], np.concatenate(partners)[chosen]
    found: dict[int, None] = {}  # pair code i * n + j, in the order drawn
    while len(found) < count:
        a, b = rng.integers(n, size=(2, 2 * (count - len(found)) + 16))
        ok = codes[a] != codes[b]
        for code in (np.minimum(a, b)[ok] * n + np.maximum(a, b)[ok]).tolist():
            found.setdefault(code)
            if len(found) == count:
                break
    keys = np.fromiter(found, np.intp, count)
    return keys // n, keys % n


def form_pairs(
    labels: Sequence[str], *, max_genuine: int = 3000, folds: int = FOLDS, seed: int = 0
) -> Pairs:
    """Genuine and impostor pairs from one label per image, the same for the same
    arguments.

    Every genuine pair (two images with one label) is taken, or ``max_genuine`` of
    them chosen at random; then as many impostor pairs (different labels), but at
    least one per fold when that many exist. Each kind is shuffled and dealt round
    the folds, so the folds hold about the same number of each.
    """
    if folds < 1 or max_genuine < 1:
        raise ValueError("folds and max_genuine must be at least 1")
    _, codes = np.unique(np.array(list(labels), dtype=str), return_inverse=True)
    codes = codes.astype(np.intp)
    rng = np.random.default_rng(seed)
    genuine = []
    for members in (np.flatnonzero(codes == c) for c in range(codes.max(initial=-1) + 1)):
        a, b = np.triu_indices(len(members), 1)
        genuine.append(np.stack([members[a], members[b]], axis=1))
    gi, gj = np.concatenate(genuine or [np.zeros((0, 2), np.intp)]).T
    if len(gi) > max_genuine:
        chosen = np.sort(rng.choice(len(gi), size=max_genuine, replace=False))
        gi, gj = gi[chosen], gj[chosen]
    ii, ij = _draw_impostors(codes, min(max(len(gi), folds), _impostor_total(codes)), rng)
    if len(gi) + len(ii) == 0:
        raise ValueError("no pair can be formed: fewer than two images")
    first = np.concatenate([gi, ii]).astype(np.intp)
    second = np.concatenate([gj, ij]).astype(np.intp)
    same = np.concatenate([np.ones(len(gi), bool), np.zeros(len(ii), bool)])
    # deal each kind round the folds in a shuffled order, continuing where the last ended
    rank = np.concatenate([rng.permutation(len(gi)), len(gi) + rng.permutation(len(ii))])
    n_folds = min(folds, len(first))
    return Pairs(first, second, same, (rank % n_folds).astype(np.intp))


def lfw_image_path(name: str, number: int) -> str:
    """LFW's file for image ``number`` of ``name``: ``Name/Name_0001.jpg``."""
    return f"{name}/{name}_{number:04d}.jpg"


class PairLine(NamedTuple):
    """One pair of a pairs file: images as `lfw_image_path` names."""

    first: str
    second: str
    same: bool
    fold: int  # 0-based
    line: int  # 1-based, in the file


def parse_lfw_pairs(text: str) -> tuple[PairLine, ...]:
    """The pairs of an LFW ``pairs.txt``, one `PairLine` each.

    The first line is ``folds n`` (or ``n`` alone: one fold); then, per fold, n
    lines ``Name i j`` (same person) and n lines ``Name1 i Name2 j`` (different).
    Raises ValueError naming the line at fault.
    """
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, fields) for number, fields in lines if fields]
    if not lines:
        raise ValueError("the pairs file is empty")
    head_number, head = lines[0]
    try:
        sizes = [int(v) for v in head]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes.insert(0, 1)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(
            f"line {head_number}: expected 'folds n' (both at least 1), got {' '.join(head)!r}"
        )
    folds, per_kind = sizes
    body = lines[1:]
    if len(body) != 2 * folds * per_kind:
        raise ValueError(
            f"{folds} folds of {per_kind} same and {per_kind} different pairs need "
            f"{2 * folds * per_kind} pair lines, the file has {len(body)}"
        )
    pairs = []
    for index, (number, fields) in enumerate(body):
        fold, same = index // (2 * per_kind), index % (2 * per_kind) < per_kind
        line = " ".join(fields)
        if len(fields) != (3 if same else 4):
            kind = "'Name i j'" if same else "'Name1 i Name2 j'"
            raise ValueError(f"line {number}: fold {fold + 1} expects {kind} here, got {line!r}")
        name1, name2 = fields[0], fields[0] if same else fields[2]
        try:
            i, j = int(fields[1]), int(fields[-1])
        except ValueError:
            raise ValueError(f"line {number}: image numbers must be integers: {line!r}") from None
        pairs.append(PairLine(lfw_image_path(name1, i), lfw_image_path(name2, j), same, fold,
                              number))
    return tuple(pairs)


def pairs_from_paths(rows: Sequence[PairLine]) -> tuple[tuple[str, ...], Pairs]:
    """(the distinct images in first-seen order, `Pairs` indexing them) for the rows
    `parse_lfw_pairs` gives."""
    index: dict[str, int] = {}
    for row in rows:
        index.setdefault(row.first, len(index))
        index.setdefault(row.second, len(index))
    pairs = Pairs(
        first=np.array([index[r.first] for r in rows], np.intp),
        second=np.array([index[r.second] for r in rows], np.intp),
        same=np.array([r.same for r in rows], bool),
        fold=np.array([r.fold for r in rows], np.intp),
    )
    return tuple(index), pairs


def best_threshold(scores: NDArray[np.floating], same: NDArray[np.bool_]) -> float:
    """The threshold with the highest accuracy on these pairs (``score >= t``: same),
    halfway between the two scores it separates. Ties go to the highest threshold."""
    scores = np.asarray(scores, np.float64)
    if len(scores) == 0:
        raise ValueError("no pairs to choose a threshold on")
    order = np.argsort(-scores, kind="stable")
    ranked, genuine = scores[order], np.asarray(same, bool)[order]
    # accepting the k best pairs (k = 0 .. P): genuine accepted + impostors rejected
    accepted_genuine = np.concatenate([[0], np.cumsum(genuine)])
    k = np.arange(len(ranked) + 1)
    correct = accepted_genuine + (len(ranked) - genuine.sum()) - (k - accepted_genuine)
    # only cut between two different scores (or before the first / after the last)
    valid = np.ones(len(k), bool)
    valid[1:-1] = ranked[:-1] > ranked[1:]
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        return float(np.nextafter(ranked[0], np.inf))
    if best == len(ranked):
        return float(ranked[-1])
    return float((ranked[best - 1] + ranked[best]) / 2)


def kfold_accuracy(
    scores: NDArray[np.floating], pairs: Pairs
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(accuracy [K], threshold [K]) of each fold, its threshold chosen on the pairs of
    all other folds (on its own pairs when there is only one fold)."""
    scores = np.asarray(scores, np.float64)
    accuracy, thresholds = [], []
    for fold in np.unique(pairs.fold):
        test = pairs.fold == fold
        train = ~test if (~test).any() else test
        threshold = best_threshold(scores[train], pairs.same[train])
        thresholds.append(threshold)
        accuracy.append(float(np.mean((scores[test] >= threshold) == pairs.same[test])))
    return np.array(accuracy), np.array(thresholds)


@dataclass(frozen=True)
class TarAtFar:
    """True accept rate at the threshold whose false accept rate is at most ``far``.

    ``achieved_far`` is the FAR measured at ``threshold``. With ``impostors`` pairs
    the FAR moves in steps of 1 / impostors: ``precise`` is False when fewer than
    10 / far impostor pairs leave the estimate resting on a handful of pairs.
    """

    far: float
    tar: float
    threshold: float
    achieved_far: float
    impostors: int

    @property
    def precise(self) -> bool:
        return self.impostors * self.far >= 10


def tar_at_far(scores: NDArray[np.floating], same: NDArray[np.bool_], far: float = FAR) -> TarAtFar:
    """The lowest threshold that accepts at most ``far`` of the impostor pairs, and
    the share of genuine pairs it accepts."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    impostor = scores[~same]
    if len(impostor) == 0 or not same.any():
        raise ValueError("TAR at FAR needs genuine and impostor pairs")
    threshold, _ = calibrate_threshold(impostor, far)
    return TarAtFar(
        far=far,
        tar=float(np.mean(scores[same] >= threshold)),
        threshold=threshold,
        achieved_far=float(np.mean(impostor >= threshold)),
        impostors=len(impostor),
    )


@dataclass(frozen=True)
class Verification:
    """The protocol's results for one pipeline on one set of pairs.

    ``fold_accuracy``/``fold_threshold`` [K]: each fold, threshold from the others;
    ``threshold``: the best threshold on all pairs (the one to deploy).
    """

    pairs: int
    genuine: int
    fold_accuracy: NDArray[np.float64]
    fold_threshold: NDArray[np.float64]
    threshold: float
    tar: TarAtFar

    @property
    def accuracy(self) -> float:
        return float(self.fold_accuracy.mean())

    @property
    def accuracy_std(self) -> float:
        return float(self.fold_accuracy.std())


def verify(scores: NDArray[np.floating], pairs: Pairs, far: float = FAR) -> Verification:
    """Run the verification protocol on one score per pair."""
    scores = np.asarray(scores, np.float64)
    if scores.shape != (len(pairs),):
        raise ValueError(f"expected {len(pairs)} scores, got shape {scores.shape}")
    accuracy, thresholds = kfold_accuracy(scores, pairs)
    return Verification(
        pairs=len(pairs),
        genuine=int(pairs.same.sum()),
        fold_accuracy=accuracy,
        fold_threshold=thresholds,
        threshold=best_threshold(scores, pairs.same),
        tar=tar_at_far(scores, pairs.same, far),
    )
