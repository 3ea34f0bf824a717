"""The database edge: one :class:`Store` per thread, with one part per kind of stored thing.

===================  =======================================================================
``store.feeds``      the feeds polled: validators, schedule, status (:mod:`.feeds`)
``store.entries``    entries, the stories they form, their matches and full-text index
``store.outbox``     alert rows and channel pacing: what waits to be sent, and what was
``store.history``    the fetch log, each feed's activity, retention
``store.labels``     what people said entries are worth per topic: training data (:mod:`.labels`)
``store.reactions``  the team's reactions on sent alerts, read from Slack as labels
===================  =======================================================================

:meth:`Store.apply` writes a cycle's :class:`~aggregator.cycle.plan.FeedPlan` in one transaction:
the decisions were made before, by the pure planner; applying them only writes. Every method
raises :class:`~aggregator.errors.StoreError` on a database error, never a raw ``sqlite3`` one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aggregator.cycle.plan import ChangedEntry, FeedPlan, NewEntry
from aggregator.models import (
    AlertKind,
    AlertPayload,
    EditPayload,
    Entry,
    ReplyItem,
    ReplyPayload,
)
from aggregator.store.entries import Entries
from aggregator.store.feeds import Feeds
from aggregator.store.history import History
from aggregator.store.labels import Labels
from aggregator.store.outbox import Outbox
from aggregator.store.reactions import Reactions
from aggregator.store.rows import OutboxRow
from aggregator.store.schema import MIGRATIONS, SCHEMA_VERSION, Database, Part

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Applied", "Store"]


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying a feed's plan wrote."""

    entry_ids: tuple[int, ...]  # of the plan's new entries, in order
    alerts: int  # alert rows queued (a story already alerted in a channel gets none)


class Store(Part):
    """One connection to the database, and its parts. Not shared between threads."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.feeds = Feeds(db)
        self.entries = Entries(db)
        self.outbox = Outbox(db)
        self.history = History(db)
        self.labels = Labels(db)
        self.reactions = Reactions(db)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (creating the file if needed), refuse a newer schema, migrate forward."""
        return cls(Database.open(path))

    @property
    def path(self) -> str:
        return self.db.path

    def close(self) -> None:
        self.db.close()

    def schema_version(self) -> int:
        return self.db.schema_version()

    def journal_mode(self) -> str:
        return self.db.journal_mode()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``); inside one, this joins it."""
        with self.db.transaction():
            yield

    def apply(self, plan: FeedPlan, now: datetime) -> Applied:
        """Write one feed's plan: its entries, stories, alerts and follow-ups, its schedule and
        fetch log, any ops notice and a move. One transaction, or the caller's."""
        with self.db.transaction():
            new = plan.new_entries
            ids = self.entries.insert(new, now, official=plan.primary)
            entry_id = dict(zip((id(s) for s in new), ids, strict=True))
            alerts = 0
            bound = self.entries.last_id() if not ids else ids[0] - 1  # entries before this plan
            for step in plan.steps:
                if isinstance(step, NewEntry):
                    bound = entry_id[id(step)]
                    alerts += self._alert(step, bound, plan.primary, now)
                    if step.follow_up and step.story_id is not None:
                        self._follow_up(step, bound, plan.primary, now)
                elif isinstance(step, ChangedEntry):
                    self._changed(plan.feed_url, step, bound, now)
            if plan.update is not None:
                self.feeds.record(plan.feed_url, plan.update)
            if plan.record is not None:
                self.history.log_fetch(plan.feed_url, now, plan.record)
            if plan.notice is not None:
                n = plan.notice
                self.outbox.queue_notice(n.channel, AlertKind.OPS, n.text, now, n.key)
            if plan.moved_to is not None:
                self.feeds.rename(plan.feed_url, plan.moved_to)
        return Applied(tuple(ids), alerts)

    def _alert(self, step: NewEntry, entry_id: int, primary: bool, now: datetime) -> int:
        if step.story_id is None:
            return 0
        return sum(
            self.outbox.queue_alert(
                step.story_id, entry_id, a.channel, a.topics,
                AlertPayload(primary=primary, review=a.review), now,
            )
            for a in step.alerts
        )  # fmt: skip

    def _follow_up(self, step: NewEntry, entry_id: int, primary: bool, now: datetime) -> None:
        """A further outlet of an alerted story: a reply in each earlier alert's thread (the
        outbox batches them per story), and an edit of each showing the story's coverage."""
        assert step.story_id is not None
        e: Entry = step.entry
        item = ReplyItem(e.source, e.title, e.link, primary)
        outlets, official = self.entries.coverage(step.story_id, entry_id)
        for parent in self.outbox.story_alerts(step.story_id, before_entry=entry_id):
            key = f"reply:{parent.alert.id}:{e.feed_url}:{e.guid}"
            self.outbox.queue_reply(parent, ReplyPayload(parent.alert.id, (item,)), now, key)
            self._edit(parent, outlets, official, now, changed_text=False)

    def _changed(self, feed_url: str, step: ChangedEntry, bound: int, now: datetime) -> None:
        """Same guid, new text: store it, and edit every alert it caused in place."""
        entry_id = self.entries.update_content(feed_url, step.entry, now)
        if entry_id is None:
            return
        for parent in self.outbox.entry_alerts(entry_id):
            story = parent.alert.story_id
            outlets, official = self.entries.coverage(story, bound) if story else (0, None)
            self._edit(parent, outlets, official, now, changed_text=True)

    def _edit(
        self, parent: OutboxRow, outlets: int, official: str | None, now: datetime, *,
        changed_text: bool,
    ) -> None:  # fmt: skip
        primary = isinstance(parent.alert.payload, AlertPayload) and parent.alert.payload.primary
        edit = EditPayload(parent.alert.id, primary, outlets, official, changed_text)
        self.outbox.queue_edit(parent, edit, now)
