"""``facestream eval verify DIR``: face verification accuracy on a labelled folder.

It is how detectors, front ends and backbones are compared: every image is embedded
once (the face YuNet finds, cut into a chip by the recognizer's front end, or by each
``--front-end`` candidate: one column each), each pair is scored (cosine
similarity), and `trainer.evaluation.evaluate` runs the 10-fold protocol.
``--reference dlib`` scores the same pairs with dlib-bin's own pipeline
(`trainer.dlib.reference`) for comparison.

Heavy modules (cv2, onnxruntime, dlib) are imported inside the handler; see
facecore.cli for the protocol.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from facecore.cli import Subparsers, add_command, path_argument
from facecore.config import Settings
from facecore.errors import ConfigError, SourceError
from facecore.text import counted
from trainer.evaluation.embedding import (
    Candidate,
    Embedded,
    embed_dlib,
    embed_facestream,
    labelled_images,
)
from trainer.evaluation.evaluate import FAR, FOLDS, Pairs, Verification

__all__ = ["Column", "register_eval", "run_verify"]

MAX_GENUINE = 3000
OWN_COLUMN = "facestream"  # the report's one column when no --front-end is compared

DESCRIPTION = """\
Measure face verification on DIR, a folder with one sub-folder of images per person
(any format OpenCV reads, ORL's .pgm included). Pairs of images are formed
deterministically (every genuine pair up to --max-genuine, as many impostor pairs, at
least one per fold; --seed) or read from an LFW-format pairs file (--pairs). Each
image's largest face is detected with YuNet, cut into a chip by the recognizer's front
end (or each --front-end candidate) and embedded; a pair's score is the cosine
similarity of its two embeddings.

Reported: accuracy over 10 folds (mean ± standard deviation; each fold's threshold is
chosen on the other nine), the threshold chosen on all pairs, the true-accept rate at
a false-accept rate of 1e-3 with its threshold, and how many images had no face."""

EPILOG = """\
front ends (--front-end, any number of them; default: the model's own):
  yunet_template        YuNet's 5 landmarks fitted onto the model's template
  dlib_5                dlib's 5-point landmarks (numpy port) in a box derived from
                        YuNet's landmarks, then dlib's chip geometry
  dlib_5:yunet_box      the same, with YuNet's box given to the landmark model
  add +flip to any      average each face's embedding with its mirror image's

images without a detected face (--no-face):
  fallback  (default) the centred square of the image (side: its shorter side) is
            taken as the face: the recognizer's chip is cut from it, and dlib's
            5-point model is run on it as if it were a detection
  exclude   every pair with such an image is left out (counted in the output)

examples:
  facestream eval verify ../shared/people
  facestream eval verify ../shared/datasets/lfw10 --reference dlib
  facestream eval verify ../shared/datasets/orl --front-end yunet_template dlib_5+flip
  facestream eval verify ~/lfw --pairs ~/lfw/pairs.txt"""


def register_eval(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Add ``eval verify`` to the ``eval`` group."""
    parser = add_command(
        subparsers["eval"],
        "verify",
        parents=parents,
        handler=_verify,
        help="verification accuracy on a folder of people (10-fold, TAR at FAR=1e-3)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "folder", metavar="DIR", type=path_argument, help="one sub-folder per person"
    )
    parser.add_argument(
        "--pairs",
        metavar="FILE",
        type=path_argument,
        help="LFW-format pairs file: a line 'folds n', then per fold n lines 'Name i j' "
        "and n lines 'Name1 i Name2 j'; images are DIR/Name/Name_%%04d.jpg",
    )
    parser.add_argument(
        "--model",
        dest="recognition.model",
        metavar="NAME",
        default=None,
        help="recognizer from `facestream models list` (default: the recognition.model setting)",
    )
    parser.add_argument(
        "--reference",
        choices=("dlib",),
        help="also score the pairs with dlib-bin's own pipeline (HOG detector, 5-point "
        "landmarks, its chip and descriptor, Euclidean distance); needs dlib-bin",
    )
    parser.add_argument(
        "--front-end",
        dest="front_ends",
        nargs="+",
        metavar="NAME",
        type=_candidate,
        help="front ends to compare, one column each (default: the model's; see below)",
    )
    parser.add_argument(
        "--no-face",
        dest="no_face",
        choices=("fallback", "exclude"),
        default="fallback",
        help="what to do with images where no face is found (default: fallback; see below)",
    )
    parser.add_argument(
        "--max-genuine",
        dest="max_genuine",
        type=int,
        default=MAX_GENUINE,
        metavar="N",
        help=f"at most N genuine pairs when forming pairs (default {MAX_GENUINE})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for forming pairs and folds (default 0)"
    )


def _candidate(text: str) -> Candidate:
    """``--front-end``'s value: ``KIND[:yunet_box][+flip]``."""
    from facecore.frontend import FRONT_ENDS

    name, flip, rest = text.partition("+")
    kind, _, box = name.partition(":")
    if kind not in FRONT_ENDS or box not in ("", "yunet_box") or rest not in ("", "flip") or (
        box and kind != "dlib_5"
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {', '.join(FRONT_ENDS)}, dlib_5:yunet_box, "
            "each optionally followed by +flip"
        )
    return Candidate(kind, "yunet" if box else "landmarks", bool(flip))


@dataclass(frozen=True)
class Column:
    """One pipeline's results, ready to print."""

    def threshold(self, value: float) -> str:
        return f"{self.relation} {self.sign * value:.3f}"

    title: str
    pipeline: str
    score: str
    relation: str  # how a score is compared with the threshold, e.g. "similarity >="
    sign: float  # shown value = sign * internal score (dlib's distances are negated)
    no_face: int
    ms_per_face: float
    pairs: Pairs
    verification: Verification


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    run_verify(
        settings,
        args.folder,
        args.front_ends,
        reference=args.reference,
        pairs_file=args.pairs,
        no_face=args.no_face,
        max_genuine=args.max_genuine,
        seed=args.seed,
    )
    return 0


def run_verify(
    settings: Settings,
    folder: Path,
    candidates: Sequence[Candidate] | None,
    *,
    reference: str | None = None,
    pairs_file: Path | None = None,
    no_face: str = "fallback",
    max_genuine: int = MAX_GENUINE,
    seed: int = 0,
) -> list[Column]:
    """``eval verify``: print the report and return its columns (one per front-end
    candidate, default the model's own, then dlib-bin's with ``reference="dlib"``)."""
    from facecore.registry import DETECTOR, get_spec

    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    if max_genuine < 1:
        raise ConfigError("--max-genuine must be at least 1")
    spec = get_spec(settings.recognition.model)  # a recognizer: the settings checked it
    paths, pairs, origin = _load_pairs(folder, pairs_file, max_genuine, seed)
    print(f"{folder}: {counted(len(paths), 'image')}; {origin}")
    print(
        f"pairs: {int(pairs.same.sum())} genuine + {int((~pairs.same).sum())} impostor "
        f"in {pairs.folds} folds"
    )
    candidates = list(candidates or [Candidate(spec.landmarks)])
    columns = []
    for embedded, candidate in zip(
        embed_facestream(settings, paths, candidates), candidates, strict=True
    ):
        columns.append(
            _column(
                OWN_COLUMN if len(candidates) == 1 else candidate.name,
                f"{DETECTOR} + {candidate.name} + {spec.name}",
                ("cosine similarity", "similarity >=", 1.0),
                embedded,
                np.sum(embedded.vectors[pairs.first] * embedded.vectors[pairs.second], axis=1),
                pairs,
                no_face,
            )
        )
    if reference == "dlib":
        theirs = embed_dlib(settings, paths)
        difference = theirs.vectors[pairs.first] - theirs.vectors[pairs.second]
        distance = np.linalg.norm(difference, axis=1)
        columns.append(
            _column(
                "dlib-bin",
                "HOG + 5-point + dlib ResNet",
                ("Euclidean distance", "distance <=", -1.0),
                theirs,
                -distance,
                pairs,
                no_face,
            )
        )
    _print_report(columns, len(paths), no_face)
    return columns


def _load_pairs(
    folder: Path, pairs_file: Path | None, max_genuine: int, seed: int
) -> tuple[list[Path], Pairs, str]:
    """(images, pairs over them, where they came from) for DIR and --pairs."""
    from trainer.evaluation.evaluate import form_pairs, pairs_from_paths, parse_lfw_pairs

    if pairs_file is not None:
        try:
            # utf-8-sig: a file saved by Windows' Notepad starts with a byte-order mark
            rows = parse_lfw_pairs(pairs_file.read_text(encoding="utf-8-sig"))
        except OSError as err:
            raise SourceError(f"cannot read the pairs file {pairs_file}: {err.strerror}") from err
        except ValueError as err:
            raise SourceError(f"{pairs_file}: {err}") from err
        names, pairs = pairs_from_paths(rows)
        paths = [folder / name for name in names]
        missing = {str(p.relative_to(folder)) for p in paths if not p.is_file()}
        if missing:
            are = "is" if len(missing) == 1 else "are"
            first = next(r for r in rows if {r.first, r.second} & missing)
            name = first.first if first.first in missing else first.second
            raise SourceError(
                f"{counted(len(missing), 'image')} named in {pairs_file} {are} not in {folder}, "
                f"the first on line {first.line}: {folder / name}"
            )
        return paths, pairs, f"pairs from {pairs_file}"
    images, unreadable = labelled_images(folder)
    people = {label for _, label in images}
    try:
        pairs = form_pairs(
            [label for _, label in images], max_genuine=max_genuine, folds=FOLDS, seed=seed,
        )
    except ValueError as err:
        raise SourceError(f"{folder}: {err} (one sub-folder of images per person)") from err
    left_out = f"{counted(len(unreadable), 'unreadable file')} left out; " if unreadable else ""
    origin = f"{left_out}{len(people)} people; pairs formed with seed {seed}"
    return [image for image, _ in images], pairs, origin


def _column(
    title: str,
    pipeline: str,
    score: tuple[str, str, float],
    embedded: Embedded,
    scores: NDArray[np.floating],
    pairs: Pairs,
    no_face: str,
) -> Column:
    from trainer.evaluation.evaluate import verify

    keep = np.ones(len(pairs), bool)
    if no_face == "exclude":
        keep = embedded.found[pairs.first] & embedded.found[pairs.second]
    try:
        verification = verify(np.asarray(scores)[keep], pairs[keep], FAR)
    except ValueError as err:
        # the one column of a plain run is "facestream": the error line says that already
        where = "" if title == OWN_COLUMN else f"{title}: "
        raise SourceError(f"{where}too few pairs left to measure: {err}") from err
    return Column(
        title=title,
        pipeline=pipeline,
        score=score[0],
        relation=score[1],
        sign=score[2],
        no_face=int((~embedded.found).sum()),
        ms_per_face=embedded.ms_per_face,
        pairs=pairs[keep],
        verification=verification,
    )


def _print_report(columns: Sequence[Column], images: int, no_face: str) -> None:
    def row(label: str, cell: Callable[[Column], str]) -> list[str]:
        return [label, *(cell(c) for c in columns)]

    def tar(c: Column) -> str:
        t = c.verification.tar
        return f"{100 * t.tar:.2f}% (measured FAR {t.achieved_far:.1e})"

    def folds(c: Column) -> str:
        low, high = np.sort(c.sign * c.verification.fold_threshold)[[0, -1]]
        return f"{low:.3f} .. {high:.3f}"

    def accuracy(c: Column) -> str:
        v = c.verification
        return f"{100 * v.accuracy:.2f}% ± {100 * v.accuracy_std:.2f}% ({c.pairs.folds} folds)"

    rows = [
        ["", *(c.title for c in columns)],
        row("pipeline", lambda c: c.pipeline),
        row("score", lambda c: c.score),
        row("no face detected", lambda c: f"{c.no_face} of {counted(images, 'image')}"),
        row("landmarks + chip", lambda c: f"{c.ms_per_face:.1f} ms per face"),
        row("pairs scored", lambda c: f"{len(c.pairs)} ({c.verification.genuine} genuine)"),
        row("accuracy", accuracy),
        row("threshold (all pairs)", lambda c: c.threshold(c.verification.threshold)),
        row("fold thresholds", folds),
        row(f"TAR at FAR={FAR:g}", tar),
        row("threshold for that FAR", lambda c: c.threshold(c.verification.tar.threshold)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())
    print()
    if any(c.no_face for c in columns):
        if no_face == "exclude":
            print("no face: pairs with an image where no face was found were left out.")
        else:
            print(
                "no face: fallback, the centred square of each such image (side: its shorter "
                "side) was taken as the face."
            )
    print(
        "accuracy: mean ± standard deviation over the folds; each fold's threshold was chosen "
        "on the other folds."
    )
    for c in columns:
        t = c.verification.tar
        if not t.precise:
            print(
                f"TAR at FAR={t.far:g} ({c.title}) is imprecise: with {t.impostors} impostor "
                f"pairs the FAR moves in steps of {1 / t.impostors:.1e}; {round(10 / t.far)} or "
                "more are needed for a stable figure."
            )
