"""The service reads the team's reactions on its own thread: a real ``aggregator run`` subprocess,
the local feed server and Slack stand-in, and a real database.

The first run's read is held inside Slack while new alerts are queued and delivered, then fails:
the alerts went out regardless, the failure is one log line, and no label was written. The second
run reads the reactions and writes the labels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config.load import parse_config
from aggregator.config.model import Config
from aggregator.feedback.job import FeedbackJob
from aggregator.models import NoticePayload
from aggregator.store import Store
from tests import feedback_world
from tests.feedserver import FeedServer
from tests.slackserver import TOKEN, Fault, SlackServer
from tests.test_service import DULL_ITEM, World, rss, wait_until


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FeedServer() as feeds, SlackServer() as slack:
        w = World(tmp_path, feeds, slack)
        try:
            yield w
        finally:
            w.close()


def seed_alert(world: World, tmp_path: Path) -> feedback_world.Sent:
    """An alert the service sent before this run, with a reaction on it."""
    before = feedback_world.World(tmp_path, world.slack, feedback_world.FakeClock(_now()))
    try:
        sent = before.alert("Earlier story about AI rules")
        before.react(sent, "+1", "U1")
    finally:
        before.close()
    return sent


def queue_alerts(world: World, tmp_path: Path) -> None:
    """Three new alerts, queued as a cycle (or ``poll --once``) would, for the service to send."""
    other = feedback_world.World(tmp_path, world.slack, feedback_world.FakeClock(_now()))
    try:
        other.queue("New AI story", ("ai-policy",))
        other.queue("Another AI story", ("ai-policy",))
        other.queue("An executive order", ("executive-orders",))
    finally:
        other.close()


def _now() -> datetime:
    return datetime.now(UTC)


def slack_labels(db: Path) -> list[tuple[int, str, int | None, str]]:
    store = Store.open(db)
    try:
        rows = store.db.rows(
            "SELECT entry_id, topic, label, who FROM labels WHERE source = 'slack'"
        )
        return sorted((r["entry_id"], r["topic"], r["label"], r["who"]) for r in rows)
    finally:
        store.close()


def test_a_held_then_failing_read_never_delays_alerts_and_the_next_run_reads(
    world: World, tmp_path: Path
) -> None:
    slack = world.slack
    world.write_config([world.feeds.serve("/a.xml", rss(DULL_ITEM))])
    seed = seed_alert(world, tmp_path)
    stall = slack.stall("conversations.history")
    slack.script("conversations.history", Fault.status(503))

    service = world.start()
    wait_until(stall.arrived.is_set, "the feedback read to reach Slack")
    queue_alerts(world, tmp_path)  # while the read is held in Slack, new alerts are delivered
    wait_until(lambda: len(slack.posts()) == 4, "the new alerts in Slack")
    wait_until(lambda: world.alert_states() == {"sent": 4}, "the alerts marked sent")
    assert not stall.released.is_set() and stall.waiting == 1
    stall.release()
    line = service.wait_log("labels wait for the next read")
    assert (
        "feedback: read reactions on 0 of 1 alerts in 1 channel(s): 1 Slack call(s)"
        in (service.err[line])
    )
    assert (
        "could not read #ai-policy: conversations.history: Slack answered HTTP 503"
        in (service.err[line])
    ), service.err[line]
    assert service.stop() == 0
    assert "Traceback" not in service.text()
    assert sum("feedback:" in x for x in service.err) == 1  # one line for the failed run
    assert slack_labels(world.db) == []

    # The second run reads every alert of the window: the seed's reaction, and a new one.
    [order] = slack.posts("#executive-orders")
    slack.react(order.channel_id, order.ts, "-1", "U2")
    # the stall stays released: later calls pass straight through
    again = world.start()
    line = again.wait_log("label change(s)")
    assert (
        "read reactions on 4 of 4 alerts in 2 channel(s): 2 Slack call(s), 2 label"
        in (again.err[line])
    )
    assert again.stop() == 0
    labels = slack_labels(world.db)
    assert (seed.entry_id, "ai-policy", 1, "U1") in labels
    [(_, topic, label, _)] = [x for x in labels if x[3] == "U2"]
    assert (topic, label, len(labels)) == ("executive-orders", 0, 2)


# -- the job itself, in process -------------------------------------------------------------------

MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def job_config(slack: SlackServer, feedback: str = "", ops: bool = True) -> Config:
    ops_line = 'ops_channel = "#ops"\n' if ops else ""
    texts = {
        "aggregator.toml": f"[slack]\n{ops_line}{feedback}",
        "feeds.toml": '[[feeds]]\nurl = "https://feeds.example/a.xml"\n',
        "topics.toml": '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI"\n',
    }
    return parse_config(texts, environ={"SLACK_API_URL": slack.url})


@pytest.fixture
def friday_alert(tmp_path: Path) -> Iterator[tuple[SlackServer, feedback_world.Sent, Path]]:
    clock = feedback_world.FakeClock(MONDAY - timedelta(days=3))
    with SlackServer(clock=lambda: clock.now.timestamp()) as slack:
        before = feedback_world.World(tmp_path, slack, clock)
        try:
            sent = before.alert("AI rules story")
            before.react(sent, "-1", "U1")
        finally:
            before.close()
        yield slack, sent, before.path


def test_the_job_reads_reactions_and_queues_the_weekly_summary_once(
    friday_alert: tuple[SlackServer, feedback_world.Sent, Path], caplog: pytest.LogCaptureFixture
) -> None:
    slack, sent, db = friday_alert
    job = FeedbackJob(lambda: job_config(slack), TOKEN, str(db), threading.Event(),
                      clock=lambda: MONDAY)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="aggregator.feedback.job"):
        job()
        job()
    assert slack_labels(db) == [(sent.entry_id, "ai-policy", 0, "U1")]
    assert slack.count("conversations.history") == 2
    store = Store.open(db)
    try:
        [notice] = [r for r in store.outbox.rows() if r.alert.channel == "#ops"]
    finally:
        store.close()
    assert isinstance(notice.alert.payload, NoticePayload)
    assert "ai-policy 0 relevant, 1 not relevant" in notice.alert.payload.text
    assert sum("summary queued for #ops" in r.getMessage() for r in caplog.records) == 1


def test_the_job_without_a_token_or_when_disabled_reads_nothing(
    friday_alert: tuple[SlackServer, feedback_world.Sent, Path],
) -> None:
    slack, _, db = friday_alert
    stop = threading.Event()
    FeedbackJob(lambda: job_config(slack, ops=False), None, str(db), stop, lambda: MONDAY)()
    disabled = job_config(slack, "[feedback]\nenabled = false\n", ops=False)
    FeedbackJob(lambda: disabled, TOKEN, str(db), stop, lambda: MONDAY)()
    assert slack.count("conversations.history") == 0
    assert slack_labels(db) == []
    stop.set()  # a stopping service starts no run
    FeedbackJob(lambda: job_config(slack), TOKEN, str(db), stop, lambda: MONDAY)()
    assert slack.count("conversations.history") == 0


def test_a_failing_run_is_one_log_line_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SlackServer() as slack:
        (tmp_path / "db-is-a-directory").mkdir()
        job = FeedbackJob(lambda: job_config(slack), TOKEN, str(tmp_path / "db-is-a-directory"),
                          threading.Event(), lambda: MONDAY)  # fmt: skip
        with caplog.at_level(logging.INFO, logger="aggregator.feedback.job"):
            job()
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith("feedback: the read failed: cannot open database")
