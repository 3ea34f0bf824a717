"""`aggregator feeds ...` logic: validated edits of a real config dir, the health table from a real
SQLite file, and the validating fetch against a local server."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.admin.feeds import (
    FeedHealth,
    add_to_config,
    feed_health,
    import_opml_file,
    probe_feed,
    remove_from_config,
    render_list,
    render_status,
)
from aggregator.config.load import load_config
from aggregator.config.model import FeedConfig, Settings
from aggregator.cycle.plan import FeedUpdate, FetchRecord
from aggregator.errors import ConfigError
from aggregator.models import Entry, FeedResult, FeedStatus
from aggregator.store import Store
from tests.feedserver import FeedServer
from tests.storing import Item, store_items

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOPICS = '[topics.ai-policy]\nchannel = "#ai-policy"\nquery = "AI"\n'
FEEDS = '# my feeds\n\n[[feeds]]\nurl = "https://a.example/feed"  # keep me\nname = "A"\n'
FEED = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Local News</title>
<item><title>One</title><link>https://local.example/1</link></item></channel></rss>"""
SETTINGS = Settings(fetch_timeout=2.0, fetch_deadline=4.0, allow_private=True)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "topics.toml").write_text(TOPICS)
    (tmp_path / "feeds.toml").write_text(FEEDS)
    return tmp_path


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as s:
        yield s


def test_add_validates_by_fetching_and_keeps_the_file(config_dir: Path, server: FeedServer) -> None:
    url = server.serve("/feed", FEED)
    probe = probe_feed(url, SETTINGS)
    assert probe.ok and probe.title == "Local News" and probe.entries == 1
    message = add_to_config(config_dir, url, topics=["ai-policy"], probe=probe)
    assert "added" in message and "1 entries" in message
    text = (config_dir / "feeds.toml").read_text()
    assert text.startswith(FEEDS)
    feeds = load_config(config_dir).feeds
    assert feeds[-1] == FeedConfig(url=url, name="Local News", topics=("ai-policy",))


def test_add_refuses_a_url_that_is_not_a_feed(config_dir: Path, server: FeedServer) -> None:
    probe = probe_feed(server.status("/gone", 404), SETTINGS)
    assert not probe.ok and "HTTP 404" in probe.message
    with pytest.raises(ConfigError, match="not added: fetch failed"):
        add_to_config(config_dir, server.url("/gone"), probe=probe)
    html = probe_feed(server.serve("/page", b"<html><body>hi</body></html>"), SETTINGS)
    assert not html.ok and "HTML page" in html.message
    assert (config_dir / "feeds.toml").read_text() == FEEDS


def test_add_follows_a_permanent_redirect(config_dir: Path, server: FeedServer) -> None:
    server.redirect("/old", "/new", 301)
    server.serve("/new", FEED)
    probe = probe_feed(server.url("/old"), SETTINGS)
    assert probe.moved_to == server.url("/new")
    add_to_config(config_dir, server.url("/old"), probe=probe)
    assert load_config(config_dir).feeds[-1].url == server.url("/new")


def test_add_with_an_unknown_topic_leaves_the_file_alone(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown topic 'nope'"):
        add_to_config(config_dir, "https://b.example/feed", topics=["nope"])
    assert (config_dir / "feeds.toml").read_text() == FEEDS


def test_add_creates_a_missing_feeds_file(tmp_path: Path) -> None:
    (tmp_path / "topics.toml").write_text(TOPICS)
    add_to_config(tmp_path, "https://b.example/feed", name="B", interval="10m")
    feeds = load_config(tmp_path).feeds
    assert [(f.url, f.name, f.interval) for f in feeds] == [("https://b.example/feed", "B", 600.0)]
    assert (tmp_path / "feeds.toml").read_text().startswith("# The feeds the bot polls")


def test_remove(config_dir: Path) -> None:
    add_to_config(config_dir, "https://b.example/feed", name="B")
    assert "removed https://a.example/feed" in remove_from_config(config_dir, "A")
    text = (config_dir / "feeds.toml").read_text()
    assert text.startswith("# my feeds")
    assert [f["url"] for f in tomllib.loads(text)["feeds"]] == ["https://b.example/feed"]
    with pytest.raises(ConfigError, match="no feed with url or name"):
        remove_from_config(config_dir, "A")


def test_import_opml(config_dir: Path) -> None:
    opml = config_dir / "subs.opml"
    opml.write_text(
        '<opml version="2.0"><body>'
        '<outline text="A" xmlUrl="https://a.example/feed"/>'
        '<outline text="C" xmlUrl="https://c.example/rss"/>'
        "</body></opml>"
    )
    message = import_opml_file(config_dir, opml)
    assert message.startswith("imported 1 feed(s)") and "1 already present" in message
    assert [f.url for f in load_config(config_dir).feeds] == [
        "https://a.example/feed",
        "https://c.example/rss",
    ]


def test_import_opml_lists_what_it_skipped_and_why(config_dir: Path) -> None:
    opml = config_dir / "subs.opml"
    opml.write_text(
        '<opml version="2.0"><body>'
        '<outline text="A" xmlUrl="https://a.example/feed"/>'
        '<outline text="Evil" xmlUrl="javascript:alert(document.cookie)"/>'
        '<outline text="Local" xmlUrl="file:///etc/passwd"/>'
        '<outline text="C" xmlUrl="https://c.example/rss"/>'
        "</body></opml>"
    )
    message = import_opml_file(config_dir, opml)
    assert "imported 1 feed(s)" in message
    assert "  = https://a.example/feed: already in feeds.toml" in message
    assert "  - javascript:alert(document.cookie): not an http(s) URL" in message
    assert "  - file:///etc/passwd: not an http(s) URL" in message
    assert [f.url for f in load_config(config_dir).feeds] == [
        "https://a.example/feed",
        "https://c.example/rss",
    ]


def test_import_opml_reads_and_writes_feeds_toml_once_and_reports_progress(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each outline used to re-parse the whole growing feeds.toml: quadratic (36 s for 1,000)."""
    opml = config_dir / "subs.opml"
    outlines = "".join(
        f'<outline text="F{n}" xmlUrl="https://f{n}.example/feed"/>' for n in range(400)
    )
    opml.write_text(f'<opml version="2.0"><body>{outlines}</body></opml>')
    parsed: list[int] = []
    real_loads = tomllib.loads

    def counting_loads(text: str, **kwargs: Any) -> dict[str, Any]:
        parsed.append(len(text))
        return real_loads(text, **kwargs)

    monkeypatch.setattr(tomllib, "loads", counting_loads)
    steps: list[str] = []
    message = import_opml_file(config_dir, opml, progress=steps.append)
    assert message.startswith("imported 400 feed(s)")
    # The old feeds.toml once, the new one once, and the whole config once (three files).
    assert len(parsed) <= 6, len(parsed)
    assert steps[0].startswith("read 400 outlines")
    assert any("checking" in step for step in steps)
    monkeypatch.undo()
    assert len(load_config(config_dir).feeds) == 401


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/", "http://0xA9FEA9FE/feed"])
def test_add_refuses_a_metadata_address_through_the_same_guard(config_dir: Path, url: str) -> None:
    probe = probe_feed(url, Settings(fetch_timeout=0.5, fetch_deadline=1.0, allow_private=True))
    assert not probe.ok and "cloud metadata address" in probe.message
    with pytest.raises(ConfigError, match=r"not added: .*cloud metadata address"):
        add_to_config(config_dir, url, probe=probe)
    refused = _cli(config_dir, "feeds", "add", "http://[fd00:ec2::254]/feed")
    assert refused.returncode == 2, refused.stderr
    assert "fd00:ec2::254 is a cloud metadata address" in refused.stderr
    assert "fd00:ec2::254" not in (config_dir / "feeds.toml").read_text()


def test_render_list() -> None:
    text = render_list([FeedConfig("https://a.example/feed", "A", 600.0, ("ai-policy",))])
    assert "A\n    https://a.example/feed  (every 600 s; topics: ai-policy)" in text
    assert render_list([]) == "no feeds configured"


def test_list_and_status_show_control_characters_escaped() -> None:
    """A name with a newline (or an ANSI escape, or a bidi override) must not forge lines."""
    evil = "Evil\nfeed(s): 0\x1b[2J\u202eoops"
    feed = FeedConfig("https://e.example/feed?x=\u202e", evil, None, ())
    text = render_list([feed])
    lines = text.splitlines()
    assert lines[0] == "Evil\\nfeed(s): 0\\x1b[2J\\u202eoops"
    assert lines[1] == "    https://e.example/feed?x=\\u202e"
    assert lines[2] == "1 feed(s)" and len(lines) == 3
    health = FeedHealth(
        url=feed.url, name=evil, state="failing", last_success=None, last_error="boom\nline",
        last_error_at=None, consecutive_errors=2, next_fetch=None, items_per_day=0.0,
        avg_latency_ms=None,
    )  # fmt: skip
    status = render_status([health], NOW)
    assert "\x1b" not in status and "\u202e" not in status
    assert "boom\\nline" in status and "Evil\\nfeed" in status


def test_status_table_from_a_real_database(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db.sqlite")
    feeds = [
        FeedConfig("https://ok.example/feed", "Healthy"),
        FeedConfig("https://bad.example/feed", "Broken"),
        FeedConfig("https://gone.example/feed", "Gone"),
    ]
    store.feeds.sync(feeds, NOW - timedelta(days=10))
    ok = FeedUpdate(FeedStatus.ACTIVE, NOW + timedelta(minutes=2), 0, None,
                    last_fetch_at=NOW - timedelta(minutes=3))  # fmt: skip
    store.feeds.record("https://ok.example/feed", ok)
    error = "fetch failed: 'https://bad.example/feed': ReadTimeout after 10.0 s"
    bad = FeedUpdate(FeedStatus.FAILING, NOW + timedelta(hours=1), 4, NOW - timedelta(hours=2),
                     last_fetch_at=NOW - timedelta(minutes=1), error=error)  # fmt: skip
    store.feeds.record("https://bad.example/feed", bad)
    gone = FeedUpdate(FeedStatus.GONE, None, 1, NOW, last_fetch_at=NOW, error="HTTP 410 Gone")
    store.feeds.record("https://gone.example/feed", gone)
    store.feeds.rename("https://ok.example/feed", "https://ok.example/new-feed")
    for seconds in (0.1, 0.3):
        record = FetchRecord(FeedResult.FETCHED, elapsed=seconds)
        store.history.log_fetch("https://ok.example/new-feed", NOW, record)
    entries = [
        Item(
            Entry(
                feed_url="https://ok.example/new-feed",
                guid=f"g{i}",
                link="",
                canonical_url="",
                title=f"t{i}",
                summary="",
                published=NOW - timedelta(days=i, hours=1),
                content_hash=str(i),
            )
        )
        for i in range(10)  # 7 inside the 7-day window (days 0-6)
    ]
    store_items(store, entries, NOW)
    rows = {r.name: r for r in feed_health(store, NOW)}
    store.close()
    assert rows["Healthy"].items_per_day == pytest.approx(1.0)
    assert rows["Healthy"].avg_latency_ms == pytest.approx(200.0)
    assert rows["Broken"].consecutive_errors == 4
    text = render_status(list(rows.values()), NOW)
    lines = text.splitlines()
    assert lines[0].split() == [
        "STATE",
        "FEED",
        "LAST",
        "SUCCESS",
        "ERRORS",
        "NEXT",
        "FETCH",
        "ITEMS/DAY",
        "LATENCY",
    ]
    assert any(
        line.startswith("active") and "3 min ago" in line and "200 ms" in line for line in lines
    )
    assert any(line.startswith("failing") and "in 60 min" in line for line in lines)
    assert any(line.startswith("gone") and "never (gone)" in line for line in lines)
    assert "Broken (60 s ago): fetch failed: 'https://bad.example/feed': ReadTimeout" in text
    assert "  https://ok.example/feed -> https://ok.example/new-feed" in lines
    assert lines[-1] == "1 active, 1 failing, 1 gone"


# -- the commands, in a real subprocess ----------------------------------------------------------


def _cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "AGGREGATOR_"))}
    return subprocess.run(
        [sys.executable, "-c", "from aggregator.cli import main; main()",
         "--config", str(config_dir), "--db", str(config_dir / "db.sqlite"), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_feeds_commands_end_to_end(config_dir: Path, server: FeedServer) -> None:
    (config_dir / "aggregator.toml").write_text("[fetch]\nallow_private = true\n")
    url = server.serve("/feed", FEED, etag='"x"')
    added = _cli(config_dir, "feeds", "add", url, "--topics", "ai-policy")
    assert added.returncode == 0, added.stderr
    assert "added" in added.stdout and "'Local News': 1 entries" in added.stdout
    assert (config_dir / "feeds.toml").read_text().startswith(FEEDS)

    refused = _cli(config_dir, "feeds", "add", server.status("/missing", 404))
    assert refused.returncode == 2 and "HTTP 404" in refused.stderr

    listed = _cli(config_dir, "feeds", "list")
    assert "Local News" in listed.stdout and "2 feed(s)" in listed.stdout

    exported = _cli(config_dir, "feeds", "export-opml")
    assert exported.returncode == 0 and f'xmlUrl="{url}"' in exported.stdout

    removed = _cli(config_dir, "feeds", "remove", "A")
    assert removed.returncode == 0, removed.stderr
    (config_dir / "subs.opml").write_text(exported.stdout)
    imported = _cli(config_dir, "feeds", "import-opml", str(config_dir / "subs.opml"))
    assert imported.returncode == 0 and "imported 1 feed(s)" in imported.stdout
    assert "read 2 outlines" in imported.stderr  # progress goes to stderr, the result to stdout
    assert "read 2 outlines" not in imported.stdout

    polled = _cli(config_dir, "poll", "--once")
    assert polled.returncode == 0, polled.stderr
    status = _cli(config_dir, "feeds", "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("STATE")
    assert any(line.startswith("active") and "Local News" in line for line in lines)
    assert any(line.split()[:3] == ["active", "A", "never"] for line in lines)  # unreachable
    assert "s ago): fetch failed: 'https://a.example/feed': ConnectError" in status.stdout
