"""ParsePool.parse_stream: what the cycle uses to store one feed while the next ones parse."""

from __future__ import annotations

import os
from collections.abc import Iterator

from aggregator.ingest.workers import ParseJob, ParsePool, run_job
from aggregator.models import ParsedFeed, ParseError, ParseOutcome

URL = "https://example.org/feed.xml"
RSS = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
    b"<item><guid>g1</guid><title>One</title><link>https://example.org/1</link></item>"
    b"</channel></rss>"
)


def _die_on_request(job: ParseJob) -> ParseOutcome:
    """A worker that dies on one body, as a crash in a C parser or the OOM killer would."""
    if job.body == b"die":
        os._exit(3)
    return run_job(job)


def _items(count: int, die_at: int = -1) -> list[tuple[int, ParseJob | None]]:
    items: list[tuple[int, ParseJob | None]] = []
    for i in range(count):
        job = None if i % 4 == 3 else ParseJob(f"{URL}/{i}", b"die" if i == die_at else RSS)
        items.append((i, job))
    return items


def test_outcomes_come_back_in_order_and_none_passes_through() -> None:
    items = _items(14)
    with ParsePool(workers=2) as pool:
        streamed = list(pool.parse_stream(items))
    assert [key for key, _ in streamed] == list(range(14))
    for (_, job), (_, outcome) in zip(items, streamed, strict=True):
        assert outcome == (None if job is None else run_job(job))


def test_inline_pool_streams_too() -> None:
    items = _items(5)
    streamed = list(ParsePool(workers=1).parse_stream(items))
    assert [outcome is None for _, outcome in streamed] == [job is None for _, job in items]


def test_items_are_read_a_bounded_distance_ahead() -> None:
    pulled: list[int] = []

    def lazily() -> Iterator[tuple[int, ParseJob | None]]:
        for key, job in _items(40):
            pulled.append(key)
            yield key, job

    with ParsePool(workers=2) as pool:
        stream = pool.parse_stream(lazily(), ahead=3)
        first = next(stream)
        assert first[0] == 0
        assert len(pulled) <= 4  # the one handed out and at most three in flight
        assert [key for key, _ in stream] == list(range(1, 40))


def test_a_dying_worker_costs_only_its_own_feed() -> None:
    items = _items(12, die_at=5)
    with ParsePool(workers=2, runner=_die_on_request) as pool:
        streamed = dict(pool.parse_stream(items))
        after = dict(pool.parse_stream(_items(6)))  # the rebuilt pool keeps working
    crashed = streamed[5]
    assert isinstance(crashed, ParseError)
    assert "the parser process died" in crashed.reason
    for key, job in items:
        if key != 5:
            assert isinstance(streamed[key], ParsedFeed) if job else streamed[key] is None
    assert all(isinstance(r, ParsedFeed) or r is None for r in after.values())
