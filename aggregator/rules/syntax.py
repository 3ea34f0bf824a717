"""The topic rule language: a small search syntax that policy people can read and edit.

Syntax, from loosest to tightest binding::

    a OR b                     either
    a AND b, a b               both (writing terms side by side means AND)
    NOT a                      not
    a NEAR/8 b                 within 8 words of each other, in the same field, in either order
    title: summary: source: link:   restrict a term, "phrase" or (group) to one field
    word  "a phrase"  regulat*  (group)
    # a comment, to the end of the line

Matching is case-insensitive on whole words, except that a word written in capitals (``AI``,
``FTC``) only matches in capitals. A trailing ``*`` matches any word starting with the letters
before it. Terms without a field look at the title and the summary.

:func:`parse` turns a query into a tree of frozen nodes and raises
:class:`~aggregator.errors.RuleSyntaxError` with a 1-based column on any mistake, so a typo is
refused instead of silently changing what a topic catches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.errors import RuleSyntaxError
from aggregator.text import normalise as textnorm

FIELDS = ("title", "summary", "source", "link")
DEFAULT_FIELDS = frozenset({"title", "summary"})
MAX_DISTANCE = 100
MIN_WILDCARD_PREFIX = 3
# Limits on one query (a topic's query or its exclude). A person never comes near them; a
# generated or pasted query that does is refused where it is written, instead of overflowing the
# recursion of the parser and the matcher (depth), or slowing every cycle (size).
MAX_DEPTH = 32  # levels of nesting: each '(', each NOT and each NEAR of a chain counts one
MAX_QUERY_WORDS = 2_000  # words, counting every word of a phrase
MAX_QUERY_CHARS = 100_000  # comments included
_QUOTES = '"\u201c\u201d\u201e'
_STOP = " \t\r\n()#" + _QUOTES


@dataclass(frozen=True, slots=True)
class Word:
    """One word pattern. ``text`` is lower-cased unless ``exact_case``."""

    text: str
    exact_case: bool = False
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Words:
    """A term (one word) or a phrase (consecutive words), looked for in ``fields``."""

    words: tuple[Word, ...]
    fields: frozenset[str]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Near:
    left: Node
    right: Node
    distance: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Not:
    child: Node
    start: int
    end: int


Node = Words | Near | And | Or | Not


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query and its source text (offsets in the nodes point into ``source``).

    ``comments`` are (offset, enclosing group's offset or -1, text); ``groups`` maps each token's
    offset to its enclosing group's offset. Together they give each clause the ``# comment``
    that introduces it, so an explanation can say what a clause is for in the author's words.
    """

    source: str
    root: Node
    comments: tuple[tuple[int, int, str], ...] = field(default=(), compare=False)
    groups: dict[int, int] = field(default_factory=dict, compare=False, hash=False)

    def text_of(self, node: Node) -> str:
        """The query text of one clause, comments removed and whitespace folded."""
        return describe(self.source[node.start : node.end])

    def label_of(self, node: Node) -> str:
        """The comment that says what ``node`` is for: a comment after it on its own line, else
        the comment block that opens its parentheses, else the nearest comment block before it
        in the same group. "" when there is none."""
        start, end = node.start, node.end
        line_end = self.source.find("\n", start)
        line_end = len(self.source) if line_end == -1 else line_end
        for offset, _, text in self.comments:
            if end <= offset < line_end and end <= line_end:
                return text  # a trailing comment on the clause's own line
        if self.source.startswith("(", start):
            first_token = min((o for o, g in self.groups.items() if g == start), default=end)
            for offset, group, text in self.comments:
                if group == start and offset < first_token:
                    return text
        group = self.groups.get(start, -1)
        found = ""
        for offset, comment_group, text in self.comments:
            if offset >= start:
                break
            if comment_group == group and not self._trailing(offset):
                found = text
        return found

    def _trailing(self, offset: int) -> bool:
        line_start = self.source.rfind("\n", 0, offset) + 1
        return bool(self.source[line_start:offset].strip())


def describe(source: str) -> str:
    """A clause's text on one line, without its ``#`` comments."""
    lines = []
    for line in source.splitlines():
        cut = _comment_start(line)
        lines.append(line[:cut] if cut is not None else line)
    return " ".join(" ".join(lines).split())


def _comment_start(line: str) -> int | None:
    quoted = False
    for i, char in enumerate(line):
        if char in _QUOTES:
            quoted = not quoted
        elif char == "#" and not quoted:
            return i
    return None


# -- lexer ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # ( ) PHRASE WORD FIELD AND OR NOT NEAR END
    text: str
    start: int
    end: int
    distance: int = 0


def _fail(source: str, offset: int, message: str) -> RuleSyntaxError:
    """An error pointing at ``offset``; for multi-line queries, at the column of its own line."""
    line_start = source.rfind("\n", 0, offset) + 1
    line_end = source.find("\n", offset)
    if line_end == -1:
        line_end = len(source)
    if "\n" in source.strip("\n"):
        line_no = source.count("\n", 0, offset) + 1
        message = f"{message} (query line {line_no})"
    return RuleSyntaxError(message, source[line_start:line_end], offset - line_start + 1)


def _lex(source: str, comments: list[tuple[int, str]] | None = None) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char.isspace():
            i += 1
        elif char == "#":
            end = source.find("\n", i)
            end = n if end == -1 else end
            if comments is not None:
                comments.append((i, source[i + 1 : end].strip()))
            i = end
        elif char in "()":
            tokens.append(_Token(char, char, i, i + 1))
            i += 1
        elif char in _QUOTES:
            close = next((j for j in range(i + 1, n) if source[j] in _QUOTES), -1)
            if close == -1:
                raise _fail(source, i, "this quote is never closed")
            tokens.append(_Token("PHRASE", source[i + 1 : close], i, close + 1))
            i = close + 1
        else:
            j = i
            while j < n and source[j] not in _STOP:
                j += 1
            tokens.extend(_lex_run(source, i, j))
            i = j
    tokens.append(_Token("END", "", n, n))
    return tokens


def _lex_run(source: str, start: int, end: int) -> list[_Token]:
    run = source[start:end]
    if run in ("AND", "OR", "NOT"):
        return [_Token(run, run, start, end)]
    if run.lower() in ("and", "or", "not"):
        raise _fail(
            source,
            start,
            f"write the operator {run.upper()} in capitals, "
            f'or quote "{run}" to look for the word itself',
        )
    if run.upper().startswith("NEAR"):
        rest = run[4:]
        if run.startswith("NEAR") and rest.startswith("/") and rest[1:].isdigit():
            distance = int(rest[1:])
            if not 1 <= distance <= MAX_DISTANCE:
                raise _fail(source, start, f"NEAR distance must be 1 to {MAX_DISTANCE} words")
            return [_Token("NEAR", run, start, end, distance)]
        if run.upper() == "NEAR" or rest.startswith("/"):
            raise _fail(source, start, "write proximity as NEAR/N in capitals, e.g. NEAR/8")
    colon = run.find(":")
    if colon > 0 and run[:colon].isalpha():
        name = run[:colon].lower()
        if name not in FIELDS:
            raise _fail(
                source,
                start,
                f"unknown field '{run[:colon]}:' (fields are {', '.join(f + ':' for f in FIELDS)});"
                " quote text that contains a colon",
            )
        field = _Token("FIELD", name, start, start + colon + 1)
        if colon + 1 == len(run):
            return [field]
        rest = run[colon + 1 :]
        if rest[: max(rest.find(":"), 0)].lower() in FIELDS:  # title:summary:x, never recursed
            message = f"'{run[: colon + 1]}' must be followed by a word"
            raise _fail(source, start + colon + 1, message)
        return [field, *_lex_run(source, start + colon + 1, end)]
    if run[0] in "-+!":
        raise _fail(
            source, start, f"'{run[0]}' is not an operator here: write NOT, AND or OR in capitals"
        )
    return [_Token("WORD", run, start, end)]


# -- parser --------------------------------------------------------------------------------------


def parse(source: str) -> Query:
    """Parse a query. Raises :class:`RuleSyntaxError` naming the column of the first mistake."""
    if len(source) > MAX_QUERY_CHARS:
        raise _fail(
            source,
            MAX_QUERY_CHARS,
            f"the query is longer than {MAX_QUERY_CHARS:,} characters: split it into topics",
        )
    comments: list[tuple[int, str]] = []
    tokens = _lex(source, comments)
    parser = _Parser(source, tokens)
    if parser.peek().kind == "END":
        raise _fail(source, 0, "the query is empty")
    root = parser.or_expr(DEFAULT_FIELDS)
    token = parser.peek()
    if token.kind == ")":
        raise _fail(source, token.start, "this ')' has no matching '('")
    if token.kind != "END":
        raise _fail(source, token.start, f"unexpected {token.text!r}")
    return Query(source, root, *_enclosing_groups(source, tokens, comments))


def _enclosing_groups(
    source: str, tokens: list[_Token], comments: list[tuple[int, str]]
) -> tuple[tuple[tuple[int, int, str], ...], dict[int, int]]:
    """Which parenthesised group each token and comment sits in (-1: the top level).

    Comment lines that follow each other with nothing between them form one block; the block
    is kept at its first line's offset, its lines joined with spaces.
    """
    events: list[tuple[int, _Token | str]] = [(t.start, t) for t in tokens]
    events += [(offset, text) for offset, text in comments]
    events.sort(key=lambda e: e[0])
    stack = [-1]
    groups: dict[int, int] = {}
    placed: list[tuple[int, int, str]] = []
    previous_was_comment = False
    for offset, what in events:
        if isinstance(what, str):
            own_line = not source[source.rfind("\n", 0, offset) + 1 : offset].strip()
            if previous_was_comment and own_line and placed:
                first, group, text = placed[-1]
                placed[-1] = (first, group, f"{text} {what}".strip())
            else:
                placed.append((offset, stack[-1], what))
            previous_was_comment = own_line
            continue
        previous_was_comment = False
        if what.kind == ")" and len(stack) > 1:
            stack.pop()
        groups.setdefault(offset, stack[-1])
        if what.kind == "(":
            stack.append(offset)
    return tuple(placed), groups


class _Parser:
    def __init__(self, source: str, tokens: list[_Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.pos = 0
        self.depth = 0  # open groups and NOTs around the current token
        self.words = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def or_expr(self, fields: frozenset[str]) -> Node:
        children = [self.and_expr(fields)]
        while self.peek().kind == "OR":
            self.take()
            children.append(self.and_expr(fields))
        if len(children) == 1:
            return children[0]
        return Or(tuple(children), children[0].start, children[-1].end)

    def and_expr(self, fields: frozenset[str]) -> Node:
        children = [self.not_expr(fields)]
        while self.peek().kind not in ("OR", ")", "END"):
            if self.peek().kind == "AND":
                self.take()
            children.append(self.not_expr(fields))
        if len(children) == 1:
            return children[0]
        return And(tuple(children), children[0].start, children[-1].end)

    def not_expr(self, fields: frozenset[str]) -> Node:
        token = self.peek()
        if token.kind == "NOT":
            self.take()
            self._deeper(token, 1)
            child = self.not_expr(fields)
            self.depth -= 1
            return Not(child, token.start, child.end)
        return self.near_expr(fields)

    def _deeper(self, token: _Token, levels: int) -> None:
        """Count nesting before descending, so the parser itself never recurses too deep."""
        self.depth += levels
        if self.depth > MAX_DEPTH:
            raise _fail(
                self.source,
                token.start,
                f"the query nests more than {MAX_DEPTH} levels deep (each '(', NOT and NEAR "
                "of a chain counts one): flatten it, e.g. a OR b OR c instead of nested groups",
            )

    def near_expr(self, fields: frozenset[str]) -> Node:
        left = self.primary(fields)
        links = 0
        while self.peek().kind == "NEAR":
            near = self.take()
            links += 1
            self._deeper(near, 1)
            self._check_near_operand(left)
            right = self.primary(fields)
            self._check_near_operand(right)
            left = Near(left, right, near.distance, left.start, right.end)
        self.depth -= links
        return left

    def _check_near_operand(self, node: Node) -> None:
        if not _positional(node):
            raise _fail(
                self.source,
                node.start,
                'NEAR needs a word, a "phrase" or an (A OR B) group on each side',
            )

    def primary(self, fields: frozenset[str]) -> Node:
        token = self.take()
        if token.kind == "FIELD":
            nxt = self.peek()
            if nxt.kind not in ("WORD", "PHRASE", "("):
                raise _fail(
                    self.source, nxt.start, f"'{token.text}:' must be followed by a word or a group"
                )
            node = self.primary(frozenset({token.text}))
            return _with_start(node, token.start)
        if token.kind == "(":
            if self.peek().kind == ")":
                raise _fail(self.source, token.start, "this group '()' is empty")
            self._deeper(token, 1)
            inner = self.or_expr(fields)
            self.depth -= 1
            close = self.take()
            if close.kind != ")":
                raise _fail(self.source, token.start, "this '(' is never closed")
            return _with_span(inner, token.start, close.end)
        if token.kind == "WORD":
            return self._words(token, token.text, fields)
        if token.kind == "PHRASE":
            if not token.text.strip():
                raise _fail(self.source, token.start, "this phrase is empty")
            return self._words(token, token.text, fields)
        if token.kind == "END":
            previous = self.tokens[self.pos - 2].text if self.pos >= 2 else ""
            after = f" after {previous}" if previous else ""
            raise _fail(
                self.source, token.start, f"the query ends too early: expected a word{after}"
            )
        if token.kind == ")":
            raise _fail(self.source, token.start, "expected a word here, found ')'")
        raise _fail(self.source, token.start, f"expected a word here, found {token.text}")

    def _words(self, token: _Token, raw: str, fields: frozenset[str]) -> Words:
        """Turn one query word or phrase into word patterns, with the document tokeniser."""
        patterns: list[Word] = []
        offset = token.start + (1 if token.kind == "PHRASE" else 0)
        for piece, piece_start in _split_spaces(raw):
            star = piece.find("*")
            if star != -1 and star != len(piece) - 1:
                raise _fail(
                    self.source, offset + piece_start + star, "'*' only goes at a word's end"
                )
            stem = piece.rstrip("*")
            found = textnorm.words(textnorm.normalise(stem))
            if not found:
                raise _fail(
                    self.source,
                    offset + piece_start,
                    f"{piece!r} has no letters or digits to match",
                )
            self.words += len(found)
            if self.words > MAX_QUERY_WORDS:
                raise _fail(
                    self.source,
                    offset + piece_start,
                    f"the query has more than {MAX_QUERY_WORDS:,} words: split it into "
                    "several topics, or use wildcards (regulat*) for families of words",
                )
            if star != -1 and len(textnorm.word_key(found[-1])) < MIN_WILDCARD_PREFIX:
                raise _fail(
                    self.source,
                    offset + piece_start,
                    f"a wildcard needs at least {MIN_WILDCARD_PREFIX} letters before '*'",
                )
            for k, word in enumerate(found):
                key = textnorm.word_key(word)
                exact = _is_capitals(key)
                patterns.append(
                    Word(
                        key if exact else key.lower(),
                        exact_case=exact,
                        prefix=star != -1 and k == len(found) - 1,
                    )
                )
        return Words(tuple(patterns), fields, token.start, token.end)


def _split_spaces(raw: str) -> list[tuple[str, int]]:
    pieces: list[tuple[str, int]] = []
    i = 0
    for part in raw.split():
        i = raw.index(part, i)
        pieces.append((part, i))
        i += len(part)
    return pieces


def _is_capitals(word: str) -> bool:
    """A word written in capitals (AI, FTC, EO, "U.S." as US) matches only in capitals."""
    return any(c.isalpha() for c in word) and word.upper() == word and word.lower() != word


def _positional(node: Node) -> bool:
    if isinstance(node, Words | Near):
        return True
    if isinstance(node, Or):
        return all(_positional(child) for child in node.children)
    return False


def _with_span(node: Node, start: int, end: int) -> Node:
    if isinstance(node, Words):
        return Words(node.words, node.fields, start, end)
    if isinstance(node, Near):
        return Near(node.left, node.right, node.distance, start, end)
    if isinstance(node, And):
        return And(node.children, start, end)
    if isinstance(node, Or):
        return Or(node.children, start, end)
    return Not(node.child, start, end)


def _with_start(node: Node, start: int) -> Node:
    return _with_span(node, start, node.end)


def walk(node: Node) -> list[Node]:
    """Every node of a tree, parents before children."""
    out: list[Node] = [node]
    if isinstance(node, And | Or):
        for child in node.children:
            out.extend(walk(child))
    elif isinstance(node, Not):
        out.extend(walk(node.child))
    elif isinstance(node, Near):
        out.extend(walk(node.left))
        out.extend(walk(node.right))
    return out
