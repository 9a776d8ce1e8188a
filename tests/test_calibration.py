"""Population calibration: the shipped file and `facestream eval calibrate` that makes
it, the threshold a gallery gets from it, and calibration files that cannot be used."""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from e2e_support import Installation

from facecore.bundle import MANIFEST_FILE
from facecore.calibration import (
    SHIPPED_DIR,
    CalibrationError,
    load_calibration,
    per_row_far,
)
from facecore.publish import current_bundle_dir
from facecore.registry import CHECKSUM_SUFFIX, DLIB_LANDMARKS, MODELS, get_spec
from trainer.evaluation.calibrate import OWN_EVIDENCE, OpenSetScores, calibrate
from trainer.evaluation.population import impostor_tail

MODEL = "dlib_resnet_v1"
SHIPPED = SHIPPED_DIR / f"{MODEL}.json"


@pytest.fixture
def installation(shared_dir: Path, tmp_path: Path) -> Iterator[Installation]:
    setup = Installation.create(shared_dir, tmp_path)
    try:
        yield setup
    finally:
        setup.stop_all()


def test_eval_calibrate_makes_the_shipped_figures_again(
    installation: Installation, shared_dir: Path, tmp_path: Path
) -> None:
    """The shipped lfw10 figures come out again from the command on the shared set:
    the same data and counts exactly, the scores to float noise (another CPU's ONNX
    Runtime kernels round differently in the last bits): the file says truthfully
    which data and code made it."""
    output = tmp_path / "calibration.json"
    printed = installation.run(
        "eval", "calibrate", str(shared_dir / "datasets" / "lfw10"), "--output", str(output),
        timeout=300,
    )
    assert "100 images of 10 people" in printed and "| 4 |" in printed
    made = load_calibration(output, get_spec(MODEL))
    shipped = load_calibration(SHIPPED, get_spec(MODEL))
    (ours,) = made.datasets
    (theirs,) = [t for t in shipped.datasets if t.dataset == "lfw10"]
    exact = ("dataset", "images", "people", "data_sha256", "impostor_count", "genuine_count")
    assert [getattr(ours, k) for k in exact] == [getattr(theirs, k) for k in exact]
    assert len(ours.curve) == len(theirs.curve)
    figures = lambda t: [t.genuine_median, t.tail_far, t.tail_start, t.tail_scale,  # noqa: E731
                         *(x for point in t.curve for x in point)]
    assert figures(ours) == pytest.approx(figures(theirs), rel=1e-5, abs=1e-6)
    assert made.command == "facestream eval calibrate lfw10"


def test_thresholds_follow_the_gallery_size() -> None:
    calibration = load_calibration(SHIPPED, get_spec(MODEL))
    assert per_row_far(1e-3, 1) == 1e-3
    assert math.isclose(per_row_far(1e-3, 4), 2.5e-4, rel_tol=1e-3)
    sizes = [1, 2, 4, 10, 100, 1000, 10**6]
    thresholds = [calibration.threshold(per_row_far(1e-3, n)) for n in sizes]
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == len(sizes)
    assert thresholds[-1] <= 1.0
    # where a set resolves the rate, the threshold is its empirical one
    orl = next(t for t in calibration.datasets if t.dataset == "orl")
    far, empirical = orl.curve[-1]
    assert orl.threshold(far) == empirical


def test_the_fitted_tail_matches_scores_it_was_not_fitted_on() -> None:
    """Fitted on the 100 highest of 2 million normal scores, the tail predicts the
    rate at thresholds far above, where the empirical curve is known (errs high)."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2001, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tail = impostor_tail("normal", vectors, [str(i) for i in range(len(vectors))], "")
    assert tail.impostor_count == 2001 * 2000 // 2
    fitted_far = 100 / tail.impostor_count
    for far, empirical in tail.curve:
        if far < fitted_far:
            continue
        assert tail.threshold(far) == empirical
    small = 1e-7  # beyond the data: the tail, above the last empirical point
    assert tail.threshold(small) > tail.curve[-1][1]


def _scores(impostors: int, seed: int = 0) -> OpenSetScores:
    rng = np.random.default_rng(seed)
    impostor = rng.normal(0.85, 0.02, impostors).astype(np.float32)
    genuine = np.full(10, 0.97, np.float32)
    return OpenSetScores(genuine, np.full(10, 0.8, np.float32), impostor, impostor[:0])


def test_the_prior_gives_way_to_the_gallery_as_its_evidence_grows() -> None:
    prior = load_calibration(SHIPPED, get_spec(MODEL))
    start = prior.threshold(per_row_far(1e-3, 4))
    few = calibrate(_scores(20), 1e-3, 0.5, prior=prior, people=4)
    assert few.prior == start and few.weight == pytest.approx(0.002)
    assert abs(few.threshold - start) < 1e-3
    assert few.reason.startswith(f"population prior {start:.4f}")
    plenty = calibrate(_scores(int(OWN_EVIDENCE / 1e-3)), 1e-3, 0.5, prior=prior, people=4)
    own = calibrate(_scores(int(OWN_EVIDENCE / 1e-3)), 1e-3, 0.5)
    assert plenty.weight == 1.0 and plenty.threshold == pytest.approx(own.threshold)
    lone = calibrate(_scores(0), 1e-3, 0.5, prior=prior, people=1)
    assert lone.threshold == prior.threshold(1e-3)
    assert "with 1 person enrolled" in lone.reason and "no impostor score" in lone.reason


def test_without_a_calibration_the_gallery_alone_decides_and_says_so() -> None:
    own = calibrate(_scores(20), 1e-3, 0.5)
    assert not own.fallback and math.isnan(own.prior)
    assert own.threshold > 0.85 and "no population calibration" in own.reason
    nothing = calibrate(_scores(0), 1e-3, 0.91)
    assert nothing.fallback and nothing.threshold == 0.91
    assert "no population calibration" in nothing.reason and "default 0.9100" in nothing.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda text: text[: len(text) // 2], "truncated or malformed"),
        (lambda text: "", "truncated or malformed"),
        (lambda text: text.replace(f'"model": "{MODEL}"', '"model": "sface"'),
         "was made for model sface"),
        (lambda text: text.replace(MODELS["dlib_resnet_v1_dat"].sha256 or "", "0" * 64),
         "weights 000000000000"),
        (lambda text: text.replace('"front_end": "', '"front_end": "other-'),
         "measured with the front end other-"),
        (lambda text: text.replace('"format_version": 1', '"format_version": 9'),
         "has format 9"),
    ],
)
def test_a_calibration_that_does_not_fit_is_refused(
    tmp_path: Path, change: object, message: str
) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(change(SHIPPED.read_text(encoding="utf-8")), encoding="utf-8")  # type: ignore[operator]
    with pytest.raises(CalibrationError, match=message) as raised:
        load_calibration(path, get_spec(MODEL))
    assert str(path) in str(raised.value) and "eval calibrate" in str(raised.value)


def test_a_truncated_calibration_beside_the_model_stops_the_trainer_clearly(
    installation: Installation, shared_dir: Path, tmp_path: Path
) -> None:
    """The user's own calibration (beside the model) wins over the shipped one, so a
    broken one is an error the trainer reports, not a silent fallback."""
    setup = installation
    cache = setup.global_options[setup.global_options.index("--cache-dir") + 1]
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    for spec in (MODELS[MODEL], MODELS[DLIB_LANDMARKS]):  # the recognizer and its front end
        for name in (spec.filename, spec.filename + CHECKSUM_SUFFIX):  # and their records
            (models / name).symlink_to(Path(cache) / "models" / name)
    setup.global_options[setup.global_options.index("--cache-dir") + 1] = str(models.parent)
    bad = models / f"{MODEL}.calibration.json"
    bad.write_text(SHIPPED.read_text(encoding="utf-8")[:500], encoding="utf-8")
    setup.run("enroll", "import", str(shared_dir / "people"))
    done = setup.attempt("trainer", "--once", timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"calibration {bad} is truncated or malformed" in done.stderr
    assert setup.current_manifest() is None  # nothing published on a broken calibration


def test_one_person_with_one_photo_gets_the_prior_for_one(
    installation: Installation, shared_dir: Path, tmp_path: Path
) -> None:
    setup = installation
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "lin_manuel_miranda").symlink_to(shared_dir / "people" / "lin_manuel_miranda")
    setup.run("enroll", "import", str(folder))
    setup.run("trainer", "--once", timeout=300)
    manifest = setup.current_manifest()
    assert manifest is not None and manifest.labels == ("Lin Manuel Miranda",)
    prior = load_calibration(SHIPPED, get_spec(MODEL))
    assert manifest.threshold == pytest.approx(prior.threshold(1e-3))
    assert "with 1 person enrolled" in manifest.threshold_reason
    assert "no impostor score" in manifest.threshold_reason
    current = current_bundle_dir(setup.bundles)
    assert current is not None
    written = json.loads((current / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert written["threshold_reason"] == manifest.threshold_reason


def test_calibrate_output_leaves_the_folders_alone_and_a_bad_one_is_refused_first(
    installation: Installation, shared_dir: Path, tmp_path: Path
) -> None:
    """The file is 0600 and its folder keeps its mode (it was made 0700: the working
    folder with a bare name, ``/`` with ``--output /tmp``); a folder or a file that
    cannot be created is refused before any image is read."""
    folder = tmp_path / "out"
    folder.mkdir()
    folder.chmod(0o755)
    above = stat.S_IMODE(tmp_path.stat().st_mode)
    lfw10 = str(shared_dir / "datasets" / "lfw10")
    output = folder / "calibration.json"
    installation.run("eval", "calibrate", lfw10, "--output", str(output), timeout=300)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    refused = {
        folder: "it is a directory",
        Path("/proc/facestream-calibration.json"): "no file can be created in /proc (",
        folder / "missing" / "c.json": f"the folder {folder / 'missing'} does not exist",
    }
    for target, reason in refused.items():
        done = installation.attempt("eval", "calibrate", lfw10, "--output", str(target))
        assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
        assert done.stderr.startswith(f"facestream: error: cannot write --output {target}: "
                                      f"{reason}"), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE(tmp_path.stat().st_mode) == above
    assert sorted(p.name for p in folder.iterdir()) == ["calibration.json"]
