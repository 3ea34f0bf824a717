"""An in-memory index of the recent window's stories, so one grouping decision stays cheap.

An inverted index maps each rare word stem to the stories that used it. A decision looks up only
the new entry's rarest stems, so it scores a handful of candidate stories whatever the size of the
window; common words ("says", "new", "trump") are never indexed. Links (canonical and
primary-source) have their own maps. Stories older than the window are dropped by
:meth:`StoryIndex.expire`.

The pipeline keeps one index per process and warms it from the database at start (the entries with
a story whose time is inside the window), then adds each entry once it is stored. Pure: no I/O,
no clock; times come from the entries and the caller.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from aggregator.models import Entry
from aggregator.stories.features import GroupingParams, StoryFeatures, features
from aggregator.text import idf as news_idf

MIN_INDEXED_IDF = 3.0  # stems in more than ~5% of news items are too common to find a story by
LOOKUP_STEMS = 10  # the rarest stems of a new entry used to find candidates
MAX_STORED_MEMBERS = 50  # entries kept per story (the decision reads the latest ones)
MAX_POSTINGS = 400  # a stem used by more stories than this in the window is not looked up
# An outlet's boilerplate ("By the authority vested in me as President...", "The post ... appeared
# first on ...") is a stem in at least this share of its items, once it has published enough.
BOILERPLATE_SHARE = 0.6
BOILERPLATE_MIN_ITEMS = 10
SOURCE_MEMORY = 200  # per outlet, counts are halved past this many items: recent style counts


@dataclass(slots=True)
class _MemberSum:
    """What :meth:`StoryIndex.member_sum` computed for a story, and from which state."""

    version: int  # the story's version
    apart_version: int  # the index's
    limit: int
    count: int  # the story's members then
    summed: dict[str, float]
    apart: list[StoryFeatures]


@dataclass(slots=True)
class IndexedStory:
    """One story in the window: its entries' features, oldest first."""

    story_id: int
    title: str
    members: list[StoryFeatures] = field(default_factory=list)
    first_published: datetime | None = None
    last_published: datetime | None = None
    stems: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    version: int = 0  # bumped when a member is added
    summed: _MemberSum | None = None  # see StoryIndex.member_sum


class StoryIndex:
    """The stories of the recent window, findable by rare stem and by link.

    ``idf`` maps stems to inverse document frequencies; by default the bundled news table
    (:mod:`aggregator.text.idf`). Unknown stems get ``default_idf`` (rare, so they weigh most).
    """

    def __init__(
        self,
        idf: Mapping[str, float] | None = None,
        default_idf: float | None = None,
        params: GroupingParams | None = None,
    ) -> None:
        self.idf = idf if idf is not None else news_idf.table()
        self.default_idf = default_idf if default_idf is not None else news_idf.default_idf()
        self.params = params or GroupingParams()
        self._stories: dict[int, IndexedStory] = {}
        self._postings: dict[str, set[int]] = {}
        self._by_link: dict[str, set[int]] = {}
        self._expiry: list[tuple[datetime, int]] = []  # (last_published, story), lazily pruned
        self._source_items: dict[str, float] = {}
        self._source_seen: dict[str, int] = {}
        self._source_stems: dict[str, dict[str, float]] = {}
        self._boilerplate: dict[str, frozenset[str]] = {}
        # Bumped when an outlet gains or loses boilerplate: which members ``member_sum`` leaves out
        # depends on that alone, not on what the boilerplate is.
        self._apart_version = 0
        # The largest entry id of the database this index has taken in (0: none). Entries past it
        # were stored by another process (``poll --once`` beside the service): the pipeline adds
        # them before it plans, so a story either process stored can be joined by the other.
        self.stored_up_to = 0

    def __len__(self) -> int:
        return len(self._stories)

    def __iter__(self) -> Iterator[IndexedStory]:
        return iter(list(self._stories.values()))

    def features(self, entry: Entry, now: datetime) -> StoryFeatures:
        """The features of an entry, with this index's word weights."""
        return features(entry, now, self.idf, self.default_idf, self.params.title_boost)

    def story(self, story_id: int) -> IndexedStory | None:
        return self._stories.get(story_id)

    def boilerplate(self, source: str) -> frozenset[str]:
        """The stems that ``source`` puts in most of its items, which say nothing about a story."""
        return self._boilerplate.get(source, frozenset())

    # -- changes ----------------------------------------------------------------------------------

    def observe(self, feats: StoryFeatures) -> None:
        """Learn an outlet's boilerplate from one of its items.

        :meth:`add` already calls this; call it yourself only for entries that are not added (e.g.
        the non-matching items of a feed), so the boilerplate is known before the first story.
        """
        if not feats.source:
            return
        items = self._source_items.get(feats.source, 0.0) + 1
        counts = self._source_stems.setdefault(feats.source, {})
        for stem in feats.weights:
            counts[stem] = counts.get(stem, 0.0) + 1
        if items > SOURCE_MEMORY:
            items /= 2
            for stem in list(counts):
                counts[stem] /= 2
                if counts[stem] < 0.5:
                    del counts[stem]
        self._source_items[feats.source] = items
        seen = self._source_seen.get(feats.source, 0) + 1
        self._source_seen[feats.source] = seen
        if items >= BOILERPLATE_MIN_ITEMS and (seen <= 2 * BOILERPLATE_MIN_ITEMS or seen % 8 == 0):
            floor = BOILERPLATE_SHARE * items
            found = frozenset(s for s, n in counts.items() if n >= floor)
            before = self.boilerplate(feats.source)
            if (found or feats.source in self._boilerplate) and found != before:
                self._boilerplate[feats.source] = found
                if bool(found) != bool(before):
                    self._apart_version += 1

    def add(self, story_id: int, feats: StoryFeatures, title: str | None = None) -> None:
        """Record that an entry with ``feats`` belongs to ``story_id`` (new or known)."""
        story = self._stories.get(story_id)
        if story is None:
            story = IndexedStory(story_id, title if title is not None else feats.title)
            self._stories[story_id] = story
        self.observe(feats)
        story.members.append(feats)
        story.version += 1
        if len(story.members) > MAX_STORED_MEMBERS:
            del story.members[0]
        when = feats.published
        if story.first_published is None or when < story.first_published:
            story.first_published = when
        if story.last_published is None or when > story.last_published:
            story.last_published = when
            heapq.heappush(self._expiry, (when, story_id))
        for stem in self._indexable(feats):
            if stem not in story.stems:
                story.stems.add(stem)
                self._postings.setdefault(stem, set()).add(story_id)
        for link in _links(feats):
            if link not in story.links:
                story.links.add(link)
                self._by_link.setdefault(link, set()).add(story_id)

    def rename(self, old_id: int, new_id: int) -> None:
        """Give a story the id the database assigned (callers may add under a provisional id)."""
        story = self._stories.pop(old_id, None)
        if story is None:
            return
        story.story_id = new_id
        self._stories[new_id] = story
        for key_set in (
            *(self._postings[s] for s in story.stems),
            *(self._by_link[k] for k in story.links),
        ):
            key_set.discard(old_id)
            key_set.add(new_id)
        if story.last_published is not None:
            heapq.heappush(self._expiry, (story.last_published, new_id))

    def expire(self, before: datetime) -> int:
        """Drop every story whose latest entry is older than ``before``. Returns how many."""
        dropped = 0
        while self._expiry and self._expiry[0][0] < before:
            when, story_id = heapq.heappop(self._expiry)
            story = self._stories.get(story_id)
            if story is None or story.last_published is None or story.last_published > when:
                continue  # stale heap item: the story moved on or was renamed
            self._remove(story)
            dropped += 1
        return dropped

    def _remove(self, story: IndexedStory) -> None:
        del self._stories[story.story_id]
        for stem in story.stems:
            _discard(self._postings, stem, story.story_id)
        for link in story.links:
            _discard(self._by_link, link, story.story_id)

    # -- lookups ----------------------------------------------------------------------------------

    def member_sum(
        self, story: IndexedStory, limit: int
    ) -> tuple[dict[str, float], list[StoryFeatures]]:
        """The sum of the unit vectors of the story's latest ``limit`` members, and the members
        left out of it because their outlet has boilerplate (which a comparison must ignore).

        Cached on the story until an outlet gains or loses boilerplate. While the story has no
        more than ``limit`` members, a member added since adds its vector to the cached sum:
        the stems are summed in the same order as from scratch, so to the same floats.
        """
        members = story.members
        cached = story.summed
        if (
            cached is not None
            and cached.apart_version == self._apart_version
            and cached.limit == limit
        ):
            added = story.version - cached.version
            if added == 0:
                return cached.summed, cached.apart
            # Only appended since (none dropped) and none past the limit: extend in place.
            if len(members) == cached.count + added and len(members) <= limit:
                self._sum_into(cached.summed, cached.apart, members[cached.count :])
                cached.version, cached.count = story.version, len(members)
                return cached.summed, cached.apart
        summed: dict[str, float] = {}
        apart: list[StoryFeatures] = []
        latest = members[-limit:]
        self._sum_into(summed, apart, latest)
        story.summed = _MemberSum(
            story.version, self._apart_version, limit, len(members), summed, apart
        )
        return summed, apart

    def _sum_into(
        self, summed: dict[str, float], apart: list[StoryFeatures], members: list[StoryFeatures]
    ) -> None:
        for member in members:
            if self._boilerplate.get(member.source):
                apart.append(member)
                continue
            for stem, value in zip(member.weights, member.unit, strict=True):
                summed[stem] = summed.get(stem, 0.0) + value

    def candidates(self, feats: StoryFeatures, since: datetime, limit: int) -> list[int]:
        """Up to ``limit`` stories active since ``since`` sharing the entry's rarest stems."""
        boilerplate = self.boilerplate(feats.source)
        rare = sorted(
            (s for s in self._indexable(feats) if s not in boilerplate),
            key=lambda s: -feats.weights[s],
        )[:LOOKUP_STEMS]
        overlap: dict[int, float] = {}
        for stem in rare:
            ids = self._postings.get(stem, ())
            if len(ids) > MAX_POSTINGS:
                continue  # common in this window: finds no story the rarer stems miss
            weight = feats.weights[stem]
            for story_id in ids:
                overlap[story_id] = overlap.get(story_id, 0.0) + weight
        stories = self._stories
        recent = [
            sid
            for sid in overlap
            if (last := stories[sid].last_published) is not None and last >= since
        ]
        return heapq.nlargest(limit, recent, key=overlap.__getitem__)

    def stories_with_links(
        self, canonical_url: str, primary_links: Iterable[str], since: datetime
    ) -> list[int]:
        """Stories active since ``since`` holding the same canonical or primary-source link."""
        keys = [*sorted(primary_links), *(["url:" + canonical_url] if canonical_url else [])]
        found: dict[int, None] = {}
        for key in keys:
            for story_id in self._by_link.get(key, ()):
                last = self._stories[story_id].last_published
                if last is not None and last >= since:
                    found[story_id] = None
        return list(found)

    def _indexable(self, feats: StoryFeatures) -> list[str]:
        floor = MIN_INDEXED_IDF**2
        return [s for s in feats.weights if self.idf.get(s, self.default_idf) ** 2 >= floor]


def _links(feats: StoryFeatures) -> list[str]:
    return [*feats.primary_links, *(["url:" + feats.canonical_url] if feats.canonical_url else [])]


def _discard(mapping: dict[str, set[int]], key: str, story_id: int) -> None:
    ids = mapping.get(key)
    if ids is not None:
        ids.discard(story_id)
        if not ids:
            del mapping[key]


def warm_index(index: StoryIndex, rows: Iterable[tuple[int, Entry]], now: datetime) -> StoryIndex:
    """Add stored (story id, entry) rows, oldest first, e.g. from ``store.recent_story_entries``."""
    for story_id, entry in rows:
        index.add(story_id, index.features(entry, now))
    return index
