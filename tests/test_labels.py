"""The labels table (migration 6): one label per person and source, resolved by plurality; the
training data of the relevance models, so retention keeps labelled entries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.errors import StoreError
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.store.labels import LabelSource, ResolvedLabel, resolve
from tests.schema_v1 import v1_database
from tests.storing import Item, store_items

NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
FEED = "https://feeds.example/a.xml"
CLI, SLACK, FILE = LabelSource.CLI, LabelSource.SLACK, LabelSource.FILE


def entry(n: int) -> Entry:
    return Entry(
        feed_url=FEED,
        guid=f"guid-{n}",
        link=f"https://news.example/{n}",
        canonical_url=f"https://news.example/{n}",
        title=f"Governor signs order number {n}",
        summary=f"The order {n} takes effect Monday.",
        published=NOW - timedelta(minutes=n),
        content_hash=f"hash-{n}",
        source="Example News",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db")
    store_items(s, [Item(entry(n)) for n in range(1, 5)], NOW)
    yield s
    s.close()


def test_one_label_per_person_and_source_replaced_by_their_next(store: Store) -> None:
    store.labels.set(1, "eo", 1, SLACK, "U1", NOW)
    store.labels.set(1, "eo", 0, SLACK, "U1", NOW + timedelta(hours=1))  # U1 changed their mind
    store.labels.set(1, "eo", 1, CLI, "cli", NOW)
    store.labels.set(1, "ai", None, SLACK, "U1", NOW)  # another topic
    labels = store.labels.of_entry(1)
    assert [(x.topic, x.label, x.source, x.who) for x in labels] == [
        ("ai", None, SLACK, "U1"),
        ("eo", 1, CLI, "cli"),
        ("eo", 0, SLACK, "U1"),
    ]
    assert labels[2].at == NOW + timedelta(hours=1)
    assert store.labels.count() == 3


def test_remove_forgets_one_persons_label(store: Store) -> None:
    store.labels.set(1, "eo", 1, SLACK, "U1", NOW)
    store.labels.set(1, "eo", 1, SLACK, "U2", NOW)
    assert store.labels.remove(1, "eo", SLACK, "U1")
    assert not store.labels.remove(1, "eo", SLACK, "U1")
    assert [x.who for x in store.labels.of_entry(1)] == ["U2"]


@pytest.mark.parametrize(
    ("votes", "label"),
    [
        ((1, 0, 0), 1),
        ((2, 1, 0), 1),
        ((1, 2, 0), 0),
        ((1, 1, 0), None),  # a tie is unsure
        ((2, 2, 1), None),
        ((0, 0, 1), None),  # everyone unsure
        ((1, 0, 2), None),  # unsure wins
        ((2, 0, 1), 1),
    ],
)
def test_the_plurality_decides_and_a_tie_is_unsure(
    votes: tuple[int, int, int], label: int | None
) -> None:
    assert resolve(7, "eo", *votes) == ResolvedLabel(7, "eo", label, *votes)


def test_resolved_labels_from_the_database(store: Store) -> None:
    for who, label in (("U1", 1), ("U2", 1), ("U3", 0)):
        store.labels.set(1, "eo", label, SLACK, who, NOW)
    store.labels.set(2, "eo", 1, SLACK, "U1", NOW)
    store.labels.set(2, "eo", 0, CLI, "cli", NOW)
    store.labels.set(3, "ai", 0, FILE, "team.jsonl", NOW)
    assert store.labels.resolved("eo") == [
        ResolvedLabel(1, "eo", 1, 2, 1, 0),
        ResolvedLabel(2, "eo", None, 1, 1, 0),
    ]
    assert [(r.entry_id, r.topic) for r in store.labels.resolved()] == [
        (1, "eo"),
        (2, "eo"),
        (3, "ai"),
    ]
    assert [r.entry_id for r in store.labels.resolved(entry_ids=[2, 3])] == [2, 3]
    training = store.labels.training("eo")
    assert [(t.resolved.entry_id, t.resolved.label, t.entry.title) for t in training] == [
        (1, 1, "Governor signs order number 1"),
        (2, None, "Governor signs order number 2"),
    ]
    assert training[0].entry == replace(entry(1), links=())


def test_an_unknown_entry_or_a_bad_value_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        store.labels.set(99, "eo", 1, CLI, "cli", NOW)
    with pytest.raises(ValueError, match="a label is 1, 0 or None"):
        store.labels.set(1, "eo", 2, CLI, "cli", NOW)
    with pytest.raises(sqlite3.IntegrityError):  # the table checks too
        store.db.execute(
            "INSERT INTO labels (entry_id, topic, label, source, who, at) "
            "VALUES (1, 'eo', 1, 'email', 'x', 'now')"
        )


def test_retention_keeps_labelled_entries(store: Store) -> None:
    store.labels.set(2, "eo", 0, CLI, "cli", NOW)
    store.labels.set(3, "eo", None, CLI, "cli", NOW)  # unsure is a label too
    assert store.history.prune(NOW + timedelta(days=30), retention_days=7) == 2
    assert sorted(r["id"] for r in store.db.rows("SELECT id FROM entries")) == [2, 3]
    assert store.labels.count() == 2
    assert store.labels.resolved(entry_ids=[3]) == [ResolvedLabel(3, "eo", None, 0, 0, 1)]


def test_a_database_error_is_a_store_error(store: Store) -> None:
    store.db.execute("DROP TABLE labels")
    with pytest.raises(StoreError, match=r"Labels\.set"):
        store.labels.set(1, "eo", 1, CLI, "cli", NOW)
    with pytest.raises(StoreError, match="no such table: labels"):
        store.labels.resolved()


def test_an_old_database_gains_the_labels_table(tmp_path: Path) -> None:
    store = Store.open(v1_database(tmp_path))
    try:
        assert store.schema_version() >= 5
        store.labels.set(1, "executive-orders", 1, CLI, "cli", NOW)
        assert store.labels.resolved()[0].label == 1
    finally:
        store.close()
