"""Alerts really delivered to the local Slack stand-in, for the feedback tests to react to.

A :class:`World` holds a real SQLite store, a :class:`SlackServer` and a fake clock they share
(Slack's ts and the outbox's times come from it). :meth:`World.alert` queues an alert the way the
pipeline does and delivers it through the real outbox and Slack sink; people then react to its
message with :meth:`World.react`, as a Slack user id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.config.model import FeedbackSettings, Settings, TopicConfig
from aggregator.models import AlertState, Entry, TopicMatch
from aggregator.notify import Outbox
from aggregator.notify.slack import SlackSink
from aggregator.store import Store
from tests.slackserver import TOKEN, SlackServer
from tests.storing import Item, store_items

START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a Wednesday
TOPICS = (
    TopicConfig("ai-policy", "#ai-policy", "AI"),
    TopicConfig("executive-orders", "#executive-orders", '"executive order"'),
)
FEEDBACK = FeedbackSettings()


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self.start = start
        self.now = start
        self.waits: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return (self.now - self.start).total_seconds()

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def wait(self, seconds: float) -> bool:
        """The reader's pacing wait: fake time passes, and no stop is asked."""
        self.waits.append(seconds)
        self.now += timedelta(seconds=seconds)
        return False


@dataclass(frozen=True)
class Sent:
    alert_id: int
    entry_id: int
    channel: str
    ts: str


_serial = itertools.count(1)


class World:
    def __init__(self, tmp_path: Path, slack: SlackServer, clock: FakeClock) -> None:
        self.path = tmp_path / "bot.db"
        self.store = Store.open(self.path)
        self.slack = slack
        self.clock = clock
        self.sink = SlackSink(TOKEN, slack.url, timeout=5)
        for topic in TOPICS:
            slack.add_channel(topic.channel)

    def close(self) -> None:
        self.store.close()

    def outbox(
        self, store: Store | None = None, topics: tuple[TopicConfig, ...] = TOPICS
    ) -> Outbox:
        settings = Settings(per_channel_interval=0.0)
        return Outbox(store or self.store, self.sink, settings, topics, clock=self.clock,
                      sleep=self.clock.sleep, monotonic=self.clock.monotonic)  # fmt: skip

    def queue(self, title: str, topics: tuple[str, ...], channel: str | None = None) -> int:
        """Queue one alert carrying ``topics`` (in the first topic's channel); its entry id."""
        n = next(_serial)
        entry = Entry("https://feeds.example/a.xml", f"g{n}", f"https://news.example/{n}",
                      f"https://news.example/{n}", title, "", self.clock.now, f"h{n}",
                      "Example News")  # fmt: skip
        target = channel or next(t.channel for t in TOPICS if t.name == topics[0])
        matches = tuple(TopicMatch(t, ("AI",)) for t in topics)
        applied = store_items(self.store, [Item(entry, matches, (target,))], self.clock.now)
        return applied.entry_ids[0]

    def alert(self, title: str, *topics: str, channel: str | None = None) -> Sent:
        """Queue one alert and deliver it to Slack now (a second after the last one)."""
        self.clock.sleep(1)
        entry_id = self.queue(title, topics or ("ai-policy",), channel)
        self.outbox().deliver_due(self.clock.now)
        [row] = [r for r in self.store.outbox.entry_alerts(entry_id)]
        assert row.state == AlertState.SENT, row
        assert row.slack_channel and row.slack_ts
        return Sent(row.alert.id, entry_id, row.slack_channel, row.slack_ts)

    def react(self, sent: Sent, name: str, *users: str) -> None:
        for user in users:
            self.slack.react(sent.channel, sent.ts, name, user)

    def unreact(self, sent: Sent, name: str, *users: str) -> None:
        for user in users:
            self.slack.unreact(sent.channel, sent.ts, name, user)

    def labels(self, sent: Sent, topic: str = "ai-policy") -> dict[str, int | None]:
        """The Slack labels of the alert's entry for ``topic``, by user id."""
        return {
            x.who: x.label
            for x in self.store.labels.of_entry(sent.entry_id)
            if x.topic == topic and x.source == "slack"
        }

    def resolved(self, sent: Sent, topic: str = "ai-policy") -> int | str | None:
        """The entry's resolved label for ``topic``; "none" when nobody labelled it."""
        found = self.store.labels.resolved(topic, [sent.entry_id])
        return found[0].label if found else "none"
