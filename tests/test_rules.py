"""The rule language's parser: the trees it builds and the errors it gives, with their columns."""

from __future__ import annotations

import pytest

from aggregator.errors import RuleSyntaxError
from aggregator.rules import syntax as rules
from aggregator.rules.syntax import And, Near, Not, Or, Word, Words, parse


def shape(node: rules.Node) -> object:
    """A compact, comparable form of a tree: words as strings, operators as tuples."""
    if isinstance(node, Words):
        text = " ".join(
            ("=" if w.exact_case else "") + w.text + ("*" if w.prefix else "") for w in node.words
        )
        if node.fields != rules.DEFAULT_FIELDS:
            text = "+".join(sorted(node.fields)) + ":" + text
        return text
    if isinstance(node, And):
        return ("AND", *[shape(c) for c in node.children])
    if isinstance(node, Or):
        return ("OR", *[shape(c) for c in node.children])
    if isinstance(node, Not):
        return ("NOT", shape(node.child))
    assert isinstance(node, Near)
    return (f"NEAR/{node.distance}", shape(node.left), shape(node.right))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("regulation", "regulation"),
        ("Regulation", "regulation"),  # case-insensitive unless written in capitals
        ("AI", "=AI"),  # capitals: exact case
        ("FTC", "=FTC"),
        ('"U.S."', "=US"),  # an initialism is one word
        ("regulat*", "regulat*"),
        ('"executive order"', "executive order"),
        ("\u201cexecutive order\u201d", "executive order"),  # curly quotes work as quotes
        ('"execut* order*"', "execut* order*"),
        ("AI-generated", "=AI generated"),  # a hyphenated word is a phrase
        ("r\u00e9gulation", "regulation"),  # accents are folded as in documents
        ("a b", ("AND", "a", "b")),  # adjacency is AND
        ("a AND b", ("AND", "a", "b")),
        ("a OR b", ("OR", "a", "b")),
        ("a OR b c", ("OR", "a", ("AND", "b", "c"))),  # AND binds tighter than OR
        ("(a OR b) c", ("AND", ("OR", "a", "b"), "c")),
        ("NOT a", ("NOT", "a")),
        ("a NOT b", ("AND", "a", ("NOT", "b"))),
        ("NOT a b", ("AND", ("NOT", "a"), "b")),
        ("NOT NOT a", ("NOT", ("NOT", "a"))),
        ("a NEAR/8 b", ("NEAR/8", "a", "b")),
        ("NOT a NEAR/3 b", ("NOT", ("NEAR/3", "a", "b"))),  # NEAR binds tightest
        (
            '"executive order" NEAR/8 (AI OR "artificial intelligence")',
            ("NEAR/8", "executive order", ("OR", "=AI", "artificial intelligence")),
        ),
        ("a NEAR/2 b NEAR/3 c", ("NEAR/3", ("NEAR/2", "a", "b"), "c")),
        ("title:AI", "title:=AI"),
        ('summary:"fair use"', "summary:fair use"),
        ("source:whitehouse", "source:whitehouse"),
        ("link:whitehouse.gov", "link:whitehouse gov"),
        ("TITLE:ai", "title:ai"),  # field names ignore case
        ("title:(a OR b)", ("OR", "title:a", "title:b")),
        ("title:(a OR summary:b)", ("OR", "title:a", "summary:b")),  # innermost field wins
        ("title: a", "title:a"),  # space after the colon is fine
        ('"and"', "and"),  # a quoted operator word is a word
        ("a # comment OR b\nOR c", ("OR", "a", "c")),
        ('"#AI" OR b', ("OR", "=AI", "b")),  # '#' inside quotes is not a comment
        ("9:30", "9 30"),  # digits before a colon are not a field
    ],
)
def test_parse_builds_the_expected_tree(query: str, expected: object) -> None:
    assert shape(parse(query).root) == expected


@pytest.mark.parametrize(
    ("query", "column", "fragment"),
    [
        ("", 1, "empty"),
        ("   # only a comment", 1, "empty"),
        ("AI AND", 7, "ends too early"),
        ("AI OR", 6, "ends too early"),
        ("NOT", 4, "ends too early"),
        ("(AI OR law", 1, "never closed"),
        ("AI)", 3, "no matching '('"),
        ("AI OR )", 7, "found ')'"),
        ("()", 1, "empty"),
        ('"executive order', 1, "quote is never closed"),
        ('AI ""', 4, "phrase is empty"),
        ("AI or law", 4, "capitals"),
        ("AI and law", 4, "capitals"),
        ("not AI", 1, "capitals"),
        ("AI NEAR law", 4, "NEAR/N"),
        ("AI near/5 law", 4, "NEAR/N"),
        ("AI NEAR/x law", 4, "NEAR/N"),
        ("AI NEAR/0 law", 4, "1 to 100"),
        ("AI NEAR/101 law", 4, "1 to 100"),
        ("AI NEAR/5", 10, "ends too early"),
        ("NEAR/5 AI", 1, "expected a word"),
        ("foo:bar", 1, "unknown field"),
        ("AI https://x", 4, "unknown field"),
        ("title:", 7, "followed by"),
        ("title:)", 7, "followed by"),
        ("re*g", 3, "'*' only goes"),
        ("*AI", 1, "'*' only goes"),
        ("ab*", 1, "at least 3 letters"),
        ("-AI", 1, "not an operator"),
        ("AI +law", 4, "not an operator"),
        ("&&", 1, "no letters or digits"),
        ("AI NEAR/3 (law AND bill)", 11, "NEAR needs"),
        ("(a b) NEAR/3 c", 1, "NEAR needs"),
        ("a NEAR/3 NOT b", 10, "expected a word"),
    ],
)
def test_syntax_errors_point_at_the_column(query: str, column: int, fragment: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse(query)
    error = caught.value
    assert error.column == column, error
    assert fragment in error.message
    assert error.query == query


def test_error_in_a_multi_line_query_points_into_its_own_line() -> None:
    query = "AI OR law   # fine\nOR (bill AND\n    regulat*"
    with pytest.raises(RuleSyntaxError) as caught:
        parse(query)
    error = caught.value
    assert "query line 2" in error.message
    assert error.query == "OR (bill AND"
    assert error.column == 4
    assert error.pointer() == "OR (bill AND\n   ^"


def test_error_pointer_draws_a_caret_under_the_column() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse("AI OR (law")
    assert caught.value.pointer() == "AI OR (law\n      ^"
    assert str(caught.value) == "this '(' is never closed at column 7"


def test_words_carry_case_and_wildcard_flags() -> None:
    node = parse("NIST*").root
    assert isinstance(node, Words)
    assert node.words == (Word("NIST", exact_case=True, prefix=True),)
    node = parse("Nvidia").root
    assert isinstance(node, Words)
    assert node.words == (Word("nvidia"),)


def test_clause_text_drops_comments_and_folds_whitespace() -> None:
    query = parse('(AI   # the subject\n OR "artificial intelligence")\nAND law')
    root = query.root
    assert isinstance(root, And)
    assert query.text_of(root.children[0]) == '(AI OR "artificial intelligence")'
    assert query.text_of(root.children[1]) == "law"


def test_field_prefix_is_part_of_the_clause_text() -> None:
    query = parse('title:"executive order" OR x')
    root = query.root
    assert isinstance(root, Or)
    assert query.text_of(root.children[0]) == 'title:"executive order"'


def test_walk_visits_every_node() -> None:
    root = parse("a OR (b NEAR/2 c) NOT d").root
    kinds = [type(n).__name__ for n in rules.walk(root)]
    assert kinds.count("Words") == 4
    assert {"Or", "And", "Near", "Not"} <= set(kinds)


def test_labels_come_from_the_comments_that_introduce_clauses() -> None:
    source = """
(  # 1. the subject
  AI OR robots
)
AND
(
  # 2a. lawmaking
  # (two lines of comment are one block)
  law OR bill
  OR SB    # a bill number
  # 2b. courts
  OR (lawsuit AND copyright)
)
"""
    query = parse(source)
    root = query.root
    assert isinstance(root, And)
    subject, action = root.children
    assert query.label_of(subject) == "1. the subject"
    assert query.label_of(action) == "2a. lawmaking (two lines of comment are one block)"
    assert isinstance(action, Or)
    labels = [query.label_of(child) for child in action.children]
    assert labels == [
        "2a. lawmaking (two lines of comment are one block)",
        "2a. lawmaking (two lines of comment are one block)",
        "a bill number",  # a comment after a clause on its own line labels that clause
        "2b. courts",
    ]
    assert isinstance(subject, Or)
    assert query.label_of(subject.children[0]) == ""  # a trailing comment labels its own line


def test_a_query_without_comments_has_no_labels() -> None:
    query = parse("a OR (b AND c)")
    assert all(query.label_of(n) == "" for n in rules.walk(query.root))
