"""facecore's subcommands, and the protocol every package's ``cli.py`` follows.

The protocol
------------
`facestream/cli.py` imports ``<package>.cli`` for facecore, trainer, enrollment and
streamer (a package without one is skipped) and calls its::

    def register(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None

`subparsers` maps a command group to the argparse sub-action that holds its verbs, so
two packages can add verbs to one group::

    subparsers["facestream"]   facestream VERB          (serve, run, webcam, trainer)
    subparsers["config"]       facestream config VERB   (facecore: show)
    subparsers["models"]       facestream models VERB   (facecore: list, fetch, triton-repo;
                                                     trainer: prepare)
    subparsers["enroll"]       facestream enroll VERB   (enrollment)
    subparsers["eval"]         facestream eval VERB     (trainer: verify, calibrate)

Add a verb with `add_command` (it passes `parents`, which carry the global options
``--config --state-dir --cache-dir --models-dir --bundles-dir --log-level`` so they are
accepted after the verb too). The handler is called as
``handler(settings, args) -> exit status`` with the `Settings` loaded once by the
composition root.

An option that overrides a setting takes the setting's dotted key as its ``dest`` and
``default=None`` (``None`` = not given), e.g.
``parser.add_argument("--port", dest="server.port", default=None)``; the value is then
converted, range-checked and recorded with its origin like any other. Read settings from
`settings`, never from ``args``.

Keep module-level imports of a ``cli.py`` light (argparse, config, errors): heavy
modules (cv2, onnxruntime, torch, aiortc) are imported inside the handlers, so that
``facestream --help`` stays fast and works without the optional extras.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from facecore.config import Settings
from facecore.errors import ChecksumError, ModelError, ModelNotFoundError
from facecore.registry import (
    DETECTOR,
    MODELS,
    describe_kind,
    get_spec,
    model_cache_dir,
    model_path,
)

__all__ = [
    "Handler",
    "HelpFormatter",
    "Subparsers",
    "add_command",
    "int_at_least",
    "path_argument",
    "register",
]

Handler = Callable[[Settings, argparse.Namespace], int]
Subparsers = Mapping[str, "argparse._SubParsersAction[argparse.ArgumentParser]"]


class HelpFormatter(argparse.HelpFormatter):
    """Fills prose paragraphs to the terminal; keeps a paragraph with indented lines
    (an ``examples:`` block) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line[:1].isspace() for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)


def add_command(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    parents: Sequence[argparse.ArgumentParser],
    handler: Handler,
    help: str,
    description: str,
    epilog: str = "",
) -> argparse.ArgumentParser:
    """Add verb `name` to `group`, with the global options and `handler` attached."""
    parser = group.add_parser(
        name,
        allow_abbrev=False,  # as the top parser: an abbreviation can name another option
        parents=list(parents),
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def int_at_least(lo: int, name: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least `lo`, else a usage error that names
    the setting as the library does (``max_batch_size must be at least 1, got 0``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            bound = "must not be negative" if lo == 0 else f"must be at least {lo}"
            raise argparse.ArgumentTypeError(f"{name} {bound}, got {value}")
        return value

    return parse


def path_argument(text: str) -> Path:
    """An argparse ``type`` for a file or folder: an empty one is a usage error, as
    ``--state-dir ""`` is refused (``Path("")`` is the working directory, never what a
    script's unset variable meant)."""
    if not text:
        raise argparse.ArgumentTypeError("cannot be empty")
    return Path(text)


def register(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    add_command(
        subparsers["config"],
        "show",
        parents=parents,
        handler=_config_show,
        help="show every setting, its value and where it came from",
        description="Show every setting with its value and its origin: the default, the "
        "config file, an environment variable or the command line (highest wins).",
        epilog="examples:\n"
        "  facestream config show\n"
        "  FACESTREAM_SERVER_PORT=9443 facestream config show --config ~/facestream.toml",
    )
    add_command(
        subparsers["models"],
        "list",
        parents=parents,
        handler=_models_list,
        help="list the known models and whether each is on disk",
        description="List every model facestream knows, with its kind, licence and "
        "status: the verified file on disk, missing, with a wrong checksum, or damaged "
        "(a converted file that differs from its record). Nothing is downloaded.",
        epilog="example:\n  facestream models list --models-dir ~/models",
    )
    fetch = add_command(
        subparsers["models"],
        "fetch",
        parents=parents,
        handler=_models_fetch,
        help="download model files into the cache and verify them",
        description="Download model files (checked by sha256) into the model cache, "
        "CACHE_DIR/models. Without NAME, fetch what the current settings use: the "
        "detector and the recognizer (for a converted recognizer, its source weights; "
        "then run `facestream models prepare`). Without network, download the file by "
        "hand and put it in a folder given with --models-dir.",
        epilog="examples:\n"
        "  facestream models fetch\n"
        "  facestream models fetch yunet_2026may sface_2021dec\n"
        "  facestream models fetch --force yunet_2026may   # replace a damaged cached copy",
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help="model names (models list)")
    fetch.add_argument(
        "--force",
        action="store_true",
        help="download again over the cached copy (kept until the new one is verified)",
    )
    triton = add_command(
        subparsers["models"],
        "triton-repo",
        parents=parents,
        handler=_models_triton_repo,
        help="write a Triton Inference Server model repository for the recognizer",
        description="Write the recognition model into a Triton model repository, "
        "DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx, for recognition.backend = "
        "'triton'. The model takes uint8 chips (the preprocessing is in the graph), runs "
        "on Triton's onnxruntime backend and is batched by Triton's dynamic batcher; its "
        "input and output names and dims come from the ONNX file. Start Triton with "
        "--model-repository DIR; the streamer checks on its first request that the "
        "model is the bundle's backbone.",
        epilog="examples:\n"
        "  facestream models triton-repo /srv/triton/models\n"
        "  facestream models triton-repo /srv/triton/models --max-batch-size 128 "
        "--max-queue-delay-us 1000",
    )
    triton.add_argument("directory", type=path_argument, metavar="DIR", help="the model repository")
    triton.add_argument(
        "--model",
        metavar="NAME",
        help="the recognizer to write (default: the recognition.model setting)",
    )
    # the defaults live in facecore.triton_repo, which imports onnx: not at start-up
    triton.add_argument(
        "--max-batch-size",
        type=int_at_least(1, "max_batch_size"),
        metavar="N",
        help="the most faces Triton runs at once (default 64)",
    )
    triton.add_argument(
        "--max-queue-delay-us",
        type=int_at_least(0, "max_queue_delay_us"),
        metavar="US",
        help="how long Triton waits for more requests to batch, in microseconds (default 2000)",
    )


def _config_show(settings: Settings, args: argparse.Namespace) -> int:
    rows = [("KEY", "VALUE", "ORIGIN"), *settings.describe()]
    key_width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for key, value, origin in rows:
        print(f"{key:<{key_width}}  {value:<{value_width}}  {origin}")
    return 0


def _models_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = [("NAME", "KIND", "LICENCE", "STATUS")]
    for spec in MODELS.values():
        try:
            status = str(model_path(settings, spec.name, download=False))
        except ChecksumError as err:  # a converted file is checked against its own record
            status = f"{'DAMAGED' if spec.derived_from else 'WRONG CHECKSUM'} {err.path}"
        except ModelNotFoundError:
            status = "not prepared" if spec.derived_from else "missing"
        rows.append((spec.name, spec.kind, spec.licence, status))
    w0, w1, w2 = (max(len(row[i]) for row in rows) for i in range(3))
    for name, kind, licence, status in rows:
        print(f"{name:<{w0}}  {kind:<{w1}}  {licence:<{w2}}  {status}")
    return 0


def _models_triton_repo(settings: Settings, args: argparse.Namespace) -> int:
    from facecore.embedder import Preprocessing
    from facecore.triton_repo import write_triton_repo

    spec = get_spec(args.model or settings.recognition.model)
    if spec.kind != "recognizer":
        raise ModelError(f"{spec.name} is {describe_kind(spec)}, not a recognizer")
    preprocessing = Preprocessing.of_model(spec)
    given = {"max_batch_size": args.max_batch_size, "max_queue_delay_us": args.max_queue_delay_us}
    config = write_triton_repo(
        args.directory,
        model_path(settings, spec.name),
        name=spec.name,
        preprocessing=preprocessing,
        **{key: value for key, value in given.items() if value is not None},
    )
    print(
        f"{spec.name}: {args.directory / spec.name} ({config.input.name} "
        f"{list(config.input.dims)} -> {config.output.name} {list(config.output.dims)}, "
        f"batches of up to {config.max_batch_size})"
    )
    return 0


def _models_fetch(settings: Settings, args: argparse.Namespace) -> int:
    names = args.names or [DETECTOR, settings.recognition.model]
    specs = [get_spec(name) for name in names]
    for spec in specs:
        target = spec
        if spec.derived_from is not None:
            target = get_spec(spec.derived_from)
        print(f"{target.name}: {_fetch(settings, target.name, args.force)}")
        if target is not spec:
            print(f"{spec.name}: {_conversion_status(settings, spec.name)}")
    return 0


def _fetch(settings: Settings, name: str, force: bool) -> Path:
    """The verified file of model `name`; with `force` downloaded again over the cached
    copy, which stays as it was when the download fails."""
    try:
        return model_path(settings, name, force=force)
    except ModelNotFoundError as err:
        cached = model_cache_dir(settings) / get_spec(name).filename
        if not (force and cached.is_file()):
            raise
        failures = "; ".join(err.failures) or "no URL to download it from"
        raise ModelError(
            f"{name} could not be downloaded again ({failures}); {cached} is kept as it was"
        ) from err


def _conversion_status(settings: Settings, name: str) -> str:
    """What `facestream models prepare` has to do for the derived model `name`."""
    source = get_spec(name).derived_from
    try:
        model_path(settings, name, download=False)
    except ChecksumError as err:
        return f"{err.path} is damaged; `facestream models prepare` converts {source} again"
    except ModelNotFoundError:
        return f"not prepared; `facestream models prepare` converts it from {source}"
    return f"converted from {source} by `facestream models prepare`"
