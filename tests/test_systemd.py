"""The systemd units and their example configuration, checked by systemd itself.

`systemd-analyze verify` loads each unit as systemd would; it needs the ExecStart
programs to exist, so the units are checked from a temporary copy whose
``/opt/facestream/venv/bin/facestream`` points at a stand-in script. It only warns
(exit status 0) about unknown keys and bad values, so every line it prints about
our files counts as a failure too; the broken-unit cases show that this catches them.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from facecore.config import env_name, load_settings, setting_keys

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = REPO_ROOT / "systemd"
README = REPO_ROOT / "README.md"
UNITS = ("facestream-streamer.service", "facestream-trainer.service")
INSTALLED = "/opt/facestream/venv/bin/facestream"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package: systemd)",
)


def _staged(directory: Path, edit: Callable[[str], str] = lambda text: text) -> list[Path]:
    """Copies of the units in ``directory``, run through ``edit``, with a stand-in
    executable in place of the installed `facestream`."""
    program = directory / "bin" / "facestream"
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    copies = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert INSTALLED in text
        copy = directory / name
        copy.write_text(edit(text).replace(INSTALLED, str(program)))
        copies.append(copy)
    return copies


def _verify(units: list[Path]) -> tuple[int, list[str]]:
    """systemd-analyze verify's exit status and the lines it printed about ``units``."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=60,
    )
    names = [u.name for u in units]
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if any(n in line for n in names)]


def _unit(name: str) -> dict[str, list[str]]:
    """``key -> values`` of a unit file (keys may repeat)."""
    return _settings((SYSTEMD / name).read_text())


def _settings(text: str) -> dict[str, list[str]]:
    """``key -> values`` of a unit file's text."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    status, complaints = _verify(_staged(tmp_path))
    assert status == 0 and complaints == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),
        (lambda t: t.replace("Restart=on-failure", "Restart=sometimes"), "restart specifier"),
        (lambda t: t.replace(INSTALLED, "/nonexistent/facestream"), "not executable"),
        (lambda t: t.replace("[Service]", "[Servize]"), "Unknown section"),
    ],
    ids=["misspelt key", "bad value", "missing program", "misspelt section"],
)
def test_verify_catches_broken_units(
    tmp_path: Path, edit: Callable[[str], str], expected: str
) -> None:
    status, complaints = _verify(_staged(tmp_path, edit))
    assert status != 0 or complaints
    assert any(expected in line for line in complaints), complaints


@pytest.mark.parametrize(("name", "limit"), [(UNITS[0], 2.0), (UNITS[1], 1.3)])
def test_units_are_hardened(tmp_path: Path, name: str, limit: float) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unprotected): the streamer
    needs the network and webcams; the trainer no devices, but IP sockets on the host's
    network (PostgreSQL, its metrics port), which systemd counts as 1.0 of its 1.2."""
    unit = next(u for u in _staged(tmp_path) if u.name == name)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= limit


def test_units_run_as_the_issue_asks() -> None:
    for name in UNITS:
        unit = _unit(name)
        for key, value in {
            "Type": "notify",
            "User": "facestream",
            "EnvironmentFile": "-/etc/facestream/facestream.env",
            "StateDirectory": "facestream",
            "StateDirectoryMode": "0700",
            "CacheDirectory": "facestream",
            "Restart": "on-failure",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
        }.items():
            assert unit.get(key) == [value], f"{name}: {key}"
        assert "FACESTREAM_CONFIG=/etc/facestream/config.toml" in unit["Environment"]
        assert unit["ExecStart"][0].startswith(INSTALLED + " ")
        # each prepares the model files it loads: a trainer may have a box of its own
        assert unit["ExecStartPre"] == [f"{INSTALLED} models prepare"], name
    streamer, trainer = _unit(UNITS[0]), _unit(UNITS[1])
    assert streamer["ExecStart"] == [f"{INSTALLED} serve"]
    assert trainer["ExecStart"] == [f"{INSTALLED} trainer"]
    assert trainer["PrivateDevices"] == ["yes"] and trainer["PrivateUsers"] == ["yes"]
    assert streamer["PrivateDevices"] == ["no"] and streamer["DevicePolicy"] == ["closed"]
    assert streamer["DeviceAllow"] == ["char-video4linux rw"]
    assert streamer["SupplementaryGroups"] == ["video"]


def test_example_config_and_environment_file_are_valid_settings() -> None:
    known = {env_name(key) for key in setting_keys()} | {"FACESTREAM_TOKEN"}
    environment = {}
    for line in (SYSTEMD / "facestream.env").read_text().splitlines():
        line = line.removeprefix("#")  # the commented-out examples must be right too
        if re.fullmatch(r"FACESTREAM_[A-Z_]+=\S*", line):
            key, _, value = line.partition("=")
            assert key in known, f"facestream.env: {key} is no facestream setting"
            environment[key] = value
    assert "FACESTREAM_TOKEN" in environment
    for name in UNITS:
        for assignment in _unit(name)["Environment"]:
            key = assignment.partition("=")[0]
            assert key in known | {"FACESTREAM_CONFIG"} or not key.startswith("FACESTREAM_")
    settings = load_settings({"config": str(SYSTEMD / "config.toml")}, environment)
    assert settings.origins["trainer.target_far"].startswith("environment")
    assert settings.origins["server.max_sessions"].startswith("config file")
    assert settings.server.token == environment["FACESTREAM_TOKEN"]


def _families(unit: dict[str, list[str]]) -> set[str]:
    return {family for line in unit.get("RestrictAddressFamilies", []) for family in line.split()}


def _env_examples() -> dict[str, str]:
    """The FACESTREAM_ settings of facestream.env, commented-out examples included."""
    found = re.findall(r"^#?(FACESTREAM_[A-Z_]+)=(\S*)$",
                       (SYSTEMD / "facestream.env").read_text(), re.MULTILINE)
    return dict(found)


def test_trainer_reaches_postgresql_and_serves_metrics() -> None:
    """README "Several boxes" puts the store on PostgreSQL over TCP, and README "Metrics"
    has the trainer listen on trainer.metrics_port: neither works without IP sockets
    on the host's network (a private network namespace has only its own loopback)."""
    url = _env_examples()["FACESTREAM_ENROLLMENT_DATABASE_URL"]
    assert url in README.read_text()
    assert re.match(r"postgresql://[^/@]+@[a-z0-9.-]+/", url), url  # a host: TCP
    assert re.search(r"^\[trainer\](?:\n(?!\[).*)*\nmetrics_port = 0",
                     (SYSTEMD / "config.toml").read_text(), re.MULTILINE)
    trainer = _unit(UNITS[1])
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= _families(trainer)
    assert trainer.get("PrivateNetwork", ["no"]) == ["no"]
    assert "IPAddressDeny" not in trainer
    # It waits for a PostgreSQL that is down, or for a standby's lock, before READY=1.
    assert trainer["TimeoutStartSec"] == ["infinity"]


def test_trainer_may_write_the_shared_bundles_folder() -> None:
    """ProtectSystem=strict makes /srv read-only: the bundles folder of README "Several
    boxes" must be writable for the trainer (optional, "-"), while the streamer, which
    only reads bundles, gets no writable path beyond its own folders."""
    folder = _env_examples()["FACESTREAM_BUNDLES_DIR"]
    assert f"FACESTREAM_BUNDLES_DIR={folder}" in README.read_text()
    streamer, trainer = _unit(UNITS[0]), _unit(UNITS[1])
    assert trainer["ReadWritePaths"] == [f"-{folder}"]
    assert "ReadWritePaths" not in streamer
    for unit in (streamer, trainer):
        assert "remote-fs.target" in " ".join(unit["After"]).split()  # an NFS mount


def test_documentation_is_installed() -> None:
    """Every unit's Documentation= file is put there by the README's install steps."""
    readme = README.read_text()
    for name in UNITS:
        for link in _unit(name)["Documentation"]:
            assert link.startswith("file://"), link
            path = link.removeprefix("file://")
            assert re.search(rf"^sudo install .* {re.escape(path)}\b", readme, re.MULTILINE), path


def test_readme_runs_facestream_as_the_units_do(tmp_path: Path) -> None:
    """The README's `fsrun` (systemd-run) gives `facestream` the units' user, folders
    and environment file, so an enrollment made with it lands in the services' store
    (the PostgreSQL URL of facestream.env included). Checked: the shell parses it,
    systemd-run knows its options, and its properties make a unit that systemd
    accepts."""
    readme = README.read_text()
    found = re.search(r"^fsrun\(\) \{\n(.*?)^\}$", readme, re.MULTILINE | re.DOTALL)
    assert found, "README: no fsrun() function"
    subprocess.run(["bash", "-n"], input=found.group(0), text=True, check=True, timeout=30)
    words = shlex.split(found.group(1).replace("\\\n", " "))
    assert words[:2] == ["sudo", "systemd-run"] and words[-2:] == [INSTALLED, "$@"]
    options = words[2:-2]
    known = subprocess.run(["systemd-run", "--help"], capture_output=True, text=True,
                           timeout=30).stdout
    service = [f"ExecStart={INSTALLED} enroll list"]
    while options:
        option = options.pop(0)
        assert re.search(rf"(?:^|\s){re.escape(option.partition('=')[0])}[\s=]", known), option
        if option == "-p":
            service.append(options.pop(0))
        elif option == "-E":
            service.append(f"Environment={options.pop(0)}")
        elif option.startswith("--uid="):
            service.append(f"User={option.partition('=')[2]}")
        else:
            assert option in {"--quiet", "--wait", "--pipe", "--collect", "--same-dir"}, option
    text = "[Service]\n" + "\n".join(service) + "\n"
    _staged(tmp_path)  # the stand-in program
    fsrun = tmp_path / "fsrun.service"
    fsrun.write_text(text.replace(INSTALLED, str(tmp_path / "bin" / "facestream")))
    status, complaints = _verify([fsrun])
    assert status == 0 and complaints == []
    ran = _settings(text)
    folders = {"%S": "/var/lib", "%C": "/var/cache"}
    for unit in map(_unit, UNITS):
        assert ran["User"] == unit["User"]
        assert ran["EnvironmentFile"] == unit["EnvironmentFile"]
        wanted = {e for e in unit["Environment"] if e.startswith("FACESTREAM_")}
        for short, long in folders.items():
            wanted = {e.replace(short, long) for e in wanted}
        assert set(ran["Environment"]) == wanted
