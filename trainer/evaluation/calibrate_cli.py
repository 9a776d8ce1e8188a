"""``facestream eval calibrate DIR...``: measure the recognizer's population calibration
(`facecore.calibration`) on labelled face sets and write it beside the model.

Every image goes through the product's own front end (`embed_largest_faces`: the face
YuNet finds, aligned as the recognizer wants); images where no face is found are left
out, since a stranger the detector never finds cannot be named wrongly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime

from facecore.cli import Subparsers, add_command, path_argument
from facecore.config import Settings
from facecore.errors import ConfigError, SourceError
from facecore.text import counted

__all__ = ["register_calibrate"]

GALLERY_SIZES = (1, 4, 10, 100, 1000)

DESCRIPTION = """\
Measure how the recognizer scores strangers on one or more labelled folders (one
sub-folder of images per person; the more people, the further down the false-accept
rate can be resolved), and write the result where the trainer finds it: beside the
model (cache_dir/models/<model>.calibration.json), or --output FILE. The trainer
derives every gallery's "unknown" threshold from it and trainer.target_far; a model
without one falls back to its gallery's own few scores and says so."""

EPILOG = """\
example (the figures shipped with facestream were made this way):
  facestream eval calibrate ../shared/datasets/lfw10 ../shared/datasets/orl"""


def register_calibrate(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``eval calibrate`` to the ``eval`` group."""
    parser = add_command(
        subparsers["eval"],
        "calibrate",
        parents=parents,
        handler=_calibrate,
        help="measure the recognizer's impostor scores on labelled sets (the trainer's prior)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "folders", metavar="DIR", type=path_argument, nargs="+", help="one sub-folder per person"
    )
    parser.add_argument(
        "--model",
        dest="recognition.model",
        metavar="NAME",
        default=None,
        help="recognizer from `facestream models list` (default: the recognition.model setting)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        type=path_argument,
        help="write here instead of beside the model",
    )


def _calibrate(settings: Settings, args: argparse.Namespace) -> int:
    from enrollment.files import write_private_file
    from facecore.calibration import (
        PopulationCalibration,
        calibration_path,
        front_end_id,
        per_row_far,
        weights_sha256,
    )
    from facecore.files import unwritable_reason
    from facecore.registry import ensure_model_cache, get_spec
    from trainer.evaluation.embedding import embed_largest_faces, labelled_images
    from trainer.evaluation.population import data_sha256, impostor_tail, source_commit

    spec = get_spec(settings.recognition.model)
    # asked before every image is embedded (long on a large set), not after
    output = args.output or calibration_path(settings, spec)
    if args.output is None:
        ensure_model_cache(output.parent)
    elif (reason := unwritable_reason(output)) is not None:
        raise ConfigError(f"cannot write --output {output}: {reason}")
    tails = []
    for folder in args.folders:
        if not folder.is_dir():
            raise SourceError(f"{folder} is not a folder")
        images, unreadable = labelled_images(folder)
        paths = [path for path, _ in images]
        embedded = embed_largest_faces(settings, paths)
        kept = embedded.found
        labels = [label for (_, label), found in zip(images, kept, strict=True) if found]
        try:
            tail = impostor_tail(
                folder.name, embedded.vectors[kept], labels, data_sha256(folder, paths)
            )
        except ValueError as err:
            raise SourceError(str(err)) from err
        print(
            f"{folder}: {counted(len(images), 'image')} of {counted(tail.people, 'person')}, "
            f"{len(images) - int(kept.sum())} without a face"
            f"{f' and {len(unreadable)} unreadable' if unreadable else ''} (left out); "
            f"{tail.impostor_count} impostor and {tail.genuine_count} genuine pairs, "
            f"genuine median {tail.genuine_median:.3f}"
        )
        tails.append(tail)
    calibration = PopulationCalibration(
        model=spec.name,
        model_sha256=weights_sha256(spec),
        front_end=front_end_id(spec),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=source_commit(),
        command="facestream eval calibrate " + " ".join(f.name for f in args.folders),
        datasets=tuple(tails),
    )
    write_private_file(output, calibration.to_json().encode())
    target = settings.trainer.target_far
    print(f"wrote {output}")
    print(f"thresholds at trainer.target_far = {target:g} (open set, per probe):")
    print("| people enrolled | per-row FAR | threshold |")
    print("| --- | --- | --- |")
    for people in GALLERY_SIZES:
        far = per_row_far(target, people)
        print(f"| {people} | {far:.2e} | {calibration.threshold(far):.4f} |")
    return 0
