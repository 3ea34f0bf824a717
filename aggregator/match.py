"""The compiled topic matcher: every topic's rules evaluated against one document at a time.

How it stays fast: all topics' word patterns are numbered once at compile time ("atoms"). A document
is tokenised once; each distinct word is looked up once (and remembered) to find the atoms it
satisfies, which gives an index ``atom -> word positions``. Only topics that mention a present atom
are evaluated, and evaluation only touches those short position lists. Fields are kept apart by
giving each field its own block of positions, so phrases and NEAR never span two fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aggregator import rules, story_idf
from aggregator import text as textnorm
from aggregator.config import TopicConfig
from aggregator.errors import RuleSyntaxError
from aggregator.models import Document, Entry, TopicMatch
from aggregator.stories import stem

FIELD_NUMBER = {name: i for i, name in enumerate(rules.FIELDS)}
_SHIFT = 20  # positions are field << _SHIFT | word index
_MAX_WORDS = (1 << _SHIFT) - 1
# Words remembered per matcher (with or without atoms). Each parse worker holds a matcher of its
# own: 100,000 words is about 8 MB, and twice the vocabulary of 47,000 news items.
_CACHE_LIMIT = 100_000

# What a matcher is compiled from, as plain values another process can compile again:
# (name, query, exclude) per topic, in config order.
MatchRules = tuple[tuple[str, str, str | None], ...]

Index = dict[int, list[int]]
Span = tuple[int, int]  # first and last position, inclusive


# -- explanations --------------------------------------------------------------------------------


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


# -- compiled form -------------------------------------------------------------------------------


class _Atoms:
    """Numbers every distinct word pattern of every topic."""

    def __init__(self) -> None:
        self.exact: dict[str, int] = {}  # lower-cased words
        self.capitals: dict[str, int] = {}  # words that must be written in capitals
        self.prefix: dict[str, int] = {}
        self.capitals_prefix: dict[str, int] = {}
        self.count = 0
        self.words: dict[int, rules.Word] = {}
        self.share: dict[int, float] = {}  # estimated share of news items with the word

    def add(self, word: rules.Word) -> int:
        if word.prefix:
            table = self.capitals_prefix if word.exact_case else self.prefix
        else:
            table = self.capitals if word.exact_case else self.exact
        if word.text not in table:
            table[word.text] = self.count
            self.words[self.count] = word
            self.share[self.count] = _news_share(word)
            self.count += 1
        return table[word.text]

    def lookup(self, token: str) -> tuple[int, ...]:
        key = textnorm.word_key(token)
        low = key.lower()
        found: list[int] = []
        if low in self.exact:
            found.append(self.exact[low])
        if key in self.capitals:
            found.append(self.capitals[key])
        if self.prefix:
            for end in range(rules.MIN_WILDCARD_PREFIX, len(low) + 1):
                atom = self.prefix.get(low[:end])
                if atom is not None:
                    found.append(atom)
        if self.capitals_prefix:
            for end in range(rules.MIN_WILDCARD_PREFIX, len(key) + 1):
                atom = self.capitals_prefix.get(key[:end])
                if atom is not None:
                    found.append(atom)
        return tuple(found)


class _Node:
    positional = False

    def test(self, index: Index) -> bool:
        raise NotImplementedError

    def spans(self, index: Index) -> list[Span]:
        raise NotImplementedError


class _Words(_Node):
    positional = True

    def __init__(self, atoms: tuple[int, ...], fields: frozenset[int]) -> None:
        self.atoms = atoms
        self.fields = fields
        self.length = len(atoms)

    def spans(self, index: Index) -> list[Span]:
        first = index.get(self.atoms[0])
        if not first:
            return []
        fields = self.fields
        if self.length == 1:
            return [(p, p) for p in first if p >> _SHIFT in fields]
        rest = []
        for atom in self.atoms[1:]:
            positions = index.get(atom)
            if not positions:
                return []
            rest.append(positions)
        out = []
        for p in first:
            if p >> _SHIFT in fields and all(p + k in rest[k - 1] for k in range(1, self.length)):
                out.append((p, p + self.length - 1))
        return out

    def test(self, index: Index) -> bool:
        if self.length == 1:
            first = index.get(self.atoms[0])
            if not first:
                return False
            fields = self.fields
            return any(p >> _SHIFT in fields for p in first)
        return bool(self.spans(index))


class _Near(_Node):
    positional = True

    def __init__(self, left: _Node, right: _Node, distance: int) -> None:
        self.left = left
        self.right = right
        self.distance = distance

    def spans(self, index: Index) -> list[Span]:
        lefts = self.left.spans(index)
        if not lefts:
            return []
        rights = self.right.spans(index)
        out: list[Span] = []
        for a in lefts:
            for b in rights:
                if a[0] >> _SHIFT != b[0] >> _SHIFT:
                    continue
                gap = b[0] - a[1] if b[0] > a[1] else a[0] - b[1]
                if gap <= self.distance:
                    out.append(a)
                    out.append(b)
        return out

    def test(self, index: Index) -> bool:
        return bool(self.spans(index))


class _AnyWord(_Node):
    """Many single words in the same fields, ORed: one set intersection instead of a loop."""

    positional = True

    def __init__(self, atoms: frozenset[int], fields: frozenset[int]) -> None:
        self.atoms = atoms
        self.fields = fields

    def test(self, index: Index) -> bool:
        fields = self.fields
        for atom in self.atoms.intersection(index):
            if any(p >> _SHIFT in fields for p in index[atom]):
                return True
        return False

    def spans(self, index: Index) -> list[Span]:
        fields = self.fields
        return [
            (p, p)
            for atom in self.atoms.intersection(index)
            for p in index[atom]
            if p >> _SHIFT in fields
        ]


def _grouped(children: list[_Node]) -> list[_Node]:
    """OR's children with its single-word alternatives merged per field set."""
    groups: dict[frozenset[int], set[int]] = {}
    rest: list[_Node] = []
    for child in children:
        if isinstance(child, _Words) and child.length == 1:
            groups.setdefault(child.fields, set()).add(child.atoms[0])
        else:
            rest.append(child)
    merged: list[_Node] = [_AnyWord(frozenset(a), f) for f, a in groups.items()]
    return merged + rest


class _Or(_Node):
    def __init__(self, children: list[_Node]) -> None:
        self.children = _grouped(children)
        self.positional = all(c.positional for c in children)

    def test(self, index: Index) -> bool:
        return any(c.test(index) for c in self.children)

    def spans(self, index: Index) -> list[Span]:
        out: list[Span] = []
        for child in self.children:
            out.extend(child.spans(index))
        return out


class _And(_Node):
    def __init__(self, children: list[_Node]) -> None:
        self.children = children

    def test(self, index: Index) -> bool:
        return all(c.test(index) for c in self.children)


class _Not(_Node):
    def __init__(self, child: _Node) -> None:
        self.child = child

    def test(self, index: Index) -> bool:
        return not self.child.test(index)


def _build(node: rules.Node, atoms: _Atoms, memo: dict[int, _Node]) -> _Node:
    built: _Node
    if isinstance(node, rules.Words):
        ids = tuple(atoms.add(w) for w in node.words)
        built = _Words(ids, frozenset(FIELD_NUMBER[f] for f in node.fields))
    elif isinstance(node, rules.Near):
        left = _build(node.left, atoms, memo)
        right = _build(node.right, atoms, memo)
        built = _Near(left, right, node.distance)
    elif isinstance(node, rules.Or):
        built = _Or([_build(c, atoms, memo) for c in node.children])
    elif isinstance(node, rules.And):
        built = _And([_build(c, atoms, memo) for c in node.children])
    else:
        built = _Not(_build(node.child, atoms, memo))
    memo[id(node)] = built
    return built


Need = frozenset[int]  # atoms that must all be present: the words of a phrase


def _required(node: _Node, share: dict[int, float]) -> frozenset[Need] | None:
    """Needs of which at least one must be met for ``node`` to hold (None: no such set).

    Where there is a choice, the rarest in news, so that the set rules out the most items.
    """
    if isinstance(node, _Words):
        return frozenset((frozenset(node.atoms),))
    if isinstance(node, _AnyWord):
        return frozenset(frozenset((atom,)) for atom in node.atoms)
    if isinstance(node, _Near | _And):
        children = (node.left, node.right) if isinstance(node, _Near) else node.children
        options = [r for r in (_required(c, share) for c in children) if r is not None]
        return min(options, key=lambda r: sum(_need_share(n, share) for n in r), default=None)
    if isinstance(node, _Or):
        union: set[Need] = set()
        for child in node.children:
            found = _required(child, share)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    return None


def _need_share(need: Need, share: dict[int, float]) -> float:
    return min(map(share.__getitem__, need))


def _key(need: Need, share: dict[int, float]) -> int:
    """The rarest atom of a need: the one to look for first."""
    return min(need, key=lambda atom: (share[atom], atom))


def _news_share(word: rules.Word) -> float:
    """Roughly the share of news items that contain ``word`` (from the story IDF table)."""
    idf = story_idf.table().get(stem(word.text), story_idf.default_idf())
    return math.exp(-idf) * (4.0 if word.prefix else 1.0)  # a prefix stands for several words


def _collect(node: _Node, index: Index, out: list[Span]) -> None:
    """Spans of the words that made ``node`` true (words under NOT are not reasons)."""
    if node.positional:
        out.extend(node.spans(index))
    elif isinstance(node, _And | _Or):
        for child in node.children:
            if child.test(index):
                _collect(child, index, out)


@dataclass(frozen=True, slots=True)
class _Rule:
    """One compiled query (a topic's ``query`` or its ``exclude``)."""

    query: rules.Query
    root: _Node
    nodes: dict[int, _Node]  # id(rules node) -> compiled node, for explanations


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    query: _Rule
    exclude: _Rule | None


def _clauses(rule: _Rule) -> list[rules.Node]:
    root = rule.query.root
    if isinstance(root, rules.Or | rules.And):
        return list(root.children)
    return [root]


# -- the matcher ---------------------------------------------------------------------------------


class TopicMatcher:
    """All topics compiled together. Compile once per config load; ``match`` is pure."""

    def __init__(self, topics: list[_Topic], atoms: _Atoms, by_atom: dict[int, list[int]],
                 always: list[int], fields: frozenset[int],
                 needs: dict[int, set[Need]]) -> None:  # fmt: skip
        self._topics = topics
        self._needs = needs  # key atom -> the atom sets, one of which a candidate must have
        self._atoms = atoms
        self._by_atom = by_atom
        self._always = always
        self._fields = fields
        self._cache: dict[str, tuple[int, ...]] = {}
        self._silent: set[str] = set()  # tokens that are no rule word
        self.rules: MatchRules = ()  # set by compile()

    @classmethod
    def compile(cls, topics: Sequence[TopicConfig]) -> TopicMatcher:
        """Parse and compile every topic. Raises :class:`RuleSyntaxError` on a bad query."""
        atoms = _Atoms()
        compiled: list[_Topic] = []
        by_atom: dict[int, list[int]] = {}
        needs: dict[int, set[Need]] = {}
        always: list[int] = []
        fields: set[int] = set()
        for number, topic in enumerate(topics):
            try:
                query = cls._rule(topic.query, atoms)
                exclude = None
                if topic.exclude and topic.exclude.strip():
                    exclude = cls._rule(topic.exclude, atoms)
            except RuleSyntaxError as e:
                where = f"topic {topic.name!r}: {e.message}"
                raise RuleSyntaxError(where, e.query, e.column) from e
            for rule in (query, exclude):
                if rule is not None:
                    for node in rules.walk(rule.query.root):
                        if isinstance(node, rules.Words):
                            fields.update(FIELD_NUMBER[f] for f in node.fields)
            compiled.append(_Topic(topic.name, query, exclude))
            required = _required(query.root, atoms.share)
            if required is None:
                always.append(number)  # e.g. a query that is only NOT ...: no word needed
            else:
                for need in required:
                    key = _key(need, atoms.share)
                    if number not in by_atom.get(key, ()):
                        by_atom.setdefault(key, []).append(number)
                    needs.setdefault(key, set()).add(need)
        matcher = cls(compiled, atoms, by_atom, always, frozenset(fields), needs)
        matcher.rules = tuple((t.name, t.query, t.exclude) for t in topics)
        return matcher

    @staticmethod
    def _rule(source: str, atoms: _Atoms) -> _Rule:
        query = rules.parse(source)
        memo: dict[int, _Node] = {}
        root = _build(query.root, atoms, memo)
        return _Rule(query, root, memo)

    @property
    def topic_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._topics)

    # -- indexing ---------------------------------------------------------------------------

    def _texts(self, doc: Document) -> tuple[str, str, str, str]:
        return (
            textnorm.clean(doc.title),
            textnorm.clean(doc.summary),
            textnorm.normalise(doc.source),
            textnorm.normalise(doc.link),
        )

    def _tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Each field's words; none for a field that no rule reads."""
        fields = self._fields
        return [
            textnorm.words(text) if field in fields and text else []
            for field, text in enumerate(texts)
        ]

    def _index(self, tokens: Sequence[Sequence[str]]) -> Index:
        index: Index = {}
        atoms_of = self._atoms_of
        for field, field_tokens in enumerate(tokens):
            base = field << _SHIFT
            for i, token in enumerate(field_tokens):
                found = atoms_of(token)
                if found and i <= _MAX_WORDS:
                    for atom in found:
                        positions = index.get(atom)
                        if positions is None:
                            index[atom] = [base + i]
                        else:
                            positions.append(base + i)
        return index

    def _may_match(self, tokens: Sequence[Sequence[str]]) -> bool:
        """False when no topic can match because no topic's required words are all present.

        Most news has none: set operations in C tell, where indexing every word's positions
        costs a Python loop over all of them.
        """
        if self._always:
            return True
        silent = self._silent
        present: set[int] = set()
        for field_tokens in tokens:
            for token in set(field_tokens).difference(silent):
                atoms = self._atoms_of(token)
                if atoms:
                    present.update(atoms)
                else:
                    if len(silent) >= _CACHE_LIMIT:
                        silent.clear()
                    silent.add(token)
        needs = self._needs
        return any(need <= present for key in present & needs.keys() for need in needs[key])

    def _atoms_of(self, token: str) -> tuple[int, ...]:
        found = self._cache.get(token)
        if found is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[token] = self._atoms.lookup(token)
        return found

    def _candidates(self, index: Index) -> list[int]:
        if len(index) == 0:
            return self._always
        numbers = set(self._always)
        by_atom = self._by_atom
        for atom in index:
            numbers.update(by_atom.get(atom, ()))
        return sorted(numbers)

    # -- public -----------------------------------------------------------------------------

    def match(self, doc: Document) -> list[TopicMatch]:
        """The topics whose query matches and whose exclusion does not, in config order."""
        texts = self._texts(doc)
        tokens = self._tokens(texts)
        if not self._may_match(tokens):
            return []
        index = self._index(tokens)
        out: list[TopicMatch] = []
        spans_by_field: list[list[tuple[int, int]]] | None = None
        for number in self._candidates(index):
            topic = self._topics[number]
            if not topic.query.root.test(index):
                continue
            if topic.exclude is not None and topic.exclude.root.test(index):
                continue
            if spans_by_field is None:
                spans_by_field = [textnorm.word_spans(t) for t in texts]
            spans: list[Span] = []
            _collect(topic.query.root, index, spans)
            out.append(TopicMatch(topic.name, _terms(spans, texts, spans_by_field)))
        return out

    def explain(self, doc: Document) -> list[TopicExplanation]:
        """For every topic: the verdict, which clauses held, the matched words, any veto."""
        texts = self._texts(doc)
        index = self._index(self._tokens(texts))
        spans_by_field = [textnorm.word_spans(t) for t in texts]
        out: list[TopicExplanation] = []
        for topic in self._topics:
            query_ok = topic.query.root.test(index)
            clauses = tuple(
                self._clause(topic.query, node, index, texts, spans_by_field)
                for node in _clauses(topic.query)
            )
            spans: list[Span] = []
            _collect(topic.query.root, index, spans)
            vetoes: tuple[ClauseResult, ...] = ()
            if topic.exclude is not None and topic.exclude.root.test(index):
                vetoes = tuple(
                    clause
                    for clause in (
                        self._clause(topic.exclude, node, index, texts, spans_by_field)
                        for node in _clauses(topic.exclude)
                    )
                    if clause.matched
                )
                if isinstance(topic.exclude.query.root, rules.And):
                    vetoes = (
                        self._clause(
                            topic.exclude, topic.exclude.query.root, index, texts, spans_by_field
                        ),
                    )
            root = topic.query.query.root
            out.append(
                TopicExplanation(
                    topic=topic.name,
                    matched=query_ok and not vetoes,
                    query_matched=query_ok,
                    clauses=clauses,
                    terms=_terms(spans, texts, spans_by_field),
                    vetoed_by=vetoes,
                    highlights=_highlights(spans, texts, spans_by_field),
                    combine=(
                        "all"
                        if isinstance(root, rules.And)
                        else "any"
                        if isinstance(root, rules.Or)
                        else "one"
                    ),
                )
            )
        return out

    def _clause(
        self,
        rule: _Rule,
        node: rules.Node,
        index: Index,
        texts: Sequence[str],
        spans_by_field: list[list[tuple[int, int]]],
        depth: int = 0,
    ) -> ClauseResult:
        compiled = rule.nodes[id(node)]
        ok = compiled.test(index)
        spans: list[Span] = []
        parts: tuple[ClauseResult, ...] = ()
        label = rule.query.label_of(node)
        if ok:
            _collect(compiled, index, spans)
            if depth < 3 and isinstance(node, rules.And | rules.Or):
                held = [c for c in node.children if rule.nodes[id(c)].test(index)]
                if isinstance(node, rules.Or) and len(held) == 1 and not _is_words(held[0]):
                    # one alternative held: show it in the group's place, one level less deep
                    inner = self._clause(rule, held[0], index, texts, spans_by_field, depth)
                    return replace(inner, label=inner.label or label)
                labels = {rule.query.label_of(c) for c in held}
                mixed = any(not isinstance(c, rules.Words) for c in held) or labels - {label, ""}
                if isinstance(node, rules.And) or mixed:
                    parts = tuple(
                        self._clause(rule, c, index, texts, spans_by_field, depth + 1) for c in held
                    )
        terms = _terms(spans, texts, spans_by_field)
        return ClauseResult(rule.query.text_of(node), ok, terms, label, parts)


def _is_words(node: rules.Node) -> bool:
    return isinstance(node, rules.Words)


def _char_range(
    span: Span, spans_by_field: list[list[tuple[int, int]]]
) -> tuple[int, int, int] | None:
    field = span[0] >> _SHIFT
    words = spans_by_field[field]
    first, last = span[0] & _MAX_WORDS, span[1] & _MAX_WORDS
    if last >= len(words):
        return None
    return field, words[first][0], words[last][1]


def _terms(
    spans: list[Span], texts: Sequence[str], spans_by_field: list[list[tuple[int, int]]]
) -> tuple[str, ...]:
    """The matched words as written in the text, first occurrence first, each once."""
    seen: dict[str, None] = {}
    for span in sorted(set(spans)):
        where = _char_range(span, spans_by_field)
        if where is not None:
            field, start, end = where
            seen.setdefault(texts[field][start:end], None)
    return tuple(seen)


def _highlights(
    spans: list[Span], texts: Sequence[str], spans_by_field: list[list[tuple[int, int]]]
) -> tuple[Highlight, ...]:
    ranges: dict[int, set[tuple[int, int]]] = {}
    for span in spans:
        where = _char_range(span, spans_by_field)
        if where is not None:
            ranges.setdefault(where[0], set()).add((where[1], where[2]))
    out = []
    for field, name in enumerate(rules.FIELDS):
        if texts[field] and (field in ranges or field < 2):
            out.append(Highlight(name, texts[field], _merge(sorted(ranges.get(field, ())))))
    return tuple(out)


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)


def check_examples(topics: Sequence[TopicConfig]) -> list[str]:
    """One readable problem per violated example. Examples are titles; feeds do not apply."""
    matcher = TopicMatcher.compile(topics)
    problems: list[str] = []
    for topic in topics:
        for i, example in enumerate(topic.examples_match):
            found = {m.topic: m for m in matcher.match(Document(title=example))}
            if topic.name not in found:
                problems.append(
                    f"topics.{topic.name}.examples.match[{i}]: {example!r} should match topic "
                    f"'{topic.name}' but does not"
                )
        for i, example in enumerate(topic.examples_no_match):
            found = {m.topic: m for m in matcher.match(Document(title=example))}
            if topic.name in found:
                terms = ", ".join(found[topic.name].terms)
                problems.append(
                    f"topics.{topic.name}.examples.no_match[{i}]: {example!r} should not match "
                    f"topic '{topic.name}' but does (matched: {terms})"
                )
    return problems


# -- matching in another process -----------------------------------------------------------------

_compiled: dict[MatchRules, TopicMatcher] = {}


def match_entries(
    rules: MatchRules, entries: Sequence[Entry]
) -> tuple[tuple[TopicMatch, ...], ...]:
    """Each entry's matches under ``rules`` (a :attr:`TopicMatcher.rules`), in entry order.

    What a parse worker runs after parsing: the rules are compiled once per process and kept, so
    a worker compiles again only after the topics change. Only the latest rules are kept: every
    job of a cycle carries the same ones, and an old matcher's word cache is memory.
    """
    matcher = _compiled.get(rules)
    if matcher is None:
        _compiled.clear()
        topics = [TopicConfig(name, "", query, exclude) for name, query, exclude in rules]
        matcher = _compiled[rules] = TopicMatcher.compile(topics)
    return tuple(
        tuple(matcher.match(Document(e.title, e.summary, e.source, e.link))) for e in entries
    )
