"""The ``feeds`` table: which feeds are polled, their validators, schedule and health."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aggregator.config.model import FeedConfig
from aggregator.cycle.plan import FeedUpdate
from aggregator.models import FeedState, FeedStatus
from aggregator.store.rows import feed_state
from aggregator.store.schema import Part, iso

POLLED = (FeedStatus.ACTIVE.value, FeedStatus.FAILING.value)


class Feeds(Part):
    """Feeds as the database knows them. Every method raises StoreError on a database error."""

    def sync(self, feeds: Sequence[FeedConfig], now: datetime) -> None:
        """Make the table follow the config: add new feeds (due now), retire removed ones.

        A feed that moved (a permanent redirect) keeps answering to its configured URL.
        """
        wanted = {f.url: f for f in feeds}
        db = self.db
        with db.transaction():
            rows = db.rows("SELECT url, status, name, moved_from FROM feeds")
            existing = {r["url"]: r for r in rows}
            moved = {r["moved_from"]: r["url"] for r in rows if r["moved_from"]}
            kept: set[str] = set()
            for url, feed in wanted.items():
                row = existing.get(moved.get(url, url))
                if row is None:
                    db.execute(
                        "INSERT INTO feeds (url, name, next_fetch_at, added_at) "
                        "VALUES (?, ?, ?, ?)",
                        [url, feed.name, iso(now), iso(now)],
                    )
                    continue
                kept.add(row["url"])
                if row["status"] == FeedStatus.REMOVED or row["name"] != feed.name:
                    status = (
                        FeedStatus.ACTIVE if row["status"] == FeedStatus.REMOVED else row["status"]
                    )
                    db.execute(
                        "UPDATE feeds SET name = ?, status = ? WHERE url = ?",
                        [feed.name, str(status), row["url"]],
                    )
            for url, row in existing.items():
                if url not in kept and row["status"] != FeedStatus.REMOVED:
                    db.execute("UPDATE feeds SET status = 'removed' WHERE url = ?", [url])

    def states(self) -> list[FeedState]:
        """Every feed that is still configured, by URL."""
        rows = self.db.rows("SELECT * FROM feeds WHERE status != 'removed' ORDER BY url")
        return [feed_state(r) for r in rows]

    def state(self, url: str) -> FeedState | None:
        rows = self.db.rows("SELECT * FROM feeds WHERE url = ?", [url])
        return feed_state(rows[0]) if rows else None

    def due(self, now: datetime) -> list[FeedState]:
        """Feeds to fetch now, the longest overdue first."""
        rows = self.db.rows(
            "SELECT * FROM feeds WHERE status IN (?, ?) "
            "AND (next_fetch_at IS NULL OR next_fetch_at <= ?) ORDER BY next_fetch_at, url",
            [*POLLED, iso(now)],
        )
        return [feed_state(r) for r in rows]

    def make_all_due(self, now: datetime) -> None:
        """``poll --once``: every polled feed is due now, whatever its schedule."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE feeds SET next_fetch_at = ? WHERE status IN (?, ?)", [iso(now), *POLLED]
            )

    def record(self, url: str, update: FeedUpdate) -> None:
        """Store what one fetch changed: schedule, status, validators, errors."""
        now = update.last_fetch_at
        values: dict[str, Any] = {
            "status": str(update.status),
            "next_fetch_at": iso(update.next_fetch_at),
            "consecutive_errors": update.consecutive_errors,
            "failing_since": iso(update.failing_since),
            "last_fetch_at": iso(now),
        }
        if update.error is None:
            values["last_success_at"] = iso(now)
        else:
            values |= {"last_error": update.error, "last_error_at": iso(now)}
        if update.validators is not None:
            values["etag"], values["last_modified"] = update.validators
        if update.body_hash is not None:
            values["body_hash"] = update.body_hash
        if update.first_poll:
            values["first_polled_at"] = iso(now)
        if update.ops_notified is not None:
            values["ops_notified_at"] = iso(now) if update.ops_notified else None
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.db.execute(
            f"UPDATE feeds SET {assignments} WHERE url = ?",  # noqa: S608 (names are ours)
            [*values.values(), url],
        )

    def rename(self, old_url: str, new_url: str) -> None:
        """Follow a permanent redirect: the feed's row and its entries move to the new URL.

        ``moved_from`` keeps the URL first configured, so a chain A -> B -> C still answers to A.
        When the new URL is already a feed, the two rows merge into that one.
        """
        db = self.db
        with db.transaction():
            original = db.value("SELECT moved_from FROM feeds WHERE url = ?", [old_url]) or old_url
            if db.value("SELECT 1 FROM feeds WHERE url = ?", [new_url]):
                db.execute(
                    "UPDATE feeds SET moved_from = coalesce(moved_from, ?) WHERE url = ?",
                    [original, new_url],
                )
                db.execute("DELETE FROM feeds WHERE url = ?", [old_url])
                return
            db.execute(
                "UPDATE feeds SET url = ?, moved_from = ? WHERE url = ?",
                [new_url, original, old_url],
            )
            db.execute(
                "UPDATE OR IGNORE entries SET feed_url = ? WHERE feed_url = ?", [new_url, old_url]
            )
