"""Waiting in tests for what other threads and processes do, without sleeping.

Every stand-in (the feed server, the Slack server, the notify socket, a service's output) calls
:func:`changed` when something arrives, and :func:`wait_until` checks its condition again only
then. A stand-in must call :func:`changed` with none of its own locks held: a condition may take
them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_CHANGED = threading.Condition()


def changed() -> None:
    """Something a test may be waiting for has happened."""
    with _CHANGED:
        _CHANGED.notify_all()


def wait_for(condition: Callable[[], object], timeout: float) -> bool:
    """True as soon as ``condition()`` holds; False if it still does not after ``timeout``."""
    with _CHANGED:
        return bool(_CHANGED.wait_for(condition, timeout))


def wait_until(condition: Callable[[], object], what: str, timeout: float) -> None:
    if not wait_for(condition, timeout):
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
