"""The peers' corpora through the real path: local HTTP server -> fetch -> parse -> SQLite.

Every file of ``../shared/corpus/feedparser-tests`` (feedparser's own fixtures, about 2,100) and of
``../shared/corpus/real-feeds`` (about 120 snapshots) is served on 127.0.0.1, fetched with the real
:class:`Fetcher`, parsed on every core with :func:`parse_feed`, and written with the real
:class:`Store`. The process must never crash, and each file must end as entries or a recorded
per-feed outcome in the fetch log. The counts are printed (``pytest -s``) so they can be quoted.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from aggregator.config.load import load_config
from aggregator.config.model import Settings
from aggregator.cycle.plan import FetchRecord
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.workers import ParseJob, ParsePool
from aggregator.models import (
    FeedResult,
    FetchError,
    FetchRequest,
    FetchResult,
    NotModified,
    ParsedFeed,
)
from aggregator.rules.matcher import TopicMatcher
from aggregator.store import Store
from tests.feedserver import FeedServer, Reply
from tests.storing import Item, store_items

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPORA = {
    "feedparser-tests": SHARED / "corpus" / "feedparser-tests",
    "real-feeds": SHARED / "corpus" / "real-feeds",
}
NOT_FEEDS = {"README.md", "SOURCES.md", "MANIFEST.csv"}
HEADER = re.compile(rb"^Header:\s+([^:]+):(.*)$", re.MULTILINE)
ENCODINGS = {".gz": "gzip", ".z": "deflate"}
NOW = datetime(2026, 3, 1, tzinfo=UTC)

pytestmark = pytest.mark.skipif(
    not all(p.is_dir() for p in CORPORA.values()),
    reason=f"the shared corpora are absent (expected {SHARED / 'corpus'})",
)


def corpus_files() -> list[tuple[str, Path]]:
    files = []
    for name, root in CORPORA.items():
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name not in NOT_FEEDS:
                files.append((f"/{name}/{path.relative_to(root).as_posix()}", path))
    return files


def _reply(server: FeedServer, route: str, path: Path, body: bytes) -> Reply:
    """The file as feedparser's harness served it: its ``Header:`` comment lines become headers."""
    encoding = ENCODINGS.get(path.suffix)
    if encoding:
        return Reply(
            stream=lambda: iter([body]),
            length=len(body),
            raw_encoding=encoding,
            content_type="application/xml",
        )
    headers: dict[str, str] = {}
    content_type = "application/xml"
    status = 200
    for m in HEADER.finditer(body[:4096]):
        key = m.group(1).decode("latin-1").strip()
        value = m.group(2).decode("latin-1").strip()
        base = server.url(route.split("/tests/", 1)[0])  # the harness served tests/ at the root
        value = value.replace("http://localhost:8097", base).replace("http://127.0.0.1:8097", base)
        if key.lower() == "content-type":
            content_type = value
        elif key.lower() == "status" and value.isdigit():
            status = int(value)
        else:
            headers[key] = value
    return Reply(status=status, body=body, content_type=content_type, headers=headers)


def test_every_corpus_file_is_ingested_or_recorded(tmp_path: Path) -> None:
    files = corpus_files()
    assert len(files) > 2000
    store = Store.open(tmp_path / "corpus.db")
    counts: Counter[str] = Counter()
    entry_counts: Counter[str] = Counter()
    crashes: list[str] = []
    with FeedServer() as server:
        urls = []
        for route, path in files:
            quoted = quote(route)
            server.route(quoted, _reply(server, route, path, path.read_bytes()))
            urls.append(server.url(quoted))
        # The old harness answered this path with a bare 304 (see http_redirect_to_304.xml).
        server.route("/feedparser-tests/removed-history/-/return-304.xml", Reply(status=304))
        settings = Settings(
            fetch_timeout=5.0, fetch_deadline=10.0, concurrency=16, allow_private=True
        )
        with Fetcher(settings) as fetcher:
            outcomes = fetcher.fetch_many([FetchRequest(u) for u in urls])

    fetched = [o for o in outcomes if isinstance(o, FetchResult)]
    rules = TopicMatcher.compile(load_config(ROOT / "config", {}).topics).rules  # shipped topics
    jobs = ((o.url, ParseJob(o.url, o.body, "", o.content_type, rules)) for o in fetched)
    with ParsePool() as pool:  # every core, as the pipeline does
        parsed = dict(pool.parse_stream(jobs))

    batch: list[Item] = []
    errors: list[str] = []
    for outcome in outcomes:
        url = outcome.url
        corpus = url.split("/")[3]
        try:
            if isinstance(outcome, FetchError):
                counts[f"{corpus}: fetch errors"] += 1
                errors.append(outcome.reason)
                record = FetchRecord(FeedResult.FAILED, outcome.status, error=outcome.reason)
                store.history.log_fetch(url, NOW, record)
                continue
            if isinstance(outcome, NotModified):
                counts[f"{corpus}: not modified"] += 1
                store.history.log_fetch(url, NOW, FetchRecord(FeedResult.UNCHANGED, 304))
                continue
            result = parsed[url]
            assert result is not None
            if not isinstance(result, ParsedFeed):
                counts[f"{corpus}: parse errors"] += 1
                errors.append(result.reason)
                record = FetchRecord(FeedResult.FAILED, 200, error=result.reason)
                store.history.log_fetch(url, NOW, record)
                continue
            # the cycle's contract: every parsed entry comes back with its matches
            assert result.matches is not None and len(result.matches) == len(result.entries)
            key = "feeds with entries" if result.entries else "valid feeds without entries"
            counts[f"{corpus}: {key}"] += 1
            entry_counts[corpus] += len(result.entries)
            batch.extend(Item(e) for e in result.entries)
            record = FetchRecord(FeedResult.FETCHED, 200, len(outcome.body), None,
                                 len(result.entries), result.warning)  # fmt: skip
            store.history.log_fetch(url, NOW, record)
        except Exception as e:  # a crash is what this test hunts for: count it, then fail
            crashes.append(f"{url}: {type(e).__name__}: {e}")
    stored = len(store_items(store, batch, NOW).entry_ids)
    logged = int(store.db.value("SELECT count(DISTINCT feed_url) FROM fetches"))
    store.close()

    print(f"\ncorpus: {len(files)} files, {len(crashes)} crashes, {stored} entries stored")
    for corpus in CORPORA:
        parts = ", ".join(
            f"{counts[k]} {k.split(': ', 1)[1]}" for k in sorted(counts) if k.startswith(corpus)
        )
        print(f"  {corpus}: {parts}; {entry_counts[corpus]} entries")
    for reason in errors:
        print(f"  error: {reason}")
    assert crashes == []
    assert logged == len(files)  # every file has a recorded outcome in the fetch log
    assert sum(counts.values()) == len(files)
    real = sum(v for k, v in counts.items() if k.startswith("real-feeds"))
    assert counts["real-feeds: feeds with entries"] >= 0.9 * real
    assert stored == sum(entry_counts.values())
