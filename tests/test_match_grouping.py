"""The shortcuts that make big ORs cheap change no verdict, matched word or labelled clause.

An OR's phrases are tried only when their first word is present, and a run of phrases that
prove the same labelled clause is tested as one; these cases would break a wrong shortcut.
"""

from __future__ import annotations

import pytest

from aggregator.config.model import TopicConfig
from aggregator.models import Document
from aggregator.rules.matcher import TopicMatcher

# phrases that share a first word, one under a field, one ending in a wildcard
PHRASES = '"export control*" OR "export ban" OR title:"export curb" OR "data center" OR "chip act"'


def match(query: str, title: str, summary: str = "") -> list[tuple[str, tuple[str, ...]]]:
    matcher = TopicMatcher.compile([TopicConfig(name="t", channel="#t", query=query)])
    return [(m.topic, m.terms) for m in matcher.match(Document(title, summary))]


@pytest.mark.parametrize(
    ("title", "summary", "terms"),
    [
        ("New export controls", "", ("export controls",)),
        ("An export ban and export controls", "", ("export ban", "export controls")),
        ("Export curb on chips", "", ("Export curb",)),
        ("Chips", "an export curb", None),  # the title: field holds for that phrase only
        ("Export data", "", None),  # the first word alone is no phrase
        ("Chip act and data center", "", ("Chip act", "data center")),
        ("Center of data", "", None),
    ],
)
def test_an_or_of_phrases_matches_each_phrase_where_it_may(
    title: str, summary: str, terms: tuple[str, ...] | None
) -> None:
    assert match(PHRASES, title, summary) == ([("t", terms)] if terms else [])


def test_phrases_of_an_or_under_near_and_and_still_count() -> None:
    query = f'({PHRASES}) NEAR/3 (rule OR law) AND (Congress OR "White House")'
    assert match(query, "White House: export ban law") == [
        ("t", ("White House", "export ban", "law"))
    ]
    assert match(query, "White House: export ban, said an official, is a law") == []


QUERY = """
(  # 1. the subject
  AI OR "machine learning" OR "neural network"
)
AND
(  # 2. the action
  # 2a. law
  "executive order" OR "state law" OR "federal law" OR statute
  OR "hereby ordered"  # the formula
  OR "authority vested" OR "code of practice"
)
"""


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("AI executive order", ("1", "2", "2a")),
        ("AI code of practice", ("1", "2", "2a")),
        ("Machine learning: it is hereby ordered", ("1", "2", "the formula")),
        ("Neural network federal law", ("1", "2", "2a")),
        ("AI statute", ("1", "2", "2a")),
    ],
)
def test_a_run_of_labelled_phrases_proves_its_clause(title: str, expected: tuple[str, ...]) -> None:
    matcher = TopicMatcher.compile([TopicConfig(name="t", channel="#t", query=QUERY)])
    found = matcher.match(Document(title))
    assert [m.clauses for m in found] == [expected]
    assert matcher.clause_hits(Document(title)) == {"t": expected}


# -- the prefilter: a document with no word that could start a need is refused unindexed ---------

RULES = 'Congress NEAR/5 (AI OR "machine learning") OR (chips AND export*)'
ITEMS = [
    ("Congress weighs AI rules", True),
    ("Machine learning bill: Congress votes", True),
    ("Chips face new export controls", True),
    ("Export of chips", True),
    ("Congress adjourns", False),
    ("Chips are down", False),
]


def test_words_first_seen_by_clause_hits_or_explain_still_let_items_through() -> None:
    """The words an index looked up are remembered for the prefilter too, needs and all."""
    matcher = TopicMatcher.compile([TopicConfig(name="t", channel="#t", query=RULES)])
    for title, _ in ITEMS:
        matcher.clause_hits(Document(title))
        matcher.explain(Document(title))
    assert [bool(matcher.match(Document(title))) for title, _ in ITEMS] == [m for _, m in ITEMS]


def test_the_prefilter_forgets_and_relearns_words_without_refusing_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A word cache that fills up is cleared, whatever it had learned; verdicts stay the same."""
    from aggregator.rules import matcher as module

    monkeypatch.setattr(module, "_CACHE_LIMIT", 4)
    matcher = TopicMatcher.compile([TopicConfig(name="t", channel="#t", query=RULES)])
    for _ in range(3):
        for title, expected in ITEMS:
            summary = "many other words in a summary that overflow the cache"
            assert bool(matcher.match(Document(title, summary))) is expected, title
            matcher.clause_hits(Document(summary, title))


# -- the prefilter's second step: could some query hold with these words present anywhere? -------

TOPICS = [
    ("not-only-vetoes", "(AI OR chatbot*) AND NOT (regulat* OR Congress)"),
    ("near-fields", 'title:(export OR "export control*") NEAR/2 (chips OR GPU)'),
    ("phrases", '("Supreme Court" OR "trade court" OR "court of appeals") AND tariff*'),
    (
        "nested",
        '((Trump OR Biden) AND (order OR "executive action")) OR ("National Guard" AND Gov)',
    ),
]


@pytest.mark.parametrize(
    ("title", "summary", "expected"),
    [
        ("AI startup raises money", "", ["not-only-vetoes"]),
        ("Chatbots everywhere", "Congress is silent", []),
        ("Export controls on chips", "", ["near-fields"]),
        ("Chips", "export controls", []),  # the words are present, but not in the title
        ("Trade court strikes tariffs", "", ["phrases"]),
        ("Court of appeals", "on tariffs", ["phrases"]),
        ("Supreme tariffs", "a court", []),
        ("Biden's executive action", "", ["nested"]),
        ("Gov sends the National Guard", "", ["nested"]),
        ("National Guard", "Trump order", ["nested"]),
        ("National Guard in Trump's order", "AI on GPU export", ["not-only-vetoes", "nested"]),
    ],
)
def test_every_topic_whose_query_holds_is_found_whatever_the_others_need(
    title: str, summary: str, expected: list[str]
) -> None:
    matcher = TopicMatcher.compile(
        [TopicConfig(name=name, channel="#t", query=query) for name, query in TOPICS]
    )
    assert [m.topic for m in matcher.match(Document(title, summary))] == expected
