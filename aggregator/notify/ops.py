"""Operations on the outbox for the CLI: list what waits or died, re-queue it, test each channel.

Plain functions that return text or data; ``aggregator/cli.py`` only wires them to commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aggregator.config.model import TopicConfig
from aggregator.errors import DeliveryError
from aggregator.models import AlertState, HoldMode, NoticePayload
from aggregator.notify.render import render_test
from aggregator.notify.sink import Sink
from aggregator.store import Store

LISTED = (AlertState.PENDING, AlertState.SENDING, AlertState.FAILED, AlertState.HELD,
          AlertState.DEAD)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChannelCheck:
    channel: str
    ok: bool
    message: str


def outbox_report(store: Store, now: datetime, *, states: Sequence[AlertState] = LISTED) -> str:
    """Every alert that is not yet sent, with its state, timing and reason, and paused channels."""
    rows = store.outbox.rows(*states)
    counts = store.outbox.counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in (AlertState.SENT, *LISTED))
    lines = [f"outbox: {summary}"]
    if not rows:
        lines.append("nothing is waiting.")
    for r in rows:
        a = r.alert
        notice = a.payload.text if isinstance(a.payload, NoticePayload) else ""
        title = (a.title or notice or a.kind)[:70]
        when = ""
        if r.state in (AlertState.PENDING, AlertState.FAILED, AlertState.HELD):
            wait = (r.next_attempt_at - now).total_seconds()
            when = f", due {'now' if wait <= 0 else 'in ' + _duration(wait)}"
        hold = r.marks.hold
        why = f" - {r.last_error}" if r.last_error else ""
        if r.state == AlertState.HELD and hold:
            why = f" - {hold}" + (f" ({r.marks.digest})" if hold == HoldMode.DIGEST else "")
        lines.append(
            f"  #{a.id} {r.state:<7} {a.channel} {a.kind} attempts={a.attempts}{when}: "
            f"{title!r}{why}"
        )
    for channel in sorted({r.alert.channel for r in rows}):
        state = store.outbox.channel(channel)
        paused = state.paused_until
        if paused is not None and paused > now:
            lines.append(
                f"  channel {channel} paused for {_duration((paused - now).total_seconds())}: "
                f"{state.pause_reason}"
            )
    return "\n".join(lines)


def retry(store: Store, now: datetime, ids: Sequence[int] = (), *, dead: bool = False) -> str:
    """Re-queue these alerts (or every dead one) for sending now, with fresh attempts."""
    if not ids and not dead:
        return "give alert ids or --dead"
    count = store.outbox.requeue(now, ids, dead=dead)
    what = "dead alert" if dead and not ids else "alert"
    return f"re-queued {count} {what}{'' if count == 1 else 's'}"


def slack_test(
    sink: Sink, topics: Sequence[TopicConfig], now: datetime, *, ops_channel: str | None = None
) -> list[ChannelCheck]:
    """Post a test message to every configured channel and say, per channel, what happened."""
    channels = sorted({t.channel for t in topics} | ({ops_channel} if ops_channel else set()))
    try:
        who = sink.identity()
    except DeliveryError as e:
        if e.permanent:
            return [ChannelCheck(c, False, f"not tried: {e.reason}") for c in channels]
        who = f"(auth.test failed: {e.reason})"
    checks = []
    for channel in channels:
        try:
            posted = sink.post(channel, render_test(channel, now))
        except DeliveryError as e:
            checks.append(ChannelCheck(channel, False, e.reason))
            continue
        checks.append(ChannelCheck(channel, True, f"posted as {who} (ts {posted.ts})"))
    return checks


def format_checks(checks: Sequence[ChannelCheck]) -> str:
    if not checks:
        return "no channels are configured in topics.toml"
    return "\n".join(f"{c.channel}: {'ok' if c.ok else 'FAILED'}: {c.message}" for c in checks)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
