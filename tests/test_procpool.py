"""The worker processes behind ParsePool: real interpreters, real pipes, real deaths."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from aggregator.ingest.procpool import CallTimedOut, ProcessPool, WorkerDied

ROOT = Path(__file__).resolve().parents[1]


def square_or_die(n: int) -> int:
    if n == -1:
        os._exit(3)  # as a crash in a C extension or the OOM killer would
    if n == -2:
        raise ValueError("no negative squares")
    return n * n


def square_or_hang(n: int) -> tuple[int, int]:
    """``(pid, n * n)``; -3 sleeps for an hour, as a parse stuck waiting would."""
    if n == -3:
        threading.Event().wait()  # never set: stuck for good
    return os.getpid(), n * n


def size_or_backtrack(arg: bytes) -> int:
    """Its length; b"backtrack" never ends inside the regex engine, which holds the GIL: the
    worker's thread that reads stdin stops too, so the requests behind it fill the pipe."""
    if arg == b"backtrack":
        re.fullmatch(r"(a+)+b", "a" * 64)
    return len(arg)


_SET_UP: list[int] = []  # each process has its own


def note_setup() -> None:
    _SET_UP.append(os.getpid())


def setup_calls(_: int) -> tuple[int, list[int]]:
    return os.getpid(), list(_SET_UP)


def test_results_in_order_and_exceptions_travel_back() -> None:
    pool: ProcessPool[int, int] = ProcessPool(square_or_die, 2)
    try:
        futures = [pool.submit(n) for n in range(40)]
        assert [f.result(timeout=60) for f in futures] == [n * n for n in range(40)]
        with pytest.raises(ValueError, match="no negative squares"):
            pool.submit(-2).result(timeout=60)
        assert pool.submit(7).result(timeout=60) == 49  # the worker survived the exception
    finally:
        pool.shutdown()


def test_setup_runs_once_in_each_worker_before_its_calls_and_never_here() -> None:
    pool: ProcessPool[int, tuple[int, list[int]]] = ProcessPool(setup_calls, 2, setup=note_setup)
    try:
        seen = [f.result(timeout=60) for f in [pool.submit(n) for n in range(20)]]
    finally:
        pool.shutdown()
    assert all(calls == [pid] for pid, calls in seen)  # once, in that very worker
    assert 1 <= len({pid for pid, _ in seen}) <= 2
    assert _SET_UP == []


def test_a_function_a_worker_cannot_import_is_refused_at_once() -> None:
    def nested(n: int) -> int:
        return n

    with pytest.raises(ValueError, match="not a top-level function"):
        ProcessPool(nested, 1)
    with pytest.raises(ValueError, match="not a top-level function"):
        ProcessPool(square_or_die, 1, setup=lambda: None)


def test_a_call_past_its_time_limit_fails_and_a_new_worker_runs_the_rest() -> None:
    pool: ProcessPool[int, tuple[int, int]] = ProcessPool(square_or_hang, 1)
    try:
        first = pool.submit(2).result(timeout=60)
        hung = pool.submit(-3, time_limit=1.0)
        behind = [pool.submit(n) for n in (4, 5)]  # queued behind the hung call
        with pytest.raises(CallTimedOut, match=r"^took longer than 1 s$"):
            hung.result(timeout=60)
        after = [f.result(timeout=60) for f in behind]
        later = pool.submit(6, time_limit=30.0).result(timeout=60)
    finally:
        pool.shutdown()
    assert first[1] == 4 and [n for _, n in after] == [16, 25] and later[1] == 36
    replacement = {pid for pid, _ in [*after, later]}
    assert first[0] not in replacement and len(replacement) == 1  # the hung worker was replaced
    assert first[0] not in _children(os.getpid())  # ... and is gone, not left hanging
    assert not Path(f"/proc/{first[0]}").exists()


def test_a_worker_hung_with_the_gil_held_cannot_block_the_requests_behind_it() -> None:
    big = b"x" * (4 << 20)  # far more than a pipe holds
    pool: ProcessPool[bytes, int] = ProcessPool(size_or_backtrack, 1)
    try:
        assert pool.submit(b"warm").result(timeout=60) == 4
        hung = pool.submit(b"backtrack", time_limit=1.0)
        behind = [pool.submit(big) for _ in range(3)]
        with pytest.raises(CallTimedOut):
            hung.result(timeout=60)
        assert [f.result(timeout=60) for f in behind] == [len(big)] * 3
    finally:  # bounded: a feeder stuck in a write would hang the shutdown, and the suite
        closing = threading.Thread(target=pool.shutdown, daemon=True)
        closing.start()
        closing.join(60)
    assert not closing.is_alive(), "the pool did not shut down: a write blocked for good"


def test_a_dying_worker_fails_only_the_call_it_was_running() -> None:
    pool: ProcessPool[int, int] = ProcessPool(square_or_die, 2)
    try:
        calls = [*range(10), -1, *range(10, 30), -1, *range(30, 40)]
        futures = [pool.submit(n) for n in calls]
        for n, future in zip(calls, futures, strict=True):
            if n == -1:
                with pytest.raises(WorkerDied):
                    future.result(timeout=60)
            else:
                assert future.result(timeout=60) == n * n  # in flight behind it: run again
        assert pool.submit(9).result(timeout=60) == 81  # a new worker took over
    finally:
        pool.shutdown()


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import threading
        from aggregator.ingest.procpool import ProcessPool
        from tests.test_procpool import square_or_die
        pool = ProcessPool(square_or_die, 2)
        futures = [pool.submit(n) for n in range(4)]
        print(sum(f.result() for f in futures), flush=True)
        threading.Event().wait()  # until killed
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "14"
    workers = [os.pidfd_open(pid) for pid in _children(parent.pid)]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for pidfd in workers:  # a pidfd turns readable when its process exits
        exited, _, _ = select.select([pidfd], [], [], 30)
        os.close(pidfd)
        assert exited, "a worker outlived its parent"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_start_runs_every_worker_before_the_first_call() -> None:
    pool: ProcessPool[int, int] = ProcessPool(square_or_die, 2)
    try:
        before = set(_children(os.getpid()))
        pool.start()
        assert len(set(_children(os.getpid())) - before) == 2  # running before any call
        assert [pool.submit(n).result(timeout=60) for n in (2, 3)] == [4, 9]
    finally:
        pool.shutdown()


def test_a_worker_that_cannot_start_fails_the_call_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aggregator.ingest.procpool as procpool

    def no_processes(names: tuple[str, str]) -> subprocess.Popen[bytes]:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(procpool, "_start_worker", no_processes)
    pool: ProcessPool[int, int] = ProcessPool(square_or_die, 1)
    try:
        with pytest.raises(WorkerDied, match="no worker process"):
            pool.submit(3).result(timeout=60)
    finally:
        pool.shutdown()


def test_calls_behind_a_dying_worker_still_run_when_the_pool_shuts_down() -> None:
    # Shutdown queues its stop after the calls: those behind a crash are still run by a new
    # worker before it returns.
    pool: ProcessPool[int, int] = ProcessPool(square_or_die, 1)
    futures = [pool.submit(n) for n in (1, -1, 2, 3)]
    pool.shutdown()
    assert futures[0].result(timeout=0) == 1
    with pytest.raises(WorkerDied):
        futures[1].result(timeout=0)
    assert [f.result(timeout=0) for f in futures[2:]] == [4, 9]
