"""How long one story-grouping decision takes against a full window.

Builds a window of recent entries from ``../shared/corpus/news-items.csv`` (real headlines and
summaries, re-stamped to fall inside the 72 h window), grouping each through the real code, then
times the decision (features + candidate lookup + scoring) for 1,000 further items. It repeats the
measurement with a window ten times smaller, to show that the cost does not grow with the window.
The target is 2 ms per decision at 10,000 entries.

    .venv/bin/python bench/bench_stories.py [--window 10000] [--decisions 1000]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.cycle.plan import FeedPlan, NewEntry  # noqa: E402
from aggregator.models import Entry, FeedOutcome, FeedResult, TopicMatch  # noqa: E402
from aggregator.store import Store  # noqa: E402
from aggregator.stories.decide import decide  # noqa: E402
from aggregator.stories.index import StoryIndex  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "news-items.csv"
WINDOW = timedelta(hours=72)
END = datetime(2026, 1, 1, tzinfo=UTC)


def load(limit: int) -> list[Entry]:
    entries: list[Entry] = []
    with CORPUS.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if not row["title"]:
                continue
            entries.append(
                Entry(
                    feed_url=row["source"],
                    guid=row["id"],
                    link=row["link"],
                    canonical_url=row["link"],
                    title=row["title"],
                    summary=row["summary"],
                    published=None,
                    content_hash=row["id"],
                    source=row["source"],
                )
            )
            if len(entries) >= limit:
                break
    return entries


def stamped(entry: Entry, when: datetime) -> Entry:
    return Entry(**{**{f: getattr(entry, f) for f in Entry.__slots__}, "published": when})


def run(window_size: int, decisions: int, pool: list[Entry]) -> dict[str, float]:
    index = StoryIndex()
    step = WINDOW / (window_size + 1)
    start = END - WINDOW
    next_id = 1
    build_started = time.perf_counter()
    for k, entry in enumerate(pool[:window_size]):
        now = start + step * (k + 1)
        feats = index.features(stamped(entry, now), now)
        decision = decide(feats, index, now, WINDOW, index.params)
        story_id = decision.story_id
        if story_id is None:
            story_id, next_id = next_id, next_id + 1
        index.add(story_id, feats)
    build_seconds = time.perf_counter() - build_started

    timings: list[float] = []
    joined = 0
    candidates = 0
    for k, entry in enumerate(pool[window_size : window_size + decisions]):
        now = END + timedelta(seconds=k)
        item = stamped(entry, now)
        began = time.perf_counter()
        decision = decide(item, index, now, WINDOW, index.params)
        timings.append((time.perf_counter() - began) * 1000)
        joined += decision.joined
        candidates += decision.candidates
    timings.sort()
    return {
        "window_entries": window_size,
        "window_stories": len(index),
        "build_s": build_seconds,
        "mean_ms": statistics.fmean(timings),
        "p50_ms": timings[len(timings) // 2],
        "p99_ms": timings[min(len(timings) - 1, int(len(timings) * 0.99))],
        "max_ms": timings[-1],
        "joined": joined,
        "mean_candidates": candidates / len(timings),
    }


MATCHED = (TopicMatch("bench", ()),)


def store_warmup(pool: list[Entry], stored: int, recent: int) -> tuple[float, int]:
    """Seconds to read the window's story entries from a database holding ``stored`` entries."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        try:
            old = END - timedelta(days=30)
            fresh_at = END - timedelta(hours=1)
            for first in range(0, stored, 5_000):
                last = min(stored, first + 5_000)
                for fresh in (False, True):
                    when = fresh_at if fresh else old
                    ks = [k for k in range(first, last) if (k >= stored - recent) == fresh]
                    # every entry matched a topic and started its own story, as in a cycle
                    steps = tuple(
                        NewEntry(_copy(pool[k % len(pool)], k, when), MATCHED, k + 1, True)
                        for k in ks
                    )
                    outcome = FeedOutcome("bench", FeedResult.FETCHED)
                    store.apply(FeedPlan("bench", steps, False, None, None, outcome), when)
            began = time.perf_counter()
            rows = store.entries.recent_story_entries(END - WINDOW)
            return time.perf_counter() - began, len(rows)
        finally:
            store.close()


def _copy(entry: Entry, k: int, when: datetime) -> Entry:
    fields = {f: getattr(entry, f) for f in Entry.__slots__}
    fields.update(guid=f"{entry.guid}-{k}", canonical_url=f"{entry.canonical_url}#{k}")
    fields["published"] = when
    return Entry(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=1_000)
    parser.add_argument(
        "--store", action="store_true", help="also time the warm-up read at 1k and 100k stored"
    )
    args = parser.parse_args()
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} not found: the benchmark needs ../shared")
    pool = load(args.window + args.decisions)
    results = [run(size, args.decisions, pool) for size in (args.window // 10, args.window)]
    for r in results:
        print(
            f"window {r['window_entries']:>6,} entries ({r['window_stories']:,} stories, "
            f"built in {r['build_s']:.1f} s): decision mean {r['mean_ms']:.3f} ms, "
            f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, max {r['max_ms']:.3f} ms; "
            f"{r['mean_candidates']:.1f} candidates scored, {r['joined']} joined"
        )
    small, large = results
    print(f"mean cost ratio, 10x window: {large['mean_ms'] / small['mean_ms']:.2f}x")
    if args.store:
        for stored in (1_000, 100_000):
            seconds, rows = store_warmup(pool, stored, 500)
            print(
                f"warm-up read with {stored:>7,} stored entries: {rows} window entries "
                f"in {seconds * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()
