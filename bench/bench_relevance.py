"""Relevance models: load time, memory, and the cost of scoring a candidate on one core.

Over the items of ``../shared/corpus/news-items.csv`` that a shipped topic's rule matches (the
only items the service scores), with the shipped models of ``config/models``:
  - load: both models, best of 5, and their size in memory (tracemalloc);
  - score: the item's terms (computed once per item, shared by every topic) plus one topic's
    lookup, per item and topic, best of 5, pinned to one core.

Target (issue 17): at most 0.2 ms per candidate item on one core.

    .venv/bin/python bench/bench_relevance.py [--csv PATH] [--config DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.config.load import load_config  # noqa: E402
from aggregator.measure.topics import read_items_csv  # noqa: E402
from aggregator.relevance.features import item_terms  # noqa: E402
from aggregator.relevance.model import RelevanceModel, Vocabularies, default_model_path  # noqa: E402
from aggregator.rules.matcher import TopicMatcher  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "corpus" / "news-items.csv"


def load(config: Path, names: list[str]) -> dict[str, RelevanceModel]:
    vocabularies = Vocabularies()
    return {
        n: RelevanceModel.load(default_model_path(config, n), n, vocabularies=vocabularies)
        for n in names
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--config", type=Path, default=ROOT / "config")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    config = load_config(args.config, {})
    names = [t.name for t in config.topics if default_model_path(args.config, t.name).exists()]
    if not names:
        print(f"skipped: no models in {args.config / 'models'}")
        return 0
    best_load = min(_timed(lambda: load(args.config, names)) for _ in range(args.repeat))
    tracemalloc.start()
    models = load(args.config, names)
    loaded, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = sum(default_model_path(args.config, n).stat().st_size for n in names)
    print(f"models: {', '.join(names)}: {size / 1e6:.2f} MB on disk; load "
          f"{best_load * 1000:.0f} ms (best of {args.repeat}); {loaded / 1e6:.2f} MB loaded, "
          f"{peak / 1e6:.1f} MB peak while loading")  # fmt: skip
    if not args.csv.exists():
        print(f"skipped scoring: {args.csv} not found (the shared corpus is needed)")
        return 0
    matcher = TopicMatcher.compile(config.topics)
    work = []
    for item in read_items_csv(args.csv):
        doc = item.document()
        found = [(models[m.topic], m.clauses) for m in matcher.match(doc) if m.topic in models]
        if found:
            work.append((doc, found))
    pairs = sum(len(found) for _, found in work)
    terms_s = min(_timed(lambda: [item_terms(d) for d, _ in work]) for _ in range(args.repeat))
    counted = [(item_terms(d), found) for d, found in work]

    def lookups() -> None:
        for counts, found in counted:
            for model, clauses in found:
                model.score_terms(counts, clauses)

    lookup_s = min(_timed(lookups) for _ in range(args.repeat))
    per_item_terms = terms_s / len(work) * 1e6
    per_lookup = lookup_s / pairs * 1e6
    full = per_item_terms + per_lookup
    print(f"score: {len(work)} candidate items, {pairs} (item, topic) pairs, one core: terms "
          f"{per_item_terms:.1f} us per item + lookup {per_lookup:.1f} us per topic = "
          f"{full:.1f} us for one topic's score")  # fmt: skip
    print(f"target: <= 200 us per candidate item ({'met' if full <= 200 else 'MISSED'})")
    return 0


def _timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
