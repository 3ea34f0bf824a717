"""How common each word stem is in news text: inverse document frequencies.

Story grouping weighs shared words by how rare they are, and the rule matcher looks for a
query's rarest word first. The table is data (``news_idf.txt``), generated from the shared news
corpus by ``bench/build_news_idf.py``; ``tests/test_news_idf.py`` checks that it is current. Each
line is an IDF value, ln((N + 1) / (df + 1)), followed by the stems that have it. Stems in fewer
than five items are absent and get :func:`default_idf`: a stem unknown to news text is rare.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

DATA_FILE = "news_idf.txt"


def default_idf() -> float:
    """The weight of a stem the table does not know: as rare as a word seen once."""
    return math.log(documents() + 1)


def documents() -> int:
    """How many news items the table was counted over."""
    return _load()[0]


def table() -> dict[str, float]:
    """Stem -> IDF, read once per process from the package's data file."""
    return _load()[1]


def format_table(documents: int, idf: dict[str, float], width: int = 99) -> str:
    """The data file's text for a table: a header line, then one line per value and its stems."""
    buckets: dict[float, list[str]] = {}
    for stem, value in idf.items():
        buckets.setdefault(value, []).append(stem)
    lines = [f"# documents {documents}"]
    for value in sorted(buckets):
        line = f"{value}"
        for stem in sorted(buckets[value]):
            if len(line) + 1 + len(stem) > width:
                lines.append(line)
                line = f"{value}"
            line += " " + stem
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> tuple[int, dict[str, float]]:
    """(documents, stem -> IDF) from the data file's text."""
    header, _, body = text.partition("\n")
    documents = int(header.removeprefix("# documents "))
    idf: dict[str, float] = {}
    for line in body.splitlines():
        value, *stems = line.split()
        weight = float(value)
        for stem in stems:
            idf[stem] = weight
    return documents, idf


@cache
def _load() -> tuple[int, dict[str, float]]:
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse_table(text)
