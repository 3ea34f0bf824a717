"""Upgrades: a database written by an earlier schema opens, migrates forward and keeps its data.

``fixtures/schema_v1.sql`` is a real database from schema version 1 (how it was made is in its
header). Schema 1 is the only migration so far, so the fixture must open as current with every
row intact; a future migration is simulated by extending a copy of ``MIGRATIONS`` for one test.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import aggregator.store.schema as store_module
from aggregator.errors import StoreError
from aggregator.store import Store
from tests.schema_v1 import FIXTURE, v1_database

TABLES = ("feeds", "stories", "entries", "matches", "alerts", "channel_state", "fetches")
LATER = datetime(2030, 1, 1, tzinfo=UTC)


def snapshot(path: Path, columns: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Every row of the fixture's tables, in the fixture's columns (a migration may add more)."""
    conn = sqlite3.connect(path)
    try:
        if columns is None:
            columns = {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in TABLES}
        rows = {
            t: conn.execute(f"SELECT {', '.join(columns[t])} FROM {t} ORDER BY rowid").fetchall()  # noqa: S608
            for t in TABLES
        }
    finally:
        conn.close()
    return {"columns": columns, "rows": rows}


def test_the_fixture_holds_real_data() -> None:
    text = FIXTURE.read_text(encoding="utf-8")
    assert 'INSERT INTO "schema_migrations" (version, applied_at) VALUES (1,' in text
    for table in TABLES:
        assert f'INSERT INTO "{table}"' in text, table


def test_a_v1_database_opens_migrated_to_the_current_schema_with_its_data(tmp_path: Path) -> None:
    path = v1_database(tmp_path)
    before = snapshot(path)
    assert sum(len(rows) for rows in before["rows"].values()) >= 13

    store = Store.open(path)
    try:
        assert store.schema_version() == max(store_module.MIGRATIONS)
        assert store.journal_mode() == "wal"
        assert snapshot(path, before["columns"])["rows"] == before["rows"]
        # The data still works, not merely exists: full-text search, feed state, the outbox.
        assert [r.id for r in store.entries.search("executive order")] == [1]
        states = {s.url: s for s in store.feeds.states()}
        assert set(states) == {"https://feeds.example/a.xml", "https://feeds.example/b.xml"}
        assert all(s.body_hash for s in states.values())
        assert store.outbox.counts() == {"sent": 1, "failed": 1}
        due = store.outbox.due(LATER)
        assert [(r.alert.channel, r.state) for r in due] == [("#executive-orders", "failed")]
    finally:
        store.close()

    reopened = Store.open(path)
    try:
        assert reopened.db.migrate() == []  # nothing left to apply
    finally:
        reopened.close()


def test_a_new_migration_is_applied_on_open_and_keeps_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = v1_database(tmp_path)
    before = snapshot(path)
    current = max(store_module.MIGRATIONS)
    future = current + 1
    extended = dict(store_module.MIGRATIONS)
    extended[future] = """
    ALTER TABLE feeds ADD COLUMN notes TEXT NOT NULL DEFAULT '';
    CREATE INDEX alerts_channel_state ON alerts(channel, state);
    """
    monkeypatch.setattr(store_module, "MIGRATIONS", extended)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", future)

    store = Store.open(path)
    try:
        assert store.schema_version() == future
        versions = [r[0] for r in store.db.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, future + 1))
        assert snapshot(path, before["columns"])["rows"] == before["rows"]
        notes = [r[0] for r in store.db.execute("SELECT notes FROM feeds")]
        assert notes == ["", ""]
        indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}
        assert "alerts_channel_state" in indexes
        assert store.db.migrate() == []
    finally:
        store.close()


def test_a_migration_that_fails_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = v1_database(tmp_path)
    Store.open(path).close()  # bring it to the current schema first
    before = snapshot(path)
    current = max(store_module.MIGRATIONS)
    broken = dict(store_module.MIGRATIONS)
    broken[current + 1] = """
    CREATE TABLE half_done (x INTEGER);
    INSERT INTO no_such_table VALUES (1);
    """
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", current + 1)
    with pytest.raises(StoreError, match="no_such_table"):
        Store.open(path)

    monkeypatch.undo()
    store = Store.open(path)
    try:
        assert store.schema_version() == current
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in tables
    finally:
        store.close()
    assert snapshot(path, before["columns"])["rows"] == before["rows"]


def test_a_database_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    """After a downgrade the old code must not write a schema it does not know."""
    path = v1_database(tmp_path)
    Store.open(path).close()
    current = max(store_module.MIGRATIONS)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, '2031-01-01')", [current + 3])
    conn.close()
    before = snapshot(path)
    with pytest.raises(StoreError) as refused:
        Store.open(path)
    message = str(refused.value)
    assert f"schema version {current + 3}" in message and f"this program's {current}" in message
    assert snapshot(path) == before
