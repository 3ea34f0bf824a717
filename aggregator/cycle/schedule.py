"""When to fetch each feed next, and its state. Pure: ``now`` and the random source come in.

A feed is polled at its own interval. A publisher may slow us down (``Retry-After`` on 429/503,
``Cache-Control: max-age``), but only within bounds, so a hostile header cannot silence a feed for a
week. After consecutive errors the wait doubles up to ``backoff_cap`` and polling goes on: a feed is
never dropped silently; it is reported as ``failing`` instead. Only 410 Gone stops polling.

Jitter makes each next fetch *earlier* by up to ``jitter`` seconds: that spreads feeds that were
added together without ever pushing a feed past the cycle that should pick it up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from aggregator.models import FeedStatus

MAX_AGE_CEILING = 3600.0  # max-age may stretch the interval up to an hour, never more
RETRY_AFTER_CEILING = 24 * 3600.0  # a server may ask us to wait at most a day
FAILING_AFTER_ERRORS = 3  # consecutive errors before a feed is reported as failing
# No delay is longer than a year. The config refuses absurd durations; this bound makes sure one
# that got through anyway (a huge, infinite or NaN value) cannot overflow a datetime and fail the
# cycle of every other feed.
MAX_DELAY = 365 * 24 * 3600.0

ACTIVE = FeedStatus.ACTIVE
FAILING = FeedStatus.FAILING
GONE = FeedStatus.GONE


class RandomSource(Protocol):
    """What :mod:`random` offers: ``random.Random(seed)`` in tests, the module in production."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class FeedSchedule:
    """The schedule state to store after one fetch (and parse) of a feed."""

    status: FeedStatus  # active, failing or gone
    next_fetch_at: datetime | None  # None: never again (gone)
    consecutive_errors: int
    failing_since: datetime | None  # when the current run of errors began
    notify_ops: bool  # this outcome earns the one operations notice


def delay_for(
    interval: float,
    *,
    consecutive_errors: int = 0,
    retry_after: float | None = None,
    max_age: float | None = None,
    backoff_cap: float,
) -> float:
    """Seconds until the next fetch, before jitter."""
    delay = interval
    if max_age is not None and max_age > interval:
        delay = min(max_age, max(interval, MAX_AGE_CEILING))
    if consecutive_errors > 0:
        backoff = interval * 2.0 ** min(consecutive_errors, 32)
        delay = max(delay, min(backoff, max(backoff_cap, interval)))
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_CEILING))
    return delay


def next_fetch(
    now: datetime,
    interval: float,
    *,
    consecutive_errors: int = 0,
    retry_after: float | None = None,
    max_age: float | None = None,
    backoff_cap: float,
    jitter: float,
    rng: RandomSource,
) -> datetime:
    """The next fetch time: the delay, made earlier by a random part of ``jitter``.

    Jitter never makes us earlier than a server's ``Retry-After``, nor earlier than half the delay.
    """
    delay = delay_for(
        interval,
        consecutive_errors=consecutive_errors,
        retry_after=retry_after,
        max_age=max_age,
        backoff_cap=backoff_cap,
    )
    delay = _bounded(delay)
    spread = min(_bounded(jitter), delay / 2)
    early = rng.uniform(0.0, spread) if spread > 0 else 0.0
    seconds = delay - early
    if retry_after is not None and retry_after > 0:
        seconds = max(seconds, min(retry_after, RETRY_AFTER_CEILING))
    return now + timedelta(seconds=_bounded(seconds))


def _bounded(seconds: float) -> float:
    """``seconds`` within 0 and :data:`MAX_DELAY`; NaN counts as the longest wait."""
    if math.isnan(seconds):
        return MAX_DELAY
    return min(max(seconds, 0.0), MAX_DELAY)


def feed_status(
    now: datetime,
    *,
    consecutive_errors: int,
    failing_since: datetime | None,
    failing_after: float,
    gone: bool = False,
) -> FeedStatus:
    """``gone`` after a 410; ``failing`` after a few errors in a row or errors for too long."""
    if gone:
        return GONE
    if consecutive_errors >= FAILING_AFTER_ERRORS:
        return FAILING
    if (
        consecutive_errors > 0
        and failing_since is not None
        and (now - failing_since).total_seconds() >= failing_after
    ):
        return FAILING
    return ACTIVE


def ops_notice_due(
    now: datetime,
    *,
    status: FeedStatus,
    failing_since: datetime | None,
    failing_after: float,
    ops_notified_at: datetime | None,
) -> bool:
    """One notice per episode: a feed gone, or failing for longer than ``failing_after``."""
    if ops_notified_at is not None:
        return False
    if status == GONE:
        return True
    return (
        status == FAILING
        and failing_since is not None
        and (now - failing_since).total_seconds() >= failing_after
    )


def plan(
    now: datetime,
    *,
    interval: float,
    succeeded: bool,
    gone: bool = False,
    previous_errors: int = 0,
    failing_since: datetime | None = None,
    ops_notified_at: datetime | None = None,
    retry_after: float | None = None,
    max_age: float | None = None,
    backoff_cap: float,
    failing_after: float,
    jitter: float,
    rng: RandomSource,
) -> FeedSchedule:
    """The whole decision after one fetch: next time, error count, status and the ops notice.

    ``succeeded``: the feed answered with a feed (or a 304); a fetch or parse error is a failure.
    On success the caller also clears ``ops_notified_at``, so a later episode is reported again.
    """
    if gone:
        return FeedSchedule(
            status=GONE,
            next_fetch_at=None,
            consecutive_errors=previous_errors + 1,
            failing_since=failing_since or now,
            notify_ops=ops_notified_at is None,
        )
    errors = 0 if succeeded else previous_errors + 1
    since = None if succeeded else (failing_since or now)
    status = feed_status(
        now, consecutive_errors=errors, failing_since=since, failing_after=failing_after
    )
    when = next_fetch(
        now,
        interval,
        consecutive_errors=errors,
        retry_after=retry_after,
        max_age=max_age,
        backoff_cap=backoff_cap,
        jitter=jitter,
        rng=rng,
    )
    notify = ops_notice_due(
        now,
        status=status,
        failing_since=since,
        failing_after=failing_after,
        ops_notified_at=None if succeeded else ops_notified_at,
    )
    return FeedSchedule(
        status=status,
        next_fetch_at=when,
        consecutive_errors=errors,
        failing_since=since,
        notify_ops=notify,
    )
