"""Word stems: a light, language-agnostic stemmer shared by story grouping and the rule matcher.

Stemming lets "rules", "ruled" and "ruling" count as one word when stories are compared, and it
keys the news IDF table (:mod:`aggregator.text.idf`). Pure and cached.
"""

from __future__ import annotations

import sys
from functools import lru_cache

from aggregator.text.normalise import clean, word_key, words

STEM_LENGTH = 6  # stems are cut to this many characters: "grantmaking" and "grants" meet at "grant"

_SUFFIXES = (
    ("ies", "y", 5),
    ("ied", "y", 5),
    ("ing", "", 6),
    ("ed", "", 5),
    ("es", "", 5),
    ("s", "", 4),
)


@lru_cache(maxsize=1 << 16)
def stem(token: str) -> str:
    """A light, language-agnostic stem: lower case, no possessive, no plural or -ing/-ed ending."""
    word = word_key(token).lower()
    if word.endswith("'s"):
        word = word[:-2]
    for suffix, replacement, min_length in _SUFFIXES:
        if len(word) >= min_length and word.endswith(suffix):
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                break
            if suffix == "es" and not word.endswith(("ses", "xes", "zes", "ches", "shes")):
                continue  # "judges" loses only its "s" (and then its "e", below)
            word = word[: -len(suffix)] + replacement
            break
    if len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]  # "rule", "ruled", "ruling" meet at "rul"
    return sys.intern(word[:STEM_LENGTH])  # one copy per stem across the whole window


def stems(text: str) -> list[str]:
    """The stems of a piece of feed text (HTML and Unicode normalised first)."""
    return [stem(w) for w in words(clean(text))]
