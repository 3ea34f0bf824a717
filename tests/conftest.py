"""Lets any test file run alone, from any directory, with ``pytest`` or ``python -m pytest``.

The tests import their helpers from this package (``tests.feedserver``, ``tests.waiting``) and
the bench's corpus as ``bench.corpus``: both resolve from the repository root. Only
``python -m pytest`` run from that root put it on ``sys.path`` (as the current directory), so a
file run from elsewhere, or by the ``pytest`` script, failed to import them. pytest imports this
file before any test module under ``tests/``, whatever its import mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
