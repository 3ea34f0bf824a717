"""Reading reactions from Slack for the service's schedule and for ``feedback --refresh``.

In the service the read runs on a thread of its own with a database connection of its own (one
connection per thread), never on the thread that delivers: a slow or failing read delays labels,
never alerts. A failure is one log line per run; the next run reads again. The same run queues
last week's summary to the ops channel, once per ISO week.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from aggregator.config.model import Config
from aggregator.config.values import duration_text
from aggregator.errors import AggregatorError
from aggregator.feedback.read import ReadReport, read_reactions
from aggregator.feedback.report import queue_weekly_summary
from aggregator.store import Store

log = logging.getLogger(__name__)

SLACK_TIMEOUT = 10.0  # seconds a history call may take; a stop waits for at most one


def _utcnow() -> datetime:
    return datetime.now(UTC)


def refresh(
    config: Config, token: str, store: Store, now: datetime, *,
    wait: Callable[[float], bool] | None = None,
) -> ReadReport:  # fmt: skip
    """One read of the reactions on the alerts in ``[feedback] window``, into ``store``."""
    from aggregator.notify.slack import SlackSink

    sink = SlackSink(token, config.settings.slack_api_url, timeout=SLACK_TIMEOUT)
    if wait is None:
        return read_reactions(store, sink, config.settings.feedback, now)
    return read_reactions(store, sink, config.settings.feedback, now, wait=wait)


class FeedbackJob:
    """The service's scheduled run: read the reactions (with a token, when enabled) and queue
    the weekly summary (with an ops channel). Call it on its own thread."""

    def __init__(
        self, config: Callable[[], Config], token: str | None, db_path: str,
        stop: threading.Event, clock: Callable[[], datetime] = _utcnow,
    ) -> None:  # fmt: skip
        self.config = config
        self.token = token
        self.db_path = db_path
        self.stop = stop
        self.clock = clock

    def __call__(self) -> None:
        if self.stop.is_set():
            return
        config = self.config()  # the live config: a reload swaps it whole
        settings = config.settings.feedback
        reading = bool(self.token) and settings.enabled
        if not reading and not config.settings.ops_channel:
            return
        try:
            store = Store.open(self.db_path)
            try:
                if reading:
                    assert self.token is not None
                    self._log(refresh(config, self.token, store, self.clock(), wait=self.stop.wait),
                              settings.read_every)  # fmt: skip
                topics = [t.name for t in config.topics]
                queued = queue_weekly_summary(store, config.settings.ops_channel, self.clock(),
                                              topics)  # fmt: skip
                if queued is not None:
                    log.info("feedback: last week's summary queued for %s (alert %d)",
                             config.settings.ops_channel, queued)  # fmt: skip
            finally:
                store.close()
        except AggregatorError as e:
            log.warning("feedback: the read failed: %s; labels wait for the next read", e)
        except Exception as e:  # a bug: one line, and the service goes on delivering
            log.error("feedback: the read failed: %s: %s; labels wait for the next read",
                      type(e).__name__, e)  # fmt: skip

    @staticmethod
    def _log(report: ReadReport, every: float) -> None:
        if not report.complete:
            log.warning("feedback: %s; labels wait for the next read (in %s)",
                        report.summary(), duration_text(every))  # fmt: skip
        elif report.changed:
            log.info("feedback: %s", report.summary())
        else:
            log.debug("feedback: %s", report.summary())
