"""The ``entries``, ``stories`` and ``matches`` tables, and the full-text index over entries."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from aggregator.cycle.plan import NewEntry, StoredView
from aggregator.errors import StoreError
from aggregator.models import Entry
from aggregator.store.rows import StoredEntry, entry_from_row
from aggregator.store.schema import Part, chunks, iso

_INSERT_STORY = (
    "INSERT INTO stories (id, title, canonical_url, first_seen, last_seen, published, "
    "official_link) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ENTRY = (
    "INSERT INTO entries (id, feed_url, guid, link, canonical_url, title, summary, source, "
    "published, first_seen, content_hash, links, story_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_JOIN_STORY = "UPDATE stories SET last_seen = ?, entry_count = entry_count + 1 WHERE id = ?"
_OFFICIAL = "UPDATE stories SET official_link = ? WHERE id = ? AND official_link IS NULL"
_INSERT_MATCH = "INSERT OR IGNORE INTO matches (entry_id, topic, terms, score) VALUES (?, ?, ?, ?)"
# entries_fts is external-content (content=entries): it keeps only the index, so an insert
# there must carry the same rowid, title and summary as the entry's row.
_INDEX_ENTRY = "INSERT INTO entries_fts (rowid, title, summary) VALUES (?, ?, ?)"


class Entries(Part):
    """Entries and the stories they form. Every method raises StoreError on a database error."""

    # -- the cycle ------------------------------------------------------------------------------

    def view(self, feed_url: str, entries: Sequence[Entry]) -> StoredView:
        """What the planner needs to know about a feed's fetched entries, in one read: the
        guids of this feed already stored (with their content hash), the stories of their
        links, and the first free story id. Call it inside the transaction that applies the plan,
        so that nothing changes in between."""
        hashes: dict[str, str] = {}
        for chunk in chunks(list(dict.fromkeys(e.guid for e in entries))):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT guid, content_hash FROM entries WHERE feed_url = ? AND guid IN ({marks})",  # noqa: S608
                [feed_url, *chunk],
            )
            hashes.update({g: h for g, h in rows})
        urls = sorted({e.canonical_url for e in entries if e.canonical_url})
        stories: dict[str, int] = {}
        for chunk in chunks(urls):
            marks = ",".join("?" * len(chunk))
            # "!= ''" lets SQLite use the partial index entries_canonical.
            rows = self.db.execute(
                f"SELECT canonical_url, story_id FROM entries WHERE canonical_url IN ({marks}) "  # noqa: S608
                "AND canonical_url != '' AND story_id IS NOT NULL ORDER BY id",
                chunk,
            )
            for url, story_id in rows:
                stories.setdefault(url, int(story_id))
        last = int(self.db.value("SELECT coalesce(max(id), 0) FROM stories"))
        return StoredView(hashes, stories, last + 1)

    def insert(
        self, new: Sequence[NewEntry], now: datetime, *, official: bool = False
    ) -> list[int]:
        """Write planned new entries, their matches, their stories and their search index;
        returns their ids, in order. ``official``: they come from a primary source, so each
        gives its story an official link if it has none yet.

        Ids are given explicitly, as the ones SQLite would pick (one past the largest), so the
        whole batch costs a few statements. The caller holds the write lock (a transaction).
        """
        if not new:
            return []
        stamp = iso(now)
        next_id = int(self.db.value("SELECT coalesce(max(id), 0) FROM entries")) + 1
        ids = list(range(next_id, next_id + len(new)))
        stories: list[tuple[Any, ...]] = []
        joined: list[tuple[str | None, int]] = []
        officials: list[tuple[str, int]] = []
        entry_rows: list[tuple[Any, ...]] = []
        match_rows: list[tuple[int, str, str, float | None]] = []
        index_rows: list[tuple[int, str, str]] = []
        for entry_id, item in zip(ids, new, strict=True):
            e = item.entry
            published = iso(e.published)
            if item.starts_story:
                link = e.link if official and e.link else None
                stories.append((item.story_id, e.title, e.canonical_url, stamp, stamp, published,
                                link))  # fmt: skip
            elif item.story_id is not None:
                joined.append((stamp, item.story_id))
                if official and e.link:
                    officials.append((e.link, item.story_id))
            entry_rows.append(
                (entry_id, e.feed_url, e.guid, e.link, e.canonical_url, e.title, e.summary,
                 e.source, published, stamp, e.content_hash, _links_json(e.links), item.story_id)
            )  # fmt: skip
            match_rows.extend(
                (entry_id, m.topic, json.dumps(list(m.terms)), m.score) for m in item.matches
            )
            index_rows.append((entry_id, e.title, e.summary))
        db = self.db
        db.executemany(_INSERT_STORY, stories)
        db.executemany(_INSERT_ENTRY, entry_rows)
        db.executemany(_JOIN_STORY, joined)
        db.executemany(_OFFICIAL, officials)
        db.executemany(_INSERT_MATCH, match_rows)
        db.executemany(_INDEX_ENTRY, index_rows)
        return ids

    def update_content(self, feed_url: str, entry: Entry, now: datetime) -> int | None:
        """Store a changed title or text (same guid, new content hash); returns the entry id."""
        entry_id = self.db.value(
            "SELECT id FROM entries WHERE feed_url = ? AND guid = ?", [feed_url, entry.guid]
        )
        if entry_id is None:
            return None
        self.db.execute(
            "UPDATE entries SET title = ?, summary = ?, link = ?, content_hash = ?, "
            "updated_at = ? WHERE id = ?",
            [entry.title, entry.summary, entry.link, entry.content_hash, iso(now), entry_id],
        )
        return int(entry_id)

    def coverage(self, story_id: int, up_to_entry: int | None = None) -> tuple[int, str | None]:
        """How many outlets cover a story (counting entries up to ``up_to_entry``), and its
        official text."""
        bound = up_to_entry if up_to_entry is not None else -1
        outlets = self.db.value(
            "SELECT count(DISTINCT CASE WHEN source != '' THEN source ELSE feed_url END) "
            "FROM entries WHERE story_id = ? AND (? < 0 OR id <= ?)",
            [story_id, bound, bound],
        )
        official = self.db.value("SELECT official_link FROM stories WHERE id = ?", [story_id])
        return int(outlets or 0), official

    def last_id(self) -> int:
        return int(self.db.value("SELECT coalesce(max(id), 0) FROM entries"))

    # -- the story window -----------------------------------------------------------------------

    def recent_story_entries(
        self, since: datetime, up_to: int | None = None
    ) -> list[tuple[int, Entry]]:
        """(story id, entry) for every matching entry of a story seen since ``since`` (with an id
        up to ``up_to``), oldest first: what warms the story index at start. An entry without a
        published time is dated by when it was first seen. The cost follows the window, not the
        table."""
        rows = self.db.rows(
            "SELECT e.*, coalesce(e.published, e.first_seen) AS at FROM entries e "
            "WHERE e.story_id IN (SELECT id FROM stories WHERE last_seen >= ?) "
            "AND EXISTS (SELECT 1 FROM matches m WHERE m.entry_id = e.id) AND (? < 0 OR e.id <= ?) "
            "ORDER BY at, e.id",
            [iso(since), -1 if up_to is None else up_to, up_to],
        )
        return [(int(row["story_id"]), entry_from_row(row, row["at"])) for row in rows]

    def story_entries_after(self, entry_id: int) -> list[tuple[int, Entry]]:
        """(story id, entry) for every matching entry with a story stored after ``entry_id``, in
        the order they were stored: what another process stored since this one last looked."""
        rows = self.db.rows(
            "SELECT e.*, coalesce(e.published, e.first_seen) AS at FROM entries e "
            "WHERE e.id > ? AND e.story_id IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM matches m WHERE m.entry_id = e.id) ORDER BY e.id",
            [entry_id],
        )
        return [(int(row["story_id"]), entry_from_row(row, row["at"])) for row in rows]

    def story_context(
        self, entry_id: int, window: timedelta
    ) -> tuple[int | None, datetime, list[tuple[int, Entry]]]:
        """For explaining a grouping decision: the entry's story, when it was first seen, and
        the matching entries first seen within ``window`` before it (what the decision saw)."""
        rows = self.db.rows("SELECT story_id, first_seen FROM entries WHERE id = ?", [entry_id])
        if not rows:
            raise StoreError(f"no stored entry {entry_id}")
        first_seen = datetime.fromisoformat(rows[0]["first_seen"])
        earlier = self.db.rows(
            "SELECT e.*, coalesce(e.published, e.first_seen) AS at FROM entries e "
            "WHERE e.first_seen < ? AND e.first_seen >= ? AND e.story_id IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM matches m WHERE m.entry_id = e.id) ORDER BY at, e.id",
            [rows[0]["first_seen"], iso(first_seen - window)],
        )
        story_id = rows[0]["story_id"]
        return (
            int(story_id) if story_id is not None else None,
            first_seen,
            [(int(r["story_id"]), entry_from_row(r, r["at"])) for r in earlier],
        )

    # -- looking up -----------------------------------------------------------------------------

    def find(self, ref: str, urls: Sequence[str] = ()) -> StoredEntry | None:
        """An entry by id (``ref`` all digits), else the newest entry whose link or canonical
        URL is ``ref`` or one of ``urls`` (pass the canonical form of a URL there)."""
        if ref.strip().isdigit():
            rows = self.db.rows("SELECT * FROM entries WHERE id = ?", [int(ref)])
        else:
            wanted = [ref, *urls]
            marks = ",".join("?" * len(wanted))
            rows = self.db.rows(
                f"SELECT * FROM entries WHERE link IN ({marks}) OR canonical_url IN ({marks}) "  # noqa: S608
                "ORDER BY first_seen DESC, id DESC LIMIT 1",
                wanted + wanted,
            )
        if not rows:
            return None
        row = rows[0]
        return StoredEntry(int(row["id"]), entry_from_row(row, row["published"]), row["story_id"])

    def count_since(self, since: datetime | None = None) -> int:
        """How many entries :meth:`since` will yield (for a progress bar)."""
        return int(
            self.db.value(
                "SELECT count(*) FROM entries WHERE coalesce(published, first_seen) >= ?",
                [iso(since) if since else ""],
            )
        )

    def since(self, since: datetime | None = None, page: int = 1000) -> Iterator[StoredEntry]:
        """Every entry dated at or after ``since``, oldest first, read a page at a time so a long
        history never sits in memory. An entry without a published time is dated by when it was
        first seen."""
        after_at, after_id = (iso(since) if since else ""), -1  # at >= since, to begin with
        while True:
            rows = self.db.rows(
                "SELECT *, coalesce(published, first_seen) AS at FROM entries "
                "WHERE coalesce(published, first_seen) > ? "
                "OR (coalesce(published, first_seen) = ? AND id > ?) "
                "ORDER BY at, id LIMIT ?",
                [after_at, after_at, after_id, page],
            )
            for row in rows:
                yield StoredEntry(int(row["id"]), entry_from_row(row, row["at"]), row["story_id"])
            if len(rows) < page:
                return
            after_at, after_id = rows[-1]["at"], int(rows[-1]["id"])

    def newest(
        self, since: datetime | None, offset: int, count: int, *, fts: str | None = None
    ) -> list[StoredEntry]:
        """Entries dated at or after ``since``, newest first, a page at a time; with ``fts``
        (an FTS5 query), only those the full-text index finds."""
        at = "coalesce(e.published, e.first_seen)"
        where = f"{at} >= ?"
        params: list[Any] = [iso(since) if since else ""]
        if fts is not None:
            where += " AND e.id IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)"
            params.append(fts)
        rows = self.db.rows(
            f"SELECT e.* FROM entries e WHERE {where} ORDER BY {at} DESC, e.id DESC "  # noqa: S608
            "LIMIT ? OFFSET ?",
            [*params, count, offset],
        )
        return [
            StoredEntry(int(r["id"]), entry_from_row(r, r["published"]), r["story_id"])
            for r in rows
        ]

    def matched_topics(self, entry_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        """The topics whose rules matched each of these entries when it arrived."""
        found: dict[int, list[str]] = {}
        for chunk in chunks([str(i) for i in entry_ids]):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT entry_id, topic FROM matches WHERE entry_id IN ({marks}) "  # noqa: S608
                "ORDER BY entry_id, topic",
                [int(i) for i in chunk],
            )
            for entry_id, topic in rows:
                found.setdefault(int(entry_id), []).append(str(topic))
        return {k: tuple(v) for k, v in found.items()}

    def search(self, query: str, limit: int = 20) -> list[StoredEntry]:
        """Full-text search over stored titles and summaries (FTS5 syntax), best first."""
        return [
            StoredEntry(int(r["id"]), entry_from_row(r, r["published"]), r["story_id"])
            for r in self.db.search("entries", query, limit)
        ]

    def count(self) -> int:
        return int(self.db.value("SELECT count(*) FROM entries"))


def _links_json(links: Sequence[str]) -> str:
    return json.dumps(list(links)) if links else "[]"
