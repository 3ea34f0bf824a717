"""The malloc arena cap, in a real child process (it changes process-wide state)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)
def test_the_arena_cap_applies_and_threads_still_allocate() -> None:
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from aggregator.service.memory import limit_malloc_arenas\n"
        "assert limit_malloc_arenas(2) is True\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    sizes = list(pool.map(lambda n: len(bytes(n * 100_000)), range(1, 33)))\n"
        "print(sum(sizes))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sum(n * 100_000 for n in range(1, 33)))
