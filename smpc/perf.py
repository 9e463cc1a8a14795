"""Process-level speed settings, applied only when a program asks (session layer helpers).

Every large torch tensor on CPU is a fresh ``mmap`` by default (glibc hands
blocks above a threshold back to the kernel when freed), so each new
multi-megabyte share is first touched page by page: on this project's 2-core
VM that page-faulting was about half the time of a 1M-element product. Keeping
freed memory in the heap removes it. This changes the allocator of the whole
process, so nothing here runs at import: benchmarks, the demos and the party
processes of :func:`smpc.run` call :func:`keep_freed_memory` explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(max_block_bytes: int = 1 << 31) -> bool:
    """Ask glibc to serve blocks up to ``max_block_bytes`` from the heap and keep freed memory.

    Returns:
        True if the setting was applied (glibc on Linux), False otherwise (no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    cap = min(max_block_bytes, (1 << 31) - 1)
    ok = mallopt(_M_MMAP_THRESHOLD, cap) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    ok &= mallopt(_M_TOP_PAD, 1 << 26) == 1
    return bool(ok)
