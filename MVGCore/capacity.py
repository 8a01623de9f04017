"""How much memory and disk this machine has left, so that a job too big for it is refused at once.

A job sized past the machine (``prepare --size 100000``) otherwise runs for minutes and then
fails inside numpy or the OS with "can't allocate memory", naming neither the option that made it
big nor the size it needed. A command estimates what it will need, from headers and options only,
and :func:`check_room` compares that with what is free before the first large allocation. Only the
standard library is used (psutil is not a dependency); where a figure cannot be read it is not
checked, so an unknown platform never refuses a job that would fit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GB = 1e9


def available_memory() -> int | None:
    """Bytes a new allocation can still get: RAM the kernel can free plus free swap, or None.

    Linux's ``MemAvailable`` counts the page cache the kernel would drop, unlike free pages alone,
    so a machine that has read many files is not taken for a full one. Elsewhere the physical
    memory size (``os.sysconf``) is the bound: a job above it cannot fit whatever else runs.
    """
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                name, _, value = line.partition(":")
                fields[name] = int(value.split()[0]) * 1024  # reported in kB
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or the name is unknown
        return None


def free_disk(folder: str | Path) -> int | None:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent), or None."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_room(what: str, memory: int, disk: int, folder: str | Path, advice: str) -> None:
    """Raise ValueError (one line: ``what``, the estimate, what is free, ``advice``) when ``memory``
    bytes are more than :func:`available_memory` or ``disk`` bytes more than the free space of
    ``folder``'s disk."""
    have = available_memory()
    if have is not None and memory > have:
        raise ValueError(
            f"{what}: needs about {_gb(memory)} of memory, and {_gb(have)} is available; {advice}"
        )
    have = free_disk(folder)
    if have is not None and disk > have:
        raise ValueError(
            f"{what}: needs about {_gb(disk)} of disk in {folder}, and {_gb(have)} is free there; {advice}"
        )


def _gb(size: int) -> str:
    return f"{size / GB:.3g} GB"
