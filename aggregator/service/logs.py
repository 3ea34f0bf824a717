"""Logging for a service that journald, a terminal or a log shipper reads.

Every event is one line on stderr. Under systemd, stderr is a journal stream (``$JOURNAL_STREAM``
names it), and a ``<N>`` prefix gives each line its syslog priority, so ``journalctl -p warning``
works. On a terminal, lines carry a UTC timestamp instead. ``json`` writes one object a line.

Feed text reaches log lines, so control characters are escaped: a title holding ``"\\n<3>"`` cannot
forge a second entry. And no secret ever reaches a line: anything shaped like a Slack token, plus
every value registered as secret, is masked in the message, its arguments and exception text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from aggregator.redact import REDACTED, Redactor

__all__ = ["REDACTED", "RedactingFilter", "Redactor", "setup_logging"]

FORMATS = ("auto", "text", "journal", "json")
LEVELS = ("debug", "info", "warning", "error")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Libraries that log every request or job run at INFO; at INFO they would drown the cycle summary.
_CHATTY = ("httpx", "httpcore", "apscheduler", "slack_sdk", "urllib3")
# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def journal_priority(levelno: int) -> int:
    """The syslog priority for a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class RedactingFilter(logging.Filter):
    """Rewrites each record so its message, arguments, traceback and extras hold no secret.

    It sits on the handler, so it sees records from every logger, and it renders the message
    itself: a token passed as an argument (``log.info("t=%s", token)``) is masked too.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def add_secret(self, secret: str | None) -> None:
        self.redactor.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the event
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, _redact_value(value, self.redactor))
        return True


def _redact_value(value: object, redactor: Redactor) -> object:
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_redact_value(v, redactor) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v, redactor) for k, v in value.items()}
    return redactor(str(value))


def one_line(text: str) -> str:
    """Escape control characters, so an event stays on one line and cannot forge another."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def _exception_text(record: logging.LogRecord) -> str:
    parts = [record.exc_text or "", record.stack_info or ""]
    # Join traceback lines with a visible separator: the event still reads as one line.
    return " | ".join(one_line(line) for part in parts for line in part.splitlines() if line)


class TextFormatter(logging.Formatter):
    """``2026-11-28T20:19:40.123Z WARNING aggregator.fetch: message | Traceback ...``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        when = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        line = f"{when} {record.levelname} {record.name}: {one_line(record.getMessage())}"
        tail = _exception_text(record)
        return f"{line} | {tail}" if tail else line


class JournalFormatter(logging.Formatter):
    """``<4>aggregator.fetch: message``; journald strips the prefix and stores the priority."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"<{journal_priority(record.levelno)}>{record.name}: {one_line(record.getMessage())}"
        tail = _exception_text(record)
        return f"{line} | {tail}" if tail else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, priority, logger, msg, exc, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        event: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "priority": journal_priority(record.levelno),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            event["exc"] = record.exc_text
        if record.stack_info:
            event["stack"] = record.stack_info
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in event:
                event[key] = value
        return json.dumps(event, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our handler; its type lets a second ``setup_logging`` call replace it."""

    def __init__(self, stream: IO[str], redactor: Redactor) -> None:
        super().__init__(stream)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        # Last line of defence: whatever a formatter added is masked as well.
        return self.redactor(super().format(record))


def stream_is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM`` (dev:inode).

    Comparing the inode, not just testing the variable, matters: a child whose stderr was
    redirected to a file still inherits the variable.
    """
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return info.st_dev == device and info.st_ino == inode


def resolve_format(fmt: str, stream: IO[str], environ: Mapping[str, str]) -> str:
    """``auto`` becomes ``journal`` on a journal stream and ``text`` elsewhere."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    return "journal" if stream_is_journal(stream, environ) else "text"


def setup_logging(
    level: str,
    fmt: str,
    secrets: Sequence[str] = (),
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RedactingFilter:
    """Send every log record to ``stream`` (stderr by default), one line each, with no secret.

    Returns the redacting filter so the caller can register a secret learned later
    (``add_secret``). Calling it again replaces the previous setup rather than doubling lines.
    """
    name = level.strip().upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (expected one of: {', '.join(LEVELS)})")
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    formatter: logging.Formatter = {
        "text": TextFormatter,
        "journal": JournalFormatter,
        "json": JsonFormatter,
    }[resolve_format(fmt, out, env)]()

    redactor = Redactor(secrets)
    handler = _Handler(out, redactor)
    handler.setFormatter(formatter)
    handler.setLevel(numeric)
    redacting = RedactingFilter(redactor)
    handler.addFilter(redacting)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(
            logging.INFO if numeric <= logging.DEBUG else logging.WARNING
        )
    logging.captureWarnings(True)
    return redacting
