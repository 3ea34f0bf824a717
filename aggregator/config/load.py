"""Load and validate ``config/*.toml`` into typed, frozen settings.

Every problem names its file, its line and its key path, and all problems are reported together,
so a person fixes a config in one pass. Secrets never live here: the Slack token comes from the
environment or from systemd's ``$CREDENTIALS_DIRECTORY`` (see :func:`slack_token`).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aggregator.config.model import (
    REVIEW_AT,
    Config,
    FeedbackSettings,
    FeedConfig,
    Settings,
    TopicConfig,
)
from aggregator.config.reactions import overlap, reaction_names
from aggregator.config.values import (
    MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    MAX_PARSE_WORKERS,
    MAX_REDIRECTS,
    MAX_RETENTION_DAYS,
    duration_in,
    parse_size,
)
from aggregator.errors import ConfigError, RuleSyntaxError

FILES = ("aggregator.toml", "feeds.toml", "topics.toml")
DEFAULTS_DIR = Path(__file__).parent / "defaults"

_CHANNEL = re.compile(r"^(#[a-z0-9][a-z0-9._-]{0,79}|[CGD][A-Z0-9]{6,})$")
_TOPIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
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
    config = parse_config(texts, directory=directory, environ=environ or {})
    # One path per model file, however the config directory was named (a symlink, ./config);
    # whether the file is there and sound is for whoever loads it (check-config, run, train).
    topics = tuple(
        replace(t, model=t.model.resolve()) if t.model is not None else t for t in config.topics
    )
    return replace(config, topics=topics)


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
    topics = _topics(docs["topics.toml"], reporter("topics.toml"), directory)
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


def _whole_number(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"expected a whole number of at least {low}, got {value!r}")
        if value > high:
            raise ValueError(f"must be at most {high:,}, got {value!r}")
        return value

    return convert


def _networks(value: object) -> tuple[str, ...]:
    """Addresses or networks in canonical form (``"10.1.0.0/16"``)."""
    out = []
    for text in _strings(value):
        try:
            out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError as e:
            raise ValueError(
                f"expected addresses or networks such as 10.1.0.0/16, got {text!r}"
            ) from e
    return tuple(out)


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
    sections = {"storage", "polling", "fetch", "slack", "stories", "feedback"}
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
        | {"user_agent", "failing_after", "allow_private", "allow_networks", "parse_timeout"},
    )
    slack = section("slack", {"api_url", "ops_channel", "max_attempts", "per_channel_interval"})
    stories = section("stories", {"window", "reply_batch"})
    feedback = section("feedback", {"enabled", "window", "read_every", "relevant", "not_relevant"})
    f = ("fetch",)
    api_url = _get(slack, "api_url", _http_url, d.slack_api_url, ("slack",), rep)
    if environ.get("SLACK_API_URL"):
        api_url = environ["SLACK_API_URL"]
    if not api_url.endswith("/"):
        api_url += "/"
    ops = _get(slack, "ops_channel", lambda v: _channel(v) if v else None, None, ("slack",), rep)

    def duration(table: dict[str, Any], name: str, key: str, default: float) -> float:
        value: float = _get(table, key, duration_in(f"{name}.{key}"), default, (name,), rep)
        return value

    def number(
        table: dict[str, Any], name: str, key: str, default: int, bounds: tuple[int, int]
    ) -> int:
        value: int = _get(table, key, _whole_number(*bounds), default, (name,), rep)
        return value

    settings = Settings(
        database=_get(storage, "database", _string, d.database, ("storage",), rep),
        retention_days=number(
            storage, "storage", "retention_days", d.retention_days, (1, MAX_RETENTION_DAYS)
        ),
        poll_interval=duration(polling, "polling", "interval", d.poll_interval),
        first_poll_window=duration(polling, "polling", "first_poll_window", d.first_poll_window),
        jitter=duration(polling, "polling", "jitter", d.jitter),
        cycle_timeout=duration(polling, "polling", "cycle_timeout", d.cycle_timeout),
        backoff_cap=duration(polling, "polling", "backoff_cap", d.backoff_cap),
        fetch_timeout=duration(fetch, "fetch", "timeout", d.fetch_timeout),
        fetch_deadline=duration(fetch, "fetch", "deadline", d.fetch_deadline),
        max_body_bytes=_get(fetch, "max_body", parse_size, d.max_body_bytes, f, rep),
        max_redirects=number(fetch, "fetch", "max_redirects", d.max_redirects, (0, MAX_REDIRECTS)),
        concurrency=number(fetch, "fetch", "concurrency", d.concurrency, (1, MAX_CONCURRENCY)),
        parse_workers=number(
            fetch, "fetch", "parse_workers", d.parse_workers, (0, MAX_PARSE_WORKERS)
        ),
        parse_timeout=duration(fetch, "fetch", "parse_timeout", d.parse_timeout),
        failing_after=duration(fetch, "fetch", "failing_after", d.failing_after),
        user_agent=_get(fetch, "user_agent", _string, d.user_agent, f, rep),
        allow_private=_get(fetch, "allow_private", _boolean, d.allow_private, f, rep),
        allow_networks=_get(fetch, "allow_networks", _networks, d.allow_networks, f, rep),
        slack_api_url=api_url,
        ops_channel=ops,
        max_attempts=number(slack, "slack", "max_attempts", d.max_attempts, (1, MAX_ATTEMPTS)),
        per_channel_interval=duration(
            slack, "slack", "per_channel_interval", d.per_channel_interval
        ),
        story_window=duration(stories, "stories", "window", d.story_window),
        reply_batch=duration(stories, "stories", "reply_batch", d.reply_batch),
        feedback=_feedback(feedback, rep, duration),
    )
    if settings.fetch_deadline < settings.fetch_timeout:
        rep.error(("fetch", "deadline"), "must be at least fetch.timeout")
    return settings


def _feedback(
    table: dict[str, Any], rep: _Reporter, duration: Callable[..., float]
) -> FeedbackSettings:
    d, f = FeedbackSettings(), ("feedback",)
    relevant = _get(table, "relevant", reaction_names, d.relevant, f, rep)
    not_relevant = _get(table, "not_relevant", reaction_names, d.not_relevant, f, rep)
    if both := overlap(relevant, not_relevant):
        rep.error((*f, "not_relevant"), f"also in feedback.relevant: {', '.join(both)}")
    return FeedbackSettings(
        enabled=_get(table, "enabled", _boolean, d.enabled, f, rep),
        window=duration(table, "feedback", "window", d.window),
        read_every=duration(table, "feedback", "read_every", d.read_every),
        relevant=relevant,
        not_relevant=not_relevant,
    )


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
    "model",
    "alert_threshold",
    "review_threshold",
    "review_at",
}


def _topics(
    doc: dict[str, Any], rep: _Reporter, directory: Path | None = None
) -> tuple[TopicConfig, ...]:
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
            if text is None or (key == "query" and "query" not in raw):
                continue
            if not rules.describe(text):
                hint = "every topic needs a query" if key == "query" else "remove the key instead"
                rep.error((*path, key), f"is empty (nothing but spaces or comments): {hint}")
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
        digest_every = _get(
            raw, "digest_every", duration_in("topics.*.digest_every"), None, path, rep
        )
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
                **_relevance(raw, path, rep, directory),
            )
        )
    return tuple(topics)


def _relevance(
    raw: Mapping[str, Any], path: tuple[str | int, ...], rep: _Reporter, directory: Path | None
) -> dict[str, Any]:
    """A topic's model (a path relative to the config directory) and its thresholds."""
    model = _get(raw, "model", _string, None, path, rep)
    alert = _get(raw, "alert_threshold", _probability, None, path, rep)
    review = _get(raw, "review_threshold", _probability, None, path, rep)
    if model is None and (alert is not None or review is not None):
        key = "alert_threshold" if alert is not None else "review_threshold"
        rep.error((*path, key), 'a threshold needs a model: add model = "models/NAME.json"')
    if alert is not None and review is not None and review > alert:
        rep.error((*path, "review_threshold"), f"must be at most alert_threshold ({alert:g})")
    review_at = _get(raw, "review_at", lambda v: tuple(_clock(x) for x in v), REVIEW_AT, path, rep)
    resolved = None
    if model:
        resolved = directory / model if directory is not None else Path(model)
    return {
        "model": resolved,
        "alert_threshold": alert,
        "review_threshold": review,
        "review_at": review_at,
    }


def _probability(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number from 0 to 1, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # also refuses nan
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


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
        interval = _get(raw, "interval", duration_in("feeds[].interval"), None, path, rep)
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
