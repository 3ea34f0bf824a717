"""One read of the team's reactions on recent alerts, through ``conversations.history``.

Only alerts sent within ``[feedback] window`` are read, one channel at a time, each channel over
the span from its oldest to its newest such alert (both included), in pages of 200, stopping as
soon as every alert of the channel was seen. Calls are paced :data:`READ_PACE` apart: 30 a
minute, well inside Tier 3 (50+ a minute), which ``conversations.history`` shares with the
delivery loop's crash checks. A rate limit ends the read; any other failure skips its channel.
Either way nothing is written for what was not read: labels wait, and the next read catches up.

An alert's reactions label its entry for every topic the alert carries. A digest's message
(several alerts) and thread replies are not read as labels. Alerts older than the window are not
read, and the labels they have stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from aggregator.config.model import FeedbackSettings
from aggregator.errors import DeliveryError
from aggregator.feedback.votes import ReactionMeaning, changes
from aggregator.models import ChannelMessage, HistoryPage
from aggregator.store import Store
from aggregator.store.reactions import ReadableAlert

READ_PACE = 2.0  # seconds from one history call to the next
PAGE = 200  # messages a call (Slack's recommended most)
MAX_PAGES = 50  # a channel's pages in one read: 10,000 messages between its alerts


class HistoryReader(Protocol):
    """The one Slack call a read makes (:class:`~aggregator.notify.slack.SlackSink` has it)."""

    def history_page(
        self, channel_id: str, *, oldest: str, latest: str, cursor: str | None = None,
        limit: int = PAGE,
    ) -> HistoryPage: ...  # fmt: skip


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


@dataclass(frozen=True, slots=True)
class ReadReport:
    """What one read did."""

    alerts: int  # alerts in the window, sent as a message of their own
    channels: int
    calls: int  # conversations.history calls made
    found: int  # alerts whose message was found in Slack
    changed: int  # people whose label on an alert was added, changed or removed
    paced: float  # seconds spent waiting between calls
    failures: tuple[str, ...] = ()  # per channel that could not be read, why
    stopped: str | None = None  # why the read ended early

    @property
    def complete(self) -> bool:
        return not self.failures and self.stopped is None

    def summary(self) -> str:
        text = (
            f"read reactions on {self.found} of {self.alerts} alerts in {self.channels} "
            f"channel(s): {self.calls} Slack call(s), {self.changed} label change(s)"
        )
        if self.failures:
            text += f"; could not read {'; '.join(self.failures)}"
        if self.stopped:
            text += f"; stopped: {self.stopped}"
        return text


@dataclass
class _Pacer:
    pace: float
    monotonic: Callable[[], float]
    wait: Callable[[float], bool]
    last: float | None = None
    waited: float = 0.0
    calls: int = 0

    def next_call(self) -> bool:
        """Wait for the next call's turn; False when the wait was cut short by a stop."""
        if self.last is not None:
            delay = self.last + self.pace - self.monotonic()
            if delay > 0:
                self.waited += delay
                if self.wait(delay):
                    return False
        self.last = self.monotonic()
        self.calls += 1
        return True


@dataclass
class _Tally:
    found: int = 0
    changed: int = 0
    failures: list[str] = field(default_factory=list)
    stopped: str | None = None


def read_reactions(
    store: Store,
    reader: HistoryReader,
    settings: FeedbackSettings,
    now: datetime,
    *,
    pace: float = READ_PACE,
    monotonic: Callable[[], float] = time.monotonic,
    wait: Callable[[float], bool] = _sleep,
) -> ReadReport:
    """Read the reactions on every alert sent in the window and store the labels they make.

    ``wait(seconds)`` sleeps between calls and returns True when the read should stop (the
    service is stopping). Raises StoreError on a database error; Slack's failures are reported.
    """
    alerts = store.reactions.readable(now - timedelta(seconds=settings.window))
    by_channel: dict[str, list[ReadableAlert]] = {}
    for alert in alerts:
        by_channel.setdefault(alert.channel_id, []).append(alert)
    meaning = ReactionMeaning(settings.relevant, settings.not_relevant)
    pacer = _Pacer(pace, monotonic, wait)
    tally = _Tally()
    for channel_id, channel_alerts in by_channel.items():
        _read_channel(store, reader, meaning, pacer, tally, channel_id, channel_alerts, now)
        if tally.stopped:
            break
    return ReadReport(
        alerts=len(alerts),
        channels=len(by_channel),
        calls=pacer.calls,
        found=tally.found,
        changed=tally.changed,
        paced=round(pacer.waited, 3),
        failures=tuple(tally.failures),
        stopped=tally.stopped,
    )


def _read_channel(
    store: Store, reader: HistoryReader, meaning: ReactionMeaning, pacer: _Pacer, tally: _Tally,
    channel_id: str, alerts: list[ReadableAlert], now: datetime,
) -> None:  # fmt: skip
    wanted = {a.ts: a for a in alerts}
    stamps = sorted(wanted, key=float)
    oldest, latest = stamps[0], stamps[-1]
    name = alerts[0].channel
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        if not pacer.next_call():
            tally.stopped = "the service is stopping"
            return
        try:
            page = reader.history_page(channel_id, oldest=oldest, latest=latest, cursor=cursor)
        except DeliveryError as e:
            if e.retry_after is not None:
                tally.stopped = f"Slack rate-limited the read in {name}: {e.reason}"
            else:
                tally.failures.append(f"{name}: {e.reason}")
            return
        for message in page.messages:
            alert = wanted.pop(message.ts, None) if _top_level(message) else None
            if alert is not None:
                tally.found += 1
                tally.changed += _apply(store, meaning, alert, message, now)
        cursor = page.next_cursor
        if not wanted or not cursor:
            return


def _top_level(message: ChannelMessage) -> bool:
    """A message of the channel itself, not a thread reply also sent to the channel."""
    return message.thread_ts is None or message.thread_ts == message.ts


def _apply(
    store: Store, meaning: ReactionMeaning, alert: ReadableAlert, message: ChannelMessage,
    now: datetime,
) -> int:  # fmt: skip
    found = changes(store.reactions.seen(alert.alert_id), meaning.kinds(message.reactions), now)
    if found:
        store.reactions.record(alert, found)
    return len(found)
