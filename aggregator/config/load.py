"""Load and validate ``config/*.toml`` into typed, frozen settings.

Every problem names its file, its line and its key path, and all problems are reported together,
so a person fixes a config in one pass. Secrets never live here: the Slack token comes from the
environment or from systemd's ``$CREDENTIALS_DIRECTORY`` (see :func:`slack_token`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aggregator.config.model import (
    Config,
    FeedConfig,
    Settings,
    TopicConfig,
)
from aggregator.errors import ConfigError, RuleSyntaxError

FILES = ("aggregator.toml", "feeds.toml", "topics.toml")
DEFAULTS_DIR = Path(__file__).parent / "defaults"

_CHANNEL = re.compile(r"^(#[a-z0-9][a-z0-9._-]{0,79}|[CGD][A-Z0-9]{6,})$")
_TOPIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


# -- public entry points -------------------------------------------------------------------------


def resolve_config_dir(directory: str | Path | None, environ: Mapping[str, str]) -> Path:
    """``--config``, else ``$AGGREGATOR_CONFIG``, else ``./config``, else the embedded defaults."""
    if directory:
        return Path(directory)
    if environ.get("AGGREGATOR_CONFIG"):
        return Path(environ["AGGREGATOR_CONFIG"])
    local = Path("config")
    return local if local.is_dir() else DEFAULTS_DIR


def load_config(directory: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read the three files in ``directory`` and validate them. Raises :class:`ConfigError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: config directory does not exist")
    texts: dict[str, str] = {}
    problems: list[str] = []
    for name in FILES:
        path = directory / name
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if name == "aggregator.toml":
                texts[name] = ""  # every setting has a default
            else:
                problems.append(f"{path}: file is missing")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{path}: cannot read: {e}")
    if problems:
        raise ConfigError(problems)
    return parse_config(texts, directory=directory, environ=environ or {})


def parse_config(
    texts: Mapping[str, str],
    *,
    directory: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate the texts of the three files (keyed by file name). Pure: no I/O."""
    environ = environ or {}
    problems: list[str] = []
    docs: dict[str, dict[str, Any]] = {}
    for name in FILES:
        label = str(directory / name) if directory else name
        try:
            docs[name] = tomllib.loads(texts.get(name, ""))
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{label}: invalid TOML: {e}")
            docs[name] = {}
    if problems:
        raise ConfigError(problems)

    def reporter(name: str) -> _Reporter:
        label = str(directory / name) if directory else name
        return _Reporter(label, texts.get(name, ""), problems)

    settings = _settings(docs["aggregator.toml"], reporter("aggregator.toml"), environ)
    topics = _topics(docs["topics.toml"], reporter("topics.toml"))
    feeds = _feeds(docs["feeds.toml"], reporter("feeds.toml"), {t.name for t in topics})
    if problems:
        raise ConfigError(problems)
    return Config(settings, feeds, topics, directory, dict(texts))


def slack_token(environ: Mapping[str, str]) -> str | None:
    """The bot token from ``$SLACK_BOT_TOKEN`` or ``$CREDENTIALS_DIRECTORY/slack-bot-token``."""
    token = environ.get("SLACK_BOT_TOKEN", "").strip()
    if token:
        return token
    creds = environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / "slack-bot-token"
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None


def parse_duration(value: object) -> float:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"24h"`` or ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 300, "5m" or "24h"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
            return float(m.group(1)) * scale
    raise ValueError(f'expected a duration such as 300, "5m" or "24h", got {value!r}')


def parse_size(value: object) -> int:
    """Bytes from ``1048576`` or ``"10MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2) or "B"
            scale = {"B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20}
            scale |= {"GB": 10**9, "GiB": 2**30}
            return int(m.group(1)) * scale[unit]
    raise ValueError(f'expected a size such as 10485760 or "10MiB", got {value!r}')


# -- validation ----------------------------------------------------------------------------------


class _Reporter:
    """Collects problems for one file, each with its line number and key path."""

    def __init__(self, label: str, text: str, problems: list[str]) -> None:
        self.label = label
        self.lines = text.splitlines()
        self.problems = problems

    def error(self, path: tuple[str | int, ...], message: str) -> None:
        line = _line_of(self.lines, path)
        where = f"{self.label}:{line}" if line else self.label
        self.problems.append(f"{where}: {_dotted(path)}: {message}")


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _line_of(lines: list[str], path: tuple[str | int, ...]) -> int | None:
    """Best-effort line number of a key path in TOML source (tomllib gives no positions).

    Finds the table the path lives in (``[[feeds]]`` number N, ``[topics.NAME]`` or ``[polling]``),
    then the key's line inside it; falls back to the table's own line.
    """
    if not path:
        return None
    head, rest = re.escape(str(path[0])), list(path[1:])
    table: int | None = None  # index of the table's header line
    if rest and isinstance(number := rest[0], int):
        headers = [
            i for i, line in enumerate(lines) if re.match(rf"^\s*\[\[\s*{head}\s*\]\]", line)
        ]
        rest.pop(0)
        table = headers[number] if number < len(headers) else None
    elif rest:
        name = re.escape(str(rest[0]))
        named = rf"^\s*\[\s*{head}\s*\.\s*\"?{name}\"?\s*[\].]"
        table = next((i for i, line in enumerate(lines) if re.match(named, line)), None)
        if table is not None:
            rest.pop(0)
    if table is None:
        plain = rf"^\s*\[\s*{head}\s*\]"
        table = next((i for i, line in enumerate(lines) if re.match(plain, line)), None)
        if table is None:
            return None
    key = next((p for p in reversed(rest) if isinstance(p, str)), None)
    if key is None:
        return table + 1
    assignment = rf"^\s*(\w+\.)?\"?{re.escape(key)}\"?\s*="
    for i in range(table + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]) and not (rest and str(rest[0]) in lines[i]):
            break  # the next table: the key is not in this one
        if re.match(assignment, lines[i]):
            return i + 1
    return table + 1


def _check_keys(
    table: Mapping[str, Any], allowed: set[str], path: tuple[str | int, ...], rep: _Reporter
) -> None:
    for key in table:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            rep.error((*path, key), f"unknown key (expected one of: {hint})")


def _get(
    table: Mapping[str, Any],
    key: str,
    convert: Callable[[Any], Any],
    default: Any,
    path: tuple[str | int, ...],
    rep: _Reporter,
) -> Any:
    if key not in table:
        return default
    try:
        return convert(table[key])
    except (ValueError, TypeError) as e:
        rep.error((*path, key), str(e))
        return default


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _positive_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _non_negative_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number of at least 0, got {value!r}")
    return value


def _http_url(value: object) -> str:
    text = _string(value).strip()
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return text


def _channel(value: object) -> str:
    text = _string(value).strip()
    if not _CHANNEL.match(text):
        raise ValueError(
            f"bad channel name {value!r}: expected '#name' (lower-case letters, digits, '-', '_', "
            "'.') or a channel ID such as 'C0123456789'"
        )
    return text


def _clock(value: object) -> str:
    text = _string(value)
    if not _CLOCK.match(text):
        raise ValueError(f'expected a time of day as "HH:MM", got {value!r}')
    return text


def _settings(doc: dict[str, Any], rep: _Reporter, environ: Mapping[str, str]) -> Settings:
    d = Settings()
    sections = {"storage", "polling", "fetch", "slack", "stories"}
    _check_keys(doc, sections, (), rep)

    def section(name: str, keys: set[str]) -> dict[str, Any]:
        table = doc.get(name, {})
        if not isinstance(table, dict):
            rep.error((name,), "expected a table")
            return {}
        _check_keys(table, keys, (name,), rep)
        return table

    storage = section("storage", {"database", "retention_days"})
    polling = section(
        "polling", {"interval", "first_poll_window", "jitter", "cycle_timeout", "backoff_cap"}
    )
    fetch = section(
        "fetch",
        {"timeout", "deadline", "max_body", "max_redirects", "concurrency", "parse_workers"}
        | {"parse_timeout", "user_agent", "failing_after"},
    )
    slack = section("slack", {"api_url", "ops_channel", "max_attempts", "per_channel_interval"})
    stories = section("stories", {"window", "reply_batch"})
    p = ("polling",)
    f = ("fetch",)
    api_url = _get(slack, "api_url", _http_url, d.slack_api_url, ("slack",), rep)
    if environ.get("SLACK_API_URL"):
        api_url = environ["SLACK_API_URL"]
    if not api_url.endswith("/"):
        api_url += "/"
    ops = _get(slack, "ops_channel", lambda v: _channel(v) if v else None, None, ("slack",), rep)
    settings = Settings(
        database=_get(storage, "database", _string, d.database, ("storage",), rep),
        retention_days=_get(
            storage, "retention_days", _positive_int, d.retention_days, ("storage",), rep
        ),
        poll_interval=_get(polling, "interval", parse_duration, d.poll_interval, p, rep),
        first_poll_window=_get(
            polling, "first_poll_window", parse_duration, d.first_poll_window, p, rep
        ),
        jitter=_get(polling, "jitter", parse_duration, d.jitter, p, rep),
        cycle_timeout=_get(polling, "cycle_timeout", parse_duration, d.cycle_timeout, p, rep),
        backoff_cap=_get(polling, "backoff_cap", parse_duration, d.backoff_cap, p, rep),
        fetch_timeout=_get(fetch, "timeout", parse_duration, d.fetch_timeout, f, rep),
        fetch_deadline=_get(fetch, "deadline", parse_duration, d.fetch_deadline, f, rep),
        max_body_bytes=_get(fetch, "max_body", parse_size, d.max_body_bytes, f, rep),
        max_redirects=_get(fetch, "max_redirects", _non_negative_int, d.max_redirects, f, rep),
        concurrency=_get(fetch, "concurrency", _positive_int, d.concurrency, f, rep),
        parse_workers=_get(fetch, "parse_workers", _non_negative_int, d.parse_workers, f, rep),
        parse_timeout=_get(fetch, "parse_timeout", parse_duration, d.parse_timeout, f, rep),
        failing_after=_get(fetch, "failing_after", parse_duration, d.failing_after, f, rep),
        user_agent=_get(fetch, "user_agent", _string, d.user_agent, f, rep),
        slack_api_url=api_url,
        ops_channel=ops,
        max_attempts=_get(slack, "max_attempts", _positive_int, d.max_attempts, ("slack",), rep),
        per_channel_interval=_get(
            slack, "per_channel_interval", parse_duration, d.per_channel_interval, ("slack",), rep
        ),
        story_window=_get(stories, "window", parse_duration, d.story_window, ("stories",), rep),
        reply_batch=_get(stories, "reply_batch", parse_duration, d.reply_batch, ("stories",), rep),
    )
    if settings.poll_interval < 10:
        rep.error(("polling", "interval"), "must be at least 10 seconds, to be polite to feeds")
    if settings.fetch_deadline < settings.fetch_timeout:
        rep.error(("fetch", "deadline"), "must be at least fetch.timeout")
    if settings.parse_timeout < 1:
        rep.error(("fetch", "parse_timeout"), "must be at least 1 second")
    return settings


_TOPIC_KEYS = {
    "channel",
    "query",
    "exclude",
    "examples",
    "delivery",
    "digest_at",
    "digest_every",
    "timezone",
    "quiet_hours",
    "urgent",
    "description",
}


def _topics(doc: dict[str, Any], rep: _Reporter) -> tuple[TopicConfig, ...]:
    from aggregator.rules import syntax as rules  # the rule language validates queries

    _check_keys(doc, {"topics"}, (), rep)
    table = doc.get("topics", {})
    if not isinstance(table, dict) or not table:
        rep.error(("topics",), "expected at least one [topics.NAME] table")
        return ()
    topics: list[TopicConfig] = []
    for name, raw in table.items():
        path: tuple[str | int, ...] = ("topics", name)
        if not _TOPIC_NAME.match(name):
            rep.error(path, "topic names are lower-case letters, digits, '-' and '_'")
        if not isinstance(raw, dict):
            rep.error(path, "expected a table")
            continue
        _check_keys(raw, _TOPIC_KEYS, path, rep)
        channel = _get(raw, "channel", _channel, f"#{name}", path, rep)
        if "query" not in raw:
            rep.error((*path, "query"), "missing: every topic needs a query")
        query = _get(raw, "query", _string, "", path, rep)
        exclude = _get(raw, "exclude", _string, None, path, rep)
        for key, text in (("query", query), ("exclude", exclude)):
            if text is None or (key == "query" and not text):
                continue
            try:
                rules.parse(text)
            except RuleSyntaxError as e:
                pointer = "\n    ".join(e.pointer().splitlines())
                rep.error((*path, key), f"{e.message} at column {e.column}:\n    {pointer}")
        examples = raw.get("examples", {})
        if not isinstance(examples, dict):
            rep.error((*path, "examples"), "expected a table with match = [...], no_match = [...]")
            examples = {}
        _check_keys(examples, {"match", "no_match"}, (*path, "examples"), rep)
        ex_path = (*path, "examples")
        delivery = _get(raw, "delivery", _string, "realtime", path, rep)
        if delivery not in ("realtime", "digest"):
            rep.error((*path, "delivery"), f'expected "realtime" or "digest", got {delivery!r}')
        digest_at = _get(raw, "digest_at", lambda v: tuple(_clock(x) for x in v), (), path, rep)
        digest_every = _get(raw, "digest_every", parse_duration, None, path, rep)
        if delivery == "digest" and not digest_at and not digest_every:
            rep.error((*path, "delivery"), 'a digest needs digest_at = ["08:00"] or digest_every')
        timezone = _get(raw, "timezone", _string, "UTC", path, rep)
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            rep.error((*path, "timezone"), f"unknown time zone {timezone!r}")
            timezone = "UTC"
        quiet = _get(raw, "quiet_hours", _strings, None, path, rep)
        if quiet is not None:
            try:
                quiet = (_clock(quiet[0]), _clock(quiet[1])) if len(quiet) == 2 else None
            except ValueError:
                quiet = None
            if quiet is None:
                rep.error((*path, "quiet_hours"), 'expected ["22:00", "07:00"]')
        topics.append(
            TopicConfig(
                name=name,
                channel=channel,
                query=query,
                exclude=exclude,
                examples_match=_get(examples, "match", _strings, (), ex_path, rep),
                examples_no_match=_get(examples, "no_match", _strings, (), ex_path, rep),
                delivery=delivery,
                digest_at=digest_at,
                digest_every=digest_every,
                timezone=timezone,
                quiet_hours=quiet,
                urgent=_get(raw, "urgent", _boolean, False, path, rep),
            )
        )
    return tuple(topics)


def _feeds(doc: dict[str, Any], rep: _Reporter, topic_names: set[str]) -> tuple[FeedConfig, ...]:
    _check_keys(doc, {"feeds"}, (), rep)
    raw_feeds = doc.get("feeds", [])
    if not isinstance(raw_feeds, list):
        rep.error(("feeds",), "expected [[feeds]] tables")
        return ()
    feeds: list[FeedConfig] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_feeds):
        path: tuple[str | int, ...] = ("feeds", i)
        if not isinstance(raw, dict):
            rep.error(path, "expected a table")
            continue
        _check_keys(raw, {"url", "name", "interval", "topics", "primary"}, path, rep)
        if "url" not in raw:
            rep.error((*path, "url"), "missing: every feed needs a url")
            continue
        url = _get(raw, "url", _http_url, "", path, rep)
        if not url:
            continue
        if url in seen:
            rep.error((*path, "url"), f"duplicate feed URL {url!r} (also feeds[{seen[url]}])")
        seen[url] = i
        topics = _get(raw, "topics", _strings, (), path, rep)
        for topic in topics:
            if topic not in topic_names:
                known = ", ".join(sorted(topic_names))
                rep.error((*path, "topics"), f"unknown topic {topic!r} (topics are: {known})")
        interval = _get(raw, "interval", parse_duration, None, path, rep)
        if interval is not None and interval < 10:
            rep.error((*path, "interval"), "must be at least 10 seconds")
        feeds.append(
            FeedConfig(
                url=url,
                name=_get(raw, "name", _string, "", path, rep) or _host(url),
                interval=interval,
                topics=topics,
                primary=_get(raw, "primary", _boolean, False, path, rep),
            )
        )
    return tuple(feeds)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def config_files(directory: Path) -> list[Path]:
    """The files whose changes trigger a reload."""
    return [directory / name for name in FILES]
