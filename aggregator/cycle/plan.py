"""Decide, then do: what one feed's fetch means for the database, as a plan.

:func:`plan_feed` is a pure function of what was fetched and parsed, of what the store holds about
those entries (:class:`StoredView`, read in one call), and of the story window. It decides:

- which entries are new, which changed their text and which were seen before;
- for each new entry: its story (the story of an earlier entry with the same link, a story of
  the window it resembles, or a new one), and its alerts, one per channel;
- for a topic with a model: the item's score and tier, so that it alerts now, goes to the
  topic's review digest as "possibly relevant", or is only stored
  (:mod:`aggregator.relevance.tiers`);
- first-poll silence: on a feed's first poll, items older than ``first_poll_window`` are stored
  without alerts, so adding forty feeds does not flood Slack;
- follow-ups: a fresh entry that joins a story already alerted becomes a reply in each alert's
  thread and an edit of each alert;
- the feed's schedule (next fetch, backoff, status), its fetch-log line and any ops notice.

One store call (:meth:`aggregator.store.Store.apply`) then writes the plan in one transaction.
The story window (:class:`~aggregator.stories.index.StoryIndex`) is the one thing planning
changes: each planned matching entry is added to it, so that later entries of the same feed can
join its story. Nothing here does I/O or reads the clock: ``now`` and the random source come in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aggregator.config.model import Config, FeedConfig, Settings
from aggregator.cycle import schedule
from aggregator.models import (
    Document,
    Entry,
    FeedOutcome,
    FeedResult,
    FeedState,
    FeedStatus,
    FetchError,
    FetchOutcome,
    FetchResult,
    NotModified,
    ParsedFeed,
    ParseOutcome,
    TopicMatch,
)
from aggregator.relevance.tiers import NO_SCORING, Scoring, Tier
from aggregator.stories.decide import decide
from aggregator.stories.index import StoryIndex

# -- what goes in ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetched:
    """A due feed, what fetching it gave, and the hash of a body that was fetched."""

    feed: FeedState
    result: FetchOutcome
    body_hash: str | None = None


@dataclass(frozen=True, slots=True)
class StoredView:
    """What the store holds about one feed's fetched entries, read just before planning."""

    hashes: Mapping[str, str] = field(default_factory=dict)  # guid -> content hash, this feed
    url_stories: Mapping[str, int] = field(default_factory=dict)  # canonical URL -> its story
    next_story_id: int = 1  # the first id a story started by this plan takes


@dataclass(frozen=True)
class Policy:
    """The config, as the planner reads it: settings, feeds by URL, each topic's channel, and
    the topics' learned scores."""

    settings: Settings
    feeds: Mapping[str, FeedConfig]
    channels: Mapping[str, str]
    scoring: Scoring = NO_SCORING

    @classmethod
    def from_config(cls, config: Config, scoring: Scoring = NO_SCORING) -> Policy:
        return cls(
            config.settings,
            {f.url: f for f in config.feeds},
            {t.name: t.channel for t in config.topics},
            scoring,
        )

    def feed_config(self, feed: FeedState) -> FeedConfig | None:
        """A moved feed (a permanent redirect) still answers to the URL it was configured with."""
        found = self.feeds.get(feed.url)
        if found is None and feed.moved_from:
            found = self.feeds.get(feed.moved_from)
        return found

    def is_primary(self, feed_url: str) -> bool:
        feed = self.feeds.get(feed_url)
        return bool(feed and feed.primary)


# -- what comes out -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedAlert:
    """An alert for a story in one channel; the topics that share the channel share it."""

    channel: str
    topics: tuple[TopicMatch, ...]
    review: bool = False  # "possibly relevant": for the topics' review digest, not an alert now


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry not stored before, and what it joins or starts."""

    entry: Entry
    matches: tuple[TopicMatch, ...]
    story_id: int | None  # None: in no story (it matched nothing and its link is new)
    starts_story: bool = False  # ``story_id`` is a new story, started by this entry
    alerts: tuple[PlannedAlert, ...] = ()
    follow_up: bool = False  # a further outlet of an alerted story: reply to and edit its alerts


@dataclass(frozen=True, slots=True)
class ChangedEntry:
    """An entry stored before whose title or text changed: store it, edit the alerts it caused."""

    entry: Entry


EntryStep = NewEntry | ChangedEntry


@dataclass(frozen=True, slots=True)
class FeedUpdate:
    """The feed's row after this fetch."""

    status: FeedStatus
    next_fetch_at: datetime | None
    consecutive_errors: int
    failing_since: datetime | None
    last_fetch_at: datetime
    error: str | None = None  # None: the fetch succeeded (and the last error stays as it was)
    validators: tuple[str | None, str | None] | None = None  # (ETag, Last-Modified) of a 200
    body_hash: str | None = None  # of a body parsed now
    first_poll: bool = False  # the first poll that parsed the feed
    ops_notified: bool | None = None  # True: notified now; False: cleared; None: unchanged


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One line of the feed's fetch log."""

    outcome: FeedResult
    status_code: int | None = None
    size: int | None = None
    elapsed: float | None = None
    new_entries: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """An operations notice for the ops channel, queued once per key."""

    channel: str
    text: str
    key: str


@dataclass(frozen=True, slots=True)
class FeedPlan:
    """Everything one fetched feed changes in the database.

    A plan made outside a cycle (entries imported or replayed) has no ``update`` and no
    ``record``: it leaves the feed's row and fetch log alone.
    """

    feed_url: str
    steps: tuple[EntryStep, ...]
    primary: bool  # the feed is an official source
    update: FeedUpdate | None
    record: FetchRecord | None
    outcome: FeedOutcome  # for the cycle report (alerts are counted when applied)
    notice: Notice | None = None
    moved_to: str | None = None  # a permanent redirect to follow

    @property
    def new_entries(self) -> list[NewEntry]:
        return [s for s in self.steps if isinstance(s, NewEntry)]


# -- the planner ----------------------------------------------------------------------------------


def plan_feed(
    fetched: Fetched,
    parsed: ParseOutcome | None,
    stored: StoredView,
    policy: Policy,
    stories: StoryIndex,
    now: datetime,
    rng: schedule.RandomSource,
) -> FeedPlan:
    """The plan for one fetched (and maybe parsed) feed. ``parsed`` is None when the body was
    not parsed: a 304, a body identical to the last one, or a failed fetch."""
    feed, result = fetched.feed, fetched.result
    moved = _moved(feed.url, None if isinstance(result, FetchError) else result.permanent_redirect)
    if isinstance(result, FetchError):
        gone = result.kind == "gone"
        status = FeedResult.GONE if gone else FeedResult.FAILED
        record = FetchRecord(status, result.status, None, result.elapsed, 0, result.reason)
        outcome = FeedOutcome(feed.url, status, result.reason)
        return _finish(
            feed, result, policy, now, rng, (), record, outcome, None, error=result.reason
        )
    if parsed is None:
        record = FetchRecord(FeedResult.UNCHANGED, _status(result), None, result.elapsed)
        outcome = FeedOutcome(feed.url, FeedResult.UNCHANGED, _move_note(moved))
        return _finish(feed, result, policy, now, rng, (), record, outcome, moved)
    assert isinstance(result, FetchResult)  # only a 200 has a body to parse
    size = len(result.body)
    if not isinstance(parsed, ParsedFeed):
        record = FetchRecord(
            FeedResult.FAILED, result.status, size, result.elapsed, 0, parsed.reason
        )
        outcome = FeedOutcome(feed.url, FeedResult.FAILED, parsed.reason, parsed=True)
        return _finish(
            feed, result, policy, now, rng, (), record, outcome, None, error=parsed.reason
        )
    steps = _entry_steps(feed, parsed, stored, policy, stories, now)
    new = [s for s in steps if isinstance(s, NewEntry)]
    matched = sum(1 for s in new if s.matches)
    record = FetchRecord(FeedResult.FETCHED, result.status, size, result.elapsed, len(new))
    note = _move_note(moved) or parsed.warning or ""
    outcome = FeedOutcome(feed.url, FeedResult.FETCHED, note, len(new), matched, parsed=True)
    return _finish(
        feed, result, policy, now, rng, tuple(steps), record, outcome, moved,
        body_hash=fetched.body_hash, first_poll=feed.first_polled_at is None,
    )  # fmt: skip


def _entry_steps(
    feed: FeedState,
    parsed: ParsedFeed,
    stored: StoredView,
    policy: Policy,
    stories: StoryIndex,
    now: datetime,
) -> list[EntryStep]:
    if parsed.matches is None:
        raise ValueError(f"feed {feed.url}: parsed without matching (jobs carry the rules)")
    settings = policy.settings
    feed_config = policy.feed_config(feed)
    every_item = feed_config.topics if feed_config else ()
    # First poll of a feed: old entries are history, not news, so they are stored silently.
    silent_before = (
        now - timedelta(seconds=settings.first_poll_window)
        if feed.first_polled_at is None
        else None
    )
    window = timedelta(seconds=settings.story_window)
    hashes = dict(stored.hashes)
    url_stories = dict(stored.url_stories)
    next_story = stored.next_story_id
    steps: list[EntryStep] = []
    for entry, rule_matches in zip(parsed.entries, parsed.matches, strict=True):
        known = hashes.get(entry.guid)
        if known is not None:
            if known != entry.content_hash:
                steps.append(ChangedEntry(entry))
                hashes[entry.guid] = entry.content_hash
            continue
        hashes[entry.guid] = entry.content_hash  # a feed that repeats a guid counts it once
        matches = _with_feed_topics(rule_matches, every_item)
        url_story = url_stories.get(entry.canonical_url) if entry.canonical_url else None
        if not matches:
            # Only matching entries start stories; this one joins the story of its link, if any.
            steps.append(NewEntry(entry, (), url_story))
            continue
        fresh = silent_before is None or (
            entry.published is not None and entry.published >= silent_before
        )
        matches, tiers = _judged(entry, matches, every_item, policy.scoring)
        feats = stories.features(entry, now)
        if url_story is not None:  # the same link was stored before: a repeat, never news
            step = NewEntry(entry, matches, url_story)
        else:
            decision = decide(feats, stories, now, window, explain=False)
            joined = decision.story_id
            story_id = joined if joined is not None else next_story
            alerts = _alerts(matches, tiers, policy.channels) if fresh else ()
            step = NewEntry(
                entry, matches, story_id, starts_story=joined is None, alerts=alerts,
                follow_up=joined is not None and fresh,
            )  # fmt: skip
            if joined is None:
                next_story += 1
        assert step.story_id is not None
        if entry.canonical_url:
            url_stories.setdefault(entry.canonical_url, step.story_id)
        stories.add(step.story_id, feats, entry.title)
        steps.append(step)
    return steps


def _with_feed_topics(
    rule_matches: Sequence[TopicMatch], every_item: Sequence[str]
) -> tuple[TopicMatch, ...]:
    """Rule matches, plus the topics every item of the feed belongs to (feeds.toml ``topics``)."""
    found = {m.topic: m for m in rule_matches}
    for topic in every_item:
        found.setdefault(topic, TopicMatch(topic, ()))
    return tuple(found.values())


def _judged(
    entry: Entry, matches: Sequence[TopicMatch], every_item: Sequence[str], scoring: Scoring
) -> tuple[tuple[TopicMatch, ...], tuple[Tier, ...]]:
    """Each match with its score and tier. A feed's own topics alert whatever the score: the
    operator said every item of that feed belongs to them."""
    doc = Document(entry.title, entry.summary, entry.source, entry.link)
    judged = [(m, Tier.ALERT) if m.topic in every_item else scoring.judge(doc, m) for m in matches]
    return tuple(m for m, _ in judged), tuple(t for _, t in judged)


def _alerts(
    matches: Sequence[TopicMatch], tiers: Sequence[Tier], channels: Mapping[str, str]
) -> tuple[PlannedAlert, ...]:
    """One alert per channel for the topics that alert (topics that share a channel share one
    message), then one "possibly relevant" item per channel for the topics in review."""
    planned: list[PlannedAlert] = []
    for tier in (Tier.ALERT, Tier.REVIEW):
        grouped: dict[str, list[TopicMatch]] = {}
        for m, t in zip(matches, tiers, strict=True):
            channel = channels.get(m.topic)
            if t == tier and channel is not None:  # a topic may have left the config
                grouped.setdefault(channel, []).append(m)
        review = tier == Tier.REVIEW
        planned.extend(PlannedAlert(c, tuple(ms), review) for c, ms in grouped.items())
    return tuple(planned)


def _finish(
    feed: FeedState,
    result: FetchOutcome,
    policy: Policy,
    now: datetime,
    rng: schedule.RandomSource,
    steps: tuple[EntryStep, ...],
    record: FetchRecord,
    outcome: FeedOutcome,
    moved: str | None,
    *,
    error: str | None = None,
    body_hash: str | None = None,
    first_poll: bool = False,
) -> FeedPlan:
    """The plan's schedule part: next fetch, backoff, status, validators, and any ops notice."""
    settings = policy.settings
    feed_config = policy.feed_config(feed)
    interval = (feed_config.interval if feed_config else None) or settings.poll_interval
    timing = schedule.plan(
        now,
        interval=interval,
        succeeded=error is None,
        gone=isinstance(result, FetchError) and result.kind == "gone",
        previous_errors=feed.consecutive_errors,
        failing_since=feed.failing_since,
        ops_notified_at=feed.ops_notified_at,
        retry_after=result.retry_after if isinstance(result, FetchError) else None,
        max_age=None if isinstance(result, FetchError) else result.max_age,
        backoff_cap=settings.backoff_cap,
        failing_after=settings.failing_after,
        jitter=settings.jitter,
        rng=rng,
    )
    notice = _notice(feed, timing, error or "", settings) if timing.notify_ops else None
    update = FeedUpdate(
        status=timing.status,
        next_fetch_at=timing.next_fetch_at,
        consecutive_errors=timing.consecutive_errors,
        failing_since=timing.failing_since,
        last_fetch_at=now,
        error=error,
        validators=(result.etag, result.last_modified) if isinstance(result, FetchResult) else None,
        body_hash=body_hash,
        first_poll=first_poll,
        ops_notified=True if timing.notify_ops else (False if error is None else None),
    )
    primary = bool(feed_config and feed_config.primary)
    return FeedPlan(feed.url, steps, primary, update, record, outcome, notice, moved)


def _notice(
    feed: FeedState, timing: schedule.FeedSchedule, error: str, settings: Settings
) -> Notice | None:
    """The one ops notice of an episode: a feed gone, or failing for ``failing_after``."""
    if not settings.ops_channel:
        return None
    since = timing.failing_since.isoformat() if timing.failing_since else ""
    text = (
        f"Feed {feed.name or feed.url} ({feed.url}) {ops_state(timing.status)}. Last error: {error}"
    )
    return Notice(settings.ops_channel, text, f"ops:{feed.url}:{since}")


def ops_state(status: FeedStatus) -> str:
    """How an ops notice and the log put a feed's trouble."""
    return "is gone (HTTP 410): polling stopped" if status == FeedStatus.GONE else "keeps failing"


def _moved(url: str, new_url: str | None) -> str | None:
    return new_url if new_url and new_url != url else None


def _move_note(new_url: str | None) -> str:
    return f"moved permanently to {new_url}: following it (update feeds.toml)" if new_url else ""


def _status(result: FetchResult | NotModified) -> int:
    return 304 if isinstance(result, NotModified) else result.status
