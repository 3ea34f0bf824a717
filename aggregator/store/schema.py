"""The database file: opening it, its numbered migrations, transactions and error translation.

SQLite through sqlite-utils, in WAL mode with ``synchronous=FULL`` and a busy timeout. A write
transaction begins ``IMMEDIATE``: it takes the write lock before it reads, so two processes (the
service and ``poll --once``) queue for the lock instead of one failing when its snapshot turns out
stale. Times are stored as ISO-8601 UTC strings of one fixed shape, so that string order is time
order. Every public method of a store part raises :class:`~aggregator.errors.StoreError`, never a
raw ``sqlite3`` error.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from aggregator.errors import StoreError
from aggregator.imports import without

with without("numpy", "pandas"):  # optional column types we never use (aggregator.imports)
    import sqlite_utils

BUSY_TIMEOUT_MS = 10_000
P = ParamSpec("P")
R = TypeVar("R")


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
    -- New entries are indexed for full-text search by the store itself, in the entry's
    -- transaction, instead of this trigger. A statement that fires a trigger runs inside a
    -- statement savepoint, and FTS5 writes its pending index to disk at every savepoint: each
    -- entry became an index segment of its own, merged again and again (measured on the 29,500
    -- entries of a cold cycle: 3.4 s to insert them with the trigger, 1.0 s without). The update
    -- and delete triggers stay: they run once per statement, and those statements are rare.
    DROP TRIGGER IF EXISTS entries_ai;
    """,
    4: """
    -- A story's official text (the first entry from a primary source), so that an edit of its
    -- alerts can show it without the config at hand. Stories alerted before this migration take
    -- the link of an alert that came from an official source.
    ALTER TABLE stories ADD COLUMN official_link TEXT;
    UPDATE stories SET official_link = (
        SELECT e.link FROM alerts a JOIN entries e ON e.id = a.entry_id
        WHERE a.story_id = stories.id AND a.kind = 'alert'
        AND json_extract(a.payload, '$.primary') AND e.link != ''
        ORDER BY a.id LIMIT 1
    );
    """,
    5: """
    -- The learned relevance score of a match, for a topic with a model (NULL without one).
    ALTER TABLE matches ADD COLUMN score REAL;
    """,
    6: """
    -- What people said an entry is worth for a topic: training data for the relevance models
    -- (`aggregator label`, Slack reactions, label files). One row per person and source; an
    -- entry's label is their majority. Retention keeps labelled entries.
    CREATE TABLE labels (
        entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
        topic TEXT NOT NULL,
        label INTEGER CHECK (label IN (0, 1)),      -- 1 relevant, 0 not, NULL unsure
        source TEXT NOT NULL CHECK (source IN ('cli', 'slack', 'file')),
        who TEXT NOT NULL,                          -- a Slack user id, 'cli' or a file name
        at TEXT NOT NULL,
        UNIQUE (entry_id, topic, source, who)
    );
    CREATE INDEX labels_topic ON labels(topic, entry_id);
    """,
    7: """
    -- Each person's reactions on an alert as last read from Slack (issue 14). Slack says who
    -- reacted but not when, so which of two reactions is the latest is learnt across reads; the
    -- label it counts as is in `labels` (source 'slack'). Only the user id and a time are kept.
    CREATE TABLE reactions (
        alert_id INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
        who TEXT NOT NULL,                          -- a Slack user id
        relevant INTEGER NOT NULL,                  -- 1: one of their reactions means relevant
        not_relevant INTEGER NOT NULL,
        label INTEGER CHECK (label IN (0, 1)),      -- what they count as; NULL unsure
        at TEXT NOT NULL,                           -- when that label was first seen
        PRIMARY KEY (alert_id, who)
    );
    -- The alerts whose reactions are read: sent recently, one message each.
    CREATE INDEX alerts_sent ON alerts(sent_at) WHERE kind = 'alert';
    CREATE INDEX alerts_slack_ts ON alerts(slack_ts) WHERE slack_ts IS NOT NULL;
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


# -- the connection -------------------------------------------------------------------------------


class Database:
    """One connection to the database file. Not shared between threads."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self._utils = sqlite_utils.Database(conn)

    @classmethod
    def open(cls, path: str | Path) -> Database:
        """Open (creating directories and the file if needed), check the schema is not newer
        than this program, and migrate forward."""
        path = str(path)
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # The service opens the store on its main thread and hands it to the one scheduler
            # thread that runs cycles; access is never concurrent, so the thread check is off.
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open database {path!r}: {e}") from e
        db = cls(conn, path)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if path != ":memory:":
                db._utils.enable_wal()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            db.check_version()
            db.migrate()
            db.check_writable()
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(f"cannot open database {path!r}: {describe(e)}") from e
        except StoreError:
            conn.close()
            raise
        return db

    def close(self) -> None:
        self.conn.close()

    # -- schema -----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            return 0
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def check_version(self) -> None:
        """Refuse a database written by a newer version of this program (after a downgrade):
        its columns may mean something else, and writing to it would corrupt it."""
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path!r} has schema version {found}, newer than this program's "
                f"{SCHEMA_VERSION}: it was written by a newer aggregator; upgrade again, or use "
                "another database (--db PATH)"
            )

    def migrate(self) -> list[int]:
        """Apply every migration newer than the database, each in its own transaction."""
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied: list[int] = []
        current = self.schema_version()
        for version in sorted(v for v in MIGRATIONS if v > current):
            with self.transaction():
                for statement in _statements(MIGRATIONS[version]):
                    self.conn.execute(statement)
                if version == 1:
                    self._utils.table("entries").enable_fts(
                        ["title", "summary"], create_triggers=True
                    )
                self.conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    [version, iso(datetime.now(UTC))],
                )
            applied.append(version)
        return applied

    def check_writable(self) -> None:
        """Write a row and roll it back, so that a database that cannot be written (a read-only
        file system, an immutable file, another owner) fails now with the reason, not at every
        cycle. Opening and reading such a file work; only a write says no."""
        if self.conn.in_transaction:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (-1, 'write check')"
            )
        finally:
            self.conn.execute("ROLLBACK")

    def journal_mode(self) -> str:
        return str(self.conn.execute("PRAGMA journal_mode").fetchone()[0])

    # -- transactions -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an error.

        Inside an open transaction this joins it: the writes commit or roll back with the
        enclosing one. (No SAVEPOINT: FTS5 writes its pending index to disk at every savepoint,
        which made each entry of a cycle an index segment of its own.)
        """
        conn = self.conn
        if conn.in_transaction:
            yield
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"database {self.path!r}: cannot begin a write: {describe(e)}") from e
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"database {self.path!r}: commit failed: {describe(e)}") from e

    # -- statements ------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(sql, rows)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A SELECT's rows as dicts (no SAVEPOINT, unlike ``sqlite_utils`` queries)."""
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def search(self, table: str, query: str, limit: int) -> list[dict[str, Any]]:
        """Full-text search over a table's FTS index, best match first."""
        return list(self._utils.table(table).search(query, limit=limit))


def describe(error: sqlite3.Error) -> str:
    """An SQLite error in words an operator can act on."""
    text = str(error)
    if "locked" in text or "busy" in text:
        seconds = BUSY_TIMEOUT_MS / 1000
        return f"{text}: another process held the database for more than {seconds:g} s"
    if "readonly" in text or "read-only" in text:
        return (
            f"{text}: the file or its directory cannot be written (a read-only file system, "
            "an immutable file, or another owner)"
        )
    return text


# -- store parts ----------------------------------------------------------------------------------


class Part:
    """One kind of stored thing, over the shared :class:`Database`.

    Every public method of a subclass raises :class:`StoreError` instead of a raw
    ``sqlite3.Error``, so callers handle one error type whatever went wrong underneath.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(member):
                setattr(cls, name, _translated(member, f"{cls.__name__}.{name}"))


def _translated(fn: Callable[P, R], where: str) -> Callable[P, R]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except sqlite3.Error as e:
                raise StoreError(f"database error in {where}: {describe(e)}") from e

        return generator

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            raise StoreError(f"database error in {where}: {describe(e)}") from e

    return call


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """Slices of at most ``size``: SQLite limits the parameters of one statement."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
