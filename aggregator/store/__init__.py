"""The database edge: schema and migrations, transactions, FTS, retention.

SQLite through sqlite-utils, in WAL mode with ``synchronous=FULL`` and a busy timeout. Every
multi-row change happens inside ``db.atomic()``, or for the cycle's hot writes (storing entries)
inside ``Store._all_or_nothing()``, which takes no savepoint. Open one :class:`Store` per thread.
Times are stored as ISO-8601 UTC strings of one fixed shape, so that string order is time order.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from aggregator.config.model import FeedConfig
from aggregator.errors import StoreError
from aggregator.models import Alert, Entry, TopicMatch

BUSY_TIMEOUT_MS = 10_000
FETCH_LOG_KEEP = 50  # fetches kept per feed


def iso(moment: datetime | None) -> str | None:
    """The one timestamp shape in the database: ``2026-01-02T03:04:05.000000+00:00``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# -- migrations ----------------------------------------------------------------------------------
# Numbered and append-only: a released migration is never edited, a change is a new number.

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE feeds (
        url TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'active',      -- active | failing | gone | removed
        etag TEXT,
        last_modified TEXT,
        body_hash TEXT,                             -- hash of the last body parsed
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_error_at TEXT,
        failing_since TEXT,
        last_success_at TEXT,
        last_fetch_at TEXT,
        next_fetch_at TEXT,
        first_polled_at TEXT,
        moved_from TEXT,
        ops_notified_at TEXT,
        added_at TEXT NOT NULL
    );
    CREATE INDEX feeds_next_fetch ON feeds(status, next_fetch_at);

    CREATE TABLE stories (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        canonical_url TEXT,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        published TEXT,
        entry_count INTEGER NOT NULL DEFAULT 1,
        signature TEXT                               -- grouping features, JSON
    );
    CREATE INDEX stories_last_seen ON stories(last_seen);

    CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        feed_url TEXT NOT NULL,
        guid TEXT NOT NULL,
        link TEXT NOT NULL DEFAULT '',
        canonical_url TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL DEFAULT '',
        summary TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        published TEXT,
        first_seen TEXT NOT NULL,
        updated_at TEXT,
        content_hash TEXT NOT NULL,
        links TEXT NOT NULL DEFAULT '[]',
        story_id INTEGER REFERENCES stories(id)
    );
    CREATE UNIQUE INDEX entries_feed_guid ON entries(feed_url, guid);
    CREATE INDEX entries_canonical ON entries(canonical_url) WHERE canonical_url != '';
    CREATE INDEX entries_story ON entries(story_id);
    CREATE INDEX entries_first_seen ON entries(first_seen);

    CREATE TABLE matches (
        entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
        topic TEXT NOT NULL,
        terms TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (entry_id, topic)
    );
    CREATE INDEX matches_topic ON matches(topic);

    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        dedupe_key TEXT NOT NULL UNIQUE,            -- one alert per story and channel, ever
        story_id INTEGER REFERENCES stories(id),
        entry_id INTEGER REFERENCES entries(id),
        channel TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'alert',         -- alert | reply | update | digest | ops | test
        topics TEXT NOT NULL DEFAULT '[]',          -- [{"topic": .., "terms": [..]}]
        state TEXT NOT NULL DEFAULT 'pending',      -- pending sending sent failed dead held
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT,
        slack_channel TEXT,
        slack_ts TEXT,
        thread_ts TEXT,
        payload TEXT NOT NULL DEFAULT '{}',         -- kind-specific data, JSON
        last_error TEXT
    );
    CREATE INDEX alerts_due ON alerts(state, next_attempt_at);
    CREATE INDEX alerts_story ON alerts(story_id);

    CREATE TABLE channel_state (
        channel TEXT PRIMARY KEY,
        paused_until TEXT,
        pause_reason TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        last_sent_at TEXT
    );

    CREATE TABLE fetches (
        id INTEGER PRIMARY KEY,
        feed_url TEXT NOT NULL,
        at TEXT NOT NULL,
        outcome TEXT NOT NULL,                      -- fetched | unchanged | failed | gone
        status_code INTEGER,
        bytes INTEGER,
        elapsed_ms REAL,
        new_entries INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX fetches_feed ON fetches(feed_url, at);
    """,
    2: """
    -- A reply or an edit finds its parent's other follow-ups without scanning the outbox.
    CREATE INDEX alerts_parent ON alerts(json_extract(payload, '$.parent_alert_id'));
    """,
    3: """
    -- Store.add_entry indexes a new entry for full-text search itself, in the entry's
    -- transaction, instead of this trigger. A statement that fires a trigger runs inside a
    -- statement savepoint, and FTS5 writes its pending index to disk at every savepoint: each
    -- entry became an index segment of its own, merged again and again (measured on the 29,500
    -- entries of a cold cycle: 3.4 s to insert them with the trigger, 1.0 s without). The update
    -- and delete triggers stay: they run once per statement, and those statements are rare.
    DROP TRIGGER IF EXISTS entries_ai;
    """,
}

# The hot statements of Store.add_entry.
_INSERT_STORY = (
    "INSERT INTO stories (title, canonical_url, first_seen, last_seen, published) "
    "VALUES (?, ?, ?, ?, ?)"
)
_INSERT_ENTRY = (
    "INSERT INTO entries (feed_url, guid, link, canonical_url, title, summary, source, published, "
    "first_seen, content_hash, links, story_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (feed_url, guid) DO NOTHING"
)
_INSERT_STORY_WITH_ID = (
    "INSERT INTO stories (id, title, canonical_url, first_seen, last_seen, published) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_ENTRY_WITH_ID = (
    "INSERT INTO entries (id, feed_url, guid, link, canonical_url, title, summary, source, "
    "published, first_seen, content_hash, links, story_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_JOIN_STORY = "UPDATE stories SET last_seen = ?, entry_count = entry_count + 1 WHERE id = ?"
_INSERT_MATCH = "INSERT OR IGNORE INTO matches (entry_id, topic, terms) VALUES (?, ?, ?)"
_INSERT_ALERT = (
    "INSERT OR IGNORE INTO alerts (dedupe_key, story_id, entry_id, channel, kind, topics, state, "
    "next_attempt_at, created_at, updated_at, payload) "
    "VALUES (?, ?, ?, ?, 'alert', ?, 'pending', ?, ?, ?, ?)"
)
# entries_fts is external-content (content=entries): it keeps only the index, so an insert
# there must carry the same rowid, title and summary as the entry's row.
_INDEX_ENTRY = "INSERT INTO entries_fts (rowid, title, summary) VALUES (?, ?, ?)"


@dataclass(frozen=True, slots=True)
class FeedState:
    """A feed's row: its validators and schedule state."""

    url: str
    name: str
    status: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    consecutive_errors: int
    last_error: str | None
    last_success_at: datetime | None
    last_fetch_at: datetime | None
    next_fetch_at: datetime | None
    first_polled_at: datetime | None
    failing_since: datetime | None
    moved_from: str | None = None
    ops_notified_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FeedState:
        return cls(
            url=row["url"],
            name=row["name"],
            status=row["status"],
            etag=row["etag"],
            last_modified=row["last_modified"],
            body_hash=row["body_hash"],
            consecutive_errors=row["consecutive_errors"],
            last_error=row["last_error"],
            last_success_at=from_iso(row["last_success_at"]),
            last_fetch_at=from_iso(row["last_fetch_at"]),
            next_fetch_at=from_iso(row["next_fetch_at"]),
            first_polled_at=from_iso(row["first_polled_at"]),
            failing_since=from_iso(row["failing_since"]),
            moved_from=row["moved_from"],
            ops_notified_at=from_iso(row["ops_notified_at"]),
        )


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry to insert, with its matches and the channels to alert (empty: store only)."""

    entry: Entry
    matches: tuple[TopicMatch, ...]
    alert_channels: tuple[tuple[str, tuple[TopicMatch, ...]], ...]  # (channel, its topics)
    story_id: int | None = None  # join this existing story instead of starting one
    alert_payload: dict[str, Any] = field(default_factory=dict)  # e.g. {"primary": true}
    # With no story_id: join the story of the first stored entry with the same canonical URL, as
    # story_of_canonical_url() would answer just before this entry is stored (an item earlier in
    # the same batch counts); when there is none the entry is in no story, unless it alerts.
    # For entries that match no topic: only matching entries start stories.
    story_by_url: bool = False


@dataclass(frozen=True, slots=True)
class AddedEntry:
    entry_id: int
    story_id: int | None  # None: an entry that matched no topic and joined no story
    alerts: int


class Store:
    """One connection to the database. Not shared between threads."""

    def __init__(self, db: sqlite_utils.Database, path: str) -> None:
        self.db = db
        self.path = path

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (creating directories and the file if needed) and migrate forward."""
        path = str(path)
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # The service opens the store on its main thread and hands it to the one scheduler
            # thread that runs cycles; access is never concurrent, so the thread check is off.
            conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            db = sqlite_utils.Database(conn)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if path != ":memory:":
                db.enable_wal()
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            store = cls(db, path)
            store.migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path!r}: {e}") from e
        return store

    def close(self) -> None:
        self.db.close()

    def schema_version(self) -> int:
        if "schema_migrations" not in self.db.table_names():
            return 0
        row = self.db.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[int]:
        """Apply every migration newer than the database, each in its own transaction."""
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied: list[int] = []
        current = self.schema_version()
        for version in sorted(v for v in MIGRATIONS if v > current):
            with self.db.atomic():
                for statement in _statements(MIGRATIONS[version]):
                    self.db.execute(statement)
                if version == 1:
                    self.db.table("entries").enable_fts(["title", "summary"], create_triggers=True)
                self.db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    [version, iso(datetime.now(UTC))],
                )
            applied.append(version)
        return applied

    def journal_mode(self) -> str:
        return str(self.db.execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.db.atomic():
            yield

    # -- feeds ------------------------------------------------------------------------------------

    def sync_feeds(self, feeds: Sequence[FeedConfig], now: datetime) -> None:
        """Make the feeds table follow the config: add new feeds (due now), retire removed ones.

        A feed that moved (a permanent redirect) keeps answering to its configured URL.
        """
        wanted = {f.url: f for f in feeds}
        with self.db.atomic():
            rows = list(self.db.query("SELECT url, status, name, moved_from FROM feeds"))
            existing = {r["url"]: r for r in rows}
            moved = {r["moved_from"]: r["url"] for r in rows if r["moved_from"]}
            kept: set[str] = set()
            for url, feed in wanted.items():
                row = existing.get(moved.get(url, url))
                if row is None:
                    self.db.execute(
                        "INSERT INTO feeds (url, name, next_fetch_at, added_at) "
                        "VALUES (?, ?, ?, ?)",
                        [url, feed.name, iso(now), iso(now)],
                    )
                    continue
                kept.add(row["url"])
                if row["status"] == "removed" or row["name"] != feed.name:
                    status = "active" if row["status"] == "removed" else row["status"]
                    self.db.execute(
                        "UPDATE feeds SET name = ?, status = ? WHERE url = ?",
                        [feed.name, status, row["url"]],
                    )
            for url, row in existing.items():
                if url not in kept and row["status"] != "removed":
                    self.db.execute("UPDATE feeds SET status = 'removed' WHERE url = ?", [url])

    def feed_states(self) -> list[FeedState]:
        rows = self.db.query("SELECT * FROM feeds WHERE status != 'removed' ORDER BY url")
        return [FeedState.from_row(r) for r in rows]

    def feed_state(self, url: str) -> FeedState | None:
        rows = list(self.db.query("SELECT * FROM feeds WHERE url = ?", [url]))
        return FeedState.from_row(rows[0]) if rows else None

    def due_feeds(self, now: datetime) -> list[FeedState]:
        rows = self.db.query(
            "SELECT * FROM feeds WHERE status IN ('active', 'failing') "
            "AND (next_fetch_at IS NULL OR next_fetch_at <= ?) ORDER BY next_fetch_at, url",
            [iso(now)],
        )
        return [FeedState.from_row(r) for r in rows]

    def make_all_due(self, now: datetime) -> None:
        """``poll --once``: every polled feed is due now, whatever its schedule."""
        self.db.execute(
            "UPDATE feeds SET next_fetch_at = ? WHERE status IN ('active', 'failing')", [iso(now)]
        )

    def update_feed(self, url: str, **fields: Any) -> None:
        """Set columns of one feed. Datetimes are stored in the canonical shape."""
        if not fields:
            return
        values = [iso(v) if isinstance(v, datetime) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE feeds SET {assignments} WHERE url = ?", [*values, url])  # noqa: S608

    def log_fetch(
        self,
        url: str,
        at: datetime,
        outcome: str,
        *,
        status_code: int | None = None,
        size: int | None = None,
        elapsed: float | None = None,
        new_entries: int = 0,
        error: str | None = None,
    ) -> None:
        """Append to the bounded fetch log (the last :data:`FETCH_LOG_KEEP` per feed are kept)."""
        self.db.execute(
            "INSERT INTO fetches (feed_url, at, outcome, status_code, bytes, elapsed_ms, "
            "new_entries, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                url,
                iso(at),
                outcome,
                status_code,
                size,
                None if elapsed is None else round(elapsed * 1000, 1),
                new_entries,
                error,
            ],
        )
        self.db.execute(
            "DELETE FROM fetches WHERE feed_url = ? AND id NOT IN "
            "(SELECT id FROM fetches WHERE feed_url = ? ORDER BY id DESC LIMIT ?)",
            [url, url, FETCH_LOG_KEEP],
        )

    def rename_feed(self, old_url: str, new_url: str) -> None:
        """Follow a permanent redirect: the feed's row and its entries move to the new URL.

        ``moved_from`` keeps the URL first configured, so a chain A -> B -> C still answers to A.
        When the new URL is already a feed, the two rows merge into that one.
        """
        with self.db.atomic():
            row = self.db.execute(
                "SELECT moved_from FROM feeds WHERE url = ?", [old_url]
            ).fetchone()
            original = (row[0] if row else None) or old_url
            if self.feed_state(new_url) is not None:
                self.db.execute(
                    "UPDATE feeds SET moved_from = coalesce(moved_from, ?) WHERE url = ?",
                    [original, new_url],
                )
                self.db.execute("DELETE FROM feeds WHERE url = ?", [old_url])
                return
            self.db.execute(
                "UPDATE feeds SET url = ?, moved_from = ? WHERE url = ?",
                [new_url, original, old_url],
            )
            self.db.execute(
                "UPDATE OR IGNORE entries SET feed_url = ? WHERE feed_url = ?", [new_url, old_url]
            )

    # -- entries ----------------------------------------------------------------------------------

    def known_guids(self, feed_url: str, guids: Iterable[str]) -> dict[str, str]:
        """The guids of this feed already stored, mapped to their content hash."""
        wanted = list(dict.fromkeys(guids))
        found: dict[str, str] = {}
        for chunk in _chunks(wanted, 500):
            marks = ",".join("?" * len(chunk))
            rows = self.db.conn.execute(
                f"SELECT guid, content_hash FROM entries WHERE feed_url = ? AND guid IN ({marks})",  # noqa: S608
                [feed_url, *chunk],
            )
            found.update({g: h for g, h in rows})
        return found

    def add_entries(self, batch: Sequence[NewEntry], now: datetime) -> dict[str, int]:
        """Insert a batch with :meth:`insert_entries`, all in one transaction.

        Returns counts: ``entries``, ``alerts``.
        """
        counts = {"entries": 0, "alerts": 0}
        for added in self.insert_entries(batch, now):
            if added is not None:
                counts["entries"] += 1
                counts["alerts"] += added.alerts
        return counts

    def insert_entries(self, batch: Sequence[NewEntry], now: datetime) -> list[AddedEntry | None]:
        """Store a batch exactly as :meth:`add_entry` would store each item in turn; its results.

        Each item sees the ones before it: a (feed, guid) repeated in the batch is stored once
        (None for the repeat), and with ``story_by_url`` an item joins the story of an earlier
        item with its canonical URL. The database ends as after the loop, ids included, but the
        batch costs a few statements in all instead of about five per entry. One transaction of
        its own when none is open; inside one, a failure rolls back the enclosing transaction.
        """
        with self._all_or_nothing():
            return self._insert_entries(batch, now)

    def _insert_entries(self, batch: Sequence[NewEntry], now: datetime) -> list[AddedEntry | None]:
        if not batch:
            return []
        conn = self.db.conn
        stamp = iso(now)
        stored = self._stored_keys({(i.entry.feed_url, i.entry.guid) for i in batch})
        story_of_url = self._first_stories({i.entry.canonical_url for i in batch})
        # Ids are given explicitly, as the ones SQLite would pick (one past the largest), so that
        # an entry's row can name its new story before either is written. The write lock is held
        # from the first write on; a clash would fail loudly, never share an id.
        last_story = int(conn.execute("SELECT coalesce(max(id), 0) FROM stories").fetchone()[0])
        last_entry = int(conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])
        new_stories: list[tuple[Any, ...]] = []
        entry_rows: list[tuple[Any, ...]] = []
        joined: list[tuple[str | None, int]] = []
        match_rows: list[tuple[int, str, str]] = []
        index_rows: list[tuple[int, str, str]] = []
        alert_rows: list[tuple[int, tuple[Any, ...]]] = []  # (position in batch, parameters)
        placed: list[tuple[int, int | None] | None] = []  # (entry id, story id) per item
        for position, item in enumerate(batch):
            e = item.entry
            if (e.feed_url, e.guid) in stored:
                placed.append(None)
                continue
            stored.add((e.feed_url, e.guid))
            published = iso(e.published)
            story_id = item.story_id
            if story_id is None and item.story_by_url:
                story_id = story_of_url.get(e.canonical_url)
            if story_id is None and _starts_story(item):
                last_story += 1
                story_id = last_story
                new_stories.append((story_id, e.title, e.canonical_url, stamp, stamp, published))
            elif story_id is not None:
                joined.append((stamp, story_id))
            if e.canonical_url and story_id is not None:
                story_of_url.setdefault(e.canonical_url, story_id)
            last_entry += 1
            entry_id = last_entry
            entry_rows.append(
                (entry_id, e.feed_url, e.guid, e.link, e.canonical_url, e.title, e.summary,
                 e.source, published, stamp, e.content_hash, _links_json(e.links), story_id)
            )  # fmt: skip
            match_rows.extend((entry_id, m.topic, json.dumps(list(m.terms))) for m in item.matches)
            if item.alert_channels:
                payload = json.dumps(item.alert_payload)
                for channel, topics in item.alert_channels:
                    alert_rows.append(
                        (position, (f"alert:{story_id}:{channel}", story_id, entry_id, channel,
                                    _topics_json(topics), stamp, stamp, stamp, payload))
                    )  # fmt: skip
            index_rows.append((entry_id, e.title, e.summary))
            placed.append((entry_id, story_id))

        conn.executemany(_INSERT_STORY_WITH_ID, new_stories)
        conn.executemany(_INSERT_ENTRY_WITH_ID, entry_rows)
        conn.executemany(_JOIN_STORY, joined)
        conn.executemany(_INSERT_MATCH, match_rows)
        alerts = [0] * len(batch)
        for position, params in alert_rows:  # one by one: each item's count of alerts queued
            alerts[position] += conn.execute(_INSERT_ALERT, params).rowcount
        conn.executemany(_INDEX_ENTRY, index_rows)
        return [
            None if ids is None else AddedEntry(ids[0], ids[1], alerts[position])
            for position, ids in enumerate(placed)
        ]

    def _stored_keys(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of these (feed url, guid) already stored."""
        by_feed: dict[str, list[str]] = {}
        for feed_url, guid in keys:
            by_feed.setdefault(feed_url, []).append(guid)
        return {
            (feed_url, guid)
            for feed_url, guids in by_feed.items()
            for guid in self.known_guids(feed_url, guids)
        }

    def _first_stories(self, urls: set[str]) -> dict[str, int | None]:
        """Per canonical URL, the story of its first entry in one (as story_of_canonical_url)."""
        found: dict[str, int | None] = {}
        for chunk in _chunks(sorted(u for u in urls if u), 500):
            marks = ",".join("?" * len(chunk))
            rows = self.db.conn.execute(
                f"SELECT canonical_url, story_id FROM entries WHERE canonical_url IN ({marks}) "  # noqa: S608
                "AND canonical_url != '' ORDER BY id",
                chunk,
            )
            for url, story_id in rows:
                if story_id is not None:
                    found.setdefault(url, int(story_id))
        return found

    def add_entry(self, item: NewEntry, now: datetime) -> AddedEntry | None:
        """Insert one entry, its matches, its story and its alerts atomically.

        An alert row is written with its entry, before any send. The ``dedupe_key`` makes a second
        alert for the same story and channel impossible, whatever happens upstream. Returns None
        when the (feed, guid) is already stored.

        Inside an open transaction this takes no savepoint (see :meth:`_all_or_nothing`): should
        it fail after writing part of the entry, the whole enclosing transaction is rolled back.
        """
        with self._all_or_nothing():
            return self._add_entry(item, now)

    def _add_entry(self, item: NewEntry, now: datetime) -> AddedEntry | None:
        # Everything that could raise in Python is computed before the first write. Of the
        # writes, only the entry's can fail on the caller's data, and it fails clean: a joined
        # story that no longer exists fails it before anything is written, and a (feed, guid)
        # already stored is skipped (the story made for it is deleted again).
        e = item.entry
        stamp = iso(now)
        published = iso(e.published)
        links = _links_json(e.links)
        matches = [(m.topic, json.dumps(list(m.terms))) for m in item.matches]
        payload = json.dumps(item.alert_payload) if item.alert_channels else ""
        alert_topics = [(channel, _topics_json(topics)) for channel, topics in item.alert_channels]
        execute = self.db.conn.execute

        story_id = item.story_id
        if story_id is None and item.story_by_url:
            story_id = self.story_of_canonical_url(e.canonical_url)
        new_story = story_id is None and _starts_story(item)
        if new_story:
            cursor = execute(_INSERT_STORY, (e.title, e.canonical_url, stamp, stamp, published))
            story_id = int(cursor.lastrowid or 0)
        # The store's own statements go to the sqlite3 connection directly: sqlite-utils'
        # execute() adds its bookkeeping to each of the ~5 statements an entry costs.
        cursor = execute(
            _INSERT_ENTRY,
            (e.feed_url, e.guid, e.link, e.canonical_url, e.title, e.summary, e.source,
             published, stamp, e.content_hash, links, story_id),
        )  # fmt: skip
        if cursor.rowcount != 1:  # (feed, guid) already stored: nothing else is written
            if new_story:
                execute("DELETE FROM stories WHERE id = ?", (story_id,))
            return None
        entry_id = int(cursor.lastrowid or 0)
        if not new_story and story_id is not None:
            execute(_JOIN_STORY, (stamp, story_id))
        if matches:
            self.db.conn.executemany(
                _INSERT_MATCH, [(entry_id, topic, terms) for topic, terms in matches]
            )
        alerts = 0
        for channel, topics_json in alert_topics:
            cursor = execute(
                _INSERT_ALERT,
                (f"alert:{story_id}:{channel}", story_id, entry_id, channel, topics_json,
                 stamp, stamp, stamp, payload),
            )  # fmt: skip
            alerts += cursor.rowcount
        execute(_INDEX_ENTRY, (entry_id, e.title, e.summary))
        return AddedEntry(entry_id, story_id, alerts)

    @contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """A group of writes that commits whole or not at all, without a savepoint.

        With no transaction open this is one (BEGIN ... COMMIT). Inside a caller's transaction it
        takes no SAVEPOINT, because FTS5 writes its pending index to disk at every savepoint: one
        per entry made each entry an index segment of its own, which then had to be merged (about
        2 s of CPU for the 30,000 entries of a cold cycle). Instead, a failure after something was
        written rolls back the enclosing transaction, so a half-written group never commits; a
        failure before any write leaves the transaction as it was, as a savepoint would.
        """
        conn = self.db.conn
        if not conn.in_transaction:
            with self.db.atomic():
                yield
            return
        changes = conn.total_changes
        try:
            yield
        except BaseException:
            if conn.total_changes != changes and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def story_of_canonical_url(self, url: str) -> int | None:
        """The story of the first stored entry in a story with this canonical URL, from any feed.

        Entries that matched no topic are in no story: a link first seen there and later in an
        item that matches is news, not a repeat.
        """
        if not url:
            return None
        # "!= ''" lets SQLite use the partial index entries_canonical; without it every call
        # scanned the whole table (a cold cycle of 500 feeds went quadratic: 280 s).
        row = self.db.conn.execute(
            "SELECT story_id FROM entries WHERE canonical_url = ? AND canonical_url != '' "
            "AND story_id IS NOT NULL ORDER BY id LIMIT 1",
            (url,),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def update_entry_content(self, feed_url: str, entry: Entry, now: datetime) -> int | None:
        """Store a changed title or text (same guid, new content hash); returns the entry id."""
        row = self.db.execute(
            "SELECT id FROM entries WHERE feed_url = ? AND guid = ?", [feed_url, entry.guid]
        ).fetchone()
        if row is None:
            return None
        self.db.execute(
            "UPDATE entries SET title = ?, summary = ?, link = ?, content_hash = ?, "
            "updated_at = ? WHERE id = ?",
            [entry.title, entry.summary, entry.link, entry.content_hash, iso(now), row[0]],
        )
        return int(row[0])

    def alerts_for_entry(self, entry_id: int) -> list[dict[str, Any]]:
        """The top-level alerts an entry caused."""
        return self._rows(
            "SELECT * FROM alerts WHERE entry_id = ? AND kind = 'alert' ORDER BY id", (entry_id,)
        )

    def story_members(self, story_id: int) -> list[tuple[str, str, str]]:
        """(feed url, source, link) of every entry of a story, oldest first."""
        rows = self.db.execute(
            "SELECT feed_url, source, link FROM entries WHERE story_id = ? ORDER BY id", [story_id]
        )
        return [(str(f), str(s), str(link)) for f, s, link in rows]

    def queue_parent_edit(self, parent_id: int, payload: dict[str, Any], now: datetime) -> None:
        """Queue an edit of a posted alert; an edit still waiting absorbs this one instead."""
        stamp = iso(now)
        with self._all_or_nothing():
            waiting = self.db.execute(
                "SELECT id, payload FROM alerts WHERE kind = 'update' "
                "AND state IN ('pending', 'failed', 'held') "
                "AND json_extract(payload, '$.parent_alert_id') = ? ORDER BY id LIMIT 1",
                [parent_id],
            ).fetchone()
            if waiting is not None:
                merged = json.loads(waiting[1] or "{}") | payload
                merged["updated"] = bool(merged.get("updated")) or bool(payload.get("updated"))
                self.db.execute(
                    "UPDATE alerts SET payload = ?, updated_at = ? WHERE id = ?",
                    [json.dumps(merged), stamp, waiting[0]],
                )
                return
            count = self.db.execute(
                "SELECT count(*) FROM alerts WHERE kind = 'update' "
                "AND json_extract(payload, '$.parent_alert_id') = ?",
                [parent_id],
            ).fetchone()[0]
            insert_followup(self, parent_id, "update", payload, now, f"edit:{parent_id}:{count}")

    def alerts_for_story(self, story_id: int) -> list[dict[str, Any]]:
        """The top-level alerts of a story, one per channel."""
        return self._rows(
            "SELECT * FROM alerts WHERE story_id = ? AND kind = 'alert' ORDER BY id", (story_id,)
        )

    def entry_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Full-text search over stored titles and summaries."""
        return list(self.db.table("entries").search(query, limit=limit))

    def prune(self, now: datetime, retention_days: int) -> int:
        """Delete entries older than the retention period whose alerts are settled."""
        cutoff = iso(now - timedelta(days=retention_days))
        with self.db.atomic():
            cursor = self.db.execute(
                "DELETE FROM entries WHERE first_seen < ? AND id NOT IN "
                "(SELECT entry_id FROM alerts WHERE entry_id IS NOT NULL "
                "AND state NOT IN ('sent', 'dead'))",
                [cutoff],
            )
            self.db.execute(
                "DELETE FROM stories WHERE last_seen < ? AND id NOT IN "
                "(SELECT story_id FROM entries WHERE story_id IS NOT NULL) AND id NOT IN "
                "(SELECT story_id FROM alerts WHERE story_id IS NOT NULL)",
                [cutoff],
            )
        return int(cursor.rowcount)

    # -- outbox -----------------------------------------------------------------------------------

    def alert_row(self, alert_id: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        return rows[0] if rows else None

    def set_alert(self, alert_id: int, now: datetime, **fields: Any) -> None:
        """Change an alert's state and columns; committed at once, before any next network call."""
        fields["updated_at"] = now
        values = [iso(v) if isinstance(v, datetime) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE alerts SET {assignments} WHERE id = ?", [*values, alert_id])  # noqa: S608

    def alert_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM alerts GROUP BY state")
        return {state: int(n) for state, n in rows}

    # -- helpers ----------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """A SELECT's rows as dicts. Unlike ``db.query`` this takes no SAVEPOINT, which inside a
        cycle's transaction would make FTS5 write out the entries indexed so far."""
        cursor = self.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def _alert(row: dict[str, Any]) -> Alert:
    topics = tuple(
        TopicMatch(t["topic"], tuple(t.get("terms", ()))) for t in json.loads(row["topics"])
    )
    return Alert(
        id=row["id"],
        channel=row["channel"],
        kind=row["kind"],
        title=row.get("title") or "",
        link=row.get("link") or "",
        source=row.get("source") or "",
        published=from_iso(row.get("published")),
        summary=row.get("summary") or "",
        topics=topics,
        attempts=row["attempts"],
        story_id=row["story_id"],
        thread_ts=row["thread_ts"],
        extra=json.loads(row["payload"] or "{}"),
    )


def _links_json(links: Sequence[str]) -> str:
    return json.dumps(list(links)) if links else "[]"


def _starts_story(item: NewEntry) -> bool:
    """Whether an entry without a story starts one: it matched, or it alerts (alerts need one)."""
    return not item.story_by_url or bool(item.matches or item.alert_channels)


def _topics_json(topics: Sequence[TopicMatch]) -> str:
    return json.dumps([{"topic": t.topic, "terms": list(t.terms)} for t in topics])


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the outbox, for aggregator/notify/ ----------------------------------------------------------
# Kept as functions over a Store so this section stays self-contained at the end of the file.

_OUTBOX_SELECT = (
    "SELECT a.*, e.title, e.link, e.source, e.published, e.summary "
    "FROM alerts a LEFT JOIN entries e ON e.id = a.entry_id "
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An alert with the outbox bookkeeping the delivery loop needs."""

    alert: Alert
    state: str
    updated_at: str
    next_attempt_at: str
    last_error: str | None
    slack_ts: str | None
    slack_channel: str | None
    payload: dict[str, Any]


def _outbox_row(row: dict[str, Any]) -> OutboxRow:
    return OutboxRow(
        alert=_alert(row),
        state=row["state"],
        updated_at=row["updated_at"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        slack_ts=row["slack_ts"],
        slack_channel=row["slack_channel"],
        payload=json.loads(row["payload"] or "{}"),
    )


def outbox_due(store: Store, now: datetime, limit: int = 500) -> list[OutboxRow]:
    """Rows to act on now: pending, failed or held, whose time has come; oldest first."""
    rows = store.db.query(
        _OUTBOX_SELECT + "WHERE a.state IN ('pending', 'failed', 'held') "
        "AND a.next_attempt_at <= ? ORDER BY a.id LIMIT ?",
        [iso(now), limit],
    )
    return [_outbox_row(r) for r in rows]


def outbox_rows(store: Store, *states: str, ids: Sequence[int] = ()) -> list[OutboxRow]:
    """Rows in these states (all states when none are given), or these ids; oldest first."""
    where: list[str] = []
    params: list[Any] = []
    if states:
        where.append(f"a.state IN ({','.join('?' * len(states))})")
        params.extend(states)
    if ids:
        where.append(f"a.id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = store.db.query(_OUTBOX_SELECT + clause + " ORDER BY a.id", params)
    return [_outbox_row(r) for r in rows]


def outbox_waiting(store: Store) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
    """Per channel with rows waiting: (channel, earliest row due, paused until, last sent)."""
    rows = store.db.execute(
        "SELECT a.channel, min(a.next_attempt_at), c.paused_until, c.last_sent_at "
        "FROM alerts a LEFT JOIN channel_state c ON c.channel = a.channel "
        "WHERE a.state IN ('pending', 'failed', 'held') GROUP BY a.channel"
    ).fetchall()
    out = []
    for channel, due, paused, last in rows:
        out.append((str(channel), datetime.fromisoformat(due), from_iso(paused), from_iso(last)))
    return out


def claim_alerts(store: Store, rows: Sequence[OutboxRow], now: datetime) -> list[int]:
    """Move rows to 'sending' (attempts + 1) only if nobody changed them since they were read.

    One transaction; returns the ids claimed. A row another process moved is skipped, so two
    delivery loops never send the same row.
    """
    claimed: list[int] = []
    with store.db.atomic():
        for r in rows:
            cursor = store.db.execute(
                "UPDATE alerts SET state = 'sending', attempts = attempts + 1, updated_at = ? "
                "WHERE id = ? AND state = ? AND updated_at = ?",
                [iso(now), r.alert.id, r.state, r.updated_at],
            )
            if cursor.rowcount == 1:
                claimed.append(r.alert.id)
    return claimed


def set_alerts(store: Store, ids: Sequence[int], now: datetime, **fields: Any) -> None:
    """``set_alert`` for several rows in one transaction. ``payload`` may be a dict."""
    with store.db.atomic():
        for alert_id in ids:
            values = dict(fields)
            if isinstance(values.get("payload"), dict):
                values["payload"] = json.dumps(values["payload"])
            store.set_alert(alert_id, now, **values)


def channel_state(store: Store, channel: str) -> dict[str, Any]:
    rows = list(store.db.query("SELECT * FROM channel_state WHERE channel = ?", [channel]))
    if rows:
        return rows[0]
    return {"channel": channel, "paused_until": None, "pause_reason": None, "failures": 0,
            "last_sent_at": None}  # fmt: skip


def channel_states(store: Store) -> list[dict[str, Any]]:
    return list(store.db.query("SELECT * FROM channel_state ORDER BY channel"))


def set_channel_state(store: Store, channel: str, **fields: Any) -> None:
    """Upsert one channel's pacing and pause state; datetimes in the canonical shape."""
    values = {k: iso(v) if isinstance(v, datetime) else v for k, v in fields.items()}
    store.db.execute("INSERT OR IGNORE INTO channel_state (channel) VALUES (?)", [channel])
    if values:
        assignments = ", ".join(f"{name} = ?" for name in values)
        store.db.execute(
            f"UPDATE channel_state SET {assignments} WHERE channel = ?",  # noqa: S608
            [*values.values(), channel],
        )


def known_channel_id(store: Store, channel: str) -> str | None:
    """Slack's id for a channel name, as learnt from an earlier successful post."""
    row = store.db.execute(
        "SELECT slack_channel FROM alerts WHERE channel = ? AND state = 'sent' "
        "AND slack_channel IS NOT NULL AND slack_channel != 'console' ORDER BY id DESC LIMIT 1",
        [channel],
    ).fetchone()
    return str(row[0]) if row else None


def requeue_alerts(
    store: Store, now: datetime, ids: Sequence[int] = (), *, dead: bool = False
) -> int:
    """Put failed or dead rows (these ids, or every dead row) back to pending, attempts reset."""
    where = "state IN ('failed', 'dead', 'held')"
    params: list[Any] = [iso(now), iso(now)]
    if ids:
        where += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(ids)
    elif dead:
        where = "state = 'dead'"
    else:
        return 0
    sql = "UPDATE alerts SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? "
    cursor = store.db.execute(sql + f"WHERE {where}", params)
    return int(cursor.rowcount)


def insert_notice(
    store: Store, channel: str, kind: str, text: str, now: datetime, dedupe_key: str
) -> int | None:
    """Queue an ops or test message through the outbox; None when that key was already queued."""
    cursor = store.db.execute(
        "INSERT OR IGNORE INTO alerts (dedupe_key, channel, kind, state, next_attempt_at, "
        "created_at, updated_at, payload) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
        [dedupe_key, channel, kind, iso(now), iso(now), iso(now), json.dumps({"text": text})],
    )
    return int(cursor.lastrowid) if cursor.rowcount == 1 and cursor.lastrowid else None


def last_reply_sent(store: Store, parent_alert_id: int) -> datetime | None:
    """When the last thread reply under this alert was sent (None: never)."""
    row = store.db.execute(
        "SELECT max(sent_at) FROM alerts WHERE kind = 'reply' AND state = 'sent' "
        "AND json_extract(payload, '$.parent_alert_id') = ?",
        [parent_alert_id],
    ).fetchone()
    return from_iso(row[0]) if row and row[0] else None


def insert_followup(
    store: Store,
    parent_alert_id: int,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    dedupe_key: str,
) -> int | None:
    """Queue a thread reply or an edit of a posted alert (``kind`` is 'reply' or 'update').

    The outbox sends it once the parent is sent, in the parent's channel and thread. ``payload``
    is kept for the renderer (a reply's ``items``: source, title, link). None when the key exists.
    """
    parent = store.alert_row(parent_alert_id)
    if parent is None:
        return None
    body = {**payload, "parent_alert_id": parent_alert_id}
    cursor = store.db.execute(
        "INSERT OR IGNORE INTO alerts (dedupe_key, story_id, entry_id, channel, kind, topics, "
        "state, next_attempt_at, created_at, updated_at, payload) "
        "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
        [
            dedupe_key, parent["story_id"], parent["entry_id"], parent["channel"], kind,
            parent["topics"], iso(now), iso(now), iso(now), json.dumps(body),
        ],
    )  # fmt: skip
    return int(cursor.lastrowid) if cursor.rowcount == 1 and cursor.lastrowid else None


# -- stories, for the story index ---------------------------------------------------------------


def recent_story_entries(store: Store, since: datetime) -> list[tuple[int, Entry]]:
    """(story id, entry) for every matching entry of a story seen since ``since``, oldest first.

    Warms the in-memory story index (:class:`aggregator.story_index.StoryIndex`) at start. An entry
    without a published time is dated by when it was first seen. Uses ``stories_last_seen`` and
    ``entries_story``, so the cost follows the window, not the table.
    """
    rows = store.db.query(
        "SELECT e.*, coalesce(e.published, e.first_seen) AS at FROM entries e "
        "WHERE e.story_id IN (SELECT id FROM stories WHERE last_seen >= ?) "
        "AND EXISTS (SELECT 1 FROM matches m WHERE m.entry_id = e.id) "
        "ORDER BY at, e.id",
        [iso(since)],
    )
    return [(int(row["story_id"]), _stored_entry(row, row["at"])) for row in rows]


def story_context(
    store: Store, entry_id: int, window: timedelta
) -> tuple[int | None, datetime, list[tuple[int, Entry]]]:
    """For explaining a grouping decision: the entry's story, when it was first seen, and the
    matching entries first seen within ``window`` before it (what the decision could see)."""
    row = store.db.execute(
        "SELECT story_id, first_seen FROM entries WHERE id = ?", [entry_id]
    ).fetchone()
    if row is None:
        raise StoreError(f"no stored entry {entry_id}")
    first_seen = datetime.fromisoformat(row[1])
    rows = store.db.query(
        "SELECT e.*, coalesce(e.published, e.first_seen) AS at FROM entries e "
        "WHERE e.first_seen < ? AND e.first_seen >= ? AND e.story_id IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM matches m WHERE m.entry_id = e.id) ORDER BY at, e.id",
        [row[1], iso(first_seen - window)],
    )
    earlier = [(int(r["story_id"]), _stored_entry(r, r["at"])) for r in rows]
    return (int(row[0]) if row[0] is not None else None), first_seen, earlier


# -- stored entries, for `aggregator explain` and `aggregator backtest` -------------------------


def _stored_entry(row: dict[str, Any], published: str | None) -> Entry:
    return Entry(
        feed_url=row["feed_url"],
        guid=row["guid"],
        link=row["link"],
        canonical_url=row["canonical_url"],
        title=row["title"],
        summary=row["summary"],
        published=from_iso(published),
        content_hash=row["content_hash"],
        source=row["source"],
        links=tuple(json.loads(row["links"] or "[]")),
    )


def stored_entry(store: Store, ref: str, urls: Sequence[str] = ()) -> tuple[int, Entry] | None:
    """(id, entry) for an entry id (``ref`` all digits), else the newest entry whose link or
    canonical URL is ``ref`` or one of ``urls`` (pass the canonical form of a URL there)."""
    if ref.strip().isdigit():
        rows = list(store.db.query("SELECT * FROM entries WHERE id = ?", [int(ref)]))
    else:
        wanted = [ref, *urls]
        marks = ",".join("?" * len(wanted))
        rows = list(
            store.db.query(
                f"SELECT * FROM entries WHERE link IN ({marks}) OR canonical_url IN ({marks}) "  # noqa: S608
                "ORDER BY first_seen DESC, id DESC LIMIT 1",
                wanted + wanted,
            )
        )
    if not rows:
        return None
    return int(rows[0]["id"]), _stored_entry(rows[0], rows[0]["published"])


def count_stored_entries(store: Store, since: datetime | None = None) -> int:
    """How many entries :func:`stored_entries` will yield (for a progress bar)."""
    row = store.db.execute(
        "SELECT count(*) FROM entries WHERE coalesce(published, first_seen) >= ?",
        [iso(since) if since else ""],
    ).fetchone()
    return int(row[0])


def stored_entries(
    store: Store, since: datetime | None = None, page: int = 1000
) -> Iterator[tuple[int, Entry]]:
    """(id, entry) for every entry dated at or after ``since``, oldest first, read a page at a
    time so a long history never sits in memory. An entry without a published time is dated by
    when it was first seen."""
    after_at, after_id = (iso(since) if since else ""), -1  # at >= since, to begin with
    while True:
        rows = list(
            store.db.query(
                "SELECT *, coalesce(published, first_seen) AS at FROM entries "
                "WHERE coalesce(published, first_seen) > ? "
                "OR (coalesce(published, first_seen) = ? AND id > ?) "
                "ORDER BY at, id LIMIT ?",
                [after_at, after_at, after_id, page],
            )
        )
        for row in rows:
            yield int(row["id"]), _stored_entry(row, row["at"])
        if len(rows) < page:
            return
        after_at, after_id = rows[-1]["at"], int(rows[-1]["id"])


# -- feed health, for `aggregator feeds status` --------------------------------------------------


def feed_health_rows(store: Store, since: datetime) -> list[dict[str, Any]]:
    """Every feed not removed, with ``recent_items`` (entries published or first seen since
    ``since``) and ``avg_elapsed_ms`` over its fetch log."""
    return list(
        store.db.query(
            "SELECT f.*, "
            "(SELECT count(*) FROM entries e WHERE e.feed_url = f.url "
            " AND coalesce(e.published, e.first_seen) >= ?) AS recent_items, "
            "(SELECT avg(x.elapsed_ms) FROM fetches x WHERE x.feed_url = f.url "
            " AND x.elapsed_ms IS NOT NULL) AS avg_elapsed_ms "
            "FROM feeds f WHERE f.status != 'removed' ORDER BY f.status != 'active', f.name, f.url",
            [iso(since)],
        )
    )
