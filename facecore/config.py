"""One settings object for the whole program, loaded once at start-up.

`load_settings(cli, environ)` merges four layers, highest first:

1. the command line: `cli` maps dotted keys (``"state_dir"``, ``"server.port"``) to the
   values the user gave (``None`` = not given); ``cli["config"]`` names the config file;
2. the environment: ``FACESTREAM_<KEY>`` with dots as underscores
   (``server.port`` -> ``FACESTREAM_SERVER_PORT``), plus the alias ``FACESTREAM_TOKEN``
   for ``server.token``; an empty variable counts as unset, and another FACESTREAM_*
   one is warned of by the command (`env_warnings`: most likely a misspelt name);
3. a TOML config file named by ``--config FILE`` or ``FACESTREAM_CONFIG``, whose tables
   are the sections below (``[server]``, ``[detection]``...); relative paths in it are
   relative to the file's folder;
4. the defaults written in the dataclasses below; the state and cache folders are the
   XDG ones from `platformdirs` (which reads ``os.environ``, e.g. XDG_STATE_HOME).

Every value is converted from the dataclass annotation and range-checked (some by a
check of their own: addresses, the database URL); a bad value or an unknown key raises
`ConfigError` naming the key, the value (never a secret one) and where it came from. An
empty path on the command line or in the file is refused: ``Path("")`` is the working
directory, never what the user meant.
`Settings.origins` records, for every dotted key, which layer gave its value.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import math
import os
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import platformdirs

from facecore.errors import ConfigError

__all__ = [
    "DetectionSettings",
    "EnrollmentSettings",
    "RecognitionSettings",
    "Recognizer",
    "ServerSettings",
    "Settings",
    "TrackingSettings",
    "TrainerSettings",
    "check_database_url",
    "ensure_private_dir",
    "env_name",
    "env_warnings",
    "load_settings",
    "redacted_url",
    "setting_keys",
]

APP_NAME = "facestream"
ENV_PREFIX = "FACESTREAM_"
CONFIG_ENV = "FACESTREAM_CONFIG"
DEFAULT_ORIGIN = "default"
# FACESTREAM_* variables read outside the settings: the tests' shared data and Triton
# environment, the trainer's test hook (trainer.train_cli); never warned of
OTHER_ENV = frozenset({"FACESTREAM_SHARED", "FACESTREAM_TRITON_ENV",
                       "FACESTREAM_TEST_PUBLISH_PAUSE"})
# keys whose value may hold a password: never repeated in a message
SECRET_KEYS = frozenset({"server.token", "enrollment.database_url"})

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Device = Literal["auto", "cpu", "cuda"]
DetectorBackend = Literal["onnxruntime", "opencv"]
RecognitionBackend = Literal["onnxruntime", "triton"]
# the recognizers of facecore.registry.MODELS, which imports this module (the registry's
# tests check that the two agree)
Recognizer = Literal["dlib_resnet_v1", "sface_2021dec"]


def _bounded(default: typing.Any, lo: float | None = None, hi: float | None = None) -> typing.Any:
    """A dataclass field whose value must lie in [lo, hi]."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


def _checked(default: typing.Any, check: Callable[[typing.Any], None]) -> typing.Any:
    """A dataclass field whose given value must pass `check`, which raises ValueError
    with the reason otherwise."""
    return field(default=default, metadata={"check": check})


def _ip_networks(values: tuple[str, ...]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or network such as 10.0.0.5 or 10.0.0.0/24"
            ) from None


def _rate(value: float) -> None:
    """A false-accept rate: 0 would name nobody, 1 anybody."""
    if not 0.0 < value < 1.0:
        raise ValueError("must be a rate between 0 and 1, such as 0.001 (1 in 1,000)")


def check_database_url(url: str | None) -> None:
    """ValueError unless `url` is a PostgreSQL URL (or None); the reason never repeats
    the value: one that is no URL could be a password typed in the wrong place."""
    if url is None:
        return
    if url.startswith(("postgresql://", "postgres://")):
        if urllib.parse.urlsplit(url).netloc.count("@") > 1:
            # libpq ends the password at the first one, and names the rest as the host
            raise ValueError("an '@' in its user name or password must be written %40")
        return
    scheme, found, _ = url.partition("://")
    given = f"a {scheme!r} URL" if found else "not a URL"
    raise ValueError(
        f"must be a PostgreSQL URL, postgresql://USER@HOST/DB; the value given is {given}"
    )


@dataclass(frozen=True)
class DetectionSettings:
    size: int = _bounded(640, lo=32)  # longest image side given to YuNet, in pixels
    score_threshold: float = _bounded(0.6, lo=0.0, hi=1.0)
    nms_threshold: float = _bounded(0.3, lo=0.0, hi=1.0)
    min_face_px: int = _bounded(24, lo=0)  # faces smaller than this (box side) are ignored
    # The same YuNet file and the same faces either way; ONNX Runtime takes half
    # OpenCV's CPU time a frame and runs on the GPU too.
    backend: DetectorBackend = "onnxruntime"
    device: Device = "auto"  # the onnxruntime back-end's device
    threads: int = _bounded(1, lo=0)  # per call: frames and streams already run in parallel


@dataclass(frozen=True)
class RecognitionSettings:
    model: Recognizer = "dlib_resnet_v1"
    # "onnxruntime": a session in this process; "triton": a Triton Inference Server
    # (its model repository made by `facestream models triton-repo`), which batches
    # across every worker and box that uses it
    backend: RecognitionBackend = "onnxruntime"
    triton_url: str = "localhost:8001"  # Triton's gRPC address, host:port
    # one request's limit; past it (or with Triton down) faces are unknown and
    # Triton is asked again after triton_retry_s
    triton_timeout_ms: float = _bounded(1000.0, lo=1.0)
    triton_retry_s: float = _bounded(2.0, lo=0.0)
    device: Device = "auto"  # the onnxruntime back-end's device
    threads: int = _bounded(0, lo=0)  # 0 = ONNX Runtime's default
    batch_size: int = _bounded(32, lo=1)
    batch_wait_ms: float = _bounded(3.0, lo=0.0)


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool = True
    iou_threshold: float = _bounded(0.3, lo=0.0, hi=1.0)
    max_age_frames: int = _bounded(15, lo=0)
    recheck_frames: int = _bounded(30, lo=1)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = _bounded(8443, lo=0, hi=65535)
    http: bool = False  # plain HTTP (browsers allow the camera only on localhost then)
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = field(default=None, repr=False)  # never printed or logged
    max_sessions: int = _bounded(4, lo=1)
    ice_servers: tuple[str, ...] = ()
    # load balancers (addresses or networks) whose X-Forwarded-For/-Proto are believed
    trusted_proxies: tuple[str, ...] = _checked((), _ip_networks)
    max_upload_mb: int = _bounded(10, lo=1)
    # server processes on the one port (SO_REUSEPORT); 1 = this process alone. A
    # worker pays off only past one core's worth of video: see docs/benchmarks.md.
    workers: int = _bounded(1, lo=1, hi=64)
    # Prometheus /metrics on a plain-HTTP listener of its own (0: none); see README
    metrics_host: str = "127.0.0.1"
    metrics_port: int = _bounded(0, lo=0, hi=65535)


@dataclass(frozen=True)
class EnrollmentSettings:
    # None: the embedded SQLite store in state_dir/enrollment; "postgresql://user@host/db"
    # for one store shared by several boxes. May hold a password: never printed or logged.
    database_url: str | None = field(
        default=None, repr=False, metadata={"check": check_database_url}
    )
    # how long a service waits for PostgreSQL before each retry, doubling up to this
    connect_retry_max_s: float = _bounded(30.0, lo=0.1)


@dataclass(frozen=True)
class TrainerSettings:
    # a full check (the store and the bundle in force) at least this often; a change to
    # the store is seen sooner (within 0.25 s on SQLite, at once on PostgreSQL)
    poll_seconds: float = _bounded(2.0, lo=0.05)
    keep_versions: int = _bounded(3, lo=1)
    target_far: float = _checked(1e-3, _rate)
    metrics_host: str = "127.0.0.1"  # Prometheus /metrics of the trainer (port 0: none)
    metrics_port: int = _bounded(0, lo=0, hi=65535)


def _no_origins() -> Mapping[str, str]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Settings:
    state_dir: Path  # biometric data: galleries, bundles (kept private, mode 0700)
    cache_dir: Path  # downloaded and converted model files
    models_dir: Path | None = None  # a folder of model files put there by hand
    # where the trainer publishes and every streamer follows bundles (a shared
    # filesystem for several boxes); None: state_dir/bundles
    bundles_dir: Path | None = None
    font: Path | None = None  # TrueType font for names; None = the drawing code's default
    log_level: LogLevel = "info"
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    recognition: RecognitionSettings = field(default_factory=RecognitionSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    enrollment: EnrollmentSettings = field(default_factory=EnrollmentSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    # dotted key -> "default" | "config file PATH" | "environment FACESTREAM_<KEY>" |
    # "command line --x"; empty when the object was built by hand
    origins: Mapping[str, str] = field(default_factory=_no_origins, compare=False, repr=False)

    def get(self, key: str) -> object:
        """The value of a dotted key, e.g. ``settings.get("server.port")``."""
        value: object = self
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def describe(self) -> list[tuple[str, str, str]]:
        """(key, value, origin) for every setting, the token masked."""
        rows = []
        for leaf in _leaves():
            value = self.get(leaf.key)
            if leaf.key == "server.token":
                shown = "(not set)" if value is None else "(set, hidden)"
            elif leaf.key == "enrollment.database_url" and isinstance(value, str):
                shown = redacted_url(value)
            else:
                shown = _format(value)
            rows.append((leaf.key, shown, self.origins.get(leaf.key, DEFAULT_ORIGIN)))
        return rows


@dataclass(frozen=True)
class _Leaf:
    key: str
    type: typing.Any
    lo: float | None
    hi: float | None
    check: Callable[[typing.Any], None] | None


def _leaves(cls: type = Settings, prefix: str = "") -> Iterator[_Leaf]:
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name == "origins":
            continue
        tp = hints[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            meta = f.metadata
            yield _Leaf(f"{prefix}{f.name}", tp, meta.get("lo"), meta.get("hi"), meta.get("check"))


def setting_keys() -> tuple[str, ...]:
    """Every dotted settings key, in declaration order."""
    return tuple(leaf.key for leaf in _leaves())


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``server.port`` -> FACESTREAM_SERVER_PORT."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def _env_aliases() -> dict[str, str]:
    """Extra variable names; the derived name wins when both are set."""
    return {"FACESTREAM_TOKEN": "server.token"}


def _cli_option(key: str, options: Mapping[str, str]) -> str:
    """The option that gave `key`: from the parser when known (``--detection-size`` sets
    ``detection.size``), else derived from the key's last part."""
    return options.get(key) or "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: for messages and logs.
    libpq takes one in the query too (``?password=``)."""
    parts = urllib.parse.urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username}:***@{netloc.rpartition('@')[2]}"
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if any(key in _SECRET_PARAMETERS for key, _ in pairs):
        query = urllib.parse.urlencode(
            [(key, "***" if key in _SECRET_PARAMETERS else value) for key, value in pairs],
            safe="*",
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})  # of a libpq URL's query


def _is_path(tp: typing.Any) -> bool:
    return tp is Path or Path in get_args(tp)


def _format(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return str(value)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(tp: typing.Any, raw: object) -> object:
    """Convert `raw` (text from env/command line, or a TOML value) to type `tp`.

    Raises ValueError with the reason when it cannot.
    """
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _coerce(inner[0], raw)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(raw, str) and raw.strip().lower() in choices:
            return raw.strip().lower()
        raise ValueError("expected one of " + ", ".join(choices))
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected a boolean (1/true/yes or 0/false/no)")
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ValueError("expected an integer")
    if tp is float:
        number: float | None = None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str):
            with contextlib.suppress(ValueError):
                number = float(raw.strip())
        if number is None or not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise ValueError("expected a string")
    if tp is Path:
        if isinstance(raw, (str, os.PathLike)):
            return Path(raw).expanduser()
        raise ValueError("expected a path")
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, (list, tuple)) and all(isinstance(i, str) for i in items):
            return tuple(i.strip() for i in items if i.strip())
        raise ValueError("expected a list of strings (comma-separated in the environment)")
    raise TypeError(f"unsupported settings type {tp!r}")


def _convert(
    leaf: _Leaf, raw: object, origin: str, base_dir: Path | None = None, *, name: str = ""
) -> object:
    """`raw` as the setting's type, checked; `name` says where it was written (the
    option, or the key and the file) for a message that needs no value."""
    if raw == "" and _is_path(leaf.type):
        # Path("") is the working directory: an empty variable means "unset", but an
        # empty option or file value is a mistake (a script's unset variable)
        raise ConfigError(f"{name or leaf.key} cannot be empty")
    try:
        value = _coerce(leaf.type, raw)
        if leaf.check is not None:
            leaf.check(value)
    except ValueError as err:
        raise _refusal(leaf.key, str(err), raw, origin) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        reason = None
        if leaf.lo is not None and value < leaf.lo:
            reason = f"must be at least {leaf.lo:g}"
        elif leaf.hi is not None and value > leaf.hi:
            reason = f"must be at most {leaf.hi:g}"
        if reason is not None:
            raise ConfigError(reason, key=leaf.key, value=raw, origin=origin)
    if isinstance(value, Path):
        # relative paths: to the config file's folder, or else to the working directory
        value = (base_dir / value) if base_dir is not None else value.absolute()
    return value


def _refusal(key: str, reason: str, raw: object, origin: str) -> ConfigError:
    if key in SECRET_KEYS:
        return ConfigError(f"{key} (from {origin}): {reason}")
    return ConfigError(reason, key=key, value=raw, origin=origin)


def _read_config_file(path: Path, origin: str) -> dict[str, object]:
    """The file's settings as dotted key -> raw TOML value."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} (from {origin}) does not exist") from None
    except UnicodeDecodeError as err:  # tomllib decodes the whole file at once
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start} is not valid UTF-8)"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    known = set(setting_keys())
    sections = {key.partition(".")[0] for key in known if "." in key}
    flat: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{name}.{sub}"] = subvalue
        elif name in sections:
            raise ConfigError(
                f"[{name}] in config file {path} must be a table (a [{name}] line, then "
                f"its settings), not {name} = {value!r}"
            )
        else:
            flat[name] = value
    for key in flat:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {key} in config file {path}{hint}")
    return flat


def _defaults() -> dict[str, object]:
    base = Settings(
        state_dir=platformdirs.user_state_path(APP_NAME),
        cache_dir=platformdirs.user_cache_path(APP_NAME),
    )
    return {key: base.get(key) for key in setting_keys()}


def _build(cls: type, prefix: str, values: Mapping[str, object], **extra: object) -> typing.Any:
    hints = get_type_hints(cls)
    kwargs: dict[str, object] = dict(extra)
    for f in fields(cls):
        if f.name == "origins":
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if isinstance(tp, type) and is_dataclass(tp):
            kwargs[f.name] = _build(tp, f"{key}.", values)
        else:
            kwargs[f.name] = values[key]
    return cls(**kwargs)


def load_settings(
    cli: Mapping[str, object],
    environ: Mapping[str, str],
    options: Mapping[str, str] | None = None,
) -> Settings:
    """Merge command line > environment > config file > defaults into one `Settings`.

    `cli` maps dotted keys (and ``"config"``) to values; ``None`` means "not given".
    `options` names the option each key of `cli` was given with (``"detection.size":
    "--detection-size"``), for origins and messages; a key without one is named after
    its last part (``--size``). Unknown keys in `cli` are a programming error
    (ValueError); everything the user wrote that cannot be used raises `ConfigError`.
    """
    options = options or {}
    leaves = {leaf.key: leaf for leaf in _leaves()}
    unknown = set(cli) - set(leaves) - {"config"}
    if unknown:
        raise ValueError(f"unknown settings keys from the command line: {sorted(unknown)}")

    values = _defaults()
    origins = dict.fromkeys(values, DEFAULT_ORIGIN)

    config_raw, config_origin = cli.get("config"), "command line --config"
    if config_raw is None and environ.get(CONFIG_ENV):
        config_raw, config_origin = environ[CONFIG_ENV], f"environment {CONFIG_ENV}"
    if config_raw == "":
        raise ConfigError(f"{options.get('config', '--config')} cannot be empty")
    if config_raw is not None:
        path = Path(str(config_raw)).expanduser().absolute()
        label = f"config file {path}"
        for key, raw in _read_config_file(path, config_origin).items():
            values[key] = _convert(
                leaves[key], raw, label, base_dir=path.parent, name=f"{key} in {label}"
            )
            origins[key] = label

    env_keys = {env_name(key): key for key in leaves}
    for var, key in [*_env_aliases().items(), *env_keys.items()]:
        raw = environ.get(var)
        if raw:
            label = f"environment {var}"
            values[key] = _convert(leaves[key], raw, label)
            origins[key] = label

    for key, raw in cli.items():
        if key != "config" and raw is not None:
            option = _cli_option(key, options)
            label = f"command line {option}"
            values[key] = _convert(leaves[key], raw, label, name=option)
            origins[key] = label

    settings: Settings = _build(Settings, "", values, origins=types.MappingProxyType(origins))
    return settings


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each FACESTREAM_* variable that facestream does not read, most
    likely a typo (a setting's name misspelt would otherwise be ignored without a
    word); not an error, as other tools may use the prefix too."""
    settings_env = {CONFIG_ENV, *_env_aliases(), *(env_name(key) for key in setting_keys())}
    warnings = []
    for var in sorted(set(environ) - settings_env - OTHER_ENV):
        if var.startswith(ENV_PREFIX):
            close = difflib.get_close_matches(var, sorted(settings_env), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"environment variable {var} is not a facestream setting and is "
                            f"ignored{hint}")
    return warnings


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and make it readable by its owner only (0700); a parent folder it
    creates (the state folder itself, on a first run) is 0700 too, one that exists is
    left as it is.

    Biometric data (face embeddings, enrollment photos) lives under ``state_dir``. Only
    for facestream's own folders there: never one the user named, which may be ``/``.
    """
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):  # mkdir(parents=True) would make them 0755
        folder.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path
