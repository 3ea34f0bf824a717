"""Digest times, review times and quiet hours per topic. Pure: ``now`` is passed in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from aggregator.config.model import REVIEW_AT, TopicConfig
from aggregator.models import HoldMode, TopicMatch


@dataclass(frozen=True, slots=True)
class Hold:
    """Why and until when an alert waits: ``digest`` (with its label) or ``quiet``."""

    until: datetime
    mode: HoldMode
    label: str = ""


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def next_at(times: Sequence[str], timezone: str, now: datetime) -> datetime | None:
    """The first of these times of day (in ``timezone``) strictly after ``now`` (UTC)."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    candidates = []
    for day in range(3):
        date = (local + timedelta(days=day)).date()
        for text in times:
            moment = datetime.combine(date, _clock(text), tzinfo=zone).astimezone(UTC)
            if moment > now:
                candidates.append(moment)
    return min(candidates) if candidates else None


def next_digest(topic: TopicConfig, now: datetime) -> datetime:
    """The first digest time of ``topic`` strictly after ``now`` (UTC)."""
    if topic.digest_at:
        found = next_at(topic.digest_at, topic.timezone, now)
        if found is not None:
            return found
    every = topic.digest_every or 3600.0
    stamp = now.timestamp()
    return datetime.fromtimestamp((math.floor(stamp / every) + 1) * every, UTC)


def quiet_until(topic: TopicConfig, now: datetime) -> datetime | None:
    """The end of the quiet window ``now`` falls in, or None outside it (or without one)."""
    if not topic.quiet_hours:
        return None
    zone = ZoneInfo(topic.timezone)
    local = now.astimezone(zone)
    start, end = (_clock(t) for t in topic.quiet_hours)
    if start == end:
        return None
    today = local.date()
    for day_offset in (-1, 0):
        day = today + timedelta(days=day_offset)
        begins = datetime.combine(day, start, tzinfo=zone)
        ends_day = day if end > start else day + timedelta(days=1)
        ends = datetime.combine(ends_day, end, tzinfo=zone)
        if begins <= local < ends:
            return ends.astimezone(UTC)
    return None


def hold_for(
    matches: Sequence[TopicMatch], topics: Sequence[TopicConfig], now: datetime
) -> Hold | None:
    """Whether a fresh alert for these topics waits, and until when.

    A real-time topic wins over a digest one, and an urgent topic ignores quiet hours: the alert
    waits only when every topic it carries asks it to.
    """
    by_name = {t.name: t for t in topics}
    configs = [by_name[m.topic] for m in matches if m.topic in by_name]
    if not configs or len(configs) < len(matches):
        return None  # a topic no longer configured: deliver as real-time
    if all(t.delivery == "digest" for t in configs):
        until = min(next_digest(t, now) for t in configs)
        label = ", ".join(sorted({t.name for t in configs}))
        return Hold(until, HoldMode.DIGEST, label)
    if any(t.urgent or not t.quiet_hours for t in configs):
        return None
    ends = [quiet_until(t, now) for t in configs]
    if all(e is not None for e in ends):
        return Hold(min(e for e in ends if e is not None), HoldMode.QUIET)
    return None


def review_hold(
    matches: Sequence[TopicMatch], topics: Sequence[TopicConfig], now: datetime
) -> Hold:
    """Until when a "possibly relevant" item waits: the next review time of its topics (the
    topic's own digest, for a digest topic)."""
    by_name = {t.name: t for t in topics}
    times: list[datetime] = []
    for m in matches:
        topic = by_name.get(m.topic)
        if topic is None:  # a topic no longer configured: the default review times, in UTC
            times.append(next_at(REVIEW_AT, "UTC", now) or now)
        elif topic.delivery == "digest":
            times.append(next_digest(topic, now))
        else:
            times.append(next_at(topic.review_at, topic.timezone, now) or now)
    names = ", ".join(sorted({m.topic for m in matches}))
    return Hold(min(times, default=now), HoldMode.DIGEST, f"possibly relevant: {names}")
