"""The delivery loop: at least once into the outbox, exactly once out to Slack.

Each alert row moves ``pending -> sending -> sent``. A failure that may pass goes to ``failed``
with a ``next_attempt_at`` (exponential backoff with jitter); a permanent error, or too many
attempts, makes it ``dead`` with its reason. Every change of state is committed before the next
network call, so a crash leaves at worst a row in ``sending``, which :meth:`Outbox.recover` settles
by looking for the alert id in the channel's history before sending again. A send whose outcome is
unknown (lost response, 5xx) is handled the same way on its next attempt.

Per channel: at most one message per ``per_channel_interval``; a 429 pauses the channel for exactly
``Retry-After`` (at most 15 minutes); a 5xx or a connection error pauses the channel with backoff,
and only the oldest due row probes it when the pause ends. An outage never makes an alert dead:
only errors about the message itself count toward ``max_attempts``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aggregator.config.model import Settings, TopicConfig
from aggregator.errors import DeliveryError
from aggregator.models import DeliveryOutcome
from aggregator.notify.render import Message, render, render_digest, render_replies
from aggregator.notify.sink import Posted, Sink, UncertainDelivery
from aggregator.notify.windows import hold_for
from aggregator.store import (
    OutboxRow,
    Store,
    channel_state,
    channel_states,
    claim_alerts,
    from_iso,
    known_channel_id,
    last_reply_sent,
    outbox_due,
    outbox_rows,
    outbox_waiting,
    set_alerts,
    set_channel_state,
)

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 900.0  # a 429 waits exactly Retry-After, but never more than 15 minutes
HISTORY_MARGIN = timedelta(minutes=30)  # how far before the send to search the history
STALE_SENDING = 120.0  # seconds: a live send ends long before this (the client times out at 15 s)
VERIFY = "_verify"  # payload flag: Slack may have this message; look before sending again
HOLD = "_hold"  # payload: "digest" or "quiet"
DIGEST = "_digest"  # payload: the digest's label (its topics)
BATCHED = "_batched"  # payload: this reply already waited for its story's reply slot


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Unit:
    """One message to send: its rows (several for a digest) and how to render it."""

    channel: str
    rows: list[OutboxRow]
    digest_label: str | None = None
    message: Message | None = None  # one part of a digest, rendered when the queue was built


class Outbox:
    """Sends what is due from the alerts table through a :class:`Sink`."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        settings: Settings,
        topics: Sequence[TopicConfig],
        *,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        retry_base: float = 30.0,
        retry_cap: float = 3600.0,
        pause_base: float = 5.0,
        pause_cap: float = 900.0,
        inline_wait: float = 5.0,
    ) -> None:
        self.store = store
        self.sink = sink
        self.settings = settings
        self.topics = tuple(topics)
        self._clock = clock or _utcnow
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.pause_base = pause_base
        self.pause_cap = pause_cap
        self.inline_wait = inline_wait

    # -- public ----------------------------------------------------------------------------------

    def recover(self, now: datetime, *, older_than: float = 0.0) -> list[DeliveryOutcome]:
        """Settle rows left in ``sending`` by a crash: sent if Slack has them, else due again.

        At start-up every such row belongs to a dead process (``older_than=0``). A process that
        may run beside a live one (``poll --once``) passes ``older_than`` so it leaves the other's
        in-flight send alone; :meth:`deliver_due` does that itself for rows stuck that long.
        """
        outcomes: list[DeliveryOutcome] = []
        cutoff = now - timedelta(seconds=older_than)
        if older_than <= 0:
            self._pace_after_restart()
        for row in outbox_rows(self.store, "sending"):
            since = from_iso(row.updated_at)
            if older_than > 0 and since is not None and since > cutoff:
                continue
            try:
                outcomes.extend(self._recover_row(row, now))
            except DeliveryError as e:
                at = self._clock()
                wait = self._pause_delay(1)
                payload = {**row.payload, VERIFY: True}
                set_alerts(self.store, [row.alert.id], at, state="failed",
                           next_attempt_at=at + timedelta(seconds=wait), payload=payload,
                           last_error=f"could not check Slack history: {e.reason}")  # fmt: skip
                outcomes.append(self._outcome(row, "failed", e.reason))
        return outcomes

    def deliver_due(self, now: datetime, *, deadline: float | None = None) -> list[DeliveryOutcome]:
        """Send what is due, paced per channel. Never raises for one bad alert.

        ``deadline`` is a ``time.monotonic()`` value: no send starts, and no pacing wait runs,
        past it.
        """
        outcomes = self.recover(now, older_than=STALE_SENDING)
        while True:
            done = self._pass(now, deadline)
            outcomes.extend(done)
            # a short pause (a 429's Retry-After, a first 5xx) is waited out here rather than
            # left for the next cycle, which may be minutes away
            upcoming = self.next_due()
            if upcoming is None:
                break
            wait = (upcoming - self._clock()).total_seconds()
            if wait > self.inline_wait or (wait <= 0 and not done):
                break
            if deadline is not None and self._monotonic() + max(wait, 0.0) >= deadline:
                break
            if wait > 0:
                self._sleep(wait)
            now = self._clock()
        return outcomes

    def _pass(self, now: datetime, deadline: float | None) -> list[DeliveryOutcome]:
        """One sweep over what is due now."""
        outcomes: list[DeliveryOutcome] = []
        queues: OrderedDict[str, deque[_Unit]] = OrderedDict()
        digests: dict[tuple[str, str], list[OutboxRow]] = {}
        replies: dict[int, _Unit] = {}
        for row in outbox_due(self.store, now):
            if row.state == "pending" and row.alert.kind == "alert" and HOLD not in row.payload:
                hold = hold_for(row.alert.topics, self.topics, now)
                if hold is not None:
                    payload = {**row.payload, HOLD: hold.mode}
                    if hold.mode == "digest":
                        payload[DIGEST] = hold.label
                    set_alerts(self.store, [row.alert.id], now, state="held",
                               next_attempt_at=hold.until, payload=payload)  # fmt: skip
                    why = f"{hold.mode} until {hold.until.isoformat(timespec='minutes')}"
                    outcomes.append(self._outcome(row, "held", why))
                    continue
            if row.payload.get(HOLD) == "digest":
                key = (row.alert.channel, str(row.payload.get(DIGEST, "")))
                digests.setdefault(key, []).append(row)
                continue
            if row.alert.kind == "reply":
                waiting = self._reply_slot(row, now)
                if waiting is not None:
                    outcomes.append(waiting)
                    continue
                parent = row.payload.get("parent_alert_id")
                if isinstance(parent, int):
                    group = replies.get(parent)
                    if group is not None:
                        group.rows.append(row)  # one reply lists every new outlet of the story
                        continue
                    replies[parent] = group = _Unit(row.alert.channel, [row])
                    queues.setdefault(row.alert.channel, deque()).append(group)
                    continue
            queues.setdefault(row.alert.channel, deque()).append(_Unit(row.alert.channel, [row]))
        for (channel, label), rows in digests.items():
            by_id = {r.alert.id: r for r in rows}
            alerts = [r.alert for r in rows]
            for part in render_digest(alerts, label=label or "digest", now=now):
                unit = _Unit(channel, [by_id[i] for i in part.alert_ids], label or "digest", part)
                queues.setdefault(channel, deque()).append(unit)
        outcomes.extend(self._drain(queues, deadline))
        return outcomes

    def next_due(self) -> datetime | None:
        """When the loop next has something to send: rows due, past any pause and pacing slot."""
        interval = timedelta(seconds=max(0.0, self.settings.per_channel_interval))
        times = []
        for _channel, due, paused, last in outbox_waiting(self.store):
            times.append(max(due, paused or due, (last + interval) if last else due))
        return min(times) if times else None

    # -- the loop --------------------------------------------------------------------------------

    def _drain(
        self, queues: OrderedDict[str, deque[_Unit]], deadline: float | None
    ) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = []
        interval = timedelta(seconds=max(0.0, self.settings.per_channel_interval))
        while queues:
            if deadline is not None and self._monotonic() >= deadline:
                break
            slots: list[datetime] = []
            sent_any = False
            for channel in list(queues):
                now = self._clock()
                state = channel_state(self.store, channel)
                paused = from_iso(state["paused_until"])
                if paused is not None and paused > now:
                    del queues[channel]  # the pause outlasts this call; the rows stay due
                    continue
                last = from_iso(state["last_sent_at"])
                if last is not None and last + interval > now:
                    slots.append(last + interval)
                    continue
                unit = queues[channel].popleft()
                if not queues[channel]:
                    del queues[channel]
                outcomes.extend(self._deliver_unit(unit))
                sent_any = True
                if deadline is not None and self._monotonic() >= deadline:
                    return outcomes
            if not sent_any and slots:
                wait = (min(slots) - self._clock()).total_seconds()
                if deadline is not None and self._monotonic() + wait > deadline:
                    break
                if wait > 0:
                    self._sleep(wait)
        return outcomes

    def _deliver_unit(self, unit: _Unit) -> list[DeliveryOutcome]:
        """Verify if needed, claim, send and record one message. Errors become outcomes."""
        try:
            return self._deliver(unit)
        except DeliveryError as e:  # the message could not be built
            return self._fail(unit.channel, unit.rows, e, counts=False)
        except Exception as e:  # a bug must not stop the other alerts
            log.exception("delivery of alerts %s failed", [r.alert.id for r in unit.rows])
            now = self._clock()
            reason = f"internal error: {type(e).__name__}: {e}"
            until = now + timedelta(seconds=self.retry_base)
            for r in unit.rows:  # the post may have landed before the error: look first
                set_alerts(self.store, [r.alert.id], now, state="failed", last_error=reason,
                           next_attempt_at=until, payload={**r.payload, VERIFY: True})  # fmt: skip
            return [self._outcome(r, "failed", reason) for r in unit.rows]

    def _deliver(self, unit: _Unit) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = []
        rows = unit.rows
        message = unit.message
        if rows[0].alert.kind in ("reply", "update") and not all(r.alert.thread_ts for r in rows):
            resolved = self._attach_parent(rows)
            if isinstance(resolved, DeliveryOutcome):
                return [resolved]
            rows = resolved
        if any(r.payload.get(VERIFY) for r in rows):
            found, rows, failure = self._verify(unit.channel, rows)
            message = None if found else message
            outcomes.extend(found)
            if failure is not None:
                outcomes.extend(self._fail(unit.channel, rows, failure, counts=False))
                return outcomes
            if not rows:
                return outcomes
        messages = [(message, rows)] if message is not None else self._messages(unit, rows)
        for message, message_rows in messages:
            result = self._send(unit.channel, message, message_rows)
            outcomes.extend(result)
            if any(o.state != "sent" for o in result):
                break  # the channel is in trouble; the rest of a digest waits for the next pass
        return outcomes

    def _attach_parent(self, rows: list[OutboxRow]) -> list[OutboxRow] | DeliveryOutcome:
        """Replies and edits name their parent alert (``payload.parent_alert_id``); use its ts.

        The ts is stored on the rows before any send, so a crash check looks in the right thread.
        """
        now = self._clock()
        ids = [r.alert.id for r in rows]
        parent_id = rows[0].payload.get("parent_alert_id")
        parent = self.store.alert_row(int(parent_id)) if isinstance(parent_id, int) else None
        if parent is None or parent["state"] == "dead":
            reason = f"its parent alert {parent_id} was never posted"
            set_alerts(self.store, ids, now, state="dead", last_error=reason)
            return self._outcome(rows[0], "dead", reason)
        if parent["state"] != "sent" or not parent["slack_ts"]:
            until = now + timedelta(seconds=self.retry_base)
            set_alerts(self.store, ids, now, next_attempt_at=until)
            why = f"waiting for parent alert {parent_id} to be posted"
            return self._outcome(rows[0], "held", why)
        set_alerts(self.store, ids, now, thread_ts=parent["slack_ts"],
                   slack_channel=parent["slack_channel"])  # fmt: skip
        return outbox_rows(self.store, ids=ids)

    def _reply_slot(self, row: OutboxRow, now: datetime) -> DeliveryOutcome | None:
        """At most one thread reply per story every ``reply_batch``: later ones wait and merge."""
        parent = row.payload.get("parent_alert_id")
        if row.state != "pending" or not isinstance(parent, int) or row.payload.get(BATCHED):
            return None
        last = last_reply_sent(self.store, parent)
        if last is None:
            return None
        slot = last + timedelta(seconds=self.settings.reply_batch)
        if slot <= now:
            return None
        payload = {**row.payload, BATCHED: True}
        set_alerts(self.store, [row.alert.id], now, next_attempt_at=slot, payload=payload)
        return self._outcome(row, "held", f"batched into the next reply at {slot:%H:%M:%S} UTC")

    def _messages(
        self, unit: _Unit, rows: list[OutboxRow]
    ) -> list[tuple[Message, list[OutboxRow]]]:
        if unit.digest_label is None:
            row = rows[0]
            try:
                if row.alert.kind == "reply" and len(rows) > 1:
                    return [(render_replies([r.alert for r in rows]), rows)]
                return [(render(row.alert), rows)]
            except Exception as e:  # one unrenderable alert must not stop the others
                reason = f"could not build the message: {type(e).__name__}: {e}"
                raise DeliveryError(reason, permanent=True) from e
        by_id = {r.alert.id: r for r in rows}
        alerts = [r.alert for r in rows]
        messages = render_digest(alerts, label=unit.digest_label, now=self._clock())
        return [(m, [by_id[i] for i in m.alert_ids]) for m in messages]

    def _send(self, channel: str, message: Message, rows: list[OutboxRow]) -> list[DeliveryOutcome]:
        now = self._clock()
        claimed = set(claim_alerts(self.store, rows, now))
        rows = [r for r in rows if r.alert.id in claimed]
        if not rows:
            return []
        set_channel_state(self.store, channel, last_sent_at=now)
        alert = rows[0].alert
        try:
            if alert.kind == "update" and alert.thread_ts:
                where = rows[0].slack_channel or known_channel_id(self.store, channel) or channel
                posted = self.sink.update(where, alert.thread_ts, message)
            else:
                thread = alert.thread_ts if alert.kind == "reply" else None
                posted = self.sink.post(channel, message, thread_ts=thread)
        except DeliveryError as e:
            claimed_rows = [_attempted(r) for r in rows]
            return self._fail(channel, claimed_rows, e, counts=True)
        finally:
            # pace from the end of the call too, so a slow answer cannot squeeze the next send
            set_channel_state(self.store, channel, last_sent_at=self._clock())
        return self._sent(channel, rows, posted, "")

    # -- outcomes --------------------------------------------------------------------------------

    def _sent(
        self, channel: str, rows: list[OutboxRow], posted: Posted, note: str
    ) -> list[DeliveryOutcome]:
        now = self._clock()
        with self.store.transaction():
            for r in rows:
                payload = {k: v for k, v in r.payload.items() if k != VERIFY}
                set_alerts(self.store, [r.alert.id], now, state="sent", sent_at=now,
                           slack_ts=posted.ts, slack_channel=posted.channel_id,
                           last_error=None, payload=payload)  # fmt: skip
            set_channel_state(self.store, channel, failures=0, paused_until=None, pause_reason=None)
        return [DeliveryOutcome(r.alert.id, channel, "sent", note, posted.ts) for r in rows]

    def _fail(
        self, channel: str, rows: list[OutboxRow], error: DeliveryError, *, counts: bool
    ) -> list[DeliveryOutcome]:
        """Record a failed attempt. ``counts``: the attempt was a send (the row was claimed)."""
        now = self._clock()
        ids = [r.alert.id for r in rows]
        reason = error.reason
        if error.permanent:
            set_alerts(self.store, ids, now, state="dead", last_error=reason)
            log.warning("alerts %s dead in %s: %s", ids, channel, reason)
            return [self._outcome(r, "dead", reason) for r in rows]
        outcomes: list[DeliveryOutcome] = []
        with self.store.transaction():
            if error.retry_after is not None:  # rate limited: wait exactly what Slack asked
                wait = min(max(error.retry_after, 0.0), MAX_RETRY_AFTER)
                until = now + timedelta(seconds=wait)
                for r in rows:
                    attempts = max(0, r.alert.attempts - 1) if counts else r.alert.attempts
                    set_alerts(self.store, [r.alert.id], now, state="failed", attempts=attempts,
                               next_attempt_at=until, last_error=reason)  # fmt: skip
                    outcomes.append(self._outcome(r, "failed", reason))
                if error.channel_wide:
                    set_channel_state(self.store, channel, paused_until=until, pause_reason=reason)
                return outcomes
            uncertain = isinstance(error, UncertainDelivery)
            if error.channel_wide:  # Slack or the network is down: pause the whole channel
                failures = int(channel_state(self.store, channel)["failures"] or 0) + 1
                until = now + timedelta(seconds=self._pause_delay(failures))
                set_channel_state(self.store, channel, failures=failures, paused_until=until,
                                  pause_reason=reason)  # fmt: skip
                for r in rows:
                    payload = {**r.payload, VERIFY: True} if uncertain else r.payload
                    set_alerts(self.store, [r.alert.id], now, state="failed", next_attempt_at=until,
                               last_error=reason, payload=payload)  # fmt: skip
                    outcomes.append(self._outcome(r, "failed", reason))
                return outcomes
            for r in rows:
                payload = {**r.payload, VERIFY: True} if uncertain else r.payload
                if r.alert.attempts >= self.settings.max_attempts:
                    why = f"gave up after {r.alert.attempts} attempts: {reason}"
                    set_alerts(self.store, [r.alert.id], now, state="dead", last_error=why,
                               payload=payload)  # fmt: skip
                    outcomes.append(self._outcome(r, "dead", why))
                    continue
                until = now + timedelta(seconds=self._retry_delay(max(1, r.alert.attempts)))
                set_alerts(self.store, [r.alert.id], now, state="failed", next_attempt_at=until,
                           last_error=reason, payload=payload)  # fmt: skip
                outcomes.append(self._outcome(r, "failed", reason))
        return outcomes

    # -- reconciliation --------------------------------------------------------------------------

    def _recover_row(self, row: OutboxRow, now: datetime) -> list[DeliveryOutcome]:
        found = self._lookup(row.alert.channel, row)
        at = self._clock()
        if found is not None:
            return self._sent(row.alert.channel, [row], found, "found in Slack after a restart")
        payload = {k: v for k, v in row.payload.items() if k != VERIFY}
        set_alerts(self.store, [row.alert.id], at, state="pending", next_attempt_at=now,
                   payload=payload)  # fmt: skip
        return [self._outcome(row, "pending", "not in Slack: will be sent")]

    def _verify(
        self, channel: str, rows: list[OutboxRow]
    ) -> tuple[list[DeliveryOutcome], list[OutboxRow], DeliveryError | None]:
        """Look for rows whose last send may have landed. Returns (found, still to send, error)."""
        outcomes: list[DeliveryOutcome] = []
        remaining: list[OutboxRow] = []
        for index, row in enumerate(rows):
            if not row.payload.get(VERIFY):
                remaining.append(row)
                continue
            try:
                found = self._lookup(channel, row)
            except DeliveryError as e:
                return outcomes, remaining + rows[index:], e
            if found is not None:
                outcomes.extend(self._sent(channel, [row], found, "found in Slack history"))
            else:
                payload = {k: v for k, v in row.payload.items() if k != VERIFY}
                remaining.append(_with_payload(row, payload))
        return outcomes, remaining, None

    def _lookup(self, channel: str, row: OutboxRow) -> Posted | None:
        """Find the alert in Slack. A channel we cannot read is reported, then sent again."""
        since = from_iso(row.updated_at)
        oldest = since - HISTORY_MARGIN if since is not None else None
        thread = row.alert.thread_ts if row.alert.kind == "reply" else None
        if row.alert.kind == "update":
            return None  # an edit is idempotent: doing it twice shows the same message
        try:
            return self.sink.find_alert(
                channel,
                row.alert.id,
                oldest=oldest,
                channel_id=row.slack_channel or known_channel_id(self.store, channel),
                thread_ts=thread,
            )
        except DeliveryError as e:
            if e.permanent:
                log.warning("cannot check %s history for alert %s (%s): sending again",
                            channel, row.alert.id, e.reason)  # fmt: skip
                return None
            raise

    def _pace_after_restart(self) -> None:
        """A dead process may have had a post in flight after its last recorded send time, so
        a channel used within the last interval waits one full interval from now."""
        now = self._clock()
        interval = timedelta(seconds=max(0.0, self.settings.per_channel_interval))
        for state in channel_states(self.store):
            last = from_iso(state["last_sent_at"])
            if last is not None and last + interval > now:
                set_channel_state(self.store, state["channel"], last_sent_at=now)

    # -- helpers ---------------------------------------------------------------------------------

    def _retry_delay(self, attempts: int) -> float:
        base = min(self.retry_cap, self.retry_base * 2.0 ** (attempts - 1))
        return base * (1 + 0.25 * self._rng.random())

    def _pause_delay(self, failures: int) -> float:
        base = min(self.pause_cap, self.pause_base * 2.0 ** (failures - 1))
        return base * (1 + 0.25 * self._rng.random())

    @staticmethod
    def _outcome(row: OutboxRow, state: str, reason: str) -> DeliveryOutcome:
        return DeliveryOutcome(row.alert.id, row.alert.channel, state, reason)


def _attempted(row: OutboxRow) -> OutboxRow:
    """The row as claimed: one more attempt."""
    return replace(row, alert=replace(row.alert, attempts=row.alert.attempts + 1))


def _with_payload(row: OutboxRow, payload: dict[str, Any]) -> OutboxRow:
    return replace(row, payload=payload)
