"""Wording shared by the commands' output."""

from __future__ import annotations

__all__ = ["counted"]

_IRREGULAR = {"person": "people"}


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 frame", "2 frames",
    "3 people"."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {_IRREGULAR.get(noun, noun + 's')}"
