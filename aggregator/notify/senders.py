"""Which process is sending an outbox row (``host:pid``), and whether it still runs.

Two delivery loops may share one database: the service beside ``poll --once``. At start the
service settles the rows a crash left in ``sending``; a row that another live process is sending
at that moment must be left to it, or a look in Slack finds nothing yet and the message goes out
twice. SQLite in WAL mode keeps every process on one host, so a process id says who sends; a
sender named with another host name (a container sharing the file) is taken to be alive, and
its row is settled only once it is stale.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def this_process() -> str:
    """The name a process gives the rows it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def another_live_process(sender: str | None) -> bool:
    """True when ``sender`` names a process other than this one that may still be running."""
    if sender is None or sender == this_process():
        return False
    host, _, number = sender.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot be checked from here: the safe answer
    try:
        pid = int(number)
        if pid <= 0:
            return False  # kill(0) would signal our own process group
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    except (ValueError, OSError):
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but was not reaped yet still answers ``kill(pid, 0)``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
