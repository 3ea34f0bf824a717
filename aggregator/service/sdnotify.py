"""The sd_notify protocol, in the standard library only.

systemd hands a ``Type=notify`` service the path of a datagram socket in ``$NOTIFY_SOCKET`` (a
leading ``@`` means Linux's abstract namespace). The service writes newline-separated ``KEY=VALUE``
lines to it: ``READY=1`` once it is up, ``WATCHDOG=1`` while it is healthy, ``STOPPING=1`` on
shutdown.

Outside systemd the variable is unset and every call is a no-op. A notification is never worth
crashing for, so no method raises: a failure is logged and reported as ``False``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or ``None`` when it is off.

    Like ``sd_watchdog_enabled()``: when ``$WATCHDOG_PID`` is set and names another process, the
    watchdog is not ours. Ping at about half this interval.
    """
    raw = environ.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    owner = environ.get("WATCHDOG_PID", "").strip()
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or ``None`` if unusable."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # relative paths are invalid; vsock: addresses are not supported here


class Notifier:
    """Sends state changes to the service manager. Safe to share between threads."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._raw = env.get("NOTIFY_SOCKET", "")
        self._address = socket_address(self._raw) if self._raw else None
        if self._raw and self._address is None:
            log.warning("ignoring unsupported NOTIFY_SOCKET address %r", self._raw)
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram. True when it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.sendto(payload, self._address)
        except OSError as e:
            # Log the first failure loudly, then quietly: the watchdog pings repeat forever.
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(level, "sd_notify to %r failed: %s", self._raw, e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete (database migrated, scheduler running)."""
        return self.notify("READY=1", *self._status_line(status))

    def reloading(self) -> bool:
        """A config reload started; call :meth:`ready` when it has finished.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd 253+), harmless before.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1", *self._status_line(status))

    def watchdog(self) -> bool:
        """The service is healthy; send only while cycles complete."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(*self._status_line(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop, e.g. during a long migration."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def _status_line(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        # A newline would start a new assignment; keep the status on its line.
        return ("STATUS=" + " ".join(text.splitlines()),)
