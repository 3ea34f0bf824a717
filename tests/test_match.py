"""Matcher semantics: case, wildcards, proximity, fields, exclusions, normalisation, explain."""

from __future__ import annotations

import random

import pytest

from aggregator.config.model import TopicConfig
from aggregator.errors import RuleSyntaxError
from aggregator.models import Document
from aggregator.rules.matcher import TopicMatcher, check_examples
from aggregator.text import normalise as text


def topic(
    query: str, exclude: str | None = None, name: str = "t", **examples: tuple[str, ...]
) -> TopicConfig:
    return TopicConfig(
        name=name,
        channel="#t",
        query=query,
        exclude=exclude,
        examples_match=examples.get("match", ()),
        examples_no_match=examples.get("no_match", ()),
    )


def matches(
    query: str,
    title: str,
    summary: str = "",
    *,
    exclude: str | None = None,
    source: str = "",
    link: str = "",
) -> bool:
    matcher = TopicMatcher.compile([topic(query, exclude)])
    return bool(matcher.match(Document(title, summary, source, link)))


@pytest.mark.parametrize(
    ("query", "title", "expected"),
    [
        # capitals only match capitals; other words ignore case
        ("AI", "New AI rules", True),
        ("AI", "Ai Weiwei opens a show", False),
        ("AI", "She said no", False),  # whole words only
        ("AI", "AI's new rules", True),
        ("AI", "A.I. rules are coming", True),  # initialisms with dots
        ("AI", "AIs are coming", False),
        ("ai", "Ai Weiwei opens a show", True),
        ("ai", "AI rules", True),
        ("FTC", "ftc sues", False),
        ("regulation", "REGULATION IS COMING", True),
        ("Regulation", "new regulation", True),
        # whole words
        ("order", "Judge orders release", False),
        ("order", "Executive order signed", True),
        ("law", "lawmakers act", False),
        # wildcards match word beginnings
        ("regulat*", "Regulators move", True),
        ("regulat*", "new regulation", True),
        ("regulat*", "deregulation push", False),
        ("lawmaker*", "lawmakers act", True),
        ('"execut* order*"', "Executive orders signed", True),
        ('"execut* order*"', "orders executive", False),
        # phrases are consecutive words, across punctuation
        ('"executive order"', "Trump's executive order on AI", True),
        ('"executive order"', "An order, executive style", False),
        ('"executive order"', "executive-order fight", True),
        ('"authority vested in me"', "By the authority vested in me as President", True),
        # AND, OR, NOT, adjacency
        ("AI law", "AI law passes", True),
        ("AI law", "AI passes", False),
        ("AI OR law", "law passes", True),
        ("AI NOT law", "AI passes", True),
        ("AI NOT law", "AI law passes", False),
        ("NOT sports", "AI rules", True),  # a pure negation needs no word present
        ("(AI OR robots) AND (ban OR rules)", "robots ban", True),
        ("(AI OR robots) AND (ban OR rules)", "robots dance", False),
    ],
)
def test_word_semantics(query: str, title: str, expected: bool) -> None:
    assert matches(query, title) is expected


@pytest.mark.parametrize(
    ("query", "title", "expected"),
    [
        ("AI NEAR/3 law", "AI safety law", True),
        ("AI NEAR/3 law", "law on AI", True),  # either order
        ("AI NEAR/1 law", "AI safety law", False),  # one word between: distance 2
        ("AI NEAR/2 law", "AI safety law", True),
        ("AI NEAR/3 law", "AI is a thing and so is the law", False),
        (
            '"executive order" NEAR/3 (AI OR "artificial intelligence")',
            "executive order on AI",
            True,
        ),
        (
            '"executive order" NEAR/3 (AI OR "artificial intelligence")',
            "artificial intelligence executive order",
            True,
        ),
        (
            '"executive order" NEAR/3 (AI OR "artificial intelligence")',
            "executive order on climate, and later on AI",
            False,
        ),
        ("(a NEAR/1 b) NEAR/1 c", "a b c", True),
        ("(a NEAR/1 b) NEAR/1 c", "a b x c", False),
        ("(a NEAR/1 b) NEAR/2 c", "a b x c", True),  # c is two words after b
        ("(a NEAR/1 b) NEAR/2 c", "a b x x c", False),
    ],
)
def test_proximity(query: str, title: str, expected: bool) -> None:
    assert matches(query, title) is expected


def test_proximity_and_phrases_never_span_two_fields() -> None:
    assert not matches("AI NEAR/2 law", "rules for AI", "law firms grow")
    assert not matches('"AI law"', "rules for AI", "law firms grow")
    assert matches("AI NEAR/2 law", "rules for AI", "AI law firms grow")


def test_fields() -> None:
    doc = (
        "AI rules",
        "the law changes",
        "NPR News",
        "https://www.whitehouse.gov/presidential-actions/x",
    )
    assert matches("title:AI", *doc[:2])
    assert not matches("summary:AI", *doc[:2])
    assert matches("summary:law", *doc[:2])
    assert matches("law", *doc[:2])  # plain words look in title and summary
    assert not matches("NPR", *doc[:2], source=doc[2])  # ... not in the source
    assert matches("source:NPR", *doc[:2], source=doc[2])
    assert matches('source:"npr news"', *doc[:2], source=doc[2])
    assert not matches("whitehouse", *doc[:2], link=doc[3])
    assert matches('link:"whitehouse.gov/presidential-actions"', *doc[:2], link=doc[3])
    assert matches("title:(rules OR ban) AND summary:law", *doc[:2])


def test_exclusion_vetoes_a_match() -> None:
    assert matches("AI", "Bill Gates on AI")
    assert not matches("AI", "Bill Gates on AI", exclude='"Bill Gates"')
    assert matches("AI", "AI bill passes", exclude='"Bill Gates"')


@pytest.mark.parametrize(
    ("query", "title", "summary"),
    [
        ("AI", "<b>AI</b> rules", ""),
        ('"executive order"', "", "<p>An <em>executive</em> order</p>"),
        ("law", "Tom &amp; Jerry law", ""),
        ('"Trump\'s order"', "Trump\u2019s order", ""),  # curly apostrophe
        ("\u201cTrump\u2019s order\u201d", "Trump's order", ""),  # curly quotes in the query
        ('"AI-generated"', "AI\u2011generated images", ""),  # non-breaking hyphen
        ('"AI-generated"', "AI\u2014generated images", ""),  # em dash
        ("Macron", "Macr\u00f3n speaks", ""),  # accents folded in text
        ("Mac\u00f3n", "Macon speaks", ""),  # ... and in the query
        ("Zurich", "Zu\u0308rich", ""),  # combining accent
        ("AI", "\uff21\uff29 rules", ""),  # full-width letters (NFKC)
        ("regulation", "re\u00adgulation", ""),  # soft hyphen
        ("xAI", "<a href='x'>xAI</a> sued", ""),
    ],
)
def test_text_is_normalised_before_matching(query: str, title: str, summary: str) -> None:
    assert matches(query, title, summary)


def test_script_and_style_are_not_text() -> None:
    assert not matches("secret", "<script>var secret = 1</script>Title")
    assert text.strip_html("a<br>b") == "a b"
    assert text.strip_html("plain & simple") == "plain & simple"


def test_match_reports_terms_as_written_in_the_text() -> None:
    matcher = TopicMatcher.compile(
        [topic('(AI OR "artificial intelligence") AND (regulat* OR "executive order")')]
    )
    found = matcher.match(
        Document(
            "Trump\u2019s Executive Order on A.I.", "New <i>artificial intelligence</i> regulations"
        )
    )
    assert len(found) == 1
    assert found[0].topic == "t"
    assert found[0].terms == ("Executive Order", "A.I.", "artificial intelligence", "regulations")


def test_terms_under_not_are_not_reasons() -> None:
    matcher = TopicMatcher.compile([topic("AI NOT sports")])
    assert matcher.match(Document("AI rules"))[0].terms == ("AI",)


def test_near_reports_only_the_words_that_were_near() -> None:
    matcher = TopicMatcher.compile([topic("AI NEAR/1 law")])
    found = matcher.match(Document("AI law and, much later, another AI"))
    assert found[0].terms == ("AI", "law")


def test_a_near_chain_reports_each_span_once_instead_of_doubling_them_per_link() -> None:
    """Each NEAR of a chain used to list its left spans once per right span: 2**links spans, so
    a 32-link chain (the depth limit) over a title with its words exhausted memory."""
    from aggregator.rules.compile import Atoms, Index, compile_rule

    words = [f"word{i}" for i in range(17)]
    rule = compile_rule(" NEAR/3 ".join(words), Atoms())
    index = Index([" ".join(words)])
    index.update({i: [i] for i in range(17)})  # atom i (word i) at position i of the title
    spans = rule.root.spans(index)
    # (((word0 NEAR word1) NEAR word2) ...) NEAR word16: the last link keeps what is near word16.
    assert sorted(spans) == [(13, 13), (14, 14), (15, 15), (16, 16)]
    matcher = TopicMatcher.compile([topic(" NEAR/3 ".join(words))])
    assert matcher.match(Document(" ".join(words)))[0].terms == tuple(words[13:])


def test_topics_keep_config_order_and_are_independent() -> None:
    matcher = TopicMatcher.compile(
        [topic("order", name="b-orders"), topic("AI", name="a-ai"), topic("NOT x", name="c-all")]
    )
    names = [m.topic for m in matcher.match(Document("AI order"))]
    assert names == ["b-orders", "a-ai", "c-all"]
    assert [m.topic for m in matcher.match(Document("nothing"))] == ["c-all"]
    assert [m.topic for m in matcher.match(Document("x"))] == []


def test_many_topics_share_words() -> None:
    topics = [topic(f"AI AND w{i}", name=f"t{i}") for i in range(50)]
    matcher = TopicMatcher.compile(topics)
    assert [m.topic for m in matcher.match(Document("AI w7 w9"))] == ["t7", "t9"]


def test_compile_raises_on_a_bad_query_naming_the_topic() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        TopicMatcher.compile([topic("AI AND (law", name="ai")])
    assert caught.value.message == "topic 'ai': this '(' is never closed"
    assert caught.value.column == 8
    with pytest.raises(RuleSyntaxError, match="topic 't'"):
        TopicMatcher.compile([topic("AI", exclude="NEAR/3")])


def test_matcher_is_reusable_and_deterministic() -> None:
    matcher = TopicMatcher.compile([topic("regulat*")])
    docs = [Document(f"regulation number {i}") for i in range(5)] + [Document("nothing")]
    first = [matcher.match(d) for d in docs]
    assert first == [matcher.match(d) for d in docs]


# -- explain -------------------------------------------------------------------------------------


def test_explain_says_which_clause_matched_and_highlights_words() -> None:
    matcher = TopicMatcher.compile(
        [topic('"executive order" OR (AI NEAR/3 law)  # two ways in', name="eo")]
    )
    (e,) = matcher.explain(Document("Biden signs executive order", "It covers AI law"))
    assert e.matched and e.query_matched
    assert [(c.text, c.matched) for c in e.clauses] == [
        ('"executive order"', True),
        ("(AI NEAR/3 law)", True),
    ]
    assert e.clauses[0].terms == ("executive order",)
    assert e.terms == ("executive order", "AI", "law")
    title, summary = e.highlights
    assert title.field == "title"
    assert title.text[slice(*title.spans[0])] == "executive order"
    assert [summary.text[a:b] for a, b in summary.spans] == ["AI", "law"]


def test_explain_names_the_exclusion_that_vetoed() -> None:
    matcher = TopicMatcher.compile(
        [topic("AI", exclude='"Bill Gates" OR "scaling law*"', name="ai")]
    )
    (e,) = matcher.explain(Document("Bill Gates on AI"))
    assert not e.matched
    assert e.query_matched
    assert [(v.text, v.terms) for v in e.vetoed_by] == [('"Bill Gates"', ("Bill Gates",))]


def test_explain_for_a_miss_lists_the_clauses_that_failed() -> None:
    matcher = TopicMatcher.compile([topic("AI AND (law OR rules)", name="ai")])
    (e,) = matcher.explain(Document("AI is everywhere"))
    assert not e.matched and not e.query_matched
    assert [(c.text, c.matched) for c in e.clauses] == [("AI", True), ("(law OR rules)", False)]
    assert e.vetoed_by == ()


def test_explain_covers_every_topic_in_order() -> None:
    matcher = TopicMatcher.compile([topic("a", name="x"), topic("b", name="y")])
    assert [e.topic for e in matcher.explain(Document("b"))] == ["x", "y"]
    assert [e.matched for e in matcher.explain(Document("b"))] == [False, True]


# -- examples ------------------------------------------------------------------------------------


def test_check_examples_names_topic_and_example() -> None:
    topics = [
        topic(
            "AI AND (law OR rules)",
            exclude='"Bill Gates"',
            name="ai-policy",
            match=("New AI law passes", "AI is great"),
            no_match=("OpenAI launches model", "AI rules for kids", "Bill Gates on AI law"),
        )
    ]
    problems = check_examples(topics)
    assert problems == [
        "topics.ai-policy.examples.match[1]: 'AI is great' should match topic 'ai-policy' "
        "but does not",
        "topics.ai-policy.examples.no_match[1]: 'AI rules for kids' should not match topic "
        "'ai-policy' but does (matched: AI, rules)",
    ]


def test_check_examples_passes_when_all_hold() -> None:
    assert check_examples([topic("AI", match=("AI news",), no_match=("said",))]) == []


def test_explain_expands_clauses_that_held_with_their_labels() -> None:
    query = """
    (AI OR robots)  # the subject
    AND (
      # lawmaking
      law OR bill
      # courts
      OR (lawsuit AND copyright)
    )
    """
    matcher = TopicMatcher.compile([topic(query, name="ai")])
    (e,) = matcher.explain(Document("AI lawsuit over copyright and a new law"))
    assert e.combine == "all"
    subject, action = e.clauses
    assert subject.label == "the subject" and subject.parts == ()  # words only: not expanded
    assert action.label == "lawmaking"
    assert [(p.label, p.text, p.terms) for p in action.parts] == [
        ("lawmaking", "law", ("law",)),
        ("courts", "(lawsuit AND copyright)", ("lawsuit", "copyright")),
    ]
    courts = action.parts[1]
    assert [p.text for p in courts.parts] == ["lawsuit", "copyright"]  # an AND shows each part


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("U.S. law", ["U.S.", "law"]),
        ("U.S law", ["U.S", "law"]),
        ("A.I.-made", ["A.I.", "made"]),
        ("x.com site", ["x", "com", "site"]),
        ("whitehouse.gov/presidential-actions", ["whitehouse", "gov", "presidential", "actions"]),
        ("Mr.Smith", ["Mr", "Smith"]),
        ("3.5 billion", ["3", "5", "billion"]),
        ("Trump's order", ["Trump", "s", "order"]),
        ("r\u00e9sum\u00e9", ["r\u00e9sum\u00e9"]),
    ],
)
def test_words(sample: str, expected: list[str]) -> None:
    assert text.words(sample) == expected
    assert [sample[a:b] for a, b in text.word_spans(sample)] == expected


def test_the_fast_path_for_ascii_words_finds_what_the_pattern_finds() -> None:
    # words() splits plain ASCII without a regex; it must agree with WORD everywhere, above all
    # around dots (initialisms), underscores, digits and the first and last character.
    rng = random.Random(11)
    alphabet = "aZq9._-' \t\n,;:/U.S.\u00e9"
    samples = ["", ".", ".a", "a.", "a.b", "1.a", "a.1", "_a_b", "a_b.c_d", "e.g. x", "\u00e9.b"]
    samples += [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(20_000)
    ]
    differing = [s for s in samples if text.words(s) != text.WORD.findall(s)]
    assert differing == []
    ascii_plain = sum(1 for s in samples if s.isascii() and not text._may_hold_initialism(s))
    assert ascii_plain > 1000  # the fast path was exercised, not only the pattern


def test_the_skip_for_text_without_a_required_word_never_changes_a_verdict() -> None:
    # A document with none of the words a topic requires is answered without indexing; words
    # seen that way are remembered. A phrase is required by its rarest word ("vested"), not its
    # first ("by"), and the memory must not hide a word from a later document.
    matcher = TopicMatcher.compile(
        [
            topic('"by the authority vested in me"', name="order"),
            topic("NOT (football OR soccer)", name="not-sport"),
            topic("AI NEAR/3 rules", name="ai"),
        ]
    )
    docs = [
        ("by the authority of the board", ["not-sport"]),
        ("By the authority vested in me as President", ["order", "not-sport"]),
        ("vested interests in football", []),
        ("New AI rules, by the authority vested in me", ["order", "not-sport", "ai"]),
        ("football rules for AI", ["ai"]),
    ]
    for _ in range(2):  # the second pass runs with every word already remembered
        for title, expected in docs:
            found = [m.topic for m in matcher.match(Document(title, "", "", ""))]
            assert found == expected, title
    only_phrases = TopicMatcher.compile([topic('"by the authority vested in me"')])
    for title, expected in docs:
        found = [m.topic for m in only_phrases.match(Document(title, "", "", ""))]
        assert found == (["t"] if "order" in expected else []), title
