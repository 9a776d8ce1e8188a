"""Population calibration: how a recognition model scores strangers, measured once on
large labelled sets, so that any gallery's "unknown" threshold follows from it.

A small gallery (four people, five photos) has too few impostor scores of its own to
place a threshold at a false-accept rate of 1e-3. The model's own score distribution
does not depend on who is enrolled, so it is measured once, on labelled sets of many
people (``facestream eval calibrate``), and kept in a JSON file per model:

* which model: its name, the sha256 of the weights it is made from, and the front end
  (detector landmarks and chip geometry) that cut the chips, since scores depend on
  all three; a file made for another model or front end is refused;
* which data and code: each set's name, image and people counts and the sha256 of its
  files, the facestream commit and the date;
* per data set, the upper tail of its impostor (different-person) scores: empirical
  (false-accept rate, threshold) points down to where at least ``MIN_EXCEEDANCES``
  scores remain above, and below that an exponential tail fitted to the
  ``TAIL_EXCEEDANCES`` highest scores (peaks over threshold: their mean excess over
  the lowest of them; cosine scores are bounded by 1, so the true tail is lighter and
  this errs towards a higher threshold).

A gallery of ``N`` people names a stranger when his best score over its ``N`` rows
passes the threshold: with independent rows that happens with probability
``1 - (1 - p)^N`` for a per-row rate ``p``, so a target open-set rate ``f`` needs
``p = 1 - (1 - f)^(1/N)`` (`per_row_far`). The threshold is the highest over the data
sets at ``p``: it must hold on every population measured.

The file beside the model (``cache_dir/models/<model>.calibration.json``, written by
``eval calibrate``) wins over the one shipped in ``facecore/calibrations/``.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from facecore.config import Settings
from facecore.errors import ModelError
from facecore.registry import DLIB_LANDMARKS, MODELS, ModelSpec, model_cache_dir

__all__ = [
    "CALIBRATION_FORMAT",
    "CalibrationError",
    "ImpostorTail",
    "PopulationCalibration",
    "calibration_path",
    "find_calibration",
    "front_end_id",
    "load_calibration",
    "per_row_far",
    "weights_sha256",
]

CALIBRATION_FORMAT = 1
SHIPPED_DIR = Path(__file__).parent / "calibrations"
MIN_EXCEEDANCES = 10  # an empirical threshold needs at least this many scores above it
TAIL_EXCEEDANCES = 100  # the exponential tail is fitted to the 100 highest impostor scores


class CalibrationError(ModelError):
    """A population calibration file cannot be used (unreadable, truncated, or made
    for another model or front end)."""


@dataclass(frozen=True)
class ImpostorTail:
    """One labelled set's impostor scores, as far as a threshold needs them."""

    dataset: str
    images: int
    people: int
    data_sha256: str  # of the sorted (relative path, file sha256) lines
    impostor_count: int
    genuine_count: int
    genuine_median: float
    curve: tuple[tuple[float, float], ...]  # (far, threshold), far falling, all resolvable
    tail_far: float  # the false-accept rate at ``tail_start``
    tail_start: float
    tail_scale: float  # mean excess over tail_start: far(t) = tail_far exp(-(t - start)/scale)

    def threshold(self, far: float) -> float:
        """The lowest score whose false-accept rate on this set is at most ``far``:
        interpolated in log(far) between the empirical points, the fitted tail below
        them, never above 1 (the highest cosine)."""
        if far <= 0.0:
            return 1.0
        points = self.curve
        if points and far >= points[0][0]:
            return points[0][1]
        for (far_hi, t_hi), (far_lo, t_lo) in itertools.pairwise(points):
            if far_lo <= far <= far_hi:
                share = math.log(far_hi / far) / math.log(far_hi / far_lo)
                return t_hi + share * (t_lo - t_hi)
        tail = self.tail_start + self.tail_scale * math.log(self.tail_far / far)
        last = points[-1][1] if points else -1.0
        return min(max(tail, last), 1.0)


@dataclass(frozen=True)
class PopulationCalibration:
    model: str
    model_sha256: str  # of the weights the model is made from (`weights_sha256`)
    front_end: str  # `front_end_id` of the model's spec when it was measured
    created: str  # ISO 8601, UTC
    commit: str  # the facestream source it was measured with
    command: str  # how to make it again
    datasets: tuple[ImpostorTail, ...]
    format_version: int = CALIBRATION_FORMAT

    def threshold(self, far: float) -> float:
        """The highest of the data sets' thresholds at a per-row rate ``far``."""
        return max(tail.threshold(far) for tail in self.datasets)

    def describe(self) -> str:
        sets = ", ".join(
            f"{t.dataset} ({t.people} people, {t.impostor_count} impostor pairs)"
            for t in self.datasets
        )
        return f"{self.model} on {sets}, commit {self.commit}, {self.created[:10]}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)


def per_row_far(target_far: float, people: int) -> float:
    """The per-row false-accept rate that keeps a gallery of ``people`` rows at an
    open-set rate of ``target_far`` (independent rows; see the module docstring)."""
    if people <= 1:
        return target_far
    return -math.expm1(math.log1p(-target_far) / people) if target_far < 1.0 else 1.0


def weights_sha256(spec: ModelSpec) -> str:
    """The sha256 that names a model's weights: its own pinned one, or for a model
    converted locally, its source's (the conversion is checked against the source)."""
    if spec.sha256 is not None:
        return spec.sha256
    source = MODELS[spec.derived_from] if spec.derived_from else None
    if source is None or source.sha256 is None:
        raise CalibrationError(f"{spec.name} has no pinned weights to calibrate")
    return source.sha256


def front_end_id(spec: ModelSpec) -> str:
    """What cuts the model's chips: the front end, its landmark model's weights (for
    "dlib_5") and the template (whose points also place the landmark box)."""
    points = ";".join(f"{x:.2f},{y:.2f}" for x, y in spec.template or ())
    predictor = ""
    if spec.landmarks == "dlib_5":
        predictor = f"[{weights_sha256(MODELS[DLIB_LANDMARKS])[:12]}]"
    return f"{spec.landmarks}{predictor}>template({points})@{spec.input_size}"


def calibration_path(settings: Settings, spec: ModelSpec) -> Path:
    """Where ``eval calibrate`` writes the calibration of ``spec``: beside the model."""
    return model_cache_dir(settings) / f"{spec.name}.calibration.json"


def find_calibration(settings: Settings, spec: ModelSpec) -> PopulationCalibration | None:
    """The calibration of ``spec`` (beside the model, else shipped), checked; None when
    there is none. A file that exists but cannot be used is a `CalibrationError`."""
    for path in (calibration_path(settings, spec), SHIPPED_DIR / f"{spec.name}.json"):
        if path.is_file():
            return load_calibration(path, spec)
    return None


def load_calibration(path: Path, spec: ModelSpec) -> PopulationCalibration:
    """Read and check the calibration file ``path`` for ``spec``."""
    again = f"make it again with `facestream eval calibrate` or remove {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != CALIBRATION_FORMAT:
            raise CalibrationError(
                f"calibration {path} has format {data.get('format_version')!r}; this "
                f"facestream reads format {CALIBRATION_FORMAT}: {again}"
            )
        tails = tuple(
            ImpostorTail(**{**t, "curve": tuple((float(f), float(s)) for f, s in t["curve"])})
            for t in data.pop("datasets")
        )
        calibration = PopulationCalibration(**data, datasets=tails)
    except (OSError, UnicodeDecodeError) as err:
        raise CalibrationError(f"cannot read the calibration {path}: {err}") from err
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CalibrationError(
            f"calibration {path} is truncated or malformed ({err}): {again}"
        ) from err
    if not calibration.datasets:
        raise CalibrationError(f"calibration {path} holds no data set: {again}")
    expected = weights_sha256(spec)
    if calibration.model != spec.name or calibration.model_sha256 != expected:
        raise CalibrationError(
            f"calibration {path} was made for model {calibration.model} "
            f"(weights {calibration.model_sha256[:12]}), not {spec.name} "
            f"(weights {expected[:12]}): {again}"
        )
    if calibration.front_end != front_end_id(spec):
        raise CalibrationError(
            f"calibration {path} was measured with the front end {calibration.front_end}, "
            f"but {spec.name} now uses {front_end_id(spec)}: {again}"
        )
    return calibration
