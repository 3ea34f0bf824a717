"""``aggregator search``: past entries that a query in the topics.toml language matches.

The query is the same language as a topic's ``query``, with the same meaning: it is compiled by
the topic matcher and every result is an entry the matcher accepts. The store's full-text index
only finds the candidates fast: the query's plain words become an FTS5 query that every real
match satisfies (a superset), and the matcher then decides. A query whose words the index cannot
vouch for (``NOT`` alone, ``source:`` or ``link:`` fields, initialisms such as ``U.S.``) reads the
entries of the window newest first instead. Matching is as in topics.toml: whole words, any case
except words written in capitals, and ``NEAR/n`` within one field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from aggregator.models import Document, Entry
from aggregator.rules import syntax
from aggregator.rules.matcher import RuleSpec, TopicMatcher
from aggregator.store import Store
from aggregator.store.rows import StoredEntry

_PLAIN = re.compile(r"[A-Za-z0-9]+")  # a word the index tokenises exactly as the matcher does
INDEXED_FIELDS = frozenset({"title", "summary"})
PAGE = 200
INITIALISM = 4  # letters: a word this short may be an initialism written with dots


@dataclass(frozen=True, slots=True)
class Found:
    """A stored entry the query matched, with what it became: its story and the topics that
    story alerted in."""

    id: int
    entry: Entry
    story_id: int | None
    alerted: tuple[str, ...]  # topics the entry's story alerted in
    matched: tuple[str, ...]  # topics whose rules matched the entry when it arrived

    def as_dict(self) -> dict[str, object]:
        e = self.entry
        return {
            "id": self.id,
            "title": e.title,
            "link": e.link,
            "source": e.source,
            "published": e.published.isoformat() if e.published else None,
            "topics": list(self.alerted),
            "matched": list(self.matched),
            "story": self.story_id,
            "feed": e.feed_url,
        }


def compile_search(query: str) -> tuple[TopicMatcher, str | None]:
    """The matcher for ``query`` and its FTS5 prefilter (None: read every entry of the window).
    Raises :class:`~aggregator.errors.RuleSyntaxError` with the column of a mistake."""
    parsed = syntax.parse(query)
    matcher = TopicMatcher.compile([RuleSpec("search", query)])
    return matcher, fts_prefilter(parsed.root)


def fts_prefilter(node: syntax.Node) -> str | None:
    """An FTS5 query that every item matching ``node`` satisfies, or None when there is none
    narrower than "everything"."""
    if isinstance(node, syntax.Words):
        if not node.fields <= INDEXED_FIELDS or not all(
            _PLAIN.fullmatch(w.text) for w in node.words
        ):
            return None
        # A phrase is looked up as its words (in any order): its words may be initialisms.
        return "(" + " AND ".join(f"({_term(w)})" for w in node.words) + ")"
    if isinstance(node, syntax.Near):
        return _all(fts_prefilter(c) for c in (node.left, node.right))
    if isinstance(node, syntax.And):
        return _all(fts_prefilter(c) for c in node.children)
    if isinstance(node, syntax.Or):
        parts = [fts_prefilter(c) for c in node.children]
        if any(p is None for p in parts):
            return None
        return "(" + " OR ".join(p for p in parts if p is not None) + ")"
    return None  # NOT: satisfied by items without the words, which the index cannot list


def _term(word: syntax.Word) -> str:
    """One word for the index. The matcher reads "U.S." and "A.I." as the words US and AI, which
    the index holds as single letters: a short word is also looked for as its letters in a row."""
    if word.prefix:
        return f'"{word.text}" *'
    if len(word.text) <= INITIALISM and word.text.isalpha():
        letters = " + ".join(f'"{c}"' for c in word.text)
        return f'"{word.text}" OR ({letters})'
    return f'"{word.text}"'


def _all(parts: Iterable[str | None]) -> str | None:
    known = [p for p in parts if p is not None]
    return "(" + " AND ".join(known) + ")" if known else None


def search(
    store: Store,
    query: str,
    *,
    since: datetime | None = None,
    topic: str | None = None,
    limit: int = 20,
) -> list[Found]:
    """Entries matching ``query``, newest first, at most ``limit``; with ``topic``, only those
    that matched that topic or whose story alerted in it."""
    matcher, fts = compile_search(query)
    found: list[Found] = []
    for page in _pages(store, fts, since):
        hits = [s for s in page if matcher.match(_document(s.entry))]
        if not hits:
            continue
        stories = [s.story_id for s in hits if s.story_id is not None]
        alerted = store.outbox.story_topics(stories)
        matched = store.entries.matched_topics([s.id for s in hits])
        for s in hits:
            result = Found(s.id, s.entry, s.story_id, alerted.get(s.story_id or -1, ()),
                           matched.get(s.id, ()))  # fmt: skip
            if topic is not None and topic not in result.matched + result.alerted:
                continue
            found.append(result)
            if len(found) >= limit:
                return found
    return found


def _pages(store: Store, fts: str | None, since: datetime | None) -> Iterator[list[StoredEntry]]:
    offset = 0
    while True:
        page = store.entries.newest(since, offset, PAGE, fts=fts)
        if not page:
            return
        yield page
        if len(page) < PAGE:
            return
        offset += len(page)


def _document(entry: Entry) -> Document:
    return Document(entry.title, entry.summary, entry.source, entry.link)
