"""The outbox state machine against a real local Slack server, real SQLite and an injected clock.

Time is a fake clock shared by the outbox and the server, so pacing and Retry-After are asserted
on the server's recorded receive times without sleeping.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config.model import Settings, TopicConfig
from aggregator.models import AlertState, EditPayload, Entry, ReplyItem, ReplyPayload, TopicMatch
from aggregator.notify import ConsoleSink, Outbox, make_sink
from aggregator.notify.outbox import STALE_SENDING
from aggregator.notify.render import metadata_for, render
from aggregator.notify.slack import SlackSink
from aggregator.store import Store
from aggregator.store.rows import OutboxRow
from tests.slackserver import TOKEN, Fault, SlackServer
from tests.storing import alert_item, store_items

START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
UNSENT = (AlertState.PENDING, AlertState.FAILED, AlertState.HELD, AlertState.SENDING)
SETTINGS = Settings(per_channel_interval=1.0, max_attempts=4)
TOPICS = (
    TopicConfig("ai-policy", "#ai-policy", "ai"),
    TopicConfig("executive-orders", "#executive-orders", "order"),
)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def monotonic(self) -> float:
        return (self.now - START).total_seconds()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def slack(clock: FakeClock) -> Iterator[SlackServer]:
    with SlackServer(clock=lambda: clock.now.timestamp()) as server:
        for topic in TOPICS:
            server.add_channel(topic.channel)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store.open(tmp_path / "outbox.db")
    yield db
    db.close()


def outbox(
    store: Store,
    slack: SlackServer,
    clock: FakeClock,
    topics: tuple[TopicConfig, ...] = TOPICS,
    settings: Settings = SETTINGS,
) -> Outbox:
    return Outbox(
        store,
        SlackSink(TOKEN, slack.url, timeout=5),
        settings,
        topics,
        clock=clock,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        retry_base=10,
        pause_base=5,
        pause_cap=60,
    )


_serial = iter(range(1, 10**6))


def add_alerts(
    store: Store, count: int, channel: str = "#ai-policy", topic: str = "ai-policy"
) -> list[int]:
    """Queue ``count`` alerts the way the pipeline does (one transaction with their entries)."""
    batch = []
    for _ in range(count):
        n = next(_serial)
        entry = Entry(
            feed_url="https://feeds.example/a",
            guid=f"g{n}",
            link=f"https://news.example/{n}",
            canonical_url=f"https://news.example/{n}",
            title=f"Story {n} about AI rules",
            summary="Lawmakers debated AI regulation today.",
            published=START,
            content_hash=f"h{n}",
            source="Example News",
        )
        batch.append(alert_item(entry, topic, channel, "AI"))
    store_items(store, batch, START)
    rows = store.outbox.rows(AlertState.PENDING)
    return [r.alert.id for r in rows][-count:]


def states(store: Store) -> dict[int, str]:
    return {r.alert.id: r.state for r in store.outbox.rows()}


def drain(box: Outbox, clock: FakeClock, rounds: int = 60, step: float = 1.0) -> None:
    """Run the loop the way the service does, letting fake time pass between passes."""
    for _ in range(rounds):
        box.deliver_due(clock())
        if not box.store.outbox.rows(*UNSENT):
            return
        clock.advance(step)


def test_happy_path_sends_each_alert_once(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    ids = add_alerts(store, 2) + add_alerts(store, 1, "#executive-orders", "executive-orders")
    outcomes = outbox(store, slack, clock).deliver_due(clock())
    assert [o.state for o in outcomes] == ["sent"] * 3
    assert slack.alert_counts() == dict.fromkeys(ids, 1)
    row = store.outbox.row(ids[0])
    assert row is not None and row.state == "sent" and row.slack_ts
    assert row.slack_channel is not None and row.slack_channel.startswith("C")
    assert row.alert.attempts == 1


def test_pacing_one_message_per_second_per_channel(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    add_alerts(store, 8)
    add_alerts(store, 4, "#executive-orders", "executive-orders")
    outbox(store, slack, clock).deliver_due(clock())
    for channel, count in (("#ai-policy", 8), ("#executive-orders", 4)):
        times = [p.at for p in slack.posts(channel)]
        assert len(times) == count
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 1.0 - 1e-6
    # channels do not wait for each other: the second channel finishes long before the first
    assert slack.posts("#executive-orders")[-1].at < slack.posts("#ai-policy")[-1].at
    assert clock.monotonic() == pytest.approx(7.0)


def test_pacing_survives_a_new_outbox(store: Store, slack: SlackServer, clock: FakeClock) -> None:
    add_alerts(store, 1)
    outbox(store, slack, clock).deliver_due(clock())
    add_alerts(store, 1)
    outbox(store, slack, clock).deliver_due(clock())  # a restarted process, same second
    first, second = (p.at for p in slack.posts())
    assert second - first >= 1.0 - 1e-6


def test_deadline_stops_the_loop(store: Store, slack: SlackServer, clock: FakeClock) -> None:
    add_alerts(store, 6)
    outcomes = outbox(store, slack, clock).deliver_due(clock(), deadline=2.5)
    assert len(outcomes) == 3
    assert len(slack.posts()) == 3
    assert sorted(states(store).values()).count("pending") == 3


def test_429_waits_exactly_retry_after(store: Store, slack: SlackServer, clock: FakeClock) -> None:
    first, second = add_alerts(store, 2)
    slack.script("chat.postMessage", Fault.rate_limited(7))
    box = outbox(store, slack, clock)
    outcomes = box.deliver_due(clock())
    assert [o.state for o in outcomes] == ["failed"]  # the channel is paused, the second waits
    assert "ratelimited" in outcomes[0].reason
    row = store.outbox.row(first)
    assert row is not None and row.alert.attempts == 0  # a 429 is not the message's fault
    clock.advance(1.5)
    assert box.deliver_due(clock()) == []  # 5.5 s left: more than a pass waits inline
    assert slack.count("chat.postMessage") == 1
    clock.advance(5)
    box.deliver_due(clock())  # half a second left: waited out, then both go
    assert slack.alert_counts() == {first: 1, second: 1}
    retry_at = slack.posts()[0].at
    assert retry_at - START.timestamp() == pytest.approx(7.0)


def test_short_retry_after_is_waited_out_in_one_pass(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    ids = add_alerts(store, 3)
    slack.script("chat.postMessage", None, Fault.rate_limited(2))
    outcomes = outbox(store, slack, clock).deliver_due(clock())
    assert [o.state for o in outcomes] == ["sent", "failed", "sent", "sent"]
    assert slack.alert_counts() == dict.fromkeys(ids, 1)
    times = [p.at - START.timestamp() for p in slack.posts()]
    assert times == pytest.approx([0.0, 3.0, 4.0])  # 1 s pacing, then exactly Retry-After


def test_429_other_channels_keep_flowing(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    add_alerts(store, 1)
    other = add_alerts(store, 2, "#executive-orders", "executive-orders")
    slack.script("chat.postMessage", Fault.rate_limited(60))
    outbox(store, slack, clock).deliver_due(clock())
    assert {p.alert_ids[0] for p in slack.posts()} == set(other)


def test_in_body_rate_limited_and_retry_after_cap(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [alert] = add_alerts(store, 1)
    slack.script("chat.postMessage", Fault.in_body_rate_limited(5000))
    box = outbox(store, slack, clock)
    box.deliver_due(clock())
    row = store.outbox.row(alert)
    assert row is not None and row.state == "failed"
    assert row.next_attempt_at == START + timedelta(minutes=15)


@pytest.mark.parametrize("fault", [Fault.status(500), Fault.status(503), Fault.drop()])
def test_outage_pauses_channel_then_delivers_once(
    store: Store, slack: SlackServer, clock: FakeClock, fault: Fault
) -> None:
    ids = add_alerts(store, 5)
    slack.script("chat.postMessage", fault, fault, fault)
    box = outbox(store, slack, clock)
    outcomes = box.deliver_due(clock())
    assert [o.state for o in outcomes] == ["failed"]  # one probe, not every message in turn
    assert slack.count("chat.postMessage") == 1
    drain(box, clock)
    assert slack.alert_counts() == dict.fromkeys(ids, 1)
    assert set(states(store).values()) == {"sent"}
    assert slack.count("chat.postMessage") == 5 + 3
    # the probe's earlier sends were uncertain, so history was checked before re-sending
    assert slack.count("conversations.history") >= 3


def test_outage_never_kills_an_alert(store: Store, slack: SlackServer, clock: FakeClock) -> None:
    [alert] = add_alerts(store, 1)
    slack.script("chat.postMessage", *[Fault.status(503)] * 12)
    box = outbox(store, slack, clock)
    drain(box, clock, rounds=2000, step=5)
    row = store.outbox.row(alert)
    assert row is not None and row.state == "sent" and row.alert.attempts == 13
    assert slack.alert_counts() == {alert: 1}


def test_lost_response_is_not_sent_twice(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    first, second = add_alerts(store, 2)
    slack.script("chat.postMessage", Fault.accept_then_drop())
    box = outbox(store, slack, clock)
    box.deliver_due(clock())
    assert states(store)[first] == "failed"
    drain(box, clock)
    assert slack.alert_counts() == {first: 1, second: 1}
    row = store.outbox.row(first)
    assert row is not None and row.slack_ts == slack.posts()[0].ts


@pytest.mark.parametrize(
    "code",
    ["channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "invalid_blocks"],
)
def test_permanent_error_is_dead_with_reason(
    store: Store, slack: SlackServer, clock: FakeClock, code: str
) -> None:
    [bad] = add_alerts(store, 1)
    [good] = add_alerts(store, 1, "#executive-orders", "executive-orders")
    slack.script("chat.postMessage", Fault.error(code))
    outcomes = outbox(store, slack, clock).deliver_due(clock())
    by_id = {o.alert_id: o for o in outcomes}
    assert by_id[bad].state == "dead" and by_id[bad].reason.startswith(code)
    assert by_id[good].state == "sent"
    row = store.outbox.row(bad)
    assert row is not None and row.state == "dead" and code in row.last_error


def test_unknown_error_dies_after_max_attempts(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [alert] = add_alerts(store, 1)
    slack.script("chat.postMessage", *[Fault.error("weird_error")] * 10)
    box = outbox(store, slack, clock)
    drain(box, clock, rounds=500, step=10)
    row = store.outbox.row(alert)
    assert row is not None and row.state == "dead"
    assert row.last_error.startswith("gave up after 4 attempts")
    assert slack.count("chat.postMessage") == SETTINGS.max_attempts


def test_recover_finds_a_message_slack_already_has(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [delivered, missing] = add_alerts(store, 2)
    rows = store.outbox.rows(AlertState.PENDING)
    store.outbox.claim(rows, clock())  # the process died after claiming both...
    posted = SlackSink(TOKEN, slack.url).post("#ai-policy", render(rows[0].alert))  # ...one landed
    box = outbox(store, slack, clock)
    outcomes = box.recover(clock())
    assert {o.alert_id: o.state for o in outcomes} == {delivered: "sent", missing: "pending"}
    row = store.outbox.row(delivered)
    assert row is not None and row.slack_ts == posted.ts
    drain(box, clock)
    assert slack.alert_counts() == {delivered: 1, missing: 1}


def test_recover_when_history_is_unreachable(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [alert] = add_alerts(store, 1)
    store.outbox.claim(store.outbox.rows(AlertState.PENDING), clock())
    slack.script("conversations.list", Fault.status(503))
    box = outbox(store, slack, clock)
    [outcome] = box.recover(clock())
    assert outcome.state == "failed"
    drain(box, clock)
    assert slack.alert_counts() == {alert: 1}


def test_digest_collects_stories_until_digest_time(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    digest = replace(
        TOPICS[0], delivery="digest", digest_at=("08:00",), timezone="America/New_York"
    )
    ids = add_alerts(store, 3)
    box = outbox(store, slack, clock, topics=(digest, TOPICS[1]))
    outcomes = box.deliver_due(clock())
    assert {o.state for o in outcomes} == {"held"}
    clock.now = datetime(2026, 11, 28, 12, 59, tzinfo=UTC)  # 07:59 in New York
    add_alerts(store, 1)
    box.deliver_due(clock())
    assert slack.posts() == []
    clock.now = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    box.deliver_due(clock())
    [post] = slack.posts()
    assert sorted(post.alert_ids) == [*ids, ids[-1] + 1]
    assert "Digest: ai-policy: 4 stories" in post.blocks[0]["text"]["text"]
    assert {r.slack_ts for r in store.outbox.rows()} == {post.ts}


def test_hourly_digest_split_across_messages(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    digest = replace(TOPICS[0], delivery="digest", digest_every=3600.0)
    ids = add_alerts(store, 120)
    box = outbox(store, slack, clock, topics=(digest,))
    box.deliver_due(clock())
    clock.now = START + timedelta(hours=1)
    box.deliver_due(clock())
    posts = slack.posts()
    assert len(posts) >= 3
    assert sorted(i for p in posts for i in p.alert_ids) == ids
    times = [p.at for p in posts]
    assert all(b - a >= 1.0 - 1e-6 for a, b in itertools.pairwise(times))


def test_quiet_hours_hold_unless_urgent(store: Store, slack: SlackServer, clock: FakeClock) -> None:
    quiet = replace(TOPICS[0], quiet_hours=("22:00", "07:00"))
    urgent = replace(TOPICS[1], quiet_hours=("22:00", "07:00"), urgent=True)
    clock.now = datetime(2026, 11, 28, 23, 30, tzinfo=UTC)
    [held] = add_alerts(store, 1)
    [loud] = add_alerts(store, 1, "#executive-orders", "executive-orders")
    box = outbox(store, slack, clock, topics=(quiet, urgent))
    outcomes = {o.alert_id: o for o in box.deliver_due(clock())}
    assert outcomes[held].state == "held" and "quiet" in outcomes[held].reason
    assert outcomes[loud].state == "sent"
    clock.now = datetime(2026, 11, 29, 6, 59, tzinfo=UTC)
    box.deliver_due(clock())
    assert slack.alert_counts() == {loud: 1}
    clock.now = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    box.deliver_due(clock())
    assert slack.alert_counts() == {loud: 1, held: 1}


def test_claim_is_compare_and_set(store: Store, clock: FakeClock) -> None:
    add_alerts(store, 2)
    rows = store.outbox.due(clock())
    assert [r.state for r in store.outbox.claim(rows, clock())] == ["sending", "sending"]
    assert store.outbox.claim(rows, clock()) == []  # a second process read the same rows


def test_console_sink_without_token(store: Store, clock: FakeClock) -> None:
    [alert] = add_alerts(store, 1)
    sink = make_sink(SETTINGS, None)
    assert isinstance(sink, ConsoleSink)
    out = io.StringIO()
    box = Outbox(store, ConsoleSink(out), SETTINGS, TOPICS, clock=clock, sleep=clock.sleep)
    [outcome] = box.deliver_due(clock())
    assert outcome.state == "sent" and outcome.alert_id == alert
    assert "Story" in out.getvalue()


def test_metadata_marks_every_post(store: Store, slack: SlackServer, clock: FakeClock) -> None:
    [alert] = add_alerts(store, 1)
    outbox(store, slack, clock).deliver_due(clock())
    assert slack.posts()[0].metadata == metadata_for([alert])


def test_ops_report_retry_and_slack_test(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    from aggregator.notify.ops import format_checks, outbox_report, retry, slack_test

    [dead] = add_alerts(store, 1)
    [waiting] = add_alerts(store, 1, "#executive-orders", "executive-orders")
    slack.script("chat.postMessage", Fault.error("not_in_channel"), Fault.status(503))
    box = outbox(store, slack, clock)
    box.deliver_due(clock())
    report = outbox_report(store, clock())
    assert f"#{dead} dead" in report and "the bot is not in #ai-policy: invite it" in report
    assert f"#{waiting} failed" in report and "HTTP 503" in report
    assert "channel #executive-orders paused" in report
    assert retry(store, clock()) == "give alert ids or --dead"
    assert retry(store, clock(), dead=True) == "re-queued 1 dead alert"
    clock.advance(120)
    drain(box, clock)
    assert slack.alert_counts() == {dead: 1, waiting: 1}
    assert "nothing is waiting" in outbox_report(store, clock())

    slack.fail_channel("#ai-policy", "not_in_channel")
    checks = slack_test(SlackSink(TOKEN, slack.url), TOPICS, clock())
    text = format_checks(checks)
    assert "#ai-policy: FAILED: not_in_channel: the bot is not in #ai-policy: invite it" in text
    assert "#executive-orders: ok: posted as alertbot" in text
    bad = slack_test(SlackSink("xoxb-wrong", slack.url), TOPICS, clock())
    assert all(not c.ok and "Slack rejected the token" in c.message for c in bad)


def test_stuck_sending_rows_are_settled_by_the_loop(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [alert] = add_alerts(store, 1)
    store.outbox.claim(store.outbox.rows(AlertState.PENDING), clock())  # a send that never finished
    box = outbox(store, slack, clock)
    clock.advance(30)
    assert box.deliver_due(clock()) == []  # may still be in flight in another process
    assert box.recover(clock(), older_than=120) == []
    clock.advance(100)
    box.deliver_due(clock())
    assert slack.alert_counts() == {alert: 1}


def test_start_up_settles_what_dead_senders_left_and_leaves_a_live_senders_send(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    """A row in ``sending`` names the process sending it. At start the service settles the
    rows of processes that are gone (reaped or not), but not the one another live process
    (``poll --once``) is sending right now, until that one is stale."""
    ids = add_alerts(store, 3)
    rows = store.outbox.rows(AlertState.PENDING)
    host = socket.gethostname()
    # alive until we close its stdin (or kill it)
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    unreaped = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, unreaped.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie
    try:
        for row, proc in zip(rows, (alive, exited, unreaped), strict=True):
            store.outbox.claim([row], clock(), sender=f"{host}:{proc.pid}")
        box = outbox(store, slack, clock)
        settled = box.recover(clock())
        assert {o.alert_id: o.state for o in settled} == {ids[1]: "pending", ids[2]: "pending"}
        assert states(store)[ids[0]] == "sending"
        clock.advance(STALE_SENDING + 1)  # no live send takes this long
        [late] = box.recover(clock())
        assert (late.alert_id, late.state) == (ids[0], "pending")
    finally:
        assert alive.stdin is not None
        alive.stdin.close()  # its read ends: it exits
        alive.wait()
        unreaped.wait()


def test_thread_reply_and_edit_follow_their_parent(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [parent] = add_alerts(store, 1)
    row = store.outbox.row(parent)
    assert row is not None
    item = ReplyItem("Ars", "Same story <!here>", "https://a.example/1")
    items = ReplyPayload(parent, (item,))
    reply = store.outbox.queue_reply(row, items, clock(), f"reply:{parent}:1")
    edit = store.outbox.queue_edit(row, EditPayload(parent), clock())
    assert reply is not None and edit is not None
    assert store.outbox.queue_reply(row, items, clock(), f"reply:{parent}:1") is None
    slack.script("chat.postMessage", None, Fault.accept_then_drop())
    box = outbox(store, slack, clock)
    drain(box, clock)
    [top, threaded] = slack.posts()
    assert top.alert_ids == [parent] and threaded.alert_ids == [reply]
    assert threaded.thread_ts == top.ts  # the lost reply was found in the thread, not re-sent
    assert "Also covered by Ars" in threaded.text and "<!here>" not in threaded.text
    [update] = slack.updates()
    assert update.ts == top.ts and update.channel == top.channel_id
    assert set(states(store).values()) == {"sent"}


def test_a_reply_whose_parent_another_loop_is_posting_follows_it_at_once(
    store: Store, slack: SlackServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A story's alert and its first reply are often queued together. When the other loop
    (``poll --once`` beside the service) had the alert in flight, this loop put the reply off
    for a whole retry (30 s in the service) although the alert was posted a moment later."""
    settings = replace(SETTINGS, reply_batch=0.0)
    [parent] = add_alerts(store, 1)
    row = store.outbox.row(parent)
    assert row is not None
    item = ReplyItem("Ars", "Same story", "https://a.example/1")
    reply = store.outbox.queue_reply(row, ReplyPayload(parent, (item,)), clock(), "reply:1")
    other = Store.open(tmp_path / "outbox.db")  # the other loop, sending the alert right now
    try:
        [in_flight] = other.outbox.claim([row], clock(), sender=f"{socket.gethostname()}:1")
        box = outbox(store, slack, clock, settings=settings)
        box.deliver_due(clock())  # the reply waits, and the pass ends
        other.outbox.mark_sent([in_flight], clock(), ts="1795860000.000100", channel_id="C1")
    finally:
        other.close()
    clock.advance(1)
    box.deliver_due(clock())
    assert slack.alert_counts() == {reply: 1}
    [posted] = slack.posts()
    assert posted.thread_ts == "1795860000.000100"


def test_an_edit_older_than_one_already_sent_is_never_applied_after_it(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    """An edit shows the story whole, so the newest edit is the one that must stay. A service
    killed while its edit was in flight left that row in ``sending``; ``poll --once`` beside it
    queued a newer edit (more outlets) as a row of its own and sent it; the restarted service
    then sent the old edit again, and the message went back to the older coverage."""
    [parent] = add_alerts(store, 1)
    box = outbox(store, slack, clock)
    box.deliver_due(clock())
    row = store.outbox.row(parent)
    assert row is not None
    old = store.outbox.queue_edit(row, EditPayload(parent, outlets=2, updated=True), clock())
    exited = subprocess.Popen([sys.executable, "-c", "pass"])  # the killed service
    exited.wait()
    [in_flight] = store.outbox.rows(ids=[old])
    store.outbox.claim([in_flight], clock(), sender=f"{socket.gethostname()}:{exited.pid}")
    new = store.outbox.queue_edit(row, EditPayload(parent, outlets=3), clock())
    assert new != old  # the old one was in flight: it could not absorb this one
    clock.advance(2)
    box.deliver_due(clock())  # the poll sends the new edit
    box.recover(clock())  # the service starts again
    drain(box, clock)
    [top] = slack.posts()
    shown = slack.message(top.channel_id, top.ts)
    assert shown is not None and "covered by 3 outlets" in str(shown["blocks"])
    assert "_updated_" in str(shown["blocks"])  # what the old edit said still shows
    assert states(store) == {parent: "sent", old: "sent", new: "sent"}


def test_reply_to_a_dead_parent_dies_too(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [parent] = add_alerts(store, 1)
    row = store.outbox.row(parent)
    assert row is not None
    reply = store.outbox.queue_reply(row, ReplyPayload(parent), clock(), "r")
    slack.script("chat.postMessage", Fault.error("is_archived"))
    outbox(store, slack, clock).deliver_due(clock())
    assert states(store) == {parent: "dead", reply: "dead"}


@pytest.mark.parametrize(
    ("now", "digest_at", "zone", "expected"),
    [
        # 08:00 and 17:00 in New York, standard time (UTC-5)
        (datetime(2026, 11, 28, 10, 0, tzinfo=UTC), ("08:00", "17:00"), "America/New_York",
         datetime(2026, 11, 28, 13, 0, tzinfo=UTC)),
        (datetime(2026, 11, 28, 13, 0, tzinfo=UTC), ("08:00", "17:00"), "America/New_York",
         datetime(2026, 11, 28, 22, 0, tzinfo=UTC)),
        (datetime(2026, 11, 28, 23, 0, tzinfo=UTC), ("08:00",), "America/New_York",
         datetime(2026, 11, 29, 13, 0, tzinfo=UTC)),
        # across the spring-forward change: 08:00 EDT is 12:00 UTC
        (datetime(2026, 3, 7, 20, 0, tzinfo=UTC), ("08:00",), "America/New_York",
         datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_next_digest_times(
    now: datetime, digest_at: tuple[str, ...], zone: str, expected: datetime
) -> None:
    from aggregator.notify.windows import next_digest

    topic = replace(TOPICS[0], delivery="digest", digest_at=digest_at, timezone=zone)
    assert next_digest(topic, now) == expected


def test_hourly_digest_and_quiet_window_edges() -> None:
    from aggregator.notify.windows import hold_for, next_digest, quiet_until

    hourly = replace(TOPICS[0], delivery="digest", digest_every=3600.0)
    assert next_digest(hourly, START + timedelta(minutes=5)) == START + timedelta(hours=1)
    quiet = replace(TOPICS[0], quiet_hours=("22:00", "07:00"), timezone="Europe/Berlin")
    night = datetime(2026, 11, 28, 21, 30, tzinfo=UTC)  # 22:30 in Berlin
    assert quiet_until(quiet, night) == datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    assert quiet_until(quiet, datetime(2026, 11, 29, 6, 0, tzinfo=UTC)) is None
    assert quiet_until(quiet, datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) is None
    daytime = replace(TOPICS[0], quiet_hours=("12:00", "14:00"))
    assert quiet_until(daytime, datetime(2026, 11, 28, 13, 0, tzinfo=UTC)) == datetime(
        2026, 11, 28, 14, 0, tzinfo=UTC
    )
    # one real-time topic in the message wins over a digest one; an unknown topic is real-time
    both = (TopicMatch("ai-policy", ()), TopicMatch("executive-orders", ()))
    assert hold_for(both, (hourly, TOPICS[1]), START) is None
    assert hold_for((TopicMatch("gone", ()),), (hourly,), START) is None
    held = hold_for(both[:1], (hourly,), START)
    assert held is not None and held.mode == "digest" and held.label == "ai-policy"


def test_make_sink_picks_slack_with_a_token() -> None:
    assert isinstance(make_sink(SETTINGS, "xoxb-1"), SlackSink)
    assert isinstance(make_sink(SETTINGS, None), ConsoleSink)


def test_replies_are_batched_one_per_story_per_window(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    [parent] = add_alerts(store, 1)
    box = outbox(store, slack, clock, settings=replace(SETTINGS, reply_batch=300.0))
    box.deliver_due(clock())
    row = store.outbox.row(parent)
    assert row is not None

    def outlet(n: int, primary: bool = False) -> int:
        item = ReplyItem(f"Outlet {n}", f"Take {n}", f"https://o{n}.example/", primary)
        reply = store.outbox.queue_reply(row, ReplyPayload(parent, (item,)), clock(), f"r{n}")
        assert reply is not None
        return reply

    first = outlet(1)
    box.deliver_due(clock())  # the first reply goes at once
    clock.advance(10)
    later = [outlet(2), outlet(3, primary=True)]
    outcomes = box.deliver_due(clock())
    assert {o.state for o in outcomes} == {"held"}
    clock.advance(280)
    assert box.deliver_due(clock()) == []
    clock.advance(20)
    box.deliver_due(clock())
    top, one, batch = slack.posts()
    assert one.alert_ids == [first] and one.thread_ts == top.ts
    assert sorted(batch.alert_ids) == later and batch.thread_ts == top.ts
    assert "Also covered by Outlet 2, Outlet 3" in batch.blocks[0]["text"]["text"]
    assert "Official text" in batch.blocks[0]["text"]["text"]
    assert batch.at - one.at >= 300.0


def test_a_reply_another_loop_already_sent_is_not_sent_again(
    store: Store, slack: SlackServer, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Two delivery loops (``run`` and ``poll --once``) read the same due reply; one sends it.
    The other, acting on what it read, must not attach it to its thread and post it again."""
    settings = replace(SETTINGS, reply_batch=0.0)
    [parent] = add_alerts(store, 1)
    outbox(store, slack, clock, settings=settings).deliver_due(clock())
    row = store.outbox.row(parent)
    assert row is not None
    item = ReplyItem("Ars", "Same story", "https://a.example/1")
    reply = store.outbox.queue_reply(row, ReplyPayload(parent, (item,)), clock(), "reply:1")
    other = Store.open(tmp_path / "outbox.db")  # the other process's connection
    try:
        stale = other.outbox.due(clock())  # it reads the reply, then is slower than this loop
        outbox(store, slack, clock, settings=settings).deliver_due(clock())
        assert slack.alert_counts()[reply] == 1
        monkeypatch.setattr(other.outbox, "due", lambda now, limit=500: stale)
        outcomes = outbox(other, slack, clock, settings=settings).deliver_due(clock())
    finally:
        other.close()
    assert outcomes == []
    assert slack.alert_counts() == {parent: 1, reply: 1}
    assert states(store) == {parent: "sent", reply: "sent"}


def stale_read(monkeypatch: pytest.MonkeyPatch, store: Store, rows: list[OutboxRow]) -> None:
    """The loop's next read of due rows returns ``rows``, as read earlier; later reads are live."""
    live = store.outbox.due
    reads = iter([rows])
    monkeypatch.setattr(store.outbox, "due", lambda now, limit=500: next(reads, None) or live(now))


def test_a_grouped_reply_another_loop_took_part_of_is_not_posted_twice(
    store: Store, slack: SlackServer, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """One loop read two retried replies of a story (one message lists both); the other loop, which
    had read only one of them, claimed and posted it meanwhile. Claiming the rest is not enough:
    the message still lists the reply already posted, which was posted twice."""
    settings = replace(SETTINGS, reply_batch=0.0)
    [parent] = add_alerts(store, 1)
    outbox(store, slack, clock, settings=settings).deliver_due(clock())
    row = store.outbox.row(parent)
    assert row is not None
    for n in (1, 2):  # each reply's first send fails, a second apart: each retries on its own
        item = ReplyItem("Ars", f"Same story {n}", f"https://a.example/{n}")
        store.outbox.queue_reply(row, ReplyPayload(parent, (item,)), clock(), f"reply:{n}")
        slack.script("chat.postMessage", Fault.error("unexpected_failure"))
        outbox(store, slack, clock, settings=settings).deliver_due(clock())
        clock.advance(1)
    retried = store.outbox.rows(AlertState.FAILED)
    assert len(retried) == 2 and all(r.alert.thread_ts for r in retried)
    other = Store.open(tmp_path / "outbox.db")  # the other process's connection
    try:
        one, two = sorted(r.next_attempt_at for r in retried)
        clock.now = one
        early = store.outbox.due(clock())  # this loop reads one reply, then is slow
        clock.now = two
        both = other.outbox.due(clock())  # the other loop reads both: one message lists them
        assert len(early) == 1 and len(both) == 2
        stale_read(monkeypatch, store, early)  # the slow loop sends what it read, then stops
        slow = outbox(store, slack, clock, settings=settings)
        slow.deliver_due(clock(), deadline=clock.monotonic() + 0.5)
        assert len(slack.posts()) == 2
        stale_read(monkeypatch, other, both)
        outbox(other, slack, clock, settings=settings).deliver_due(clock())
    finally:
        other.close()
    drain(outbox(store, slack, clock, settings=settings), clock)
    first, second = (r.alert.id for r in both)
    assert slack.alert_counts() == {parent: 1, first: 1, second: 1}
    assert states(store) == {parent: "sent", first: "sent", second: "sent"}


def test_a_channel_whose_pause_ends_during_a_long_pass_is_served_in_that_pass(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    """A pause that ends while another channel is still being paced through its backlog used to
    wait for the next cycle (about 55 s more, seen under load)."""
    busy = add_alerts(store, 8)  # #ai-policy: eight seconds of pacing at one a second
    waiting = add_alerts(store, 2, "#executive-orders", "executive-orders")
    store.outbox.pause("#executive-orders", START + timedelta(seconds=3), "Slack asked to wait")
    outcomes = outbox(store, slack, clock).deliver_due(clock())
    assert {o.alert_id for o in outcomes if o.state == "sent"} == set(busy + waiting)
    first = slack.posts("#executive-orders")[0]
    assert first.at - START.timestamp() == pytest.approx(3.0, abs=1.01)


def test_a_possibly_relevant_item_waits_for_the_topics_review_time_in_a_digest(
    store: Store, slack: SlackServer, clock: FakeClock
) -> None:
    """START is 10:00 UTC; the topic's review times are 09:00 and 17:00 UTC by default."""
    from aggregator.cycle.plan import NewEntry, PlannedAlert
    from tests.storing import plan_of

    items = []
    for n, review in ((1, True), (2, True), (3, False)):
        link = f"https://r.example/{n}"
        entry = Entry("https://feeds.example/a", f"r{n}", link, link, f"Maybe story {n}", "",
                      START, f"rh{n}", "Wire")  # fmt: skip
        match = TopicMatch("ai-policy", ("AI",), score=0.6 if review else 0.9)
        alert = PlannedAlert("#ai-policy", (match,), review)
        items.append(NewEntry(entry, (match,), n, True, (alert,)))
    store.apply(plan_of(items), START)
    keys = [r[0] for r in store.db.execute("SELECT dedupe_key FROM alerts ORDER BY id")]
    assert keys == ["review:1:#ai-policy", "review:2:#ai-policy", "alert:3:#ai-policy"]
    box = outbox(store, slack, clock)
    outcomes = box.deliver_due(clock())
    assert sorted(o.state for o in outcomes) == ["held", "held", "sent"]  # only the alert now
    clock.advance(7 * 3600)  # 17:00
    box.deliver_due(clock())
    top, digest = slack.posts()
    assert "Maybe story 3" in top.text
    assert "possibly relevant: ai-policy: 2 stories" in digest.text
    assert sorted(digest.alert_ids) == [1, 2]
