"""``aggregator explain``: each topic's verdict on one item, and why, in words.

The rule's part comes from :meth:`aggregator.rules.matcher.TopicMatcher.explain`: which clauses
held, with the comment that says what each is for, and any veto. For a topic with a model, the
score, the thresholds, the tier and the words that moved the score most follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aggregator.models import Document, TopicMatch
from aggregator.relevance.tiers import Scoring, Tier
from aggregator.rules.explain import ClauseResult, TopicExplanation

MOVERS = 6  # words shown per topic


@dataclass(frozen=True, slots=True)
class ScoreExplanation:
    """A topic's learned score for one item, what it means, and what moved it."""

    score: float
    alert: float
    review: float
    tier: Tier
    movers: tuple[tuple[str, float], ...]


def explain_scores(
    doc: Document, matches: Sequence[TopicMatch], scoring: Scoring
) -> dict[str, ScoreExplanation]:
    """For each matched topic that has a model: its score, tier and strongest words."""
    found: dict[str, ScoreExplanation] = {}
    for match in matches:
        scorer = scoring.scorers.get(match.topic)
        if scorer is None:
            continue
        scored, tier = scoring.judge(doc, match)
        assert scored.score is not None
        movers = tuple(scorer.model.movers(doc, match.clauses, MOVERS))
        found[match.topic] = ScoreExplanation(scored.score, scorer.alert, scorer.review, tier,
                                              movers)  # fmt: skip
    return found


_TIER_WORDS = {
    Tier.ALERT: "it alerts now",
    Tier.REVIEW: 'it goes to the review digest as "possibly relevant"',
    Tier.BELOW: "it is stored, not delivered",
}


def score_lines(s: ScoreExplanation) -> list[str]:
    review = f", review digest from {s.review:.2f}" if s.review < s.alert else ""
    lines = [f"  score {s.score:.3f} (alerts from {s.alert:.2f}{review}): {_TIER_WORDS[s.tier]}"]
    if s.movers:
        words = ", ".join(f"{word} {weight:+.2f}" for word, weight in s.movers)
        lines.append(f"  what moved the score most: {words}")
    return lines


def _bracket(text: str) -> str:
    return f"[{text}]"


def highlight(text: str, spans: Sequence[tuple[int, int]], mark: Callable[[str], str]) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(mark(text[start:end]))
        last = end
    out.append(text[last:])
    return "".join(out)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _clause_line(clause: ClauseResult, indent: str) -> str:
    tick = "yes" if clause.matched else "no "
    text = _short(clause.text, 50 if clause.label else 90)
    what = f"{_short(clause.label, 60)}: {text}" if clause.label else text
    found = f"   <- {', '.join(clause.terms)}" if clause.terms else ""
    return f"{indent}{tick}  {what}{found}"


def _clause_lines(clause: ClauseResult, indent: str = "    ") -> list[str]:
    lines = [_clause_line(clause, indent)]
    for part in clause.parts:
        lines.extend(_clause_lines(part, indent + "     "))
    return lines


def format_explain(
    explanations: Sequence[TopicExplanation],
    *,
    mark: Callable[[str], str] = _bracket,
    scores: Mapping[str, ScoreExplanation] | None = None,
) -> str:
    """A readable account of each topic's verdict; ``mark`` decorates matched words.

    Each clause is shown with the query comment that introduces it, so the reader sees what the
    clause is for; only the clauses that held are expanded.
    """
    lines: list[str] = []
    for e in explanations:
        if e.matched:
            verdict = "MATCH"
        elif e.query_matched:
            verdict = "no match (vetoed by an exclusion)"
        else:
            verdict = "no match"
        lines.append(f"{e.topic}: {verdict}")
        if e.terms:
            found = "matched words" if e.query_matched else "words found (not enough to match)"
            lines.append(f"  {found}: {', '.join(e.terms)}")
        held = [c for c in e.clauses if c.matched]
        missed = [c for c in e.clauses if not c.matched]
        if e.combine == "any":
            lines.append("  the query needs any one of its clauses:")
            for clause in held:
                lines.extend(_clause_lines(clause))
            by_label: dict[str, list[ClauseResult]] = {}
            for clause in missed:
                by_label.setdefault(clause.label, []).append(clause)
            for label, group in by_label.items():
                if len(group) == 1:
                    lines.append(_clause_line(group[0], "    "))
                else:
                    sample = ", ".join(_short(c.text, 30) for c in group[:3])
                    more = ", \u2026" if len(group) > 3 else ""
                    what = f"{_short(label, 60)} " if label else ""
                    lines.append(f"    no   {what}({len(group)} clauses: {sample}{more})")
        else:
            if e.combine == "all":
                lines.append("  the query needs all of its clauses:")
            else:
                lines.append("  the query:")
            for clause in e.clauses:
                lines.extend(_clause_lines(clause))
        for veto in e.vetoed_by:
            lines.append("  vetoed by the exclusion:")
            lines.extend(_clause_lines(veto))
        if e.query_matched or e.terms:
            for h in e.highlights:
                if h.spans:
                    lines.append(f"  {h.field}: {highlight(h.text, h.spans, mark)}")
        if e.matched and scores and e.topic in scores:
            lines.extend(score_lines(scores[e.topic]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def explain_short(
    doc: Document, topic: str, explanations: Sequence[TopicExplanation], scoring: Scoring,
    matches: Sequence[TopicMatch],
) -> str:  # fmt: skip
    """``explain`` in one line, for one topic: the words and labelled clauses that matched with
    today's rules and, for a topic with a model, its score against the alert threshold."""
    found = next((e for e in explanations if e.topic == topic), None)
    if found is None:
        return f"{topic} is no longer in topics.toml"
    if not found.matched:
        why = "an exclusion vetoes it" if found.query_matched else "the query no longer matches"
        return f"today's rules would not alert: {why}"
    parts = []
    if found.terms:
        parts.append(f"matched {', '.join(found.terms[:8])}")
    held = list(dict.fromkeys(_held_labels(found.clauses)))
    if held:
        parts.append(f"clauses: {'; '.join(_short(label, 40) for label in held[:3])}")
    match = next((m for m in matches if m.topic == topic), None)
    scores = explain_scores(doc, [match], scoring) if match is not None else {}
    if topic in scores:
        s = scores[topic]
        below = "" if s.tier == Tier.ALERT else f", now {s.tier}"
        parts.append(f"score {s.score:.2f} (alerts from {s.alert:.2f}{below})")
    return "; ".join(parts) or "matched"


def _held_labels(clauses: Sequence[ClauseResult]) -> list[str]:
    """The comments labelling the clauses that held, outermost first."""
    labels: list[str] = []
    for clause in clauses:
        if clause.matched:
            if clause.label:
                labels.append(clause.label)
            labels.extend(_held_labels(clause.parts))
    return labels
