"""Process-wide memory settings.

glibc gives each thread that allocates its own malloc arena (up to eight per core), and an arena
keeps the memory freed in it. The fetch threads each allocate response bodies, so a 500-feed cycle
left about 10 MB more resident in arenas that sat idle until the next cycle (measured with
``bench/bench_cycle.py``). Two arenas keep that memory in use without making threads wait on one.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; call before starting threads. False where libc lacks mallopt
    (musl, macOS): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
