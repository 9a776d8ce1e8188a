"""Copying one enrollment store into another: a one-box SQLite store into the
PostgreSQL store of several boxes (``facestream enroll copy --to URL``), or back.

People are matched by name and samples by their content hash, so a copy that was
interrupted (a lost connection, ^C) is finished by running it again, and nothing is
copied twice. Each sample keeps its crop, landmarks, quality and source; it gets a
new id and the time of the copy. Cached embeddings are not copied: the trainer
embeds the copied samples again on its first run over the new store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from enrollment.errors import DuplicateSampleError, EnrollmentError
from enrollment.store import EnrollmentStore, Person

__all__ = ["CopyReport", "copy_store"]


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_store`` did for one person."""

    name: str
    copied: int  # samples written to the target
    present: int  # samples the target held already


def copy_store(
    source: EnrollmentStore,
    target: EnrollmentStore,
    reported: Callable[[CopyReport], None] = lambda report: None,
) -> list[CopyReport]:
    """Copy every person of ``source``, with their samples, into ``target``;
    ``reported`` hears of each person once they are done."""
    reports = []
    for person in source.list_people():
        report = _copy_person(source, target, person)
        reported(report)
        reports.append(report)
    return reports


def _copy_person(source: EnrollmentStore, target: EnrollmentStore, person: Person) -> CopyReport:
    copy, _ = target.get_or_add_person(person.name)
    copied = present = 0
    for sample in source.samples(person.id):
        try:
            target.add_sample(copy.id, source.load_crop(sample), sample.landmarks,
                              sample.quality, sample.source)
        except DuplicateSampleError as exc:
            if exc.person_name != copy.name:
                raise EnrollmentError(
                    f"sample {sample.id} of {person.name} is in {target.where} already, as "
                    f"a sample of {exc.person_name}: remove one of them and copy again"
                ) from exc
            present += 1
        else:
            copied += 1
    return CopyReport(person.name, copied, present)
