"""glibc malloc settings for a server that moves large messages through many threads.

Transfers allocate and free 1 MiB message buffers and 8 MiB parts in the event loop and in 16 storage
threads. With glibc's defaults each thread may get its own arena (up to 8 per core), and after the first
large buffers are freed the dynamic mmap threshold rises, so later ones come from those arenas and their
freed space stays in the process: the RSS of a 1 GiB upload grew by 74 to 117 MiB in bench/artifacts.py.
Two arenas and a fixed 256 KiB mmap threshold return large buffers to the system as soon as they are
freed. Variables the operator set (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_) win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024


def tune_malloc() -> bool:
    """Applies the settings above where glibc is the allocator; returns whether anything was set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    applied = False
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied |= bool(mallopt(_M_ARENA_MAX, ARENAS))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied |= bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return applied
