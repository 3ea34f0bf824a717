"""NEAR counts words as a reader does: "Trump's" is one word, and so is "back-to-office".

Tokens and phrases are unchanged (a phrase is still consecutive tokens, so "stay-at-home order"
matches both spellings); only the distance NEAR measures is in word slots.
"""

from __future__ import annotations

import pytest

from aggregator.config.model import TopicConfig
from aggregator.models import Document
from aggregator.rules.compile import word_slots
from aggregator.rules.matcher import TopicMatcher


def matches(query: str, title: str, summary: str = "") -> bool:
    matcher = TopicMatcher.compile([TopicConfig("t", "#t", query)])
    return bool(matcher.match(Document(title, summary)))


@pytest.mark.parametrize(
    ("query", "title", "expected"),
    [
        # a possessive is no word of its own: "Newsom's order" is one word apart
        ("Newsom NEAR/1 order", "Newsom's order stands", True),
        ("Newsom NEAR/1 order", "Newsom\u2019s order stands", True),  # curly apostrophe
        # a hyphenated compound is one word: Trump ... orders are 2 words apart, not 5 tokens
        ("Trump NEAR/2 orders", "Trump's back-to-office orders hurt veterans", True),
        ("Trump NEAR/1 orders", "Trump's back-to-office orders hurt veterans", False),
        ("Trump NEAR/1 ordered", "Trump-ordered release of files", True),
        ("Trump NEAR/2 orders", "Trump\u2019s back\u2013to\u2013office orders", True),  # dashes
        # contractions: the ending shares the slot of its word
        ("officials NEAR/2 order", "officials don't order it", True),
        # distances between words with no ' or - next to them are unchanged
        ("governor NEAR/3 order", "governor signs new order", True),
        ("governor NEAR/2 order", "governor signs new order", False),
        # an apostrophe that starts another word is no ending: O'Brien is two words
        ("Pat NEAR/3 order", "Pat O'Brien order", True),
        ("Pat NEAR/2 order", "Pat O'Brien order", False),
        # a dash with spaces around it joins nothing
        ("policy NEAR/1 order", "policy - the order", False),
    ],
)
def test_near_counts_word_slots(query: str, title: str, expected: bool) -> None:
    assert matches(query, title) is expected


@pytest.mark.parametrize(
    ("query", "title", "expected"),
    [
        # phrases still match token by token, inside a compound and across its spellings
        ('"stay-at-home order"', "Governor extends stay-at-home order", True),
        ('"stay at home order"', "Governor extends stay-at-home order", True),
        ('"stay-at-home order"', "Governor extends stay at home order", True),
        ('"back to office"', "Trump's back-to-office orders", True),
        # the parts of a compound and a possessive word stay matchable on their own
        ("office", "Trump's back-to-office orders", True),
        ('"Trump\'s"', "Trump's back-to-office orders", True),
        ("Trump", "Trump's back-to-office orders", True),
    ],
)
def test_phrases_and_parts_unchanged(query: str, title: str, expected: bool) -> None:
    assert matches(query, title) is expected


def test_near_stays_within_one_field() -> None:
    assert not matches("Newsom NEAR/3 order", "Newsom's plan", "order issued")
    assert matches("Newsom NEAR/3 order", "Newsom's plan", "Newsom's order issued")


def test_slots_of_text() -> None:
    assert word_slots("Trump's back-to-office orders") == [0, 0, 1, 1, 1, 2]
    assert word_slots("no apostrophe or hyphen") is None


def test_explain_agrees_with_match_and_highlights_the_words() -> None:
    matcher = TopicMatcher.compile([TopicConfig("t", "#t", "Trump NEAR/2 orders")])
    [explained] = matcher.explain(Document("Trump's back-to-office orders"))
    assert explained.matched
    assert explained.terms == ("Trump", "orders")


def test_not_near_vetoes_more_with_possessives() -> None:
    # the executive-orders court-order veto now sees "judge's order" as adjacent
    query = "(Trump NEAR/8 order) AND NOT (judge NEAR/1 order)"
    assert not matches(query, "Trump defies judge's order")
    assert matches(query, "Trump signs order")


def test_a_chain_of_near_uses_slots_at_every_link() -> None:
    query = "Newsom NEAR/1 stay NEAR/1 order"
    assert matches(query, "Newsom's stay-at-home order")
    assert not matches(query, "Newsom's new stay-at-home plan and order")
