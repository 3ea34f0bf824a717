"""Durations and sizes as a person writes them in the config, and the range of each duration key.

Pure: the loader (:mod:`aggregator.config.load`) uses these to validate, other commands to read
a duration given on the command line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# The seconds every duration key accepts, by key path ("[]" is any feed, "*" any topic). Bounded
# so that no date computed from a duration can overflow, and so that a typo such as "999d" is
# caught where it is written instead of silencing a feed for years.
DURATION_RANGES: dict[str, tuple[float, float]] = {
    "polling.interval": (10.0, 30 * DAY),
    "polling.first_poll_window": (0.0, 36525 * DAY),  # up to a century: the demo takes every item
    "polling.jitter": (0.0, DAY),
    "polling.cycle_timeout": (1.0, DAY),
    "polling.backoff_cap": (0.0, 30 * DAY),
    "fetch.timeout": (0.1, 10 * MINUTE),
    "fetch.deadline": (0.1, HOUR),
    "fetch.failing_after": (0.0, 365 * DAY),
    "fetch.parse_timeout": (1.0, HOUR),
    "slack.per_channel_interval": (0.0, HOUR),
    "stories.window": (0.0, 365 * DAY),
    "stories.reply_batch": (0.0, DAY),
    "feedback.window": (HOUR, 90 * DAY),
    "feedback.read_every": (MINUTE, DAY),
    "feeds[].interval": (10.0, 30 * DAY),
    "topics.*.digest_every": (MINUTE, 30 * DAY),
}
MAX_RETENTION_DAYS = 36525
MAX_CONCURRENCY = 1024  # fetch threads
MAX_PARSE_WORKERS = 256  # parser processes
MAX_REDIRECTS = 100
MAX_ATTEMPTS = 10_000


def parse_duration(value: object) -> float:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"24h"`` or ``"7d"``: finite, not negative."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 300, "5m" or "24h"')
    seconds: float | None = None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
            seconds = float(m.group(1)) * scale
    if seconds is None:
        raise ValueError(f'expected a duration such as 300, "5m" or "24h", got {value!r}')
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def duration_text(seconds: float) -> str:
    """A duration the way a person writes it in the config: ``"30d"``, ``"10m"``, ``"0.1s"``."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def duration_in(key: str) -> Callable[[object], float]:
    """A converter for the duration at ``key`` (a :data:`DURATION_RANGES` key)."""
    low, high = DURATION_RANGES[key]

    def convert(value: object) -> float:
        seconds = parse_duration(value)
        if seconds > high:
            raise ValueError(f'must be at most "{duration_text(high)}", got {value!r}')
        if seconds < low:
            raise ValueError(f'must be at least "{duration_text(low)}", got {value!r}')
        return seconds

    return convert


def parse_size(value: object) -> int:
    """Bytes from ``1048576`` or ``"10MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2) or "B"
            scale = {"B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20}
            scale |= {"GB": 10**9, "GiB": 2**30}
            return int(m.group(1)) * scale[unit]
    raise ValueError(f'expected a size such as 10485760 or "10MiB", got {value!r}')
