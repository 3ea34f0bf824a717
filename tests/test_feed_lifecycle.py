"""Feed health through the real cycle: local feed server, real fetcher, parser and SQLite, and an
injected clock. Conditional GET, Retry-After, max-age, backoff, 410 Gone and permanent redirects."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config.load import parse_config
from aggregator.config.model import Config
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.workers import ParsePool
from aggregator.models import FeedState
from aggregator.pipeline import Deps, run_cycle
from aggregator.rules.matcher import TopicMatcher
from aggregator.store import Store
from tests.feedserver import FeedServer, Reply

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOPICS = '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI"\n'
SETTINGS = """
[polling]
interval = "5m"
jitter = 0
backoff_cap = "1h"
[fetch]
timeout = 2
deadline = 4
failing_after = "2h"
allow_private = true
[slack]
ops_channel = "#ops"
"""


def rss(*titles: str) -> bytes:
    items = "".join(
        f"<item><title>{t}</title><link>https://news.example/{i}</link><guid>g{i}</guid>"
        f"<pubDate>Sun, 01 Mar 2026 11:00:00 GMT</pubDate></item>"
        for i, t in enumerate(titles)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>N</title>{items}'.encode() + (
        b"</channel></rss>"
    )


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as s:
        yield s


class Harness:
    def __init__(self, tmp_path: Path, server: FeedServer, urls: list[str]) -> None:
        feeds = "".join(f'[[feeds]]\nurl = "{u}"\nname = "F{i}"\n' for i, u in enumerate(urls))
        self.config: Config = parse_config(
            {"aggregator.toml": SETTINGS, "feeds.toml": feeds, "topics.toml": TOPICS}
        )
        self.store = Store.open(tmp_path / "db.sqlite")
        self.store.feeds.sync(self.config.feeds, T0)
        self.fetcher = Fetcher(self.config.settings)
        self.parser = ParsePool(workers=1)
        self.deps = Deps(
            config=self.config,
            store=self.store,
            fetcher=self.fetcher,
            parser=self.parser,
            matcher=TopicMatcher.compile(list(self.config.topics)),
            rng=random.Random(1),
        )

    def cycle(self, now: datetime) -> dict[str, str]:
        self.store.feeds.sync(self.config.feeds, now)
        report = run_cycle(self.deps, now)
        return {f.url: f.status for f in report.feeds}

    def state(self, url: str) -> FeedState:
        state = self.store.feeds.state(url)
        assert state is not None
        return state

    def close(self) -> None:
        self.fetcher.close()
        self.store.close()


Make = Callable[[list[str]], Harness]


def ops_notices(h: Harness) -> list[tuple[str, str]]:
    rows = h.store.db.execute("SELECT channel, payload FROM alerts WHERE kind = 'ops' ORDER BY id")
    found = []
    for channel, payload in rows:
        text = json.loads(payload)["text"]
        found += [(channel, p) for p in ("keeps failing", "is gone (HTTP 410)") if p in text]
    return found


@pytest.fixture
def make(tmp_path: Path, server: FeedServer) -> Iterator[Make]:
    made: list[Harness] = []

    def build(urls: list[str]) -> Harness:
        made.append(Harness(tmp_path, server, urls))
        return made[-1]

    yield build
    for h in made:
        h.close()


def test_second_cycle_transfers_no_bodies_and_parses_nothing(
    server: FeedServer, make: Make
) -> None:
    urls = [
        server.serve("/etag", rss("AI rules one", "two"), etag='"e1"'),
        server.serve("/lm", rss("three"), last_modified="Sun, 01 Mar 2026 10:00:00 GMT"),
        server.serve("/plain", rss("four")),  # no validators at all
    ]
    h = make(urls)
    first = run_cycle(h.deps, T0)
    assert first.count("fetched") == 3 and first.parses == 3 and first.new_entries == 4
    sent = server.bytes_sent()
    second = run_cycle(h.deps, T0 + timedelta(minutes=5))
    assert second.count("unchanged") == 3
    assert second.parses == 0
    assert second.new_entries == 0
    assert server.statuses("/etag")[304] == 1 and server.statuses("/lm")[304] == 1
    # Only the feed without validators sent its body again; it was recognised by its hash.
    assert server.bytes_sent() - sent == len(rss("four"))


def test_each_feed_keeps_its_own_interval_and_max_age(server: FeedServer, make: Make) -> None:
    slow = server.serve("/slow", rss("x"), headers={"Cache-Control": "max-age=1800"})
    fast = server.serve("/fast", rss("y"))
    h = make([slow, fast])
    h.cycle(T0)
    assert h.state(slow).next_fetch_at == T0 + timedelta(seconds=1800)
    assert h.state(fast).next_fetch_at == T0 + timedelta(minutes=5)
    statuses = h.cycle(T0 + timedelta(minutes=5))
    assert statuses == {fast: "unchanged"}


def test_retry_after_is_honoured(server: FeedServer, make: Make) -> None:
    url = server.route(
        "/busy", Reply(status=429, headers={"Retry-After": "3600"}), Reply(body=rss("ok"))
    )
    h = make([url])
    assert h.cycle(T0) == {url: "failed"}
    assert h.state(url).next_fetch_at == T0 + timedelta(hours=1)
    assert h.cycle(T0 + timedelta(minutes=30)) == {}
    assert server.count("/busy") == 1
    assert h.cycle(T0 + timedelta(hours=1)) == {url: "fetched"}
    assert h.state(url).consecutive_errors == 0


def test_errors_back_off_keep_polling_and_notify_ops_once(server: FeedServer, make: Make) -> None:
    url = server.status("/broken", 500)
    h = make([url])
    now = T0
    waits = []
    for _ in range(8):
        assert h.cycle(now) == {url: "failed"}
        state = h.state(url)
        assert state.next_fetch_at is not None
        waits.append((state.next_fetch_at - now).total_seconds())
        now = state.next_fetch_at
    assert waits == [600, 1200, 2400, 3600, 3600, 3600, 3600, 3600]  # capped at 1 h
    state = h.state(url)
    assert state.status == "failing" and state.consecutive_errors == 8
    assert "HTTP 500" in (state.last_error or "")
    assert ops_notices(h) == [("#ops", "keeps failing")]
    # Recovery clears the errors; the feed is active again.
    server.serve("/broken", rss("back"))
    assert h.cycle(now) == {url: "fetched"}
    assert h.state(url).status == "active" and h.state(url).consecutive_errors == 0


def test_gone_feed_is_never_polled_again(server: FeedServer, make: Make) -> None:
    url = server.status("/gone", 410)
    h = make([url])
    assert h.cycle(T0) == {url: "gone"}
    state = h.state(url)
    assert state.status == "gone" and state.next_fetch_at is None
    for hours in (1, 24, 24 * 30):
        assert h.cycle(T0 + timedelta(hours=hours)) == {}
    assert server.count("/gone") == 1
    assert ops_notices(h) == [("#ops", "is gone (HTTP 410)")]


def test_permanent_redirect_moves_the_feed(server: FeedServer, make: Make) -> None:
    old = server.redirect("/old", "/new", 301)
    new = server.serve("/new", rss("moved"), etag='"m"')
    h = make([old])
    h.cycle(T0)
    assert h.store.feeds.state(old) is None
    moved = h.state(new)
    assert moved.moved_from == old and moved.etag == '"m"'
    h.cycle(T0 + timedelta(minutes=5))  # the config still names the old URL
    assert server.count("/old") == 1
    assert server.statuses("/new") == {200: 1, 304: 1}
    assert h.store.entries.count() == 1
