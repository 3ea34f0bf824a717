"""The long-running worker: the scheduler, signals, sd_notify and hot reload.

:class:`Runtime` owns the edges built from one config (database, fetcher, parser pool, matcher,
outbox) and runs cycles. :func:`serve` drives it with APScheduler 3.11: one cycle job
(``max_instances=1``, ``coalesce=True``, jitter) on a single worker thread, so cycles and reloads
never overlap and the database connection stays on one thread; a second thread pings the systemd
watchdog only while cycles keep completing, and watches the config files for changes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from aggregator.config import Config, config_files, load_config, slack_token
from aggregator.errors import ConfigError
from aggregator.fetch import Fetcher
from aggregator.match import TopicMatcher, check_examples
from aggregator.models import CycleReport
from aggregator.notify import Outbox, make_sink
from aggregator.parse import ParsePool
from aggregator.pipeline import Deps, run_cycle
from aggregator.sdnotify import Notifier, watchdog_interval
from aggregator.store import Store, recent_story_entries
from aggregator.story_index import StoryIndex, warm_index

log = logging.getLogger(__name__)

EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus names it
TICK_SECONDS = 30.0  # how often the scheduler looks for due feeds
STOP_GRACE_SECONDS = 30.0  # how long SIGTERM waits for the cycle in flight


def utcnow() -> datetime:
    return datetime.now(UTC)


def load_checked_config(directory: Path, environ: Mapping[str, str]) -> tuple[Config, TopicMatcher]:
    """Load, validate and run the topics' examples; raises :class:`ConfigError` on any problem."""
    config = load_config(directory, environ)
    problems = check_examples(config.topics)
    if problems:
        raise ConfigError(problems)
    return config, TopicMatcher.compile(config.topics)


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
        parts.append("settings changed")
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
    ) -> None:
        self.config_dir = config_dir
        self.environ = dict(environ)
        self.db_override = db_path
        self.config, self.matcher = load_checked_config(config_dir, self.environ)
        self.token = slack_token(self.environ)
        self.store = Store.open(self.db_path)
        self.store.sync_feeds(self.config.feeds, utcnow())
        self.sink = make_sink(self.config.settings, self.token)
        workers = self.config.settings.parse_workers if parse_workers is None else parse_workers
        self.parser = ParsePool(workers)
        self.fetcher = Fetcher(self.config.settings)
        self.stories = self._warm_stories(utcnow())
        self.outbox = self._outbox()
        self._mtimes = self._config_mtimes()
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
            outbox=self.outbox,
            stories=self.stories,
        )

    def recover(self) -> None:
        """Settle alerts a crash left in ``sending`` before anything new is sent."""
        for outcome in self.outbox.recover(utcnow()):
            log.info(
                "recovered alert %s in %s: %s", outcome.alert_id, outcome.channel, outcome.state
            )

    def cycle(self, *, everything: bool = False) -> CycleReport:
        now = utcnow()
        if everything:
            self.store.make_all_due(now)
        deadline = time.monotonic() + self.config.settings.cycle_timeout
        report = run_cycle(self.deps(), now, deadline=deadline)
        self.maybe_prune(now)
        return report

    def reload(self) -> bool:
        """Load the config again; keep the old one live if the new one is invalid."""
        try:
            config, matcher = load_checked_config(self.config_dir, self.environ)
        except ConfigError as e:
            log.error("config reload refused, the previous config stays live:\n%s", e)
            return False
        finally:
            self._mtimes = self._config_mtimes()
        summary = describe_reload(self.config, config)
        if config.settings.database != self.config.settings.database and not self.db_override:
            log.warning("storage.database changed: it takes effect at the next restart")
        rebuild = config.settings != self.config.settings
        self.config, self.matcher = config, matcher
        self.store.sync_feeds(config.feeds, utcnow())
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
        return Outbox(self.store, self.sink, settings, self.config.topics)

    def maybe_prune(self, now: datetime) -> None:
        """Once a day, drop entries past the retention period whose alerts are settled."""
        if self._pruned_at is not None and now - self._pruned_at < timedelta(days=1):
            return
        self._pruned_at = now
        removed = self.store.prune(now, self.config.settings.retention_days)
        if removed:
            log.info("retention: pruned %d entries older than %d days", removed,
                     self.config.settings.retention_days)  # fmt: skip

    def _warm_stories(self, now: datetime) -> StoryIndex:
        since = now - timedelta(seconds=self.config.settings.story_window)
        return warm_index(StoryIndex(), recent_story_entries(self.store, since), now)

    def _config_mtimes(self) -> tuple[float, ...]:
        stamps = []
        for path in config_files(self.config_dir):
            try:
                stamps.append(path.stat().st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)


def serve(
    config_dir: Path,
    environ: Mapping[str, str],
    *,
    db_path: str | None = None,
    tick: float = TICK_SECONDS,
) -> int:
    """Run until SIGTERM or SIGINT. Returns the process exit code."""
    notifier = Notifier(environ)
    try:
        runtime = Runtime(config_dir, environ, db_path=db_path)
    except ConfigError as e:
        log.error("invalid config, not starting:\n%s", e)
        return EXIT_CONFIG
    log.info(
        "starting: %d feeds, %d topics, database %s, delivering to %s",
        len(runtime.config.feeds),
        len(runtime.config.topics),
        runtime.db_path,
        "Slack" if runtime.token else "the console (no SLACK_BOT_TOKEN set)",
    )
    state = _ServiceState()
    stop = threading.Event()
    reload_wanted = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_wanted.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    def cycle_job() -> None:
        if stop.is_set():
            return
        state.busy.set()
        try:
            if reload_wanted.is_set() or runtime.config_changed():
                reload_wanted.clear()
                notifier.reloading()
                runtime.reload()
                notifier.ready()
            report = runtime.cycle()
            state.last_success = time.monotonic()
            notifier.status(report.summary())
        except Exception:
            log.exception("cycle failed; the next one will retry")
        finally:
            state.busy.clear()

    def watch_job() -> None:
        # Only a cycle that completed recently keeps the watchdog fed: a hung job gets restarted.
        limit = runtime.config.settings.cycle_timeout + 3 * tick
        if time.monotonic() - state.last_success <= limit:
            notifier.watchdog()
        if reload_wanted.is_set() or runtime.config_changed():
            scheduler.modify_job("cycle", next_run_time=utcnow())

    scheduler = BackgroundScheduler(
        executors={"cycle": ThreadPoolExecutor(1), "default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    scheduler.add_job(
        cycle_job, "interval", seconds=tick, jitter=min(tick / 6, 5.0), id="cycle",
        executor="cycle", next_run_time=utcnow(),
    )  # fmt: skip
    ping = (watchdog_interval(environ) or 60.0) / 2
    scheduler.add_job(watch_job, "interval", seconds=min(ping, 5.0), id="watch")
    runtime.recover()
    scheduler.start()
    notifier.ready(f"polling {len(runtime.config.feeds)} feeds")
    log.info("ready")
    stop.wait()

    notifier.stopping()
    log.info("stopping: finishing the cycle in flight (at most %.0f s)", STOP_GRACE_SECONDS)
    scheduler.shutdown(wait=False)
    finished = state.wait_idle(STOP_GRACE_SECONDS)
    if not finished:
        # Every outbox state change is committed before its network call, and an open
        # transaction rolls back on exit, so abandoning the cycle loses nothing.
        log.warning("cycle still running after %.0f s: abandoning it", STOP_GRACE_SECONDS)
        logging.shutdown()
        os._exit(0)
    runtime.close()
    log.info("stopped")
    return 0


class _ServiceState:
    def __init__(self) -> None:
        self.busy = threading.Event()
        self.last_success = time.monotonic()

    def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.busy.is_set():
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True
