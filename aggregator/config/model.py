"""The typed, frozen config the rest of the program reads: settings, feeds and topics.

Built and validated by :mod:`aggregator.config.load`; every field has its default here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aggregator.config.reactions import DEFAULT_NOT_RELEVANT, DEFAULT_RELEVANT

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
REVIEW_AT = ("09:00", "17:00")
USER_AGENT = "aggregator/0.1 (political-news alert bot; +https://github.com/aggregator)"


@dataclass(frozen=True, slots=True)
class FeedConfig:
    url: str
    name: str
    interval: float | None = None  # seconds; None means the global poll interval
    topics: tuple[str, ...] = ()  # every item of this feed belongs to these topics
    primary: bool = False  # an official source: its items are flagged "Official text"


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    channel: str
    query: str
    exclude: str | None = None
    examples_match: tuple[str, ...] = ()
    examples_no_match: tuple[str, ...] = ()
    delivery: str = "realtime"  # realtime | digest
    digest_at: tuple[str, ...] = ()  # "HH:MM" in ``timezone``
    digest_every: float | None = None  # seconds, for an hourly-style digest
    timezone: str = "UTC"
    quiet_hours: tuple[str, str] | None = None  # ("22:00", "07:00") in ``timezone``
    urgent: bool = False  # urgent topics ignore quiet hours
    model: Path | None = None  # the learned relevance score behind the query (a JSON file)
    alert_threshold: float | None = None  # None: the model's own
    review_threshold: float | None = None  # None: the model's own
    review_at: tuple[str, ...] = REVIEW_AT  # when "possibly relevant" items go out, in ``timezone``


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    """``[feedback]``: reading the team's reactions on alerts as labels."""

    enabled: bool = True  # the service reads reactions on its own schedule
    window: float = 7 * 86400.0  # alerts sent this recently are read; older labels stay
    read_every: float = 15 * 60.0
    relevant: tuple[str, ...] = DEFAULT_RELEVANT  # emoji names, as written in the config
    not_relevant: tuple[str, ...] = DEFAULT_NOT_RELEVANT


@dataclass(frozen=True, slots=True)
class Settings:
    database: str = "data/aggregator.db"
    retention_days: int = 90
    poll_interval: float = 300.0
    first_poll_window: float = 24 * 3600.0
    jitter: float = 30.0
    cycle_timeout: float = 240.0
    fetch_timeout: float = 10.0
    fetch_deadline: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    allow_private: bool = False  # fetch from loopback and private ranges (intranet feeds)
    allow_networks: tuple[str, ...] = ()  # networks fetched even if internal, e.g. "10.1.0.0/16"
    concurrency: int = 16
    parse_workers: int = 0  # 0 means one per core
    parse_timeout: float = 60.0  # one feed's parse and match on a worker; then it fails
    backoff_cap: float = 6 * 3600.0
    failing_after: float = 24 * 3600.0  # failing this long earns an ops notice
    user_agent: str = USER_AGENT
    slack_api_url: str = DEFAULT_SLACK_API_URL
    ops_channel: str | None = None
    max_attempts: int = 10
    per_channel_interval: float = 1.0
    story_window: float = 72 * 3600.0
    reply_batch: float = 300.0
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    feeds: tuple[FeedConfig, ...]
    topics: tuple[TopicConfig, ...]
    directory: Path | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def topic(self, name: str) -> TopicConfig:
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise KeyError(name)

    def feed(self, url: str) -> FeedConfig | None:
        for feed in self.feeds:
            if feed.url == url:
                return feed
        return None
