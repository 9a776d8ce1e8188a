"""The model registry: every model file facestream uses, pinned by sha256.

A `ModelSpec` says where a file comes from and how its network wants its input, so no
code guesses preprocessing from a graph. `resolve_model` finds the file, in order:

1. an explicit path (a command's option);
2. ``models_dir/filename`` (a folder the user filled by hand: ``--models-dir``);
3. ``cache_dir/filename`` (earlier downloads and conversions);
4. the copy shipped inside an installed PyPI package (``spec.package``), located
   without importing the package;
5. a download from each of ``spec.urls`` in turn, into ``cache_dir``.

Every file found or downloaded is checked against the pinned sha256 and size before its
path is returned; a wrong or truncated file raises `ChecksumError`. Hashing is cheap
(the largest file, 22 MB, takes about 30 ms), so no hash cache is kept.

A *derived* spec (``derived_from`` set) is not downloaded: ``facestream models prepare``
converts its source into ``cache_dir/filename``, a name that carries the source's hash,
and records the result's sha256 beside it in ``filename.sha256`` (`record_checksum`;
sha256sum's format). A derived file is checked against that record, since its own hash
depends on the converter's library versions: a file without one, or that differs from
it, is a `ChecksumError` that says to run ``facestream models prepare``.
"""

from __future__ import annotations

import http.client
import importlib.util
import re
import tempfile
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facecore.config import Settings
from facecore.download import describe_failure, download_verified, sha256_file
from facecore.errors import ChecksumError, ConfigError, ModelError, ModelNotFoundError
from facecore.files import fsync_path, os_reason

__all__ = [
    "CHECKSUM_SUFFIX",
    "DETECTOR",
    "DLIB_LANDMARKS",
    "MODELS",
    "FrontEndKind",
    "ModelSpec",
    "describe_kind",
    "ensure_model_cache",
    "get_spec",
    "model_cache_dir",
    "model_path",
    "record_checksum",
    "recorded_checksum_matches",
    "resolve_model",
]

Kind = Literal["detector", "recognizer", "landmarks", "source"]  # "source": converter input only
# How a recognizer's chips are cut from a detected face (`facecore.frontend`):
# "yunet_template": YuNet's 5 landmarks similarity-fitted onto ``template``;
# "dlib_5": dlib's 5-point shape predictor (`DLIB_LANDMARKS`) run in a box derived from
# YuNet's landmarks, then dlib's own chip geometry (get_face_chip_details).
FrontEndKind = Literal["yunet_template", "dlib_5"]
Point = tuple[float, float]

_SHA256 = re.compile(r"[0-9a-f]{64}")
CHECKSUM_SUFFIX = ".sha256"  # the record beside a derived file
_KIND_TEXT: Mapping[Kind, str] = {
    "detector": "a detector",
    "recognizer": "a recognizer",
    "landmarks": "a landmark model",
    "source": "a converter's source file",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    kind: Kind
    filename: str
    urls: tuple[str, ...]
    sha256: str | None  # None only for derived files, which are produced locally
    size: int | None  # bytes; None when not pinned
    licence: str
    input_size: tuple[int, int] | None = None  # (width, height) of the network input
    colour: Literal["bgr", "rgb"] | None = None  # channel order the network wants
    mean: tuple[float, float, float] | None = None  # in the network's colour order
    scale: float | None = None  # input = (pixel - mean) * scale
    layout: Literal["nchw"] = "nchw"
    # 5 landmark points in chip pixels, YuNet order: right eye, left eye, nose tip,
    # right mouth corner, left mouth corner (the subject's right is the image's left)
    template: tuple[Point, ...] | None = None
    embedding_size: int | None = None
    derived_from: str | None = None  # name of the spec this file is converted from
    # "<import name>/<path inside the package>" of a copy shipped in a PyPI package
    package: str | None = None
    landmarks: FrontEndKind = "yunet_template"  # a recognizer's front end

    def __post_init__(self) -> None:
        if self.sha256 is None and self.derived_from is None:
            raise ValueError(f"{self.name}: only a derived model may lack a sha256")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits")
        if self.template is not None and len(self.template) != 5:
            raise ValueError(f"{self.name}: template needs 5 points, got {len(self.template)}")
        if self.kind == "recognizer" and None in (
            self.input_size,
            self.colour,
            self.mean,
            self.scale,
            self.template,
            self.embedding_size,
        ):
            raise ValueError(f"{self.name}: a recognizer needs its full preprocessing")


# --- dlib's ResNet face descriptor (the default recognizer) --------------------------

_DLIB_DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
_DLIB_SP5_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
DLIB_LANDMARKS = "dlib_shape_predictor_5"  # the landmark model the "dlib_5" front end runs

# Where dlib's own 150x150 chip (5-point predictor, padding 0.25) has YuNet's 5
# landmarks (the "yunet_template" front end; the "dlib_5" one places its landmark box
# in this frame too): the median over 535 real faces, measured by bench/derive_template.py
# (method and residuals in docs/alignment.md).
DLIB_RESNET_TEMPLATE: tuple[Point, ...] = (
    (45.38, 46.51),
    (100.12, 45.48),
    (72.12, 77.06),
    (51.47, 100.57),
    (98.29, 99.71),
)

# ArcFace's standard 112x112 alignment (insightface), used by SFace.
ARCFACE_112_TEMPLATE: tuple[Point, ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

_SPECS = (
    ModelSpec(
        name="yunet_2026may",
        version="2026may",
        kind="detector",
        filename="face_detection_yunet_2026may.onnx",
        urls=(
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
            "face_detection_yunet_2026may.onnx",
        ),
        sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
        size=229738,
        licence="MIT",
    ),
    ModelSpec(
        name="dlib_resnet_v1_dat",
        version="1",
        kind="source",
        filename="dlib_face_recognition_resnet_model_v1.dat",
        urls=(
            "https://github.com/ageitgey/face_recognition_models/raw/master/"
            "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
        ),
        sha256=_DLIB_DAT_SHA256,
        size=22466066,
        licence="public domain",
        package="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
    ),
    ModelSpec(
        name="dlib_resnet_v1",
        version="1",
        kind="recognizer",
        # the converter (trainer.dlib.export.prepare_dlib_resnet) names its output so
        filename=f"dlib_resnet_v1-{_DLIB_DAT_SHA256[:16]}.onnx",
        urls=(),
        sha256=None,
        size=None,
        licence="public domain",
        input_size=(150, 150),
        colour="rgb",
        mean=(122.782, 117.001, 104.298),
        scale=1 / 256,
        template=DLIB_RESNET_TEMPLATE,
        embedding_size=128,
        derived_from="dlib_resnet_v1_dat",
        landmarks="dlib_5",
    ),
    ModelSpec(
        name="dlib_shape_predictor_5_dat",
        version="1",
        kind="source",
        filename="shape_predictor_5_face_landmarks.dat",
        urls=(
            "https://github.com/ageitgey/face_recognition_models/raw/master/"
            "face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
        ),
        sha256=_DLIB_SP5_SHA256,
        size=9150489,
        licence="public domain",
        package="face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
    ),
    ModelSpec(
        name=DLIB_LANDMARKS,
        version="1",
        kind="landmarks",
        # trainer.dlib.landmarks.prepare_shape_predictor writes it (`models prepare`)
        filename=f"{DLIB_LANDMARKS}-{_DLIB_SP5_SHA256[:16]}.npz",
        urls=(),
        sha256=None,
        size=None,
        licence="public domain",
        derived_from="dlib_shape_predictor_5_dat",
    ),
    ModelSpec(
        name="sface_2021dec",
        version="2021dec",
        kind="recognizer",
        filename="face_recognition_sface_2021dec.onnx",
        urls=(
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/"
            "face_recognition_sface_2021dec.onnx",
        ),
        sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
        size=None,  # not pinned: no copy was at hand to measure; the sha256 decides
        licence="Apache-2.0",
        input_size=(112, 112),
        # OpenCV's FaceRecognizerSF::feature: blobFromImage(chip, 1.0, Size(112, 112),
        # Scalar(0, 0, 0), swapRB=true) -> RGB, raw 0..255 pixels
        colour="rgb",
        mean=(0.0, 0.0, 0.0),
        scale=1.0,
        template=ARCFACE_112_TEMPLATE,
        embedding_size=128,
    ),
)

MODELS: Mapping[str, ModelSpec] = types.MappingProxyType({s.name: s for s in _SPECS})
DETECTOR = "yunet_2026may"  # the detector every pipeline uses


def get_spec(name: str) -> ModelSpec:
    """The spec called `name`; ModelError naming the known ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def describe_kind(spec: ModelSpec) -> str:
    """What the model is, for a message: ``"a landmark model"``."""
    return _KIND_TEXT[spec.kind]


def model_cache_dir(settings: Settings) -> Path:
    """Where downloaded and converted model files live: ``cache_dir/models``."""
    return settings.cache_dir / "models"


def model_path(
    settings: Settings,
    name: str,
    *,
    download: bool = True,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """`resolve_model` for the spec called `name`, with the folders from `settings`."""
    if name not in MODELS and name == settings.recognition.model:
        raise ConfigError(
            "unknown model; recognizers: "
            + ", ".join(n for n, s in MODELS.items() if s.kind == "recognizer"),
            key="recognition.model",
            value=name,
            origin=settings.origins.get("recognition.model", "default"),
        )
    return resolve_model(
        get_spec(name),
        explicit=None,
        models_dir=settings.models_dir,
        cache_dir=model_cache_dir(settings),
        download=download,
        progress=progress,
        force=force,
    )


def resolve_model(
    spec: ModelSpec,
    *,
    explicit: Path | None,
    models_dir: Path | None,
    cache_dir: Path,
    download: bool = True,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """The path of a verified copy of `spec`'s file (see the module docstring).

    With `force` the copy in `cache_dir` is not looked at but downloaded again over,
    and kept when the download fails. Raises ModelNotFoundError when there is none and
    none can be downloaded, and ChecksumError when a file found or downloaded has the
    wrong content.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise ModelNotFoundError(
                spec.filename, hint=f"the path given for model {spec.name}, {explicit}, is no file"
            )
        return _verified(spec, explicit, "give a good copy")
    folders = (models_dir, None if force else cache_dir)
    candidates = [d / spec.filename for d in folders if d is not None]
    candidates.append(_package_file(spec))
    for path in candidates:
        if path is not None and path.is_file():
            return _verified(spec, path, _remedy(spec, path, cache_dir))
    destination = (models_dir or cache_dir) / spec.filename
    if spec.derived_from is not None:
        raise ModelNotFoundError(
            spec.filename,
            destination=destination,
            hint=f"model {spec.name} is converted from {spec.derived_from}: "
            "run `facestream models prepare` first (needs the trainer extra: "
            "pip install 'facestream[trainer]')",
        )
    if not download or not spec.urls:
        raise ModelNotFoundError(spec.filename, urls=spec.urls, destination=destination)
    return _download(spec, cache_dir, destination, progress)


def ensure_model_cache(cache_dir: Path) -> Path:
    """Create the model cache `cache_dir` if needed and check that it can be written,
    before a download or a conversion spends time on a file it could not keep;
    `ModelError` naming the folder and the reason otherwise (a read-only folder, or a
    file where the folder should be)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = os_reason(err, cache_dir)
        raise ModelError(f"cannot write the model cache {cache_dir}: {reason}") from err
    try:
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as err:  # the probe's random name would say nothing
        raise ModelError(f"cannot write the model cache {cache_dir}: {err.strerror}") from err
    return cache_dir


def _package_file(spec: ModelSpec) -> Path | None:
    """The copy inside an installed package, found without importing the package."""
    if spec.package is None:
        return None
    module, _, inner = spec.package.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / inner


def record_checksum(path: Path) -> None:
    """Record the sha256 of ``path``, a file facestream converted, in
    ``path.sha256``: what `resolve_model` checks it against. Call it once the file
    is complete; written atomically, so a crash leaves no half record."""
    record = _record_of(path)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(f"{sha256_file(path)}  {path.name}\n", encoding="ascii")
    fsync_path(partial)
    partial.replace(record)


def recorded_checksum_matches(path: Path) -> bool:
    """Whether ``path`` is the file its ``.sha256`` record was made of."""
    expected = _recorded_sha256(path)
    return expected is not None and sha256_file(path) == expected


def _record_of(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _recorded_sha256(path: Path) -> str | None:
    try:
        digest = _record_of(path).read_text(encoding="ascii").partition(" ")[0]
    except (OSError, UnicodeDecodeError):
        return None
    return digest if _SHA256.fullmatch(digest) else None


def _remedy(spec: ModelSpec, path: Path, cache_dir: Path) -> str:
    """What mends a wrong copy of `spec` at `path`, for its ChecksumError."""
    in_cache = path.parent == cache_dir
    if spec.derived_from is not None and in_cache:
        return "run `facestream models prepare` to convert it again"
    if spec.derived_from is not None:
        return (f"delete it (`facestream models prepare` converts it into the cache), or put "
                f"a good copy there with its {path.name}{CHECKSUM_SUFFIX}")
    if in_cache:
        return f"run `facestream models fetch --force {spec.name}` to download it again"
    return "replace it with a good copy or delete it"


def _verified(spec: ModelSpec, path: Path, remedy: str) -> Path:
    expected = spec.sha256 if spec.derived_from is None else _recorded_sha256(path)
    actual_size = path.stat().st_size
    actual_sha = sha256_file(path)
    if actual_sha != expected or (spec.size is not None and actual_size != spec.size):
        raise ChecksumError(
            path,
            expected_sha256=expected,
            actual_sha256=actual_sha,
            expected_size=spec.size,
            actual_size=actual_size,
            hint=remedy,
        )
    return path


def _download(spec: ModelSpec, cache_dir: Path, destination: Path, progress: bool) -> Path:
    assert spec.sha256 is not None  # a derived spec never gets here
    ensure_model_cache(cache_dir)
    failures: list[str] = []
    wrong: ChecksumError | None = None
    for url in spec.urls:
        try:
            return download_verified(
                url,
                cache_dir / spec.filename,
                sha256=spec.sha256,
                size=spec.size,
                progress=progress,
            )
        except ChecksumError as err:
            wrong = err
            failures.append(f"{url}: wrong content")
        except (OSError, http.client.HTTPException, ValueError) as err:
            failures.append(f"{url}: {describe_failure(err)}")
    if wrong is not None:
        raise wrong
    raise ModelNotFoundError(
        spec.filename, urls=spec.urls, failures=failures, destination=destination
    )
