"""A database that cannot be written is said at once, in one line, by every entry point.

An immutable file (``chattr +i``) opens, reads and even takes the write lock; only the first
write fails. Without a check at start, ``run`` started and then failed every cycle, and ``poll``
printed a raw traceback. ``chattr`` needs root (CAP_LINUX_IMMUTABLE), which CI has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.admin.doctor import check_database
from aggregator.errors import StoreError
from aggregator.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _chattr(flag: str, path: Path) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    return subprocess.run([chattr, flag, str(path)], capture_output=True).returncode == 0


@pytest.fixture
def immutable_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "bot.db"
    Store.open(path).close()
    if not _chattr("+i", path):
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail("chattr +i failed as root under CI: the read-only database is untested")
        pytest.skip("needs chattr and root (CAP_LINUX_IMMUTABLE): run the tests as root")
    try:
        yield path
    finally:
        _chattr("-i", path)


def aggregator(*args: str) -> subprocess.CompletedProcess[str]:
    config = ROOT / "aggregator" / "config" / "defaults"
    environ = {k: v for k, v in os.environ.items() if k != "SLACK_BOT_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env=environ, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_opening_an_unwritable_database_fails_with_the_reason(immutable_db: Path) -> None:
    with pytest.raises(StoreError, match="readonly database: the file or its directory cannot"):
        Store.open(immutable_db)


def test_run_and_poll_refuse_it_in_one_line_without_a_traceback(immutable_db: Path) -> None:
    for command in (["run"], ["poll", "--once"], ["outbox"]):
        result = aggregator("--db", str(immutable_db), *command)
        assert result.returncode == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert "readonly database" in result.stderr
    run = aggregator("--db", str(immutable_db), "run")
    assert "cannot start: cannot open database" in run.stderr


def test_doctor_says_the_file_cannot_be_written_and_how_to_fix_it(immutable_db: Path) -> None:
    check, _ = check_database(str(immutable_db))
    assert not check.ok
    assert "is not writable" in check.detail and "chattr -i" in check.fix
