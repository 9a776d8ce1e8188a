"""Verification pairs, LFW pairs files, the 10-fold protocol, and `facestream eval
verify` end to end on real photos with the real detector and recognizer."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecore.config import load_settings
from facecore.errors import ConfigError, SourceError
from facecore.registry import get_spec, model_cache_dir, resolve_model
from trainer.dlib.export import prepare_dlib_resnet
from trainer.dlib.landmarks import prepare_landmark_model
from trainer.evaluation.cli import register_eval
from trainer.evaluation.embedding import labelled_images
from trainer.evaluation.evaluate import (
    Pairs,
    best_threshold,
    form_pairs,
    kfold_accuracy,
    lfw_image_path,
    pairs_from_paths,
    parse_lfw_pairs,
    tar_at_far,
    verify,
)

# --- forming pairs ---------------------------------------------------------------------


def _as_set(pairs: Pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.first.tolist(), pairs.second.tolist(), strict=True))


@pytest.mark.parametrize("people, photos", [(40, 10), (3, 4), (300, 2)])
def test_formed_pairs_are_valid_and_balanced(people: int, photos: int) -> None:
    labels = [f"p{i // photos}" for i in range(people * photos)]
    pairs = form_pairs(labels)
    genuine = people * photos * (photos - 1) // 2
    assert pairs.same.sum() == genuine  # every genuine pair: under the cap
    assert (~pairs.same).sum() == max(genuine, 10)  # as many impostors (one per fold at least)
    assert len(_as_set(pairs)) == len(pairs)  # no pair twice
    assert (pairs.first < pairs.second).all()
    names = np.array(labels)
    assert (pairs.same == (names[pairs.first] == names[pairs.second])).all()
    for kind in (pairs.same, ~pairs.same):  # each fold gets its share of each kind
        per_fold = np.bincount(pairs.fold[kind], minlength=10)
        assert per_fold.max() - per_fold.min() <= 1


def test_formed_pairs_are_seeded() -> None:
    labels = [f"p{i // 10}" for i in range(400)]
    first, again = form_pairs(labels, max_genuine=500), form_pairs(labels, max_genuine=500)
    other = form_pairs(labels, max_genuine=500, seed=1)
    assert first.same.sum() == 500  # the cap: 1800 genuine pairs exist
    for name in ("first", "second", "same", "fold"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert _as_set(first) != _as_set(other)


def test_small_folder_uses_every_pair() -> None:
    # ../shared/people: Obama twice, three other people once
    pairs = form_pairs(["obama", "obama", "biden", "miranda", "lacamoire"])
    assert len(pairs) == 10 and pairs.same.sum() == 1
    assert sorted(pairs.fold.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="fewer than two images"):
        form_pairs(["alone"])


# --- LFW pairs files ---------------------------------------------------------------------

PAIRS_TXT = """2\t2
Ariel_Sharon\t1\t2
Colin_Powell\t3\t4
Ariel_Sharon\t1\tColin_Powell\t1
Hugo_Chavez\t2\tTony_Blair\t3
Tony_Blair\t1\t10
Hugo_Chavez\t1\t5
Ariel_Sharon\t7\tTony_Blair\t7
Colin_Powell\t2\tHugo_Chavez\t9
"""


def test_parse_lfw_pairs() -> None:
    rows = parse_lfw_pairs(PAIRS_TXT)
    assert len(rows) == 8
    assert rows[0] == ("Ariel_Sharon/Ariel_Sharon_0001.jpg", "Ariel_Sharon/Ariel_Sharon_0002.jpg",
                       True, 0, 2)
    assert rows[3] == ("Hugo_Chavez/Hugo_Chavez_0002.jpg", "Tony_Blair/Tony_Blair_0003.jpg",
                       False, 0, 5)
    assert rows[4][2:4] == (True, 1) and rows[4].second == "Tony_Blair/Tony_Blair_0010.jpg"
    assert [r[2] for r in rows] == [True, True, False, False] * 2
    images, pairs = pairs_from_paths(rows)
    assert len(images) == 15  # Ariel_Sharon_0001 appears twice
    assert images[pairs.first[2]] == images[pairs.first[0]]
    assert pairs.folds == 2 and pairs.same.sum() == 4
    one_fold = parse_lfw_pairs("1\nTony_Blair 1 2\nTony_Blair 1 Hugo_Chavez 1\n")
    assert [r[3] for r in one_fold] == [0, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("ten 300\n", "line 1: expected 'folds n'"),
        ("1 1\nA 1 2\n", "need 2 pair lines, the file has 1"),
        ("1 1\nA 1 B 2\nA 1 2\n", "line 2: fold 1 expects 'Name i j'"),
        ("1 1\nA 1 2\nA 1 2\n", "line 3: fold 1 expects 'Name1 i Name2 j'"),
        ("1 1\nA one 2\nA 1 B 2\n", "line 2: image numbers must be integers"),
    ],
)
def test_bad_pairs_file(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lfw_pairs(text)


def test_lfw_image_path() -> None:
    assert lfw_image_path("George_W_Bush", 12) == "George_W_Bush/George_W_Bush_0012.jpg"


# --- metrics ---------------------------------------------------------------------------


def test_best_threshold() -> None:
    same = np.array([True, True, False, False])
    assert best_threshold(np.array([0.9, 0.8, 0.3, 0.1]), same) == pytest.approx(0.55)
    # one impostor above one genuine: 3 of 4 at best, the highest such threshold wins
    t = best_threshold(np.array([0.9, 0.2, 0.5, 0.1]), same)
    assert t == pytest.approx(0.7)
    # ties are never split: equal scores fall on the same side
    t = best_threshold(np.array([0.5, 0.5, 0.5, 0.1]), np.array([True, False, True, False]))
    assert t == pytest.approx(0.3)
    assert best_threshold(np.array([0.1, 0.2]), np.array([False, False])) > 0.2


def test_each_fold_is_judged_by_a_threshold_from_the_others() -> None:
    # folds 1..9: genuine 0.7-0.8, impostors 0.2-0.3. Fold 0: genuine 0.35-0.45,
    # impostors 0.0-0.1: its own best threshold would get it all right, but the
    # others' (0.5) rejects its genuine pairs
    fold = np.repeat(np.arange(10), 20)
    same = np.tile(np.repeat([True, False], 10), 10)
    scores = np.where(same, 0.7, 0.2) + np.tile(np.linspace(0, 0.1, 10), 20)
    scores[fold == 0] = np.where(same[:20], 0.35, 0.0) + np.tile(np.linspace(0, 0.1, 10), 2)
    pairs = Pairs(np.arange(200), np.arange(200) + 1, same, fold)
    accuracy, thresholds = kfold_accuracy(scores, pairs)
    assert accuracy[0] == 0.5 and thresholds[0] == pytest.approx(0.5)
    assert (accuracy[1:] == 1.0).all() and np.allclose(thresholds[1:], 0.325)
    result = verify(scores, pairs)
    assert result.accuracy == pytest.approx(0.95)
    assert result.accuracy_std == pytest.approx(0.15)
    assert result.threshold == pytest.approx(0.325) and result.genuine == 100


def test_tar_at_far() -> None:
    genuine = np.linspace(0.5, 1.0, 100)
    impostor = np.linspace(0.0, 0.6, 2000)  # 2 of them (far 1e-3) may be accepted
    scores = np.concatenate([genuine, impostor])
    same = np.arange(2100) < 100
    result = tar_at_far(scores, same, 1e-3)
    assert result.achieved_far == pytest.approx(2 / 2000)
    assert impostor[-3] < result.threshold <= impostor[-2]
    assert result.tar == pytest.approx(np.mean(genuine >= result.threshold))
    assert not result.precise  # 2000 impostor pairs cannot pin down 1e-3
    assert tar_at_far(np.concatenate([genuine, impostor[::100]]), same[:120], 0.1).precise is False
    assert tar_at_far(scores, same, 0.01).precise


# --- the command, end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the converted dlib ResNet, as `facestream models prepare` leaves it."""
    cache = tmp_path_factory.mktemp("cache")
    settings = load_settings({"cache_dir": str(cache)}, {})
    source = resolve_model(
        get_spec("dlib_resnet_v1_dat"), explicit=None, models_dir=None,
        cache_dir=model_cache_dir(settings), download=False,
    )
    prepare_dlib_resnet(source, model_cache_dir(settings))
    prepare_landmark_model(settings, download=False)
    return cache


def _run(argv: list[str], cache_dir: Path, yunet_path: Path) -> int:
    parents = [argparse.ArgumentParser(add_help=False)]
    parser = argparse.ArgumentParser(prog="facestream")
    group = parser.add_subparsers(dest="command", required=True)
    evaluation = group.add_parser("eval").add_subparsers(dest="verb", required=True)
    register_eval({"eval": evaluation}, parents)
    args = parser.parse_args(["eval", "verify", *argv])
    settings = load_settings(
        {"cache_dir": str(cache_dir), "models_dir": str(yunet_path.parent),
         "recognition.model": getattr(args, "recognition.model")},
        {key: value for key, value in os.environ.items() if not key.startswith("FACESTREAM_")},
    )
    status: int = args.handler(settings, args)
    return status


@pytest.fixture(scope="module")
def small_folder(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three LFW people with four photos each (links to the shared files), and one
    'person' whose only other photo has no face in it."""
    root = tmp_path_factory.mktemp("people")
    for name in ("Colin_Powell", "Hugo_Chavez", "Tony_Blair"):
        (root / name).mkdir()
        for number in range(1, 5):
            relative = lfw_image_path(name, number)
            (root / relative).symlink_to(shared_dir / "datasets" / "lfw10" / relative)
    gradient = np.tile(np.linspace(0, 255, 250, dtype=np.uint8), (250, 1))
    cv2.imwrite(str(root / "Tony_Blair" / "wall.png"), cv2.merge([gradient] * 3))
    (root / "notes.txt").write_text("not a person")  # files beside the folders are ignored
    return root


def test_verify_a_folder_with_dlib_reference(
    small_folder: Path, cache_dir: Path, yunet_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("dlib")
    assert _run([str(small_folder), "--reference", "dlib"], cache_dir, yunet_path) == 0
    out = capsys.readouterr().out
    # 3 x C(4,2) + C(5,2) - ... : 6 + 6 + 10 genuine pairs (the wall counts as Blair)
    assert "13 images; 3 people" in out
    assert "22 genuine + 22 impostor in 10 folds" in out
    assert _cells(out, "no face detected") == ["1", "1"]  # the wall, in both pipelines
    assert "no face: fallback" in out
    # the wall's 4 genuine pairs are kept, and fail: 40 of 44 pairs right at best
    # (the mean over unequal folds can land a little above 40/44)
    assert _cells(out, "pairs scored") == ["44", "44"]
    accuracy = [float(v) for v in _cells(out, "accuracy")]
    assert len(accuracy) == 2 and all(80.0 <= a < 95.0 for a in accuracy)
    assert "similarity >=" in out and "distance <=" in out
    assert "TAR at FAR=0.001 (facestream) is imprecise: with 22 impostor pairs" in out


def test_verify_leaves_out_an_image_opencv_cannot_read_and_says_so(
    small_folder: Path,
    cache_dir: Path,
    yunet_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A damaged photo in a big set: measured without it, not the whole run stopped."""
    folder = tmp_path / "imp"
    for person in (p for p in small_folder.iterdir() if p.is_dir()):
        (folder / person.name).mkdir(parents=True)
        for photo in person.iterdir():
            (folder / person.name / photo.name).symlink_to(photo)
    bad = folder / "Hugo_Chavez" / "bad.jpg"
    bad.write_text("not a photo\n")
    images, unreadable = labelled_images(folder)
    assert unreadable == [bad] and len(images) == 13
    assert _run([str(folder)], cache_dir, yunet_path) == 0
    out = capsys.readouterr().out
    assert "13 images; 1 unreadable file left out; 3 people" in out
    assert "22 genuine + 22 impostor in 10 folds" in out  # the pairs of the 13 readable
    warnings = {r.getMessage() for r in caplog.records if r.levelname == "WARNING"}
    assert warnings == {f"{bad} left out: OpenCV cannot read it as an image"}


def test_verify_excluding_faceless_images(
    small_folder: Path, cache_dir: Path, yunet_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run([str(small_folder), "--no-face", "exclude"], cache_dir, yunet_path) == 0
    out = capsys.readouterr().out
    # the wall image is in 4 genuine pairs and in some impostor pairs: all left out
    scored = int(_cells(out, "pairs scored")[0])
    assert scored < 44 and f"{scored} (18 genuine)" in out
    assert "were left out" in out
    assert _cells(out, "accuracy") == ["100.00"]  # without it, these photos are easy


def test_verify_compares_front_ends(
    small_folder: Path, cache_dir: Path, yunet_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    front_ends = ["yunet_template", "dlib_5", "dlib_5:yunet_box+flip"]
    assert _run([str(small_folder), "--front-end", *front_ends], cache_dir, yunet_path) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.strip().startswith("yunet_template"))
    assert header.split() == front_ends  # one column each, in order
    assert "yunet_2026may + dlib_5 + dlib_resnet_v1" in out
    assert _cells(out, "no face detected") == ["1", "1", "1"]
    assert len(_cells(out, "landmarks + chip")) == 3
    with pytest.raises(SystemExit):
        _run([str(small_folder), "--front-end", "yunet_template:yunet_box"], cache_dir, yunet_path)
    assert "dlib_5:yunet_box, each optionally followed by +flip" in capsys.readouterr().err


def test_verify_with_an_lfw_pairs_file(
    shared_dir: Path, cache_dir: Path, yunet_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\ufeff" + PAIRS_TXT)  # as Windows' Notepad saves it
    lfw = shared_dir / "datasets" / "lfw10"
    assert _run([str(lfw), "--pairs", str(pairs_file)], cache_dir, yunet_path) == 0
    out = capsys.readouterr().out
    assert "15 images; pairs from" in out and "4 genuine + 4 impostor in 2 folds" in out
    assert "100.00% ± 0.00% (2 folds)" in out  # LFW's easy pairs, for this recognizer

    missing = tmp_path / "missing.txt"
    missing.write_text("1 1\nNobody 1 2\nNobody 1 Tony_Blair 1\n")
    with pytest.raises(SourceError, match=r"2 images named in .* are not in"):
        _run([str(lfw), "--pairs", str(missing)], cache_dir, yunet_path)
    one = tmp_path / "one.txt"
    one.write_text("1 1\nTony_Blair 1 2\n\nNobody 1 Tony_Blair 1\n")
    with pytest.raises(SourceError, match=r"1 image named in .* is not in .*, the first on "
                       r"line 4: .*Nobody/Nobody_0001\.jpg"):
        _run([str(lfw), "--pairs", str(one)], cache_dir, yunet_path)
    broken = tmp_path / "broken.txt"
    broken.write_text("1 1\nTony_Blair 1\n")
    with pytest.raises(SourceError, match=r"broken\.txt: .*need 2 pair lines"):
        _run([str(lfw), "--pairs", str(broken)], cache_dir, yunet_path)


def _cells(out: str, label: str) -> list[str]:
    """The numbers leading each cell of the report row starting with ``label``."""
    line = next(line for line in out.splitlines() if line.startswith(label + "  "))
    cells = [c for c in line[len(label):].split("  ") if c.strip()]
    return [c.strip().split("%")[0].split()[0] for c in cells]


def test_bad_arguments_are_clear_errors(
    tmp_path: Path, cache_dir: Path, yunet_path: Path
) -> None:
    with pytest.raises(SourceError, match="is not a folder"):
        _run([str(tmp_path / "nowhere")], cache_dir, yunet_path)
    with pytest.raises(SourceError, match="has no sub-folder of images"):
        _run([str(tmp_path)], cache_dir, yunet_path)
    one_person = tmp_path / "Tony_Blair"  # his photos, not a folder of people
    one_person.mkdir()
    (one_person / "Tony_Blair_0001.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match=r"Tony_Blair has no sub-folder of images \(one per"):
        _run([str(one_person)], cache_dir, yunet_path)
    with pytest.raises(ConfigError, match=r"recognition\.model = 'yunet_2026may' .*expected one "
                       "of dlib_resnet_v1"):
        _run([str(tmp_path), "--model", "yunet_2026may"], cache_dir, yunet_path)
