"""The long-running worker: the scheduler, signals, sd_notify and hot reload.

:func:`serve` drives a :class:`~aggregator.service.runtime.Runtime` with APScheduler 3.11: one
cycle job (``max_instances=1``, ``coalesce=True``, jitter) on a single worker thread, so cycles and
reloads never overlap and the database connection stays on one thread; a second thread pings the
systemd watchdog only while cycles keep completing, and watches the config files for changes. A
third reads the team's reactions on alerts every ``[feedback] read_every``, with a database
connection of its own, so that a slow or failing read never holds up delivery.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Mapping
from datetime import UTC, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from aggregator.errors import AggregatorError, ConfigError
from aggregator.feedback.job import FeedbackJob
from aggregator.service.runtime import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    STOP_GRACE_SECONDS,
    TICK_SECONDS,
    Runtime,
    log_config_problems,
    utcnow,
)
from aggregator.service.sdnotify import Notifier, watchdog_interval

log = logging.getLogger(__name__)


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
                every = runtime.config.settings.feedback.read_every
                if every != state.read_every:
                    state.read_every = every
                    scheduler.reschedule_job("feedback", trigger="interval", seconds=every)
            report = runtime.cycle()
            state.last_success = time.monotonic()
            notifier.status(report.summary())
        except AggregatorError as e:  # expected (a database error, a damaged file): one line
            log.error("cycle failed: %s; the next one will retry", e)
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
        executors={
            "cycle": ThreadPoolExecutor(1),
            "default": ThreadPoolExecutor(1),
            "feedback": ThreadPoolExecutor(1),
        },
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )
    scheduler.add_job(
        cycle_job, "interval", seconds=tick, jitter=min(tick / 6, 5.0), id="cycle",
        executor="cycle", next_run_time=utcnow(),
    )  # fmt: skip
    ping = (watchdog_interval(runtime.environ) or 60.0) / 2
    scheduler.add_job(watch_job, "interval", seconds=min(ping, 5.0, tick), id="watch")
    feedback = FeedbackJob(lambda: runtime.config, runtime.token, runtime.db_path, stop)
    state.read_every = runtime.config.settings.feedback.read_every
    scheduler.add_job(
        feedback, "interval", seconds=state.read_every, id="feedback", executor="feedback",
        next_run_time=utcnow() + timedelta(seconds=tick),  # after the first cycle has begun
    )  # fmt: skip
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
        self.read_every = 0.0  # the feedback job's interval in force

    def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.busy.is_set():
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True
