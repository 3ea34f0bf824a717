"""Importing a library without the optional extras it pulls in on its own.

Some libraries import whatever optional package is installed, for features we never use:
sqlite-utils imports numpy and pandas (numpy is installed for ``aggregator train``), httpx its
command-line tool with pygments and rich (pytest brings pygments). Each costs megabytes in every
process of a service whose whole budget is 150 MB.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without(*names: str) -> Iterator[None]:
    """Inside, importing one of ``names`` fails as if it were not installed, unless it is
    already imported; afterwards it can be imported again."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # None: "import fails"
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
