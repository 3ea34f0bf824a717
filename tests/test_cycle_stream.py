"""The cycle stores feeds as they become ready and never holds the write lock while it waits.

A real feed server, a real database and a real parse pool: eight fast feeds and one whose body is
held back. While the cycle waits for the slow one, the fast feeds' entries are already committed
and another connection can take the write lock.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from aggregator.config.load import load_config
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.workers import ParsePool
from aggregator.models import CycleReport
from aggregator.pipeline import Deps, run_cycle
from aggregator.rules.matcher import TopicMatcher
from aggregator.store import Store
from tests import waiting
from tests.configs import link_models
from tests.feedserver import FeedServer, Reply

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def rss(guid: str, title: str) -> bytes:
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>F</title>'
        f"<item><guid>{guid}</guid><title>{title}</title>"
        f"<link>https://news.example/{guid}</link></item></channel></rss>"
    ).encode()


def write_config(directory: Path, urls: list[str]) -> Path:
    directory.mkdir()
    (directory / "topics.toml").write_text(
        (REPO / "config" / "topics.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    link_models(directory)
    (directory / "aggregator.toml").write_text(
        f'[storage]\ndatabase = "{directory / "bot.db"}"\n'
        '[polling]\ninterval = "60s"\njitter = 0\n'
        '[fetch]\ntimeout = "5s"\ndeadline = "20s"\nallow_private = true\n',
        encoding="utf-8",
    )
    feeds = [f'[[feeds]]\nurl = "{url}"\nname = "Outlet {i}"\n' for i, url in enumerate(urls)]
    (directory / "feeds.toml").write_text("\n".join(feeds), encoding="utf-8")
    return directory


class CommitWatchingStore(Store):
    """The real store, which also tells waiting tests when a transaction has committed."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
        waiting.changed()


def test_ready_feeds_commit_before_the_cycle_waits_for_a_slow_one(tmp_path: Path) -> None:
    release = threading.Event()
    slow_body = rss("slow-1", "Council approves budget")

    def held_body() -> Iterator[bytes]:
        yield slow_body[:20]
        release.wait(15)  # the rest comes once the test has looked at the database
        yield slow_body[20:]

    with FeedServer() as server:
        # Feeds are taken in URL order: the parse window (8) fills with fast feeds first.
        fast = [server.serve(f"/a{i}.xml", rss(f"fast-{i}", f"Pie contest {i}")) for i in range(8)]
        slow = server.route("/z-slow.xml", Reply(stream=held_body, length=len(slow_body)))
        config = load_config(write_config(tmp_path / "config", [*fast, slow]), {})
        store = CommitWatchingStore.open(config.settings.database)
        store.feeds.sync(config.feeds, NOW)
        reports: list[CycleReport] = []
        with ParsePool(2) as pool, Fetcher(config.settings) as fetcher:
            deps = Deps(
                config=config,
                store=store,
                fetcher=fetcher,
                parser=pool,
                matcher=TopicMatcher.compile(config.topics),
                rng=random.Random(7),
            )
            cycle = threading.Thread(target=lambda: reports.append(run_cycle(deps, NOW)))
            cycle.start()
            other = sqlite3.connect(config.settings.database, timeout=0)
            try:
                waiting.wait_until(
                    lambda: other.execute("SELECT count(*) FROM entries").fetchone()[0] >= 1,
                    "a fast feed's entry to be committed while the slow one downloads",
                    10.0,
                )
                assert server.count("/z-slow.xml") == 1
                other.execute(
                    "BEGIN IMMEDIATE"
                )  # raises "database is locked" if the cycle holds it
                other.execute("ROLLBACK")
            finally:
                other.close()
                release.set()
                cycle.join(30)
        store.close()

    assert reports, "the cycle did not finish"
    assert reports[0].new_entries == 9
    assert reports[0].count("fetched") == 9
