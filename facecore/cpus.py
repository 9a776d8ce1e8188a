"""How many CPUs this process may run on."""

from __future__ import annotations

import os

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """The CPUs in this process's affinity mask (``taskset``, systemd's
    ``CPUAffinity=``, a container's cpuset), at least 1. ``os.cpu_count()`` counts
    the whole machine, so a server confined to one core would size its pools for all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return os.cpu_count() or 1
