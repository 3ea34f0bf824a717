"""What happened over time: the bounded fetch log, each feed's activity, and retention."""

from __future__ import annotations

from datetime import datetime, timedelta

from aggregator.cycle.plan import FetchRecord
from aggregator.store.rows import FeedActivity, feed_state
from aggregator.store.schema import Part, from_iso, iso

FETCH_LOG_KEEP = 50  # fetches kept per feed


class History(Part):
    """The fetch log and retention. Every method raises StoreError on a database error."""

    def log_fetch(self, url: str, at: datetime, record: FetchRecord) -> None:
        """Append to the fetch log; only the last :data:`FETCH_LOG_KEEP` per feed are kept."""
        elapsed = None if record.elapsed is None else round(record.elapsed * 1000, 1)
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO fetches (feed_url, at, outcome, status_code, bytes, elapsed_ms, "
                "new_entries, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [url, iso(at), str(record.outcome), record.status_code, record.size, elapsed,
                 record.new_entries, record.error],
            )  # fmt: skip
            self.db.execute(
                "DELETE FROM fetches WHERE feed_url = ? AND id NOT IN "
                "(SELECT id FROM fetches WHERE feed_url = ? ORDER BY id DESC LIMIT ?)",
                [url, url, FETCH_LOG_KEEP],
            )

    def activity(self, since: datetime) -> list[FeedActivity]:
        """Every feed not removed, with its entries since ``since`` and its mean fetch time;
        active feeds first, then by name."""
        rows = self.db.rows(
            "SELECT f.*, "
            "(SELECT count(*) FROM entries e WHERE e.feed_url = f.url "
            " AND coalesce(e.published, e.first_seen) >= ?) AS recent_items, "
            "(SELECT avg(x.elapsed_ms) FROM fetches x WHERE x.feed_url = f.url "
            " AND x.elapsed_ms IS NOT NULL) AS avg_elapsed_ms "
            "FROM feeds f WHERE f.status != 'removed' ORDER BY f.status != 'active', f.name, f.url",
            [iso(since)],
        )
        return [
            FeedActivity(
                state=feed_state(r),
                added_at=from_iso(r["added_at"]) or since,
                last_error_at=from_iso(r["last_error_at"]),
                recent_items=int(r["recent_items"]),
                avg_elapsed_ms=float(r["avg_elapsed_ms"])
                if r["avg_elapsed_ms"] is not None
                else None,
            )
            for r in rows
        ]

    def prune(self, now: datetime, retention_days: int) -> int:
        """Delete entries older than the retention period whose alerts are settled. Labelled
        entries stay, whatever their age: they are the relevance models' training data."""
        cutoff = iso(now - timedelta(days=retention_days))
        with self.db.transaction():
            cursor = self.db.execute(
                "DELETE FROM entries WHERE first_seen < ? AND id NOT IN "
                "(SELECT entry_id FROM alerts WHERE entry_id IS NOT NULL "
                "AND state NOT IN ('sent', 'dead')) "
                "AND id NOT IN (SELECT entry_id FROM labels)",
                [cutoff],
            )
            self.db.execute(
                "DELETE FROM stories WHERE last_seen < ? AND id NOT IN "
                "(SELECT story_id FROM entries WHERE story_id IS NOT NULL) AND id NOT IN "
                "(SELECT story_id FROM alerts WHERE story_id IS NOT NULL)",
                [cutoff],
            )
        return int(cursor.rowcount)
