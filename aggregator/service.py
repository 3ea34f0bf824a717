"""The long-running worker: the scheduler, signals, sd_notify and hot reload.

:class:`Runtime` owns the edges built from one config (database, fetcher, parser pool, matcher,
outbox) and runs cycles. :func:`serve` drives it with APScheduler 3.11: one cycle job
(``max_instances=1``, ``coalesce=True``, jitter) on a single worker thread, so cycles and reloads
never overlap and the database connection stays on one thread; a second thread pings the systemd
watchdog only while cycles keep completing, and watches the config files for changes.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from aggregator.config import Config, config_files, load_config, slack_token
from aggregator.errors import AggregatorError, ConfigError
from aggregator.fetch import Fetcher
from aggregator.match import TopicMatcher, check_examples
from aggregator.memory import limit_malloc_arenas
from aggregator.models import CycleReport
from aggregator.notify import Outbox, make_sink
from aggregator.parse import ParsePool
from aggregator.pipeline import Deps, run_cycle
from aggregator.sdnotify import Notifier, watchdog_interval
from aggregator.store import Store, recent_story_entries
from aggregator.story_index import StoryIndex, warm_index

log = logging.getLogger(__name__)

IN_FLIGHT_SECONDS = 120.0  # a row in 'sending' this long belongs to no live process
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus names it
EXIT_FAILURE = 1
TICK_SECONDS = 30.0  # how often the scheduler looks for due feeds
STOP_GRACE_SECONDS = 30.0  # how long SIGTERM waits for the cycle in flight (TimeoutStopSec=45s)


def utcnow() -> datetime:
    return datetime.now(UTC)


def load_checked_config(directory: Path, environ: Mapping[str, str]) -> tuple[Config, TopicMatcher]:
    """Load, validate and run the topics' examples; raises :class:`ConfigError` on any problem."""
    config = load_config(directory, environ)
    problems = check_examples(config.topics)
    if problems:
        raise ConfigError(problems)
    return config, TopicMatcher.compile(config.topics)


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
        self.config, self.matcher = load_checked_config(config_dir, self.environ)
        self.token = slack_token(self.environ)
        self.store = Store.open(self.db_path)
        self.store.sync_feeds(self.config.feeds, utcnow())
        self.sink = make_sink(self.config.settings, self.token)
        workers = self.config.settings.parse_workers if parse_workers is None else parse_workers
        self.parser = ParsePool(workers)
        self.parser.start()  # the first cycle should not wait for workers to import feedparser
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
            self.store.make_all_due(now)
        deadline = time.monotonic() + self.config.settings.cycle_timeout
        report = run_cycle(self.deps(), now, deadline=deadline)
        self.maybe_prune(now)
        return report

    def reload(self) -> bool:
        """Load the config again; keep the old one live if the new one is invalid."""
        # Stamp before reading: a save that lands during the load is seen at the next check.
        self._mtimes = self._config_mtimes()
        try:
            config, matcher = load_checked_config(self.config_dir, self.environ)
        except ConfigError as e:
            log_config_problems("config reload refused, the previous config stays live", e)
            return False
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
    stop_grace: float = STOP_GRACE_SECONDS,
) -> int:
    """Run until SIGTERM or SIGINT. Returns the process exit code.

    ``tick`` is how often the scheduler looks for due feeds; ``stop_grace`` how long a stop waits
    for the cycle in flight before abandoning it.
    """
    notifier = Notifier(environ)
    stop = threading.Event()
    reload_wanted = threading.Event()
    # Installed before the slow start-up (migrations, warming the story index): a SIGTERM that
    # arrives then still ends the process with 0 rather than by the signal's default action.
    with _Signals() as signals:
        try:
            runtime = Runtime(config_dir, environ, db_path=db_path, stopping=stop)
        except ConfigError as e:
            log_config_problems("invalid config, not starting", e)
            return EXIT_CONFIG
        except AggregatorError as e:
            log.error("cannot start: %s", e)
            return EXIT_FAILURE
        return _serve(runtime, notifier, signals, stop, reload_wanted, tick, stop_grace)


def _serve(
    runtime: Runtime,
    notifier: Notifier,
    signals: _Signals,
    stop: threading.Event,
    reload_wanted: threading.Event,
    tick: float,
    stop_grace: float,
) -> int:
    if signals.wait_for_stop(reload_wanted, timeout=0):
        runtime.close()
        log.info("stopped before start-up finished")
        return 0
    log.info(
        "starting: %d feeds, %d topics, database %s, delivering to %s",
        len(runtime.config.feeds),
        len(runtime.config.topics),
        runtime.db_path,
        "Slack" if runtime.token else "the console (no SLACK_BOT_TOKEN set)",
    )
    state = _ServiceState()

    def cycle_job() -> None:
        # Busy first, then the stop check: a stop that sees the job idle is seen by the job.
        state.busy.set()
        try:
            if stop.is_set():
                return
            if reload_wanted.is_set() or runtime.config_changed():
                why = "SIGHUP" if reload_wanted.is_set() else "a config file changed"
                reload_wanted.clear()
                log.info("reloading config (%s)", why)
                notifier.reloading()
                try:
                    runtime.reload()
                finally:
                    notifier.ready()  # RELOADING=1 must always end, or systemd waits on us
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
        # Bring the next cycle forward for a reload; a running one picks it up when it ends.
        idle = not state.busy.is_set()
        if idle and not stop.is_set() and (reload_wanted.is_set() or runtime.config_changed()):
            scheduler.modify_job("cycle", next_run_time=utcnow())

    skipped = _QuietSkippedRuns()
    logging.getLogger("apscheduler.scheduler").addFilter(skipped)
    scheduler = BackgroundScheduler(
        executors={"cycle": ThreadPoolExecutor(1), "default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    scheduler.add_job(
        cycle_job, "interval", seconds=tick, jitter=min(tick / 6, 5.0), id="cycle",
        executor="cycle", next_run_time=utcnow(),
    )  # fmt: skip
    ping = (watchdog_interval(runtime.environ) or 60.0) / 2
    scheduler.add_job(watch_job, "interval", seconds=min(ping, 5.0, tick), id="watch")
    runtime.recover()
    scheduler.start()
    notifier.ready(f"polling {len(runtime.config.feeds)} feeds")
    log.info("ready")
    signals.wait_for_stop(reload_wanted)
    stop.set()

    notifier.stopping()
    log.info("stopping: finishing the cycle in flight (at most %g s)", stop_grace)
    scheduler.shutdown(wait=False)
    finished = state.wait_idle(stop_grace)
    if not finished:
        # Every outbox state change is committed before its network call, and an open
        # transaction rolls back on exit, so abandoning the cycle loses nothing.
        log.warning("cycle still running after %g s: abandoning it", stop_grace)
        logging.shutdown()
        os._exit(0)
    runtime.close()
    logging.getLogger("apscheduler.scheduler").removeFilter(skipped)
    log.info("stopped")
    return 0


class _QuietSkippedRuns(logging.Filter):
    """A cycle longer than the tick makes APScheduler warn at every tick that it skipped a run.
    That is the design (one cycle at a time, and the watchdog catches a hung one), not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


class _Signals:
    """SIGTERM, SIGINT and SIGHUP, delivered to the main thread through a pipe.

    Python's own C-level handler writes each signal's number to the pipe
    (``signal.set_wakeup_fd``), from whichever thread the kernel chose. That matters: a signal
    taken by a fetch or scheduler thread does not interrupt the main thread's wait, so a wait on
    an ``Event`` set by a Python-level handler can sleep through SIGTERM for good (seen here). The
    Python-level handlers do nothing; they only keep the C handler installed.
    """

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous: dict[int, object] = {}
        self._previous_fd = -1

    def __enter__(self) -> _Signals:
        for signum in self.HANDLED:
            self._previous[signum] = signal.signal(signum, _noted_by_wakeup_fd)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            if handler is not None:  # None: installed from C; leave ours rather than guess
                signal.signal(signum, handler)  # type: ignore[arg-type]
        os.close(self._read)
        os.close(self._write)

    def wait_for_stop(self, reload_wanted: threading.Event, timeout: float | None = None) -> bool:
        """Block until SIGTERM or SIGINT (True), or ``timeout`` passes (False); SIGHUP sets
        ``reload_wanted`` and the wait goes on."""
        while True:
            ready, _, _ = select.select([self._read], [], [], timeout)
            if not ready:
                return False
            for signum in os.read(self._read, 64):
                if signum == signal.SIGHUP:
                    reload_wanted.set()
                elif signum in (signal.SIGTERM, signal.SIGINT):
                    return True


def _noted_by_wakeup_fd(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the wake-up fd already carries the signal to the main thread."""


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
