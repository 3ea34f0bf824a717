"""The compiled form of a topic query: numbered word patterns and a tree of tests over them.

All topics' word patterns are numbered once at compile time ("atoms"). A document is indexed as
``atom -> word positions``; each compiled node tests that index, and positional nodes (words,
phrases, NEAR) also return the spans that satisfied them, for explanations. Fields are kept apart
by giving each field its own block of positions, so phrases and NEAR never span two fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.rules import syntax as rules
from aggregator.text import idf as news_idf
from aggregator.text import normalise as textnorm
from aggregator.text.stems import stem

FIELD_NUMBER = {name: i for i, name in enumerate(rules.FIELDS)}
SHIFT = 20  # positions are field << SHIFT | word index
MAX_WORDS = (1 << SHIFT) - 1

Span = tuple[int, int]  # first and last position, inclusive


class Index(dict[int, list[int]]):
    """``atom -> positions`` of one document, and the word slot of each position, for NEAR.

    A position is a token's index, so a phrase is still a run of consecutive tokens. NEAR counts
    its distance in word slots instead, as a reader counts words: an ending after an apostrophe
    ("Trump's", "don't") shares the slot of the word it ends, and the parts of a hyphenated
    compound ("back-to-office") share one slot. Slots are worked out on first use, per field,
    and only for a field whose text holds a ' or a -.

    A document is tested several times over (the verdict, the matched words, the labelled
    clauses), so the index also keeps what the operators found, per compiled node: fill it
    completely before the first test.
    """

    __slots__ = ("_slots", "_texts", "held", "near")

    def __init__(self, texts: Sequence[str] = ()) -> None:
        super().__init__()
        self._texts = texts  # the cleaned text of each field, as tokenised
        self._slots: dict[int, list[int] | None] = {}
        self.held: dict[Node, bool] = {}  # AND and OR nodes' verdicts
        self.near: dict[Node, list[Span]] = {}  # NEAR nodes' spans (never to be mutated)

    def slot(self, position: int) -> int:
        field, word = position >> SHIFT, position & MAX_WORDS
        if field not in self._slots:
            text = self._texts[field] if field < len(self._texts) else ""
            self._slots[field] = word_slots(text)
        table = self._slots[field]
        return word if table is None or word >= len(table) else table[word]


# Endings after an apostrophe that are no word of their own.
CLITICS = frozenset({"s", "t", "re", "ve", "ll", "d", "m"})


def word_slots(text: str) -> list[int] | None:
    """The word slot of each token of cleaned ``text`` (see :class:`Index`); None when every
    token is a slot of its own. "Joined" means one ' or - directly between two tokens."""
    if "-" not in text and "'" not in text:
        return None
    slots: list[int] = []
    slot = -1
    previous_end = -1
    for start, end in textnorm.word_spans(text):
        joined = previous_end >= 0 and start - previous_end == 1
        between = text[previous_end:start] if joined else ""
        if between == "-" or (between == "'" and text[start:end].lower() in CLITICS):
            slots.append(slot)
        else:
            slot += 1
            slots.append(slot)
        previous_end = end
    return slots


class Atoms:
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
            self.share[self.count] = news_share(word)
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


class Node:
    positional = False

    def test(self, index: Index) -> bool:
        raise NotImplementedError

    def spans(self, index: Index) -> list[Span]:
        raise NotImplementedError

    def may_hold(self, present: set[int]) -> bool:
        """False when the node cannot hold for any document whose atoms, in any field and at
        any position, are ``present``: what ``test`` needs, less positions and fields. True
        under NOT, which holds when words are absent."""
        return True


class _Words(Node):
    positional = True

    def __init__(self, atoms: tuple[int, ...], fields: frozenset[int]) -> None:
        self.atoms = atoms
        self.fields = fields
        self.length = len(atoms)
        self.atom_set = frozenset(atoms)

    def may_hold(self, present: set[int]) -> bool:
        return self.atom_set.issubset(present)

    def spans(self, index: Index) -> list[Span]:
        first = index.get(self.atoms[0])
        if not first:
            return []
        fields = self.fields
        if self.length == 1:
            return [(p, p) for p in first if p >> SHIFT in fields]
        rest = []
        for atom in self.atoms[1:]:
            positions = index.get(atom)
            if not positions:
                return []
            rest.append(positions)
        out = []
        for p in first:
            if p >> SHIFT in fields and all(p + k in rest[k - 1] for k in range(1, self.length)):
                out.append((p, p + self.length - 1))
        return out

    def test(self, index: Index) -> bool:
        if self.length == 1:
            first = index.get(self.atoms[0])
            if not first:
                return False
            fields = self.fields
            return any(p >> SHIFT in fields for p in first)
        return bool(self.spans(index))


class _Near(Node):
    positional = True

    def __init__(self, left: Node, right: Node, distance: int) -> None:
        self.left = left
        self.right = right
        self.distance = distance

    def may_hold(self, present: set[int]) -> bool:
        return self.left.may_hold(present) and self.right.may_hold(present)

    def spans(self, index: Index) -> list[Span]:
        found = index.near.get(self)
        if found is None:
            found = index.near[self] = self._spans(index)
        return found

    def _spans(self, index: Index) -> list[Span]:
        lefts = self.left.spans(index)
        if not lefts:
            return []
        rights = self.right.spans(index)
        # Each span once, in order: a chain of NEARs would otherwise double its spans per link.
        out: dict[Span, None] = {}
        for a in lefts:
            for b in rights:
                if a[0] >> SHIFT != b[0] >> SHIFT:
                    continue
                if b[0] > a[1]:
                    gap = b[0] - a[1]
                    if gap > self.distance:  # slots are never further apart than tokens
                        gap = index.slot(b[0]) - index.slot(a[1])
                else:
                    gap = a[0] - b[1]
                    if gap > self.distance:
                        gap = index.slot(a[0]) - index.slot(b[1])
                if gap <= self.distance:
                    out[a] = None
                    out[b] = None
        return list(out)

    def test(self, index: Index) -> bool:
        return bool(self.spans(index))


class _AnyWord(Node):
    """Many single words in the same fields, ORed: one set intersection instead of a loop."""

    positional = True

    def __init__(self, atoms: frozenset[int], fields: frozenset[int]) -> None:
        self.atoms = atoms
        self.fields = fields

    def may_hold(self, present: set[int]) -> bool:
        return not self.atoms.isdisjoint(present)

    def test(self, index: Index) -> bool:
        fields = self.fields
        for atom in self.atoms.intersection(index):
            if any(p >> SHIFT in fields for p in index[atom]):
                return True
        return False

    def spans(self, index: Index) -> list[Span]:
        fields = self.fields
        return [
            (p, p)
            for atom in self.atoms.intersection(index)
            for p in index[atom]
            if p >> SHIFT in fields
        ]


class _AnyPhrase(Node):
    """Many phrases, ORed: only those whose first word is in the document are tried.

    An OR of fifty phrases would otherwise call fifty tests that each find their first word
    missing. Spans come out in another order than the phrases', which no reader of spans minds:
    they are sorted or gathered in sets.
    """

    positional = True

    def __init__(self, phrases: Sequence[_Words]) -> None:
        self.by_first: dict[int, list[_Words]] = {}
        for phrase in phrases:
            self.by_first.setdefault(phrase.atoms[0], []).append(phrase)
        self.firsts = frozenset(self.by_first)

    def may_hold(self, present: set[int]) -> bool:
        by_first = self.by_first
        for atom in self.firsts.intersection(present):
            for phrase in by_first[atom]:
                if phrase.atom_set.issubset(present):
                    return True
        return False

    def test(self, index: Index) -> bool:
        by_first = self.by_first
        for atom in self.firsts.intersection(index):
            for phrase in by_first[atom]:
                if phrase.spans(index):
                    return True
        return False

    def spans(self, index: Index) -> list[Span]:
        by_first = self.by_first
        out: list[Span] = []
        for atom in self.firsts.intersection(index):
            for phrase in by_first[atom]:
                out.extend(phrase.spans(index))
        return out


def _grouped(children: list[Node]) -> list[Node]:
    """OR's children with its single-word alternatives merged per field set, and its phrases
    merged into one node that tries only the phrases whose first word is present."""
    groups: dict[frozenset[int], set[int]] = {}
    phrases: list[_Words] = []
    rest: list[Node] = []
    for child in children:
        if isinstance(child, _Words) and child.length == 1:
            groups.setdefault(child.fields, set()).add(child.atoms[0])
        elif isinstance(child, _Words):
            phrases.append(child)
        else:
            rest.append(child)
    merged: list[Node] = [_AnyWord(frozenset(a), f) for f, a in groups.items()]
    if len(phrases) > 1:
        merged.append(_AnyPhrase(phrases))
    else:
        rest = phrases + rest
    return merged + rest


class _Or(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = _grouped(children)
        self.positional = all(c.positional for c in children)

    def may_hold(self, present: set[int]) -> bool:
        for child in self.children:  # noqa: SIM110 (a loop: no generator on many unmatched items)
            if child.may_hold(present):
                return True
        return False

    def test(self, index: Index) -> bool:
        found = index.held.get(self)
        if found is None:
            found = index.held[self] = any(c.test(index) for c in self.children)
        return found

    def spans(self, index: Index) -> list[Span]:
        out: list[Span] = []
        for child in self.children:
            out.extend(child.spans(index))
        return out


class _And(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children

    def may_hold(self, present: set[int]) -> bool:
        for child in self.children:  # noqa: SIM110 (as in _Or.may_hold)
            if not child.may_hold(present):
                return False
        return True

    def test(self, index: Index) -> bool:
        found = index.held.get(self)
        if found is None:
            found = index.held[self] = all(c.test(index) for c in self.children)
        return found


class _Not(Node):
    def __init__(self, child: Node) -> None:
        self.child = child

    def test(self, index: Index) -> bool:
        return not self.child.test(index)


def build(node: rules.Node, atoms: Atoms, memo: dict[int, Node]) -> Node:
    built: Node
    if isinstance(node, rules.Words):
        ids = tuple(atoms.add(w) for w in node.words)
        built = _Words(ids, frozenset(FIELD_NUMBER[f] for f in node.fields))
    elif isinstance(node, rules.Near):
        left = build(node.left, atoms, memo)
        right = build(node.right, atoms, memo)
        built = _Near(left, right, node.distance)
    elif isinstance(node, rules.Or):
        built = _Or([build(c, atoms, memo) for c in node.children])
    elif isinstance(node, rules.And):
        built = _And([build(c, atoms, memo) for c in node.children])
    else:
        built = _Not(build(node.child, atoms, memo))
    memo[id(node)] = built
    return built


Need = frozenset[int]  # atoms that must all be present: the words of a phrase


def required_needs(node: Node, share: dict[int, float]) -> frozenset[Need] | None:
    """Needs of which at least one must be met for ``node`` to hold (None: no such set).

    Where there is a choice, the rarest in news, so that the set rules out the most items.
    """
    if isinstance(node, _Words):
        return frozenset((frozenset(node.atoms),))
    if isinstance(node, _AnyWord):
        return frozenset(frozenset((atom,)) for atom in node.atoms)
    if isinstance(node, _AnyPhrase):
        return frozenset(frozenset(p.atoms) for ps in node.by_first.values() for p in ps)
    if isinstance(node, _Near | _And):
        children = (node.left, node.right) if isinstance(node, _Near) else node.children
        options = [r for r in (required_needs(c, share) for c in children) if r is not None]
        return min(options, key=lambda r: sum(_need_share(n, share) for n in r), default=None)
    if isinstance(node, _Or):
        union: set[Need] = set()
        for child in node.children:
            found = required_needs(child, share)
            if found is None:
                return None
            union |= found
        return frozenset(union)
    return None


def _need_share(need: Need, share: dict[int, float]) -> float:
    return min(map(share.__getitem__, need))


def need_key(need: Need, share: dict[int, float]) -> int:
    """The rarest atom of a need: the one to look for first."""
    return min(need, key=lambda atom: (share[atom], atom))


def news_share(word: rules.Word) -> float:
    """Roughly the share of news items that contain ``word`` (from the story IDF table)."""
    idf = news_idf.table().get(stem(word.text), news_idf.default_idf())
    return math.exp(-idf) * (4.0 if word.prefix else 1.0)  # a prefix stands for several words


def collect(node: Node, index: Index, out: list[Span]) -> None:
    """Spans of the words that made ``node`` true (words under NOT are not reasons)."""
    if node.positional:
        out.extend(node.spans(index))
    elif isinstance(node, _And | _Or):
        for child in node.children:
            if child.test(index):
                collect(child, index, out)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled query (a topic's ``query`` or its ``exclude``)."""

    query: rules.Query
    root: Node
    nodes: dict[int, Node]  # id(rules node) -> compiled node, for explanations


def top_clauses(rule: Rule) -> list[rules.Node]:
    root = rule.query.root
    if isinstance(root, rules.Or | rules.And):
        return list(root.children)
    return [root]


def compile_rule(source: str, atoms: Atoms) -> Rule:
    """Parse one query and compile it against ``atoms``. Raises RuleSyntaxError."""
    query = rules.parse(source)
    memo: dict[int, Node] = {}
    root = build(query.root, atoms, memo)
    return Rule(query, root, memo)


# -- labelled clauses ------------------------------------------------------------------------------


def clause_key(label: str) -> str:
    """A short, stable name for a clause's ``# label``: its number ("2a") when the label starts
    with one, else its first six words, lower-cased. Relevance models name features by it."""
    head = label.split(".", 1)[0].strip()
    if head and len(head) <= 3 and head[0].isdigit():
        return head
    return " ".join(label.split()[:6]).lower()


@dataclass(frozen=True, slots=True)
class ClauseTests:
    """How to tell which labelled clauses of a query hold for a document.

    A clause holds when any node of the query that carries its label is true, the root and NOT
    nodes aside (the root is the verdict; a NOT is true when its words are absent, and its child
    tells their presence). A true node also makes true every OR above it up to the first other
    operator, so each test names the keys it proves; children are tested before their parents,
    and single words are tested as one set per label.
    """

    keys: tuple[str, ...]  # every clause key of the query, sorted
    tests: tuple[tuple[str, Node, frozenset[str]], ...]  # (key, node, keys proved when true)

    def held(self, index: Index) -> tuple[str, ...]:
        """The keys that hold, sorted."""
        found: set[str] = set()
        for key, node, proves in self.tests:
            if key not in found and node.test(index):
                found.update(proves)
        return tuple(k for k in self.keys if k in found)


NO_CLAUSES = ClauseTests((), ())


def clause_tests(rule: Rule) -> ClauseTests:
    query = rule.query
    if not query.comments:
        return NO_CLAUSES
    root = query.root
    keys: set[str] = set()
    singles: dict[tuple[str, frozenset[int], frozenset[str]], set[int]] = {}
    others: list[tuple[str, Node, frozenset[str]]] = []

    def visit(node: rules.Node, above: frozenset[str]) -> None:
        """``above``: the keys of the ORs that ``node`` being true makes true."""
        key = ""
        if node is not root and not isinstance(node, rules.Not):
            key = clause_key(query.label_of(node)) if query.label_of(node) else ""
        if key:
            keys.add(key)
        # a child of an OR proves it (and what it proves); any other operator breaks the chain
        inner = (above | {key} if key else above) if isinstance(node, rules.Or) else frozenset()
        if isinstance(node, rules.And | rules.Or):
            for child in node.children:
                visit(child, inner)
        elif isinstance(node, rules.Not):
            visit(node.child, inner)
        elif isinstance(node, rules.Near):
            visit(node.left, inner)
            visit(node.right, inner)
        if key and key not in above:  # else an OR above with the same key tells it
            built = rule.nodes[id(node)]
            proves = above | {key}
            if isinstance(built, _Words) and built.length == 1:
                singles.setdefault((key, built.fields, proves), set()).add(built.atoms[0])
            else:
                others.append((key, built, proves))

    visit(root, frozenset())
    words = [(key, _AnyWord(frozenset(a), f), proves) for (key, f, proves), a in singles.items()]
    return ClauseTests(tuple(sorted(keys)), (*words, *_phrase_runs(others)))


def _phrase_runs(
    tests: list[tuple[str, Node, frozenset[str]]],
) -> list[tuple[str, Node, frozenset[str]]]:
    """``tests`` with each run of consecutive phrases that prove the same keys made one test.

    Only neighbours are merged: nothing is tested between them, so testing them together finds
    the same keys as testing them one after the other, whatever was found before.
    """
    out: list[tuple[str, Node, frozenset[str]]] = []
    run: list[_Words] = []
    for i, (key, node, proves) in enumerate(tests):
        if isinstance(node, _Words) and node.length > 1:
            run.append(node)
            following = tests[i + 1] if i + 1 < len(tests) else None
            if following is not None and _same_phrase_test(following, key, proves):
                continue
            out.append((key, _AnyPhrase(run) if len(run) > 1 else node, proves))
            run = []
        else:
            out.append((key, node, proves))
    return out


def _same_phrase_test(
    test: tuple[str, Node, frozenset[str]], key: str, proves: frozenset[str]
) -> bool:
    node = test[1]
    return test[0] == key and test[2] == proves and isinstance(node, _Words) and node.length > 1
