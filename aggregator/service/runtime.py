"""The edges of one process, built from a config: what ``run``, ``poll --once`` and the demo share.

:class:`Runtime` owns the database, the fetcher, the parse worker pool, the matcher, the story
window and the outbox, runs one cycle at a time and reloads the config (an invalid one is refused
and the old one stays live). :mod:`aggregator.service.serve` drives it on a schedule.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.config.load import config_files, load_config, slack_token
from aggregator.config.model import Config
from aggregator.errors import ConfigError
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.parse import tuning_off_reason
from aggregator.ingest.workers import ParsePool
from aggregator.models import CycleReport
from aggregator.notify import Outbox, make_sink
from aggregator.pipeline import Deps, run_cycle
from aggregator.relevance.tiers import Scoring, load_models, stale_models
from aggregator.rules.matcher import TopicMatcher, check_examples
from aggregator.service.memory import limit_malloc_arenas
from aggregator.store import Store
from aggregator.stories.index import StoryIndex, warm_index

log = logging.getLogger(__name__)

IN_FLIGHT_SECONDS = 120.0  # a row in 'sending' this long belongs to no live process
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus names it
EXIT_FAILURE = 1
TICK_SECONDS = 30.0  # how often the scheduler looks for due feeds
STOP_GRACE_SECONDS = 30.0  # how long SIGTERM waits for the cycle in flight (TimeoutStopSec=45s)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Loaded:
    """A config that passed every check, with what it compiles to: the topics' matcher and
    their models."""

    config: Config
    matcher: TopicMatcher
    scoring: Scoring


def load_checked_config(directory: Path, environ: Mapping[str, str]) -> Loaded:
    """Load, validate, run the topics' examples and load their models; raises
    :class:`ConfigError` on any problem. A model trained on other rules is said in the log."""
    config = load_config(directory, environ)
    problems = check_examples(config.topics)
    if problems:
        raise ConfigError(problems)
    scoring = load_models(config.topics)
    for note in stale_models(config.topics, scoring):
        log.warning("%s", note)
    return Loaded(config, TopicMatcher.compile(config.topics), scoring)


def log_config_problems(headline: str, error: ConfigError) -> None:
    """The headline, then each problem on lines of its own, laid out as ``check-config`` prints it.

    Under systemd every line is one journal entry, and the log escapes newlines so that feed
    text cannot forge entries: logged as one message, the problems read as a single line full of
    literal ``\\n``, with a rule's caret nowhere near its column.
    """
    count = len(error.problems)
    log.error("%s (%d problem%s):", headline, count, "" if count == 1 else "s")
    for problem in error.problems:
        first, *pointer = problem.splitlines() or [""]
        log.error("  %s", first)
        for line in pointer:  # a rule's query and the caret under its column
            log.error("%s", line)


@dataclass(frozen=True, slots=True)
class ReloadSummary:
    changed: bool
    text: str


def describe_reload(old: Config, new: Config) -> ReloadSummary:
    """One line saying what a reload changed."""
    parts: list[str] = []
    old_feeds, new_feeds = {f.url: f for f in old.feeds}, {f.url: f for f in new.feeds}
    old_topics, new_topics = {t.name: t for t in old.topics}, {t.name: t for t in new.topics}
    for label, before, after in (
        ("feeds", old_feeds, new_feeds),
        ("topics", old_topics, new_topics),
    ):
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        if added:
            parts.append(f"{label} added: {', '.join(added)}")
        if removed:
            parts.append(f"{label} removed: {', '.join(removed)}")
        if changed:
            parts.append(f"{label} changed: {', '.join(changed)}")
    if old.settings != new.settings:
        names = [f.name for f in fields(old.settings)]
        changed_settings = [
            n for n in names if getattr(old.settings, n) != getattr(new.settings, n)
        ]
        parts.append(f"settings changed: {', '.join(changed_settings)}")
    return ReloadSummary(bool(parts), "; ".join(parts) or "no changes")


class Runtime:
    """The edges for one process, built from a config; runs cycles and reloads."""

    def __init__(
        self,
        config_dir: Path,
        environ: Mapping[str, str],
        *,
        db_path: str | None = None,
        parse_workers: int | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        limit_malloc_arenas()  # before the fetch threads exist
        self.config_dir = config_dir
        self.environ = dict(environ)
        self.db_override = db_path
        self.stopping = stopping or threading.Event()
        self._mtimes = self._config_mtimes()
        loaded = load_checked_config(config_dir, self.environ)
        self.config, self.matcher, self.scoring = loaded.config, loaded.matcher, loaded.scoring
        self.token = slack_token(self.environ)
        self.store = Store.open(self.db_path)
        self.store.feeds.sync(self.config.feeds, utcnow())
        self.sink = make_sink(self.config.settings, self.token)
        workers = self.config.settings.parse_workers if parse_workers is None else parse_workers
        self.parser = ParsePool(workers, time_limit=self.config.settings.parse_timeout)
        self.parser.start()  # the first cycle should not wait for workers to import feedparser
        if (untuned := tuning_off_reason()) is not None:
            log.warning("%s", untuned)  # once here, where every worker would find the same
        self.fetcher = Fetcher(self.config.settings)
        self.stories = self._warm_stories(utcnow())
        self.outbox = self._outbox()
        self._pruned_at: datetime | None = None

    @property
    def db_path(self) -> str:
        return self.db_override or self.config.settings.database

    def deps(self) -> Deps:
        return Deps(
            config=self.config,
            store=self.store,
            fetcher=self.fetcher,
            parser=self.parser,
            matcher=self.matcher,
            scoring=self.scoring,
            outbox=self.outbox,
            stories=self.stories,
        )

    def recover(self, *, alone: bool = True) -> None:
        """Settle alerts a crash left in ``sending`` before anything new is sent.

        ``alone=False`` (``poll --once``, which may run beside the service) leaves rows another
        live process may be sending right now.
        """
        older_than = 0.0 if alone else IN_FLIGHT_SECONDS
        for outcome in self.outbox.recover(utcnow(), older_than=older_than):
            log.info(
                "recovered alert %s in %s: %s", outcome.alert_id, outcome.channel, outcome.state
            )

    def cycle(self, *, everything: bool = False) -> CycleReport:
        now = utcnow()
        if everything:
            self.store.feeds.make_all_due(now)
        deadline = time.monotonic() + self.config.settings.cycle_timeout
        try:
            report = run_cycle(self.deps(), now, deadline=deadline)
        except BaseException:
            # Planning adds entries to the story window before they are written; a cycle that
            # failed rolled its last writes back, so the window is read again from the database.
            self.stories = self._warm_stories(utcnow())
            raise
        self.maybe_prune(now)
        return report

    def reload(self) -> bool:
        """Load the config again; keep the old one live if the new one is invalid."""
        # Stamp before reading: a save that lands during the load is seen at the next check.
        self._mtimes = self._config_mtimes()
        try:
            loaded = load_checked_config(self.config_dir, self.environ)
        except ConfigError as e:
            log_config_problems("config reload refused, the previous config stays live", e)
            return False
        config = loaded.config
        summary = describe_reload(self.config, config)
        if config.settings.database != self.config.settings.database and not self.db_override:
            log.warning("storage.database changed: it takes effect at the next restart")
        rebuild = config.settings != self.config.settings
        self.config, self.matcher, self.scoring = loaded.config, loaded.matcher, loaded.scoring
        self.parser.time_limit = config.settings.parse_timeout
        self.store.feeds.sync(config.feeds, utcnow())
        if rebuild:
            self.fetcher.close()
            self.fetcher = Fetcher(config.settings)
            self.sink = make_sink(config.settings, self.token)
        self.outbox = self._outbox()
        log.info("config reloaded: %s", summary.text)
        return True

    def config_changed(self) -> bool:
        return self._config_mtimes() != self._mtimes

    def close(self) -> None:
        self.fetcher.close()
        self.parser.close()
        self.store.close()

    def _outbox(self) -> Outbox:
        settings = self.config.settings
        if not self.token:  # Slack's one-message-a-second pacing means nothing to a terminal
            settings = replace(settings, per_channel_interval=0.0)
        return Outbox(
            self.store, self.sink, settings, self.config.topics, monotonic=self._delivery_clock
        )

    def _delivery_clock(self) -> float:
        """The outbox's deadline clock. Once a stop is asked it reads as the end of time, so the
        outbox starts no further send and the rest stays queued (committed) for the next start."""
        return math.inf if self.stopping.is_set() else time.monotonic()

    def maybe_prune(self, now: datetime) -> None:
        """Once a day, drop entries past the retention period whose alerts are settled."""
        if self._pruned_at is not None and now - self._pruned_at < timedelta(days=1):
            return
        self._pruned_at = now
        removed = self.store.history.prune(now, self.config.settings.retention_days)
        if removed:
            log.info("retention: pruned %d entries older than %d days", removed,
                     self.config.settings.retention_days)  # fmt: skip

    def _warm_stories(self, now: datetime) -> StoryIndex:
        since = now - timedelta(seconds=self.config.settings.story_window)
        last = self.store.entries.last_id()  # what is stored later, the pipeline catches up on
        rows = self.store.entries.recent_story_entries(since, up_to=last)
        index = warm_index(StoryIndex(), rows, now)
        index.stored_up_to = last
        return index

    def _config_mtimes(self) -> tuple[float, ...]:
        stamps = []
        for path in config_files(self.config_dir):
            try:
                stamps.append(path.stat().st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)
