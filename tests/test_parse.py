"""Golden feeds: bytes in, normalised Entry values (or a ParseError with a reason) out."""

from __future__ import annotations

import pickle
import re
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import pytest

from aggregator.config.load import load_config
from aggregator.ingest.dedupe import TRACKING_PARAMS, body_hash, canonical_url, content_hash
from aggregator.ingest.parse import declares_entities, parse_feed
from aggregator.models import Entry, ParsedFeed, ParseError
from aggregator.rules import matcher as match_module
from aggregator.rules.matcher import TopicMatcher, match_entries
from aggregator.text.normalise import fold_space

URL = "https://news.example.org/politics/rss"
REPO = Path(__file__).resolve().parents[1]

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0">
<channel>
  <title>Example &amp; Politics</title>
  <link>https://news.example.org/</link>
  <item>
    <title>Trump kills AI security order after tech pressure</title>
    <link>https://news.example.org/story/1?utm_source=rss&amp;utm_medium=feed#top</link>
    <guid isPermaLink="false">story-1</guid>
    <pubDate>Tue, 03 Mar 2026 09:30:00 -0500</pubDate>
    <description><![CDATA[<p>President Trump <b>scrapped</b> an
      executive order &mdash; see
      <a href="https://www.whitehouse.gov/presidential-actions/2026/03/x/">the text</a>
      and <a href='/local/page'>our explainer</a>.</p>]]></description>
  </item>
  <item>
    <title>&lt;!channel&gt; is not a ping</title>
    <link>/story/2</link>
    <description>Plain   text,
      on two lines</description>
  </item>
  <item>
    <title>No link, no guid</title>
    <pubDate>Wed, 04 Mar 2026 10:00:00 GMT</pubDate>
    <description>Just text</description>
  </item>
  <item>
    <title>A script link</title>
    <link>javascript:alert(1)</link>
    <guid isPermaLink="false">story-4</guid>
  </item>
  <item>
    <title>Duplicate of the first</title>
    <guid isPermaLink="false">story-1</guid>
  </item>
</channel>
</rss>
"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title type="html">Agency &lt;em&gt;Updates&lt;/em&gt;</title>
  <id>urn:feed</id>
  <updated>2026-03-05T12:00:00Z</updated>
  <entry>
    <id>urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a</id>
    <title type="html">New rule on &lt;b&gt;AI&lt;/b&gt; models</title>
    <link rel="alternate" href="/rules/ai.html"/>
    <link rel="enclosure" href="https://cdn.example.org/file.pdf"/>
    <updated>2026-03-05T12:00:00+02:00</updated>
    <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">
      <p>Published in the
      <a href="https://www.federalregister.gov/d/2026-01234">Federal Register</a>.</p>
    </div></content>
  </entry>
</feed>
"""


SUMMARY = "President Trump scrapped an executive order \u2014 see the text and our explainer."


def _feed(body: bytes, **kw: str) -> ParsedFeed:
    result = parse_feed(URL, body, **kw)
    assert isinstance(result, ParsedFeed), result
    return result


def _error(body: bytes) -> str:
    result = parse_feed(URL, body)
    assert isinstance(result, ParseError), result
    assert result.url == URL
    assert result.reason.startswith(f"parse failed: {URL!r}: ")
    return result.reason


def test_rss_golden() -> None:
    feed = _feed(RSS, source="Example")
    assert feed.title == "Example & Politics"
    assert feed.warning is None
    first, second, third, fourth = feed.entries
    assert first == Entry(
        feed_url=URL,
        guid="story-1",
        link="https://news.example.org/story/1?utm_source=rss&utm_medium=feed#top",
        canonical_url="https://news.example.org/story/1",
        title="Trump kills AI security order after tech pressure",
        summary=SUMMARY,
        published=datetime(2026, 3, 3, 14, 30, tzinfo=UTC),
        content_hash=content_hash("Trump kills AI security order after tech pressure", SUMMARY),
        source="Example",
        links=(
            "https://www.whitehouse.gov/presidential-actions/2026/03/x/",
            "https://news.example.org/local/page",
        ),
    )
    assert second.title == "<!channel> is not a ping"  # text stays text; Slack escaping is later
    assert second.link == "https://news.example.org/story/2"  # resolved against the feed URL
    assert second.guid == "https://news.example.org/story/2"  # no id: the canonical link
    assert second.summary == "Plain text, on two lines"
    assert second.published is None
    assert third.link == "" and third.canonical_url == ""
    assert third.guid.startswith("sha256:")
    assert third.published == datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
    assert fourth.link == ""  # only http(s) links survive
    assert fourth.guid == "story-4"


def test_hash_guid_is_stable() -> None:
    a = _feed(RSS).entries[2].guid
    b = _feed(RSS.replace(b"Just text", b"Edited text")).entries[2].guid
    assert a == b


def test_source_defaults_to_feed_title() -> None:
    assert _feed(RSS).entries[0].source == "Example & Politics"


def test_atom_golden() -> None:
    feed = _feed(ATOM, content_type="application/atom+xml")
    assert feed.title == "Agency Updates"
    (entry,) = feed.entries
    assert entry.guid == "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"
    assert entry.title == "New rule on AI models"
    assert entry.link == "https://news.example.org/rules/ai.html"
    assert entry.published == datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    assert entry.summary == "Published in the Federal Register."
    assert entry.links == ("https://www.federalregister.gov/d/2026-01234",)


def test_every_datetime_is_aware_utc() -> None:
    for body in (RSS, ATOM):
        for entry in _feed(body).entries:
            assert entry.published is None or entry.published.utcoffset() is not None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "the body is empty"),
        (b"  \n\t ", "the body is empty"),
        (b"<!DOCTYPE html><html><head><title>Hi</title></head><body>x</body></html>", "HTML page"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": []}', "JSON Feed"),
        (bytes(range(256)) * 8, "no feed found"),
        (b"/etc/passwd", "no feed found"),  # bytes are never taken as a file name
    ],
)
def test_bodies_that_are_not_feeds(body: bytes, expected: str) -> None:
    assert expected in _error(body)


def test_entity_declarations_are_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY big "' + b"A" * 1000 + b'">]>'
        b"<rss version='2.0'><channel><item><title>&big;&big;</title></item></channel></rss>"
    )
    assert "<!ENTITY" in _error(bomb)
    utf16 = bomb.decode().replace('<?xml version="1.0"?>', "").encode("utf-16")
    assert declares_entities(utf16)
    assert "<!ENTITY" in _error(utf16)


def test_valid_feed_without_entries_is_not_an_error() -> None:
    body = b"<rss version='2.0'><channel><title>Quiet</title></channel></rss>"
    feed = _feed(body)
    assert feed.entries == ()
    assert feed.title == "Quiet"
    assert feed.warning == "the feed has no entries"


def test_items_with_nothing_to_show_are_skipped_with_a_warning() -> None:
    body = b"<rss version='2.0'><channel><item><guid isPermaLink='false'>x</guid></item>"
    feed = _feed(body + b"<item><title>Kept</title></item></channel></rss>")
    assert [e.title for e in feed.entries] == ["Kept"]
    assert feed.warning == "skipped 1 item(s) with no title, link or text"


def test_broken_feed_without_entries_is_a_warning_not_an_error() -> None:
    feed = _feed(b"<rss version='2.0'><channel><title>&nbsp;</title><item><title>")
    assert feed.entries == ()
    assert feed.warning is not None and "skipped 1 item" in feed.warning


def test_bozo_feed_with_entries_keeps_them_with_a_warning() -> None:
    body = b"<rss version='2.0'><channel><item><title>AT&T & friends</title></item></channel></rss>"
    feed = _feed(body)
    assert [e.title[:4] for e in feed.entries] == ["AT&T"]
    assert feed.warning


def test_lone_surrogate_costs_one_character_not_the_feed() -> None:
    body = RSS.replace(b"Trump kills", b"Trump &#xD800; kills").replace(b"Just text", b"a&#55296;b")
    feed = _feed(body)
    assert feed.entries[0].title.startswith("Trump \ufffd kills")
    assert feed.entries[2].summary == "a\ufffdb"
    assert feed.warning is not None and "lone surrogate" in feed.warning


def test_text_is_bounded_and_free_of_control_characters() -> None:
    body = RSS.replace(b"Just text", b"x\x01y" + b"z" * 50_000)
    summary = _feed(body).entries[2].summary
    assert summary.startswith("x y")
    assert len(summary) == 20_000


def _ids(body: bytes, url: str = URL) -> list[str]:
    outcome = parse_feed(url, body)
    assert isinstance(outcome, ParsedFeed), outcome
    return [e.guid for e in outcome.entries]


def _rss_items(*items: str, channel_attrs: str = "") -> bytes:
    text = "".join(f"<item><title>t{i}</title>{item}</item>" for i, item in enumerate(items))
    return (
        '<?xml version="1.0"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">'
        f"<channel{channel_attrs}><title>c</title>{text}</channel></rss>"
    ).encode()


def test_relative_ids_resolve_against_the_feed_url_as_feedparser_always_did() -> None:
    # Stored guids are entry identity: parsing without the feed's URL must not change them.
    body = _rss_items(
        "<guid>123</guid>",  # a permalink by default: feedparser resolves it
        '<guid isPermaLink="false">456</guid>',  # not a link: left as it is
        "<atom:id>t3_abc</atom:id>",  # an Atom id is resolved too
        "<guid>tag:news.example.org,2026:7</guid>",
    )
    base = "https://news.example.org/politics/"
    assert _ids(body) == [base + "123", "456", base + "t3_abc", "tag:news.example.org,2026:7"]
    assert _ids(_rss_items('<guid isPermaLink="false">456</guid>')) == ["456"]


def test_xml_base_still_decides_links_and_ids() -> None:
    body = _rss_items(
        "<link>story/1</link><guid>a/1</guid>", channel_attrs=' xml:base="https://other.example/x/"'
    )
    outcome = parse_feed(URL, body)
    assert isinstance(outcome, ParsedFeed)
    entry = outcome.entries[0]
    assert (entry.link, entry.guid) == (
        "https://other.example/x/story/1",
        "https://other.example/x/a/1",
    )


def test_text_fast_paths_match_the_regular_expressions() -> None:
    for text in [
        "a b",
        " a  b ",
        "a\xa0b",
        "a\u2028\tb\n",
        "",
        "x\x1cy",
        "printable \u201cquoted\u201d",
    ]:
        assert fold_space(text) == re.sub(r"\s+", " ", text).strip()
    for url in [
        "https://News.Example.org./a/b;c?utm_source=x&b=2&a=1#frag",
        "https://news.example.org/a%20b/(c)",
        "http://news.example.org",
        "http://news.example.org:80/x#y",
        "HTTP://news.example.org/x",
        "https://news.example.org/caf\u00e9",
    ]:
        assert canonical_url(url) == _canonical_slow(url)


def _canonical_slow(url: str) -> str:
    """canonical_url without its fast path for plain links."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.port not in (None, {"http": 80, "https": 443}[parts.scheme.lower()]):
        host = f"{host}:{parts.port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in TRACKING_PARAMS
    ]
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~%") or "/"
    return urlunsplit((parts.scheme.lower(), host, path, urlencode(sorted(query)), ""))


def test_results_pickle_for_a_process_pool() -> None:
    feed = _feed(RSS)
    assert pickle.loads(pickle.dumps(feed)) == feed  # noqa: S301 - our own bytes
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(parse_feed, [URL, URL], [RSS, b""]))
    assert results[0] == feed
    assert isinstance(results[1], ParseError)


def test_body_hash() -> None:
    assert body_hash(RSS) == body_hash(bytes(RSS))
    assert body_hash(RSS) != body_hash(RSS + b" ")
    assert len(body_hash(b"")) == 64


MATCHING_RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Policy</title>
<item><guid>a</guid><title>Senate passes the AI Act after a long debate</title>
<link>https://news.example.org/a</link>
<description>Artificial intelligence rules.</description></item>
<item><guid>b</guid><title>President signs executive order on ports</title>
<link>https://news.example.org/b</link></item>
<item><guid>c</guid><title>Local bakery wins the county fair</title>
<link>https://news.example.org/c</link></item>
</channel></rss>"""


def _shipped_matcher() -> TopicMatcher:
    return TopicMatcher.compile(load_config(REPO / "config", {}).topics)


def test_a_worker_compiles_each_rule_set_once_and_follows_a_change() -> None:
    matcher = _shipped_matcher()
    entries = _feed(MATCHING_RSS).entries
    first = match_entries(matcher.rules, entries)
    compiled = match_module._compiled[matcher.rules]
    assert match_entries(matcher.rules, entries) == first
    assert match_module._compiled[matcher.rules] is compiled  # not compiled again
    renamed = tuple(("renamed-" + name, query, exclude) for name, query, exclude in matcher.rules)
    renamed_matches = match_entries(renamed, entries)
    assert list(match_module._compiled) == [renamed]  # the old rules' matcher is let go
    assert [[m.topic for m in ms] for ms in renamed_matches] == [
        ["renamed-ai-policy"],
        ["renamed-executive-orders"],
        [],
    ]
