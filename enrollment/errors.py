"""Errors raised by the enrollment store.

    FacestreamError                 (facecore.errors)
    └── EnrollmentError             anything wrong with enrolled people or samples
        ├── UnknownPersonError      no person with that name or id
        ├── AmbiguousPersonError    a reference that is one person's id and another's name
        ├── UnknownSampleError      no sample with that id
        ├── DuplicatePersonError    another person already has that display name
        ├── DuplicateSampleError    a sample with the same content is already stored
        ├── InvalidNameError        a display name that is empty or has control characters
        └── StoreError              the store's database or files cannot be used (sqlite3,
            │                       psycopg and OSError are translated to it with ``raise
            │                       ... from``)
            └── StoreUnavailableError  the PostgreSQL server cannot be reached (for now:
                                    services retry, the next call reconnects)

A photo that is rejected (no face, too blurred...) is not an error: ingest returns an
``IngestResult`` saying why.
"""

from __future__ import annotations

from facecore.errors import FacestreamError

__all__ = [
    "AmbiguousPersonError",
    "DuplicatePersonError",
    "DuplicateSampleError",
    "EnrollmentError",
    "InvalidNameError",
    "StoreError",
    "StoreUnavailableError",
    "UnknownPersonError",
    "UnknownSampleError",
]


class EnrollmentError(FacestreamError):
    """Base of the enrollment store's errors."""


class UnknownPersonError(EnrollmentError):
    """No enrolled person has this name or id (``key``)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no enrolled person is named or has the id {key!r}")


class AmbiguousPersonError(EnrollmentError):
    """``key`` is the id of one person and the display name of another: acting on
    either could be acting on the wrong person, so neither is chosen."""

    def __init__(self, key: str, by_id: str, by_id_name: str, by_name_id: str) -> None:
        self.key = key
        self.by_id = by_id  # the person whose id is `key`
        self.by_name = by_name_id  # the person whose name is `key`
        super().__init__(
            f"{key!r} is ambiguous: it is the id of {by_id_name!r} and the name of the "
            f"person with the id {by_name_id}; refer to {by_id_name!r} by their name "
            f"and to the other by their id {by_name_id}"
        )


class UnknownSampleError(EnrollmentError):
    """No sample has this id."""

    def __init__(self, sample_id: str) -> None:
        self.sample_id = sample_id
        super().__init__(f"no enrollment sample has the id {sample_id!r}")


class DuplicatePersonError(EnrollmentError):
    """The display name ``name`` is taken by ``existing_name`` (names compare without
    regard to case: 'Straße' takes 'STRASSE')."""

    def __init__(self, name: str, existing_id: str, existing_name: str) -> None:
        self.name = name
        self.existing_id = existing_id
        self.existing_name = existing_name
        if name == existing_name:
            message = f"a person named {name!r} is already enrolled (id {existing_id})"
        else:  # say whom it matched: the user may not see why the two are one name
            message = (
                f"{name!r} is taken: {existing_name!r} is already enrolled (id "
                f"{existing_id}), and names match without regard to case"
            )
        super().__init__(message)


class DuplicateSampleError(EnrollmentError):
    """The same face crop (same content hash) is already stored."""

    def __init__(self, sha256: str, sample_id: str, person_name: str) -> None:
        self.sha256 = sha256
        self.sample_id = sample_id
        self.person_name = person_name
        super().__init__(f"duplicate of sample {sample_id} of {person_name}")


class InvalidNameError(EnrollmentError):
    """A display name that cannot be used."""


class StoreError(EnrollmentError):
    """The store's database or sample files cannot be read or written."""


class StoreUnavailableError(StoreError):
    """The store's PostgreSQL server cannot be reached or the connection was lost; the
    change in flight, if any, was not committed."""
