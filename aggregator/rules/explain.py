"""Why a topic did or did not match: the values ``aggregator explain`` shows, and the helpers
that turn matched word positions back into the words and character ranges of the text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.rules import syntax as rules
from aggregator.rules.compile import MAX_WORDS, SHIFT, Span


@dataclass(frozen=True, slots=True)
class Highlight:
    """One field's text and the character ranges of the words that matched in it."""

    field: str
    text: str
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ClauseResult:
    """One clause of a query: its text, the comment that says what it is for, and the words
    that satisfied it. ``parts`` are the sub-clauses that held, for a clause made of several."""

    text: str
    matched: bool
    terms: tuple[str, ...] = ()
    label: str = ""
    parts: tuple[ClauseResult, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicExplanation:
    """Why one topic did or did not match one document."""

    topic: str
    matched: bool  # the verdict: the query matched and no exclusion vetoed it
    query_matched: bool
    clauses: tuple[ClauseResult, ...]  # the query's top-level clauses and which ones held
    terms: tuple[str, ...]
    vetoed_by: tuple[ClauseResult, ...] = ()  # the exclusion clauses that matched
    highlights: tuple[Highlight, ...] = ()
    combine: str = "one"  # how the clauses combine: "all" (AND), "any" (OR), "one" (a single one)


def is_words(node: rules.Node) -> bool:
    return isinstance(node, rules.Words)


def char_range(
    span: Span, spans_by_field: list[list[tuple[int, int]]]
) -> tuple[int, int, int] | None:
    field = span[0] >> SHIFT
    words = spans_by_field[field]
    first, last = span[0] & MAX_WORDS, span[1] & MAX_WORDS
    if last >= len(words):
        return None
    return field, words[first][0], words[last][1]


def matched_terms(
    spans: list[Span], texts: Sequence[str], spans_by_field: list[list[tuple[int, int]]]
) -> tuple[str, ...]:
    """The matched words as written in the text, first occurrence first, each once."""
    seen: dict[str, None] = {}
    for span in sorted(set(spans)):
        where = char_range(span, spans_by_field)
        if where is not None:
            field, start, end = where
            seen.setdefault(texts[field][start:end], None)
    return tuple(seen)


def field_highlights(
    spans: list[Span], texts: Sequence[str], spans_by_field: list[list[tuple[int, int]]]
) -> tuple[Highlight, ...]:
    ranges: dict[int, set[tuple[int, int]]] = {}
    for span in spans:
        where = char_range(span, spans_by_field)
        if where is not None:
            ranges.setdefault(where[0], set()).add((where[1], where[2]))
    out = []
    for field, name in enumerate(rules.FIELDS):
        if texts[field] and (field in ranges or field < 2):
            out.append(Highlight(name, texts[field], merge_ranges(sorted(ranges.get(field, ())))))
    return tuple(out)


def merge_ranges(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)
