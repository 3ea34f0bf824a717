"""The team's reactions on sent alerts: which alerts to read, what each person had on each, and
the labels they make.

A reaction on an alert labels the alert's entry for each topic the alert carries (an alert shared
by two topics labels both). Each person's reactions on an alert are kept as last read
(``reactions``), because Slack says who reacted but not when: which of two reactions came last is
learnt by comparing reads. Their label goes to ``labels`` with source ``slack`` and their user id,
in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator.models import Seen
from aggregator.store.labels import Labels, LabelSource
from aggregator.store.rows import topics_from_json
from aggregator.store.schema import Part, from_iso, iso

# A top-level alert that reached Slack as a message of its own: a digest's message carries
# several alerts (they share its ts), and a reaction on it says nothing about any one of them.
_SENT_ALONE = (
    "a.kind = 'alert' AND a.state = 'sent' AND a.slack_ts IS NOT NULL "
    "AND a.slack_channel IS NOT NULL AND a.slack_channel != 'console' "
    "AND NOT EXISTS (SELECT 1 FROM alerts b WHERE b.slack_ts = a.slack_ts "
    "AND b.slack_channel = a.slack_channel AND b.id != a.id)"
)


@dataclass(frozen=True, slots=True)
class ReadableAlert:
    """A sent alert whose message's reactions are labels."""

    alert_id: int
    entry_id: int
    topics: tuple[str, ...]
    channel: str  # as topics.toml names it
    channel_id: str  # Slack's
    ts: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class SentAlert:
    """A sent top-level alert with its entry's text, for the feedback report."""

    alert_id: int
    entry_id: int | None
    topics: tuple[str, ...]
    channel: str
    sent_at: datetime
    title: str
    summary: str
    source: str
    link: str


class Reactions(Part):
    """Reactions read from Slack and the labels they make. Every method raises StoreError on a
    database error."""

    def readable(self, since: datetime) -> list[ReadableAlert]:
        """Alerts sent since ``since`` as a message of their own, whose entry is still stored;
        by channel, then oldest first."""
        rows = self.db.rows(
            "SELECT a.id, a.entry_id, a.topics, a.channel, a.slack_channel, a.slack_ts, "  # noqa: S608
            "a.sent_at FROM alerts a JOIN entries e ON e.id = a.entry_id "
            f"WHERE a.sent_at >= ? AND {_SENT_ALONE} ORDER BY a.slack_channel, a.id",
            [iso(since)],
        )
        return [
            ReadableAlert(
                alert_id=int(r["id"]),
                entry_id=int(r["entry_id"]),
                topics=_topic_names(r["topics"]),
                channel=r["channel"],
                channel_id=r["slack_channel"],
                ts=r["slack_ts"],
                sent_at=datetime.fromisoformat(r["sent_at"]),
            )
            for r in rows
        ]

    def seen(self, alert_id: int) -> dict[str, Seen]:
        """Each person's reactions on the alert as last read, by Slack user id."""
        rows = self.db.rows("SELECT * FROM reactions WHERE alert_id = ?", [alert_id])
        return {r["who"]: _seen(r) for r in rows}

    def record(self, alert: ReadableAlert, changes: Mapping[str, Seen | None]) -> None:
        """Store what changed on one alert, by user id (None: they have no such reaction left,
        so their label goes), and the labels for each of its topics: one transaction."""
        labels = Labels(self.db)
        with self.db.transaction():
            for who, seen in changes.items():
                if seen is None:
                    self.db.execute(
                        "DELETE FROM reactions WHERE alert_id = ? AND who = ?",
                        [alert.alert_id, who],
                    )
                    for topic in alert.topics:
                        labels.remove(alert.entry_id, topic, LabelSource.SLACK, who)
                    continue
                self.db.execute(
                    "INSERT INTO reactions (alert_id, who, relevant, not_relevant, label, at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id, who) DO UPDATE SET "
                    "relevant = excluded.relevant, not_relevant = excluded.not_relevant, "
                    "label = excluded.label, at = excluded.at",
                    [alert.alert_id, who, int(seen.relevant), int(seen.not_relevant), seen.label,
                     iso(seen.at)],
                )  # fmt: skip
                for topic in alert.topics:
                    labels.set(alert.entry_id, topic, seen.label, LabelSource.SLACK, who, seen.at)

    def sent(self, since: datetime, until: datetime | None = None) -> list[SentAlert]:
        """Top-level alerts sent in [since, until), oldest first; "possibly relevant" items of a
        review digest are not alerts and are left out."""
        params: list[Any] = [iso(since)]
        bound = ""
        if until is not None:
            bound = "AND a.sent_at < ? "
            params.append(iso(until))
        rows = self.db.rows(
            "SELECT a.id, a.entry_id, a.topics, a.channel, a.sent_at, e.title, "  # noqa: S608
            "e.summary, e.source, e.link FROM alerts a LEFT JOIN entries e ON e.id = a.entry_id "
            "WHERE a.kind = 'alert' AND a.state = 'sent' AND a.sent_at >= ? "
            f"{bound}AND NOT coalesce(json_extract(a.payload, '$.review'), 0) "
            "ORDER BY a.sent_at, a.id",
            params,
        )
        return [
            SentAlert(
                alert_id=int(r["id"]),
                entry_id=r["entry_id"],
                topics=_topic_names(r["topics"]),
                channel=r["channel"],
                sent_at=from_iso(r["sent_at"]) or since,
                title=r["title"] or "",
                summary=r["summary"] or "",
                source=r["source"] or "",
                link=r["link"] or "",
            )
            for r in rows
        ]


def _seen(row: Mapping[str, Any]) -> Seen:
    at = datetime.fromisoformat(row["at"])
    return Seen(bool(row["relevant"]), bool(row["not_relevant"]), row["label"], at)


def _topic_names(text: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.topic for t in topics_from_json(text)))
