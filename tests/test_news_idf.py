"""The news IDF table (``aggregator/text/news_idf.txt``) is generated data: it must be what
``bench/build_news_idf.py`` builds today from ``../shared``, with today's stemmer.

A change to the tokenizer or the stemmer changes the stems, and a table left behind silently
weighs words wrongly in story grouping. This test fails until the table is built again.
"""

from __future__ import annotations

import pytest

from aggregator.text.idf import parse_table
from bench.build_news_idf import SHARED, TABLE, build

SOURCES = [SHARED / "corpus" / "news-items.csv", SHARED / "eval" / "stories-dev.jsonl"]
MISSING = [str(path) for path in SOURCES if not path.is_file()]
SHOWN = 10  # differing stems named in a failure


@pytest.mark.skipif(bool(MISSING), reason=f"the table's sources are absent ({', '.join(MISSING)})")
def test_the_news_idf_table_is_current() -> None:
    shipped_text = TABLE.read_text(encoding="utf-8")
    fresh_text = build()
    if shipped_text == fresh_text:
        return
    shipped_count, shipped = parse_table(shipped_text)
    fresh_count, fresh = parse_table(fresh_text)
    differing = [
        f"{stem!r}: {shipped.get(stem)} -> {fresh.get(stem)}"
        for stem in sorted(shipped.keys() | fresh.keys())
        if shipped.get(stem) != fresh.get(stem)
    ]
    pytest.fail(
        f"{TABLE} is stale ({len(differing)} stems differ, counted over {shipped_count} items, now "
        f"{fresh_count}: {'; '.join(differing[:SHOWN])}{'; ...' if len(differing) > SHOWN else ''}"
        "): run .venv/bin/python bench/build_news_idf.py and commit the table"
    )
