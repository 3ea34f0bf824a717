"""The end-to-end path: real feed server -> real pipeline -> real SQLite -> real Slack server.

Time is injected: each cycle gets an explicit ``now`` and the outbox a clock and a sleep that
advance a fake clock, so backoff and pacing cost no wall time.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from aggregator.config.load import load_config
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.workers import ParseJob, ParsePool, run_job
from aggregator.models import CycleReport, ParseOutcome
from aggregator.notify import Outbox, make_sink
from aggregator.pipeline import Deps, run_cycle
from aggregator.rules.matcher import TopicMatcher
from aggregator.store import Store
from aggregator.stories.index import StoryIndex
from tests.configs import link_models
from tests.feedserver import FeedServer, Reply
from tests.slackserver import TOKEN, Fault, SlackServer

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
SEED = "Trump kills AI security order after tech pressure"
SEED_TEXT = (
    "President Trump withdrew an executive order on artificial intelligence and cybersecurity "
    "after lobbying by technology executives."
)


def rss(*items: tuple[str, str, str, datetime | None, str], title: str = "Feed") -> bytes:
    """An RSS 2.0 body from (guid, title, link, published, description) tuples."""
    parts = [f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>']
    for guid, item_title, link, published, description in items:
        date = f"<pubDate>{format_datetime(published)}</pubDate>" if published else ""
        parts.append(
            f"<item><guid isPermaLink='false'>{guid}</guid><title>{item_title}</title>"
            f"<link>{link}</link>{date}<description><![CDATA[{description}]]></description></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode()


SEED_ITEM = ("seed-1", SEED, "https://news.example/ai-order", T0 - timedelta(hours=1), SEED_TEXT)
DULL_ITEM = (
    "dull-1",
    "Local bakery wins county fair pie contest",
    "https://news.example/pie",
    T0 - timedelta(hours=2),
    "A family bakery took first prize.",
)


@dataclass
class Clock:
    now: datetime = T0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Rig:
    """A config directory, a database, a feed server and a Slack server, wired together."""

    tmp: Path
    feeds: FeedServer
    slack: SlackServer
    clock: Clock = field(default_factory=Clock)
    _store: Store | None = None
    _pool: ParsePool | None = None
    stories: StoryIndex = field(default_factory=StoryIndex)  # lives as long as the process

    def write_config(
        self, feed_urls: list[str], *, topics: str | None = None, polling: str = ""
    ) -> Path:
        directory = self.tmp / "config"
        directory.mkdir(exist_ok=True)
        shipped = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
        (directory / "topics.toml").write_text(topics or shipped, encoding="utf-8")
        link_models(directory)
        (directory / "aggregator.toml").write_text(
            f'[storage]\ndatabase = "{self.tmp / "bot.db"}"\n'
            f'[polling]\ninterval = "60s"\njitter = 0\n{polling}\n'
            '[fetch]\ntimeout = "2s"\ndeadline = "3s"\nallow_private = true\n',
            encoding="utf-8",
        )
        lines = [
            f'[[feeds]]\nurl = "{url}"\nname = "Outlet {i}"\n' for i, url in enumerate(feed_urls)
        ]
        (directory / "feeds.toml").write_text("\n".join(lines), encoding="utf-8")
        return directory

    def deps(self, config_dir: Path) -> Deps:
        config = load_config(config_dir, {"SLACK_API_URL": self.slack.url})
        if self._store is None:
            self._store = Store.open(config.settings.database)
        if self._pool is None:
            self._pool = ParsePool(1)
        self._store.feeds.sync(config.feeds, self.clock.now)
        outbox = Outbox(
            self._store,
            make_sink(config.settings, TOKEN),
            config.settings,
            config.topics,
            clock=self.clock,
            sleep=self.clock.sleep,
            monotonic=lambda: 0.0,
            rng=random.Random(7),
        )
        return Deps(
            config=config,
            store=self._store,
            fetcher=Fetcher(config.settings),
            parser=self._pool,
            matcher=TopicMatcher.compile(config.topics),
            outbox=outbox,
            stories=self.stories,
            rng=random.Random(7),
        )

    def cycle(self, config_dir: Path, *, everything: bool = True) -> CycleReport:
        deps = self.deps(config_dir)
        if everything:
            deps.store.feeds.make_all_due(self.clock.now)
        try:
            return run_cycle(deps, self.clock.now)
        finally:
            deps.fetcher.close()  # type: ignore[attr-defined]

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._pool is not None:
            self._pool.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with FeedServer() as feeds, SlackServer() as slack:
        rig = Rig(tmp_path, feeds, slack)
        try:
            yield rig
        finally:
            rig.close()


def channels(slack: SlackServer) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in slack.posts():
        counts[message.channel] = counts.get(message.channel, 0) + 1
    return counts


def test_seed_story_becomes_one_message_per_topic_channel(rig: Rig) -> None:
    url = rig.feeds.serve("/a.xml", rss(SEED_ITEM, DULL_ITEM))
    report = rig.cycle(rig.write_config([url]))

    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}
    assert report.count("fetched") == 1
    assert report.new_entries == 2
    assert report.matched == 1
    assert report.alerts == 2
    posted = rig.slack.posts()[0]
    assert SEED in posted.text
    assert posted.metadata and posted.metadata["event_type"] == "aggregator_alert"


@pytest.mark.parametrize("workers", [1, 2])
def test_entries_are_matched_alike_in_this_process_or_on_the_parse_workers(
    rig: Rig, workers: int
) -> None:
    rig._pool = ParsePool(workers)
    url = rig.feeds.serve("/a.xml", rss(SEED_ITEM, DULL_ITEM))
    report = rig.cycle(rig.write_config([url]))

    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}
    assert (report.new_entries, report.matched, report.alerts) == (2, 1, 2)
    stored = rig.store.db.execute(
        "SELECT e.guid, m.topic FROM matches m JOIN entries e ON e.id = m.entry_id ORDER BY 2"
    ).fetchall()
    assert stored == [("seed-1", "ai-policy"), ("seed-1", "executive-orders")]


def _hang_on_marked_body(job: ParseJob) -> ParseOutcome:
    """A parse worker that never finishes a body holding the marker, as a stuck parse would."""
    if b"hang-here" in job.body:
        threading.Event().wait()  # never set: stuck for good
    return run_job(job)


def test_a_hung_parse_fails_its_feed_and_the_cycle_goes_on(rig: Rig) -> None:
    rig._pool = ParsePool(2, time_limit=5.0, runner=_hang_on_marked_body)
    stuck = rig.feeds.serve("/stuck.xml", rss(DULL_ITEM, title="hang-here"))
    good = rig.feeds.serve("/a.xml", rss(SEED_ITEM))
    config = rig.write_config([stuck, good])
    report = rig.cycle(config)

    outcomes = {f.url: f for f in report.feeds}
    assert (outcomes[stuck].status, outcomes[stuck].reason) == (
        "failed",
        f"parse failed: {stuck!r}: took longer than 5 s",
    )
    assert (outcomes[good].status, outcomes[good].alerts) == ("fetched", 2)
    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}

    rig.feeds.serve("/stuck.xml", rss(DULL_ITEM))  # the feed mends; the pool was never stuck
    rig.clock.advance(120)
    again = {f.url: f for f in rig.cycle(config).feeds}
    assert (again[stuck].status, again[stuck].new_entries) == ("fetched", 1)


def test_second_poll_posts_nothing(rig: Rig) -> None:
    url = rig.feeds.serve("/a.xml", rss(SEED_ITEM))
    config = rig.write_config([url])
    rig.cycle(config)
    rig.clock.advance(120)
    report = rig.cycle(config)

    assert len(rig.slack.posts()) == 2
    assert report.new_entries == 0
    assert report.alerts == 0


def test_an_idle_tick_logs_its_summary_at_debug_and_a_busy_one_at_info(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # The service looks for due feeds every 30 s; at info, the ticks where nothing was due made
    # about 2,900 lines a day in the journal.
    config = rig.write_config([rig.feeds.serve("/a.xml", rss(DULL_ITEM))])
    with caplog.at_level(logging.DEBUG, logger="aggregator.pipeline"):
        busy = rig.cycle(config)
        idle = rig.cycle(config, everything=False)  # the same instant: nothing is due yet

    assert len(busy.feeds) == 1 and len(idle.feeds) == 0 and not idle.deliveries
    summaries = [r for r in caplog.records if r.getMessage().startswith("cycle: ")]
    assert [(r.levelno, r.getMessage()) for r in summaries] == [
        (logging.INFO, busy.summary()),
        (logging.DEBUG, idle.summary()),
    ]


def test_same_story_from_second_feed_with_tracking_parameters_posts_nothing(rig: Rig) -> None:
    first = rig.feeds.serve("/a.xml", rss(SEED_ITEM))
    copy = ("other-guid", SEED, "https://NEWS.example/ai-order?utm_source=rss&fbclid=x#top",
            T0 - timedelta(minutes=30), SEED_TEXT)  # fmt: skip
    second = rig.feeds.serve("/b.xml", rss(copy))
    config = rig.write_config([first])
    rig.cycle(config)
    rig.clock.advance(120)
    report = rig.cycle(rig.write_config([first, second]))

    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}
    assert report.new_entries == 1  # stored for history, never alerted
    assert report.alerts == 0


def test_slack_500_then_recovery_delivers_once(rig: Rig) -> None:
    url = rig.feeds.serve("/a.xml", rss(SEED_ITEM))
    config = rig.write_config([url])
    rig.slack.script("chat.postMessage", Fault.status(500), Fault.status(500))
    first = rig.cycle(config)
    assert {d.state for d in first.deliveries} <= {"failed"}
    assert rig.store.outbox.counts().get("sent", 0) < 2

    for _ in range(6):  # later cycles, with time moving past each backoff
        rig.clock.advance(3600)
        rig.cycle(config)

    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}
    assert rig.store.outbox.counts() == {"sent": 2}


def test_first_poll_stores_old_entries_without_alerts(rig: Rig) -> None:
    old = ("old-1", "Biden signs executive order on AI safety", "https://news.example/old",
           T0 - timedelta(days=3), "The President signed an executive order on AI.")  # fmt: skip
    url = rig.feeds.serve("/a.xml", rss(old, SEED_ITEM))
    config = rig.write_config([url])
    report = rig.cycle(config)

    assert report.new_entries == 2
    assert report.matched == 2
    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}
    assert all(SEED in m.text for m in rig.slack.posts())


def test_first_poll_window_is_configurable(rig: Rig) -> None:
    old = ("old-1", SEED, "https://news.example/old", T0 - timedelta(days=3), SEED_TEXT)
    url = rig.feeds.serve("/a.xml", rss(old))
    rig.cycle(rig.write_config([url], polling='first_poll_window = "7d"'))
    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}


def test_topics_sharing_a_channel_share_one_message(rig: Rig) -> None:
    shipped = (REPO / "config" / "topics.toml").read_text(encoding="utf-8")
    shared = shipped.replace('"#executive-orders"', '"#ai-policy"')
    assert shared != shipped
    url = rig.feeds.serve("/a.xml", rss(SEED_ITEM))
    rig.cycle(rig.write_config([url], topics=shared))

    assert channels(rig.slack) == {"#ai-policy": 1}
    text = rig.slack.posts()[0].text + str(rig.slack.posts()[0].blocks)
    assert "ai-policy" in text and "executive-orders" in text


def test_feed_text_reaches_slack_escaped(rig: Rig) -> None:
    hostile = ("evil-1", "&lt;!channel&gt; Trump kills AI security order &lt;@U123&gt;",
               "https://news.example/evil", T0, SEED_TEXT)  # fmt: skip
    url = rig.feeds.serve("/a.xml", rss(hostile))
    rig.cycle(rig.write_config([url]))

    for message in rig.slack.posts():
        assert "<!channel>" not in message.text
        assert "<!channel>" not in str(message.blocks)
        assert "&lt;!channel&gt;" in message.text


def test_one_bad_feed_never_stops_the_others(rig: Rig) -> None:
    good = rig.feeds.serve("/good.xml", rss(SEED_ITEM))
    broken = rig.feeds.route("/500.xml", Reply(status=500, body=b"oops"))
    garbage = rig.feeds.serve("/garbage.xml", b"\x00\x01not a feed at all\xff" * 50)
    slow = rig.feeds.drip("/slow.xml", rss(DULL_ITEM), interval=0.5)
    unreachable = "http://127.0.0.1:9/feed.xml"
    report = rig.cycle(rig.write_config([broken, garbage, slow, unreachable, good]))

    by_url = {f.url: f for f in report.feeds}
    assert by_url[good].status == "fetched"
    for bad in (broken, garbage, slow, unreachable):
        assert by_url[bad].status == "failed", by_url[bad]
        assert by_url[bad].reason
    assert "500" in by_url[broken].reason
    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}
    failing = {s.url: s for s in rig.store.feeds.states()}
    assert failing[broken].consecutive_errors == 1
    assert failing[broken].last_error
    assert failing[broken].next_fetch_at is not None


def test_unchanged_feed_costs_no_parse(rig: Rig) -> None:
    with_etag = rig.feeds.serve("/etag.xml", rss(SEED_ITEM), etag='"v1"')
    no_validators = rig.feeds.serve("/plain.xml", rss(DULL_ITEM))
    config = rig.write_config([with_etag, no_validators])
    assert rig.cycle(config).parses == 2
    rig.clock.advance(120)
    report = rig.cycle(config)

    assert report.parses == 0
    assert report.count("unchanged") == 2
    assert rig.feeds.statuses("/etag.xml")[304] == 1


def test_changed_entry_is_edited_in_place_not_reposted(rig: Rig) -> None:
    url = rig.feeds.route(
        "/a.xml",
        Reply(body=rss(SEED_ITEM)),
        Reply(body=rss((*SEED_ITEM[:4], SEED_TEXT + " The order had been signed in 2025."))),
    )
    config = rig.write_config([url])
    rig.cycle(config)
    rig.clock.advance(120)
    rig.cycle(config)

    assert len(rig.slack.posts()) == 2
    assert len(rig.slack.updates()) == 2


def test_chained_permanent_redirects_keep_one_feed_answering_to_its_configured_url(
    rig: Rig,
) -> None:
    final = rig.feeds.serve("/c.xml", rss(SEED_ITEM))
    middle = rig.feeds.route("/b.xml", Reply(body=rss(DULL_ITEM)), Reply(status=301,
                             headers={"Location": final}))  # fmt: skip
    first = rig.feeds.redirect("/a.xml", middle, status=301)
    config = rig.write_config([first])

    report = rig.cycle(config)
    assert "moved permanently" in report.feeds[0].reason
    rig.clock.advance(120)
    report = rig.cycle(config)
    assert "moved permanently" in report.feeds[0].reason
    rig.clock.advance(120)
    report = rig.cycle(config)

    states = rig.store.feeds.states()
    assert [(s.url, s.moved_from) for s in states] == [(final, first)]
    assert report.feeds[0].url == final
    assert channels(rig.slack) == {"#ai-policy": 1, "#executive-orders": 1}


def _coverage_items(hours_later: float) -> tuple[tuple[str, str, str, datetime, str], ...]:
    signed = (
        "a-1",
        "Trump signs executive order blocking state AI laws",
        "https://outlet-a.example/ai-preemption-order",
        T0 - timedelta(hours=2),
        "President Trump signed an executive order on Thursday directing the attorney general "
        "to challenge state artificial intelligence laws, a win for tech companies.",
    )
    again = (
        "b-1",
        "Trump signs order to block state laws on artificial intelligence",
        "https://outlet-b.example/2026/11/trump-order-state-ai-laws",
        T0 - timedelta(hours=2) + timedelta(hours=hours_later),
        "President Trump on Thursday signed an executive order that directs the attorney "
        "general to sue states over their artificial intelligence laws.",
    )
    return signed, again


def test_second_outlet_of_a_story_goes_into_the_thread_and_edits_the_parent(rig: Rig) -> None:
    signed, again = _coverage_items(1)
    first = rig.feeds.serve("/a.xml", rss(signed, title="Outlet A"))
    second = rig.feeds.serve("/b.xml", rss(again, title="Outlet B"))
    rig.cycle(rig.write_config([first]))
    parents = {m.channel: m for m in rig.slack.posts() if m.thread_ts is None}
    assert set(parents) == {"#ai-policy", "#executive-orders"}

    rig.clock.advance(600)
    rig.cycle(rig.write_config([first, second]))
    rig.clock.advance(600)
    rig.cycle(rig.write_config([first, second]))

    top_level = [m for m in rig.slack.posts() if m.thread_ts is None]
    replies = [m for m in rig.slack.posts() if m.thread_ts is not None]
    assert len(top_level) == 2, "a second outlet must not become a second alert"
    assert {r.thread_ts for r in replies} == {p.ts for p in parents.values()}
    assert all("Also covered by Outlet 1" in r.text or "Outlet 1" in str(r.blocks) for r in replies)
    edits = rig.slack.updates()
    assert {e.ts for e in edits} == {p.ts for p in parents.values()}
    assert all("covered by 2 outlets" in str(e.blocks) for e in edits)
    assert all("_updated_" not in str(e.blocks) for e in edits)


def test_a_new_development_is_a_new_alert(rig: Rig) -> None:
    signed, _ = _coverage_items(1)
    blocked = (
        "c-1",
        "Judge blocks Trump order targeting state AI laws",
        "https://outlet-c.example/judge-blocks-ai-order",
        T0 + timedelta(hours=30),
        "A federal judge on Friday temporarily blocked the executive order, ruling that the "
        "administration overstepped its authority.",
    )
    first = rig.feeds.serve("/a.xml", rss(signed))
    rig.cycle(rig.write_config([first]))
    rig.clock.advance(31 * 3600)
    later = rig.feeds.serve("/c.xml", rss(blocked))
    rig.cycle(rig.write_config([first, later]))

    top_level = [m for m in rig.slack.posts() if m.thread_ts is None]
    assert len(top_level) == 4
    assert not [m for m in rig.slack.posts() if m.thread_ts is not None]


def test_official_text_from_a_primary_feed_is_linked_from_the_parent(rig: Rig) -> None:
    signed, _ = _coverage_items(1)
    order_link = (
        "https://www.whitehouse.gov/presidential-actions/2026/11/ensuring-a-national-ai-policy/"
    )
    news = (*signed[:4], signed[4] + f' <a href="{order_link}">Read the order</a>')
    official = (
        "wh-1",
        "Ensuring a National Policy Framework for Artificial Intelligence",
        order_link,
        T0 - timedelta(hours=1),
        "By the authority vested in me as President by the Constitution and the laws of the "
        "United States of America, it is hereby ordered: state AI laws are preempted.",
    )
    first = rig.feeds.serve("/a.xml", rss(news))
    wh = rig.feeds.serve("/wh.xml", rss(official))
    config = rig.write_config([first])
    rig.cycle(config)
    feeds_toml = (config / "feeds.toml").read_text()
    (config / "feeds.toml").write_text(
        feeds_toml + f'\n[[feeds]]\nurl = "{wh}"\nname = "White House"\nprimary = true\n'
    )
    rig.clock.advance(600)
    rig.cycle(config)
    rig.clock.advance(600)
    rig.cycle(config)

    assert len([m for m in rig.slack.posts() if m.thread_ts is None]) == 2
    replies = [m for m in rig.slack.posts() if m.thread_ts is not None]
    assert replies and all("Official text" in str(r.blocks) for r in replies)
    edits = rig.slack.updates()
    assert edits and all(order_link in str(e.blocks) for e in edits)


def test_explain_names_the_story_an_entry_joined_and_why(rig: Rig) -> None:
    signed, again = _coverage_items(1)
    first = rig.feeds.serve("/a.xml", rss(signed))
    second = rig.feeds.serve("/b.xml", rss(again))
    config = rig.write_config([first])
    rig.cycle(config)
    rig.clock.advance(600)
    config = rig.write_config([first, second])
    rig.cycle(config)
    joined = rig.store.db.execute("SELECT id, story_id FROM entries WHERE guid = 'b-1'").fetchone()
    database = str(rig.tmp / "bot.db")

    out = subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), "--db", database,
         "explain", str(joined[0])],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip

    assert f"story {joined[1]}: joins story {joined[1]}" in out
    assert "similarity" in out


def test_a_link_first_seen_in_an_item_matching_nothing_still_alerts(rig: Rig) -> None:
    # Only matching entries start stories. A matching item whose link came first in an item that
    # matched nothing (a short summary elsewhere) is news: it alerts. A later item with that link
    # joins its story instead. Unmatched entries are inserted in batches; ids follow feed order.
    link = "https://news.example/shared"
    dull = ("dull-1", "Local bakery wins county fair pie contest", link, T0, "First prize.")
    seed = ("seed-1", SEED, link, T0, SEED_TEXT)
    echo = ("dull-2", "Read more on our site", link, T0, "Details.")
    other = ("dull-3", "Town repaves Main Street", "https://news.example/road", T0, "Roadworks.")
    url = rig.feeds.serve("/a.xml", rss(dull, seed, echo, other))
    report = rig.cycle(rig.write_config([url]))

    assert (report.new_entries, report.matched, report.alerts) == (4, 1, 2)
    rows = rig.store.db.execute("SELECT guid, story_id FROM entries ORDER BY id").fetchall()
    assert [guid for guid, _ in rows] == ["dull-1", "seed-1", "dull-2", "dull-3"]
    assert rows[0][1] is None and rows[3][1] is None
    assert rows[1][1] is not None and rows[2][1] == rows[1][1]
    assert rig.store.db.execute("SELECT count(*) FROM stories").fetchone()[0] == 1


def test_a_cycle_that_fails_while_writing_leaves_no_phantom_story_behind(rig: Rig) -> None:
    """Planning adds entries to the in-memory story window before the write; when the write is
    rolled back, the next cycle must not find the story that never reached the database."""
    from aggregator.errors import StoreError
    from aggregator.service.runtime import Runtime

    now = datetime.now(UTC)
    item = ("seed-1", SEED, "https://news.example/ai-order", now - timedelta(minutes=5), SEED_TEXT)
    config = rig.write_config([rig.feeds.serve("/a.xml", rss(item))])
    runtime = Runtime(config, {}, parse_workers=1)
    try:
        runtime.store.db.execute(
            "CREATE TEMP TRIGGER no_alerts BEFORE INSERT ON main.alerts "
            "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        with pytest.raises(StoreError, match="disk trouble"):
            runtime.cycle(everything=True)
        runtime.store.db.execute("DROP TRIGGER temp.no_alerts")
        report = runtime.cycle(everything=True)
        stories = runtime.store.db.rows("SELECT id FROM stories")
    finally:
        runtime.close()
    assert (report.new_entries, report.alerts) == (1, 2)
    assert stories == [{"id": 1}]


def test_the_service_scores_what_the_rules_catch_with_the_shipped_models(rig: Rig) -> None:
    """The real path: the Runtime loads the shipped models, the planner scores each caught item.
    The seed story alerts in both channels; an item the executive-orders net catches but its
    model scores low is stored with its score and not alerted."""
    from aggregator.service.runtime import Runtime

    now = datetime.now(UTC)
    summary = (
        "As coronavirus cases rocket upward in many parts of the state, bars across California, "
        "many of which reopened only recently, are being forced to close again."
    )
    title = "It's last call - again - as many bars are forced to close amid coronavirus surge"
    bars = ("bars-1", title, "https://news.example/bars", now - timedelta(minutes=9), summary)
    seed = ("seed-1", SEED, "https://news.example/ai-order", now - timedelta(minutes=5), SEED_TEXT)
    config = rig.write_config([rig.feeds.serve("/a.xml", rss(seed, bars))])
    runtime = Runtime(config, {}, parse_workers=1)
    try:
        assert set(runtime.scoring.scorers) == {"ai-policy", "executive-orders"}
        alert = {name: scorer.alert for name, scorer in runtime.scoring.scorers.items()}
        review = runtime.scoring.scorers["executive-orders"].review
        report = runtime.cycle(everything=True)
        scores = runtime.store.db.rows(
            "SELECT e.guid, m.topic, m.score FROM matches m JOIN entries e ON e.id = m.entry_id "
            "ORDER BY e.guid, m.topic"
        )
        alerts = runtime.store.db.rows("SELECT dedupe_key FROM alerts ORDER BY id")
    finally:
        runtime.close()
    assert report.alerts == 2 and len(alerts) == 2
    by = {(r["guid"], r["topic"]): r["score"] for r in scores}
    assert by[("seed-1", "ai-policy")] >= alert["ai-policy"]
    assert by[("seed-1", "executive-orders")] >= alert["executive-orders"]
    assert by[("bars-1", "executive-orders")] < review  # caught by the net, below review
