"""What the team's labels say about the alerts: per topic, how many were sent, how many were
marked relevant or not, and the live precision among the marked ones, with its 95% interval.

An alert counts once per topic it carries, by its entry's resolved label for that topic (every
source: Slack reactions, ``aggregator label``): the majority of the votes, a tie being unsure.
Precision is relevant / (relevant + not relevant); its interval is Wilson's score interval,
which stays inside 0-100% and is honest about a handful of marks. "Possibly relevant" items of a
review digest are not alerts and are not counted.

The weekly summary is the same figures for last ISO week, in three lines, queued once per week
to the ops channel through the outbox.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aggregator.models import AlertKind
from aggregator.store import Store
from aggregator.store.labels import ResolvedLabel
from aggregator.store.reactions import SentAlert

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
SUMMARY_KEY = "feedback-summary"


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for a proportion; None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - margin)  # exact at the ends, not 1 - 1e-16
    high = 1.0 if successes == trials else min(1.0, centre + margin)
    return low, high


@dataclass(frozen=True, slots=True)
class TopicFigures:
    topic: str
    alerts: int
    relevant: int  # alerts whose resolved label is relevant
    not_relevant: int
    unsure: int  # labelled, but the votes tie (or unsure won)
    unmarked: int  # nobody labelled them

    @property
    def marked(self) -> int:
        return self.relevant + self.not_relevant

    @property
    def precision(self) -> float | None:
        return self.relevant / self.marked if self.marked else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.relevant, self.marked)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval or (None, None)
        return {
            "alerts": self.alerts, "relevant": self.relevant,
            "not_relevant": self.not_relevant, "unsure": self.unsure,
            "unmarked": self.unmarked, "marked": self.marked,
            "precision": _rounded(self.precision), "precision_low": _rounded(low),
            "precision_high": _rounded(high),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class MarkedNotRelevant:
    """An alert the team marked not relevant for one of its topics, with the votes."""

    alert: SentAlert
    topic: str
    votes: ResolvedLabel


@dataclass(frozen=True, slots=True)
class Feedback:
    since: datetime
    until: datetime | None
    topics: tuple[TopicFigures, ...]
    not_relevant: tuple[MarkedNotRelevant, ...]


def gather(
    store: Store, since: datetime, until: datetime | None = None, topics: Sequence[str] = ()
) -> Feedback:
    """The figures of the alerts sent in [since, until); ``topics`` (the configured ones) are
    listed first, even without alerts, then any other topic an alert carried."""
    alerts = store.reactions.sent(since, until)
    entry_ids = sorted({a.entry_id for a in alerts if a.entry_id is not None})
    labels: dict[tuple[int, str], ResolvedLabel] = {}
    for start in range(0, len(entry_ids), 500):
        for r in store.labels.resolved(entry_ids=entry_ids[start : start + 500]):
            labels[(r.entry_id, r.topic)] = r
    names = list(dict.fromkeys([*topics, *sorted({t for a in alerts for t in a.topics})]))
    counts = {name: [0, 0, 0, 0, 0] for name in names}  # alerts, 1, 0, unsure, unmarked
    marked_not: list[MarkedNotRelevant] = []
    for alert in alerts:
        for topic in alert.topics:
            row = counts[topic]
            row[0] += 1
            found = labels.get((alert.entry_id, topic)) if alert.entry_id is not None else None
            if found is None:
                row[4] += 1
            elif found.label is None:
                row[3] += 1
            else:
                row[1 if found.label == 1 else 2] += 1
                if found.label == 0:
                    marked_not.append(MarkedNotRelevant(alert, topic, found))
    figures = tuple(TopicFigures(name, *counts[name]) for name in names)
    return Feedback(since, until, figures, tuple(marked_not))


def as_json(feedback: Feedback) -> dict[str, Any]:
    return {
        "since": feedback.since.isoformat(),
        "until": feedback.until.isoformat() if feedback.until else None,
        "topics": {f.topic: f.as_dict() for f in feedback.topics},
        "not_relevant": [
            {"alert_id": m.alert.alert_id, "entry_id": m.alert.entry_id, "topic": m.topic,
             "title": m.alert.title, "link": m.alert.link, "source": m.alert.source,
             "sent_at": m.alert.sent_at.isoformat(), "votes": _votes(m.votes)}
            for m in feedback.not_relevant
        ],
    }  # fmt: skip


def format_report(feedback: Feedback, explain: Callable[[MarkedNotRelevant], str]) -> str:
    """The table, then each alert marked not relevant with why it alerted (``explain``)."""
    header = ("topic", "alerts", "relevant", "not relevant", "unsure", "unmarked", "precision")
    rows = [
        (f.topic, str(f.alerts), str(f.relevant), str(f.not_relevant), str(f.unsure),
         str(f.unmarked), precision_text(f))
        for f in feedback.topics
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"alerts sent since {feedback.since:%Y-%m-%d %H:%M} UTC, as the team marked them:"]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True)]
        lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    if not feedback.topics:
        lines.append("  no topics")
    lines.append("precision: relevant among the marked alerts, with its 95% interval")
    if feedback.not_relevant:
        lines += ["", f"marked not relevant ({len(feedback.not_relevant)}):"]
        for m in feedback.not_relevant:
            a = m.alert
            lines.append(
                f"  {m.topic}: {a.title!r} ({a.source or 'unknown source'}, "
                f"{a.sent_at:%Y-%m-%d %H:%M} UTC, alert {a.alert_id}, entry {a.entry_id}; "
                f"{_votes_text(m.votes)})"
            )
            if a.link:
                lines.append(f"      {a.link}")
            lines.append(f"      why it alerted: {explain(m)}")
    return "\n".join(lines)


def precision_text(f: TopicFigures) -> str:
    interval = f.interval
    if f.precision is None or interval is None:
        return "- (none marked)"
    return f"{_pct(f.precision)} ({_pct(interval[0])}-{_pct(interval[1])})"


# -- the weekly summary ---------------------------------------------------------------------------


def last_week(now: datetime) -> tuple[datetime, datetime, str]:
    """The previous ISO week (Monday 00:00 to Monday 00:00 UTC) and its name, ``2026-W47``."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = midnight - timedelta(days=now.weekday())
    start = end - timedelta(days=7)
    year, week, _ = start.isocalendar()
    return start, end, f"{year}-W{week:02d}"


def summary_text(feedback: Feedback, week: str) -> str:
    """The figures of one week in three lines."""
    assert feedback.until is not None
    last_day = feedback.until - timedelta(days=1)
    sent = [f for f in feedback.topics if f.alerts]
    counts = ", ".join(f"{f.topic} {f.alerts}" for f in sent)
    marks = "; ".join(
        f"{f.topic} {f.relevant} relevant, {f.not_relevant} not relevant, "
        f"{f.unmarked + f.unsure} unmarked or unsure"
        for f in sent
    )
    precision = "; ".join(f"{f.topic} {precision_text(f)}" for f in sent)
    return "\n".join([
        f"Alerts sent last week ({week}, {feedback.since:%b %d} to {last_day:%b %d}): {counts}.",
        f"Marked by the team: {marks}.",
        f"Live precision (95% interval): {precision}. "
        "Run 'aggregator feedback --since 7d' for the alerts marked not relevant and why.",
    ])  # fmt: skip


def queue_weekly_summary(
    store: Store, ops_channel: str | None, now: datetime, topics: Sequence[str] = ()
) -> int | None:
    """Queue last week's summary to the ops channel, once per ISO week; the alert id, or None
    (no ops channel, no alert last week, or already queued)."""
    if not ops_channel:
        return None
    start, end, week = last_week(now)
    feedback = gather(store, start, end, topics)
    if not any(f.alerts for f in feedback.topics):
        return None
    text = summary_text(feedback, week)
    with store.transaction():
        key = f"{SUMMARY_KEY}:{week}"
        return store.outbox.queue_notice(ops_channel, AlertKind.OPS, text, now, key)


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _votes(v: ResolvedLabel) -> dict[str, int]:
    return {"relevant": v.relevant, "not_relevant": v.not_relevant, "unsure": v.unsure}


def _votes_text(v: ResolvedLabel) -> str:
    text = f"{v.not_relevant} vote(s) not relevant"
    if v.relevant:
        text += f", {v.relevant} relevant"
    return text
