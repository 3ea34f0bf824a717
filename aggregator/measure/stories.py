"""``aggregator eval-stories``: how well the grouping joins one story's coverage, and nothing else.

The input is JSON Lines, one item a line: ``{"id", "source", "published", "title", "summary",
"link", "story"}``; items sharing ``story`` report the same occurrence. The items are fed in
published order through the real grouping code (:func:`aggregator.stories.decide` over a
:class:`aggregator.story_index.StoryIndex`), exactly as the pipeline does, with ``now`` set to each
item's published time. We report:

- pairwise precision and recall of the "same story" decision over all pairs of items (precision:
  of the pairs we put together, the share that belong together; a wrong merge hides a story);
- B-cubed F1, which weighs every item equally however large its story.

Reading and scoring are pure; the file is read by :func:`read_story_items` only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.errors import AggregatorError
from aggregator.models import Entry
from aggregator.stories.decide import decide
from aggregator.stories.features import GroupingParams
from aggregator.stories.index import StoryIndex

REQUIRED_FIELDS = ("id", "published", "title", "story")


class StoryDataError(AggregatorError):
    """An evaluation file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class StoryItem:
    id: str
    source: str
    published: datetime
    title: str
    summary: str
    link: str
    story: str


@dataclass(frozen=True, slots=True)
class PairwiseScores:
    precision: float
    recall: float
    f1: float
    predicted_pairs: int
    gold_pairs: int
    correct_pairs: int


@dataclass(frozen=True, slots=True)
class StoryEvalReport:
    items: int
    gold_stories: int
    predicted_stories: int
    pairwise: PairwiseScores
    bcubed_f1: float

    def as_json(self) -> dict[str, object]:
        return {
            "pairwise": {
                "precision": round(self.pairwise.precision, 4),
                "recall": round(self.pairwise.recall, 4),
                "f1": round(self.pairwise.f1, 4),
            },
            "bcubed_f1": round(self.bcubed_f1, 4),
        }

    def text(self) -> str:
        p = self.pairwise
        return "\n".join(
            [
                f"items: {self.items}; stories: {self.gold_stories} labelled, "
                f"{self.predicted_stories} grouped",
                f"pairwise: precision {p.precision:.3f}  recall {p.recall:.3f}  f1 {p.f1:.3f}  "
                f"({p.correct_pairs} of {p.predicted_pairs} joined pairs correct; "
                f"{p.gold_pairs} labelled pairs)",
                f"B-cubed F1: {self.bcubed_f1:.3f}",
            ]
        )


# -- reading --------------------------------------------------------------------------------------


def read_story_items(path: str | Path) -> list[StoryItem]:
    """Read a stories JSONL file. Raises :class:`StoryDataError` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StoryDataError(f"{path}: cannot read: {e}") from e
    return parse_story_items(text.splitlines(), str(path))


def parse_story_items(lines: Iterable[str], label: str = "<input>") -> list[StoryItem]:
    """Parse JSONL lines (blank lines are skipped)."""
    items: list[StoryItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise StoryDataError(f"{where}: invalid JSON: {e.msg} at column {e.colno}") from e
        if not isinstance(raw, dict):
            raise StoryDataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        item = _item(raw, where)
        if item.id in seen:
            raise StoryDataError(f"{where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def _item(raw: dict[str, object], where: str) -> StoryItem:
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise StoryDataError(f"{where}: missing field(s) {', '.join(missing)}")
    fields: dict[str, str] = {}
    for name in ("id", "source", "published", "title", "summary", "link", "story"):
        value = raw.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str | int):
            raise StoryDataError(f"{where}: field {name!r} must be a string")
        fields[name] = str(value)
    try:
        published = datetime.fromisoformat(fields["published"])
    except ValueError as e:
        raise StoryDataError(
            f"{where}: field 'published' is not an ISO-8601 time: {fields['published']!r}"
        ) from e
    if published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    return StoryItem(
        id=fields["id"],
        source=fields["source"],
        published=published.astimezone(UTC),
        title=fields["title"],
        summary=fields["summary"],
        link=fields["link"],
        story=fields["story"],
    )


# -- grouping -------------------------------------------------------------------------------------


def item_entry(item: StoryItem) -> Entry:
    """The :class:`Entry` the pipeline would have built for an evaluation item."""
    return Entry(
        feed_url=f"eval:{item.source}",
        guid=item.id,
        link=item.link,
        canonical_url=item.link,
        title=item.title,
        summary=item.summary,
        published=item.published,
        content_hash=item.id,
        source=item.source,
    )


def group_items(
    items: Sequence[StoryItem],
    window: timedelta = timedelta(hours=72),
    params: GroupingParams | None = None,
) -> dict[str, int]:
    """Item id -> story id, deciding each item in published order with the real grouping code."""
    index = StoryIndex(params=params)
    assigned: dict[str, int] = {}
    next_id = 1
    for item in sorted(items, key=lambda i: (i.published, i.id)):
        now = item.published
        index.expire(now - window)
        feats = index.features(item_entry(item), now)
        decision = decide(feats, index, now, window, index.params)
        story_id = decision.story_id
        if story_id is None:
            story_id = next_id
            next_id += 1
        index.add(story_id, feats)
        assigned[item.id] = story_id
    return assigned


def evaluate_items(
    items: Sequence[StoryItem],
    window: timedelta = timedelta(hours=72),
    params: GroupingParams | None = None,
) -> StoryEvalReport:
    predicted = group_items(items, window, params)
    gold = {item.id: item.story for item in items}
    return StoryEvalReport(
        items=len(items),
        gold_stories=len(set(gold.values())),
        predicted_stories=len(set(predicted.values())),
        pairwise=pairwise_scores(gold, predicted),
        bcubed_f1=bcubed_f1(gold, predicted),
    )


def evaluate_file(path: str | Path, window: timedelta = timedelta(hours=72)) -> StoryEvalReport:
    return evaluate_items(read_story_items(path), window)


# -- metrics --------------------------------------------------------------------------------------


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def pairwise_scores(
    gold: Mapping[str, Hashable], predicted: Mapping[str, Hashable]
) -> PairwiseScores:
    """Precision and recall over item pairs: a pair is positive when both share a cluster.

    Counted from cluster sizes, so it costs O(items), not O(items^2). With no predicted pairs,
    precision is 1 (nothing was wrongly merged); with no gold pairs, recall is 1.
    """
    ids = list(gold)
    both = Counter((gold[i], predicted[i]) for i in ids)
    correct = sum(_pairs(n) for n in both.values())
    predicted_pairs = sum(_pairs(n) for n in Counter(predicted[i] for i in ids).values())
    gold_pairs = sum(_pairs(n) for n in Counter(gold[i] for i in ids).values())
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / gold_pairs if gold_pairs else 1.0
    return PairwiseScores(
        precision, recall, _f1(precision, recall), predicted_pairs, gold_pairs, correct
    )


def bcubed_f1(gold: Mapping[str, Hashable], predicted: Mapping[str, Hashable]) -> float:
    """B-cubed F1: per item, precision and recall of its predicted cluster against its gold one."""
    ids = list(gold)
    if not ids:
        return 1.0
    both = Counter((gold[i], predicted[i]) for i in ids)
    gold_size = Counter(gold[i] for i in ids)
    predicted_size = Counter(predicted[i] for i in ids)
    precision = sum(both[(gold[i], predicted[i])] / predicted_size[predicted[i]] for i in ids)
    recall = sum(both[(gold[i], predicted[i])] / gold_size[gold[i]] for i in ids)
    return _f1(precision / len(ids), recall / len(ids))


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def eval_stories_output(
    path: str | Path, *, as_json: bool = False, window_hours: float = 72
) -> str:
    """What ``aggregator eval-stories FILE [--json]`` prints. Raises :class:`StoryDataError`."""
    report = evaluate_file(path, timedelta(hours=window_hours))
    return json.dumps(report.as_json()) if as_json else report.text()
