from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest

from facecore.config import Settings, ensure_private_dir, env_name, load_settings, setting_keys
from facecore.cpus import usable_cpus
from facecore.errors import ConfigError


def write_config(tmp_path: Path, text: str, name: str = "facestream.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_with_nothing_given() -> None:
    settings = load_settings({}, {})
    assert settings.state_dir == platformdirs.user_state_path("facestream")
    assert settings.cache_dir == platformdirs.user_cache_path("facestream")
    assert settings.models_dir is None
    assert settings.detection.size == 640
    assert settings.recognition.model == "dlib_resnet_v1"
    assert settings.server.port == 8443
    assert settings.server.ice_servers == ()
    assert set(settings.origins) == set(setting_keys())
    assert set(settings.origins.values()) == {"default"}


@pytest.mark.parametrize(
    ("in_file", "in_env", "on_cli", "port", "origin"),
    [
        (False, False, False, 8443, "default"),
        (True, False, False, 1000, "config file"),
        (True, True, False, 2000, "environment FACESTREAM_SERVER_PORT"),
        (False, True, False, 2000, "environment FACESTREAM_SERVER_PORT"),
        (True, True, True, 3000, "command line --port"),
        (True, False, True, 3000, "command line --port"),
    ],
)
def test_precedence_command_line_environment_file_default(
    tmp_path: Path, in_file: bool, in_env: bool, on_cli: bool, port: int, origin: str
) -> None:
    config = write_config(tmp_path, "[server]\nport = 1000\n")
    cli: dict[str, object] = {"config": str(config) if in_file else None}
    environ = {"FACESTREAM_SERVER_PORT": "2000"} if in_env else {}
    if on_cli:
        cli["server.port"] = "3000"
    settings = load_settings(cli, environ)
    assert settings.server.port == port
    assert settings.origins["server.port"].startswith(origin)
    if origin == "config file":
        assert settings.origins["server.port"] == f"config file {config}"


def test_each_layer_fills_its_own_keys(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'log_level = "warning"\n'
        "[detection]\nsize = 320\n"
        "[tracking]\nenabled = false\n"
        '[server]\nice_servers = ["stun:a.example:3478", "turn:b.example"]\n',
    )
    settings = load_settings(
        {"config": config, "state_dir": str(tmp_path / "state")},
        {"FACESTREAM_RECOGNITION_DEVICE": "CPU", "FACESTREAM_DETECTION_SIZE": "480"},
    )
    assert settings.log_level == "warning"
    assert settings.tracking.enabled is False
    assert settings.server.ice_servers == ("stun:a.example:3478", "turn:b.example")
    assert settings.detection.size == 480  # the environment beats the file
    assert settings.recognition.device == "cpu"
    assert settings.state_dir == tmp_path / "state"
    assert settings.origins["detection.size"] == "environment FACESTREAM_DETECTION_SIZE"
    assert settings.origins["tracking.enabled"] == f"config file {config}"
    assert settings.origins["state_dir"] == "command line --state-dir"
    assert settings.origins["server.host"] == "default"


def test_config_file_from_environment_and_command_line_wins(tmp_path: Path) -> None:
    from_env = write_config(tmp_path, "[server]\nport = 1111\n", "env.toml")
    from_cli = write_config(tmp_path, "[server]\nport = 2222\n", "cli.toml")
    environ = {"FACESTREAM_CONFIG": str(from_env)}
    assert load_settings({}, environ).server.port == 1111
    assert load_settings({"config": str(from_cli)}, environ).server.port == 2222


def test_paths_expand_home_and_file_paths_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, '[server]\ncert_file = "certs/server.pem"\n')
    monkeypatch.chdir(tmp_path / "..")
    settings = load_settings(
        {"config": config, "models_dir": "models"},
        {"FACESTREAM_CACHE_DIR": "~/somewhere", "FACESTREAM_STATE_DIR": "state"},
    )
    assert settings.server.cert_file == tmp_path / "certs" / "server.pem"
    assert settings.cache_dir == Path.home() / "somewhere"
    assert settings.state_dir == tmp_path.parent / "state"
    assert settings.models_dir == tmp_path.parent / "models"


def test_environment_names_aliases_and_empty_values() -> None:
    assert env_name("server.port") == "FACESTREAM_SERVER_PORT"
    assert env_name("state_dir") == "FACESTREAM_STATE_DIR"
    settings = load_settings(
        {},
        {
            "FACESTREAM_TOKEN": "s3cret",
            "FACESTREAM_MODELS_DIR": "/opt/models",
            "FACESTREAM_SERVER_ICE_SERVERS": "stun:a, stun:b,",
            "FACESTREAM_SERVER_PORT": "",  # empty = unset
            "FACESTREAM_SERVER_HTTP": "yes",
        },
    )
    assert settings.server.token == "s3cret"
    assert settings.origins["server.token"] == "environment FACESTREAM_TOKEN"
    assert settings.models_dir == Path("/opt/models")
    assert settings.server.ice_servers == ("stun:a", "stun:b")
    assert settings.server.port == 8443
    assert settings.server.http is True
    both = {"FACESTREAM_TOKEN": "alias", "FACESTREAM_SERVER_TOKEN": "derived"}
    assert load_settings({}, both).server.token == "derived"


def test_token_is_never_shown() -> None:
    settings = load_settings({}, {"FACESTREAM_TOKEN": "s3cret"})
    rows = {key: (value, origin) for key, value, origin in settings.describe()}
    assert rows["server.token"] == ("(set, hidden)", "environment FACESTREAM_TOKEN")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.describe())
    assert load_settings({}, {}).describe()[0][0] == "state_dir"


def test_describe_lists_every_key_once() -> None:
    keys = [key for key, _, _ in load_settings({}, {}).describe()]
    assert keys == list(setting_keys())
    assert "origins" not in keys


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("FACESTREAM_SERVER_PORT", "abc", "expected an integer"),
        ("FACESTREAM_SERVER_PORT", "70000", "must be at most 65535"),
        ("FACESTREAM_DETECTION_SCORE_THRESHOLD", "1.5", "must be at most 1"),
        ("FACESTREAM_DETECTION_SCORE_THRESHOLD", "nan", "expected a finite number"),
        ("FACESTREAM_RECOGNITION_BATCH_SIZE", "0", "must be at least 1"),
        # 0 made the trainer publish a NaN threshold (nobody named), 1 -inf (anybody)
        ("FACESTREAM_TRAINER_TARGET_FAR", "0", "must be a rate between 0 and 1"),
        ("FACESTREAM_TRAINER_TARGET_FAR", "1", "must be a rate between 0 and 1"),
        ("FACESTREAM_TRACKING_ENABLED", "maybe", "expected a boolean"),
        ("FACESTREAM_RECOGNITION_DEVICE", "tpu", "expected one of auto, cpu, cuda"),
        ("FACESTREAM_LOG_LEVEL", "loud", "expected one of debug"),
    ],
)
def test_bad_environment_value_names_key_value_and_origin(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {variable: value})
    message = str(caught.value)
    key = caught.value.key
    assert key is not None and env_name(key) == variable
    assert message.startswith(f"{key} = {value!r} (from environment {variable}): ")
    assert reason in message


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[server]\nice_servers = 5\nport = "x"\n')
    with pytest.raises(ConfigError, match=r"server\.ice_servers = 5 \(from config file .*"):
        load_settings({"config": config}, {})


def test_bad_command_line_value() -> None:
    with pytest.raises(ConfigError, match=r"server\.port = 'x' \(from command line --port\)"):
        load_settings({"server.port": "x"}, {})


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server]\nport = true\n")
    with pytest.raises(ConfigError, match="expected an integer"):
        load_settings({"config": config}, {})


@pytest.mark.parametrize(
    ("text", "unknown", "suggestion"),
    [
        ("[server]\nprot = 1\n", "server.prot", "server.port"),
        ("[sever]\nport = 1\n", "sever.port", "server.port"),
        ("statedir = '/x'\n", "statedir", "state_dir"),
        ("origins = 1\n", "origins", None),
    ],
)
def test_unknown_key_in_file(
    tmp_path: Path, text: str, unknown: str, suggestion: str | None
) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": config}, {})
    message = str(caught.value)
    assert f"unknown setting {unknown} in config file {config}" in message
    if suggestion:
        assert f"did you mean {suggestion}?" in message


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"config file {missing} \(from command line --config\)"):
        load_settings({"config": str(missing)}, {})
    with pytest.raises(ConfigError, match="from environment FACESTREAM_CONFIG"):
        load_settings({}, {"FACESTREAM_CONFIG": str(missing)})


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server]\nport = 1\nhost = \n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": config}, {})
    assert str(config) in str(caught.value)
    assert "line 3" in str(caught.value)


def test_config_file_that_is_not_utf8_is_one_clean_error(tmp_path: Path) -> None:
    config = tmp_path / "b.toml"
    config.write_bytes(b"\xff\xfe[server]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": str(config)}, {})
    assert str(caught.value) == (
        f"config file {config} is not UTF-8 text (byte 0 is not valid UTF-8)"
    )


def test_a_toml_boolean_is_shown_as_toml(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server]\nport = true\nice_servers = [false]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": config}, {})
    assert str(caught.value) == (
        f"server.port = true (from config file {config}): expected an integer"
    )
    config = write_config(tmp_path, "[server]\nice_servers = [false]\n")
    with pytest.raises(ConfigError, match=r"server\.ice_servers = \[false\] \(from"):
        load_settings({"config": config}, {})


@pytest.mark.parametrize(
    ("key", "option"),
    [
        ("state_dir", "--state-dir"),
        ("cache_dir", "--cache-dir"),
        ("models_dir", "--models-dir"),
        ("bundles_dir", "--bundles-dir"),
        ("font", "--font"),
        ("server.cert_file", "--cert-file"),
    ],
)
def test_an_empty_path_on_the_command_line_is_refused(key: str, option: str) -> None:
    # Path("") would be the working directory
    with pytest.raises(ConfigError) as caught:
        load_settings({key: ""}, {})
    assert str(caught.value) == f"{option} cannot be empty"


def test_an_empty_path_in_the_config_file_is_refused_but_not_in_the_environment(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, 'state_dir = ""\n')
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": config}, {})
    assert str(caught.value) == f"state_dir in config file {config} cannot be empty"
    config = write_config(tmp_path, '[server]\nkey_file = ""\n')
    with pytest.raises(ConfigError, match=r"^server\.key_file in config file .* cannot be empty$"):
        load_settings({"config": config}, {})
    with pytest.raises(ConfigError, match=r"^--config cannot be empty$"):
        load_settings({"config": ""}, {})
    # an empty variable is an unset one (a shell's FACESTREAM_STATE_DIR= ...)
    settings = load_settings({}, {"FACESTREAM_STATE_DIR": "", "FACESTREAM_CONFIG": ""})
    assert settings.state_dir == platformdirs.user_state_path("facestream")


def test_the_origin_names_the_option_the_parser_gave() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"detection.size": "0"}, {}, {"detection.size": "--detection-size"})
    assert str(caught.value) == (
        "detection.size = '0' (from command line --detection-size): must be at least 32"
    )
    settings = load_settings({"detection.size": "320"}, {}, {"detection.size": "--detection-size"})
    assert settings.origins["detection.size"] == "command line --detection-size"


def test_unknown_command_line_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"server\.prot"):
        load_settings({"server.prot": 1}, {})


def test_settings_are_frozen_and_buildable_by_hand(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "s", cache_dir=tmp_path / "c")
    assert settings.get("server.port") == 8443
    assert settings.describe()[0] == ("state_dir", str(tmp_path / "s"), "default")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


def test_ensure_private_dir(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    target = tmp_path / "a" / "b"  # "a": a state folder made on a first run
    assert ensure_private_dir(target) == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # there before: left alone
    target.chmod(0o755)
    ensure_private_dir(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_usable_cpus_follow_the_affinity_mask() -> None:
    # a real child process confined to one CPU, as taskset or systemd's CPUAffinity= do
    code = (
        "import os\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from facecore.cpus import usable_cpus\n"
        "print(usable_cpus(), os.cpu_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    confined, machine = map(int, out.stdout.split())
    assert confined == 1
    assert usable_cpus() == len(os.sched_getaffinity(0)) <= machine
