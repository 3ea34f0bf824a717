"""The values that flow between the pipeline's stages.

Every type here is a frozen dataclass: stages hand these forward and never mutate them. Datetimes
are always timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# -- fetch ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One conditional GET: the URL and the validators stored from the last success."""

    url: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A 200 with a body that is within every limit."""

    url: str
    final_url: str
    body: bytes
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    permanent_redirect: str | None = None  # new URL when the chain was all 301/308
    max_age: int | None = None  # Cache-Control max-age, seconds
    elapsed: float = 0.0
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class NotModified:
    """A 304: the feed has not changed since the stored validators."""

    url: str
    permanent_redirect: str | None = None
    max_age: int | None = None
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class FetchError:
    """A fetch that failed, as a value. ``reason`` is a sentence a person can read."""

    url: str
    reason: str
    # timeout | connection | http | too_large | redirect | gone | rate_limited | hostile
    kind: str = "error"
    status: int | None = None
    retry_after: float | None = None
    elapsed: float = 0.0


FetchOutcome = FetchResult | NotModified | FetchError

# -- parse ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One feed item, normalised: plain text, absolute links, UTC times."""

    feed_url: str
    guid: str  # the feed's id, else the canonical link, else a hash of title and date
    link: str  # as published; "" when the item has none
    canonical_url: str  # the dedupe key; "" when there is no link
    title: str
    summary: str  # HTML stripped, whitespace collapsed
    published: datetime | None
    content_hash: str  # changes when the title or text changes
    source: str = ""  # the feed's name, for matching on source: and for display
    links: tuple[str, ...] = ()  # other http(s) links found in the item (primary-source signals)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str
    entries: tuple[Entry, ...]
    warning: str | None = None  # a recoverable problem the parser noted
    # Each entry's rule matches, in entry order, when the parse job carried the rules: matching
    # then runs on the parse worker's core, not on the cycle's thread. None when it did not.
    matches: tuple[tuple[TopicMatch, ...], ...] | None = None


@dataclass(frozen=True, slots=True)
class ParseError:
    """A body that yielded no feed, as a value."""

    url: str
    reason: str


ParseOutcome = ParsedFeed | ParseError

# -- match ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """The fields a topic rule can see."""

    title: str
    summary: str = ""
    source: str = ""
    link: str = ""


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """A topic that matched, with the terms that made it match (as they appear in the text)."""

    topic: str
    terms: tuple[str, ...] = ()


# -- deliver -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One outbox row joined with what the renderer needs to build its message."""

    id: int
    channel: str
    kind: str  # alert | reply | update | digest | ops | test
    title: str
    link: str
    source: str
    published: datetime | None
    summary: str
    topics: tuple[TopicMatch, ...]
    attempts: int = 0
    story_id: int | None = None
    thread_ts: str | None = None  # the parent's ts, for replies and edits
    extra: dict[str, object] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    alert_id: int
    channel: str
    state: str  # sent | failed | dead | held
    reason: str = ""
    ts: str | None = None


# -- report --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedOutcome:
    """What happened to one feed in one cycle."""

    url: str
    status: str  # fetched | unchanged | failed | gone
    reason: str = ""
    new_entries: int = 0
    matched: int = 0
    alerts: int = 0
    parsed: bool = False


@dataclass(frozen=True, slots=True)
class CycleReport:
    started: datetime
    finished: datetime
    feeds: tuple[FeedOutcome, ...]
    deliveries: tuple[DeliveryOutcome, ...] = ()

    def count(self, status: str) -> int:
        return sum(1 for f in self.feeds if f.status == status)

    @property
    def new_entries(self) -> int:
        return sum(f.new_entries for f in self.feeds)

    @property
    def matched(self) -> int:
        return sum(f.matched for f in self.feeds)

    @property
    def alerts(self) -> int:
        return sum(f.alerts for f in self.feeds)

    @property
    def parses(self) -> int:
        return sum(1 for f in self.feeds if f.parsed)

    def summary(self) -> str:
        sent = sum(1 for d in self.deliveries if d.state == "sent")
        failed = sum(1 for d in self.deliveries if d.state in ("failed", "dead"))
        seconds = (self.finished - self.started).total_seconds()
        return (
            f"cycle: {len(self.feeds)} feeds: {self.count('fetched')} fetched, "
            f"{self.count('unchanged')} unchanged, {self.count('failed')} failed; "
            f"{self.new_entries} new entries, {self.matched} matched, {self.alerts} alerts queued; "
            f"{sent} delivered, {failed} delivery failures; {seconds:.2f} s"
        )
