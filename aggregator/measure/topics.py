"""Measuring topic rules: scoring against labelled items, backtests over history, explanations.

Everything here returns data or text; the CLI prints it. Readers turn the two file formats we use
(labelled JSON lines, the news-items CSV) into items and name the file and line of any bad record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.errors import AggregatorError
from aggregator.models import Document
from aggregator.relevance.thresholds import Counts
from aggregator.relevance.tiers import NO_SCORING, Scoring, Tier
from aggregator.rules.matcher import TopicMatcher

Progress = Callable[[int], None]  # called with the number of items just processed


class LabelledDataError(AggregatorError):
    """A labelled-items or CSV file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Item:
    """One item to match: a labelled example or a row of history."""

    id: str
    title: str
    summary: str = ""
    source: str = ""
    link: str = ""
    published: datetime | None = None
    labels: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    unsure: frozenset[str] = frozenset()

    def document(self) -> Document:
        return Document(self.title, self.summary, self.source, self.link)


# -- readers -------------------------------------------------------------------------------------


def parse_labelled(lines: Iterable[str], name: str = "<input>") -> list[Item]:
    """Items from JSON lines ``{"id", "title", "summary", "source", "labels", "unsure"}``."""
    items: list[Item] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelledDataError(f"{where}: not valid JSON: {e.msg} at column {e.colno}") from e
        items.append(_labelled_item(raw, where))
    return items


def _labelled_item(raw: Any, where: str) -> Item:
    if not isinstance(raw, dict):
        raise LabelledDataError(f"{where}: expected a JSON object")
    for key in ("id", "title", "labels"):
        if key not in raw:
            raise LabelledDataError(f"{where}: missing key {key!r}")
    for key in ("id", "title", "summary", "source", "link", "published"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], str):
            raise LabelledDataError(f"{where}: {key!r} must be a string")
    labels = raw["labels"]
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and v in (0, 1) and not isinstance(v, bool) for k, v in labels.items()
    ):
        raise LabelledDataError(f"{where}: 'labels' must map topic names to 0 or 1")
    unsure = raw.get("unsure", [])
    if not isinstance(unsure, list) or not all(isinstance(u, str) for u in unsure):
        raise LabelledDataError(f"{where}: 'unsure' must be a list of topic names")
    return Item(
        id=raw["id"],
        title=raw["title"],
        summary=raw.get("summary") or "",
        source=raw.get("source") or "",
        link=raw.get("link") or "",
        published=_timestamp(raw.get("published"), where),
        labels={str(k): int(v) for k, v in labels.items()},
        unsure=frozenset(unsure),
    )


def _timestamp(value: str | None, where: str) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise LabelledDataError(f"{where}: bad published time {value!r}") from e
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def read_labelled(path: Path) -> list[Item]:
    try:
        with path.open(encoding="utf-8") as handle:
            return parse_labelled(handle, str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise LabelledDataError(f"{path}: cannot read: {e}") from e


CSV_COLUMNS = ("id", "source", "published", "title", "summary", "link")


def read_items_csv(path: Path) -> Iterator[Item]:
    """Rows of a CSV shaped like ``news-items.csv``; only ``title`` is required."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            if "title" not in columns:
                raise LabelledDataError(
                    f"{path}:1: no 'title' column (expected columns: {', '.join(CSV_COLUMNS)})"
                )
            for row in reader:
                where = f"{path}:{reader.line_num}"
                yield Item(
                    id=row.get("id") or str(reader.line_num),
                    title=row.get("title") or "",
                    summary=row.get("summary") or "",
                    source=row.get("source") or "",
                    link=row.get("link") or "",
                    published=_timestamp(row.get("published"), where),
                )
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LabelledDataError(f"{path}: cannot read: {e}") from e


# -- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicScore:
    topic: str
    tp: int
    fp: int
    fn: int
    tn: int
    skipped: int  # items marked unsure for this topic
    false_positives: tuple[tuple[str, str], ...]  # (id, title)
    false_negatives: tuple[tuple[str, str], ...]

    @property
    def counts(self) -> Counts:
        """Precision, recall and F1 are computed as ``train`` computes them."""
        return Counts(self.tp, self.fp, self.fn)

    @property
    def precision(self) -> float:
        return self.counts.precision

    @property
    def recall(self) -> float:
        return self.counts.recall

    @property
    def f1(self) -> float:
        return self.counts.f1

    def as_dict(self) -> dict[str, float | int]:
        return {**self.counts.as_dict(), "tn": self.tn}


@dataclass(frozen=True, slots=True)
class TopicEval:
    """A topic's figures three ways: what alerts in real time (the rule, and the score at or
    above the alert threshold when the topic has a model), the rule alone, and what alerts or
    goes to the review digest."""

    alert: TopicScore
    rules_only: TopicScore
    review: TopicScore
    scored: bool  # the topic has a model

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.alert.as_dict(),
            "rules_only": self.rules_only.as_dict(),
            "review": self.review.as_dict(),
        }


def score(
    items: Sequence[Item], matcher: TopicMatcher, scoring: Scoring = NO_SCORING
) -> dict[str, TopicEval]:
    """Precision, recall and F1 per topic that both the matcher and the labels know.

    An item whose ``unsure`` lists a topic is left out of that topic's score.
    """
    names = [n for n in matcher.topic_names if any(n in item.labels for item in items)]
    systems = ("alert", "rules_only", "review")
    tally = {(n, s): _Tally() for n in names for s in systems}
    for item in items:
        doc = item.document()
        tiers: dict[str, Tier] = {}
        for m in matcher.match(doc):
            tiers[m.topic] = scoring.judge(doc, m)[1]
        for name in names:
            if name not in item.labels:
                continue
            truth = item.labels[name] == 1
            tier = tiers.get(name)
            guesses = {
                "alert": tier == Tier.ALERT,
                "rules_only": tier is not None,
                "review": tier in (Tier.ALERT, Tier.REVIEW),
            }
            for system, guess in guesses.items():
                tally[name, system].add(item, truth, guess, unsure=name in item.unsure)
    return {
        name: TopicEval(
            alert=tally[name, "alert"].result(name),
            rules_only=tally[name, "rules_only"].result(name),
            review=tally[name, "review"].result(name),
            scored=name in scoring.scorers,
        )
        for name in names
    }


class _Tally:
    def __init__(self) -> None:
        self.counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "skipped": 0}
        self.wrong: dict[str, list[tuple[str, str]]] = {"fp": [], "fn": []}

    def add(self, item: Item, truth: bool, guess: bool, *, unsure: bool) -> None:
        if unsure:
            self.counts["skipped"] += 1
            return
        outcome = ("tp" if guess else "fn") if truth else ("fp" if guess else "tn")
        self.counts[outcome] += 1
        if outcome in ("fp", "fn"):
            self.wrong[outcome].append((item.id, item.title))

    def result(self, name: str) -> TopicScore:
        return TopicScore(
            name,
            **self.counts,
            false_positives=tuple(self.wrong["fp"]),
            false_negatives=tuple(self.wrong["fn"]),
        )


def scores_json(scores: dict[str, TopicEval]) -> dict[str, Any]:
    return {"topics": {name: s.as_dict() for name, s in scores.items()}}


def format_scores(scores: dict[str, TopicEval], *, list_errors: bool = True) -> str:
    lines: list[str] = []
    for name, e in scores.items():
        s = e.alert
        lines.append(
            f"{name}: precision {s.precision:.3f}  recall {s.recall:.3f}  f1 {s.f1:.3f}  "
            f"(tp {s.tp}, fp {s.fp}, fn {s.fn}, tn {s.tn}; {s.skipped} unsure left out)"
        )
        if e.scored:
            for label, other in (("the rule alone", e.rules_only), ("alert or review", e.review)):
                lines.append(
                    f"  {label}: precision {other.precision:.3f}  recall {other.recall:.3f}  "
                    f"f1 {other.f1:.3f}  (tp {other.tp}, fp {other.fp}, fn {other.fn})"
                )
        if list_errors:
            for label, pairs in (
                ("false positives", s.false_positives),
                ("false negatives", s.false_negatives),
            ):
                if pairs:
                    lines.append(f"  {label} ({len(pairs)}):")
                    lines.extend(f"    {item_id}  {title}" for item_id, title in pairs)
    return "\n".join(lines)


# -- backtest ------------------------------------------------------------------------------------


@dataclass(slots=True)
class TopicBacktest:
    topic: str
    total: int = 0
    per_day: dict[str, int] = field(default_factory=dict)  # "YYYY-MM-DD" (or "undated") -> hits
    samples: list[Item] = field(default_factory=list)
    gained: list[Item] = field(default_factory=list)  # matched by the candidate, not the live rules
    lost: list[Item] = field(default_factory=list)  # matched by the live rules, not the candidate
    gained_count: int = 0
    lost_count: int = 0


@dataclass(slots=True)
class BacktestResult:
    items: int
    topics: dict[str, TopicBacktest]
    compared: bool  # True when run with ``against``


def backtest(
    items: Iterable[Item],
    candidate: TopicMatcher,
    *,
    against: TopicMatcher | None = None,
    since: datetime | None = None,
    samples: int = 5,
    progress: Progress | None = None,
    progress_every: int = 500,
) -> BacktestResult:
    """Run ``candidate`` over ``items``; with ``against`` (the live rules), also the diff.

    Items published before ``since`` are skipped (undated items are kept). ``progress`` is called
    every ``progress_every`` items with the count processed since the last call.
    """
    topics = {name: TopicBacktest(name) for name in candidate.topic_names}
    if against is not None:
        for name in against.topic_names:
            topics.setdefault(name, TopicBacktest(name))
    count = pending = 0
    for item in items:
        pending += 1
        if progress is not None and pending >= progress_every:
            progress(pending)
            pending = 0
        if since is not None and item.published is not None and item.published < since:
            continue
        count += 1
        doc = item.document()
        now_found = {m.topic for m in candidate.match(doc)}
        for name in now_found:
            result = topics[name]
            result.total += 1
            day = item.published.date().isoformat() if item.published else "undated"
            result.per_day[day] = result.per_day.get(day, 0) + 1
            if len(result.samples) < samples:
                result.samples.append(item)
        if against is not None:
            before = {m.topic for m in against.match(doc)}
            for name in now_found - before:
                topics[name].gained_count += 1
                if len(topics[name].gained) < samples:
                    topics[name].gained.append(item)
            for name in before - now_found:
                topics[name].lost_count += 1
                if len(topics[name].lost) < samples:
                    topics[name].lost.append(item)
    if progress is not None and pending:
        progress(pending)
    return BacktestResult(count, topics, against is not None)


def format_backtest(result: BacktestResult, *, days: int = 14) -> str:
    """Per topic: total, recent days, sample hits and, when compared, gains and losses."""
    lines = [f"{result.items} items matched against {len(result.topics)} topics"]
    for name, t in result.topics.items():
        lines.append("")
        lines.append(f"{name}: {t.total} matches on {len(t.per_day)} days")
        dated = sorted((d for d in t.per_day if d != "undated"), reverse=True)
        if dated:
            lines.append(f"  matches per day (latest {min(days, len(dated))} days with matches):")
            peak = max(t.per_day[d] for d in dated)
            for day in dated[:days]:
                n = t.per_day[day]
                bar = "#" * max(1, round(20 * n / peak))
                lines.append(f"    {day}  {n:5d}  {bar}")
        if "undated" in t.per_day:
            lines.append(f"    undated     {t.per_day['undated']:5d}")
        if len(dated) > days:
            months: dict[str, int] = {}
            for day in dated:
                months[day[:7]] = months.get(day[:7], 0) + t.per_day[day]
            shown = sorted(months, reverse=True)[:12]
            lines.append(f"  matches per month (latest {len(shown)} of {len(months)} months):")
            top = max(months[m] for m in shown)
            for month in shown:
                bar = "#" * max(1, round(20 * months[month] / top))
                lines.append(f"    {month}     {months[month]:5d}  {bar}")
        if t.samples:
            lines.append("  samples:")
            lines.extend(f"    {_item_line(i)}" for i in t.samples)
        if result.compared:
            lines.append(f"  gained vs live rules: {t.gained_count}")
            lines.extend(f"    + {_item_line(i)}" for i in t.gained)
            lines.append(f"  lost vs live rules: {t.lost_count}")
            lines.extend(f"    - {_item_line(i)}" for i in t.lost)
    return "\n".join(lines)


def _item_line(item: Item) -> str:
    day = item.published.date().isoformat() if item.published else "undated"
    return f"{day}  {item.title}" + (f"  [{item.source}]" if item.source else "")
