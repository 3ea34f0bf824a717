"""The store's one write path, ``Store.apply``, and what it reads for the planner.

Applying a plan is the cycle's hottest database code, so these tests pin what it must keep doing
(entries with their stories, matches and search rows; alerts written with their entry; the
(feed, guid) and dedupe-key guarantees; follow-ups under the right parents), what it must not do
(take a SAVEPOINT per entry inside the cycle's transaction: each one makes FTS5 write out its
index), and that a database error reaches callers as a StoreError.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.cycle.plan import (
    ChangedEntry,
    EntryStep,
    FeedPlan,
    FeedUpdate,
    FetchRecord,
    NewEntry,
    Notice,
    PlannedAlert,
)
from aggregator.errors import StoreError
from aggregator.models import (
    AlertKind,
    EditPayload,
    Entry,
    FeedOutcome,
    FeedResult,
    FeedStatus,
    ReplyPayload,
    TopicMatch,
)
from aggregator.store import SCHEMA_VERSION, Store
from aggregator.store.history import FETCH_LOG_KEEP
from aggregator.store.schema import iso
from tests.schema_v1 import v1_database

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
FEED = "https://feeds.example/a.xml"
OTHER_FEED = "https://feeds.example/b.xml"
AI = TopicMatch("ai-policy", ("AI", "regulation"))
ORDERS = TopicMatch("executive-orders", ("executive order",))
TABLES = ("stories", "entries", "matches", "alerts")
TOPICS = {"#ai-policy": (AI,), "#orders": (ORDERS,)}


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


def new(e: Entry, story: int | None = None, *channels: str, starts: bool = False,
        follow_up: bool = False) -> NewEntry:  # fmt: skip
    """A planned new entry; with channels it matched both topics and alerts there."""
    alerts = tuple(PlannedAlert(c, TOPICS[c]) for c in channels)
    matches = (AI, ORDERS) if channels else ()
    return NewEntry(e, matches, story, starts, alerts, follow_up)


def plan(*steps: EntryStep, feed: str = FEED, primary: bool = False, **parts: Any) -> FeedPlan:
    outcome = FeedOutcome(feed, FeedResult.FETCHED)
    return FeedPlan(feed, steps, primary, parts.get("update"), parts.get("record"), outcome,
                    parts.get("notice"), parts.get("moved_to"))  # fmt: skip


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
    return sorted(r.id for r in store.entries.search(query, limit=100))


# -- new entries ----------------------------------------------------------------------------------


def test_a_new_entry_is_stored_with_its_story_matches_alerts_and_search_row(store: Store) -> None:
    applied = store.apply(
        plan(new(entry(1), 1, "#ai-policy", "#orders", starts=True), primary=True), NOW
    )
    assert (applied.entry_ids, applied.alerts) == ((1,), 2)

    (row,) = store.db.rows("SELECT * FROM entries")
    assert row["guid"] == "guid-1" and row["story_id"] == 1
    assert row["first_seen"] == iso(NOW)
    assert row["published"] == iso(NOW - timedelta(minutes=1))
    assert row["links"] == '["https://gov.example/doc/1"]'
    (story,) = store.db.rows("SELECT * FROM stories")
    assert (story["title"], story["canonical_url"], story["entry_count"]) == (
        "Council weighs plan number 1",
        "https://news.example/1",
        1,
    )
    assert story["first_seen"] == story["last_seen"] == iso(NOW)
    assert story["official_link"] == "https://news.example/1"  # from a primary source
    assert [(m[1], m[2]) for m in rows(store, "matches")] == [
        ("ai-policy", '["AI", "regulation"]'),
        ("executive-orders", '["executive order"]'),
    ]
    alerts = store.db.rows("SELECT * FROM alerts ORDER BY id")
    assert [(a["dedupe_key"], a["channel"], a["entry_id"], a["state"]) for a in alerts] == [
        ("alert:1:#ai-policy", "#ai-policy", 1, "pending"),
        ("alert:1:#orders", "#orders", 1, "pending"),
    ]
    assert json.loads(alerts[0]["payload"]) == {"primary": True}
    assert searched(store, "proposal") == [1]
    fts_consistent(store)


def test_an_entry_without_links_date_or_story_is_stored(store: Store) -> None:
    store.apply(plan(new(entry(1, links=(), published=None, url=""))), NOW)
    (row,) = store.db.rows("SELECT links, published, canonical_url, story_id FROM entries")
    assert row == {"links": "[]", "published": None, "canonical_url": "", "story_id": None}
    assert rows(store, "stories") == []


def test_joining_a_story_counts_the_entry_and_moves_last_seen(store: Store) -> None:
    store.apply(plan(new(entry(1), 1, "#ai-policy", starts=True)), NOW)
    later = NOW + timedelta(hours=2)
    applied = store.apply(plan(new(entry(2), 1, "#ai-policy")), later)
    # The story already has its #ai-policy alert: the dedupe key refuses a second one.
    assert (applied.entry_ids, applied.alerts) == ((2,), 0)
    (story,) = store.db.rows("SELECT * FROM stories")
    assert story["entry_count"] == 2
    assert story["first_seen"] == iso(NOW)
    assert story["last_seen"] == iso(later)
    assert len(rows(store, "alerts")) == 1


def test_ids_carry_on_across_plans_and_a_guid_in_another_feed_is_another_entry(
    store: Store,
) -> None:
    store.apply(plan(new(entry(1)), new(entry(2), 1, starts=True)), NOW)
    applied = store.apply(plan(new(entry(1, feed=OTHER_FEED)), feed=OTHER_FEED), NOW)
    assert applied.entry_ids == (3,)
    assert store.entries.view(FEED, [entry(1), entry(9)]).next_story_id == 2


# -- what the planner reads --------------------------------------------------------------------


def test_the_view_holds_this_feeds_stored_guids_the_stories_of_links_and_the_next_id(
    store: Store,
) -> None:
    shared = "https://news.example/shared"
    store.apply(
        plan(
            new(entry(1, url=shared)),  # matched nothing: in no story
            new(entry(2, url=shared), 1, starts=True),
            new(entry(3, url=shared), 2, starts=True),  # a later story with the same link
            new(entry(4), 3, starts=True),
        ),
        NOW,
    )
    fetched = [entry(1), entry(2, content_hash="changed"), entry(5, url=shared)]
    view = store.entries.view(FEED, fetched)
    assert view.hashes == {"guid-1": "hash-1", "guid-2": "hash-2"}
    assert view.url_stories == {shared: 1}  # the first stored entry with that link and a story
    assert view.next_story_id == 4
    assert store.entries.view(OTHER_FEED, fetched).hashes == {}


# -- follow-ups ----------------------------------------------------------------------------------


def test_a_follow_up_replies_under_each_earlier_alert_and_edits_it_with_the_coverage(
    store: Store,
) -> None:
    store.apply(plan(new(entry(1), 1, "#ai-policy", starts=True)), NOW)
    official = entry(2, feed=OTHER_FEED, source="The White House", link="https://wh.example/eo")
    store.apply(
        plan(new(official, 1, "#ai-policy", "#orders", follow_up=True), feed=OTHER_FEED,
             primary=True),
        NOW,
    )  # fmt: skip
    by_kind = {AlertKind(r.alert.kind): r for r in store.outbox.rows()}
    new_channel = [r for r in store.outbox.rows() if r.alert.channel == "#orders"]
    assert [r.alert.kind for r in new_channel] == ["alert"]  # its own alert, not a reply
    reply, edit = by_kind[AlertKind.REPLY], by_kind[AlertKind.UPDATE]
    assert reply.alert.channel == edit.alert.channel == "#ai-policy"
    assert isinstance(reply.alert.payload, ReplyPayload)
    assert reply.alert.payload.parent_alert_id == 1
    assert [i.title for i in reply.alert.payload.items] == [official.title]
    assert reply.alert.payload.items[0].primary
    assert edit.alert.payload == EditPayload(1, False, 2, "https://wh.example/eo", False)


def test_a_changed_entry_is_stored_and_its_alerts_edited_as_updated(store: Store) -> None:
    store.apply(plan(new(entry(1), 1, "#ai-policy", "#orders", starts=True)), NOW)
    changed = replace(entry(1), title="Harbour dredging postponed", content_hash="new")
    store.apply(plan(ChangedEntry(changed)), NOW)
    assert searched(store, "dredging") == [1]
    edits = [r for r in store.outbox.rows() if r.alert.kind == AlertKind.UPDATE]
    assert sorted(r.alert.channel for r in edits) == ["#ai-policy", "#orders"]
    assert all(isinstance(r.alert.payload, EditPayload) and r.alert.payload.updated for r in edits)
    # A second change merges into the edit still waiting instead of queueing another.
    store.apply(plan(ChangedEntry(replace(changed, content_hash="newer"))), NOW)
    assert len([r for r in store.outbox.rows() if r.alert.kind == AlertKind.UPDATE]) == 2


# -- the feed's row, its log, notices and moves -------------------------------------------------


def test_the_feed_update_fetch_log_notice_and_move_are_written_with_the_entries(
    store: Store,
) -> None:
    from aggregator.config.model import FeedConfig

    store.feeds.sync([FeedConfig(FEED, "A")], NOW)
    update = FeedUpdate(FeedStatus.FAILING, NOW + timedelta(hours=1), 3, NOW - timedelta(days=2),
                        last_fetch_at=NOW, error="HTTP 503", ops_notified=True)  # fmt: skip
    record = FetchRecord(FeedResult.FAILED, 503, None, 0.25, 0, "HTTP 503")
    notice = Notice("#ops", "Feed A keeps failing", f"ops:{FEED}:x")
    for _ in range(2):  # the same notice twice: queued once
        store.apply(plan(update=update, record=record, notice=notice), NOW)
    state = store.feeds.state(FEED)
    assert state is not None
    assert (state.status, state.consecutive_errors, state.last_error) == ("failing", 3, "HTTP 503")
    assert state.ops_notified_at == NOW and state.last_success_at is None
    assert [r.alert.kind for r in store.outbox.rows()] == ["ops"]
    assert len(rows(store, "fetches")) == 2

    store.apply(plan(new(entry(1)), moved_to=OTHER_FEED), NOW)
    assert store.feeds.state(FEED) is None
    moved = store.feeds.state(OTHER_FEED)
    assert moved is not None and moved.moved_from == FEED
    assert store.db.value("SELECT feed_url FROM entries") == OTHER_FEED


def test_the_fetch_log_keeps_the_last_entries_per_feed(store: Store) -> None:
    for n in range(FETCH_LOG_KEEP + 5):
        store.history.log_fetch(FEED, NOW, FetchRecord(FeedResult.FETCHED, 200, n))
    sizes = [r[0] for r in store.db.execute("SELECT bytes FROM fetches ORDER BY id")]
    assert sizes == list(range(5, FETCH_LOG_KEEP + 5))


# -- atomicity and errors -----------------------------------------------------------------------


def fail_alert_inserts(store: Store) -> None:
    """Make the alert insert fail: after the story and the entry are written, before the index."""
    store.db.execute(
        "CREATE TEMP TRIGGER no_alerts BEFORE INSERT ON main.alerts "
        "BEGIN SELECT RAISE(ABORT, 'alerts refused'); END"
    )


def test_a_plan_that_fails_halfway_leaves_nothing_and_says_so_as_a_store_error(
    store: Store,
) -> None:
    store.apply(plan(new(entry(1))), NOW)
    before = dump(store)
    fail_alert_inserts(store)
    with pytest.raises(StoreError, match="alerts refused"):
        store.apply(plan(new(entry(2)), new(entry(3), 1, "#ai-policy", starts=True)), NOW)
    assert dump(store) == before
    assert not store.db.conn.in_transaction
    fts_consistent(store)


def test_a_plan_that_fails_inside_a_transaction_undoes_the_transaction(store: Store) -> None:
    """No savepoint per plan: a half-written feed is never committed, at the price of the
    enclosing transaction, which the cycle would have rolled back anyway."""
    before = dump(store)
    with pytest.raises(StoreError, match="FOREIGN KEY"), store.transaction():
        store.apply(plan(new(entry(1))), NOW)
        store.apply(plan(new(entry(2), 99)), NOW)  # a story that does not exist
    assert dump(store) == before
    fts_consistent(store)


def test_writing_in_a_transaction_takes_no_savepoint_and_begins_immediate(store: Store) -> None:
    """FTS5 writes its pending index out at every SAVEPOINT: one per entry made every entry an
    index segment of its own. IMMEDIATE takes the write lock before the first read, so a
    second writer waits instead of failing on a stale snapshot."""
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        with store.transaction():
            store.apply(plan(new(entry(1), 1, "#ai-policy", starts=True)), NOW)
            store.apply(plan(new(entry(2)), new(entry(3), 2, "#orders", starts=True)), NOW)
            store.apply(plan(new(entry(4), 1, "#ai-policy", follow_up=True)), NOW)
    finally:
        store.db.conn.set_trace_callback(None)
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert [s for s in statements if s.upper().startswith("BEGIN")] == ["BEGIN IMMEDIATE"]


def test_a_raw_database_error_never_escapes_a_store_method(store: Store) -> None:
    store.db.execute("DROP TABLE fetches")
    with pytest.raises(StoreError, match=r"History\.log_fetch: no such table: fetches"):
        store.history.log_fetch(FEED, NOW, FetchRecord(FeedResult.FETCHED))
    store.db.execute("ALTER TABLE entries RENAME TO elsewhere")
    with pytest.raises(StoreError, match="no such table: entries"):
        list(store.entries.since())  # generators too
    with pytest.raises(StoreError, match="entries"):
        store.entries.search("council")


# -- the search index: migration 3 and the paths that change entries -----------------------------


def test_the_index_follows_entries_that_change_move_and_go(store: Store) -> None:
    store.apply(plan(*(new(entry(n)) for n in range(1, 4))), NOW)
    changed = replace(entry(2), title="Harbour dredging postponed", content_hash="new")
    store.apply(plan(ChangedEntry(changed)), NOW)
    assert searched(store, "dredging") == [2]
    assert searched(store, "council") == [1, 3]
    store.feeds.rename(FEED, OTHER_FEED)
    fts_consistent(store)
    assert store.history.prune(NOW + timedelta(days=30), retention_days=7) == 3
    assert searched(store, "proposal") == []
    fts_consistent(store)


def test_a_new_database_indexes_entries_without_an_insert_trigger(store: Store) -> None:
    triggers = {
        r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    assert triggers == {"entries_au", "entries_ad"}
    assert store.schema_version() == SCHEMA_VERSION


def test_a_v1_database_keeps_its_index_and_indexes_new_entries(tmp_path: Path) -> None:
    store = Store.open(v1_database(tmp_path))
    try:
        assert [r.id for r in store.entries.search("executive order")] == [1]
        fts_consistent(store)
        applied = store.apply(plan(new(entry(1))), NOW)
        assert searched(store, "proposal") == list(applied.entry_ids)
        fts_consistent(store)
    finally:
        store.close()
