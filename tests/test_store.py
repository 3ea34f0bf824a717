"""Storing new entries: add_entry and its batch form insert_entries, and the FTS index they keep.

The insert path is the cycle's hottest database code, so these tests pin what it must keep doing
(one story per new entry unless it joins one, alerts written with their entry, the (feed, guid)
and dedupe_key guarantees, an FTS row per entry) and the one thing it must not do (take a
SAVEPOINT per entry inside the cycle's transaction: each one makes FTS5 write out its index).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import aggregator.store as store_module
from aggregator.models import Entry, TopicMatch
from aggregator.store import AddedEntry, NewEntry, Store
from tests.schema_v1 import v1_database

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
FEED = "https://feeds.example/a.xml"
OTHER_FEED = "https://feeds.example/b.xml"
AI = TopicMatch("ai-policy", ("AI", "regulation"))
ORDERS = TopicMatch("executive-orders", ("executive order",))
TABLES = ("stories", "entries", "matches", "alerts")


def entry(n: int, *, feed: str = FEED, url: str | None = None, **changes: Any) -> Entry:
    canonical = f"https://news.example/{n}" if url is None else url
    base = Entry(
        feed_url=feed,
        guid=f"guid-{n}",
        link=canonical,
        canonical_url=canonical,
        title=f"Council weighs plan number {n}",
        summary=f"Residents spoke for an hour about proposal {n} before the vote.",
        published=NOW - timedelta(minutes=n),
        content_hash=f"hash-{n}",
        source="Example News",
        links=(f"https://gov.example/doc/{n}",),
    )
    return replace(base, **changes)


def alerting(e: Entry, *channels: str, **kw: Any) -> NewEntry:
    topics = {"#ai-policy": (AI,), "#orders": (ORDERS,)}
    return NewEntry(
        e, (AI, ORDERS), tuple((c, topics[c]) for c in channels), alert_payload={"primary": True},
        **kw,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db")
    yield s
    s.close()


def rows(store: Store, table: str) -> list[tuple[Any, ...]]:
    return store.db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    return {t: rows(store, t) for t in TABLES}


def fts_consistent(store: Store) -> None:
    """Raises unless entries_fts indexes exactly the entries' titles and summaries."""
    store.db.execute("INSERT INTO entries_fts (entries_fts, rank) VALUES ('integrity-check', 1)")


def searched(store: Store, query: str) -> list[int]:
    return sorted(r["id"] for r in store.search(query, limit=100))


# -- add_entry ----------------------------------------------------------------------------------


def test_a_new_entry_is_stored_with_its_story_matches_alerts_and_search_row(store: Store) -> None:
    added = store.add_entry(alerting(entry(1), "#ai-policy", "#orders"), NOW)
    assert added == AddedEntry(entry_id=1, story_id=1, alerts=2)

    (row,) = store.db.query("SELECT * FROM entries")
    assert row["guid"] == "guid-1" and row["story_id"] == 1
    assert row["first_seen"] == store_module.iso(NOW)
    assert row["published"] == store_module.iso(NOW - timedelta(minutes=1))
    assert row["links"] == '["https://gov.example/doc/1"]'
    (story,) = store.db.query("SELECT * FROM stories")
    assert (story["title"], story["canonical_url"], story["entry_count"]) == (
        "Council weighs plan number 1",
        "https://news.example/1",
        1,
    )
    assert story["first_seen"] == story["last_seen"] == store_module.iso(NOW)
    assert [(m[1], m[2]) for m in rows(store, "matches")] == [
        ("ai-policy", '["AI", "regulation"]'),
        ("executive-orders", '["executive order"]'),
    ]
    alerts = list(store.db.query("SELECT * FROM alerts ORDER BY id"))
    assert [(a["dedupe_key"], a["channel"], a["entry_id"], a["state"]) for a in alerts] == [
        ("alert:1:#ai-policy", "#ai-policy", 1, "pending"),
        ("alert:1:#orders", "#orders", 1, "pending"),
    ]
    assert alerts[0]["payload"] == '{"primary": true}'
    assert searched(store, "proposal") == [1]
    fts_consistent(store)


def test_an_entry_without_links_or_date_is_stored(store: Store) -> None:
    store.add_entry(NewEntry(entry(1, links=(), published=None, url=""), (), ()), NOW)
    (row,) = store.db.query("SELECT links, published, canonical_url FROM entries")
    assert row == {"links": "[]", "published": None, "canonical_url": ""}


def test_a_stored_guid_is_refused_and_leaves_no_trace(store: Store) -> None:
    store.add_entry(NewEntry(entry(1), (), ()), NOW)
    before = dump(store)
    again = replace(entry(1), title="Another title", content_hash="other")
    assert store.add_entry(alerting(again, "#ai-policy"), NOW + timedelta(hours=1)) is None
    assert dump(store) == before  # no second story, no alert, nothing updated
    # The story id it briefly took is free again: the next story is 2, as before this change.
    assert store.add_entry(NewEntry(entry(2), (), ()), NOW) == AddedEntry(2, 2, 0)
    # The same guid in another feed is another entry.
    assert store.add_entry(NewEntry(entry(1, feed=OTHER_FEED), (), ()), NOW) is not None
    fts_consistent(store)


def test_joining_a_story_counts_the_entry_and_moves_last_seen(store: Store) -> None:
    first = store.add_entry(alerting(entry(1), "#ai-policy"), NOW)
    assert first is not None
    later = NOW + timedelta(hours=2)
    joined = store.add_entry(alerting(entry(2), "#ai-policy", story_id=first.story_id), later)
    # The story already has its #ai-policy alert: the dedupe key refuses a second one.
    assert joined == AddedEntry(entry_id=2, story_id=first.story_id, alerts=0)
    (story,) = store.db.query("SELECT * FROM stories")
    assert story["entry_count"] == 2
    assert story["first_seen"] == store_module.iso(NOW)
    assert story["last_seen"] == store_module.iso(later)
    assert len(rows(store, "alerts")) == 1


def test_joining_a_story_that_is_gone_fails_without_writing(store: Store) -> None:
    store.add_entry(NewEntry(entry(1), (), ()), NOW)
    with store.transaction():
        before = dump(store)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            store.add_entry(NewEntry(entry(2), (), (), story_id=99), NOW)
        assert dump(store) == before
        store.add_entry(NewEntry(entry(3), (), ()), NOW)  # the transaction goes on
    assert [r[2] for r in rows(store, "entries")] == ["guid-1", "guid-3"]


def test_story_by_url_joins_the_first_stored_entry_with_that_url(store: Store) -> None:
    url = "https://news.example/shared"
    first = store.add_entry(NewEntry(entry(1, url=url), (), ()), NOW)
    store.add_entry(NewEntry(entry(2, url=url), (), ()), NOW)  # no story_by_url: a story of its own
    third = store.add_entry(
        NewEntry(entry(3, url=url, feed=OTHER_FEED), (), (), story_by_url=True), NOW
    )
    alone = store.add_entry(NewEntry(entry(4), (), (), story_by_url=True), NOW)
    blank = store.add_entry(NewEntry(entry(5, url=""), (), (), story_by_url=True), NOW)
    assert first is not None and third is not None and alone is not None and blank is not None
    assert third.story_id == first.story_id == store.story_of_canonical_url(url)
    # With no stored story to join, an entry that matched nothing is in none.
    assert alone.story_id is None and blank.story_id is None
    counts = {r["id"]: r["entry_count"] for r in store.db.query("SELECT * FROM stories")}
    assert counts[first.story_id] == 2
    assert len(counts) == 2  # the first entry's and the second's


# -- atomicity ----------------------------------------------------------------------------------


def fail_alert_inserts(store: Store) -> None:
    """Make the alert insert fail: after the story and the entry are written, before the index."""
    store.db.execute(
        "CREATE TEMP TRIGGER no_alerts BEFORE INSERT ON main.alerts "
        "BEGIN SELECT RAISE(ABORT, 'alerts refused'); END"
    )


def test_an_entry_that_fails_halfway_on_its_own_leaves_nothing(store: Store) -> None:
    store.add_entry(NewEntry(entry(1), (), ()), NOW)
    before = dump(store)
    fail_alert_inserts(store)
    with pytest.raises(sqlite3.IntegrityError, match="alerts refused"):
        store.add_entry(alerting(entry(2), "#ai-policy"), NOW)
    assert dump(store) == before
    assert not store.db.conn.in_transaction
    fts_consistent(store)


def test_an_entry_that_fails_halfway_in_a_transaction_undoes_the_transaction(
    store: Store,
) -> None:
    """No savepoint per entry: a half-written entry is never committed, at the price of the
    enclosing transaction, which the cycle would have rolled back anyway."""
    store.add_entry(NewEntry(entry(1), (), ()), NOW)
    before = dump(store)
    fail_alert_inserts(store)
    with pytest.raises(sqlite3.IntegrityError, match="alerts refused"), store.transaction():
        store.add_entry(NewEntry(entry(2), (), ()), NOW)
        store.add_entry(alerting(entry(3), "#ai-policy"), NOW)
    assert dump(store) == before
    fts_consistent(store)


def test_a_batch_that_fails_halfway_leaves_nothing(store: Store) -> None:
    before = dump(store)
    fail_alert_inserts(store)
    batch = [NewEntry(entry(1), (), ()), alerting(entry(2), "#ai-policy")]
    with pytest.raises(sqlite3.IntegrityError, match="alerts refused"):
        store.insert_entries(batch, NOW)
    with pytest.raises(sqlite3.IntegrityError, match="alerts refused"):
        store.add_entries(batch, NOW)
    assert dump(store) == before


def test_storing_entries_in_a_transaction_takes_no_savepoint(store: Store) -> None:
    """FTS5 writes its pending index out at every SAVEPOINT: one per entry made every entry an
    index segment of its own, which cost more than the rest of storing it."""
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        with store.transaction():
            store.add_entry(alerting(entry(1), "#ai-policy"), NOW)
            store.add_entry(NewEntry(entry(1), (), ()), NOW)  # refused
            store.insert_entries([NewEntry(entry(2), (), ()), alerting(entry(3), "#orders")], NOW)
            store.add_entries([NewEntry(entry(4), (), (), story_by_url=True)], NOW)
    finally:
        store.db.conn.set_trace_callback(None)
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert not [s for s in statements if s.upper().startswith("BEGIN")][1:]


# -- insert_entries: the batch form --------------------------------------------------------------


def varied_batches() -> list[list[NewEntry]]:
    """Two feeds' worth of entries covering every path through add_entry, in two batches."""
    shared = "https://news.example/shared"
    first = [
        NewEntry(entry(1), (), ()),
        alerting(entry(2), "#ai-policy", "#orders"),
        NewEntry(entry(3, url=shared), (), (), story_by_url=True),
        NewEntry(entry(4, url=shared), (), (), story_by_url=True),  # joins 3, in the same batch
        NewEntry(entry(5, url=shared), (), ()),  # a story of its own
        NewEntry(entry(1), (), ()),  # repeated guid in the batch
        NewEntry(replace(entry(6), guid="guid-2"), (), ()),  # guid of item 2, other content
        NewEntry(entry(7, url=""), (), (), story_by_url=True),
        NewEntry(entry(8, links=(), published=None), (AI,), ()),
        alerting(entry(9), "#ai-policy", story_id=2),  # joins item 2: its alert exists already
    ]
    second = [
        NewEntry(entry(1), (), ()),  # stored by the first batch
        NewEntry(entry(10, url=shared, feed=OTHER_FEED), (), (), story_by_url=True),
        alerting(entry(11, url=shared, feed=OTHER_FEED), "#orders", story_id=1),
        NewEntry(entry(12, url="https://news.example/2"), (), (), story_by_url=True),
        alerting(entry(13, feed=OTHER_FEED), "#ai-policy", "#ai-policy"),
        NewEntry(entry(14, url=""), (), ()),
    ]
    return [first, second]


def test_insert_entries_stores_exactly_what_add_entry_would(tmp_path: Path) -> None:
    one_by_one = Store.open(tmp_path / "loop.db")
    batched = Store.open(tmp_path / "batch.db")
    try:
        for n, batch in enumerate(varied_batches()):
            now = NOW + timedelta(minutes=n)
            with one_by_one.transaction():
                expected = [one_by_one.add_entry(item, now) for item in batch]
            with batched.transaction():
                assert batched.insert_entries(batch, now) == expected
        assert dump(batched) == dump(one_by_one)
        assert searched(batched, "proposal") == searched(one_by_one, "proposal")
        assert len(searched(batched, "proposal")) == 13
        fts_consistent(batched)
        # After a batch, ids carry on from where it ended, as after add_entry.
        after = NewEntry(entry(20), (), ())
        assert batched.add_entry(after, NOW) == one_by_one.add_entry(after, NOW)
    finally:
        one_by_one.close()
        batched.close()


def test_insert_entries_on_its_own_is_one_transaction(store: Store) -> None:
    results = store.insert_entries([NewEntry(entry(1), (), ()), alerting(entry(2), "#orders")], NOW)
    assert results == [AddedEntry(1, 1, 0), AddedEntry(2, 2, 1)]
    assert not store.db.conn.in_transaction
    assert store.insert_entries([], NOW) == []
    assert store.add_entries([NewEntry(entry(3), (), ()), NewEntry(entry(3), (), ())], NOW) == {
        "entries": 1,
        "alerts": 0,
    }


# -- the search index: migration 3 and the paths that change entries -----------------------------


def test_the_index_follows_entries_that_change_move_and_go(store: Store) -> None:
    store.add_entries([NewEntry(entry(n), (), ()) for n in range(1, 4)], NOW)
    changed = replace(entry(2), title="Harbour dredging postponed", content_hash="new")
    assert store.update_entry_content(FEED, changed, NOW) == 2
    assert searched(store, "dredging") == [2]
    assert searched(store, "council") == [1, 3]
    store.rename_feed(FEED, OTHER_FEED)
    fts_consistent(store)
    assert store.prune(NOW + timedelta(days=30), retention_days=7) == 3
    assert searched(store, "proposal") == []
    fts_consistent(store)


def test_a_new_database_indexes_entries_without_an_insert_trigger(store: Store) -> None:
    triggers = {
        r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    assert triggers == {"entries_au", "entries_ad"}
    assert store.schema_version() == max(store_module.MIGRATIONS)


def test_a_v1_database_keeps_its_index_and_indexes_new_entries(tmp_path: Path) -> None:
    store = Store.open(v1_database(tmp_path))
    try:
        assert [r["id"] for r in store.search("executive order")] == [1]
        fts_consistent(store)
        added = store.add_entry(NewEntry(entry(1), (), (), story_by_url=True), NOW)
        assert added is not None
        assert searched(store, "proposal") == [added.entry_id]
        fts_consistent(store)
    finally:
        store.close()
