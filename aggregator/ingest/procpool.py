"""Worker processes for CPU-bound calls, and nothing else running beside them.

multiprocessing's ``forkserver`` start method (we never ``fork`` a process that runs fetch
threads) adds two helper processes, a fork server and a resource tracker, of 13 MB each, to every
pool. Here each worker is a fresh interpreter that reads pickled calls on its stdin and writes
pickled results on its stdout, one at a time; a thread in the parent feeds each worker from one
shared queue.

A worker that dies (a crash in a C extension, the OOM killer) fails only the call it was running,
with :class:`WorkerDied`; the next call on that thread starts a new worker. A worker whose parent
dies reads the end of its stdin and exits. A ``setup`` function runs once in each worker as it
starts, before its first call: what only workers should do to their interpreter goes there.

A call may carry a time limit. A call still running past it fails with :class:`CallTimedOut`, and
its worker, hung or merely slow, is killed; the calls sent behind it run on a new worker. The
parent's pipe reads and writes wait with ``poll``, never longer than the running call's limit: a
worker stuck in C code that holds the GIL does not drain its stdin either, and a blocking write
of the next request would hang this side with it.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")
_LENGTH = 8  # bytes of the big-endian length before each frame
IN_FLIGHT = 2  # calls sent to one worker ahead of its results
_WORKER = "from aggregator.ingest.procpool import serve_stdio; serve_stdio()"  # + 2 arguments


class WorkerDied(Exception):
    """The worker process exited while running the call."""


class CallTimedOut(Exception):
    """The call ran past its time limit; its worker was killed."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"took longer than {limit:g} s")
        self.limit = limit


class _PastDeadline(Exception):
    """A pipe was not ready before the running call's time limit ran out."""


@dataclass(slots=True)
class _Call(Generic[A, R]):
    arg: A
    future: Future[R]
    limit: float | None  # seconds it may run in the worker; None: no limit


class ProcessPool(Generic[A, R]):
    """Runs ``fn(arg)`` on ``workers`` processes. ``fn`` must be a top-level function and
    ``arg`` picklable; the module of ``fn`` is imported in the worker as it starts, and then
    ``setup()``, a top-level function too, is called there once."""

    def __init__(
        self, fn: Callable[[A], R], workers: int, *, setup: Callable[[], object] | None = None
    ) -> None:
        self.fn = fn
        self.workers = max(1, workers)
        self._names = (_top_level_name(fn), _top_level_name(setup))  # how a worker finds them
        self._calls: queue.SimpleQueue[_Call[A, R] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start every worker now rather than on first use, so no call waits for one. Returns
        once their processes exist (a worker that cannot start is tried again on first use)."""
        with self._lock:
            while len(self._threads) < self.workers:
                worker = None
                with contextlib.suppress(OSError):
                    worker = _start_worker(self._names)
                self._start_feeder(worker)

    def submit(self, arg: A, *, time_limit: float | None = None) -> Future[R]:
        """Queue ``fn(arg)``. Past ``time_limit`` seconds of running in its worker, the call
        fails with :class:`CallTimedOut` and the worker is killed."""
        future: Future[R] = Future()
        with self._lock:
            if len(self._threads) < self.workers:
                self._start_feeder(None)
        self._calls.put(_Call(arg, future, time_limit))
        return future

    def shutdown(self) -> None:
        """Let the calls queued so far finish, then stop every worker."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            thread.join()

    def _start_feeder(self, worker: subprocess.Popen[bytes] | None) -> None:
        number = len(self._threads) + 1
        thread = threading.Thread(
            target=self._feed, args=(worker,), name=f"worker-{number}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _feed(self, worker: subprocess.Popen[bytes] | None) -> None:
        """Keep one worker busy: up to ``IN_FLIGHT`` calls sent ahead, results read in order.

        With a call waiting in its pipe, the worker starts the next one while this thread waits
        for the GIL to read the last result.
        """
        sent: deque[_Call[A, R]] = deque()  # in the worker, oldest (running) first
        again: deque[_Call[A, R]] = deque()  # sent to a worker that died before them
        started = 0.0  # when the oldest call in ``sent`` began to run (as near as we can tell)
        stopping = False

        def running_until() -> float | None:
            """When the running call's time is up; None when nothing runs or it has no limit."""
            limit = sent[0].limit if sent else None
            return None if limit is None else started + limit

        def lost_worker(failure: Exception) -> None:
            """The running call fails with ``failure``; the calls behind it go to a new worker."""
            nonlocal worker
            sent.popleft().future.set_exception(failure)
            again.extendleft(reversed(sent))
            sent.clear()
            assert worker is not None
            if isinstance(failure, CallTimedOut):
                _kill(worker)
            else:
                _stop(worker)
            worker = None

        try:
            while True:
                while len(sent) < IN_FLIGHT and (again or not stopping):
                    if again:
                        call = again.popleft()
                    else:
                        try:
                            queued = self._calls.get(block=not sent)
                        except queue.Empty:
                            break
                        if queued is None:
                            stopping = True
                            break
                        call = queued
                        if not call.future.set_running_or_notify_cancel():
                            continue  # cancelled while queued
                    try:
                        request = pickle.dumps((self.fn, call.arg), pickle.HIGHEST_PROTOCOL)
                    except Exception as e:  # an argument that does not pickle: this call only
                        call.future.set_exception(e)
                        continue
                    if worker is None:
                        try:
                            worker = _start_worker(self._names)
                        except OSError as e:  # no process to be had: this call fails, not hangs
                            call.future.set_exception(WorkerDied(f"no worker process: {e}"))
                            continue
                    try:
                        _send(_fd(worker.stdin), request, running_until())
                    except _PastDeadline:  # the running call hangs with its stdin full
                        again.appendleft(call)
                        lost_worker(CallTimedOut(_limit(sent[0])))
                        continue
                    except OSError:
                        if not sent:  # died with nothing to blame: this call fails, not loops
                            call.future.set_exception(WorkerDied("the worker process died"))
                            _stop(worker)
                            worker = None
                            continue
                        again.appendleft(call)  # the read below finds the culprit
                        break
                    if not sent:
                        started = time.monotonic()
                    sent.append(call)
                if not sent:
                    if stopping and not again:
                        return
                    continue
                assert worker is not None
                try:
                    reply = _receive(_fd(worker.stdout), running_until())
                except _PastDeadline:
                    lost_worker(CallTimedOut(_limit(sent[0])))
                    continue
                except (OSError, EOFError):
                    # The oldest call was running: it dies with the worker. The others never
                    # started, so a new worker runs them.
                    lost_worker(WorkerDied("the worker process died"))
                    continue
                _resolve(sent.popleft().future, reply)
                started = time.monotonic()  # the next call sent has just begun, or begins now
        finally:
            if worker is not None:
                _stop(worker)


def _limit(call: _Call[A, R]) -> float:
    assert call.limit is not None
    return call.limit


def _resolve(future: Future[R], reply: bytes | bytearray) -> None:
    try:
        ok, value = pickle.loads(reply)  # noqa: S301 (our own worker, over a private pipe)
    except Exception as e:  # a result that does not unpickle: this call only
        future.set_exception(e)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _fd(stream: IO[bytes] | None) -> int:
    assert stream is not None
    return stream.fileno()


def _start_worker(names: tuple[str, str]) -> subprocess.Popen[bytes]:
    # The worker imports the module of ``fn`` by name, at once: give it our import path.
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=environ,
        close_fds=True,
    )
    os.set_blocking(_fd(worker.stdin), False)  # a write waits in poll, up to a deadline
    return worker


def _top_level_name(fn: Callable[..., object] | None) -> str:
    """``module:name``, by which a worker finds ``fn`` again ("" for None)."""
    if fn is None:
        return ""
    if "." in fn.__qualname__ or "<" in fn.__qualname__:
        raise ValueError(
            f"{fn.__qualname__!r} is not a top-level function: a worker cannot import it"
        )
    return f"{fn.__module__}:{fn.__qualname__}"


def _find(name: str) -> Callable[..., object]:
    module, _, attribute = name.partition(":")
    found: Callable[..., object] = getattr(importlib.import_module(module), attribute)
    return found


def _kill(worker: subprocess.Popen[bytes]) -> None:
    """End a worker that is past its call's time limit: it may never read its stdin again."""
    worker.kill()
    worker.wait()
    for stream in (worker.stdin, worker.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _stop(worker: subprocess.Popen[bytes]) -> None:
    try:
        if worker.stdin is not None:
            worker.stdin.close()  # the worker sees the end of its input and exits
        worker.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        worker.kill()
        worker.wait()
    if worker.stdout is not None:
        worker.stdout.close()


# -- the parent's side of the pipes: never waits past a deadline -----------------------------------


def _send(fd: int, data: bytes, deadline: float | None) -> None:
    """Write one frame to a non-blocking pipe, waiting for room until ``deadline``."""
    for part in (len(data).to_bytes(_LENGTH, "big"), data):
        view = memoryview(part)
        while view:
            _wait(fd, select.POLLOUT, deadline)
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue


def _receive(fd: int, deadline: float | None) -> bytearray:
    """Read one frame. Only its first byte is awaited against ``deadline``: once the reply has
    begun, the call is over and the rest follows at pipe speed."""
    _wait(fd, select.POLLIN, deadline)
    size = int.from_bytes(_read_into(fd, _LENGTH), "big")
    return _read_into(fd, size)


def _read_into(fd: int, size: int) -> bytearray:
    frame = bytearray(size)
    view = memoryview(frame)
    done = 0
    while done < size:
        got = os.readv(fd, [view[done:]])
        if not got:
            raise EOFError("the stream ended inside a frame")
        done += got
    return frame


def _wait(fd: int, event: int, deadline: float | None) -> None:
    poller = select.poll()
    poller.register(fd, event)
    timeout = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
    if not poller.poll(timeout):
        raise _PastDeadline


# -- the worker's side ----------------------------------------------------------------------------


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(len(data).to_bytes(_LENGTH, "big"))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes:
    size = int.from_bytes(_read_exactly(stream, _LENGTH), "big")
    return _read_exactly(stream, size)


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError("the stream ended inside a frame")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve_stdio() -> None:
    """The worker's main loop: one call at a time, until stdin ends.

    Its two arguments name the function it will run and the setup to call first (or ""); the
    function's module is imported now, so that the first call does not wait for it. A thread
    drains stdin, so that the parent's next request never waits for this parse to end (and a large
    request and a large reply cannot block each other in the pipes).
    """
    # Ctrl-C and the service's stop reach the parent, which stops us by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fn_name, setup_name = sys.argv[1:3]
    _find(fn_name)
    if setup_name:
        _find(setup_name)()
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt a frame
    waiting: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                waiting.put(_read_frame(requests))
        except (EOFError, OSError):
            waiting.put(None)

    threading.Thread(target=read, name="requests", daemon=True).start()
    while (request := waiting.get()) is not None:
        fn, arg = pickle.loads(request)  # noqa: S301 (from our parent, over a private pipe)
        try:
            reply = pickle.dumps((True, fn(arg)), pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # the caller gets the exception, as from a local call
            try:
                reply = pickle.dumps((False, e), pickle.HIGHEST_PROTOCOL)
            except Exception:
                reply = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
        _write_frame(replies, reply)
