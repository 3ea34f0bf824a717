"""Labels: what people said an entry is worth for a topic, the relevance models' training data.

Each person's label counts once per source (a Slack user id, "cli", or a label file's name): a
new label from them replaces their old one. An entry's label for a topic is the plurality of
those votes, and a tie for the most votes is unsure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from aggregator.models import Entry
from aggregator.store.rows import entry_from_row
from aggregator.store.schema import Part, iso


class LabelSource(StrEnum):
    CLI = "cli"  # aggregator label
    SLACK = "slack"  # a reaction on an alert
    FILE = "file"  # a labelled JSONL file


@dataclass(frozen=True, slots=True)
class Label:
    """One person's label of one entry for one topic."""

    entry_id: int
    topic: str
    label: int | None  # 1 relevant, 0 not, None unsure
    source: LabelSource
    who: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ResolvedLabel:
    """An entry's label for a topic, from every vote on it."""

    entry_id: int
    topic: str
    label: int | None  # the plurality's; None when unsure won or the top is a tie
    relevant: int  # votes for each
    not_relevant: int
    unsure: int


@dataclass(frozen=True, slots=True)
class LabelledEntry:
    """A resolved label with the entry's text, for training."""

    resolved: ResolvedLabel
    entry: Entry


def resolve(
    entry_id: int, topic: str, relevant: int, not_relevant: int, unsure: int
) -> ResolvedLabel:
    votes = {1: relevant, 0: not_relevant, None: unsure}
    top = max(votes.values())
    winners = [label for label, n in votes.items() if n == top]
    label = winners[0] if len(winners) == 1 else None
    return ResolvedLabel(entry_id, topic, label, relevant, not_relevant, unsure)


_VOTES = (
    "SELECT entry_id, topic, count(CASE WHEN label = 1 THEN 1 END) AS relevant, "
    "count(CASE WHEN label = 0 THEN 1 END) AS not_relevant, "
    "count(CASE WHEN label IS NULL THEN 1 END) AS unsure FROM labels"
)


class Labels(Part):
    """The labels table. Every method raises StoreError on a database error."""

    def set(self, entry_id: int, topic: str, label: int | None, source: LabelSource, who: str,
            at: datetime) -> None:  # fmt: skip
        """Record ``who``'s label, replacing their earlier one for this entry and topic."""
        if label not in (0, 1, None):
            raise ValueError(f"a label is 1, 0 or None (unsure), not {label!r}")
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO labels (entry_id, topic, label, source, who, at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (entry_id, topic, source, who) "
                "DO UPDATE SET label = excluded.label, at = excluded.at",
                [entry_id, topic, label, str(source), who, iso(at)],
            )

    def remove(self, entry_id: int, topic: str, source: LabelSource, who: str) -> bool:
        """Forget ``who``'s label (a removed reaction). True when there was one."""
        with self.db.transaction():
            cursor = self.db.execute(
                "DELETE FROM labels WHERE entry_id = ? AND topic = ? AND source = ? AND who = ?",
                [entry_id, topic, str(source), who],
            )
        return cursor.rowcount > 0

    def of_entry(self, entry_id: int) -> list[Label]:
        """Every label of one entry, by topic, then oldest first."""
        rows = self.db.rows(
            "SELECT * FROM labels WHERE entry_id = ? ORDER BY topic, at, source, who", [entry_id]
        )
        return [
            Label(
                entry_id=int(r["entry_id"]),
                topic=r["topic"],
                label=r["label"],
                source=LabelSource(r["source"]),
                who=r["who"],
                at=datetime.fromisoformat(r["at"]),
            )
            for r in rows
        ]

    def resolved(self, topic: str | None = None,
                 entry_ids: Sequence[int] = ()) -> list[ResolvedLabel]:  # fmt: skip
        """Each labelled (entry, topic)'s resolved label, by entry id; only ``topic``'s and the
        given entries' when given."""
        where, params = _filter(topic, entry_ids)
        sql = f"{_VOTES}{where} GROUP BY entry_id, topic ORDER BY entry_id, topic"
        return [_resolved(r, int(r["entry_id"]), r["topic"]) for r in self.db.rows(sql, params)]

    def training(self, topic: str) -> list[LabelledEntry]:
        """The entries labelled for ``topic`` with their text, resolved: what training reads."""
        votes = f"{_VOTES} WHERE topic = ? GROUP BY entry_id, topic"
        rows = self.db.rows(
            "SELECT e.*, v.relevant, v.not_relevant, v.unsure "  # noqa: S608
            f"FROM ({votes}) v JOIN entries e ON e.id = v.entry_id ORDER BY e.id",
            [topic],
        )
        return [
            LabelledEntry(_resolved(r, int(r["id"]), topic), entry_from_row(r, r["published"]))
            for r in rows
        ]

    def count(self) -> int:
        return int(self.db.value("SELECT count(*) FROM labels"))


def _resolved(row: Mapping[str, Any], entry_id: int, topic: str) -> ResolvedLabel:
    relevant, not_relevant, unsure = (int(row[k]) for k in ("relevant", "not_relevant", "unsure"))
    return resolve(entry_id, topic, relevant, not_relevant, unsure)


def _filter(topic: str | None, entry_ids: Sequence[int]) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if topic is not None:
        clauses.append("topic = ?")
        params.append(topic)
    if entry_ids:
        clauses.append(f"entry_id IN ({','.join('?' * len(entry_ids))})")
        params.extend(entry_ids)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
