"""``aggregator run`` and ``aggregator poll --once`` on one database at the same time.

Real subprocesses, a real SQLite file, the feed server and the Slack stand-in (each process talks
to it under its own client name, so the server can tell their calls apart). Issue 16, item 6: the
two used to fail each other with "database is locked", and two delivery loops posted some
messages twice; running both at once must be safe.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.models import AlertState, Entry
from aggregator.store import Store
from aggregator.store.schema import iso
from tests import waiting
from tests.feedserver import FeedServer
from tests.loops_harness import Logged, aggregator, environment, run_loops, write_config
from tests.newsroom import CHANNELS, Newsroom
from tests.slackserver import Fault, SlackServer
from tests.storing import alert_item, store_items


@pytest.mark.slow
def test_poll_once_beside_the_service_delivers_every_message_once(tmp_path: Path) -> None:
    """Stories become alerts, thread replies (a second and third outlet) and edits (a rewritten
    title, more outlets) while the service and two loops of ``poll --once`` (each starting the
    next poll as its last one ends) poll the feeds and deliver.

    What it catches, each checked by undoing the fix: writes begun with a deferred BEGIN (polls
    exit 1 with "database is locked", service cycles fail); a claim that is not a compare-and-set
    (alerts and replies posted twice); an attach_thread that is not one (a follow-up the other
    loop is sending is rewritten under it, so its send is never recorded: it stays in 'sending'
    past the drain, which is shorter than the two minutes before such a row is settled).
    """
    result = run_loops(tmp_path, stories=10, poll_loops=2, drain_timeout=60)

    assert result.polls >= 4, result
    assert result.polls_failed == [], result.polls_failed
    assert result.trouble == [], result.trouble  # no "database is locked", no "cycle failed"
    assert result.alerts.rows == 20 and result.replies.rows == 40 and result.edits.rows > 0
    for kind in (result.alerts, result.replies, result.edits):
        assert (kind.lost, kind.duplicated) == (0, 0), (result, result.notes)
    assert result.story_errors == 0, result
    assert result.not_sent == 0, result
    assert set(result.sent_by) == {"run", "poll"}, result.sent_by  # both loops delivered


def test_a_service_starting_while_poll_once_posts_leaves_that_post_alone(tmp_path: Path) -> None:
    """At start the service settles the rows a crash left in ``sending``. A row ``poll --once``
    is sending right now is not one of them: looking it up in Slack finds nothing yet, and
    sending it again posted it twice once the poll's post landed."""
    entered, release = threading.Event(), threading.Event()

    def poll_post_in_flight(method: str, params: dict[str, Any]) -> Fault | None:
        if method == "chat.postMessage" and slack.caller() == "poll" and not entered.is_set():
            entered.set()
            return Fault.held(release)
        return None

    db = tmp_path / "bot.db"
    config = write_config(tmp_path / "config", {}, interval=0.0)
    store = Store.open(db)
    now = datetime.now(UTC)
    entry = Entry(
        feed_url="https://feeds.example/a", guid="g1", link="https://news.example/1",
        canonical_url="https://news.example/1", title="Senate weighs AI rules",
        summary="Lawmakers debated AI regulation.", published=now, content_hash="h1",
        source="Example News",
    )  # fmt: skip
    store_items(store, [alert_item(entry, "ai-rules", "#ai-rules", "AI")], now)
    [alert] = [r.alert.id for r in store.outbox.rows()]
    with SlackServer(chaos=poll_post_in_flight) as slack:
        slack.add_channel("#ai-rules")
        poll = Logged(aggregator(config, db, "poll", "--once"), environment(slack, "poll"),
                      tmp_path / "poll.log")  # fmt: skip
        assert entered.wait(30), "the poll never posted:\n" + "\n".join(poll.lines)
        row = store.outbox.row(alert)
        assert row is not None and row.state == AlertState.SENDING
        run = [*aggregator(config, db, "--log-level", "debug", "run", "--tick", "0.2")]
        service = Logged(run, environment(slack, "run"), tmp_path / "service.log")
        try:
            ready = service.wait_line("ready")
            service.wait_line("cycle:", after=ready)  # a cycle: it would have sent the alert
            release.set()  # the poll's post lands
            assert poll.wait() == 0, "\n".join(poll.lines)
            service.wait_line("cycle:", after=service.find("cycle:", after=ready))
        finally:
            release.set()
            assert service.stop() == 0
        assert slack.alert_counts() == {alert: 1}
        assert [p.client for p in slack.posts()] == ["poll"]
    sent = store.outbox.row(alert)
    store.close()
    assert sent is not None and sent.state == AlertState.SENT


def test_a_story_poll_once_stored_is_joined_by_the_service(tmp_path: Path) -> None:
    """The service groups stories in memory, warmed from the database at start. A story that
    ``poll --once`` stored after that was unknown to it, so the same story from a second outlet
    became a second alert instead of a reply in the first alert's thread."""
    db = tmp_path / "bot.db"
    with FeedServer() as feeds, SlackServer() as slack:
        for name in CHANNELS:
            slack.add_channel(name)
        newsroom = Newsroom(feeds, stories=1)
        config = write_config(tmp_path / "config", newsroom.urls(), interval=0.0)
        Store.open(db).close()
        run = aggregator(config, db, "run", "--tick", "0.2")
        service = Logged(run, environment(slack, "run"), tmp_path / "service.log")
        try:
            first = service.wait_line("cycle: 3 feeds: 3 fetched")  # its first poll: empty feeds
            newsroom.advance()  # the first outlet tells the story
            poll = Logged(aggregator(config, db, "poll", "--once"), environment(slack, "poll"),
                          tmp_path / "poll.log")  # fmt: skip
            assert poll.wait() == 0, "\n".join(poll.lines)
            # an alert in each channel: the service's own cycle (every tick) may have claimed
            # one before the poll did, and its post may still be on its way
            waiting.wait_until(lambda: len(slack.posts()) >= 2, "the first alerts", 30)
            assert len(slack.posts()) == 2
            newsroom.advance()  # a second outlet tells it too; the service polls it
            with sqlite3.connect(db) as conn:  # its feeds fall due, as time passing would do
                conn.execute("UPDATE feeds SET next_fetch_at = ?", [iso(datetime.now(UTC))])
            service.wait_line("1 new entries", after=first)
            waiting.wait_until(lambda: len(slack.posts()) >= 4, "the service's posts", 30)
        finally:
            assert service.stop() == 0
        top = [p for p in slack.posts() if p.thread_ts is None]
        replies = [p for p in slack.posts() if p.thread_ts is not None]
    assert sorted(p.channel for p in top) == sorted(CHANNELS), "the story was alerted twice"
    assert {r.thread_ts for r in replies} == {p.ts for p in top}
    assert all(r.client == "run" for r in replies)
