"""feeds.toml edits keep comments and layout; OPML in and out."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from aggregator.config.feeds_file import (
    OpmlFeed,
    add_feed,
    export_opml,
    feed_block,
    import_opml,
    read_opml,
    remove_feed,
    scan_opml,
    write_text_atomic,
)
from aggregator.config.model import FeedConfig
from aggregator.errors import ConfigError

FEEDS = """\
# Feeds the bot polls. Keep this list short and official where possible.
# Intervals are optional.

# --- Government primary sources ---

# White House presidential actions
[[feeds]]
url = "https://www.whitehouse.gov/presidential-actions/feed/"
name = "White House"   # the source name in alerts
topics = ["executive-orders"]
interval = "5m"

[[feeds]]
url = 'https://www.federalregister.gov/api/v1/documents.rss?conditions[type][]=PRESDOCU'
name = "Federal Register"

# --- Outlets ---

[[feeds]]
url = "https://feeds.npr.org/1014/rss.xml"
name = "NPR Politics"
"""


def _urls(text: str) -> list[str]:
    return [f["url"] for f in tomllib.loads(text)["feeds"]]


def test_add_appends_one_block_and_keeps_everything_else() -> None:
    block = feed_block(
        "https://example.org/feed?a=1&b=2",
        name='Quote " and \\ backslash',
        topics=["ai-policy"],
        interval="10m",
    )
    result = add_feed(FEEDS, block)
    assert result.startswith(FEEDS)
    assert result == FEEDS + "\n" + block
    feeds = tomllib.loads(result)["feeds"]
    assert feeds[-1] == {
        "url": "https://example.org/feed?a=1&b=2",
        "name": 'Quote " and \\ backslash',
        "interval": "10m",
        "topics": ["ai-policy"],
    }


def test_add_to_empty_file_and_file_without_final_newline() -> None:
    block = feed_block("https://a.example/feed")
    assert add_feed("", block) == block
    assert add_feed("# just a comment", block) == "# just a comment\n\n" + block


def test_add_refuses_a_duplicate() -> None:
    with pytest.raises(ConfigError, match="already has a feed"):
        add_feed(FEEDS, feed_block("https://feeds.npr.org/1014/rss.xml"))


def test_remove_by_url_cuts_the_block_and_its_comment_only() -> None:
    result, url = remove_feed(FEEDS, "https://www.whitehouse.gov/presidential-actions/feed/")
    assert url == "https://www.whitehouse.gov/presidential-actions/feed/"
    assert "White House" not in result
    assert "# --- Government primary sources ---" in result
    assert "# --- Outlets ---" in result
    assert result.startswith("# Feeds the bot polls.")
    assert "\n\n\n" not in result
    assert _urls(result) == [
        "https://www.federalregister.gov/api/v1/documents.rss?conditions[type][]=PRESDOCU",
        "https://feeds.npr.org/1014/rss.xml",
    ]


def test_remove_by_name_keeps_the_next_sections_comment() -> None:
    result, url = remove_feed(FEEDS, "Federal Register")
    assert url.startswith("https://www.federalregister.gov/")
    assert "# --- Outlets ---" in result
    assert "# White House presidential actions" in result
    assert len(_urls(result)) == 2


def test_remove_last_feed() -> None:
    result, _ = remove_feed(FEEDS, "NPR Politics")
    assert result.rstrip().endswith("# --- Outlets ---")
    assert len(_urls(result)) == 2


def test_add_then_remove_round_trips() -> None:
    block = feed_block("https://example.org/rss", name="Example")
    result, _ = remove_feed(add_feed(FEEDS, block), "https://example.org/rss")
    assert result == FEEDS


def test_remove_unknown_feed() -> None:
    with pytest.raises(ConfigError, match="no feed with url or name"):
        remove_feed(FEEDS, "https://nope.example/")


def test_write_text_atomic_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "feeds.toml"
    path.write_text("old\n")
    path.chmod(0o600)
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["feeds.toml"]


OPML = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="1.0">
  <head><title>My subscriptions</title></head>
  <body>
    <outline text="Politics" title="Politics">
      <outline type="rss" text="NPR Politics" xmlUrl="https://feeds.npr.org/1014/rss.xml"/>
      <outline type="rss" text="The Hill &amp; Co" xmlUrl="https://thehill.com/feed/"/>
    </outline>
    <outline type="rss" title="Ars" text="ignored" xmlUrl="https://feeds.arstechnica.com/arstechnica/index"/>
    <outline type="rss" text="Not http" xmlUrl="file:///etc/passwd"/>
    <outline type="rss" text="Dup" xmlUrl="https://thehill.com/feed/"/>
  </body>
</opml>
"""


def test_read_opml() -> None:
    assert read_opml(OPML) == [
        OpmlFeed("https://feeds.npr.org/1014/rss.xml", "NPR Politics", "Politics"),
        OpmlFeed("https://thehill.com/feed/", "The Hill & Co", "Politics"),
        OpmlFeed("https://feeds.arstechnica.com/arstechnica/index", "Ars", ""),
    ]


def test_scan_opml_names_what_cannot_be_a_feed_and_survives_deep_folders() -> None:
    scan = scan_opml(OPML)
    assert scan.outlines == 5
    assert scan.refused == (("file:///etc/passwd", "not an http(s) URL"),)
    deep = (
        '<opml version="2.0"><body>'
        + '<outline text="f">' * 3000
        + '<outline text="Deep\n  feed" xmlUrl="https://deep.example/feed"/>'
        + "</outline>" * 3000
        + '<outline text="x" xmlUrl="javascript:alert(1)"/></body></opml>'
    )
    scan = scan_opml(deep)
    assert scan.feeds == (OpmlFeed("https://deep.example/feed", "Deep feed", "f"),)
    assert scan.refused == (("javascript:alert(1)", "not an http(s) URL"),)


@pytest.mark.parametrize(
    "text",
    [
        "not xml",
        "<rss/>",
        '<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "b">]><opml><body/></opml>',
    ],
)
def test_read_opml_refuses_bad_files(text: str) -> None:
    with pytest.raises(ConfigError):
        read_opml(text)


def test_import_opml_appends_only_new_feeds() -> None:
    result, added, skipped = import_opml(FEEDS, read_opml(OPML))
    assert result.startswith(FEEDS)
    assert [f.url for f in added] == [
        "https://thehill.com/feed/",
        "https://feeds.arstechnica.com/arstechnica/index",
    ]
    assert skipped == ["https://feeds.npr.org/1014/rss.xml"]
    assert "# Imported from OPML (Politics)" in result
    assert len(_urls(result)) == 5


def test_export_opml_round_trips() -> None:
    feeds = [
        FeedConfig(url="https://a.example/feed?x=1&y=2", name='A "quoted" <name>'),
        FeedConfig(url="https://b.example/rss", name="B", topics=("ai-policy", "executive-orders")),
    ]
    text = export_opml(feeds)
    assert 'category="ai-policy,executive-orders"' in text
    assert [(f.url, f.name) for f in read_opml(text)] == [(f.url, f.name) for f in feeds]
