from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from onnx import TensorProto, helper

import facestream.cli
from facecore.config import env_warnings
from facecore.registry import CHECKSUM_SUFFIX, MODELS, record_checksum
from facestream.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0  # root writes through a chmod: read-only cases need chattr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no FACESTREAM_* variable, XDG folders inside tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), clean.get("PYTHONPATH")]))
    clean["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    clean["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    return clean


def facestream_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facestream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def shown(stdout: str) -> dict[str, tuple[str, str]]:
    """`config show` output as key -> (value, origin)."""
    header, *lines = stdout.splitlines()
    at_value, at_origin = header.index("VALUE"), header.index("ORIGIN")
    return {
        line[:at_value].strip(): (line[at_value:at_origin].strip(), line[at_origin:])
        for line in lines
    }


def test_help(env: dict[str, str]) -> None:
    result = facestream_run(env, "--help")
    assert result.returncode == 0, result.stderr
    for word in ("config", "models", "--state-dir", "--models-dir", "examples:"):
        assert word in result.stdout


def test_every_command_has_help_with_a_description() -> None:
    parser = build_parser()
    top = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    commands = list(top.choices.items())
    assert commands
    for name, sub in commands:
        assert sub.description, f"facestream {name} has no description"
        if sub._subparsers is not None:
            for verb, leaf in sub._subparsers._group_actions[0].choices.items():
                assert leaf.description, f"facestream {name} {verb} has no description"
                assert "facestream" in (leaf.epilog or ""), f"{name} {verb}: no example"


def test_config_show_lists_origins(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "facestream.toml"
    config.write_text("[detection]\nsize = 320\n[server]\nport = 1000\n")
    env["FACESTREAM_SERVER_PORT"] = "9000"
    env["FACESTREAM_TOKEN"] = "s3cret"
    result = facestream_run(env, "--config", str(config), "config", "show")
    assert result.returncode == 0, result.stderr
    rows = shown(result.stdout)
    assert rows["detection.size"] == ("320", f"config file {config}")
    assert rows["server.port"] == ("9000", "environment FACESTREAM_SERVER_PORT")
    assert rows["server.host"] == ("0.0.0.0", "default")
    assert rows["state_dir"] == (str(tmp_path / "xdg-state" / "facestream"), "default")
    assert rows["server.token"] == ("(set, hidden)", "environment FACESTREAM_TOKEN")
    assert rows["models_dir"] == ("(not set)", "default")
    assert "s3cret" not in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state-dir", "/a", "config", "show"], "/a"),
        (["config", "show", "--state-dir", "/b"], "/b"),
        (["--state-dir", "/a", "config", "show", "--state-dir", "/b"], "/b"),
        (["config", "--state-dir", "/c", "show"], "/c"),
    ],
)
def test_global_options_before_or_after_the_command(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 0
    rows = shown(capsys.readouterr().out)
    assert rows["state_dir"] == (expected, "command line --state-dir")


def test_global_option_after_the_command_in_a_real_process(env: dict[str, str]) -> None:
    result = facestream_run(env, "config", "show", "--log-level", "warning")
    assert result.returncode == 0, result.stderr
    assert shown(result.stdout)["log_level"] == ("warning", "command line --log-level")


def test_error_is_one_clean_line_and_status_2(env: dict[str, str]) -> None:
    env["FACESTREAM_SERVER_PORT"] = "abc"
    result = facestream_run(env, "config", "show")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "facestream: error: server.port = 'abc' (from environment FACESTREAM_SERVER_PORT): "
        "expected an integer\n"
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[recognition]\nmodel = "bogus"\n',
         "recognition.model = 'bogus' (from config file {config}): expected one of "
         "dlib_resnet_v1, sface_2021dec"),
        ('[enrollment]\ndatabase_url = "mysql://ada:secret@db/faces"\n',
         "enrollment.database_url (from config file {config}): must be a PostgreSQL URL, "
         "postgresql://USER@HOST/DB; the value given is a 'mysql' URL"),
        ('[enrollment]\ndatabase_url = "postgresql://ada:p@ss@db/faces"\n',
         "enrollment.database_url (from config file {config}): an '@' in its user name or "
         "password must be written %40"),
        ('[server]\ntrusted_proxies = "not-an-ip"\n',
         "server.trusted_proxies = 'not-an-ip' (from config file {config}): 'not-an-ip' is "
         "not an IP address or network such as 10.0.0.5 or 10.0.0.0/24"),
        ("server = 5\n",
         "[server] in config file {config} must be a table (a [server] line, then its "
         "settings), not server = 5"),
    ],
)
def test_a_bad_value_is_refused_when_the_config_is_loaded(
    text: str, error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config show` accepted them; `trainer --once` met an unknown model as a
    KeyError traceback."""
    config = tmp_path / "facestream.toml"
    config.write_text(text)
    common = ["--config", str(config), "--state-dir", str(tmp_path / "state")]
    for command in (["config", "show"], ["trainer", "--once"]):
        assert main([*common, *command]) == 2
        assert capsys.readouterr().err == f"facestream: error: {error.format(config=config)}\n"
    assert not (tmp_path / "state").exists()


def test_a_database_url_error_names_where_the_url_came_from(
    env: dict[str, str], tmp_path: Path
) -> None:
    """It said ``(--database-url)`` whatever had set it, and is never echoed."""
    env["FACESTREAM_ENROLLMENT_DATABASE_URL"] = "ada:secret@db/faces"
    result = facestream_run(env, "enroll", "list")
    assert (result.returncode, result.stderr) == (2, (
        "facestream: error: enrollment.database_url (from environment "
        "FACESTREAM_ENROLLMENT_DATABASE_URL): must be a PostgreSQL URL, "
        "postgresql://USER@HOST/DB; the value given is not a URL\n"))


def test_an_unknown_facestream_variable_is_warned_of(env: dict[str, str]) -> None:
    """A misspelt setting's variable was ignored without a word; the names facestream
    reads outside the settings are not warned of."""
    env.update({"FACESTREAM_SERVER_PROT": "9000", "FACESTREAM_SHARED": "/srv/shared",
                "FACESTREAM_TRITON_ENV": "/srv/triton", "FACESTREAM_TOKEN": "s3cret-s3cret"})
    result = facestream_run(env, "config", "show")
    assert result.returncode == 0, result.stderr
    assert shown(result.stdout)["server.port"] == ("8443", "default")
    (line,) = result.stderr.splitlines()
    assert line.endswith(
        " WARNING facestream.cli: environment variable FACESTREAM_SERVER_PROT is not a "
        "facestream setting and is ignored (did you mean FACESTREAM_SERVER_PORT?)"
    ), line


def test_no_facestream_variable_the_project_uses_is_warned_of(repo_root: Path) -> None:
    """Every FACESTREAM_* name in the sources, units and docs (test modules aside,
    which name misspelt ones on purpose) is one facestream reads."""
    tops = [p for p in repo_root.iterdir() if not p.name.startswith(".")]  # no .venv, .git
    files = [f for top in tops for f in ([top] if top.is_file() else top.rglob("*"))]
    names = set()
    for path in files:
        if path.is_file() and not path.name.startswith("test_"):
            names.update(re.findall(r"FACESTREAM_[A-Z0-9_]*[A-Z0-9]",
                                    path.read_text(errors="replace")))
    assert {"FACESTREAM_SHARED", "FACESTREAM_CONFIG", "FACESTREAM_TOKEN"} <= names
    assert env_warnings(dict.fromkeys(names, "1")) == []


def test_debug_shows_the_traceback(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = facestream_run(env, "config", "show", "--config", str(missing), "--log-level", "debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"facestream: error: config file {missing} (from command line --config) does not exist"
    )


def test_usage_errors_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["no-such-command"])
    assert caught.value.code == 2
    assert main([]) == 2
    assert "usage: facestream" in capsys.readouterr().err


def test_an_abbreviated_option_is_refused_not_taken_for_another(
    env: dict[str, str], tmp_path: Path
) -> None:
    # argparse would take `--model` for `--models-dir` and run the trainer on the
    # default state folder
    result = facestream_run(env, "--model", "yunet", "trainer", "--once")
    assert result.returncode == 2
    assert "invalid choice: 'yunet'" in result.stderr
    assert not (tmp_path / "xdg-state").exists()
    result = facestream_run(env, "config", "show", "--log", "debug")
    assert result.returncode == 2
    assert "unrecognized arguments: --log debug" in result.stderr


def test_a_closed_stdout_ends_quietly(env: dict[str, str]) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "facestream", "config", "show"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before it writes: `facestream config show | head -0`
        assert process.stderr.read() == ""
        assert process.wait(timeout=60) == 141


def test_version(env: dict[str, str]) -> None:
    result = facestream_run(env, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("facestream ")


def test_models_list_and_fetch_find_local_files(
    yunet_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--models-dir", str(yunet_path.parent), "--cache-dir", str(tmp_path)]
    assert main(["models", "list", *common]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert str(yunet_path) in lines["yunet_2026may"]
    assert lines["dlib_resnet_v1"].endswith("not prepared")
    assert main(["models", "fetch", "yunet_2026may", *common]) == 0
    assert capsys.readouterr().out == f"yunet_2026may: {yunet_path}\n"


def test_models_fetch_unknown_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "fetch", "nope", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("facestream: error: unknown model 'nope'")


def test_a_package_without_cli_is_skipped_and_a_broken_one_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, cli_source in (("fs_plain_pkg", None), ("fs_broken_pkg", "import no_such_module\n")):
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text("")
        if cli_source is not None:
            (package / "cli.py").write_text(cli_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(facestream.cli, "PACKAGES", ("facecore", "fs_plain_pkg"))
    build_parser()
    monkeypatch.setattr(facestream.cli, "PACKAGES", ("facecore", "fs_broken_pkg"))
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        build_parser()


def test_two_packages_add_verbs_to_one_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "fs_extra_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(
        "from facecore.cli import add_command\n"
        "def register(subparsers, parents):\n"
        "    p = add_command(subparsers['models'], 'shout', parents=parents,\n"
        "                    handler=lambda s, a: print('port', s.server.port) or 0,\n"
        "                    help='h', description='d')\n"
        "    p.add_argument('--port', dest='server.port', default=None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(facestream.cli, "PACKAGES", ("facecore", "fs_extra_pkg"))
    assert main(["models", "shout", "--port", "1234"]) == 0
    assert capsys.readouterr().out == "port 1234\n"
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0


def test_a_config_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "b.toml"
    config.write_bytes(b"\xff\xfe[server]\n")
    assert main(["--config", str(config), "config", "show"]) == 2
    assert capsys.readouterr().err == (
        f"facestream: error: config file {config} is not UTF-8 text "
        "(byte 0 is not valid UTF-8)\n"
    )


@pytest.mark.parametrize("option", ["--state-dir", "--cache-dir", "--models-dir"])
def test_an_empty_folder_option_is_refused_not_taken_as_the_working_directory(
    option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACESTREAM_STATE_DIR", str(tmp_path / "state"))
    assert main([option, "", "enroll", "list"]) == 2
    assert capsys.readouterr().err == f"facestream: error: {option} cannot be empty\n"
    assert list(tmp_path.iterdir()) == []  # no ./enrollment


def test_a_bad_command_line_value_names_the_option_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--source", "clip.mp4", "--detection-size", "0"]) == 2
    assert capsys.readouterr().err == (
        "facestream: error: detection.size = '0' (from command line --detection-size): "
        "must be at least 32\n"
    )


def _tiny_recognizer(models: Path) -> None:
    """A stand-in for the converted dlib network, where the registry looks for it:
    [N, 3, 150, 150] -> [N, 3] (enough for a Triton repository)."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embeddings"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 150, 150])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    models.mkdir()
    converted = models / MODELS["dlib_resnet_v1"].filename
    converted.write_bytes(model.SerializeToString())
    record_checksum(converted)  # as `facestream models prepare` does


@pytest.fixture
def triton_repo(tmp_path: Path) -> list[str]:
    """`facestream models triton-repo` with a tiny recognizer and folders in tmp_path."""
    _tiny_recognizer(tmp_path / "models")
    return ["--models-dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache"),
            "--state-dir", str(tmp_path / "state"), "models", "triton-repo"]


def test_triton_repo_into_a_file_or_a_read_only_folder_is_one_line(
    triton_repo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*triton_repo, str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "dlib_resnet_v1" / "1" / "model.onnx").is_file()
    capsys.readouterr()
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    assert main([*triton_repo, str(in_the_way)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"facestream: error: cannot write the Triton model repository {in_the_way}: "
        f"Not a directory: {in_the_way}/"
    ), err
    assert err.count("\n") == 1
    if AS_ROOT:
        return
    read_only = tmp_path / "read-only"
    read_only.mkdir(0o500)
    assert main([*triton_repo, str(read_only)]) == 2
    assert capsys.readouterr().err == (
        f"facestream: error: cannot write the Triton model repository {read_only}: "
        f"Permission denied: {read_only / 'dlib_resnet_v1'}\n"
    )


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--max-batch-size", "0", "max_batch_size must be at least 1, got 0"),
        ("--max-batch-size", "-1", "max_batch_size must be at least 1, got -1"),
        ("--max-queue-delay-us", "-5", "max_queue_delay_us must not be negative, got -5"),
        ("--max-batch-size", "x", "expected an integer, got 'x'"),
    ],
)
def test_triton_repo_limits_are_usage_errors(
    option: str, value: str, reason: str, triton_repo: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*triton_repo, str(tmp_path / "repo"), option, value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"facestream models triton-repo: error: argument {option}: {reason}\n")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["models", "triton-repo", ""], "DIR"),
        (["eval", "verify", ""], "DIR"),
        (["eval", "calibrate", "", "--output", "c.json"], "DIR"),
        (["eval", "calibrate", "people", "--output", ""], "--output"),
        (["enroll", "import", ""], "DIR"),
    ],
)
def test_an_empty_path_argument_is_refused_not_taken_as_the_working_directory(
    args: list[str], argument: str, triton_repo: list[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`models triton-repo ""` wrote its repository into the working folder."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(SystemExit) as caught:
        main([*triton_repo[:6], *args])  # the global options, with the tiny recognizer
    assert caught.value.code == 2
    command = " ".join(args[:2])
    assert capsys.readouterr().err.endswith(
        f"facestream {command}: error: argument {argument}: cannot be empty\n"
    )
    assert list(here.iterdir()) == []


def test_triton_repo_of_a_model_that_is_no_recognizer(
    triton_repo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*triton_repo, str(tmp_path / "repo"), "--model"]
    assert main([*args, "dlib_shape_predictor_5"]) == 2
    assert capsys.readouterr().err == (
        "facestream: error: dlib_shape_predictor_5 is a landmark model, not a recognizer\n"
    )
    assert main([*args, "yunet_2026may"]) == 2
    assert capsys.readouterr().err == (
        "facestream: error: yunet_2026may is a detector, not a recognizer\n"
    )


def test_models_prepare_with_a_file_or_read_only_cache_is_one_line(
    yunet_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face_recognition_models (dlib's weights) is not installed")
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    common = ["--models-dir", str(yunet_path.parent), "--state-dir", str(tmp_path / "state")]
    assert main([*common, "--cache-dir", str(in_the_way), "models", "prepare"]) == 2
    assert capsys.readouterr().err == (
        f"facestream: error: cannot write the model cache {in_the_way / 'models'}: "
        "Not a directory\n"
    )
    if AS_ROOT:
        return
    read_only = tmp_path / "read-only"
    (read_only / "models").mkdir(parents=True)
    read_only.joinpath("models").chmod(0o500)
    assert main([*common, "--cache-dir", str(read_only), "models", "prepare"]) == 2
    assert capsys.readouterr().err == (
        f"facestream: error: cannot write the model cache {read_only / 'models'}: "
        "Permission denied\n"
    )


def test_a_damaged_conversion_is_listed_rebuilt_by_prepare_and_named_by_commands(
    yunet_path: Path, shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated converted recognizer was listed as verified, kept by `models
    prepare`, and met by `eval verify` as an ONNX parse error with no hint."""
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face_recognition_models (dlib's weights) is not installed")
    common = ["--models-dir", str(yunet_path.parent), "--cache-dir", str(tmp_path / "cache"),
              "--state-dir", str(tmp_path / "state")]
    converted = tmp_path / "cache" / "models" / MODELS["dlib_resnet_v1"].filename
    record = converted.with_name(converted.name + CHECKSUM_SUFFIX)

    def status() -> str:
        assert main(["models", "list", *common]) == 0
        rows = capsys.readouterr().out.splitlines()
        row = next(row for row in rows if row.startswith("dlib_resnet_v1 "))
        return row.rsplit("  ", 1)[1]  # the columns are two spaces apart

    assert main(["models", "prepare", *common]) == 0
    good = converted.read_bytes()
    assert status() == str(converted)
    for damage in (lambda: converted.write_bytes(good[: len(good) // 2]),
                   record.unlink):  # a conversion without its record, as before records
        damage()
        assert status() == f"DAMAGED {converted}"
        assert main(["models", "fetch", "dlib_resnet_v1", *common]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"dlib_resnet_v1: {converted} is damaged; `facestream models prepare` converts "
            "dlib_resnet_v1_dat again"
        )
        assert main(["eval", "verify", str(shared_dir / "people"), *common]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"facestream: error: {converted} ") and err.endswith(
            "; run `facestream models prepare` to convert it again\n"), err
        assert main(["models", "prepare", *common]) == 0
        assert converted.read_bytes() == good and status() == str(converted)


def test_a_video_that_cannot_be_opened_is_one_line_without_ffmpeg_s_own(
    env: dict[str, str], shared_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    cut = tmp_path / "cut.mp4"  # its index (the moov atom) is past the cut
    cut.write_bytes((shared_dir / "media/short_hamilton_clip.mp4").read_bytes()[:100_000])
    song = tmp_path / "song.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=2", str(song)],
                   check=True, timeout=60)
    expected = {
        f"rtsp://127.0.0.1:{port}/live": f"stream rtsp://127.0.0.1:{port}/live cannot be opened "
        "(no answer or no video stream)",
        str(cut): f"video file {cut} cannot be opened as a video",
        str(song): f"video file {song} cannot be opened as a video: it holds only audio",
    }
    for source, error in expected.items():
        result = facestream_run(env, "--models-dir", str(shared_dir / "models"), "run",
                                "--source", source, "--output", str(tmp_path / "out.mp4"))
        assert (result.returncode, result.stderr) == (2, f"facestream: error: {error}\n")


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_run_says_when_a_video_ends_before_its_header_does(
    env: dict[str, str], shared_dir: Path, tmp_path: Path, container: str
) -> None:
    # the clip's first frame is at 0.83 s: a WebM made from it says 10.0 s from 0, and
    # OpenCV counts 300 frames in it where there are 275 (a warning for a whole file)
    whole = tmp_path / f"whole.{container}"  # the index first, so that a cut copy opens
    coding = ["-c", "copy", "-movflags", "+faststart"] if container == "mp4" else ["-an"]
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i",
                    str(shared_dir / "media/short_hamilton_clip.mp4"), *coding, str(whole)],
                   check=True, timeout=120)
    cut = tmp_path / f"cut.{container}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for source, warned in ((whole, False), (cut, True)):
        result = facestream_run(env, "--models-dir", str(shared_dir / "models"), "run",
                                "--source", str(source), "--output", str(tmp_path / "out.mp4"))
        assert result.returncode == 0, result.stderr
        frames = int(result.stdout.split()[0])
        assert (frames == 275) != warned, result.stdout
        said = re.search(rf"video file {re.escape(str(source))} ended at ([\d.]+) s of the "
                         r"9\.2 s its header gives: the file may be cut short or damaged",
                         result.stderr)
        assert (said is not None) == warned, result.stderr
        if said:
            assert 3.0 < float(said[1]) < 6.0, said[0]


def test_run_reads_a_video_from_a_named_pipe(
    env: dict[str, str], shared_dir: Path, tmp_path: Path
) -> None:
    clip = shared_dir / "media/short_hamilton_clip.mp4"
    pipe = tmp_path / "camera.fifo"
    os.mkfifo(pipe)
    models = ("--models-dir", str(shared_dir / "models"))
    # another program's video, streamed into the pipe: read whole, once, to its end
    writer = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-i", str(clip), "-an",
                               "-c:v", "mpeg2video", "-q:v", "3", "-f", "mpegts", "-y", str(pipe)])
    result = facestream_run(env, *models, "run", "--source", str(pipe),
                            "--output", str(tmp_path / "out.mp4"))
    assert writer.wait(timeout=60) == 0
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("275 frames in "), result.stdout
    assert "cut short" not in result.stderr
    written = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 275
    written.release()
    # an MP4 cannot be read from a pipe (its index is read by seeking): the error says so
    writer = subprocess.Popen(["sh", "-c", f"cat '{clip}' > '{pipe}'"], stderr=subprocess.DEVNULL)
    result = facestream_run(env, *models, "run", "--source", str(pipe))
    writer.wait(timeout=60)
    assert result.returncode == 2
    assert result.stderr.endswith(
        "; through a named pipe, send a format that streams: MPEG-TS or Matroska, not MP4\n"
    ), result.stderr
    result = facestream_run(env, *models, "run", "--source", str(pipe), "--loop")
    assert (result.returncode, result.stderr) == (
        2, f"facestream: error: video file {pipe} is a named pipe: it cannot be played again\n")
    # with no program writing yet, it waits; Ctrl-C ends the wait
    waiting = subprocess.Popen([sys.executable, "-m", "facestream", *models, "run", "--source",
                                str(pipe)], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    assert waiting.poll() is None
    waiting.send_signal(signal.SIGINT)
    _, said = waiting.communicate(timeout=10)
    assert (waiting.returncode, said.splitlines()[-1]) == (130, "facestream: interrupted")
    # what is neither a file nor a pipe is named as such, not as missing
    result = facestream_run(env, *models, "run", "--source", "/dev/null")
    assert (result.returncode, result.stderr) == (
        2, "facestream: error: video file /dev/null is not a video file\n")
