"""People's display names: how they are cleaned, compared and read from folder names."""

from __future__ import annotations

import re
import unicodedata

from enrollment.errors import InvalidNameError

__all__ = [
    "ID_HEX_DIGITS",
    "MAX_NAME_LENGTH",
    "SCRIPT_JOINERS",
    "clean_name",
    "folder_person_name",
    "looks_like_id",
    "name_key",
]

MAX_NAME_LENGTH = 200
# A person's id is this many lower-case hexadecimal digits
# (``secrets.token_hex``, `enrollment.store`). Names of that shape are refused, so
# that a name never reads as another person's id where either is accepted.
ID_HEX_DIGITS = 16
_ID_SHAPE = re.compile(f"[0-9a-f]{{{ID_HEX_DIGITS}}}")
# Invisible format characters (Unicode category Cf: bidi controls such as U+202E, zero
# width spaces, U+FEFF, ...) let one name pass for another on the video and the admin
# page, so they are refused. Except the zero width (non-)joiner: Persian, Indic
# scripts and emoji sequences need them to spell a name.
SCRIPT_JOINERS = frozenset({"\u200c", "\u200d"})


def clean_name(name: str) -> str:
    """A display name as stored: Unicode NFC, runs of white space made one space,
    trimmed; any script. Raises InvalidNameError for an empty or over-long name, one
    with control characters or invisible format characters (bidi controls, zero
    width spaces; the zero width joiner and non-joiner are allowed), or one with the
    shape of a person id (`looks_like_id`)."""
    text = " ".join(unicodedata.normalize("NFC", name).split())
    if not text:
        raise InvalidNameError("a person's name cannot be empty")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        raise InvalidNameError(f"a person's name cannot hold control characters: {name!r}")
    hidden = {c for c in text if unicodedata.category(c) == "Cf" and c not in SCRIPT_JOINERS}
    if hidden:
        shown = ", ".join(
            f"U+{ord(c):04X} {unicodedata.name(c, 'format character')}" for c in sorted(hidden)
        )
        raise InvalidNameError(
            "a person's name cannot hold invisible or text-direction characters, which make "
            f"one name look like another: {name!r} holds {shown}"
        )
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"a person's name is at most {MAX_NAME_LENGTH} characters")
    if looks_like_id(text):
        raise InvalidNameError(
            f"a person's name cannot have the shape of a person id ({ID_HEX_DIGITS} "
            f"hexadecimal digits), which commands also accept: {name!r}"
        )
    return text


def looks_like_id(text: str) -> bool:
    """Whether ``text`` compares (as a name, without case) equal to some person id."""
    return _ID_SHAPE.fullmatch(name_key(text)) is not None


def name_key(name: str) -> str:
    """What two names must share to be the same name: ``"Ana  Lopez"`` and
    ``"ana lopez"`` are."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


def folder_person_name(folder_name: str) -> str:
    """The person an import sub-folder stands for: ``_`` is a space, and a name
    written all in lower case is capitalised word by word
    (``lin_manuel_miranda`` -> ``Lin Manuel Miranda``; ``George_W_Bush`` keeps its case)."""
    name = " ".join(folder_name.replace("_", " ").split())
    return name.title() if name == name.lower() else name
