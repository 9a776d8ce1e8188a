"""Wording shared by the commands' output."""

from __future__ import annotations

__all__ = ["counted", "listed"]

_IRREGULAR = {"person": "people"}


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 frame", "2 frames",
    "3 people"."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {_IRREGULAR.get(noun, noun + 's')}"


def listed(items: list[str], shown: int = 5) -> str:
    """The first ``shown`` of ``items``, comma-separated, then "and N more"."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
