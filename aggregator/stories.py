"""Is this entry the same story as one we already alerted on? The pure, explainable decision.

A story is one occurrence (an order signed, a ruling, a launch) as reported by any number of
outlets. A new matching entry is compared with the stories of a recent window (72 h by default) and
joins the best one when the evidence is strong enough; otherwise it starts a new story. The signals
are:

- a shared canonical link, or a shared primary-source link (whitehouse.gov, federalregister.gov,
  congress.gov): either joins the story outright;
- the similarity of the normalised title and summary: a cosine over word stems weighted by how rare
  each word is in news text (IDF, see :mod:`aggregator.story_idf`), with words of the title counting
  :attr:`GroupingParams.title_boost` times more, averaged over the story's entries (so one loosely
  related member cannot drag a new development into the story);
- closeness in time: past a grace period each extra day apart costs similarity, because a follow-up
  ("Judge blocks the order") usually comes a day or more after the event it follows;
- the outlet: one outlet rarely reports the same occurrence twice, so a second item from the same
  source needs more similarity; words an outlet puts in most of its items (its boilerplate, such as
  the preamble of every presidential order) are learned by the index and ignored;
- the action: a title reporting a kind of action ("blocks", "sues", "resigns") that a story reported
  with another action never used is likely a new development, so it needs more similarity.

The parameters were measured on ``../shared/eval/stories-dev.jsonl`` (``aggregator eval-stories``);
they are general signals, not rules about particular headlines. Nothing here reads the clock or
does I/O: ``now`` is passed in.
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import repeat
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aggregator.models import Entry
from aggregator.text import clean, word_key, words

if TYPE_CHECKING:
    from aggregator.story_index import StoryIndex

PRIMARY_SOURCE_HOSTS = ("whitehouse.gov", "federalregister.gov", "congress.gov")
STEM_LENGTH = 6  # stems are cut to this many characters: "grantmaking" and "grants" meet at "grant"


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


@dataclass(frozen=True, slots=True)
class StoryDecision:
    """The outcome for one entry: the story it joins (None: a new story), how sure, and why."""

    story_id: int | None
    score: float
    reasons: tuple[str, ...]
    candidates: int = 0  # stories scored

    @property
    def joined(self) -> bool:
        return self.story_id is not None

    def explain(self) -> str:
        head = f"joins story {self.story_id}" if self.joined else "starts a new story"
        return f"{head} (score {self.score:.2f}): " + "; ".join(self.reasons)


# -- features -------------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def stem(token: str) -> str:
    """A light, language-agnostic stem: lower case, no possessive, no plural or -ing/-ed ending."""
    word = word_key(token).lower()
    if word.endswith("'s"):
        word = word[:-2]
    for suffix, replacement, min_length in _SUFFIXES:
        if len(word) >= min_length and word.endswith(suffix):
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                break
            if suffix == "es" and not word.endswith(("ses", "xes", "zes", "ches", "shes")):
                continue  # "judges" loses only its "s" (and then its "e", below)
            word = word[: -len(suffix)] + replacement
            break
    if len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]  # "rule", "ruled", "ruling" meet at "rul"
    return sys.intern(word[:STEM_LENGTH])  # one copy per stem across the whole window


# Words that report what happened next. A title with one that the story never used is likely a new
# development ("Judge blocks the order" after "Trump signs the order"), so it needs more similarity.
ACTION_WORDS = (
    "judge court ruling rules blocks halts overturns strikes appeals sues lawsuit injunction "
    "vetoes indicted charged arrested convicted sentenced pleads guilty acquitted "
    "resigns dismissed ousted impeached confirmed nominated votes passes approves rejects "
    "signs withdraws reverses rescinds revokes pauses delays extends dies killed"
)

_SUFFIXES = (
    ("ies", "y", 5),
    ("ied", "y", 5),
    ("ing", "", 6),
    ("ed", "", 5),
    ("es", "", 5),
    ("s", "", 4),
)


def stems(text: str) -> list[str]:
    """The stems of a piece of feed text (HTML and Unicode normalised first)."""
    return [stem(w) for w in words(clean(text))]


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


def _cosine(a: StoryFeatures, b: StoryFeatures, ignore: AbstractSet[str]) -> float:
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


# -- the decision ---------------------------------------------------------------------------------


def decide(
    entry: Entry | StoryFeatures,
    index: StoryIndex,
    now: datetime,
    window: timedelta = timedelta(hours=72),
    params: GroupingParams | None = None,
    *,
    explain: bool = True,
) -> StoryDecision:
    """Which recent story ``entry`` belongs to, if any. Reads ``index``; never changes it.

    After storing the entry, the caller adds its features to the index under the story id it ended
    up with (:meth:`StoryIndex.add`), so the next decision sees it. With ``explain=False`` the
    decision of a scored story carries no reasons (story id and score are the same): a caller that
    only stores the story id skips the cost of putting the evidence into words.
    """
    params = params or GroupingParams()
    feats = entry if isinstance(entry, StoryFeatures) else index.features(entry, now)
    since = feats.published - window

    for story_id in index.stories_with_links(feats.canonical_url, feats.primary_links, since):
        story = index.story(story_id)
        if story is None:
            continue
        reasons = _link_reasons(feats, story.members)
        if reasons:
            return StoryDecision(story_id, 1.0, (*reasons, f"story: {story.title!r}"), 0)

    candidate_ids = index.candidates(feats, since, params.max_candidates)
    best_id, best_score = None, -math.inf
    for story_id in candidate_ids:
        score = _score_story(feats, story_id, index, params)
        if score is not None and score > best_score:
            best_id, best_score = story_id, score
    if best_id is None:
        return StoryDecision(None, 0.0, ("no recent story shares a rare word",), 0)
    # Only the winner is explained: finding the shared words costs more than scoring.
    why = _explain_story(feats, best_id, index, params) if explain else ()
    if best_score >= params.threshold:
        return StoryDecision(best_id, best_score, why, len(candidate_ids))
    below = f"best story {best_id} scores {best_score:.2f} < {params.threshold:.2f}"
    return StoryDecision(None, best_score, (below, *why), len(candidate_ids))


def _score_story(
    feats: StoryFeatures, story_id: int, index: StoryIndex, params: GroupingParams
) -> float | None:
    """The mean over the story's latest members of similarity minus penalties.

    The mean of cosines is one dot product with the sum of the members' unit vectors, which the
    index keeps per story; only members whose outlet has boilerplate are compared one by one.
    """
    story = index.story(story_id)
    if story is None or not story.members:
        return None
    members = story.members[-params.max_members :]
    own_boilerplate = index.boilerplate(feats.source)
    if own_boilerplate:
        raw_total = sum(
            _cosine(feats, m, own_boilerplate | index.boilerplate(m.source)) for m in members
        )
    else:
        summed, apart = index.member_sum(story, params.max_members)
        raw_total = _unit_dot(feats, summed) + sum(
            _cosine(feats, m, index.boilerplate(m.source)) for m in apart
        )
    penalties = _penalties(feats, members, params)
    if _new_actions(feats, members):
        penalties += params.new_action_penalty * len(members)
    return (raw_total - penalties) / len(members)


def _penalties(
    feats: StoryFeatures, members: Sequence[StoryFeatures], params: GroupingParams
) -> float:
    """What time apart and a repeated outlet cost, whatever the words, summed over ``members``.

    One expression, no call per member: a decision sums it over every member of every candidate.
    """
    stamp, source, grace = feats.stamp, feats.source, params.grace_hours
    per_day, same_source = params.penalty_per_day, params.same_source_penalty
    return sum(
        per_day * max(0.0, abs(stamp - m.stamp) / 3600 - grace) / 24
        + (same_source if source and m.source == source else 0.0)
        for m in members
    )


def _new_actions(feats: StoryFeatures, members: Sequence[StoryFeatures]) -> list[str]:
    """Actions in the title that a story told with actions never used; a story told without any
    action is not contradicted."""
    own_actions = feats.title_stems & ACTION_STEMS
    if not own_actions or not any(m.title_stems & ACTION_STEMS for m in members):
        return []
    return sorted(a for a in own_actions if not any(a in m.weights for m in members))


def _unit_dot(feats: StoryFeatures, summed: Mapping[str, float]) -> float:
    """The dot product of the entry's unit vector with ``summed``, over the shorter of the two."""
    # map() keeps the loop in C: this is the hot spot of a cycle that groups many stories
    if len(feats.unit) <= len(summed):
        lookups = map(summed.get, feats.weights.keys(), repeat(0.0))
        return float(sum(map(operator.mul, feats.unit, lookups)))
    unit = dict(zip(feats.weights, feats.unit, strict=True))
    return float(sum(map(operator.mul, summed.values(), map(unit.get, summed, repeat(0.0)))))


def _explain_story(
    feats: StoryFeatures, story_id: int, index: StoryIndex, params: GroupingParams
) -> tuple[str, ...]:
    """Why ``feats`` scores what it does against one story, in words."""
    story = index.story(story_id)
    if story is None or not story.members:
        return ()
    members = story.members[-params.max_members :]
    new_actions = _new_actions(feats, members)
    raw_total = 0.0
    shared_words: dict[str, None] = {}
    closest_hours = math.inf
    same_source = False
    own_boilerplate = index.boilerplate(feats.source)
    for member in members:
        raw, shared = similarity(feats, member, own_boilerplate | index.boilerplate(member.source))
        raw_total += raw
        closest_hours = min(closest_hours, abs(feats.stamp - member.stamp) / 3600)
        same_source = same_source or bool(feats.source and member.source == feats.source)
        for s in shared[:4]:
            shared_words[feats.title_words.get(s) or member.title_words.get(s) or s] = None
    words_shown = ", ".join(repr(w) for w in list(shared_words)[:6]) or "nothing"
    reasons = [
        f"title+summary similarity {raw_total / len(members):.2f} "
        f"(mean over {len(members)} entr{'y' if len(members) == 1 else 'ies'}) on {words_shown}",
        f"{closest_hours:.1f} h from the nearest entry",
    ]
    if new_actions:
        reasons.append(
            f"new action in the title: {', '.join(new_actions)} (-{params.new_action_penalty:.2f})"
        )
    if same_source:
        reasons.append(f"{feats.source!r} already covered it (-{params.same_source_penalty:.2f})")
    reasons.append(f"story: {story.title!r}")
    return tuple(reasons)


def _link_reasons(feats: StoryFeatures, members: Iterable[StoryFeatures]) -> list[str]:
    for member in members:
        if feats.canonical_url and feats.canonical_url == member.canonical_url:
            return [f"same canonical link {feats.canonical_url}"]
        shared = feats.primary_links & member.primary_links
        if shared:
            link = min(shared)
            return [f"shares {link.split('/', 1)[0]} link {link}"]
    return []


ACTION_STEMS = frozenset(stem(w) for w in ACTION_WORDS.split())
