"""The worker processes behind ParsePool: real interpreters, real pipes, real deaths."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aggregator.ingest.procpool import ProcessPool, WorkerDied

ROOT = Path(__file__).resolve().parents[1]


def square_or_die(n: int) -> int:
    if n == -1:
        os._exit(3)  # as a crash in a C extension or the OOM killer would
    if n == -2:
        raise ValueError("no negative squares")
    return n * n


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
