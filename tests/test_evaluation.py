"""Scoring, readers, backtests and explanations; and the shipped rules against the dev set."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.config.load import parse_config
from aggregator.config.model import TopicConfig
from aggregator.measure.explain import format_explain
from aggregator.measure.topics import (
    Item,
    LabelledDataError,
    backtest,
    format_backtest,
    format_scores,
    parse_labelled,
    read_items_csv,
    read_labelled,
    score,
    scores_json,
)
from aggregator.models import Document
from aggregator.relevance.tiers import load_scoring
from aggregator.rules.matcher import TopicMatcher, check_examples

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).parents[1].parent / "shared"
DEV = SHARED / "eval" / "dev.jsonl"
CORPUS = SHARED / "corpus" / "news-items.csv"


def matcher(*queries: tuple[str, str]) -> TopicMatcher:
    return TopicMatcher.compile([TopicConfig(name, "#x", query) for name, query in queries])


def line(item_id: str, title: str, labels: dict[str, int], unsure: list[str] | None = None) -> str:
    record = {"id": item_id, "title": title, "summary": "", "source": "s", "labels": labels}
    record["unsure"] = unsure or []
    return json.dumps(record)


LABELLED = [
    line("1", "AI law passes", {"ai": 1, "eo": 0}),
    line("2", "AI model launches", {"ai": 0, "eo": 0}),  # a false positive for "ai"
    line("3", "Senate strikes regulation", {"ai": 1, "eo": 0}),  # a false negative for "ai"
    line("4", "Executive order signed", {"ai": 0, "eo": 1}),
    line("5", "AI executive order", {"ai": 1, "eo": 1}, unsure=["ai"]),  # left out for "ai"
    line("6", "Sports results", {"ai": 0, "eo": 0}),
]


# -- readers -------------------------------------------------------------------------------------


def test_parse_labelled_reads_items() -> None:
    items = parse_labelled([*LABELLED, "", "  "], "dev.jsonl")
    assert [i.id for i in items] == ["1", "2", "3", "4", "5", "6"]
    assert items[4].unsure == frozenset({"ai"})
    assert items[0].labels == {"ai": 1, "eo": 0}
    assert items[0].document() == Document("AI law passes", "", "s", "")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"title": "x", "labels": {}}', "missing key 'id'"),
        ('{"id": "1", "labels": {}}', "missing key 'title'"),
        ('{"id": "1", "title": "x"}', "missing key 'labels'"),
        ('{"id": "1", "title": "x", "labels": {"ai": 2}}', "0 or 1"),
        ('{"id": "1", "title": "x", "labels": {"ai": true}}', "0 or 1"),
        ('{"id": "1", "title": 5, "labels": {}}', "'title' must be a string"),
        ('{"id": "1", "title": "x", "labels": {}, "unsure": "ai"}', "list of topic names"),
        ('{"id": "1", "title": "x", "labels": {}, "published": "soon"}', "bad published time"),
    ],
)
def test_parse_labelled_errors_name_file_and_line(bad: str, fragment: str) -> None:
    with pytest.raises(LabelledDataError) as caught:
        parse_labelled([LABELLED[0], "", bad], "dev.jsonl")
    assert str(caught.value).startswith("dev.jsonl:3: ")
    assert fragment in str(caught.value)


def test_read_labelled_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(LABELLED) + "\n", encoding="utf-8")
    assert len(read_labelled(path)) == 6
    with pytest.raises(LabelledDataError, match="cannot read"):
        read_labelled(tmp_path / "missing.jsonl")


def test_read_items_csv(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "id,source,published,title,summary,link\n"
        'a1,NPR,2025-01-02T10:00:00Z,"AI law, passed","sum",https://x/1\n'
        "a2,NPR,,Undated,,\n",
        encoding="utf-8",
    )
    items = list(read_items_csv(path))
    assert items[0] == Item(
        "a1", "AI law, passed", "sum", "NPR", "https://x/1", datetime(2025, 1, 2, 10, tzinfo=UTC)
    )
    assert items[1].published is None
    bad = tmp_path / "bad.csv"
    bad.write_text("id,headline\n1,x\n", encoding="utf-8")
    with pytest.raises(LabelledDataError, match=r"bad\.csv:1: no 'title' column"):
        list(read_items_csv(bad))
    worse = tmp_path / "worse.csv"
    worse.write_text("id,title,published\n1,x,yesterday\n", encoding="utf-8")
    with pytest.raises(LabelledDataError, match=r"worse\.csv:2: bad published time"):
        list(read_items_csv(worse))


# -- scoring -------------------------------------------------------------------------------------


def test_score_counts_and_leaves_out_unsure() -> None:
    items = parse_labelled(LABELLED)
    scores = score(items, matcher(("ai", "AI"), ("eo", '"executive order"'), ("other", "x")))
    assert set(scores) == {"ai", "eo"}  # a topic nobody labelled is not scored
    ai = scores["ai"].alert
    assert (ai.tp, ai.fp, ai.fn, ai.tn, ai.skipped) == (1, 1, 1, 2, 1)
    assert ai.precision == 0.5 and ai.recall == 0.5 and ai.f1 == 0.5
    assert ai.false_positives == (("2", "AI model launches"),)
    assert ai.false_negatives == (("3", "Senate strikes regulation"),)
    eo = scores["eo"].alert
    assert (eo.tp, eo.fp, eo.fn, eo.tn) == (2, 0, 0, 4)
    # without a model, the rule alone and alert-or-review are what alerts
    assert scores["ai"].rules_only == scores["ai"].review == ai
    assert eo.precision == 1.0 and eo.recall == 1.0


def test_scores_json_shape() -> None:
    scores = score(parse_labelled(LABELLED), matcher(("ai", "AI"), ("eo", "order")))
    data = scores_json(scores)
    assert list(data) == ["topics"]
    figures = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 1, "fp": 1, "fn": 1, "tn": 2}
    assert data["topics"]["ai"] == {**figures, "rules_only": figures, "review": figures}
    json.dumps(data)  # serialisable as is


@dataclass(frozen=True)
class _Cut:
    alert: float = 0.8
    review: float = 0.5


@dataclass(frozen=True)
class _ScoreFromTitle:
    """A model whose score is its title's first word: "0.9 ...", "0.6 ..."."""

    thresholds: _Cut = _Cut()

    def score(self, doc: Document, clauses: Collection[str]) -> float:
        return float(doc.title.split()[0])

    def movers(
        self, doc: Document, clauses: Collection[str], n: int = 5
    ) -> list[tuple[str, float]]:
        return [("title", 1.0)]


def test_eval_counts_what_alerts_in_real_time_beside_the_rule_alone_and_the_review_tier() -> None:
    lines = [
        json.dumps({"id": str(n), "title": title, "labels": {"ai": label}})
        for n, (title, label) in enumerate(
            [("0.9 AI law", 1), ("0.6 AI rules", 1), ("0.6 AI fun", 0), ("0.1 AI toy", 0),
             ("0.1 AI ban", 1), ("0.9 Weather", 0)]
        )
    ]  # fmt: skip
    topic = replace(TopicConfig("ai", "#ai", "AI"), model=Path("m.json"))
    scoring = load_scoring([topic], lambda path, topic: _ScoreFromTitle())
    result = score(parse_labelled(lines), matcher(("ai", "AI")), scoring)["ai"]
    assert (result.alert.tp, result.alert.fp, result.alert.fn) == (1, 0, 2)
    assert (result.rules_only.tp, result.rules_only.fp, result.rules_only.fn) == (3, 2, 0)
    assert (result.review.tp, result.review.fp, result.review.fn) == (2, 1, 1)
    text = format_scores({"ai": result}, list_errors=False)
    assert "ai: precision 1.000  recall 0.333" in text
    assert "the rule alone: precision 0.600  recall 1.000" in text


def test_score_with_no_predictions_is_zero_not_an_error() -> None:
    scores = score(parse_labelled(LABELLED), matcher(("ai", "nothingmatches")))
    ai = scores["ai"].alert
    assert ai.precision == 0.0 and ai.recall == 0.0 and ai.f1 == 0.0


def test_format_scores_lists_errors() -> None:
    text = format_scores(score(parse_labelled(LABELLED), matcher(("ai", "AI"))))
    assert "ai: precision 0.500  recall 0.500" in text
    assert "false positives (1):" in text and "2  AI model launches" in text
    assert "false negatives (1):" in text and "3  Senate strikes regulation" in text
    assert "1 unsure left out" in text


# -- backtest ------------------------------------------------------------------------------------


def history() -> list[Item]:
    day = [datetime(2025, 3, d, 12, tzinfo=UTC) for d in (1, 2, 3)]
    return [
        Item("1", "AI law", published=day[0]),
        Item("2", "AI rules", published=day[0]),
        Item("3", "AI law again", published=day[1]),
        Item("4", "executive order", published=day[2]),
        Item("5", "AI undated law"),
        Item("6", "nothing", published=day[2]),
    ]


def test_backtest_counts_matches_per_day_with_samples() -> None:
    result = backtest(history(), matcher(("ai", "AI"), ("eo", '"executive order"')), samples=2)
    assert result.items == 6 and not result.compared
    ai = result.topics["ai"]
    assert ai.total == 4
    assert ai.per_day == {"2025-03-01": 2, "2025-03-02": 1, "undated": 1}
    assert [i.id for i in ai.samples] == ["1", "2"]
    assert result.topics["eo"].per_day == {"2025-03-03": 1}


def test_backtest_since_skips_older_items_but_keeps_undated() -> None:
    since = datetime(2025, 3, 2, tzinfo=UTC)
    result = backtest(history(), matcher(("ai", "AI")), since=since)
    assert result.items == 4
    assert result.topics["ai"].per_day == {"2025-03-02": 1, "undated": 1}


def test_backtest_diff_against_live_rules() -> None:
    live = matcher(("ai", "AI AND law"))
    candidate = matcher(("ai", "AI AND rules"), ("eo", "order"))
    result = backtest(history(), candidate, against=live)
    assert result.compared
    ai = result.topics["ai"]
    assert [i.id for i in ai.gained] == ["2"]
    assert [i.id for i in ai.lost] == ["1", "3", "5"]
    assert (ai.gained_count, ai.lost_count) == (1, 3)
    assert [i.id for i in result.topics["eo"].gained] == ["4"]  # a new topic gains all it finds


def test_backtest_reports_progress_for_every_item() -> None:
    seen: list[int] = []
    items = history() * 5
    backtest(items, matcher(("ai", "AI")), progress=seen.append, progress_every=4)
    assert sum(seen) == len(items)
    assert all(n <= 4 for n in seen)


def test_format_backtest() -> None:
    live = matcher(("ai", "AI AND law"))
    text = format_backtest(backtest(history(), matcher(("ai", "AI")), against=live))
    assert "ai: 4 matches on 3 days" in text
    assert "2025-03-01      2" in text
    assert "undated" in text
    assert "gained vs live rules: 1" in text and "+ 2025-03-01  AI rules" in text
    assert "lost vs live rules: 0" in text


# -- explain -------------------------------------------------------------------------------------


def test_format_explain_shows_verdicts_clauses_and_highlights() -> None:
    topics = [
        TopicConfig("ai", "#a", "AI AND (law OR rules)", exclude='"Bill Gates"  # a person'),
        TopicConfig("eo", "#e", '"executive order" OR (order NEAR/3 signs)'),
    ]
    m = TopicMatcher.compile(topics)
    text = format_explain(m.explain(Document("Trump signs AI order", "New AI law")))
    assert "ai: MATCH" in text
    assert "matched words: AI, law" in text
    assert "the query needs all of its clauses:" in text
    assert "    yes  (law OR rules)   <- law" in text
    assert "summary: New [AI] [law]" in text
    assert "eo: MATCH" in text
    assert "the query needs any one of its clauses:" in text
    assert "    yes  (order NEAR/3 signs)   <- signs, order" in text
    assert '    no   "executive order"' in text
    vetoed = format_explain(m.explain(Document("Bill Gates on AI rules")), mark=str.upper)
    assert "ai: no match (vetoed by an exclusion)" in vetoed
    assert 'vetoed by the exclusion:\n    yes  a person: "Bill Gates"   <- Bill Gates' in vetoed
    assert "title: Bill Gates on AI RULES" in vetoed  # only the query's words are marked
    assert "eo: no match\n  the query needs any one of its clauses:\n    no   (2 clauses:" in vetoed


def test_format_explain_labels_clauses_with_their_comments() -> None:
    query = """
    # 1. Named outright
    "executive order" OR "executive action"
    # 2. The text of an order
    OR "it is hereby ordered"
    """
    m = TopicMatcher.compile([TopicConfig("eo", "#e", query)])
    text = format_explain(m.explain(Document("Biden signs executive order")))
    assert '    yes  1. Named outright: "executive order"   <- executive order' in text
    assert '    no   1. Named outright: "executive action"' in text
    assert '    no   2. The text of an order: "it is hereby ordered"' in text
    long_text = format_explain(m.explain(Document("nothing")))
    assert "no   1. Named outright (2 clauses: " in long_text


# -- the shipped rules ---------------------------------------------------------------------------


def shipped_topics() -> tuple[TopicConfig, ...]:
    text = (ROOT / "config" / "topics.toml").read_text(encoding="utf-8")
    return parse_config({"topics.toml": text}).topics


def test_shipped_topics_pass_their_examples() -> None:
    topics = shipped_topics()
    assert {t.name for t in topics} >= {"ai-policy", "executive-orders"}
    assert check_examples(topics) == []
    seed = Document("Trump kills AI security order after tech pressure")
    found = {m.topic for m in TopicMatcher.compile(topics).match(seed)}
    assert {"ai-policy", "executive-orders"} <= found


def test_shipped_topics_channels() -> None:
    channels = {t.name: t.channel for t in shipped_topics()}
    assert channels["ai-policy"] == "#ai-policy"
    assert channels["executive-orders"] == "#executive-orders"


@pytest.mark.skipif(not DEV.exists(), reason=f"{DEV} not found (the shared eval set is absent)")
def test_shipped_rules_meet_the_targets_on_the_dev_set() -> None:
    scores = score(read_labelled(DEV), TopicMatcher.compile(shipped_topics()))
    for name in ("ai-policy", "executive-orders"):
        assert scores[name].alert.recall >= 0.90, format_scores({name: scores[name]})
        assert scores[name].alert.precision >= 0.85, format_scores({name: scores[name]})


@pytest.mark.skipif(not CORPUS.exists(), reason=f"{CORPUS} not found (the shared corpus is absent)")
def test_the_corpus_csv_reads_and_backtests() -> None:
    items = []
    for item in read_items_csv(CORPUS):
        items.append(item)
        if len(items) == 2000:
            break
    result = backtest(items, TopicMatcher.compile(shipped_topics()))
    assert result.items == 2000
    assert set(result.topics) == {"ai-policy", "executive-orders"}


# -- stored history (real SQLite) ----------------------------------------------------------------


def test_stored_entries_feed_explain_and_backtest(tmp_path: Path) -> None:
    from aggregator.models import Entry
    from aggregator.store import Store
    from tests.storing import Item as Stored
    from tests.storing import store_items

    def entry(n: int, title: str, published: datetime | None) -> Stored:
        link = f"https://news.example/{n}?utm_source=x"
        return Stored(
            Entry(
                feed_url="https://news.example/feed",
                guid=f"g{n}",
                link=link,
                canonical_url=f"https://news.example/{n}",
                title=title,
                summary="",
                published=published,
                content_hash=f"h{n}",
                source="Example News",
            )
        )

    now = datetime(2025, 3, 10, tzinfo=UTC)
    store = Store.open(tmp_path / "db.sqlite")
    try:
        store_items(
            store,
            [
                entry(1, "AI law", datetime(2025, 3, 1, tzinfo=UTC)),
                entry(2, "AI rules", datetime(2025, 3, 5, tzinfo=UTC)),
                entry(3, "Undated AI order", None),  # dated by first seen: now
                entry(4, "Sports", datetime(2025, 3, 6, tzinfo=UTC)),
            ],
            now,
        )
        found = store.entries.find("https://news.example/2?utm_source=x")
        assert found is not None and found.entry.title == "AI rules"
        by_canonical = store.entries.find("https://NEWS.example/2#x", ["https://news.example/2"])
        assert by_canonical is not None and by_canonical.id == found.id
        by_id = store.entries.find(str(found.id))
        assert by_id is not None and by_id.entry.title == "AI rules"
        assert store.entries.find("https://nowhere.example/") is None
        assert store.entries.find("999") is None

        since = datetime(2025, 3, 2, tzinfo=UTC)
        assert store.entries.count_since(since) == 3
        assert store.entries.count_since() == 4
        rows = list(store.entries.since(since, page=2))  # pages of two: keyset paging
        assert [s.entry.title for s in rows] == ["AI rules", "Sports", "Undated AI order"]
        assert rows[-1].entry.published == now

        items = [
            Item(
                str(s.id),
                s.entry.title,
                s.entry.summary,
                s.entry.source,
                s.entry.link,
                s.entry.published,
            )
            for s in store.entries.since()
        ]
        result = backtest(items, matcher(("ai", "AI")))
        assert result.topics["ai"].per_day == {"2025-03-01": 1, "2025-03-05": 1, "2025-03-10": 1}
    finally:
        store.close()


def test_format_backtest_adds_months_for_long_histories() -> None:
    items = [
        Item(str(n), "AI law", published=datetime(2025, 1 + n // 28, 1 + n % 28, tzinfo=UTC))
        for n in range(60)
    ]
    text = format_backtest(backtest(items, matcher(("ai", "AI"))), days=14)
    assert "matches per month (latest 3 of 3 months):" in text
    assert "2025-01        28" in text and "2025-03         4" in text


def test_explain_shows_the_score_its_thresholds_its_tier_and_what_moved_it() -> None:
    from aggregator.measure.explain import explain_scores

    m = matcher(("ai", "AI"), ("eo", "order"))
    topic = replace(TopicConfig("ai", "#ai", "AI"), model=Path("m.json"))
    scoring = load_scoring([topic], lambda path, topic: _ScoreFromTitle())
    for title, words in (("0.9 AI order", "it alerts now"),
                         ("0.6 AI order", 'review digest as "possibly relevant"'),
                         ("0.1 AI order", "it is stored, not delivered")):  # fmt: skip
        doc = Document(title)
        scores = explain_scores(doc, m.match(doc), scoring)
        assert set(scores) == {"ai"}  # eo has no model: its rule decides
        text = format_explain(m.explain(doc), scores=scores)
        ai, eo = text.split("\n\n", 1)
        assert "alerts from 0.80, review digest from 0.50" in ai and words in ai
        assert "what moved the score most: title +1.00" in ai
        assert "score" not in eo
