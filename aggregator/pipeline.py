"""One poll cycle: the whole system in one page.

```
due feeds -> fetch (threads) -> parse changed bodies and match topics (processes) -> new entries
          -> group into stories -> store entries + alerts (a transaction per batch of ready feeds)
          -> deliver the outbox
```

:func:`run_cycle` wires the stages together and does nothing else. Each stage is a module with one
job; the edges (HTTP, SQLite, Slack) are passed in as :class:`Deps`, so a test can hand it local
servers, a temporary database and a fixed ``now``. One bad feed, entry or message becomes a
recorded outcome in the :class:`~aggregator.models.CycleReport`; it never stops the cycle.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Protocol, TypeAlias

from aggregator import schedule
from aggregator.ahead import ReadyAhead
from aggregator.config import Config, FeedConfig
from aggregator.match import TopicMatcher
from aggregator.models import (
    CycleReport,
    DeliveryOutcome,
    Document,
    Entry,
    FeedOutcome,
    FetchError,
    FetchOutcome,
    FetchRequest,
    FetchResult,
    NotModified,
    ParsedFeed,
    ParseOutcome,
    TopicMatch,
)
from aggregator.parse import ParseJob, body_hash
from aggregator.store import FeedState, NewEntry, Store, insert_followup, insert_notice
from aggregator.stories import decide
from aggregator.story_index import StoryIndex

log = logging.getLogger(__name__)

Fed: TypeAlias = "tuple[FeedState, FetchOutcome]"  # a due feed and what fetching it gave
# Fetched bodies waiting for the parser, per fetch thread: enough to fetch well past a slow feed
# at the head; each one waiting is memory (2 instead of 4: 2.5 MB less at 500 feeds, as fast).
FETCH_AHEAD_PER_THREAD = 2
SETTLE_BATCH = 50  # most feeds stored per transaction
SETTLE_AHEAD = 8  # feeds fetched and parsed, waiting to be stored


class Fetcher(Protocol):
    def fetch(self, request: FetchRequest) -> FetchOutcome: ...


class Parser(Protocol):
    def parse_stream(
        self, items: Iterable[tuple[Fed, ParseJob | None]], *, ahead: int = 0
    ) -> Iterator[tuple[Fed, ParseOutcome | None]]: ...


class Deliverer(Protocol):
    def deliver_due(
        self, now: datetime, *, deadline: float | None = None
    ) -> list[DeliveryOutcome]: ...


@dataclass
class Deps:
    """The edges one cycle runs against. Built once per process (see ``service.py``)."""

    config: Config
    store: Store
    fetcher: Fetcher
    parser: Parser
    matcher: TopicMatcher
    outbox: Deliverer | None = None  # None: store alerts, send nothing (e.g. a backfill)
    stories: StoryIndex = field(default_factory=StoryIndex)
    rng: random.Random = field(default_factory=random.Random)

    @cached_property
    def feed_configs(self) -> dict[str, FeedConfig]:
        """Feeds by URL. ``Config.feed`` scans the list, and a cycle asks several times per feed:
        the cost grew with the square of the feed count."""
        return {f.url: f for f in self.config.feeds}


def run_cycle(deps: Deps, now: datetime, *, deadline: float | None = None) -> CycleReport:
    """Fetch every due feed, store what is new, queue and deliver its alerts."""
    settings = deps.config.settings
    started = time.monotonic()
    feeds = deps.store.due_feeds(now)
    deps.stories.expire(now - timedelta(seconds=settings.story_window))
    outcomes: list[FeedOutcome] = []
    with ReadyAhead(_fetched_and_parsed(deps, feeds), SETTLE_AHEAD) as ready:
        while (first := ready.next()) is not None:
            # A feed's entries, alerts and schedule commit together. Feeds that are ready share
            # a commit; the write lock is never held while waiting for a slow feed.
            with deps.store.transaction():
                for (feed, result), parsed in ready.while_ready(first, SETTLE_BATCH):
                    outcome = _settle_feed(deps, feed, result, parsed, now)
                    outcomes.append(outcome)
                    if outcome.status == "failed":
                        log.warning("feed %s: %s", feed.url, outcome.reason)
    deliveries = deps.outbox.deliver_due(now, deadline=deadline) if deps.outbox else []
    finished = now + timedelta(seconds=time.monotonic() - started)
    report = CycleReport(now, finished, tuple(outcomes), tuple(deliveries))
    # A tick with nothing due and nothing sent is routine: at info, a 30 s tick wrote about
    # 2,900 such lines a day to the journal.
    log.log(logging.INFO if outcomes or deliveries else logging.DEBUG, report.summary())
    return report


def _fetched_and_parsed(
    deps: Deps, feeds: Sequence[FeedState]
) -> Iterator[tuple[Fed, ParseOutcome | None]]:
    """Each feed with its fetch outcome and, when its body changed, its parse outcome; in feed
    order, as soon as each is ready.

    Fetch threads and parse workers run a bounded number of feeds ahead of the caller, so storing
    one feed overlaps fetching and parsing the next ones, and a cycle holds only the bodies in
    flight rather than all of them (44 MB for 500 typical feeds). A body identical to the last
    one parsed is never parsed again.
    """

    def jobs() -> Iterator[tuple[Fed, ParseJob | None]]:
        for feed, result in _fetched(deps, feeds):
            changed = isinstance(result, FetchResult) and body_hash(result.body) != feed.body_hash
            job = None
            if changed:
                assert isinstance(result, FetchResult)
                job = ParseJob(feed.url, result.body, _source(deps, feed), result.content_type,
                               deps.matcher.rules)  # fmt: skip
            yield (feed, result), job

    return deps.parser.parse_stream(jobs())


def _fetched(deps: Deps, feeds: Sequence[FeedState]) -> Iterator[Fed]:
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


# -- one feed --------------------------------------------------------------------------------------


def _settle_feed(
    deps: Deps,
    feed: FeedState,
    result: FetchOutcome,
    parsed: ParseOutcome | None,
    now: datetime,
) -> FeedOutcome:
    """Store one feed's new entries and its schedule; report what happened."""
    store = deps.store
    url = feed.url
    if isinstance(result, FetchError):
        _reschedule(deps, feed, now, ok=False, error=result.reason, result=result)
        gone = result.kind == "gone"
        store.log_fetch(url, now, "gone" if gone else "failed", status_code=result.status,
                        elapsed=result.elapsed, error=result.reason)  # fmt: skip
        return FeedOutcome(url, "gone" if gone else "failed", result.reason)

    moved = result.permanent_redirect
    if parsed is None:  # a 304, or a body identical to the last one parsed
        _reschedule(deps, feed, now, ok=True, result=result)
        store.log_fetch(url, now, "unchanged", status_code=_status(result), elapsed=result.elapsed)
        return FeedOutcome(url, "unchanged", _follow_move(deps, url, moved))

    assert isinstance(result, FetchResult)
    if not isinstance(parsed, ParsedFeed):
        _reschedule(deps, feed, now, ok=False, error=parsed.reason, result=result)
        store.log_fetch(url, now, "failed", status_code=result.status, size=len(result.body),
                        elapsed=result.elapsed, error=parsed.reason)  # fmt: skip
        return FeedOutcome(url, "failed", parsed.reason, parsed=True)

    counts = _store_entries(deps, feed, parsed, now)
    _reschedule(deps, feed, now, ok=True, result=result, body=body_hash(result.body))
    store.log_fetch(url, now, "fetched", status_code=result.status, size=len(result.body),
                    elapsed=result.elapsed, new_entries=counts[0])  # fmt: skip
    if feed.first_polled_at is None:
        store.update_feed(url, first_polled_at=now)
    note = _follow_move(deps, url, moved) or parsed.warning or ""
    return FeedOutcome(url, "fetched", note, *counts, parsed=True)


def _store_entries(
    deps: Deps, feed: FeedState, parsed: ParsedFeed, now: datetime
) -> tuple[int, int, int]:
    """Insert the entries not seen before; queue alerts for those that match. Returns counts
    (new, matched, alerts queued)."""
    entries = parsed.entries
    # The parse worker matched them with this cycle's rules (jobs carry deps.matcher.rules).
    by_worker = parsed.matches
    store, config = deps.store, deps.config
    feed_config = _feed_config(deps, feed)
    primary = bool(feed_config and feed_config.primary)
    known = store.known_guids(feed.url, (e.guid for e in entries))
    # First poll of a feed: old entries are history, not news, so they are stored silently.
    window_start = now - timedelta(seconds=config.settings.first_poll_window)
    first_poll = feed.first_polled_at is None
    new = matched = alerts = 0
    # Most entries match no topic and are only stored. They wait here and are inserted as one
    # batch, before anything reads the entries table again (a changed entry, a story lookup).
    unmatched: list[NewEntry] = []

    def store_unmatched() -> None:
        nonlocal new
        if unmatched:
            new += sum(added is not None for added in store.insert_entries(unmatched, now))
            unmatched.clear()

    for position, entry in enumerate(entries):
        previous_hash = known.get(entry.guid)
        if previous_hash is not None:
            if previous_hash != entry.content_hash:
                store_unmatched()
                _entry_changed(deps, feed.url, entry, now)
            continue
        known[entry.guid] = entry.content_hash  # a feed that repeats a guid counts it once
        found = by_worker[position] if by_worker is not None else None
        matches = _matches(deps.matcher, feed_config, entry, found)
        if not matches:
            # Joins the story of an earlier entry with its canonical URL, else starts one.
            unmatched.append(NewEntry(entry, (), (), None, {"primary": primary}, story_by_url=True))
            continue
        store_unmatched()  # the story lookup must see this feed's earlier entries
        fresh = not first_poll or (entry.published is not None and entry.published >= window_start)
        seen_url_story = store.story_of_canonical_url(entry.canonical_url)
        story_id, joined_story = seen_url_story, None
        # Computed once: deciding and indexing need the same features (~1 ms an entry).
        feats = deps.stories.features(entry, now)
        if seen_url_story is None:
            window = timedelta(seconds=config.settings.story_window)
            # Only the story id is kept: putting the evidence into words would be wasted.
            decision = decide(feats, deps.stories, now, window, explain=False)
            joined_story = story_id = decision.story_id
        alert_channels = _by_channel(config, matches) if fresh and seen_url_story is None else ()
        added = store.add_entry(
            NewEntry(entry, tuple(matches), alert_channels, story_id, {"primary": primary}),
            now,
        )
        if added is None or added.story_id is None:  # a matching entry always has a story
            continue
        new += 1
        matched += 1
        alerts += added.alerts
        deps.stories.add(added.story_id, feats, entry.title)
        if joined_story is not None and fresh:
            _thread_reply(deps, added.story_id, added.entry_id, entry, now)
    store_unmatched()
    return new, matched, alerts


def _matches(
    matcher: TopicMatcher,
    feed: FeedConfig | None,
    entry: Entry,
    rule_matches: Sequence[TopicMatch] | None = None,
) -> list[TopicMatch]:
    """Rule matches (``rule_matches`` when the parse worker found them), plus the topics every
    item of this feed belongs to."""
    if rule_matches is None:
        rule_matches = matcher.match(Document(entry.title, entry.summary, entry.source, entry.link))
    found = {m.topic: m for m in rule_matches}
    for topic in feed.topics if feed else ():
        found.setdefault(topic, TopicMatch(topic, ()))
    return list(found.values())


def _by_channel(
    config: Config, matches: Sequence[TopicMatch]
) -> tuple[tuple[str, tuple[TopicMatch, ...]], ...]:
    """One alert per channel: topics that share a channel share one message."""
    channels: dict[str, list[TopicMatch]] = {}
    for m in matches:
        channels.setdefault(config.topic(m.topic).channel, []).append(m)
    return tuple((channel, tuple(ms)) for channel, ms in channels.items())


def _thread_reply(deps: Deps, story_id: int, entry_id: int, entry: Entry, now: datetime) -> None:
    """A further outlet of an alerted story: a reply in each alert's thread (the outbox batches
    them per story), and an edit of each parent to show how widely the story is covered."""
    primary = _is_primary(deps, entry.feed_url)
    item = {"source": entry.source, "title": entry.title, "link": entry.link, "primary": primary}
    coverage = _coverage(deps, story_id)
    for parent in deps.store.alerts_for_story(story_id):
        if parent["entry_id"] == entry_id:
            continue  # this entry's own alert, in a channel the story had not reached yet
        key = f"reply:{parent['id']}:{entry.feed_url}:{entry.guid}"
        insert_followup(deps.store, parent["id"], "reply", {"items": [item]}, now, key)
        _edit_parent(deps, parent, coverage, now, changed_text=False)


def _entry_changed(deps: Deps, feed_url: str, entry: Entry, now: datetime) -> None:
    """Same guid, new text: store it, and edit every alert it caused in place."""
    entry_id = deps.store.update_entry_content(feed_url, entry, now)
    if entry_id is None:
        return
    for parent in deps.store.alerts_for_entry(entry_id):
        coverage = _coverage(deps, parent["story_id"]) if parent["story_id"] else {}
        _edit_parent(deps, parent, coverage, now, changed_text=True)


def _coverage(deps: Deps, story_id: int) -> dict[str, object]:
    """What a story's parent message shows: its outlet count and a link to the official text."""
    members = deps.store.story_members(story_id)
    outlets = len({source or feed_url for feed_url, source, _ in members})
    official = next((link for url, _, link in members if _is_primary(deps, url)), None)
    return {"outlets": outlets, "official_link": official}


def _edit_parent(
    deps: Deps, parent: dict[str, object], coverage: dict[str, object], now: datetime, *,
    changed_text: bool,
) -> None:  # fmt: skip
    """Queue a ``chat.update`` of a posted alert, merged into one already waiting."""
    first = json.loads(str(parent["payload"] or "{}"))
    payload = {"primary": bool(first.get("primary")), **coverage, "updated": changed_text}
    alert_id = int(str(parent["id"]))
    deps.store.queue_parent_edit(alert_id, payload, now)


# -- schedule --------------------------------------------------------------------------------------


def _reschedule(
    deps: Deps,
    feed: FeedState,
    now: datetime,
    *,
    ok: bool,
    result: FetchOutcome,
    error: str | None = None,
    body: str | None = None,
) -> None:
    """Store validators and the next fetch time; back off after errors; raise ops notices."""
    settings = deps.config.settings
    feed_config = _feed_config(deps, feed)
    interval = (feed_config.interval if feed_config else None) or settings.poll_interval
    plan = schedule.plan(
        now,
        interval=interval,
        succeeded=ok,
        gone=isinstance(result, FetchError) and result.kind == "gone",
        previous_errors=feed.consecutive_errors,
        failing_since=feed.failing_since,
        ops_notified_at=feed.ops_notified_at,
        retry_after=result.retry_after if isinstance(result, FetchError) else None,
        max_age=None if isinstance(result, FetchError) else result.max_age,
        backoff_cap=settings.backoff_cap,
        failing_after=settings.failing_after,
        jitter=settings.jitter,
        rng=deps.rng,
    )
    fields: dict[str, object] = {
        "status": plan.status,
        "next_fetch_at": plan.next_fetch_at,
        "consecutive_errors": plan.consecutive_errors,
        "failing_since": plan.failing_since,
        "last_fetch_at": now,
    }
    if ok:
        fields |= {"last_success_at": now, "ops_notified_at": None}
    else:
        fields |= {"last_error": error, "last_error_at": now}
    if isinstance(result, FetchResult):
        fields |= {"etag": result.etag, "last_modified": result.last_modified}
    if body is not None:
        fields["body_hash"] = body
    if plan.notify_ops:
        fields["ops_notified_at"] = now
        _ops_notice(deps, feed, plan, error or "", now)
    deps.store.update_feed(feed.url, **fields)


def _ops_notice(
    deps: Deps, feed: FeedState, plan: schedule.FeedSchedule, error: str, now: datetime
) -> None:
    channel = deps.config.settings.ops_channel
    state = "is gone (HTTP 410): polling stopped" if plan.status == "gone" else "keeps failing"
    log.error("feed %s %s: %s", feed.url, state, error)
    if channel:
        since = plan.failing_since.isoformat() if plan.failing_since else ""
        text = f"Feed {feed.name or feed.url} ({feed.url}) {state}. Last error: {error}"
        insert_notice(deps.store, channel, "ops", text, now, f"ops:{feed.url}:{since}")


def _follow_move(deps: Deps, url: str, new_url: str | None) -> str:
    """Store a permanent redirect; returns the note for the cycle report ("" when none)."""
    if not new_url or new_url == url:
        return ""
    note = f"moved permanently to {new_url}: following it (update feeds.toml)"
    log.warning("feed %s %s", url, note)
    deps.store.rename_feed(url, new_url)
    return note


# -- small helpers ---------------------------------------------------------------------------------


def _is_primary(deps: Deps, feed_url: str) -> bool:
    feed = deps.feed_configs.get(feed_url)
    return bool(feed and feed.primary)


def _feed_config(deps: Deps, feed: FeedState) -> FeedConfig | None:
    configs = deps.feed_configs
    return configs.get(feed.url) or (configs.get(feed.moved_from) if feed.moved_from else None)


def _source(deps: Deps, feed: FeedState) -> str:
    feed_config = _feed_config(deps, feed)
    return (feed_config.name if feed_config else "") or feed.name or feed.url


def _status(result: FetchOutcome) -> int:
    return 304 if isinstance(result, NotModified) else getattr(result, "status", 0)
