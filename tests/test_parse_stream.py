"""ParsePool.parse_stream, the one way the cycle parses and matches: on worker processes, or in
this process with one worker, with the same outcomes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.config.load import load_config
from aggregator.ingest.workers import ParseJob, ParsePool, run_job
from aggregator.models import Document, ParsedFeed, ParseError, ParseOutcome
from aggregator.rules.matcher import MatchRules, TopicMatcher

REPO = Path(__file__).resolve().parents[1]
URL = "https://example.org/feed.xml"
RSS = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
    b"<item><guid>g1</guid><title>One</title><link>https://example.org/1</link></item>"
    b"</channel></rss>"
)
MATCHING_RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Policy</title>
<item><guid>a</guid><title>Senate passes the AI Act after a long debate</title>
<link>https://news.example.org/a</link>
<description>Artificial intelligence rules.</description></item>
<item><guid>b</guid><title>President signs executive order on ports</title>
<link>https://news.example.org/b</link></item>
<item><guid>c</guid><title>Local bakery wins the county fair</title>
<link>https://news.example.org/c</link></item>
</channel></rss>"""
EMPTY_CHANNEL = b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title></channel></rss>'


def _job(url: str, body: bytes, rules: MatchRules = ()) -> ParseJob:
    return ParseJob(url, body, source="S", content_type="application/rss+xml", rules=rules)


def _die_on_request(job: ParseJob) -> ParseOutcome:
    """A worker that dies on one body, as a crash in a C parser or the OOM killer would."""
    if job.body == b"die":
        os._exit(3)
    return run_job(job)


def _hang_on_request(job: ParseJob) -> ParseOutcome:
    """A worker that never finishes one body, as a parse stuck in a pathological input would."""
    if job.body == b"hang":
        threading.Event().wait()  # never set: stuck for good
    return run_job(job)


def _items(count: int, die_at: int = -1) -> list[tuple[int, ParseJob | None]]:
    """Every fourth item has nothing to parse; every fifth body is empty (a ParseError)."""
    items: list[tuple[int, ParseJob | None]] = []
    for i in range(count):
        body = b"die" if i == die_at else b"" if i % 5 == 4 else RSS
        items.append((i, None if i % 4 == 3 else _job(f"{URL}/{i}", body)))
    return items


def _shipped_matcher() -> TopicMatcher:
    return TopicMatcher.compile(load_config(REPO / "config", {}).topics)


def test_outcomes_come_back_in_order_and_none_passes_through() -> None:
    items = _items(14)
    with ParsePool(workers=2) as pool:
        streamed = list(pool.parse_stream(items))
    assert [key for key, _ in streamed] == list(range(14))
    for (_, job), (_, outcome) in zip(items, streamed, strict=True):
        assert outcome == (None if job is None else run_job(job))
    assert any(isinstance(outcome, ParseError) for _, outcome in streamed)


def test_one_worker_parses_in_this_process_with_the_same_outcomes() -> None:
    items = _items(14)
    with ParsePool(workers=2) as pool:
        on_workers = list(pool.parse_stream(items))
    assert list(ParsePool(workers=1).parse_stream(items)) == on_workers


@pytest.mark.parametrize("workers", [1, 2])
def test_every_entry_comes_back_matched_as_the_matcher_would_match(workers: int) -> None:
    matcher = _shipped_matcher()
    job = _job(URL, MATCHING_RSS, matcher.rules)
    with ParsePool(workers=workers) as pool:
        outcomes = [outcome for _, outcome in pool.parse_stream([(n, job) for n in range(4)])]
    parsed = outcomes[0]
    assert isinstance(parsed, ParsedFeed) and parsed.matches is not None
    expected = tuple(
        tuple(matcher.match(Document(e.title, e.summary, e.source, e.link))) for e in parsed.entries
    )
    assert parsed.matches == expected
    assert [[m.topic for m in ms] for ms in expected] == [["ai-policy"], ["executive-orders"], []]
    assert outcomes == [parsed] * 4


@pytest.mark.parametrize("workers", [1, 2])
def test_with_no_topics_every_entry_still_has_its_matches(workers: int) -> None:
    # The cycle reads matches from the job only: "none" must be an empty tuple, never None.
    jobs = [(0, _job(URL, MATCHING_RSS)), (1, _job(URL, EMPTY_CHANNEL))]
    with ParsePool(workers=workers) as pool:
        three, empty = (outcome for _, outcome in pool.parse_stream(jobs))
    assert isinstance(three, ParsedFeed) and len(three.entries) == 3
    assert three.matches == ((), (), ())
    assert isinstance(empty, ParsedFeed) and empty.entries == () and empty.matches == ()


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
    assert crashed.reason == f"parse failed: '{URL}/5': the parser process died"
    for key, job in items:
        if key != 5:
            assert streamed[key] == (None if job is None else run_job(job))
    assert after == {key: None if job is None else run_job(job) for key, job in _items(6)}


def test_a_hung_parse_fails_its_feed_and_the_pool_goes_on() -> None:
    items = [(key, _job(f"{URL}/{key}", b"hang" if key == 5 else RSS)) for key in range(10)]
    # 5 s: far above a worker's start (under 1 s here), which the first job on it waits for
    with ParsePool(workers=2, time_limit=5.0, runner=_hang_on_request) as pool:
        warm = dict(pool.parse_stream(_items(4)))
        streamed = dict(pool.parse_stream(items))
        after = dict(pool.parse_stream(_items(8)))  # a new worker took the hung one's place
    assert warm == {key: None if job is None else run_job(job) for key, job in _items(4)}
    hung = streamed.pop(5)
    assert isinstance(hung, ParseError)
    assert hung.reason == f"parse failed: '{URL}/5': took longer than 5 s"
    assert streamed == {key: run_job(job) for key, job in items if key != 5}
    assert after == {key: None if job is None else run_job(job) for key, job in _items(8)}
