"""The `facestream` command: parse, load the settings once, run one handler.

This module only composes: each package adds its own verbs through
``<package>.cli.register(subparsers, parents)`` (the protocol is described in
`facecore.cli`). A package whose ``cli`` module does not exist is left out; one that
exists but fails to import is a bug and raises.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import traceback
import types
import typing
from collections.abc import Sequence

from facecore.cli import HelpFormatter, Subparsers
from facecore.config import LogLevel, env_warnings, load_settings, setting_keys
from facecore.errors import FacestreamError

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

PACKAGES = ("facecore", "trainer", "enrollment", "streamer")

# (name, help, description) of the command groups that several packages may fill
GROUPS = (
    ("config", "inspect the settings", "Inspect facestream's settings."),
    (
        "models",
        "list, download and prepare model files",
        "List, download and prepare the model files facestream runs on. Files are "
        "checked against pinned sha256 sums; downloads go to CACHE_DIR/models.",
    ),
    ("enroll", "manage the people facestream recognises", "Add, list and remove people."),
    ("eval", "measure recognition accuracy", "Measure recognition accuracy on labelled data."),
)

DESCRIPTION = """\
Real-time face recognition for video streamed from phones over WebRTC.

Settings come from (highest first) the command line, FACESTREAM_* environment
variables, a TOML config file (--config or FACESTREAM_CONFIG) and the defaults;
`facestream config show` lists them with their origins."""

EPILOG = """\
examples:
  facestream models fetch                 download the detector and recogniser weights
  facestream config show                  show every setting and where it came from
  facestream --log-level debug COMMAND    show tracebacks and debug messages

`facestream COMMAND --help` explains each command."""

LOG_LEVELS: tuple[str, ...] = typing.get_args(LogLevel)


def _global_options() -> argparse.ArgumentParser:
    """Options accepted before and after any command.

    Their default is SUPPRESS so that an option given before the command is not reset
    by the command's parser; given in both places, the later one wins.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("global options")
    add = group.add_argument
    add("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file")
    add(
        "--state-dir",
        dest="state_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where people and trained models are kept (private)",
    )
    add(
        "--cache-dir",
        dest="cache_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where downloaded and converted model files are kept",
    )
    add(
        "--models-dir",
        dest="models_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="a folder of model files put there by hand (looked at before the cache)",
    )
    add(
        "--bundles-dir",
        dest="bundles_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where model bundles are published and followed (default: STATE_DIR/bundles; "
        "a shared folder for several boxes)",
    )
    add(
        "--database-url",
        dest="enrollment.database_url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the enrollment store on PostgreSQL (postgresql://USER@HOST/DB) instead of "
        "SQLite in STATE_DIR; keep its password out of the command line (~/.pgpass)",
    )
    add(
        "--log-level",
        dest="log_level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="debug shows tracebacks (default: info)",
    )
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("facestream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _cli_modules() -> list[types.ModuleType]:
    modules = []
    for package in PACKAGES:
        name = f"{package}.cli"
        if importlib.util.find_spec(name) is not None:
            modules.append(importlib.import_module(name))
    return modules


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every installed package's commands registered."""
    parents = (_global_options(),)
    # no abbreviations: `--model X` would silently be `--models-dir X`
    parser = argparse.ArgumentParser(
        prog="facestream",
        allow_abbrev=False,
        parents=parents,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"facestream {_version()}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    subparsers = {"facestream": top}
    for name, help_text, description in GROUPS:
        group = top.add_parser(
            name,
            allow_abbrev=False,
            parents=parents,
            help=help_text,
            description=description,
            epilog=f"`facestream {name} VERB --help` explains each verb.",
            formatter_class=HelpFormatter,
        )
        subparsers[name] = group.add_subparsers(
            dest=f"{name}_verb", metavar="VERB", title="verbs", required=True
        )
    frozen: Subparsers = types.MappingProxyType(subparsers)
    for module in _cli_modules():
        module.register(frozen, parents)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line: options whose dest is a settings key."""
    keys = {*setting_keys(), "config"}
    return {key: value for key, value in vars(args).items() if key in keys}


def _option_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """dest -> option string along the command that was run (``detection.size`` ->
    ``--detection-size``), so that an origin names the option the user typed."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:  # the verb's own options come after the parent's
                names.update(_option_names(chosen, args))
        elif action.option_strings:
            names.setdefault(action.dest, max(action.option_strings, key=len))
    return names


def _quiet_opencv(debug: bool) -> None:
    """OpenCV logs to stderr on its own; outside debug keep only its errors (its
    warnings, such as OpenCV 5's note on each YuNet instance, are noise to a user).
    FFmpeg's own lines ("[tcp @ 0x...] Connection refused", "moov atom not found")
    are silenced too: facestream says in one line what could not be opened."""
    import cv2

    logging_module = cv2.utils.logging
    level = logging_module.LOG_LEVEL_INFO if debug else logging_module.LOG_LEVEL_ERROR
    logging_module.setLogLevel(level)
    if not debug:  # read by OpenCV when it first opens a video with FFmpeg
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `facestream` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    debug = "debug" in (getattr(args, "log_level", None), os.environ.get("FACESTREAM_LOG_LEVEL"))
    try:
        settings = load_settings(_overrides(args), os.environ, _option_names(parser, args))
        debug = settings.log_level == "debug"
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        for warning in env_warnings(os.environ):
            log.warning("%s", warning)
        _quiet_opencv(debug)
        status: int = args.handler(settings, args)
        sys.stdout.flush()  # a reader that went away shows here, not at the exit
    except BrokenPipeError:
        # `facestream config show | head`: the reader has what it wanted; stop quietly
        # as cat does, and point stdout at /dev/null so the exit's flush cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer stopped so
    except FacestreamError as err:
        if debug:
            traceback.print_exc(file=sys.stderr)
        message = " ".join(str(err).splitlines())
        print(f"facestream: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return 130
    return status
