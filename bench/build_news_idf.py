"""Regenerate ``aggregator/text/news_idf.txt``: how common each word stem is in news text.

The table is the document frequency of every stem over ``../shared/corpus/news-items.csv`` (about
46,000 headlines and summaries from ten outlets, 2020-2026), leaving out the items of the story
evaluation set so that ``eval-stories`` measures on text the table never saw. Stems seen in fewer
than ``MIN_DF`` items are left out: the grouping treats an unknown stem as rare, which they are.

    .venv/bin/python bench/build_news_idf.py            # write the table
    .venv/bin/python bench/build_news_idf.py --check    # exit 1 if the shipped table is stale
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.text import idf  # noqa: E402
from aggregator.text.stems import stems  # noqa: E402

SHARED = ROOT.parent / "shared"
TABLE = ROOT / "aggregator" / "text" / idf.DATA_FILE
MIN_DF = 5


def build(shared: Path = SHARED) -> str:
    """The data file's text, counted from the shared corpus."""
    stories = (shared / "eval" / "stories-dev.jsonl").read_text(encoding="utf-8")
    held_out = {json.loads(line)["id"] for line in stories.splitlines() if line.strip()}
    df: Counter[str] = Counter()
    documents = 0
    with (shared / "corpus" / "news-items.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["id"] in held_out:
                continue
            documents += 1
            df.update(set(stems(row["title"] + " " + row["summary"])))
    table = {
        stem: round(math.log((documents + 1) / (count + 1)), 1)
        for stem, count in df.items()
        if count >= MIN_DF and " " not in stem
    }
    return idf.format_table(documents, table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    text = build()
    if args.check:
        if TABLE.read_text(encoding="utf-8") != text:
            print(f"{TABLE} is stale: run bench/build_news_idf.py", file=sys.stderr)
            return 1
        print(f"{TABLE} is current")
        return 0
    TABLE.write_text(text, encoding="utf-8")
    print(f"{TABLE}: {len(text.splitlines()) - 1} lines from {text.split()[2]} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
