"""What story grouping knows about one entry: weighted word stems, links, time and outlet.

The similarity of two entries is a cosine over their stems, each weighted by how rare it is in news
text (IDF, :mod:`aggregator.text.idf`), with title words counting more. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from aggregator.models import Entry
from aggregator.text.normalise import clean, word_key, words
from aggregator.text.stems import stem, stems

PRIMARY_SOURCE_HOSTS = ("whitehouse.gov", "federalregister.gov", "congress.gov")


@dataclass(frozen=True, slots=True)
class GroupingParams:
    """The knobs of the decision. Defaults are the values measured on the dev set."""

    threshold: float = 0.34  # adjusted similarity needed to join a story
    title_boost: float = 3.0  # a title word weighs this many times a summary word
    grace_hours: float = 6.0  # no time penalty this close together
    penalty_per_day: float = 0.2  # similarity lost per day apart beyond the grace period
    same_source_penalty: float = 0.2  # similarity lost when the outlet already covered the story
    new_action_penalty: float = 0.1  # similarity lost when the title reports a new kind of action
    max_members: int = 20  # entries of a story compared (the most recent ones)
    max_candidates: int = 24  # stories scored in full per decision


@dataclass(frozen=True, slots=True)
class StoryFeatures:
    """What the decision knows about one entry: its word stems with weights, links, time, outlet."""

    weights: Mapping[str, float]  # stem -> squared weight (IDF^2, boosted in the title)
    # sqrt(weight) / norm per stem, in the order of ``weights``: the cosine is a dot product of
    # these. An array of doubles, not a second dict: the story window keeps thousands of entries.
    unit: array[float]
    title_stems: frozenset[str]
    title_words: Mapping[str, str]  # stem -> the word the title wrote, for explanations
    norm: float  # sqrt of the sum of the squared weights
    title: str
    source: str
    published: datetime
    stamp: float  # ``published`` in seconds, for cheap time differences
    canonical_url: str
    primary_links: frozenset[str]  # normalised primary-source URLs ("whitehouse.gov/briefings/x")


def features(
    entry: Entry, now: datetime, idf: Mapping[str, float], default_idf: float, boost: float = 3.0
) -> StoryFeatures:
    """The features of one entry. Its time is its published time, never later than ``now``."""
    title_words: dict[str, str] = {}
    for word in words(clean(entry.title)):
        title_words.setdefault(stem(word), word_key(word).lower())
    title_stems = set(title_words)
    # In order of appearance, never set order: float sums and ties must not vary between runs.
    all_stems = dict.fromkeys([*title_words, *stems(entry.summary)])
    weights: dict[str, float] = {}
    for s in all_stems:
        weight = idf.get(s, default_idf) ** 2
        weights[s] = weight * boost if s in title_stems else weight
    published = entry.published if entry.published and entry.published <= now else now
    links = (entry.link, entry.canonical_url, *entry.links)
    norm = math.sqrt(sum(weights.values()))
    return StoryFeatures(
        weights=weights,
        unit=array("d", [math.sqrt(w) / norm for w in weights.values()] if norm else []),
        title_stems=frozenset(title_stems),
        title_words=title_words,
        norm=norm,
        title=entry.title,
        source=entry.source,
        published=published,
        stamp=published.timestamp(),
        canonical_url=entry.canonical_url,
        primary_links=frozenset(p for p in (primary_source_link(u) for u in links) if p),
    )


def primary_source_link(url: str) -> str | None:
    """``host/path`` of a link to a specific primary-source document, else None.

    Only links to a document count (two path segments or more): outlets link to home and section
    pages all the time.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    host = (parts.hostname or "").lower().removeprefix("www.")
    if not any(host == h or host.endswith("." + h) for h in PRIMARY_SOURCE_HOSTS):
        return None
    path = parts.path.rstrip("/").lower()
    if path.count("/") < 2:  # a section page ("/presidential-actions"), not a document
        return None
    return host + path


def similarity(
    a: StoryFeatures, b: StoryFeatures, ignore: AbstractSet[str] = frozenset()
) -> tuple[float, list[str]]:
    """Weighted cosine of two entries' stems, and the shared stems, heaviest first.

    Stems in ``ignore`` (an outlet's boilerplate) count on neither side.
    """
    score, shared = _cosine_and_shared(a, b, ignore)
    shared.sort(key=lambda s: -a.weights[s] * b.weights[s])
    return score, shared


def cosine(a: StoryFeatures, b: StoryFeatures, ignore: AbstractSet[str]) -> float:
    """:func:`similarity` without the shared stems, which only explanations show."""
    return _cosine_and_shared(a, b, ignore)[0]


def _cosine_and_shared(
    a: StoryFeatures, b: StoryFeatures, ignore: AbstractSet[str]
) -> tuple[float, list[str]]:
    norm_a = _norm_without(a, ignore)
    norm_b = _norm_without(b, ignore)
    if not norm_a or not norm_b:
        return 0.0, []
    small, large = (a, b) if len(a.weights) <= len(b.weights) else (b, a)
    shared = [s for s in small.weights if s in large.weights and s not in ignore]
    dot = sum(math.sqrt(a.weights[s] * b.weights[s]) for s in shared)
    return dot / (norm_a * norm_b), shared


def _norm_without(feats: StoryFeatures, ignore: AbstractSet[str]) -> float:
    dropped = [w for s, w in feats.weights.items() if s in ignore]  # in a fixed order
    if not dropped:
        return feats.norm
    return math.sqrt(max(0.0, feats.norm**2 - sum(dropped)))
