"""Putting entries into a test database through the store's one write path, ``Store.apply``.

Tests of delivery, the CLI and history need rows to work on without running a cycle. They build
the plan a cycle would have made (each matching entry starts its own story and alerts in the
channels given) and apply it exactly as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aggregator.cycle.plan import FeedPlan, NewEntry, PlannedAlert
from aggregator.models import Entry, FeedOutcome, FeedResult, TopicMatch
from aggregator.store import Applied, Store


@dataclass(frozen=True, slots=True)
class Item:
    """An entry, the topics it matched, and the channels it alerts in (each with all topics)."""

    entry: Entry
    matches: tuple[TopicMatch, ...] = ()
    channels: tuple[str, ...] = ()
    story_id: int | None = None  # join this story instead of starting one


def store_items(
    store: Store, items: Sequence[Item], now: datetime, *, primary: bool = False
) -> Applied:
    """Apply one plan holding ``items``; a matching item, or one that alerts, starts a story.

    Like the cycle, it reads the first free story id inside the write transaction.
    """
    with store.transaction():
        next_story = store.entries.view("", ()).next_story_id
        steps = []
        for item in items:
            story, starts = item.story_id, False
            if story is None and (item.matches or item.channels):
                story, starts = next_story, True
                next_story += 1
            alerts = tuple(PlannedAlert(c, item.matches) for c in item.channels)
            steps.append(NewEntry(item.entry, item.matches, story, starts, alerts))
        feed = items[0].entry.feed_url if items else ""
        outcome = FeedOutcome(feed, FeedResult.FETCHED, new_entries=len(steps))
        plan = FeedPlan(feed, tuple(steps), primary, None, None, outcome)
        return store.apply(plan, now)


def alert_item(entry: Entry, topic: str, channel: str, *terms: str) -> Item:
    """An entry that matched one topic and alerts in its channel."""
    match = TopicMatch(topic, tuple(terms))
    return Item(entry, (match,), (channel,))


def plan_of(steps: Sequence[NewEntry], feed: str = "https://feeds.example/a") -> FeedPlan:
    """A plan of hand-made steps, as a cycle would apply it (no feed row, no fetch log)."""
    outcome = FeedOutcome(feed, FeedResult.FETCHED, new_entries=len(steps))
    return FeedPlan(feed, tuple(steps), False, None, None, outcome)
