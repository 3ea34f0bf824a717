"""Is this entry the same story as one we already alerted on? The pure, explainable decision.

A story is one occurrence (an order signed, a ruling, a launch) as reported by any number of
outlets. A new matching entry is compared with the stories of a recent window (72 h by default) and
joins the best one when the evidence is strong enough; otherwise it starts a new story. The signals
are:

- a shared canonical link, or a shared primary-source link (whitehouse.gov, federalregister.gov,
  congress.gov): either joins the story outright;
- the similarity of the normalised title and summary: a cosine over word stems weighted by how rare
  each word is in news text (IDF, see :mod:`aggregator.text.idf`), with words of the title counting
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import repeat

from aggregator.models import Entry
from aggregator.stories.features import GroupingParams, StoryFeatures, cosine, similarity
from aggregator.stories.index import StoryIndex, warm_index
from aggregator.text.stems import stem

# Words that report what happened next. A title with one that the story never used is likely a new
# development ("Judge blocks the order" after "Trump signs the order"), so it needs more similarity.
ACTION_WORDS = (
    "judge court ruling rules blocks halts overturns strikes appeals sues lawsuit injunction "
    "vetoes indicted charged arrested convicted sentenced pleads guilty acquitted "
    "resigns dismissed ousted impeached confirmed nominated votes passes approves rejects "
    "signs withdraws reverses rescinds revokes pauses delays extends dies killed"
)


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
            cosine(feats, m, own_boilerplate | index.boilerplate(m.source)) for m in members
        )
    else:
        summed, apart = index.member_sum(story, params.max_members)
        raw_total = _unit_dot(feats, summed) + sum(
            cosine(feats, m, index.boilerplate(m.source)) for m in apart
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


def replay_decision(
    entry: Entry,
    earlier: Iterable[tuple[int, Entry]],
    now: datetime,
    window: timedelta,
    params: GroupingParams | None = None,
) -> StoryDecision:
    """The decision for ``entry`` given the stored entries that came before it (for ``explain``).

    ``earlier`` are (story id, entry) rows first seen before ``entry``, within ``window`` of it;
    ``now`` is when ``entry`` was first seen.
    """
    index = warm_index(StoryIndex(params=params), earlier, now)
    index.expire(now - window)
    return decide(entry, index, now, window, index.params)
