"""The trainer's pieces: chip augmentation, the split, calibration, the cosine head,
the head selection and the training report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from facecore.alignment import align_faces
from facecore.detector import Detector
from facecore.registry import MODELS
from trainer.evaluation.calibrate import (
    OpenSetScores,
    calibrate,
    calibrate_threshold,
    known_scores,
    roc_curve,
    unseen_scores,
)
from trainer.fitting.augment import Augmentation, augment_chips, seed_of
from trainer.fitting.fit import FitConfig, fit_cosine_head, margin_loss
from trainer.fitting.report import REPORT_FILES, ReportContext, write_report
from trainer.fitting.selection import select_head, stratified_split

PEOPLE = 6


def nuisance_embeddings(seed: int, per_person: int = 20, dim: int = 16):
    """Unit embeddings [N, dim] of PEOPLE people, with labels [N]: a large component
    shared by everyone (as dlib's embeddings have) plus a small identity part, and a
    large within-person variation along three directions shared by all people. The
    nearest prototype mostly gets these wrong; a fitted head learns to ignore the
    shared directions."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    common /= np.linalg.norm(common)
    identity = rng.normal(size=(PEOPLE, dim)) * 0.15
    nuisance = rng.normal(size=(3, dim))
    labels = np.repeat(np.arange(PEOPLE), per_person)
    x = (
        common
        + identity[labels]
        + (rng.normal(size=(len(labels), 3)) * 0.5) @ nuisance
        + rng.normal(size=(len(labels), dim)) * 0.02
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.intp)


def prototypes_of(x: NDArray[np.float32], labels: NDArray[np.intp]) -> NDArray[np.float32]:
    rows = np.stack([x[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def chip(shared_file, yunet_path: Path) -> NDArray[np.uint8]:
    """A real aligned 150x150 dlib chip of Barack Obama."""
    image = cv2.imread(str(shared_file("media/obama.jpg")))
    faces = Detector(yunet_path).detect(image)
    spec = MODELS["dlib_resnet_v1"]
    template = np.asarray(spec.template, np.float32)
    return align_faces(image, faces.largest().landmarks, template, spec.input_size)[0]


# --- augmentation -------------------------------------------------------------------


def test_augmented_copies_are_reproducible_varied_and_face_like(chip) -> None:
    chips = np.stack([chip, chip[:, ::-1].copy()])
    recipe = Augmentation(copies=6)
    first = augment_chips(chips, [seed_of("ab" * 32), 7], recipe)
    again = augment_chips(chips, [seed_of("ab" * 32), 7], recipe)
    assert first.shape == (2, 6, 150, 150, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)  # the cache relies on this
    other = augment_chips(chips, [8, 9], recipe)
    assert not np.array_equal(first, other)
    # every copy differs from the chip and from the other copies ...
    flat = first[0].reshape(6, -1).astype(np.int16)
    assert all(np.abs(f - chip.reshape(-1)).mean() > 2 for f in flat)
    assert len({c.tobytes() for c in first[0]}) == 6
    # ... but stays the same face: correlated with it (or with its mirror image)
    for copy in first[0]:
        grey = cv2.cvtColor(copy, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel()
        best = max(
            np.corrcoef(grey, cv2.cvtColor(c, cv2.COLOR_BGR2GRAY).astype(np.float32).ravel())[0, 1]
            for c in (chip, chip[:, ::-1].copy())
        )
        assert best > 0.6
    assert augment_chips(chips, [1, 2], Augmentation(copies=0)).shape == (2, 0, 150, 150, 3)
    with pytest.raises(ValueError, match="one seed per chip"):
        augment_chips(chips, [1], recipe)


def test_augmentation_key_names_the_recipe() -> None:
    assert Augmentation().key == Augmentation().key
    assert Augmentation().key != Augmentation(copies=3).key
    assert Augmentation().key != Augmentation(max_rotation_deg=4.0).key
    with pytest.raises(ValueError, match="jpeg_quality"):
        Augmentation(jpeg_quality=(90, 20))


# --- the split and the scores -------------------------------------------------------


def test_stratified_split_holds_out_per_person_and_keeps_single_samples() -> None:
    labels = np.array([0] * 10 + [1] * 2 + [2] + [3] * 3 + [4], np.intp)
    split = stratified_split(labels, 0.3, seed=0)
    assert split.single_sample_people == 2
    assert sorted([*split.train, *split.held_out]) == list(range(len(labels)))
    held = labels[split.held_out]
    train = labels[split.train]
    assert [int(np.sum(held == k)) for k in range(5)] == [3, 1, 0, 1, 0]
    assert set(train) == {0, 1, 2, 3, 4}  # everybody keeps a training sample
    again = stratified_split(labels, 0.3, seed=0)
    np.testing.assert_array_equal(again.held_out, split.held_out)


def test_known_and_unseen_scores() -> None:
    weights = np.eye(3, 4, dtype=np.float32)
    probes = np.array([[0.9, 0.3, 0.1, 0], [0.2, 0.1, 0.7, 0], [0.1, 0.5, 0.4, 0]], np.float32)
    genuine, rival = known_scores(probes, np.array([0, 2, 2]), weights)
    np.testing.assert_allclose(genuine, [0.9, 0.7, 0.4])
    np.testing.assert_allclose(rival, [0.3, 0.2, 0.5])
    best, pairs = unseen_scores(probes, np.array([0, -1, 1]), weights)
    np.testing.assert_allclose(best, [0.3, 0.7, 0.4])  # own row (0; none; 1) left out
    assert len(pairs) == 2 + 3 + 2
    scores = OpenSetScores(genuine, rival, best, pairs)
    assert scores.correct.tolist() == [True, True, False]
    assert scores.accuracy(0.5) == pytest.approx(2 / 3)
    assert scores.accuracy(0.8) == pytest.approx(1 / 3)
    assert scores.false_accept_rate(0.5) == pytest.approx(1 / 3)


@pytest.mark.parametrize("target", [0.01, 0.001])
def test_threshold_meets_the_target_false_accept_rate(target: float) -> None:
    impostor = np.random.default_rng(1).normal(0.5, 0.1, 20_000).astype(np.float32)
    empirical, gaussian = calibrate_threshold(impostor, target)
    accepted = np.mean(impostor >= empirical)  # float32 scores, as the server has them
    assert accepted <= target
    # the lowest such threshold: the next score down would be accepted too many times
    below = np.max(impostor[impostor < empirical])
    assert np.mean(impostor >= below) > target
    assert gaussian == pytest.approx(0.5 + 0.1 * {0.01: 2.326, 0.001: 3.090}[target], abs=0.01)


def test_few_impostors_get_a_gaussian_tail_and_none_the_fallback() -> None:
    impostor = np.array([0.30, 0.35, 0.40, 0.45, 0.50], np.float32)
    scores = OpenSetScores(np.array([0.9], np.float32), np.array([0.5], np.float32),
                           impostor, np.zeros(0, np.float32))
    calibration = calibrate(scores, 1e-3, fallback=0.82)
    assert calibration.empirical == pytest.approx(0.5, abs=1e-6)  # just above the highest
    assert calibration.threshold == calibration.gaussian > 0.6  # 5 scores cannot show 1e-3
    assert not calibration.fallback and calibration.impostor_count == 5
    empty = np.zeros(0, np.float32)
    alone = calibrate(OpenSetScores(scores.genuine, scores.rival, empty, empty), 1e-3, 0.82)
    assert alone.fallback and alone.threshold == 0.82


def test_roc_curve_runs_from_nothing_to_everything() -> None:
    far, tar, thresholds = roc_curve(np.array([0.9, 0.8, 0.6], np.float32),
                                     np.array([0.7, 0.5], np.float32))
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    at = list(thresholds).index(np.float32(0.6).item())
    assert (far[at], tar[at]) == (0.5, 1.0)


# --- the cosine head ----------------------------------------------------------------


def test_cosine_head_learns_what_the_prototypes_miss() -> None:
    x, labels = nuisance_embeddings(seed=0)
    split = stratified_split(labels, 0.3, seed=0)
    train, held = split.train, split.held_out
    initial = prototypes_of(x[train], labels[train])

    def rank1(weights: NDArray[np.float32]) -> float:
        genuine, rival = known_scores(x[held], labels[held], weights)
        return float(np.mean(genuine > rival))

    before = rank1(initial)
    fit = fit_cosine_head(x[train], labels[train], initial, FitConfig(),
                          held_out=(x[held], labels[held]), progress=False)
    weights = fit.head.unit_weights()
    after = rank1(weights)
    assert before < 0.5 and after > 0.85
    assert 0 < fit.best_epoch <= fit.epochs <= FitConfig().max_epochs
    held_losses = [h for _, h in fit.history]
    assert fit.best_held_loss == pytest.approx(min(held_losses))
    if fit.epochs < FitConfig().max_epochs:  # stopped early: patience epochs without gain
        assert fit.epochs - fit.best_epoch == FitConfig().patience
    # the exported rows are unit vectors, and numpy on them scores like the torch head
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(x @ weights.T, fit.head.scores(x), atol=1e-6)


def test_reject_level_keeps_own_row_scores_above_it() -> None:
    x, labels = nuisance_embeddings(seed=1)
    initial = prototypes_of(x, labels)
    config = FitConfig(max_epochs=60)

    def own_scores(reject: float | None) -> NDArray[np.float32]:
        fit = fit_cosine_head(x, labels, initial, config, reject=reject, progress=False)
        return known_scores(x, labels, fit.head.unit_weights())[0]

    # plain CosFace lets the rows drift away from the faces (own-row scores fall from
    # about 0.47 to 0.28 here); the "unknown" level at 0.5 holds them up
    free, held_up = own_scores(None), own_scores(0.5)
    assert np.mean(held_up >= 0.5) > np.mean(free >= 0.5) + 0.2
    assert held_up.mean() > free.mean() + 0.1
    # the extra logit only adds a competitor: the loss can only grow
    cos, target = torch.tensor([[0.5, 0.2]]), torch.tensor([0])
    assert margin_loss(cos, target, 0.2, 30.0, reject=0.9) > margin_loss(cos, target, 0.2, 30.0)


def test_fixed_rows_stay_as_they_start_and_still_count_as_negatives() -> None:
    x, labels = nuisance_embeddings(seed=4)
    initial = prototypes_of(x, labels)
    fixed = np.zeros(PEOPLE, bool)
    fixed[[0, 3]] = True
    fit = fit_cosine_head(x, labels, initial, FitConfig(max_epochs=20), reject=0.5,
                          fixed_rows=fixed, progress=False)
    weights = fit.head.unit_weights()
    np.testing.assert_array_equal(weights[fixed], initial[fixed])
    assert np.abs(weights[~fixed] - initial[~fixed]).max() > 0.05  # the others moved


# --- choosing the head, and the report ----------------------------------------------


def _select(x, labels, config: FitConfig | None = None):
    augmented = np.stack([x, x], axis=1)  # two "augmented" copies: the clean ones
    return select_head(x, augmented, labels, people=PEOPLE, target_far=0.01,
                       fallback_threshold=0.82, config=config or FitConfig(), progress=False)


def test_cosine_head_is_published_only_when_it_beats_the_prototypes() -> None:
    x, labels = nuisance_embeddings(seed=2, per_person=24)
    won = _select(x, labels)
    assert won.cosine is not None and won.fit is not None
    assert won.kind == "cosine" and won.cosine.accuracy > won.baseline.accuracy
    assert won.threshold == won.cosine.threshold
    assert "beats" in won.reason
    assert len(won.probes) == len(won.split.held_out)
    # strangers: every sample is scored once as somebody the gallery never saw
    assert len(won.cosine.scores.impostor) == len(x) == len(won.baseline.scores.impostor)

    # a head that cannot train is the prototypes again: a tie, and ties go to the baseline
    tied = _select(x, labels, FitConfig(max_epochs=0))
    assert tied.kind == "prototypes" and tied.cosine is not None
    assert tied.cosine.accuracy == tied.baseline.accuracy
    assert tied.threshold == tied.baseline.threshold
    assert "does not beat" in tied.reason
    np.testing.assert_allclose(tied.head.unit_weights(), prototypes_of(x, labels), atol=1e-6)


def test_a_person_with_one_sample_keeps_that_sample_as_the_fitted_head_s_row() -> None:
    """No held-out sample can judge what fitting does to the row of a person with one
    sample, so the fitted head leaves it as that sample's embedding (the published
    head, re-fitted on all samples, too: tests/test_readme_path.py, on real faces)."""
    x, labels = nuisance_embeddings(seed=2, per_person=24)
    alone = np.flatnonzero(labels == 0)[0]
    keep = (labels != 0) | (np.arange(len(labels)) == alone)
    x, labels = x[keep], labels[keep]
    chosen = _select(x, labels)
    assert chosen.fit is not None and chosen.split.single_sample_people == 1
    rows = chosen.fit.head.unit_weights()
    np.testing.assert_allclose(rows[0], x[alone], atol=1e-6)
    train = chosen.split.train
    others = prototypes_of(x[train], labels[train])[1:]
    assert np.abs(rows[1:] - others).max() > 0.05  # the rows it can judge are fitted


def test_single_samples_leave_nothing_to_hold_out() -> None:
    x, labels = nuisance_embeddings(seed=3, per_person=1)
    chosen = _select(x, labels)
    assert chosen.kind == "prototypes" and chosen.cosine is None and chosen.fit is None
    assert chosen.split.single_sample_people == PEOPLE and len(chosen.split.held_out) == 0
    assert "none can be held out" in chosen.reason
    np.testing.assert_allclose(chosen.head.unit_weights(), x, atol=1e-6)


def test_report_json_and_plots(tmp_path: Path) -> None:
    x, labels = nuisance_embeddings(seed=2, per_person=24)
    selection = _select(x, labels)
    context = ReportContext(
        version=7, created="2026-01-01T00:00:00+00:00", store_revision=42,
        backbone_name="stand-in", backbone_sha256="0" * 64, target_far=0.01,
        people=tuple((f"人 {k}", 24) for k in range(PEOPLE)), people_without_samples=1,
        embedded_this_run=3, augmented_copies=2, export_max_abs_diff=1e-7,
    )
    write_report(tmp_path, selection, context)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORT_FILES)

    def no_nan(constant: str) -> None:
        raise AssertionError(f"report.json holds {constant}")

    report = json.loads((tmp_path / "report.json").read_text("utf-8"), parse_constant=no_nan)
    assert report["published"]["head"] == "cosine"
    assert report["published"]["threshold"] == pytest.approx(selection.threshold)
    figures = report["candidates"]
    assert figures["cosine"]["accuracy"] > figures["prototypes"]["accuracy"]
    assert report["counts"]["held_out_samples"] == len(selection.split.held_out)
    assert report["people"][0] == {"name": "人 0", "samples": 24, "row": "fitted"}
    assert len(report["fit"]["history"]) == selection.fit.epochs
    for name in ("scores.png", "roc.png"):
        image = cv2.imread(str(tmp_path / name))
        assert image is not None and image.shape[0] > 300 and image.shape[1] > 300
        assert image.std() > 20  # drawn on, not blank
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
