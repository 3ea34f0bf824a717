"""The outbox: the ``alerts`` table and each channel's pacing and pause (``channel_state``).

An alert row is written in the same transaction as the entry that caused it, before any send.
Delivery moves it ``pending -> sending -> sent`` (or ``failed`` and retried, ``held``, ``dead``)
through the named setters below; each commits at once, before the next network call.

Every change to a row is a compare-and-set on the state and ``updated_at`` the caller read: a row
another delivery loop (the service beside ``poll --once``) changed meanwhile is left alone. That
is what keeps two loops from sending one row twice: only one of them can claim it, and a loop
acting on a stale read changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aggregator.models import (
    Alert,
    AlertKind,
    AlertPayload,
    AlertState,
    DeliveryMarks,
    EditPayload,
    HoldMode,
    NoticePayload,
    Payload,
    ReplyPayload,
    TopicMatch,
)
from aggregator.store.rows import (
    ChannelState,
    OutboxRow,
    decode_payload,
    encode_payload,
    topics_from_json,
    topics_json,
)
from aggregator.store.schema import Part, from_iso, iso

WAITING = (AlertState.PENDING, AlertState.FAILED, AlertState.HELD)
_SELECT = (
    "SELECT a.*, e.title, e.link, e.source, e.published, e.summary "
    "FROM alerts a LEFT JOIN entries e ON e.id = a.entry_id "
)
_INSERT = (
    "INSERT OR IGNORE INTO alerts (dedupe_key, story_id, entry_id, channel, kind, topics, state, "
    "next_attempt_at, created_at, updated_at, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class WaitingChannel:
    """A channel with rows waiting: when the earliest is due, and its pause and pacing."""

    channel: str
    earliest_due: datetime
    paused_until: datetime | None
    last_sent_at: datetime | None


class Outbox(Part):
    """Alert rows and channel state. Every method raises StoreError on a database error."""

    # -- reading ----------------------------------------------------------------------------------

    def due(self, now: datetime, limit: int = 500) -> list[OutboxRow]:
        """Rows to act on now: pending, failed or held, whose time has come; oldest first."""
        rows = self.db.rows(
            _SELECT + "WHERE a.state IN (?, ?, ?) AND a.next_attempt_at <= ? ORDER BY a.id LIMIT ?",
            [*WAITING, iso(now), limit],
        )
        return [_outbox_row(r) for r in rows]

    def rows(self, *states: AlertState, ids: Sequence[int] = ()) -> list[OutboxRow]:
        """Rows in these states (all states when none are given), or these ids; oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"a.state IN ({','.join('?' * len(states))})")
            params.extend(str(s) for s in states)
        if ids:
            where.append(f"a.id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return [_outbox_row(r) for r in self.db.rows(_SELECT + clause + " ORDER BY a.id", params)]

    def row(self, alert_id: int) -> OutboxRow | None:
        found = self.rows(ids=[alert_id])
        return found[0] if found else None

    def waiting(self) -> list[WaitingChannel]:
        """Per channel with rows waiting: the earliest row due, its pause and its last send."""
        rows = self.db.execute(
            "SELECT a.channel, min(a.next_attempt_at), c.paused_until, c.last_sent_at "
            "FROM alerts a LEFT JOIN channel_state c ON c.channel = a.channel "
            "WHERE a.state IN (?, ?, ?) GROUP BY a.channel",
            WAITING,
        ).fetchall()
        return [
            WaitingChannel(str(c), datetime.fromisoformat(due), from_iso(paused), from_iso(last))
            for c, due, paused, last in rows
        ]

    def counts(self) -> dict[AlertState, int]:
        rows = self.db.execute("SELECT state, count(*) FROM alerts GROUP BY state")
        return {AlertState(state): int(n) for state, n in rows}

    def known_channel_id(self, channel: str) -> str | None:
        """Slack's id for a channel name, as learnt from an earlier successful post."""
        found = self.db.value(
            "SELECT slack_channel FROM alerts WHERE channel = ? AND state = 'sent' "
            "AND slack_channel IS NOT NULL AND slack_channel != 'console' ORDER BY id DESC LIMIT 1",
            [channel],
        )
        return str(found) if found else None

    def last_reply_sent(self, parent_alert_id: int) -> datetime | None:
        """When the last thread reply under this alert was sent (None: never)."""
        found = self.db.value(
            "SELECT max(sent_at) FROM alerts WHERE kind = 'reply' AND state = 'sent' "
            "AND json_extract(payload, '$.parent_alert_id') = ?",
            [parent_alert_id],
        )
        return from_iso(found)

    def story_alerts(self, story_id: int, before_entry: int | None = None) -> list[OutboxRow]:
        """The top-level alerts of a story, one per channel; with ``before_entry``, only those
        caused by earlier entries."""
        bound = before_entry if before_entry is not None else -1
        rows = self.db.rows(
            _SELECT + "WHERE a.story_id = ? AND a.kind = 'alert' AND (? < 0 OR a.entry_id < ?) "
            "ORDER BY a.id",
            [story_id, bound, bound],
        )
        return [_outbox_row(r) for r in rows]

    def story_topics(self, story_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        """The topics each story alerted in (its top-level alerts, sent or on their way; a
        "possibly relevant" digest item counts too)."""
        found: dict[int, set[str]] = {}
        ids = sorted(set(story_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT story_id, topics FROM alerts WHERE story_id IN ({marks}) "  # noqa: S608
                "AND kind = 'alert' AND state != 'dead'",
                chunk,
            )
            for story_id, topics in rows:
                found.setdefault(int(story_id), set()).update(
                    t.topic for t in topics_from_json(topics)
                )
        return {k: tuple(sorted(v)) for k, v in found.items()}

    def entry_alerts(self, entry_id: int) -> list[OutboxRow]:
        """The top-level alerts an entry caused."""
        rows = self.db.rows(_SELECT + "WHERE a.entry_id = ? AND a.kind = 'alert' ORDER BY a.id",
                            [entry_id])  # fmt: skip
        return [_outbox_row(r) for r in rows]

    def newer_edit(self, row: OutboxRow) -> int | None:
        """A later edit of the same alert, not given up on (its id), or None."""
        found = self.db.value(
            "SELECT max(id) FROM alerts WHERE kind = 'update' AND state != 'dead' AND id > ? "
            "AND json_extract(payload, '$.parent_alert_id') = ?",
            [row.alert.id, row.alert.parent_alert_id],
        )
        return int(found) if found is not None else None

    # -- queueing ---------------------------------------------------------------------------------

    def queue_alert(
        self, story_id: int, entry_id: int, channel: str, topics: tuple[TopicMatch, ...],
        payload: AlertPayload, now: datetime,
    ) -> bool:  # fmt: skip
        """The alert of a story in a channel (or its "possibly relevant" item, which has a key of
        its own); False when the story already has one there."""
        key = f"{'review' if payload.review else 'alert'}:{story_id}:{channel}"
        stamp = iso(now)
        cursor = self.db.execute(
            _INSERT,
            [key, story_id, entry_id, channel, AlertKind.ALERT, topics_json(topics), stamp, stamp,
             stamp, encode_payload(payload)],
        )  # fmt: skip
        return cursor.rowcount == 1

    def queue_notice(
        self, channel: str, kind: AlertKind, text: str, now: datetime, key: str
    ) -> int | None:
        """An ops or test message; None when that key was already queued."""
        stamp = iso(now)
        payload = encode_payload(NoticePayload(text))
        cursor = self.db.execute(
            _INSERT, [key, None, None, channel, kind, "[]", stamp, stamp, stamp, payload]
        )
        return int(cursor.lastrowid) if cursor.rowcount == 1 and cursor.lastrowid else None

    def queue_reply(
        self, parent: OutboxRow, payload: ReplyPayload, now: datetime, key: str
    ) -> int | None:
        """A thread reply under a posted (or pending) alert, sent once the parent is sent; its
        id, or None when that key was already queued."""
        return self._queue_followup(parent, AlertKind.REPLY, payload, now, key)

    def queue_edit(self, parent: OutboxRow, payload: EditPayload, now: datetime) -> int:
        """An edit of an alert; an edit still waiting absorbs this one instead. Its id."""
        waiting = self.db.rows(
            "SELECT id, payload FROM alerts WHERE kind = 'update' AND state IN (?, ?, ?) "
            "AND json_extract(payload, '$.parent_alert_id') = ? ORDER BY id LIMIT 1",
            [*WAITING, parent.alert.id],
        )
        if waiting:
            old, marks = decode_payload(AlertKind.UPDATE, waiting[0]["payload"])
            updated = (isinstance(old, EditPayload) and old.updated) or payload.updated
            merged = replace(payload, updated=updated)
            self.db.execute(
                "UPDATE alerts SET payload = ?, updated_at = ? WHERE id = ?",
                [encode_payload(merged, marks), iso(now), waiting[0]["id"]],
            )
            return int(waiting[0]["id"])
        in_flight = self.db.rows(
            "SELECT payload FROM alerts WHERE kind = 'update' AND state = 'sending' "
            "AND json_extract(payload, '$.parent_alert_id') = ? ORDER BY id DESC LIMIT 1",
            [parent.alert.id],
        )
        if in_flight:  # being sent now: this row supersedes it, so it says what that one said
            old, _ = decode_payload(AlertKind.UPDATE, in_flight[0]["payload"])
            if isinstance(old, EditPayload) and old.updated:
                payload = replace(payload, updated=True)
        count = self.db.value(
            "SELECT count(*) FROM alerts WHERE kind = 'update' "
            "AND json_extract(payload, '$.parent_alert_id') = ?",
            [parent.alert.id],
        )
        key = f"edit:{parent.alert.id}:{count}"
        added = self._queue_followup(parent, AlertKind.UPDATE, payload, now, key)
        assert added is not None  # the key counts the edits of this parent: it is new
        return added

    def _queue_followup(
        self, parent: OutboxRow, kind: AlertKind, payload: Payload, now: datetime, key: str
    ) -> int | None:
        stamp = iso(now)
        a = parent.alert
        topics = topics_json(a.topics)
        cursor = self.db.execute(
            _INSERT,
            [key, a.story_id, parent.entry_id, a.channel, kind, topics, stamp, stamp, stamp,
             encode_payload(payload)],
        )  # fmt: skip
        return int(cursor.lastrowid) if cursor.rowcount == 1 and cursor.lastrowid else None

    # -- delivery: each call commits before the next network call --------------------------------

    def claim(
        self, rows: Sequence[OutboxRow], now: datetime, *, sender: str | None = None
    ) -> list[OutboxRow]:
        """Take waiting rows for sending (``sending``, attempts + 1, and who sends them);
        returns them as they are now. A row another process moved or sent since it was read is
        not taken."""
        claimed: list[OutboxRow] = []
        with self.db.transaction():
            for r in rows:
                if r.state not in WAITING:
                    continue
                attempts = r.alert.attempts + 1
                marks = replace(r.marks, sender=sender)
                if self._set(r, now, state=AlertState.SENDING, attempts=attempts, marks=marks):
                    alert = replace(r.alert, attempts=attempts)
                    claimed.append(replace(r, alert=alert, state=AlertState.SENDING, marks=marks,
                                           updated_at=iso(now) or ""))  # fmt: skip
        return claimed

    def release(
        self, claimed: Sequence[OutboxRow], read: Sequence[OutboxRow], now: datetime
    ) -> None:
        """Undo :meth:`claim` for rows whose message is not sent after all: each goes back to the
        state and attempts it was ``read`` with, due as it was."""
        if not claimed:
            return
        before = {r.alert.id: r for r in read}
        with self.db.transaction():
            for r in claimed:
                was = before[r.alert.id]
                self._set(r, now, state=was.state, attempts=was.alert.attempts)

    def mark_sent(
        self, rows: Sequence[OutboxRow], now: datetime, *, ts: str, channel_id: str
    ) -> None:
        """Slack has these rows' message: done, whatever went wrong before."""
        with self.db.transaction():
            for r in rows:
                self._set(r, now, state=AlertState.SENT, sent_at=iso(now), slack_ts=ts,
                          slack_channel=channel_id, last_error=None,
                          marks=replace(r.marks, verify=False))  # fmt: skip

    def mark_failed(
        self, rows: Sequence[OutboxRow], now: datetime, *, until: datetime, reason: str,
        verify: bool = False, attempts: int | None = None,
    ) -> None:  # fmt: skip
        """An attempt failed; try again at ``until``. ``verify``: Slack may have the message, so
        look for it first. ``attempts``: correct the count (a rate limit does not count)."""
        with self.db.transaction():
            for r in rows:
                marks = replace(r.marks, verify=True) if verify else r.marks
                extra = {} if attempts is None else {"attempts": attempts}
                self._set(r, now, state=AlertState.FAILED, next_attempt_at=iso(until),
                          last_error=reason, marks=marks, **extra)  # fmt: skip

    def mark_dead(
        self, rows: Sequence[OutboxRow], now: datetime, reason: str, *, verify: bool = False
    ) -> None:
        """Given up: the reason stays on the row for ``aggregator outbox``."""
        with self.db.transaction():
            for r in rows:
                marks = replace(r.marks, verify=True) if verify else r.marks
                self._set(r, now, state=AlertState.DEAD, last_error=reason, marks=marks)

    def hold(
        self, row: OutboxRow, now: datetime, *, until: datetime, mode: HoldMode, digest: str | None
    ) -> None:
        """Wait for a digest or the end of quiet hours (a row is held once)."""
        marks = replace(row.marks, hold=mode, digest=digest)
        with self.db.transaction():
            self._set(row, now, state=AlertState.HELD, next_attempt_at=iso(until), marks=marks)

    def postpone(
        self, rows: Sequence[OutboxRow], now: datetime, *, until: datetime, batched: bool = False
    ) -> None:
        """Look at these rows again at ``until`` (a reply waiting for its slot or its parent)."""
        with self.db.transaction():
            for r in rows:
                marks = replace(r.marks, batched=True) if batched else r.marks
                self._set(r, now, next_attempt_at=iso(until), marks=marks)

    def attach_thread(
        self, rows: Sequence[OutboxRow], now: datetime, *, thread_ts: str, channel_id: str | None
    ) -> list[OutboxRow]:
        """Give replies and edits their parent's message, before any send (so a crash check looks
        in the right thread). Returns the rows given the thread, as they are now; a row another
        process changed meanwhile is left out."""
        with self.db.transaction():
            taken = [
                r.alert.id for r in rows
                if self._set(r, now, thread_ts=thread_ts, slack_channel=channel_id)
            ]  # fmt: skip
        return self.rows(ids=taken) if taken else []

    def back_to_pending(self, row: OutboxRow, now: datetime, *, due: datetime) -> None:
        """A row a crash left in ``sending`` that Slack never got: send it again."""
        with self.db.transaction():
            self._set(row, now, state=AlertState.PENDING, next_attempt_at=iso(due),
                      marks=replace(row.marks, verify=False))  # fmt: skip

    def requeue(self, now: datetime, ids: Sequence[int] = (), *, dead: bool = False) -> int:
        """Put failed, held or dead rows (these ids, or every dead row) back to pending, with
        fresh attempts."""
        where = "state IN ('failed', 'dead', 'held')"
        params: list[Any] = [iso(now), iso(now)]
        if ids:
            where += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        elif dead:
            where = "state = 'dead'"
        else:
            return 0
        sql = (
            "UPDATE alerts SET state = 'pending', attempts = 0, next_attempt_at = ?, "
            "updated_at = ? "
        )
        with self.db.transaction():
            return int(self.db.execute(sql + f"WHERE {where}", params).rowcount)

    def _set(self, row: OutboxRow, now: datetime, *, marks: DeliveryMarks | None = None,
             **columns: Any) -> bool:  # fmt: skip
        """Change a row only if it is still as ``row`` was read; True when it was changed."""
        values = {**columns, "updated_at": iso(now)}
        if marks is not None:
            values["payload"] = encode_payload(row.alert.payload, marks)
        assignments = ", ".join(f"{name} = ?" for name in values)
        cursor = self.db.execute(
            f"UPDATE alerts SET {assignments} "  # noqa: S608 (names are ours)
            "WHERE id = ? AND state = ? AND updated_at = ?",
            [*values.values(), row.alert.id, row.state, row.updated_at],
        )
        return cursor.rowcount == 1

    # -- channels ---------------------------------------------------------------------------------

    def channel(self, channel: str) -> ChannelState:
        rows = self.db.rows("SELECT * FROM channel_state WHERE channel = ?", [channel])
        return _channel_state(rows[0]) if rows else ChannelState(channel)

    def channels(self) -> list[ChannelState]:
        return [
            _channel_state(r) for r in self.db.rows("SELECT * FROM channel_state ORDER BY channel")
        ]

    def note_sent(self, channel: str, at: datetime) -> None:
        """A send to the channel began or ended now: the next one waits its interval from here."""
        self._set_channel(channel, last_sent_at=iso(at))

    def pause(
        self, channel: str, until: datetime, reason: str, failures: int | None = None
    ) -> None:
        """Send nothing to the channel before ``until`` (Slack is down, or rate-limits us)."""
        extra = {} if failures is None else {"failures": failures}
        self._set_channel(channel, paused_until=iso(until), pause_reason=reason, **extra)

    def recovered(self, channel: str) -> None:
        """A send went through: no pause, no failures in a row."""
        self._set_channel(channel, failures=0, paused_until=None, pause_reason=None)

    def _set_channel(self, channel: str, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self.db.transaction():
            self.db.execute("INSERT OR IGNORE INTO channel_state (channel) VALUES (?)", [channel])
            self.db.execute(
                f"UPDATE channel_state SET {assignments} WHERE channel = ?",  # noqa: S608
                [*values.values(), channel],
            )


def _outbox_row(row: dict[str, Any]) -> OutboxRow:
    kind = AlertKind(row["kind"])
    payload, marks = decode_payload(kind, row["payload"])
    alert = Alert(
        id=row["id"],
        channel=row["channel"],
        kind=kind,
        title=row.get("title") or "",
        link=row.get("link") or "",
        source=row.get("source") or "",
        published=from_iso(row.get("published")),
        summary=row.get("summary") or "",
        topics=topics_from_json(row["topics"]),
        payload=payload,
        attempts=row["attempts"],
        story_id=row["story_id"],
        thread_ts=row["thread_ts"],
    )
    return OutboxRow(
        alert=alert,
        state=AlertState(row["state"]),
        updated_at=row["updated_at"],
        next_attempt_at=datetime.fromisoformat(row["next_attempt_at"]),
        last_error=row["last_error"],
        slack_ts=row["slack_ts"],
        slack_channel=row["slack_channel"],
        marks=marks,
        entry_id=row["entry_id"],
    )


def _channel_state(row: dict[str, Any]) -> ChannelState:
    return ChannelState(
        channel=row["channel"],
        paused_until=from_iso(row["paused_until"]),
        pause_reason=row["pause_reason"],
        failures=int(row["failures"] or 0),
        last_sent_at=from_iso(row["last_sent_at"]),
    )
