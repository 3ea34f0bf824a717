"""Log lines: one event a line, journald priorities, JSON, and no secret ever."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.service.logs import (
    REDACTED,
    Redactor,
    journal_priority,
    resolve_format,
    setup_logging,
    stream_is_journal,
)

BOT_TOKEN = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
APP_TOKEN = "xapp-1-A0123456789-1234567890123-0123456789abcdef0123456789abcdef"
USER_TOKEN = "xoxp-2222-3333-4444-deadbeef"
PLAIN_SECRET = "correct-horse-battery-staple"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def log_everything(stream: io.StringIO, fmt: str, secrets: tuple[str, ...] = ()) -> list[str]:
    setup_logging("debug", fmt, secrets, stream=stream, environ={})
    log = logging.getLogger("aggregator.test")
    log.debug("debugging")
    log.info("cycle done: %d fetched", 3)
    log.warning("feed slow")
    log.error("delivery failed")
    log.critical("database gone")
    return lines(stream)


def test_journal_lines_carry_priority_prefixes() -> None:
    out = log_everything(io.StringIO(), "journal")
    assert out == [
        "<7>aggregator.test: debugging",
        "<6>aggregator.test: cycle done: 3 fetched",
        "<4>aggregator.test: feed slow",
        "<3>aggregator.test: delivery failed",
        "<2>aggregator.test: database gone",
    ]


def test_text_lines_are_timestamped_and_readable() -> None:
    out = log_everything(io.StringIO(), "text")
    assert len(out) == 5
    stamp, level, rest = out[1].split(" ", 2)
    assert stamp.endswith("Z") and "T" in stamp
    assert level == "INFO"
    assert rest == "aggregator.test: cycle done: 3 fetched"
    assert out[3].split(" ")[1] == "ERROR"


def test_json_is_one_object_a_line() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream, environ={})
    log = logging.getLogger("aggregator.test")
    log.info("cycle done", extra={"fetched": 3, "feeds": ["a", "b"]})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("cycle failed")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["msg"] == "cycle done"
    assert first["level"] == "info"
    assert first["priority"] == 6
    assert first["logger"] == "aggregator.test"
    assert first["fetched"] == 3
    assert first["feeds"] == ["a", "b"]
    assert first["ts"].endswith("Z")
    assert second["priority"] == 3
    assert "ValueError: boom" in second["exc"]


def test_level_filters_lines() -> None:
    stream = io.StringIO()
    setup_logging("warning", "journal", stream=stream, environ={})
    log = logging.getLogger("aggregator.test")
    log.info("hidden")
    log.warning("shown")
    assert lines(stream) == ["<4>aggregator.test: shown"]


def test_chatty_libraries_are_quiet_at_info() -> None:
    stream = io.StringIO()
    setup_logging("info", "journal", stream=stream, environ={})
    logging.getLogger("httpx").info("HTTP Request: GET https://x/feed 200 OK")
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("httpx").warning("something odd")
    assert lines(stream) == ["<4>httpx: something odd"]


def test_a_second_setup_replaces_the_first() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "journal", stream=first, environ={})
    setup_logging("info", "journal", stream=second, environ={})
    logging.getLogger("aggregator.test").info("once")
    assert lines(first) == []
    assert lines(second) == ["<6>aggregator.test: once"]


def test_a_traceback_stays_on_the_event_line() -> None:
    stream = io.StringIO()
    setup_logging("info", "journal", stream=stream, environ={})
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("aggregator.test").exception("cycle failed")
    (line,) = lines(stream)
    assert line.startswith("<3>aggregator.test: cycle failed | Traceback (most recent call last):")
    assert line.endswith("RuntimeError: kaput")


def test_feed_text_cannot_forge_a_journal_entry() -> None:
    stream = io.StringIO()
    setup_logging("info", "journal", stream=stream, environ={})
    title = "Harmless\n<2>aggregator: database corrupted\r\x1b[31m"
    logging.getLogger("aggregator.test").info("new entry %r", "x")
    logging.getLogger("aggregator.test").info("new entry %s", title)
    out = lines(stream)
    assert len(out) == 2
    assert out[1] == (
        "<6>aggregator.test: new entry Harmless\\n<2>aggregator: database corrupted\\r\\x1b[31m"
    )


@pytest.mark.parametrize("fmt", ["text", "journal", "json"])
def test_tokens_are_masked_in_message_args_traceback_and_extras(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("debug", fmt, secrets=(PLAIN_SECRET,), stream=stream, environ={})
    log = logging.getLogger("aggregator.test")
    log.info(f"token in the message {BOT_TOKEN}")
    log.info("token in the args %s and %r", APP_TOKEN, {"auth": USER_TOKEN})
    log.info("registered secret %s in args", PLAIN_SECRET)
    log.info("webhook https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX posted")
    log.info("quiet", extra={"request": {"headers": {"Authorization": f"Bearer {BOT_TOKEN}"}}})
    try:
        raise PermissionError(f"invalid_auth for {BOT_TOKEN} and {PLAIN_SECRET}")
    except PermissionError:
        log.exception("auth.test failed")
    log.warning("stack", stack_info=True, extra={"note": f"k={PLAIN_SECRET}"})
    text = stream.getvalue()
    for secret in (BOT_TOKEN, APP_TOKEN, USER_TOKEN, PLAIN_SECRET, "XXXXXXXXXXXXXXXX"):
        assert secret not in text
    # Masking keeps what an operator needs: which kind of token, and where it was.
    assert f"xoxb-{REDACTED}" in text
    assert f"xapp-{REDACTED}" in text
    assert f"xoxp-{REDACTED}" in text
    assert f"https://hooks.slack.com/services/{REDACTED}" in text
    assert "PermissionError: invalid_auth for" in text
    assert len(lines(stream)) == 7


def test_a_secret_learned_later_can_be_registered() -> None:
    stream = io.StringIO()
    redacting = setup_logging("info", "journal", stream=stream, environ={})
    redacting.add_secret(PLAIN_SECRET)
    logging.getLogger("aggregator.test").info("token=%s", PLAIN_SECRET)
    assert lines(stream) == [f"<6>aggregator.test: token={REDACTED}"]


def test_records_other_handlers_see_are_redacted_too() -> None:
    # The filter rewrites the record itself, so a handler added later (caplog, a shipper) is safe.
    stream, other = io.StringIO(), io.StringIO()
    setup_logging("info", "journal", stream=stream, environ={})
    extra = logging.StreamHandler(other)
    logging.getLogger().addHandler(extra)
    try:
        logging.getLogger("aggregator.test").info("t=%s", BOT_TOKEN)
    finally:
        logging.getLogger().removeHandler(extra)
    assert BOT_TOKEN not in other.getvalue()


def test_redactor_rules() -> None:
    redact = Redactor(["short", "", "  ", PLAIN_SECRET])
    assert redact("short words stay") == "short words stay"  # too short to be a secret
    assert redact(PLAIN_SECRET) == REDACTED
    assert redact("correct-horse-battery-staple".replace("-", "%2D")) != REDACTED  # not a form
    redact.add("p@ss word/secret")
    assert redact("q=p%40ss%20word%2Fsecret") == f"q={REDACTED}"
    assert redact("xoxe.xoxp-1-abc") == f"xoxe.xoxp-{REDACTED}"
    assert redact("xoxa-2-abc xoxr-abc xoxs-abc xoxo-abc") == " ".join(
        f"{k}-{REDACTED}" for k in ("xoxa", "xoxr", "xoxs", "xoxo")
    )
    assert redact("no token here: xoxz-abc, oxoxb") == "no token here: xoxz-abc, oxoxb"


def test_priorities() -> None:
    levels = (5, 10, 20, 25, 30, 40, 50, 60)
    assert [journal_priority(n) for n in levels] == [7, 7, 6, 6, 4, 3, 2, 2]


def test_auto_format_detects_the_journal_stream(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with path.open("w") as stream:
        info = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert stream_is_journal(stream, journal)
        assert resolve_format("auto", stream, journal) == "journal"
        # The variable alone is not enough: a redirected stderr inherits it.
        other = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"}
        assert resolve_format("auto", stream, other) == "text"
        assert resolve_format("auto", stream, {"JOURNAL_STREAM": "junk"}) == "text"
        assert resolve_format("auto", stream, {}) == "text"
        assert resolve_format("json", stream, journal) == "json"
    assert not stream_is_journal(io.StringIO(), journal)  # no file descriptor


def test_auto_format_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with path.open("w") as stream:
        info = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        setup_logging("info", "auto", stream=stream, environ=env)
        logging.getLogger("aggregator.test").warning("to the journal")
    assert path.read_text() == "<4>aggregator.test: to the journal\n"


def test_bad_level_and_format_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud", "text", stream=io.StringIO(), environ={})
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("info", "xml", stream=io.StringIO(), environ={})


def test_a_broken_format_string_is_still_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest's own capture handlers would raise on the broken record before ours sees it.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    stream = io.StringIO()
    setup_logging("info", "journal", stream=stream, environ={})
    logging.getLogger("aggregator.test").info("%d items", "many", BOT_TOKEN)
    (line,) = lines(stream)
    assert line.startswith("<6>aggregator.test: '%d items' % ")
    assert BOT_TOKEN not in line
