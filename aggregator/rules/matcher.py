"""The compiled topic matcher: every topic's rules evaluated against one document at a time.

How it stays fast: all topics' word patterns are numbered once at compile time ("atoms"). A document
is tokenised once; each distinct word is looked up once (and remembered) to find the atoms it
satisfies, which gives an index ``atom -> word positions``. Only topics that mention a present atom
are evaluated, and evaluation only touches those short position lists. Fields are kept apart by
giving each field its own block of positions, so phrases and NEAR never span two fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from aggregator.errors import RuleSyntaxError
from aggregator.models import Document, Entry, TopicMatch
from aggregator.rules import syntax as rules
from aggregator.rules.compile import (
    FIELD_NUMBER,
    MAX_WORDS,
    NO_CLAUSES,
    SHIFT,
    Atoms,
    ClauseTests,
    Index,
    Need,
    Rule,
    Span,
    clause_tests,
    collect,
    compile_rule,
    need_key,
    required_needs,
    top_clauses,
)
from aggregator.rules.explain import (
    ClauseResult,
    TopicExplanation,
    field_highlights,
    is_words,
    matched_terms,
)
from aggregator.text import normalise as textnorm

# Words remembered per matcher (with or without atoms). Each parse worker holds a matcher of its
# own: 100,000 words is about 8 MB, and twice the vocabulary of 47,000 news items.
_CACHE_LIMIT = 100_000

# What a matcher is compiled from, as plain values another process can compile again:
# (name, query, exclude) per topic, in config order.
MatchRules = tuple[tuple[str, str, str | None], ...]


class TopicRules(Protocol):
    """What the matcher reads of a topic; :class:`~aggregator.config.TopicConfig` has it."""

    @property
    def name(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def exclude(self) -> str | None: ...


class TopicExamples(TopicRules, Protocol):
    """A topic with the example titles ``check-config`` tests."""

    @property
    def examples_match(self) -> tuple[str, ...]: ...
    @property
    def examples_no_match(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A topic's rules as plain values (what a parse worker compiles)."""

    name: str
    query: str
    exclude: str | None = None


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    query: Rule
    exclude: Rule | None
    clauses: ClauseTests = NO_CLAUSES  # the query's labelled clauses


# -- the matcher ---------------------------------------------------------------------------------


class TopicMatcher:
    """All topics compiled together. Compile once per config load; ``match`` is pure."""

    def __init__(self, topics: list[_Topic], atoms: Atoms, by_atom: dict[int, list[int]],
                 always: list[int], fields: frozenset[int],
                 needs: dict[int, set[Need]]) -> None:  # fmt: skip
        self._topics = topics
        self._needs = needs  # key atom -> the atom sets, one of which a candidate must have
        self._atoms = atoms
        self._by_atom = by_atom
        self._always = always
        self._fields = fields
        self._cache: dict[str, tuple[int, ...]] = {}  # every word seen, and its atoms (often none)
        self._worded: set[str] = set()  # the words of the cache that have atoms
        self._keyed: set[str] = set()  # ... and of those, the ones with a key atom of ``needs``
        self.rules: MatchRules = ()  # set by compile()

    @classmethod
    def compile(cls, topics: Sequence[TopicRules]) -> TopicMatcher:
        """Parse and compile every topic. Raises :class:`RuleSyntaxError` on a bad query."""
        atoms = Atoms()
        compiled: list[_Topic] = []
        by_atom: dict[int, list[int]] = {}
        needs: dict[int, set[Need]] = {}
        always: list[int] = []
        fields: set[int] = set()
        for number, topic in enumerate(topics):
            try:
                query = compile_rule(topic.query, atoms)
                exclude = None
                if topic.exclude and topic.exclude.strip():
                    exclude = compile_rule(topic.exclude, atoms)
            except RuleSyntaxError as e:
                where = f"topic {topic.name!r}: {e.message}"
                raise RuleSyntaxError(where, e.query, e.column) from e
            for rule in (query, exclude):
                if rule is not None:
                    for node in rules.walk(rule.query.root):
                        if isinstance(node, rules.Words):
                            fields.update(FIELD_NUMBER[f] for f in node.fields)
            compiled.append(_Topic(topic.name, query, exclude, clause_tests(query)))
            required = required_needs(query.root, atoms.share)
            if required is None:
                always.append(number)  # e.g. a query that is only NOT ...: no word needed
            else:
                for need in required:
                    key = need_key(need, atoms.share)
                    if number not in by_atom.get(key, ()):
                        by_atom.setdefault(key, []).append(number)
                    needs.setdefault(key, set()).add(need)
        matcher = cls(compiled, atoms, by_atom, always, frozenset(fields), needs)
        matcher.rules = tuple((t.name, t.query, t.exclude) for t in topics)
        return matcher

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

    def _index(self, tokens: Sequence[Sequence[str]], texts: Sequence[str]) -> Index:
        index = Index(texts)
        atoms_of = self._atoms_of
        for field, field_tokens in enumerate(tokens):
            base = field << SHIFT
            for i, token in enumerate(field_tokens):
                found = atoms_of(token)
                if found and i <= MAX_WORDS:
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
        costs a Python loop over all of them. Only words never seen before take a Python step,
        and a document with no word that could start a need is refused there and then. Of the
        rest, a document is kept only when some topic's query could hold with its words
        present anywhere in it (see ``Node.may_hold``).
        """
        if self._always:
            return True
        known = self._cache.__contains__
        for field_tokens in tokens:
            if not all(map(known, field_tokens)):
                new = set(field_tokens).difference(self._cache)
                if len(self._cache) + len(new) > _CACHE_LIMIT:
                    self._forget()
                    new = {token for field_tokens in tokens for token in field_tokens}
                for token in new:
                    self._learn(token)
        keyed = self._keyed
        if all(keyed.isdisjoint(field_tokens) for field_tokens in tokens):
            return False
        words: set[str] = set().union(*tokens)
        cache = self._cache
        present: set[int] = set()
        for token in words.intersection(self._worded):
            present.update(cache[token])
        needs = self._needs
        keys = present & needs.keys()
        if not any(need <= present for key in keys for need in needs[key]):
            return False
        # A need met is one word or phrase of a topic; whether its whole query could hold,
        # positions and fields aside, rules out most of the rest.
        topics, by_atom = self._topics, self._by_atom
        numbers = {number for key in keys for number in by_atom[key]}
        return any(topics[number].query.root.may_hold(present) for number in numbers)

    def _atoms_of(self, token: str) -> tuple[int, ...]:
        found = self._cache.get(token)
        if found is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._forget()
            found = self._learn(token)
        return found

    def _learn(self, token: str) -> tuple[int, ...]:
        """Look a word up and remember its atoms, and whether it has any or a need's key."""
        found = self._cache[token] = self._atoms.lookup(token)
        if found:
            self._worded.add(token)
            if not self._needs.keys().isdisjoint(found):
                self._keyed.add(token)
        return found

    def _forget(self) -> None:
        self._cache.clear()
        self._worded.clear()
        self._keyed.clear()

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
        index = self._index(tokens, texts)
        out: list[TopicMatch] = []
        # the words' character ranges, found only for the fields that matched words are in
        spans_by_field: list[list[tuple[int, int]]] = [[] for _ in texts]
        found: set[int] = set()
        for number in self._candidates(index):
            topic = self._topics[number]
            if not topic.query.root.test(index):
                continue
            if topic.exclude is not None and topic.exclude.root.test(index):
                continue
            spans: list[Span] = []
            collect(topic.query.root, index, spans)
            for field in {first >> SHIFT for first, _ in spans}.difference(found):
                spans_by_field[field] = textnorm.word_spans(texts[field])
                found.add(field)
            terms = matched_terms(spans, texts, spans_by_field)
            # the index is at hand: telling the labelled clauses costs no second pass
            out.append(TopicMatch(topic.name, terms, topic.clauses.held(index)))
        return out

    def clause_keys(self, topic: str) -> tuple[str, ...]:
        """Every labelled clause key of a topic's query, sorted (see :class:`TopicMatch`)."""
        for t in self._topics:
            if t.name == topic:
                return t.clauses.keys
        raise KeyError(topic)

    def clause_hits(self, doc: Document) -> dict[str, tuple[str, ...]]:
        """For every topic, matched or not, the labelled clauses of its query that hold.

        What training reads for every labelled item; the service reads :attr:`TopicMatch.clauses`
        of the topics that matched instead.
        """
        texts = self._texts(doc)
        index = self._index(self._tokens(texts), texts)
        return {t.name: t.clauses.held(index) for t in self._topics}

    def explain(self, doc: Document) -> list[TopicExplanation]:
        """For every topic: the verdict, which clauses held, the matched words, any veto."""
        texts = self._texts(doc)
        index = self._index(self._tokens(texts), texts)
        spans_by_field = [textnorm.word_spans(t) for t in texts]
        out: list[TopicExplanation] = []
        for topic in self._topics:
            query_ok = topic.query.root.test(index)
            clauses = tuple(
                self._clause(topic.query, node, index, texts, spans_by_field)
                for node in top_clauses(topic.query)
            )
            spans: list[Span] = []
            collect(topic.query.root, index, spans)
            vetoes: tuple[ClauseResult, ...] = ()
            if topic.exclude is not None and topic.exclude.root.test(index):
                vetoes = tuple(
                    clause
                    for clause in (
                        self._clause(topic.exclude, node, index, texts, spans_by_field)
                        for node in top_clauses(topic.exclude)
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
                    terms=matched_terms(spans, texts, spans_by_field),
                    vetoed_by=vetoes,
                    highlights=field_highlights(spans, texts, spans_by_field),
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
        rule: Rule,
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
            collect(compiled, index, spans)
            if depth < 3 and isinstance(node, rules.And | rules.Or):
                held = [c for c in node.children if rule.nodes[id(c)].test(index)]
                if isinstance(node, rules.Or) and len(held) == 1 and not is_words(held[0]):
                    # one alternative held: show it in the group's place, one level less deep
                    inner = self._clause(rule, held[0], index, texts, spans_by_field, depth)
                    return replace(inner, label=inner.label or label)
                labels = {rule.query.label_of(c) for c in held}
                mixed = any(not isinstance(c, rules.Words) for c in held) or labels - {label, ""}
                if isinstance(node, rules.And) or mixed:
                    parts = tuple(
                        self._clause(rule, c, index, texts, spans_by_field, depth + 1) for c in held
                    )
        terms = matched_terms(spans, texts, spans_by_field)
        return ClauseResult(rule.query.text_of(node), ok, terms, label, parts)


def check_examples(topics: Sequence[TopicExamples]) -> list[str]:
    """One readable problem per violated example. Examples are titles; feeds do not apply.

    A query that does not compile is a problem too, never an exception: the config loader has
    already refused it, so this is a second line, but check-config and a reload must not crash.
    """
    try:
        matcher = TopicMatcher.compile(topics)
    except RuleSyntaxError as e:
        return [f"topics: {e}"]
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
        topics = [RuleSpec(name, query, exclude) for name, query, exclude in rules]
        matcher = _compiled[rules] = TopicMatcher.compile(topics)
    return tuple(
        tuple(matcher.match(Document(e.title, e.summary, e.source, e.link))) for e in entries
    )
