"""Which ``# labelled`` clauses of a topic's query held: what a relevance model reads.

The matcher tells them from the index it built for matching, for the topics that matched
(``TopicMatch.clauses``), and for every topic on request (``clause_hits``, for training).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config.load import parse_config
from aggregator.config.model import TopicConfig
from aggregator.ingest.workers import ParseJob, ParsePool
from aggregator.models import Document, ParsedFeed, TopicMatch
from aggregator.rules import syntax as rules
from aggregator.rules.compile import clause_key
from aggregator.rules.matcher import RuleSpec, TopicMatcher

ROOT = Path(__file__).resolve().parents[1]

QUERY = """
(  # 1. The story is about AI
  AI OR "artificial intelligence"
)
AND
(  # 2. ... and a government acts on it
  # 2a. Lawmaking
  regulat* OR Congress
  # 2b. Agencies
  OR FTC OR "Justice Department"
  # 2c. Courts, unless only a company sues
  OR (lawsuit AND NOT (company NEAR/3 sues))
)
"""


def clauses(query: str, title: str, summary: str = "") -> tuple[str, ...] | None:
    """The matched topic's clauses, or None when it did not match."""
    matcher = TopicMatcher.compile([TopicConfig("t", "#t", query)])
    found = matcher.match(Document(title, summary))
    return found[0].clauses if found else None


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Congress moves to regulate AI", ("1", "2", "2a")),
        ("FTC and Congress look at artificial intelligence", ("1", "2", "2a", "2b")),
        ("Justice Department probes AI", ("1", "2", "2b")),
        # a lawsuit holds 2c; the words under its NOT ("company ... sues") are a clause too
        ("AI lawsuit filed", ("1", "2", "2c")),
    ],
)
def test_matched_topics_carry_the_clauses_that_held(title: str, expected: tuple[str, ...]) -> None:
    assert clauses(QUERY, title) == expected


def test_no_match_no_clauses_and_a_query_without_labels_has_none() -> None:
    assert clauses(QUERY, "Congress passes a budget") is None
    assert clauses("AI AND Congress", "Congress moves to regulate AI") == ()


def test_clause_hits_cover_every_topic_matched_or_not() -> None:
    matcher = TopicMatcher.compile(
        [TopicConfig("ai", "#a", QUERY), TopicConfig("plain", "#p", "budget")]
    )
    hits = matcher.clause_hits(Document("Congress passes a budget"))
    assert hits == {"ai": ("2", "2a"), "plain": ()}  # ai did not match: 1 is missing
    assert matcher.clause_keys("ai") == ("1", "2", "2a", "2b", "2c")
    with pytest.raises(KeyError):
        matcher.clause_keys("nope")


def test_words_under_not_count_as_present() -> None:
    query = "AI AND NOT (  # 3. a company suing\n company NEAR/3 sues )"
    matcher = TopicMatcher.compile([TopicConfig("t", "#t", query)])
    assert matcher.clause_hits(Document("AI: company sues rival")) == {"t": ("3",)}
    assert matcher.match(Document("AI: company sues rival")) == []


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("2a. Lawmaking and executive action", "2a"),
        ("1. The instrument, by name.", "1"),
        ('the abbreviation ("Trump\'s AI EO") in caps', 'the abbreviation ("trump\'s ai eo") in'),
        ("... or the state by name", "... or the state by name"),
    ],
)  # fmt: skip
def test_clause_keys_are_numbers_or_the_first_six_words(label: str, key: str) -> None:
    assert clause_key(label) == key


RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>
<item><guid>a</guid><title>Congress moves to regulate AI</title><link>https://e.org/a</link></item>
<item><guid>b</guid><title>Weather is fine</title><link>https://e.org/b</link></item>
</channel></rss>"""


def test_parse_workers_return_the_clauses_from_their_own_process() -> None:
    """The worker path: parsed and matched in another interpreter, the matches pickled back."""
    matcher = TopicMatcher.compile([TopicConfig("ai", "#a", QUERY)])
    jobs = [(n, ParseJob(f"https://e.org/{n}.xml", RSS, "", "", matcher.rules)) for n in range(4)]
    with ParsePool(workers=2) as pool:  # two workers: every job is parsed in a worker process
        outcomes = [outcome for _, outcome in pool.parse_stream(jobs)]
    for outcome in outcomes:
        assert isinstance(outcome, ParsedFeed)
        assert outcome.matches == (
            (TopicMatch("ai", ("Congress", "regulate", "AI"), ("1", "2", "2a")),),
            (),
        )


def _reference(matcher_topics: list[TopicConfig], doc: Document) -> dict[str, set[str]]:
    """Every labelled node tested one by one, the root and NOTs aside: the definition."""
    matcher = TopicMatcher.compile([RuleSpec(t.name, t.query, t.exclude) for t in matcher_topics])
    texts = matcher._texts(doc)
    index = matcher._index(matcher._tokens(texts), texts)
    out: dict[str, set[str]] = {}
    for topic in matcher._topics:
        query = topic.query.query
        held = set()
        for node in rules.walk(query.root):
            if node is query.root or isinstance(node, rules.Not):
                continue
            label = query.label_of(node)
            if label and topic.query.nodes[id(node)].test(index):
                held.add(clause_key(label))
        out[topic.name] = held
    return out


def test_the_shipped_topics_agree_with_testing_every_labelled_node() -> None:
    topics = list(
        parse_config({"topics.toml": (ROOT / "config" / "topics.toml").read_text()}).topics
    )
    matcher = TopicMatcher.compile(topics)
    titles = [t for topic in topics for t in (*topic.examples_match, *topic.examples_no_match)]
    assert titles
    labelled = 0
    for title in titles:
        doc = Document(title, "The governor's order takes effect as lawmakers weigh AI rules.")
        expected = _reference(topics, doc)
        got = matcher.clause_hits(doc)
        assert {k: set(v) for k, v in got.items()} == expected, title
        for match in matcher.match(doc):
            assert set(match.clauses) == expected[match.topic]
        labelled += sum(map(len, expected.values()))
    assert labelled > len(titles)  # the shipped topics do label their clauses
