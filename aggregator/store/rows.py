"""Rows as typed values, and the JSON of an alert's payload column.

Every row that leaves the store is one of these frozen dataclasses, never a dict, so mypy checks
what crosses from the database to delivery and the CLI. The payload column keeps the JSON keys it
always had (``parent_alert_id`` is also indexed), so databases written before these types read
the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator.models import (
    Alert,
    AlertKind,
    AlertPayload,
    AlertState,
    DeliveryMarks,
    EditPayload,
    Entry,
    FeedState,
    FeedStatus,
    HoldMode,
    NoticePayload,
    Payload,
    ReplyItem,
    ReplyPayload,
    TopicMatch,
)
from aggregator.store.schema import from_iso


def feed_state(row: Mapping[str, Any]) -> FeedState:
    return FeedState(
        url=row["url"],
        name=row["name"],
        status=FeedStatus(row["status"]),
        etag=row["etag"],
        last_modified=row["last_modified"],
        body_hash=row["body_hash"],
        consecutive_errors=row["consecutive_errors"],
        last_error=row["last_error"],
        last_success_at=from_iso(row["last_success_at"]),
        last_fetch_at=from_iso(row["last_fetch_at"]),
        next_fetch_at=from_iso(row["next_fetch_at"]),
        first_polled_at=from_iso(row["first_polled_at"]),
        failing_since=from_iso(row["failing_since"]),
        moved_from=row["moved_from"],
        ops_notified_at=from_iso(row["ops_notified_at"]),
    )


@dataclass(frozen=True, slots=True)
class FeedActivity:
    """A feed's row with what ``feeds status`` adds: recent items and mean fetch time."""

    state: FeedState
    added_at: datetime
    last_error_at: datetime | None
    recent_items: int  # entries published (or first seen) in the window asked for
    avg_elapsed_ms: float | None  # over the fetch log


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An alert with the outbox bookkeeping the delivery loop needs."""

    alert: Alert
    state: AlertState
    updated_at: str  # exactly as stored: claiming compares it
    next_attempt_at: datetime
    last_error: str | None
    slack_ts: str | None
    slack_channel: str | None
    marks: DeliveryMarks
    entry_id: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One channel's pacing and pause."""

    channel: str
    paused_until: datetime | None = None
    pause_reason: str | None = None
    failures: int = 0
    last_sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as stored, with its id and, when it is in one, its story."""

    id: int
    entry: Entry
    story_id: int | None = None


# -- the payload column ---------------------------------------------------------------------------

_VERIFY, _HOLD, _DIGEST, _BATCHED = "_verify", "_hold", "_digest", "_batched"
_SENDER = "_sender"


NO_MARKS = DeliveryMarks()


def encode_payload(payload: Payload, marks: DeliveryMarks = NO_MARKS) -> str:
    """The JSON stored in ``alerts.payload``."""
    data: dict[str, Any]
    if isinstance(payload, AlertPayload):
        data = {"primary": payload.primary}
        if payload.review:
            data["review"] = True
    elif isinstance(payload, ReplyPayload):
        data = {
            "parent_alert_id": payload.parent_alert_id,
            "items": [
                {"source": i.source, "title": i.title, "link": i.link, "primary": i.primary}
                for i in payload.items
            ],
        }
    elif isinstance(payload, EditPayload):
        data = {
            "parent_alert_id": payload.parent_alert_id,
            "primary": payload.primary,
            "outlets": payload.outlets,
            "official_link": payload.official_link,
            "updated": payload.updated,
        }
    else:
        data = {"text": payload.text}
    if marks.verify:
        data[_VERIFY] = True
    if marks.hold is not None:
        data[_HOLD] = marks.hold.value
    if marks.digest is not None:
        data[_DIGEST] = marks.digest
    if marks.batched:
        data[_BATCHED] = True
    if marks.sender is not None:
        data[_SENDER] = marks.sender
    return json.dumps(data)


def decode_payload(kind: AlertKind, text: str | None) -> tuple[Payload, DeliveryMarks]:
    """The typed payload of a row of ``kind``, and the outbox's marks on it."""
    data = json.loads(text or "{}")
    if not isinstance(data, dict):
        data = {}
    payload: Payload
    parent = data.get("parent_alert_id")
    if kind == AlertKind.REPLY and isinstance(parent, int):
        items = tuple(
            ReplyItem(
                str(i.get("source", "")),
                str(i.get("title", "")),
                str(i.get("link", "")),
                bool(i.get("primary")),
            )
            for i in data.get("items") or ()
            if isinstance(i, dict)
        )
        payload = ReplyPayload(parent, items)
    elif kind == AlertKind.UPDATE and isinstance(parent, int):
        official = data.get("official_link")
        outlets = data.get("outlets")
        payload = EditPayload(
            parent,
            primary=bool(data.get("primary")),
            outlets=outlets if isinstance(outlets, int) else 0,
            official_link=official if isinstance(official, str) else None,
            updated=bool(data.get("updated", True)),
        )
    elif kind in (AlertKind.OPS, AlertKind.TEST):
        payload = NoticePayload(str(data.get("text") or ""))
    else:
        payload = AlertPayload(primary=bool(data.get("primary")), review=bool(data.get("review")))
    hold = data.get(_HOLD)
    digest = data.get(_DIGEST)
    sender = data.get(_SENDER)
    marks = DeliveryMarks(
        verify=bool(data.get(_VERIFY)),
        hold=HoldMode(hold) if hold in (HoldMode.DIGEST, HoldMode.QUIET) else None,
        digest=str(digest) if digest is not None else None,
        batched=bool(data.get(_BATCHED)),
        sender=str(sender) if sender is not None else None,
    )
    return payload, marks


def topics_json(topics: tuple[TopicMatch, ...]) -> str:
    return json.dumps([{"topic": t.topic, "terms": list(t.terms)} for t in topics])


def topics_from_json(text: str | None) -> tuple[TopicMatch, ...]:
    return tuple(
        TopicMatch(t["topic"], tuple(t.get("terms", ()))) for t in json.loads(text or "[]")
    )


def entry_from_row(row: Mapping[str, Any], published: str | None) -> Entry:
    return Entry(
        feed_url=row["feed_url"],
        guid=row["guid"],
        link=row["link"],
        canonical_url=row["canonical_url"],
        title=row["title"],
        summary=row["summary"],
        published=from_iso(published),
        content_hash=row["content_hash"],
        source=row["source"],
        links=tuple(json.loads(row["links"] or "[]")),
    )
