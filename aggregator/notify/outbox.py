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

from aggregator.config.model import Settings, TopicConfig
from aggregator.errors import DeliveryError
from aggregator.models import AlertKind, AlertPayload, AlertState, DeliveryOutcome, HoldMode
from aggregator.notify.render import Message, render, render_digest, render_replies
from aggregator.notify.senders import another_live_process, this_process
from aggregator.notify.sink import Posted, Sink, UncertainDelivery
from aggregator.notify.windows import Hold, hold_for, review_hold
from aggregator.redact import Redactor
from aggregator.store import Store
from aggregator.store.rows import OutboxRow
from aggregator.store.schema import from_iso

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 900.0  # a 429 waits exactly Retry-After, but never more than 15 minutes
HISTORY_MARGIN = timedelta(minutes=30)  # how far before the send to search the history
STALE_SENDING = 120.0  # seconds: a live send ends long before this (the client times out at 15 s)


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
        self.sender = this_process()  # named on the rows this loop claims

    # -- public ----------------------------------------------------------------------------------

    def recover(self, now: datetime, *, older_than: float = 0.0) -> list[DeliveryOutcome]:
        """Settle rows left in ``sending`` by a crash: sent if Slack has them, else due again.

        At start-up (``older_than=0``) every such row belongs to a dead process, except one that
        another live process (``poll --once`` beside the service) is sending right now: that one
        is left to it unless it is stale. A process that may run beside a live one passes
        ``older_than`` so it leaves the other's in-flight send alone; :meth:`deliver_due` does
        that itself for rows stuck that long.
        """
        outcomes: list[DeliveryOutcome] = []
        cutoff = now - timedelta(seconds=older_than)
        stale = now - timedelta(seconds=STALE_SENDING)
        if older_than <= 0:
            self._pace_after_restart()
        for row in self.store.outbox.rows(AlertState.SENDING):
            since = from_iso(row.updated_at)
            if older_than > 0 and since is not None and since > cutoff:
                continue
            young = since is not None and since > stale
            if young and another_live_process(row.marks.sender):
                continue
            try:
                outcomes.extend(self._recover_row(row, now))
            except DeliveryError as e:
                at = self._clock()
                until = at + timedelta(seconds=self._pause_delay(1))
                reason = f"could not check Slack history: {e.reason}"
                self.store.outbox.mark_failed([row], at, until=until, reason=reason, verify=True)
                outcomes.append(self._outcome(row, AlertState.FAILED, e.reason))
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
        for row in self.store.outbox.due(now):
            kind = row.alert.kind
            if (
                row.state == AlertState.PENDING
                and kind == AlertKind.ALERT
                and row.marks.hold is None
            ):
                hold = _hold(row, self.topics, now)
                if hold is not None:
                    digest = hold.label if hold.mode == HoldMode.DIGEST else None
                    self.store.outbox.hold(
                        row, now, until=hold.until, mode=hold.mode, digest=digest
                    )
                    why = f"{hold.mode} until {hold.until.isoformat(timespec='minutes')}"
                    outcomes.append(self._outcome(row, AlertState.HELD, why))
                    continue
            if row.marks.hold == HoldMode.DIGEST:
                key = (row.alert.channel, row.marks.digest or "")
                digests.setdefault(key, []).append(row)
                continue
            if kind == AlertKind.REPLY:
                waiting = self._reply_slot(row, now)
                if waiting is not None:
                    outcomes.append(waiting)
                    continue
                parent = row.alert.parent_alert_id
                if parent is not None:
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
        for w in self.store.outbox.waiting():
            due = w.earliest_due
            last = w.last_sent_at
            times.append(max(due, w.paused_until or due, (last + interval) if last else due))
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
                state = self.store.outbox.channel(channel)
                paused = state.paused_until
                if paused is not None and paused > now:
                    # Waited for like a pacing slot: a pause that ends while other channels are
                    # still sending is honoured in this pass, not in the next cycle.
                    slots.append(paused)
                    continue
                last = state.last_sent_at
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
                if wait > self.inline_wait:
                    break  # nothing can go out soon: the rows stay due for a later call
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
            reason = Redactor()(f"internal error: {type(e).__name__}: {e}")  # stored: no tokens
            until = now + timedelta(seconds=self.retry_base)
            # the post may have landed before the error: look first
            self.store.outbox.mark_failed(unit.rows, now, until=until, reason=reason, verify=True)
            return [self._outcome(r, AlertState.FAILED, reason) for r in unit.rows]

    def _deliver(self, unit: _Unit) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = []
        rows = unit.rows
        message = unit.message
        followup = rows[0].alert.kind in (AlertKind.REPLY, AlertKind.UPDATE)
        if followup and not all(r.alert.thread_ts for r in rows):
            resolved = self._attach_parent(rows)
            if isinstance(resolved, DeliveryOutcome):
                return [resolved]
            if not resolved:
                return []  # another delivery loop took them meanwhile
            rows = resolved
        if rows[0].alert.kind == AlertKind.UPDATE:
            newer = self.store.outbox.newer_edit(rows[0])
            if newer is not None:
                return self._superseded(unit.channel, rows, newer)
        if any(r.marks.verify for r in rows):
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
            if any(o.state != AlertState.SENT for o in result):
                break  # the channel is in trouble; the rest of a digest waits for the next pass
        return outcomes

    def _attach_parent(self, rows: list[OutboxRow]) -> list[OutboxRow] | DeliveryOutcome:
        """Replies and edits name their parent alert (``payload.parent_alert_id``); use its ts.

        The ts is stored on the rows before any send, so a crash check looks in the right thread.
        """
        now = self._clock()
        parent_id = rows[0].alert.parent_alert_id
        parent = self.store.outbox.row(parent_id) if parent_id is not None else None
        if parent is None or parent.state == AlertState.DEAD:
            reason = f"its parent alert {parent_id} was never posted"
            self.store.outbox.mark_dead(rows, now, reason)
            return self._outcome(rows[0], AlertState.DEAD, reason)
        if parent.state == AlertState.SENDING:
            # In flight from the other loop (the service beside poll --once): posted in a moment.
            # These stay due for the next pass, rather than waiting a whole retry.
            return []
        if parent.state != AlertState.SENT or not parent.slack_ts:
            until = now + timedelta(seconds=self.retry_base)
            self.store.outbox.postpone(rows, now, until=until)
            why = f"waiting for parent alert {parent_id} to be posted"
            return self._outcome(rows[0], AlertState.HELD, why)
        return self.store.outbox.attach_thread(
            rows, now, thread_ts=parent.slack_ts, channel_id=parent.slack_channel
        )

    def _superseded(self, channel: str, rows: list[OutboxRow], newer: int) -> list[DeliveryOutcome]:
        """An edit shows the story whole, as it was when queued, and a later edit of the same
        alert (queued while this one was in flight, beside ``poll --once``) shows it as it is
        now: this one is done without a send, so it can never land after that one."""
        row = rows[0]
        ts, where = row.alert.thread_ts or "", row.slack_channel or channel
        self.store.outbox.mark_sent(rows, self._clock(), ts=ts, channel_id=where)
        note = f"superseded by edit {newer}"
        return [DeliveryOutcome(r.alert.id, channel, AlertState.SENT, note, ts) for r in rows]

    def _reply_slot(self, row: OutboxRow, now: datetime) -> DeliveryOutcome | None:
        """At most one thread reply per story every ``reply_batch``: later ones wait and merge."""
        parent = row.alert.parent_alert_id
        if row.state != AlertState.PENDING or parent is None or row.marks.batched:
            return None
        last = self.store.outbox.last_reply_sent(parent)
        if last is None:
            return None
        slot = last + timedelta(seconds=self.settings.reply_batch)
        if slot <= now:
            return None
        self.store.outbox.postpone([row], now, until=slot, batched=True)
        why = f"batched into the next reply at {slot:%H:%M:%S} UTC"
        return self._outcome(row, AlertState.HELD, why)

    def _messages(
        self, unit: _Unit, rows: list[OutboxRow]
    ) -> list[tuple[Message, list[OutboxRow]]]:
        if unit.digest_label is None:
            row = rows[0]
            try:
                if row.alert.kind == AlertKind.REPLY and len(rows) > 1:
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
        outbox = self.store.outbox
        read, rows = rows, outbox.claim(rows, now, sender=self.sender)
        if len(rows) < len(read):
            # Another loop took some of these rows since they were read, and this message names
            # them all: it is not sent. Ours wait again, to be read afresh (and sent alone).
            outbox.release(rows, read, now)
            return []
        outbox.note_sent(channel, now)
        alert = rows[0].alert
        try:
            if alert.kind == AlertKind.UPDATE and alert.thread_ts:
                where = rows[0].slack_channel or outbox.known_channel_id(channel) or channel
                posted = self.sink.update(where, alert.thread_ts, message)
            else:
                thread = alert.thread_ts if alert.kind == AlertKind.REPLY else None
                posted = self.sink.post(channel, message, thread_ts=thread)
        except DeliveryError as e:
            return self._fail(channel, rows, e, counts=True)
        finally:
            # pace from the end of the call too, so a slow answer cannot squeeze the next send
            outbox.note_sent(channel, self._clock())
        return self._sent(channel, rows, posted, "")

    # -- outcomes --------------------------------------------------------------------------------

    def _sent(
        self, channel: str, rows: list[OutboxRow], posted: Posted, note: str
    ) -> list[DeliveryOutcome]:
        now = self._clock()
        with self.store.transaction():
            self.store.outbox.mark_sent(rows, now, ts=posted.ts, channel_id=posted.channel_id)
            self.store.outbox.recovered(channel)
        return [
            DeliveryOutcome(r.alert.id, channel, AlertState.SENT, note, posted.ts) for r in rows
        ]

    def _fail(
        self, channel: str, rows: list[OutboxRow], error: DeliveryError, *, counts: bool
    ) -> list[DeliveryOutcome]:
        """Record a failed attempt. ``counts``: the attempt was a send (the row was claimed)."""
        now = self._clock()
        outbox = self.store.outbox
        reason = error.reason
        if error.permanent:
            outbox.mark_dead(rows, now, reason)
            log.warning("alerts %s dead in %s: %s", [r.alert.id for r in rows], channel, reason)
            return [self._outcome(r, AlertState.DEAD, reason) for r in rows]
        failed = [self._outcome(r, AlertState.FAILED, reason) for r in rows]
        with self.store.transaction():
            if error.retry_after is not None:  # rate limited: wait exactly what Slack asked
                wait = min(max(error.retry_after, 0.0), MAX_RETRY_AFTER)
                until = now + timedelta(seconds=wait)
                for r in rows:  # a rate limit is not the message's fault: the attempt is undone
                    attempts = max(0, r.alert.attempts - 1) if counts else r.alert.attempts
                    outbox.mark_failed([r], now, until=until, reason=reason, attempts=attempts)
                if error.channel_wide:
                    outbox.pause(channel, until, reason)
                return failed
            uncertain = isinstance(error, UncertainDelivery)
            if error.channel_wide:  # Slack or the network is down: pause the whole channel
                failures = outbox.channel(channel).failures + 1
                until = now + timedelta(seconds=self._pause_delay(failures))
                outbox.pause(channel, until, reason, failures)
                outbox.mark_failed(rows, now, until=until, reason=reason, verify=uncertain)
                return failed
            outcomes: list[DeliveryOutcome] = []
            for r in rows:
                if r.alert.attempts >= self.settings.max_attempts:
                    why = f"gave up after {r.alert.attempts} attempts: {reason}"
                    outbox.mark_dead([r], now, why, verify=uncertain)
                    outcomes.append(self._outcome(r, AlertState.DEAD, why))
                    continue
                until = now + timedelta(seconds=self._retry_delay(max(1, r.alert.attempts)))
                outbox.mark_failed([r], now, until=until, reason=reason, verify=uncertain)
                outcomes.append(self._outcome(r, AlertState.FAILED, reason))
        return outcomes

    # -- reconciliation --------------------------------------------------------------------------

    def _recover_row(self, row: OutboxRow, now: datetime) -> list[DeliveryOutcome]:
        found = self._lookup(row.alert.channel, row)
        at = self._clock()
        if found is not None:
            return self._sent(row.alert.channel, [row], found, "found in Slack after a restart")
        self.store.outbox.back_to_pending(row, at, due=now)
        return [self._outcome(row, AlertState.PENDING, "not in Slack: will be sent")]

    def _verify(
        self, channel: str, rows: list[OutboxRow]
    ) -> tuple[list[DeliveryOutcome], list[OutboxRow], DeliveryError | None]:
        """Look for rows whose last send may have landed. Returns (found, still to send, error)."""
        outcomes: list[DeliveryOutcome] = []
        remaining: list[OutboxRow] = []
        for index, row in enumerate(rows):
            if not row.marks.verify:
                remaining.append(row)
                continue
            try:
                found = self._lookup(channel, row)
            except DeliveryError as e:
                return outcomes, remaining + rows[index:], e
            if found is not None:
                outcomes.extend(self._sent(channel, [row], found, "found in Slack history"))
            else:
                remaining.append(replace(row, marks=replace(row.marks, verify=False)))
        return outcomes, remaining, None

    def _lookup(self, channel: str, row: OutboxRow) -> Posted | None:
        """Find the alert in Slack. A channel we cannot read is reported, then sent again."""
        since = from_iso(row.updated_at)
        oldest = since - HISTORY_MARGIN if since is not None else None
        thread = row.alert.thread_ts if row.alert.kind == AlertKind.REPLY else None
        if row.alert.kind == AlertKind.UPDATE:
            return None  # an edit is idempotent: doing it twice shows the same message
        try:
            return self.sink.find_alert(
                channel,
                row.alert.id,
                oldest=oldest,
                channel_id=row.slack_channel or self.store.outbox.known_channel_id(channel),
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
        for state in self.store.outbox.channels():
            last = state.last_sent_at
            if last is not None and last + interval > now:
                self.store.outbox.note_sent(state.channel, now)

    # -- helpers ---------------------------------------------------------------------------------

    def _retry_delay(self, attempts: int) -> float:
        base = min(self.retry_cap, self.retry_base * 2.0 ** (attempts - 1))
        return base * (1 + 0.25 * self._rng.random())

    def _pause_delay(self, failures: int) -> float:
        base = min(self.pause_cap, self.pause_base * 2.0 ** (failures - 1))
        return base * (1 + 0.25 * self._rng.random())

    @staticmethod
    def _outcome(row: OutboxRow, state: AlertState, reason: str) -> DeliveryOutcome:
        return DeliveryOutcome(row.alert.id, row.alert.channel, state, reason)


def _hold(row: OutboxRow, topics: Sequence[TopicConfig], now: datetime) -> Hold | None:
    """Whether a fresh alert waits: a "possibly relevant" item always waits for its topics'
    review time; an alert waits for a digest topic's digest or the end of quiet hours."""
    payload = row.alert.payload
    if isinstance(payload, AlertPayload) and payload.review:
        return review_hold(row.alert.topics, topics, now)
    return hold_for(row.alert.topics, topics, now)
