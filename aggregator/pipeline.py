"""One poll cycle: the whole system in one page.

```
due feeds ─> fetch (threads, httpx) ─> parse changed bodies + match topics (worker processes)
          ─> per feed: read what the store holds ─> plan (pure) ─> apply the plan (one write)
          ─> deliver the outbox (Slack)
```

1. :meth:`Feeds.due <aggregator.store.feeds.Feeds.due>` names the feeds whose time has come.
2. :func:`_fetched` fetches them on threads (:mod:`aggregator.ingest.fetch`: conditional GET,
   deadlines, size caps). A body identical to the last one parsed is not parsed again.
3. :class:`~aggregator.ingest.workers.ParsePool` parses each new body and matches every entry
   against the topics (:mod:`aggregator.ingest.parse`, :mod:`aggregator.rules`) on other cores.
4. For each feed, in order: the store says which of its entries it already holds
   (:meth:`Entries.view <aggregator.store.entries.Entries.view>`); the pure planner
   (:func:`~aggregator.cycle.plan.plan_feed`) decides what is new, which story each entry joins
   (:mod:`aggregator.stories`; entries another process stored meanwhile, ``poll --once`` beside
   the service, join the story window first), how each match of a topic with a model scores
   (:mod:`aggregator.relevance`: alert now, wait for the review digest, or only store it), which
   alerts and thread replies to queue, and the feed's next fetch;
   :meth:`Store.apply <aggregator.store.Store.apply>` writes that plan.
   Alerts are written in the same transaction as their entries, before anything is sent.
5. The outbox (:mod:`aggregator.notify.outbox`) sends what is due, paced per channel.

:func:`run_cycle` does only this wiring. The edges (HTTP, SQLite, Slack, the parse workers) come
in as :class:`Deps`, so a test can hand it local servers, a temporary database and a fixed
``now``. One bad feed, entry or message becomes a recorded outcome in the
:class:`~aggregator.models.CycleReport`; it never stops the cycle.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Protocol

from aggregator.config.model import Config
from aggregator.cycle.ahead import ReadyAhead
from aggregator.cycle.plan import Fetched, Policy, ops_state, plan_feed
from aggregator.ingest.dedupe import body_hash
from aggregator.ingest.workers import ParseJob
from aggregator.models import (
    CycleReport,
    DeliveryOutcome,
    FeedOutcome,
    FeedResult,
    FeedState,
    FetchOutcome,
    FetchRequest,
    FetchResult,
    ParsedFeed,
    ParseOutcome,
)
from aggregator.relevance.tiers import NO_SCORING, Scoring
from aggregator.rules.matcher import TopicMatcher
from aggregator.store import Store
from aggregator.stories.index import StoryIndex, warm_index

log = logging.getLogger(__name__)

# Fetched bodies waiting for the parser, per fetch thread: enough to fetch well past a slow feed
# at the head; each one waiting is memory (2 instead of 4: 2.5 MB less at 500 feeds, as fast).
FETCH_AHEAD_PER_THREAD = 2
SETTLE_BATCH = 50  # most feeds stored per transaction
SETTLE_AHEAD = 8  # feeds fetched and parsed, waiting to be stored


class Fetcher(Protocol):
    def fetch(self, request: FetchRequest) -> FetchOutcome: ...


class Parser(Protocol):
    def parse_stream(
        self, items: Iterable[tuple[Fetched, ParseJob | None]], *, ahead: int = 0
    ) -> Iterator[tuple[Fetched, ParseOutcome | None]]: ...


class Deliverer(Protocol):
    def deliver_due(
        self, now: datetime, *, deadline: float | None = None
    ) -> list[DeliveryOutcome]: ...


@dataclass
class Deps:
    """The edges one cycle runs against. Built once per process (see ``service/runtime.py``)."""

    config: Config
    store: Store
    fetcher: Fetcher
    parser: Parser
    matcher: TopicMatcher
    outbox: Deliverer | None = None  # None: store alerts, send nothing (e.g. a backfill)
    scoring: Scoring = NO_SCORING  # the topics' learned scores (none: the rules decide)
    stories: StoryIndex = field(default_factory=StoryIndex)
    rng: random.Random = field(default_factory=random.Random)

    @cached_property
    def policy(self) -> Policy:
        """The config as the planner reads it, built once (feeds by URL, channels by topic)."""
        return Policy.from_config(self.config, self.scoring)


def run_cycle(deps: Deps, now: datetime, *, deadline: float | None = None) -> CycleReport:
    """Fetch every due feed, store what is new, queue and deliver its alerts."""
    started = time.monotonic()
    feeds = deps.store.feeds.due(now)
    deps.stories.expire(now - timedelta(seconds=deps.config.settings.story_window))
    outcomes: list[FeedOutcome] = []
    with ReadyAhead(_fetched_and_parsed(deps, feeds), SETTLE_AHEAD) as ready:
        while (first := ready.next()) is not None:
            # A feed's entries, alerts and schedule commit together. Feeds that are ready share
            # a commit; the write lock is never held while waiting for a slow feed.
            with deps.store.transaction():
                _catch_up(deps, now)
                for fetched, parsed in ready.while_ready(first, SETTLE_BATCH):
                    outcomes.append(_settle(deps, fetched, parsed, now))
                # the write lock is still held: every entry up to here is in the story window
                deps.stories.stored_up_to = deps.store.entries.last_id()
    deliveries = deps.outbox.deliver_due(now, deadline=deadline) if deps.outbox else []
    finished = now + timedelta(seconds=time.monotonic() - started)
    report = CycleReport(now, finished, tuple(outcomes), tuple(deliveries))
    # A tick with nothing due and nothing sent is routine: at info, a 30 s tick wrote about
    # 2,900 such lines a day to the journal.
    log.log(logging.INFO if report.feeds or report.deliveries else logging.DEBUG, report.summary())
    return report


def _catch_up(deps: Deps, now: datetime) -> None:
    """Add to the story window the entries another process (``poll --once`` beside the service)
    stored since this one last wrote, so that either can join a story the other stored."""
    stored = deps.store.entries.story_entries_after(deps.stories.stored_up_to)
    warm_index(deps.stories, stored, now)


def _settle(
    deps: Deps, fetched: Fetched, parsed: ParseOutcome | None, now: datetime
) -> FeedOutcome:
    """Decide what one feed's fetch means, then write it: one read, one plan, one write."""
    entries = parsed.entries if isinstance(parsed, ParsedFeed) else ()
    stored = deps.store.entries.view(fetched.feed.url, entries)
    plan = plan_feed(fetched, parsed, stored, deps.policy, deps.stories, now, deps.rng)
    applied = deps.store.apply(plan, now)
    url, outcome, update = fetched.feed.url, plan.outcome, plan.update
    if outcome.status == FeedResult.FAILED:
        log.warning("feed %s: %s", url, outcome.reason)
    if update is not None and update.ops_notified:
        log.error("feed %s %s: %s", url, ops_state(update.status), update.error or "")
    if plan.moved_to:
        log.warning("feed %s moved permanently to %s: following it (update feeds.toml)",
                    url, plan.moved_to)  # fmt: skip
    return FeedOutcome(
        outcome.url, outcome.status, outcome.reason, outcome.new_entries, outcome.matched,
        applied.alerts, outcome.parsed,
    )  # fmt: skip


def _fetched_and_parsed(
    deps: Deps, feeds: Sequence[FeedState]
) -> Iterator[tuple[Fetched, ParseOutcome | None]]:
    """Each feed with what fetching it gave and, when its body changed, its parse outcome; in
    feed order, as soon as each is ready.

    Fetch threads and parse workers run a bounded number of feeds ahead of the caller, so storing
    one feed overlaps fetching and parsing the next ones, and a cycle holds only the bodies in
    flight rather than all of them (44 MB for 500 typical feeds).
    """

    def jobs() -> Iterator[tuple[Fetched, ParseJob | None]]:
        for feed, result in _fetched(deps, feeds):
            if not isinstance(result, FetchResult):
                yield Fetched(feed, result), None
                continue
            digest = body_hash(result.body)
            job = None
            if digest != feed.body_hash:  # a body identical to the last one is never parsed
                source = _source_name(deps.policy, feed)
                job = ParseJob(feed.url, result.body, source, result.content_type,
                               deps.matcher.rules)  # fmt: skip
            yield Fetched(feed, result, digest), job

    return deps.parser.parse_stream(jobs())


def _fetched(deps: Deps, feeds: Sequence[FeedState]) -> Iterator[tuple[FeedState, FetchOutcome]]:
    """Fetch on ``settings.concurrency`` threads, yielding in feed order.

    At most ``FETCH_AHEAD_PER_THREAD`` bodies per thread wait to be consumed; a slow feed at the
    head holds the order, while the threads keep fetching up to that many feeds past it.
    """
    if not feeds:
        return
    threads = min(max(deps.config.settings.concurrency, 1), len(feeds))
    ahead = FETCH_AHEAD_PER_THREAD * threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
        window: deque[tuple[FeedState, Future[FetchOutcome]]] = deque()
        for feed in feeds:
            request = FetchRequest(feed.url, feed.etag, feed.last_modified)
            window.append((feed, pool.submit(deps.fetcher.fetch, request)))
            if len(window) >= ahead:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()


def _source_name(policy: Policy, feed: FeedState) -> str:
    """The name alerts show for the feed: the configured one, else the stored one, else its URL."""
    feed_config = policy.feed_config(feed)
    return (feed_config.name if feed_config else "") or feed.name or feed.url
