"""``aggregator search``: past entries a topics.toml query matches, over a real database.

The full-text index only narrows the candidates; the topic matcher decides, so a query means
here what it means in topics.toml (capitals, phrases, NEAR, fields).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.measure.search import compile_search, fts_prefilter, search
from aggregator.models import Entry, TopicMatch
from aggregator.rules import syntax
from aggregator.store import Store
from tests.storing import Item, store_items

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)
FEED = "https://news.example/feed"


def entry(n: int, title: str, summary: str = "", *, days: float = 1, source: str = "Wire") -> Entry:
    link = f"https://news.example/{n}"
    published = NOW - timedelta(days=days)
    return Entry(FEED, f"g{n}", link, link, title, summary, published, f"h{n}", source)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "bot.db"
    store = Store.open(path)
    ai = TopicMatch("ai-policy", ("AI",))
    eo = TopicMatch("executive-orders", ("executive order",))
    store_items(
        store,
        [
            Item(
                entry(
                    1,
                    "Senate passes AI safety bill",
                    "Lawmakers voted on artificial intelligence rules.",
                ),
                (ai,),
                ("#ai-policy",),
            ),
            Item(
                entry(2, "Trump signs executive order on AI chips", days=2),
                (ai, eo),
                ("#ai-policy", "#executive-orders"),
            ),
            Item(entry(3, "Ai Weiwei opens a show in Berlin", "The artist said AI art is", days=3)),
            Item(entry(4, "Bakery wins pie contest", "A family bakery.", days=4, source="Local")),
            Item(entry(5, "Old AI law story", days=90)),
            Item(entry(6, "Governor's order closes schools", "Statewide closure.", days=1)),
            Item(entry(7, "The U.S. sets A.I. rules", days=1.5)),
        ],
        NOW,
    )
    store.close()
    return path


def found(db: Path, query: str, **kw: object) -> list[int]:
    store = Store.open(db)
    try:
        return [r.id for r in search(store, query, since=NOW - timedelta(days=30), **kw)]  # type: ignore[arg-type]
    finally:
        store.close()


def test_words_phrases_prefixes_and_capitals_mean_what_they_mean_in_topics(db: Path) -> None:
    assert found(db, "AI") == [1, 7, 2, 3]  # newest first; "Ai Weiwei" is not AI, "AI art" is
    assert found(db, '"executive order"') == [2]
    assert found(db, "legislat* OR bill") == [1]
    assert found(db, "title:AI") == [1, 7, 2]  # entry 3 has AI in its summary only
    assert found(db, "AI NOT chips") == [1, 7, 3]
    assert found(db, "NOT AI") == [6, 4]  # no word to look up: the window is read
    assert found(db, '"US sets"') == [7]
    assert found(db, "source:Local") == [4]
    assert found(db, "Governor NEAR/2 order") == [6]  # "Governor's" is one word


def test_a_topic_and_a_window_narrow_the_results(db: Path) -> None:
    assert found(db, "AI", topic="executive-orders") == [2]
    assert found(db, "AI", topic="ai-policy") == [1, 2]
    store = Store.open(db)
    try:
        old = search(store, "AI law", since=NOW - timedelta(days=365))
    finally:
        store.close()
    assert [r.entry.title for r in old] == ["Old AI law story"]


def test_the_prefilter_never_narrows_below_what_the_matcher_accepts() -> None:
    def pre(query: str) -> str | None:
        return fts_prefilter(syntax.parse(query).root)

    ai = '(("AI" OR ("A" + "I")))'  # "A.I." is the word AI to the matcher, A and I to the index
    assert pre('AI AND "safety rules"') == f'({ai} AND (("safety") AND ("rules")))'
    assert pre("regulat* OR legislature") == '((("regulat" *)) OR (("legislature")))'
    assert pre("AI OR NOT ban") is None  # one side has no word: everything is a candidate
    assert pre("AI NOT ban") == f"({ai})"  # NOT only narrows after the index
    assert pre("source:Reuters AI") == f"({ai})"
    assert pre('"U.S." AND tariffs') == '((("US" OR ("U" + "S"))) AND (("tariffs")))'
    matcher, fts = compile_search("AI NEAR/3 law")
    assert fts == f'({ai} AND (("law" OR ("l" + "a" + "w"))))'
    assert matcher.topic_names == ("search",)


def aggregator(*args: str) -> subprocess.CompletedProcess[str]:
    config = ROOT / "aggregator" / "config" / "defaults"
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_command_prints_json_and_text_and_refuses_a_bad_query_with_a_caret(db: Path) -> None:
    result = aggregator("--db", str(db), "search", '"AI safety" OR chips', "--json")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [r["title"] for r in results] == ["Senate passes AI safety bill",
                                             "Trump signs executive order on AI chips"]  # fmt: skip
    assert results[1]["topics"] == ["ai-policy", "executive-orders"]
    assert results[1]["story"] == 2 and results[1]["source"] == "Wire"
    assert set(results[0]) >= {"title", "link", "source", "published", "topics", "story"}
    text = aggregator("--db", str(db), "search", '"pie contest"')
    assert "Local: Bakery wins pie contest" in text.stdout and "not alerted" in text.stdout
    bad = aggregator("--db", str(db), "search", "AI AND (rules))")
    assert bad.returncode == 2
    assert "this ')' has no matching '(' at column 15" in bad.stderr
    assert "AI AND (rules))\n                  ^" in bad.stderr
    unknown = aggregator("--db", str(db), "search", "AI", "--topic", "sports")
    assert unknown.returncode == 2 and "unknown topic 'sports'" in unknown.stderr
