"""Reading the team's reactions on alerts as labels: real SQLite, real delivery to the local Slack
stand-in, people reacting there, and the reader's paced conversations.history calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.config.model import FeedbackSettings
from aggregator.feedback.read import READ_PACE, ReadReport, read_reactions
from aggregator.feedback.votes import decide
from aggregator.models import AlertState, Seen
from aggregator.notify.render import Message, metadata_for
from aggregator.store import Store
from aggregator.store.labels import LabelSource
from tests import waiting
from tests.feedback_world import FEEDBACK, START, TOPICS, FakeClock, World
from tests.slackserver import Fault, SlackServer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def slack(clock: FakeClock) -> Iterator[SlackServer]:
    with SlackServer(clock=lambda: clock.now.timestamp()) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, slack: SlackServer, clock: FakeClock) -> Iterator[World]:
    w = World(tmp_path, slack, clock)
    yield w
    w.close()


def read(world: World, settings: FeedbackSettings = FEEDBACK) -> ReadReport:
    """One read at the fake clock's now, paced on the fake clock."""
    clock = world.clock
    return read_reactions(
        world.store, world.sink, settings, clock.now, monotonic=clock.monotonic, wait=clock.wait
    )


# -- what a reaction means ------------------------------------------------------------------------


def test_a_reaction_is_a_label_with_the_user_id_and_time(world: World) -> None:
    sent = world.alert("EU adopts AI rules")
    world.react(sent, "+1", "U1")
    world.react(sent, "eyes", "U2")  # means nothing
    world.clock.sleep(60)
    report = read(world)
    assert (report.alerts, report.found, report.changed, report.calls) == (1, 1, 1, 1)
    [label] = world.store.labels.of_entry(sent.entry_id)
    assert (label.topic, label.label, label.source, label.who) == ("ai-policy", 1, "slack", "U1")
    assert label.at == world.clock.now
    # a second read with nothing new changes nothing, and keeps the time
    world.clock.sleep(900)
    assert read(world).changed == 0
    assert world.store.labels.of_entry(sent.entry_id)[0].at == label.at


def test_added_changed_and_removed(world: World) -> None:
    sent = world.alert("AI safety bill advances")
    world.react(sent, "white_check_mark", "U1")
    read(world)
    assert world.labels(sent) == {"U1": 1}
    world.react(sent, "x", "U1")  # U1 adds "not relevant" and keeps the check mark: latest wins
    read(world)
    assert world.labels(sent) == {"U1": 0}
    world.unreact(sent, "x", "U1")  # back to the check mark alone
    read(world)
    assert world.labels(sent) == {"U1": 1}
    world.unreact(sent, "white_check_mark", "U1")  # a removed reaction removes the label
    report = read(world)
    assert report.changed == 1
    assert world.labels(sent) == {}
    assert world.resolved(sent) == "none"


def test_both_kinds_seen_at_once_are_unsure_until_one_goes(world: World) -> None:
    sent = world.alert("AI rules, or not")
    world.react(sent, "+1", "U1")
    world.react(sent, "-1", "U1")
    read(world)
    assert world.labels(sent) == {"U1": None}
    world.unreact(sent, "+1", "U1")
    read(world)
    assert world.labels(sent) == {"U1": 0}


def test_each_users_reaction_counts_once_and_aliases_and_skin_tones_count(world: World) -> None:
    sent = world.alert("AI office opens")
    world.react(sent, "+1", "U1")
    world.react(sent, "white_check_mark", "U1")  # two relevant reactions: one vote
    world.react(sent, "thumbsup::skin-tone-3", "U2")  # Slack's alias, with a skin tone
    world.react(sent, "thumbsdown", "U3")
    read(world)
    assert world.labels(sent) == {"U1": 1, "U2": 1, "U3": 0}
    [resolved] = world.store.labels.resolved("ai-policy", [sent.entry_id])
    assert (resolved.relevant, resolved.not_relevant, resolved.label) == (2, 1, 1)


def test_disagreement_majority_wins_and_a_tie_is_unsure(world: World) -> None:
    majority = world.alert("AI chips export rule")
    tie = world.alert("AI in schools guidance")
    world.react(majority, "-1", "U1", "U2")
    world.react(majority, "+1", "U3")
    world.react(tie, "+1", "U1")
    world.react(tie, "-1", "U2")
    read(world)
    assert world.resolved(majority) == 0
    assert world.resolved(tie) is None
    world.react(tie, "+1", "U3")  # a third person settles it
    read(world)
    assert world.resolved(tie) == 1


def test_configured_reactions_replace_the_defaults(world: World) -> None:
    sent = world.alert("AI agency budget")
    world.react(sent, "+1", "U1")
    world.react(sent, "star", "U2")
    settings = replace(FEEDBACK, relevant=("star",), not_relevant=("no_entry",))
    read(world, settings=settings)
    assert world.labels(sent) == {"U2": 1}


def test_an_alert_with_two_topics_labels_both(world: World) -> None:
    sent = world.alert("Executive order on AI", "ai-policy", "executive-orders")
    world.react(sent, "-1", "U1")
    read(world)
    assert world.labels(sent, "ai-policy") == {"U1": 0}
    assert world.labels(sent, "executive-orders") == {"U1": 0}
    world.unreact(sent, "-1", "U1")
    read(world)
    assert world.store.labels.of_entry(sent.entry_id) == []


def test_labels_from_other_sources_are_left_alone(world: World) -> None:
    sent = world.alert("AI hearing scheduled")
    world.store.labels.set(sent.entry_id, "ai-policy", 0, LabelSource.CLI, "cli", world.clock.now)
    world.react(sent, "+1", "U1")
    read(world)
    world.unreact(sent, "+1", "U1")
    read(world)
    assert [(x.source, x.label) for x in world.store.labels.of_entry(sent.entry_id)] == [("cli", 0)]


# -- what is read ---------------------------------------------------------------------------------


def test_alerts_older_than_the_window_are_not_read_and_keep_their_labels(world: World) -> None:
    old = world.alert("Old AI story")
    world.react(old, "+1", "U1")
    read(world)
    assert world.labels(old) == {"U1": 1}
    world.clock.sleep(FEEDBACK.window + 3600)
    fresh = world.alert("New AI story")
    world.unreact(old, "+1", "U1")
    world.react(old, "-1", "U2")
    world.react(fresh, "-1", "U2")
    slack = world.slack
    before = len(slack.calls)
    report = read(world)
    assert (report.alerts, report.found, report.calls) == (1, 1, 1)
    assert world.labels(old) == {"U1": 1}  # not read: the old labels stay
    assert world.labels(fresh) == {"U2": 0}
    [call] = [c for c in slack.calls[before:] if c.method == "conversations.history"]
    assert float(call.params["oldest"]) == float(fresh.ts) == float(call.params["latest"])


def test_digest_messages_and_thread_replies_are_not_labels(world: World) -> None:
    # A digest: one message carrying two alerts (as the outbox marks a digest's rows sent).
    first = world.queue("AI digest item one", ("ai-policy",))
    second = world.queue("AI digest item two", ("ai-policy",))
    rows = [r for r in world.store.outbox.rows(AlertState.PENDING)]
    ids = [r.alert.id for r in rows]
    message = Message("digest", (), metadata_for(ids), tuple(ids))
    posted = world.sink.post("#ai-policy", message)
    claimed = world.store.outbox.claim(rows, world.clock.now)
    world.store.outbox.mark_sent(claimed, world.clock.now, ts=posted.ts,
                                 channel_id=posted.channel_id)  # fmt: skip
    world.slack.react(posted.channel_id, posted.ts, "+1", "U1")
    # A thread reply under an alert, reacted to; the alert itself has no reaction.
    alone = world.alert("AI alert with a thread")
    reply = world.sink.post("#ai-policy", Message("another outlet", (), {}, ()),
                            thread_ts=alone.ts)  # fmt: skip
    world.slack.react(reply.channel_id, reply.ts, "-1", "U2")
    report = read(world)
    assert (report.alerts, report.found, report.changed) == (1, 1, 0)
    assert world.store.labels.count() == 0
    assert [x for e in (first, second) for x in world.store.labels.of_entry(e)] == []


def test_a_read_pages_200_at_a_time_paced_and_stops_when_all_are_found(world: World) -> None:
    sent = [world.alert(f"AI story {n}") for n in range(230)]
    world.alert("An executive order", "executive-orders")
    world.react(sent[0], "+1", "U1")
    world.react(sent[-1], "-1", "U2")
    report = read(world)
    # #ai-policy: 230 alerts, two pages; #executive-orders: one
    assert (report.alerts, report.channels, report.found, report.calls) == (231, 2, 231, 3)
    assert world.clock.waits == [READ_PACE, READ_PACE]
    assert report.paced == 2 * READ_PACE
    assert world.labels(sent[0]) == {"U1": 1} and world.labels(sent[-1]) == {"U2": 0}
    calls = [c for c in world.slack.calls if c.method == "conversations.history"]
    assert [c.params["limit"] for c in calls] == ["200"] * 3


# -- Slack failing --------------------------------------------------------------------------------


def test_slack_failing_during_a_read_leaves_the_labels_waiting(world: World) -> None:
    ai = world.alert("AI watchdog report")
    eo = world.alert("Executive order signed", "executive-orders")
    world.react(ai, "+1", "U1")
    world.react(eo, "+1", "U1")
    read(world)
    world.unreact(ai, "+1", "U1")
    world.react(eo, "-1", "U2")
    world.slack.script("conversations.history", Fault.status(500))
    report = read(world)
    assert len(report.failures) == 1 and "HTTP 500" in report.failures[0]
    assert not report.complete and report.calls == 2  # the other channel is still read
    failed_ai = "#ai-policy" in report.failures[0]
    assert world.labels(ai) == ({"U1": 1} if failed_ai else {})  # the failed one: unchanged
    expected_eo = {"U1": 1, "U2": 0} if failed_ai else {"U1": 1}
    assert world.labels(eo, "executive-orders") == expected_eo
    again = read(world)
    assert again.complete
    assert world.labels(ai) == {} and world.labels(eo, "executive-orders") == {"U1": 1, "U2": 0}


def test_a_rate_limit_ends_the_read(world: World) -> None:
    ai = world.alert("AI watchdog report")
    eo = world.alert("Executive order signed", "executive-orders")
    world.react(ai, "+1", "U1")
    world.react(eo, "+1", "U1")
    world.slack.script("conversations.history", Fault.rate_limited(30))
    report = read(world)
    assert report.calls == 1 and report.stopped and "rate-limited" in report.stopped
    assert world.store.labels.count() == 0
    assert read(world).changed == 2


def test_a_stop_ends_the_read_between_calls(world: World) -> None:
    world.alert("AI watchdog report")
    world.alert("Executive order signed", "executive-orders")
    report = read_reactions(world.store, world.sink, FEEDBACK, world.clock.now,
                            monotonic=world.clock.monotonic, wait=lambda _: True)  # fmt: skip
    assert report.calls == 1 and report.stopped == "the service is stopping"


def test_a_slow_or_failing_read_never_holds_up_delivery(world: World, tmp_path: Path) -> None:
    """The read on its own thread and connection stalls inside Slack; meanwhile the delivery
    loop sends every alert. Then Slack fails the read, and no label was written."""
    sent = world.alert("AI watchdog report")
    world.react(sent, "+1", "U1")
    queued = [world.queue(f"AI story {n}", ("ai-policy",)) for n in range(5)]
    stall = world.slack.stall("conversations.history")
    world.slack.script("conversations.history", Fault.status(503))
    reports: list[ReadReport] = []

    def read_on_its_own_thread() -> None:
        store = Store.open(world.path)
        try:
            reports.append(read_reactions(store, world.sink, FEEDBACK, world.clock.now,
                                          wait=lambda _: False))  # fmt: skip
        finally:
            store.close()

    reader = threading.Thread(target=read_on_its_own_thread)
    reader.start()
    try:
        waiting.wait_until(stall.arrived.is_set, "the read to reach Slack", 10)
        outcomes = world.outbox().deliver_due(world.clock.now)
        assert [o.state for o in outcomes] == ["sent"] * 5
        assert reader.is_alive()  # the read is still held inside Slack
        assert {r.alert.id for r in world.store.outbox.rows(AlertState.SENT)} >= {
            a.alert.id for e in queued for a in world.store.outbox.entry_alerts(e)
        }
    finally:
        stall.release()
        reader.join(30)
    [report] = reports
    assert report.failures and "HTTP 503" in report.failures[0]
    assert world.store.labels.count() == 0


# -- the rule itself, without Slack ---------------------------------------------------------------


def test_decide_tracks_the_latest_kind_across_reads() -> None:
    t0, t1 = START, START + timedelta(minutes=15)
    assert decide(None, (False, False), t0) is None
    assert decide(None, (True, False), t0) == Seen(True, False, 1, t0)
    assert decide(None, (True, True), t0) == Seen(True, True, None, t0)
    relevant = Seen(True, False, 1, t0)
    assert decide(relevant, (True, True), t1) == Seen(True, True, 0, t1)
    assert decide(Seen(False, True, 0, t0), (True, True), t1) == Seen(True, True, 1, t1)
    both = Seen(True, True, 0, t0)
    assert decide(both, (True, True), t1) is both  # nothing new
    assert decide(both, (False, True), t1) == Seen(False, True, 0, t0)  # same label, same time
    assert decide(both, (True, False), t1) == Seen(True, False, 1, t1)
    assert decide(both, (False, False), t1) is None


def test_topics_in_the_world_match_the_alerts_channels() -> None:
    assert {t.channel for t in TOPICS} == {"#ai-policy", "#executive-orders"}
