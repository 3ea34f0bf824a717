"""What ``aggregator feeds ...`` does: list, add, remove, import/export OPML, and the health table.

Plain functions that return text or data; ``cli.py`` only wires them to click. Edits go through
:mod:`aggregator.feeds_file` (layout-preserving) and are validated as a whole config before they are
written, so a typo in ``--topics`` never reaches the file a running service reloads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aggregator.config.feeds_file import (
    add_feed,
    feed_block,
    import_opml,
    remove_feed,
    scan_opml,
    write_text_atomic,
)
from aggregator.config.load import FILES, parse_config
from aggregator.config.model import Config, FeedConfig, Settings
from aggregator.errors import ConfigError
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.parse import parse_feed
from aggregator.models import (
    FeedStatus,
    FetchError,
    FetchRequest,
    FetchResult,
    NotModified,
    ParseError,
)
from aggregator.store import Store

NEW_FEEDS_FILE = """\
# The feeds the bot polls: one [[feeds]] table per feed.
#   url      (required) the RSS or Atom URL
#   name     the source name shown in alerts (default: the host)
#   interval how often to poll, e.g. "5m" (default: [polling] interval)
#   topics   topics every item of this feed belongs to, e.g. ["executive-orders"]
"""
HEALTH_WINDOW_DAYS = 7


@dataclass(frozen=True, slots=True)
class Probe:
    """One validating fetch of a feed URL."""

    ok: bool
    message: str
    title: str = ""
    entries: int = 0
    moved_to: str | None = None


@dataclass(frozen=True, slots=True)
class FeedHealth:
    url: str
    name: str
    state: FeedStatus
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_errors: int
    next_fetch: datetime | None
    items_per_day: float
    avg_latency_ms: float | None
    moved_from: str | None = None


# -- list / add / remove / OPML -----------------------------------------------------------------


# What must not reach a terminal raw: C0 and C1 controls (a newline forges a line, ESC starts a
# terminal sequence), bidi overrides and isolates (they reorder what is shown), line separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every character that could forge or reorder terminal output escaped."""
    return _UNPRINTABLE.sub(_escape_character, text)


def _escape_character(match: re.Match[str]) -> str:
    code = ord(match.group())
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(match.group())
    return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def render_list(feeds: Sequence[FeedConfig]) -> str:
    if not feeds:
        return "no feeds configured"
    lines = []
    for feed in feeds:
        extras = []
        if feed.interval:
            extras.append(f"every {feed.interval:g} s")
        if feed.topics:
            extras.append("topics: " + ", ".join(feed.topics))
        suffix = f"  ({'; '.join(extras)})" if extras else ""
        lines.append(f"{printable(feed.name)}\n    {printable(feed.url)}{suffix}")
    lines.append(f"{len(feeds)} feed(s)")
    return "\n".join(lines)


def probe_feed(url: str, settings: Settings, fetcher: Fetcher | None = None) -> Probe:
    """Fetch and parse once: does this URL serve a feed we can read?"""
    own = fetcher is None
    client = fetcher or Fetcher(settings)
    try:
        outcome = client.fetch(FetchRequest(url))
    finally:
        if own:
            client.close()
    if isinstance(outcome, FetchError):
        return Probe(False, outcome.reason)
    if isinstance(outcome, NotModified):  # cannot happen without validators; be explicit anyway
        return Probe(True, f"{url!r} answered 304 Not Modified")
    assert isinstance(outcome, FetchResult)
    parsed = parse_feed(url, outcome.body, content_type=outcome.content_type)
    if isinstance(parsed, ParseError):
        return Probe(False, parsed.reason)
    moved = outcome.permanent_redirect
    note = f"; it moved permanently to {moved!r}" if moved else ""
    title = parsed.title or url
    message = f"{title!r}: {len(parsed.entries)} entries{note}"
    return Probe(True, message, parsed.title, len(parsed.entries), moved)


def add_to_config(
    config_dir: Path,
    url: str,
    *,
    name: str = "",
    topics: Sequence[str] = (),
    interval: str | None = None,
    probe: Probe | None = None,
) -> str:
    """Append a feed to ``feeds.toml`` after validating the whole config. Returns a message."""
    if probe is not None and not probe.ok:
        raise ConfigError(f"not added: {probe.message}")
    if probe is not None and probe.moved_to:
        url = probe.moved_to  # store where the feed lives now
    name = name or (probe.title if probe else "")
    texts = _read_texts(config_dir)
    block = feed_block(url, name=name, topics=topics, interval=interval)
    new_text = add_feed(texts["feeds.toml"], block)
    _validate(config_dir, texts, new_text)
    write_text_atomic(config_dir / "feeds.toml", new_text)
    detail = f" ({probe.message})" if probe else ""
    return f"added {url}{detail} to {config_dir / 'feeds.toml'}"


def remove_from_config(config_dir: Path, url_or_name: str) -> str:
    texts = _read_texts(config_dir)
    new_text, url = remove_feed(texts["feeds.toml"], url_or_name)
    _validate(config_dir, texts, new_text)
    write_text_atomic(config_dir / "feeds.toml", new_text)
    return f"removed {url} from {config_dir / 'feeds.toml'}"


def import_opml_file(
    config_dir: Path, opml_path: Path, progress: Callable[[str], None] | None = None
) -> str:
    """Add the feeds of an OPML file in one pass: read, append, validate, write once.

    ``progress`` hears each step (the CLI prints them on stderr); the returned text lists what
    was added and everything skipped, with why.
    """
    say = progress or (lambda _: None)
    try:
        opml_text = Path(opml_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{opml_path}: cannot read: {e}") from e
    scan = scan_opml(opml_text)
    say(
        f"read {scan.outlines} outlines from {opml_path}: {len(scan.feeds)} feeds, "
        f"{len(scan.refused)} not http(s)"
    )
    texts = _read_texts(config_dir)
    new_text, added, present = import_opml(texts["feeds.toml"], scan.feeds)
    if added:
        say(f"checking the config with {len(added)} new feed(s)")
        _validate(config_dir, texts, new_text)
        write_text_atomic(config_dir / "feeds.toml", new_text)
        say(f"wrote {config_dir / 'feeds.toml'}")
    skipped = len(present) + len(scan.refused)
    lines = [
        f"imported {len(added)} feed(s) from {opml_path}, {len(present)} already present, "
        f"{skipped} skipped in all"
    ]
    lines += [f"  + {printable(f.name or f.url)}  {printable(f.url)}" for f in added]
    lines += [f"  = {printable(url)}: already in feeds.toml" for url in present]
    lines += [f"  - {printable(url)}: {why}" for url, why in scan.refused]
    return "\n".join(lines)


def _read_texts(config_dir: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for name in FILES:
        path = Path(config_dir) / name
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            texts[name] = NEW_FEEDS_FILE if name == "feeds.toml" else ""
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from e
    return texts


def _validate(config_dir: Path, texts: dict[str, str], new_feeds: str) -> Config:
    """The edited config must load, or the file stays as it was."""
    return parse_config({**texts, "feeds.toml": new_feeds}, directory=Path(config_dir))


# -- status ---------------------------------------------------------------------------------------


def feed_health(store: Store, now: datetime) -> list[FeedHealth]:
    """Each feed's health from its row, its recent entries and its fetch log."""
    since = now - timedelta(days=HEALTH_WINDOW_DAYS)
    health = []
    for row in store.history.activity(since):
        feed = row.state
        days = min(
            float(HEALTH_WINDOW_DAYS), max((now - row.added_at).total_seconds() / 86400, 1.0)
        )
        health.append(
            FeedHealth(
                url=feed.url,
                name=feed.name,
                state=feed.status,
                last_success=feed.last_success_at,
                last_error=feed.last_error,
                last_error_at=row.last_error_at,
                consecutive_errors=feed.consecutive_errors,
                next_fetch=feed.next_fetch_at,
                items_per_day=row.recent_items / days,
                avg_latency_ms=row.avg_elapsed_ms,
                moved_from=feed.moved_from,
            )
        )
    return health


def render_status(rows: Sequence[FeedHealth], now: datetime) -> str:
    """A table a person reads at a glance, then the errors in full below it."""
    if not rows:
        return "no feeds in the database yet (run a poll first)"
    header = ("STATE", "FEED", "LAST SUCCESS", "ERRORS", "NEXT FETCH", "ITEMS/DAY", "LATENCY")
    table = [header]
    for r in rows:
        table.append(
            (
                r.state,
                _shorten(printable(r.name or r.url), 32),
                _ago(r.last_success, now),
                str(r.consecutive_errors),
                "never (gone)" if r.state == "gone" else _until(r.next_fetch, now),
                f"{r.items_per_day:.1f}",
                f"{r.avg_latency_ms:.0f} ms" if r.avg_latency_ms is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    problems = [r for r in rows if r.last_error and (r.consecutive_errors or r.state != "active")]
    moved = [r for r in rows if r.moved_from]
    if problems:
        lines.append("")
        lines.append("last errors:")
        for r in problems:
            name, error = printable(r.name or r.url), printable(r.last_error or "")
            lines.append(f"  {name} ({_ago(r.last_error_at, now)}): {error}")
    if moved:
        lines.append("")
        lines.append("moved (permanent redirect followed; update feeds.toml):")
        lines += [f"  {printable(r.moved_from or '')} -> {printable(r.url)}" for r in moved]
    counts = {s: sum(1 for r in rows if r.state == s) for s in ("active", "failing", "gone")}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return f"{_span((now - moment).total_seconds())} ago"


def _until(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "now"
    seconds = (moment - now).total_seconds()
    return "due now" if seconds <= 0 else f"in {_span(seconds)}"
