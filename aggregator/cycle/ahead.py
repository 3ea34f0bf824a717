"""Run an iterator on its own thread, a bounded number of items ahead of its consumer.

The cycle uses it so that fetching and parsing the next feeds overlaps storing the current one,
and so that it can ask whether the next feed is ready before it decides to wait for it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class ReadyAhead(Generic[T]):
    """Runs ``source`` on its own thread, up to ``size`` items ahead of the caller, so that the
    caller can ask whether the next item is ready before it waits for it."""

    def __init__(self, source: Iterator[T], size: int) -> None:
        self._items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(
            target=self._fill, args=(source,), name="cycle-ahead", daemon=True
        )
        self._thread.start()

    def ready(self) -> bool:
        return self._ended or not self._items.empty()

    def next(self) -> T | None:
        """The next item, waiting for it if need be; None at the end."""
        if self._ended:
            return None
        kind, value = self._items.get()
        if kind == "item":
            return cast(T, value)
        self._ended = True
        if kind == "error":
            raise value
        return None

    def close(self) -> None:
        """Stop early if need be; returns once the source is closed (fetches in flight end)."""
        self._stop.set()
        self._thread.join()

    def _fill(self, source: Iterator[T]) -> None:
        end: tuple[str, Any] = ("end", None)
        try:
            for item in source:
                if not self._put(("item", item)):
                    return
        except BaseException as e:  # handed to the caller, which raises it
            end = ("error", e)
        finally:
            if isinstance(source, Generator):
                source.close()
        self._put(end)

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def while_ready(self, first: T, limit: int) -> Iterator[T]:
        """``first``, then further items for as long as they are ready, ``limit`` in all."""
        yield first
        for _ in range(limit - 1):
            if not self.ready():
                return
            item = self.next()
            if item is None:
                return
            yield item

    def __enter__(self) -> ReadyAhead[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
