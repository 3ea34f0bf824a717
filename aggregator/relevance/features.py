"""What a relevance model reads of an item: its words, the letters of its title's words, and
which labelled clauses held.

Pure Python. The trainer and the scorer both take their terms from :func:`model_terms`, so a term
the trainer weighed is the term the scorer looks up. Words come from the matcher's own
normalisation and tokens, lower-cased, without the endings after an apostrophe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from itertools import pairwise

from aggregator.models import Document
from aggregator.rules.compile import CLITICS
from aggregator.text import normalise as textnorm

TITLE_PREFIX = "t:"  # title words are counted a second time under this prefix
CHAR_PREFIX = "c:"  # character 4-grams of the title's words ("c:<ban", "c:bans", "c:ans>")
CHAR_N = 4
# What model_terms computes, recorded in every model file: a model trained on other terms would be
# scored wrong, so the scorer refuses it. Change it whenever model_terms changes.
TERMS_RECIPE = "word 1-2-grams per field, t:title words, c:title word 4-grams (2)"
CLAUSE_PREFIX = "rule:"  # a clause that held is a feature named after its key
MATCHED = "rule:matched"  # the topic's verdict: its query matched and its exclude did not veto


def field_words(text: str) -> list[str]:
    """Lower-cased words of one field, as the matcher tokenises it, without clitic endings
    ("Trump's" gives "trump")."""
    cleaned = textnorm.clean(text)
    if "'" not in cleaned:
        return [textnorm.word_key(w).lower() for w in textnorm.words(cleaned)]
    out: list[str] = []
    previous_end = -1
    for start, end in textnorm.word_spans(cleaned):
        word = textnorm.word_key(cleaned[start:end]).lower()
        if not (start == previous_end + 1 and cleaned[previous_end] == "'" and word in CLITICS):
            out.append(word)
        previous_end = end
    return out


def _ngrams(words: Sequence[str]) -> list[str]:
    return [*words, *(f"{a} {b}" for a, b in pairwise(words))]


def _char_grams(words: Sequence[str]) -> list[str]:
    """The character 4-grams of each word marked as "<word>", so that its start and end count; a
    word of one or two letters gives one gram ("<ai>")."""
    out: list[str] = []
    for word in words:
        marked = f"<{word}>"
        last = max(1, len(marked) - CHAR_N + 1)
        out += [CHAR_PREFIX + marked[i : i + CHAR_N] for i in range(last)]
    return out


def model_terms(title: str, summary: str) -> list[str]:
    """The terms of one item: word unigrams and bigrams of each field (a bigram never spans the
    two fields); the title's unigrams again under :data:`TITLE_PREFIX`, since a title word weighs
    more; and the character 4-grams of the title's words under :data:`CHAR_PREFIX`, so that
    "export", "exports" and "exporting" share their evidence (a topic has a few dozen sampled
    positives: too few to learn every form of a word on its own).

    A model counts only the terms in its vocabulary: one trained without the grams ignores them,
    so one computation per item serves every topic."""
    title_words = field_words(title)
    return [
        *_ngrams(title_words),
        *_ngrams(field_words(summary)),
        *(TITLE_PREFIX + w for w in title_words),
        *_char_grams(title_words),
    ]


def item_terms(doc: Document) -> Counter[str]:
    """The counted terms of a document: the same for every topic's model, so compute them once
    per item when several topics score it."""
    return Counter(model_terms(doc.title, doc.summary))


def clause_features(clauses: Collection[str], matched: bool) -> list[str]:
    """The clause features of an item under one topic: one per clause key that held (see
    :attr:`aggregator.models.TopicMatch.clauses`), and the verdict when the topic matched."""
    features = sorted(CLAUSE_PREFIX + key for key in set(clauses))
    return [*features, MATCHED] if matched else features
