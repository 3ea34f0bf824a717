"""The values that flow between the pipeline's stages.

Every type here is a frozen dataclass: stages hand these forward and never mutate them. Datetimes
are always timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

# -- states --------------------------------------------------------------------------------------
# StrEnums: they are stored and printed as their plain values ("sent"), and mypy checks them.


class FeedStatus(StrEnum):
    """A feed's polling state, in the ``feeds`` table."""

    ACTIVE = "active"
    FAILING = "failing"  # errors in a row: still polled, with backoff, and reported
    GONE = "gone"  # HTTP 410: no longer polled
    REMOVED = "removed"  # no longer in feeds.toml


class FeedResult(StrEnum):
    """What one fetch of a feed came to, in a cycle report and the fetch log."""

    FETCHED = "fetched"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    GONE = "gone"


class AlertKind(StrEnum):
    """What an outbox row sends."""

    ALERT = "alert"  # the message for a story in a channel
    REPLY = "reply"  # a thread reply: further outlets of the story
    UPDATE = "update"  # an edit of a posted alert
    OPS = "ops"  # an operations notice
    TEST = "test"


class AlertState(StrEnum):
    """Where an outbox row is: ``pending -> sending -> sent``, or failed, held or dead."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # retried at ``next_attempt_at``
    HELD = "held"  # waiting for a digest or the end of quiet hours
    DEAD = "dead"  # given up, with its reason


class HoldMode(StrEnum):
    DIGEST = "digest"
    QUIET = "quiet"


# -- feeds ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedState:
    """A feed's row: its validators and schedule state."""

    url: str
    name: str
    status: FeedStatus
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    consecutive_errors: int
    last_error: str | None
    last_success_at: datetime | None
    last_fetch_at: datetime | None
    next_fetch_at: datetime | None
    first_polled_at: datetime | None
    failing_since: datetime | None
    moved_from: str | None = None
    ops_notified_at: datetime | None = None


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
    # Each entry's rule matches, in entry order: a parse job always matches, on the parse
    # worker's core. None only from parse_feed() called on its own (the probe of `feeds add`).
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
    """A topic that matched, with the terms that made it match (as they appear in the text).

    ``clauses`` are the keys of the query's ``# labelled`` clauses that held, sorted: the clause
    number ("2a") when its label starts with one, else its first six words, lower-cased. A
    relevance model reads them as features. Only the matcher fills them; they are not stored.
    """

    topic: str
    terms: tuple[str, ...] = ()
    clauses: tuple[str, ...] = ()  # the labels of the query's clauses that held
    score: float | None = None  # the topic's learned relevance score, when it has a model


# -- deliver -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyItem:
    """One further outlet of a story, listed in a thread reply."""

    source: str
    title: str
    link: str
    primary: bool = False  # from an official source


@dataclass(frozen=True, slots=True)
class AlertPayload:
    """Kind ``alert``: the story's first alert in a channel."""

    primary: bool = False  # the entry comes from an official source
    review: bool = False  # "possibly relevant": it goes to the topic's review digest


@dataclass(frozen=True, slots=True)
class ReplyPayload:
    """Kind ``reply``: further outlets, posted in the parent alert's thread."""

    parent_alert_id: int
    items: tuple[ReplyItem, ...] = ()


@dataclass(frozen=True, slots=True)
class EditPayload:
    """Kind ``update``: a ``chat.update`` of a posted alert (its coverage, or its new text)."""

    parent_alert_id: int
    primary: bool = False
    outlets: int = 0  # outlets covering the story
    official_link: str | None = None  # the official text, once an official source joined
    updated: bool = False  # the story's own text changed, not only its coverage


@dataclass(frozen=True, slots=True)
class NoticePayload:
    """Kinds ``ops`` and ``test``: plain words from our own code."""

    text: str


Payload = AlertPayload | ReplyPayload | EditPayload | NoticePayload


@dataclass(frozen=True, slots=True)
class DeliveryMarks:
    """The outbox's own notes on a row, kept between attempts."""

    verify: bool = False  # Slack may have this message already: look before sending again
    hold: HoldMode | None = None  # set once the row was held (it is never held twice)
    digest: str | None = None  # the digest a held row goes out in
    batched: bool = False  # a reply that already waited for its story's reply slot


@dataclass(frozen=True, slots=True)
class Alert:
    """One outbox row joined with what the renderer needs to build its message."""

    id: int
    channel: str
    kind: AlertKind
    title: str
    link: str
    source: str
    published: datetime | None
    summary: str
    topics: tuple[TopicMatch, ...]
    payload: Payload
    attempts: int = 0
    story_id: int | None = None
    thread_ts: str | None = None  # the parent's ts, for replies and edits

    @property
    def parent_alert_id(self) -> int | None:
        """The alert a reply or an edit belongs to."""
        if isinstance(self.payload, ReplyPayload | EditPayload):
            return self.payload.parent_alert_id
        return None


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    alert_id: int
    channel: str
    state: AlertState
    reason: str = ""
    ts: str | None = None


# -- feedback: the team's reactions on alerts ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reaction:
    """One emoji on a Slack message: its name as Slack reports it, and who added it. Slack may
    list fewer ``users`` than ``count`` when very many reacted."""

    name: str
    users: tuple[str, ...]
    count: int


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """A message of a channel's history, as far as reading reactions needs it."""

    ts: str
    thread_ts: str | None  # set on a thread's parent (== ts) and on a reply sent to the channel
    reactions: tuple[Reaction, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One ``conversations.history`` answer."""

    messages: tuple[ChannelMessage, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Seen:
    """One person's reactions on one alert as last read, and the label they count as."""

    relevant: bool  # one of the "relevant" reactions is theirs
    not_relevant: bool
    label: int | None  # 1 relevant, 0 not, None unsure
    at: datetime  # when this label was first seen


# -- report --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedOutcome:
    """What happened to one feed in one cycle."""

    url: str
    status: FeedResult
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

    def count(self, status: FeedResult) -> int:
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
        sent = sum(1 for d in self.deliveries if d.state == AlertState.SENT)
        failed = sum(1 for d in self.deliveries if d.state in (AlertState.FAILED, AlertState.DEAD))
        seconds = (self.finished - self.started).total_seconds()
        fetched, unchanged, failed_feeds = (
            self.count(s) for s in (FeedResult.FETCHED, FeedResult.UNCHANGED, FeedResult.FAILED)
        )
        return (
            f"cycle: {len(self.feeds)} feeds: {fetched} fetched, "
            f"{unchanged} unchanged, {failed_feeds} failed; "
            f"{self.new_entries} new entries, {self.matched} matched, {self.alerts} alerts queued; "
            f"{sent} delivered, {failed} delivery failures; {seconds:.2f} s"
        )
