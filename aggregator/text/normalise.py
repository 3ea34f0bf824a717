"""Shared text normalisation: HTML to plain text, Unicode folding and word tokens.

Rules and documents go through the same functions, so a query written with a curly quote, an en
dash or an accent matches text written with the straight, plain or unaccented form, and vice versa.
"""

from __future__ import annotations

import html
import re
import unicodedata

# Typographic punctuation folded to its ASCII form; invisible characters dropped.
_FOLD = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u02bc": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u00a0": " ",
        "\u00ad": None,
        "\u200b": None,
        "\u200c": None,
        "\u200d": None,
        "\u2060": None,
        "\ufeff": None,
    }
)

_FOLD_CHARS = {chr(code): folded or "" for code, folded in _FOLD.items()}
# A regex finds the few characters to fold; str.translate looks up every character (10x slower).
_FOLD_FIND = re.compile("[" + "".join(map(re.escape, _FOLD_CHARS)) + "]")

_DROP_BLOCKS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.I | re.S)
_BLOCK_TAG = re.compile(r"</?(?:p|br|div|li|ul|ol|h[1-6]|tr|td|th|table|blockquote)\b[^>]*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][^>]*>|<![^>]*>")

# A word is a run of letters and digits. Initialisms written with dots ("U.S.", "U.S", "A.I.")
# are one word, so that the query term US or AI finds them; "x.com" stays two words.
WORD = re.compile(r"[^\W\d_](?:\.[^\W\d_])+\.?(?![^\W_])|[^\W_]+")


def strip_html(text: str) -> str:
    """Plain text from an HTML fragment: tags removed, entities decoded, whitespace folded."""
    if "<" not in text and "&" not in text:
        return text
    if "<" in text:
        text = _DROP_BLOCKS.sub(" ", text)
        text = _BLOCK_TAG.sub(" ", text)
        text = _TAG.sub("", text)
    text = html.unescape(text)
    return fold_space(text)


def fold_space(text: str) -> str:
    """Each run of whitespace as one space, none at either end.

    The same as substituting ``\\s+`` and stripping, in a third of the time. Every whitespace
    character but the space is unprintable, so printable text without a double space needs only its
    ends stripped.
    """
    if text.isprintable() and "  " not in text:
        return text.strip()
    return " ".join(text.split())


def _is_latin_base(char: str) -> bool:
    return char < "\u0250"


def fold_accents(text: str) -> str:
    """Drop accents from Latin letters ("Macrón" -> "Macron"); other scripts are left as written."""
    decomposed = unicodedata.normalize("NFD", text)
    out: list[str] = []
    previous = ""
    for char in decomposed:
        if unicodedata.combining(char) and _is_latin_base(previous):
            continue  # an accent on a Latin letter: keep the letter only
        out.append(char)
        if not unicodedata.combining(char):
            previous = char
    return unicodedata.normalize("NFC", "".join(out))


def normalise(text: str) -> str:
    """NFKC, typographic quotes and dashes folded to ASCII, accents on Latin letters removed."""
    if text.isascii():
        return text
    text = _FOLD_FIND.sub(_fold_char, unicodedata.normalize("NFKC", text))
    if text.isascii():
        return text
    return fold_accents(text)


def _fold_char(match: re.Match[str]) -> str:
    return _FOLD_CHARS[match.group()]


def clean(text: str) -> str:
    """What matching sees: HTML stripped, then Unicode normalised."""
    return normalise(strip_html(text))


def word_key(token: str) -> str:
    """The comparable form of a token: an initialism loses its dots ("U.S." -> "US")."""
    return token.replace(".", "") if "." in token else token


def words(text: str) -> list[str]:
    """The words of already-cleaned text, as written (case kept): ``WORD.findall(text)``.

    ASCII text without an initialism takes a path twice as fast with the same words: letters and
    digits kept, every other byte made a space, then split.
    """
    if text.isascii() and not _may_hold_initialism(text):
        return text.encode("ascii").translate(_ASCII_WORD_BYTES).decode("ascii").split()
    return WORD.findall(text)


# Each ASCII letter and digit as itself, every other byte as a space.
_ASCII_WORD_BYTES = bytes(code if chr(code).isalnum() and code < 128 else 32 for code in range(256))


def _may_hold_initialism(text: str) -> bool:
    """True when a letter, a dot and a letter follow each other, as in "U.S" or "x.com"."""
    dot = text.find(".", 1)
    while dot != -1:
        if text[dot - 1].isalpha() and text[dot + 1 : dot + 2].isalpha():
            return True
        dot = text.find(".", dot + 1)
    return False


def word_spans(text: str) -> list[tuple[int, int]]:
    """Start and end offsets of each word of already-cleaned text, in the order of :func:`words`."""
    return [m.span() for m in WORD.finditer(text)]
