"""Parsing and matching on every core: the parse worker pool.

A parse job carries a fetched body and the cycle's topic rules; a worker process parses the body
(:mod:`aggregator.ingest.parse`) and matches every entry (:mod:`aggregator.rules.matcher`), so both
CPU-bound steps run beside the cycle's thread instead of on it.

What the cycle can rely on: every job comes back as a :class:`ParseError`, or as a
:class:`ParsedFeed` whose ``matches`` is never None and holds one tuple per entry, in entry order:
the topics of ``job.rules`` that match that entry, as :meth:`TopicMatcher.match` finds them. With
no topics, every tuple is empty. A feed's own ``topics`` (``feeds.toml``) are not in it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TypeVar

from aggregator.ingest.parse import parse_feed, tune_parser
from aggregator.ingest.procpool import CallTimedOut, ProcessPool, WorkerDied
from aggregator.models import ParsedFeed, ParseError, ParseOutcome
from aggregator.rules.matcher import MatchRules, match_entries

K = TypeVar("K")
# The longest one job may run on a worker. The worst body we accept, 10 MiB of 14,000 small HTML
# items, takes 7.5 s of CPU to parse and match here: 8x that covers a slow or busy machine, and a
# hung parse still costs a quarter of the 4-minute cycle budget, not the whole cycle.
PARSE_TIME_LIMIT = 60.0


@dataclass(frozen=True, slots=True)
class ParseJob:
    """One body to parse and match. Every field is required: a job without its rules would come
    back with no matches, and its entries would silently alert no one."""

    feed_url: str
    body: bytes
    source: str  # the feed's name from feeds.toml, else "" (the feed's own title is used)
    content_type: str  # the HTTP header, which helps find the encoding
    rules: MatchRules  # TopicMatcher.rules: () when no topic is configured


def run_job(job: ParseJob) -> ParseOutcome:
    """Top-level and picklable: what a pool worker runs. Parses, then matches every entry."""
    outcome = parse_feed(job.feed_url, job.body, source=job.source, content_type=job.content_type)
    if isinstance(outcome, ParsedFeed):
        outcome = replace(outcome, matches=match_entries(job.rules, outcome.entries))
    return outcome


class ParsePool:
    """Parses on every core; parsing is CPU-bound and holds the GIL.

    Workers are separate interpreters (:mod:`aggregator.ingest.procpool`), started on first use and
    reused across cycles. A worker that dies (a crash in a C parser, the OOM killer) costs only
    the feed it was parsing; the next feed starts a new worker.

    Each worker tunes its feedparser as it starts (:func:`tune_parser`). With one worker, parsing
    runs in this process instead, which is then tuned at its first parse: it is the parse worker,
    and a one-core machine should not lose the speed-up (the results are the same).

    A job still running on a worker after ``time_limit`` seconds fails its feed with a
    :class:`ParseError`, and the worker is killed and replaced. Parsing in this process (one
    worker) cannot be stopped that way; there only the service's watchdog bounds a hung parse.
    """

    def __init__(
        self,
        workers: int = 0,
        *,
        time_limit: float = PARSE_TIME_LIMIT,
        runner: Callable[[ParseJob], ParseOutcome] = run_job,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.time_limit = time_limit  # read at each job: a reload may change it
        self.runner = runner  # a top-level function, so that a worker can import it
        self._pool: ProcessPool[ParseJob, ParseOutcome] | None = None

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers now (the service does at start), not when the first feed arrives."""
        if self.workers > 1:
            self._process_pool().start()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def parse_stream(
        self, items: Iterable[tuple[K, ParseJob | None]], *, ahead: int = 0
    ) -> Iterator[tuple[K, ParseOutcome | None]]:
        """Each ``(key, job)`` back as ``(key, outcome)``, in input order, as soon as it is ready.

        ``items`` is read lazily and at most ``ahead`` items (default: four per worker) are in
        flight, so the caller can store one feed while the workers parse the next ones, and only
        the bodies in flight sit in memory. A ``None`` job passes through as a ``None`` outcome
        (a feed with nothing to parse keeps its place in the order). Never raises for one feed.
        """
        if self.workers <= 1:
            tune_parser()  # this process parses: see the class's note
            for key, job in items:
                yield key, (None if job is None else self.runner(job))
            return
        ahead = ahead or 4 * self.workers
        source = iter(items)
        window: deque[tuple[K, ParseJob | None, Future[ParseOutcome] | None]] = deque()
        try:
            while True:
                while len(window) < ahead:
                    item = next(source, None)
                    if item is None:
                        break
                    key, job = item
                    window.append((key, job, self._submit(job) if job is not None else None))
                if not window:
                    return
                key, job, future = window.popleft()
                yield key, (None if job is None or future is None else _outcome(job, future))
        finally:
            for _, _, future in window:
                if future is not None:
                    future.cancel()

    def _submit(self, job: ParseJob) -> Future[ParseOutcome]:
        return self._process_pool().submit(job, time_limit=self.time_limit)

    def _process_pool(self) -> ProcessPool[ParseJob, ParseOutcome]:
        if self._pool is None:
            self._pool = ProcessPool(self.runner, self.workers, setup=tune_parser)
        return self._pool


def _outcome(job: ParseJob, future: Future[ParseOutcome]) -> ParseOutcome:
    try:
        return future.result()
    except CallTimedOut as e:
        return _crashed(job, str(e))
    except WorkerDied:
        return _crashed(job, "the parser process died")
    except Exception as e:  # pickling trouble and the like: this feed only
        return _crashed(job, f"{type(e).__name__}: {e}")


def _crashed(job: ParseJob, detail: str) -> ParseError:
    return ParseError(job.feed_url, f"parse failed: {job.feed_url!r}: {detail}")
