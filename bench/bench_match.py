"""Topic matching speed: items per second on one core.

Two configurations, over the items of ``../shared/corpus/news-items.csv`` (about 47,000):
  1. the shipped ``config/topics.toml``;
  2. a synthetic config of 200 topics with 1,000 terms in total (words, phrases, wildcards, NEAR,
     NOT and field prefixes), built deterministically from the corpus's own vocabulary.

Targets: >= 20,000 items/s for (1) and >= 5,000 items/s for (2). Each run compiles a fresh matcher
so the word cache starts cold, as after a config reload.

    .venv/bin/python bench/bench_match.py [--csv PATH] [--topics FILE] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.config.load import parse_config  # noqa: E402
from aggregator.config.model import TopicConfig  # noqa: E402
from aggregator.measure.topics import read_items_csv  # noqa: E402
from aggregator.models import Document  # noqa: E402
from aggregator.rules import syntax as rules  # noqa: E402
from aggregator.rules.matcher import TopicMatcher  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "corpus" / "news-items.csv"


def synthetic_topics(
    docs: list[Document], topics: int = 200, terms: int = 1000
) -> list[TopicConfig]:
    """``topics`` topics using ``terms`` terms in all, from mid-frequency corpus words."""
    counts: Counter[str] = Counter()
    for doc in docs[:5000]:
        counts.update(w.lower() for w in re.findall(r"[A-Za-z]{4,}", doc.title + " " + doc.summary))
    vocabulary = [w for w, _ in counts.most_common(4000)[100:]]  # skip the stop-word-like top
    rng = random.Random(20261128)
    per_topic = terms // topics
    out = []
    for n in range(topics):
        words = rng.sample(vocabulary, per_topic + 1)  # a phrase takes two words
        shape = n % 5
        if shape == 0:  # plain OR of words
            query = " OR ".join(words[:5])
        elif shape == 1:  # a phrase, a wildcard and an AND
            query = f'"{words[0]} {words[1]}" OR {words[2][:5]}* OR ({words[3]} AND {words[4]})'
            query += f" OR {words[5]}"
        elif shape == 2:  # proximity
            query = f"({words[0]} OR {words[1]}) NEAR/6 ({words[2]} OR {words[3]}) OR {words[4]}"
        elif shape == 3:  # fields and NOT
            query = f"title:({words[0]} OR {words[1]}) OR ({words[2]} {words[3]} NOT {words[4]})"
        else:  # capitals-only term plus words
            query = f"{words[0].upper()} OR {words[1]} OR {words[2]} OR {words[3]} OR {words[4]}"
        out.append(TopicConfig(name=f"t{n:03d}", channel="#bench", query=query))
    return out


def run(label: str, topics: list[TopicConfig], docs: list[Document], repeat: int) -> float:
    best = 0.0
    hits = 0
    for _ in range(repeat):
        matcher = TopicMatcher.compile(topics)
        started = time.perf_counter()
        hits = sum(1 for doc in docs if matcher.match(doc))
        elapsed = time.perf_counter() - started
        best = max(best, len(docs) / elapsed)
    print(f"{label}: {len(docs)} items, {hits} matched, best of {repeat}: {best:,.0f} items/s")
    return best


def clause_cost(topics: list[TopicConfig], docs: list[Document], repeat: int) -> None:
    """What telling the labelled clauses adds to ``match``, on the items that matched (the only
    ones that pay it): the same rules with their comments removed have no labelled clauses."""
    plain = [replace(t, query=rules.describe(t.query)) for t in topics]
    matcher = TopicMatcher.compile(topics)
    matched = [doc for doc in docs if matcher.match(doc)]
    if not matched:
        return
    best: dict[str, float] = {}
    for _ in range(repeat):
        for label, config in (("with clauses", topics), ("without", plain)):
            matcher = TopicMatcher.compile(config)
            for doc in matched:  # warm the word cache: measure matching, not first lookups
                matcher.match(doc)
            started = time.perf_counter()
            for doc in matched:
                matcher.match(doc)
            per_item = (time.perf_counter() - started) / len(matched)
            best[label] = min(best.get(label, per_item), per_item)
    with_us, without_us = best["with clauses"] * 1e6, best["without"] * 1e6
    print(
        f"clause hits: {len(matched)} matched items, match() {with_us:.1f} us/item with the "
        f"labelled clauses, {without_us:.1f} without: "
        f"+{with_us - without_us:.1f} us per matched item"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--topics", type=Path, default=ROOT / "config" / "topics.toml")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.csv.exists():
        print(f"skipped: {args.csv} not found (the shared corpus is needed)")
        return 0
    docs = [item.document() for item in read_items_csv(args.csv)]
    shipped = list(parse_config({"topics.toml": args.topics.read_text(encoding="utf-8")}).topics)
    synthetic = synthetic_topics(docs)
    total_terms = sum(
        sum(1 for node in rules.walk(rules.parse(t.query).root) if isinstance(node, rules.Words))
        for t in synthetic
    )
    shipped_rate = run(f"shipped topics ({len(shipped)})", shipped, docs, args.repeat)
    synthetic_rate = run(
        f"synthetic ({len(synthetic)} topics, {total_terms} terms)", synthetic, docs, args.repeat
    )
    clause_cost(shipped, docs, args.repeat)
    shipped_ok = "met" if shipped_rate >= 20_000 else "MISSED"
    synthetic_ok = "met" if synthetic_rate >= 5_000 else "MISSED"
    print(f"targets: shipped >= 20,000 items/s ({shipped_ok}); synthetic >= 5,000 ({synthetic_ok})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
