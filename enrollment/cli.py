"""``facestream enroll add | import | list | rename | remove | copy``.

Each verb that reads photos prints one line per file (or folder not read),
``accepted`` or ``rejected`` with the reason, as soon as it is known, then one line
for the files skipped as no image (README, notes.txt) and a summary (after Ctrl-C
too, of what was stored before it); it exits with status 1 when a
photo or folder was rejected for anything but being a duplicate of a stored sample
(so a second import of the same folder succeeds), or when a new person was left
without any photo and so not enrolled; 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import wcwidth

from enrollment.errors import EnrollmentError
from facecore.cli import Subparsers, add_command, path_argument
from facecore.config import Settings
from facecore.text import counted, listed

if TYPE_CHECKING:
    from enrollment.ingest import IngestResult
    from enrollment.store import EnrollmentStore
    from facecore.detector import Detector

__all__ = ["register"]

_HEADER = ("NAME", "SAMPLES", "UPDATED")

_REPORT_EPILOG = (
    "Prints accepted or rejected (with the reason) for every file. Exit status: 0, or 1 "
    "when a photo was rejected for anything but being a duplicate, or a new person was "
    "not enrolled because no photo was accepted."
)


def register(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    group = subparsers["enroll"]
    add = add_command(
        group,
        "add",
        parents=parents,
        handler=_add,
        help="enroll a person from photos (or add photos to them)",
        description="Enroll NAME from one or more photos, or add the photos to NAME if "
        "already enrolled (NAME may also be an enrolled person's id). Each photo must "
        "show one face, or one clearly larger than the others. Names may be in any "
        "script.",
        epilog=f"{_REPORT_EPILOG}\n\nexamples:\n"
        "  facestream enroll add 'Ada Lovelace' ada1.jpg ada2.png\n"
        "  facestream enroll add '李小龙' photos/bruce/*.jpg",
    )
    add.add_argument("name", metavar="NAME", help="the person's display name, or their id")
    add.add_argument("photos", nargs="+", type=path_argument, metavar="PHOTO", help="image files")
    folder = add_command(
        group,
        "import",
        parents=parents,
        handler=_import,
        help="enroll everyone in a folder of photos, one sub-folder per person",
        description="Enroll every person in DIR: one sub-folder per person, named with _ "
        "for a space (DIR/ada_lovelace/1.jpg enrolls 'Ada Lovelace'; a folder name in "
        "lower case is capitalised). People already enrolled get the new photos.",
        epilog=f"{_REPORT_EPILOG}\n\nexample:\n  facestream enroll import ../shared/people",
    )
    folder.add_argument(
        "folder", type=path_argument, metavar="DIR", help="folder of person folders"
    )
    listing = add_command(
        group,
        "list",
        parents=parents,
        handler=_list,
        help="list the enrolled people",
        description="List the enrolled people with their number of samples.",
        epilog="examples:\n  facestream enroll list\n  facestream enroll list --samples",
    )
    listing.add_argument(
        "--samples", action="store_true", help="also list each person's samples and quality"
    )
    rename = add_command(
        group,
        "rename",
        parents=parents,
        handler=_rename,
        help="change a person's display name",
        description="Give the person called OLD (or with the id OLD) the name NEW.",
        epilog="example:\n  facestream enroll rename 'Lin Manuel Miranda' 'Lin-Manuel Miranda'",
    )
    rename.add_argument("old", metavar="OLD", help="current name or id")
    rename.add_argument("new", metavar="NEW", help="new display name")
    remove = add_command(
        group,
        "remove",
        parents=parents,
        handler=_remove,
        help="erase a person and all their face data",
        description="Erase NAME: their samples (face crops), cached embeddings and entry. "
        "The next model the trainer publishes no longer knows them. Asks for "
        "confirmation unless --yes is given.",
        epilog="example:\n  facestream enroll remove 'Ada Lovelace' --yes",
    )
    remove.add_argument("name", metavar="NAME", help="name or id")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    copy = add_command(
        group,
        "copy",
        parents=parents,
        handler=_copy,
        help="copy everyone enrolled into another store (SQLite to PostgreSQL, say)",
        description="Copy every person and their samples from this installation's store "
        "into STORE: a postgresql:// URL (the store of several boxes) or the folder of a "
        "SQLite store. People already there get the samples they lack; running it again "
        "after an interruption finishes the copy. The source is left as it is.",
        epilog="example:\n  facestream enroll copy --to postgresql://facestream@db/facestream",
    )
    copy.add_argument("--to", required=True, dest="target", metavar="STORE",
                      help="postgresql://USER@HOST/DB (password in ~/.pgpass) or a folder")


def _add(settings: Settings, args: argparse.Namespace) -> int:
    from enrollment.errors import UnknownPersonError
    from enrollment.ingest import ingest_photo

    detector = _detector(settings)
    results: list[IngestResult] = []
    with _open_store(settings) as store:
        try:  # resolved like every other reference: an ambiguous one is refused here
            person, created = store.find_person(args.name), False
        except UnknownPersonError:
            person, created = store.get_or_add_person(args.name)
        try:
            with _reporting(results) as say:
                for photo in args.photos:
                    say(ingest_photo(store, detector, person.id, photo, "photo"))
        finally:  # interrupted too: no one is left enrolled without a sample
            person = store.get_person(person.id)
            if created and not person.sample_count:
                store.remove_person(person.id)
        if created and not person.sample_count:
            print(f"no photo was accepted: {person.name} was not enrolled")
            return 1  # even when every photo was a duplicate: nothing was done
        print(f"{person.name}: {counted(person.sample_count, 'sample')}")
    return _status(results)


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from enrollment.ingest import import_folder

    detector = _detector(settings)
    results: list[IngestResult] = []
    with _open_store(settings) as store:
        with _reporting(results, args.folder) as say:
            import_folder(store, detector, args.folder, progress=True, on_result=say)
        people = store.list_people()
        samples = counted(sum(p.sample_count for p in people), "sample")
        print(f"{counted(len(people), 'person')} enrolled, {samples}")
    return _status(results)


def _list(settings: Settings, args: argparse.Namespace) -> int:
    with _open_store(settings) as store:
        people = store.list_people()
        if not people:
            print("no one is enrolled yet (facestream enroll add NAME PHOTO...)")
            return 0
        rows = [(p.name, str(p.sample_count), p.updated) for p in people]
        widths = [max(_width(row[i]) for row in [_HEADER, *rows]) for i in range(3)]
        print(f"{_columns(_HEADER, widths)}  ID")
        for person, row in zip(people, rows, strict=True):
            print(f"{_columns(row, widths)}  {person.id}")
            for sample in store.samples(person.id) if args.samples else ():
                q = sample.quality
                print(
                    f"    {sample.id}  {sample.source:<6}  face {q.face_px:.0f} px  "
                    f"sharpness {q.sharpness:.0f}  frontal {q.frontalness:.2f}  "
                    f"score {q.score:.2f}  {sample.created}"
                )
        samples = counted(sum(p.sample_count for p in people), "sample")
        print(f"{counted(len(people), 'person')}, {samples} (store revision {store.revision()})")
    return 0


def _rename(settings: Settings, args: argparse.Namespace) -> int:
    with _open_store(settings) as store:
        person = store.find_person(args.old)
        renamed = store.rename_person(person.id, args.new)
    print(f"renamed {person.name!r} to {renamed.name!r}")
    return 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    with _open_store(settings) as store:
        person = store.find_person(args.name)
        if not args.yes:
            if not sys.stdin.isatty():
                raise EnrollmentError(
                    f"removing {person.name} erases their face data: add --yes to confirm"
                )
            samples = counted(person.sample_count, "sample")
            answer = input(f"Erase {person.name} and their {samples}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing removed")
                return 1
        store.remove_person(person.id)
    print(f"removed {person.name}: {counted(person.sample_count, 'sample')} erased")
    return 0


def _copy(settings: Settings, args: argparse.Namespace) -> int:
    from enrollment.copy import CopyReport, copy_store
    from enrollment.store import EnrollmentStore, store_location
    from facecore.config import redacted_url

    if not args.target.strip():  # Path("") is the current folder
        raise EnrollmentError("--to needs a store: a postgresql:// URL or a folder")
    own = store_location(settings)
    same = (args.target == own if isinstance(own, str)
            else "://" not in args.target and Path(args.target).resolve() == own.resolve())
    if same:
        raise EnrollmentError("the store to copy to is this installation's own store")

    def say(report: CopyReport) -> None:
        already = f" ({report.present} there already)" if report.present else ""
        print(f"{report.name}: {counted(report.copied, 'sample')} copied{already}", flush=True)

    with _open_store(settings) as source, EnrollmentStore(args.target) as target:
        reports = copy_store(source, target, say)
    samples = counted(sum(r.copied for r in reports), "sample")
    print(f"{counted(len(reports), 'person')}, {samples} copied to {redacted_url(args.target)}")
    return 0


def _open_store(settings: Settings) -> EnrollmentStore:
    from enrollment.store import EnrollmentStore

    return EnrollmentStore.from_settings(settings)


def _detector(settings: Settings) -> Detector:
    """YuNet with the detection settings; no minimum face size here, so that a small
    face is reported as too small rather than as no face."""
    from facecore.detector import Detector

    return Detector.from_settings(settings, min_face_px=0)


@contextmanager
def _reporting(
    results: list[IngestResult], folder: Path | None = None
) -> Iterator[Callable[[IngestResult], None]]:
    """A function that prints each result at once (above the progress bar, flushed
    for a pipe) and keeps it in ``results``; the files skipped as no image (named
    within ``folder``) and the summary follow, after Ctrl-C too: the lines stand for
    what was stored before it."""
    from tqdm import tqdm

    from enrollment.ingest import Outcome

    def say(result: IngestResult) -> None:
        results.append(result)
        if result.outcome == Outcome.NOT_AN_IMAGE:  # said once, at the end
            return
        verdict = "accepted" if result.accepted else "rejected"
        with tqdm.external_write_mode(file=sys.stdout):
            print(f"{verdict}  {_printable(result.path)}: {result.reason}", flush=True)

    try:
        yield say
    except KeyboardInterrupt:
        _say_skipped(results, folder)
        print(_summary(results, interrupted=True))
        raise
    _say_skipped(results, folder)
    print(_summary(results))


def _say_skipped(results: Sequence[IngestResult], folder: Path | None, shown: int = 5) -> None:
    from enrollment.ingest import Outcome

    paths = [Path(r.path) for r in results if r.outcome == Outcome.NOT_AN_IMAGE]
    if not paths:
        return
    names = [_printable(str(p.relative_to(folder) if folder else p)) for p in paths]
    what = "file that is not an image" if len(paths) == 1 else "files that are not images"
    print(f"skipped {len(paths)} {what}: {listed(names, shown)}")


def _summary(results: Sequence[IngestResult], *, interrupted: bool = False) -> str:
    from enrollment.ingest import FOLDER_OUTCOMES, Outcome

    accepted = sum(r.accepted for r in results)
    folders = sum(r.outcome in FOLDER_OUTCOMES for r in results)
    skipped = sum(r.outcome == Outcome.NOT_AN_IMAGE for r in results)
    files = counted(len(results) - folders - skipped, "file")
    summary = f"interrupted after {files}: {accepted} accepted" if interrupted else (
        f"{accepted} of {files} accepted"
    )
    return summary + (f", {counted(folders, 'folder')} not imported" if folders else "")


def _printable(path: str) -> str:
    """A file name as it is safe to print: characters a terminal would act on or not
    show (controls, bidi overrides, undecodable bytes) written as escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in path)


def _status(results: Sequence[IngestResult]) -> int:
    from enrollment.ingest import Outcome

    benign = {Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.NOT_AN_IMAGE}
    return 0 if all(r.outcome in benign for r in results) else 1


def _columns(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True))


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian letters and emoji take two, an
    emoji sequence joined by U+200D is one emoji, combining marks take none."""
    return wcwidth.width(text)
