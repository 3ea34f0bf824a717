"""The HTTP edge against a real server on 127.0.0.1: validators, gzip, redirects, errors."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregator.config.model import Settings
from aggregator.ingest.fetch import Fetcher, parse_max_age, parse_retry_after
from aggregator.models import FetchError, FetchRequest, FetchResult, NotModified
from tests.feedserver import FeedServer, Reply

FEED = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>T</title><link>https://example.org/</link>
<item><title>One</title><link>https://example.org/1</link><guid>g1</guid></item>
</channel></rss>
"""
LAST_MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as s:
        yield s


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    settings = Settings(
        fetch_timeout=0.5, fetch_deadline=2.0, max_redirects=3, concurrency=4, allow_private=True
    )
    with Fetcher(settings) as f:
        yield f


def test_etag_then_304_sends_no_body(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.serve("/feed", FEED, etag='"v1"')
    first = fetcher.fetch(FetchRequest(url))
    assert isinstance(first, FetchResult)
    assert first.body == FEED
    assert first.etag == '"v1"'
    sent_before = server.bytes_sent("/feed")
    second = fetcher.fetch(FetchRequest(url, etag=first.etag))
    assert isinstance(second, NotModified)
    assert server.bytes_sent("/feed") == sent_before
    assert server.statuses("/feed") == {200: 1, 304: 1}
    assert server.hits[-1].headers["if-none-match"] == '"v1"'


def test_last_modified_then_304(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.serve("/feed", FEED, last_modified=LAST_MODIFIED)
    first = fetcher.fetch(FetchRequest(url))
    assert isinstance(first, FetchResult)
    assert first.last_modified == LAST_MODIFIED
    second = fetcher.fetch(FetchRequest(url, last_modified=first.last_modified))
    assert isinstance(second, NotModified)
    assert server.hits[-1].headers["if-modified-since"] == LAST_MODIFIED


def test_changed_feed_is_fetched_again(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.route("/feed", Reply(body=FEED, etag='"v1"'), Reply(body=FEED + b" ", etag='"v2"'))
    fetcher.fetch(FetchRequest(url))
    second = fetcher.fetch(FetchRequest(url, etag='"v1"'))
    assert isinstance(second, FetchResult)
    assert second.etag == '"v2"'


def test_user_agent_and_accept_headers(server: FeedServer, fetcher: Fetcher) -> None:
    fetcher.fetch(FetchRequest(server.serve("/feed", FEED)))
    headers = server.hits[-1].headers
    assert headers["user-agent"] == Settings().user_agent
    assert "application/rss+xml" in headers["accept"]
    assert headers["accept-encoding"] == "gzip, deflate"


def test_gzip_is_decoded_and_saves_bytes(server: FeedServer, fetcher: Fetcher) -> None:
    big = FEED.replace(b"</channel>", b"<description>" + b"a" * 20000 + b"</description></channel>")
    url = server.serve("/feed", big, gzip=True)
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchResult)
    assert result.body == big
    assert server.bytes_sent("/feed") == len(gzip.compress(big))
    assert server.bytes_sent("/feed") < len(big) / 10


def test_permanent_redirect_chain_is_reported(server: FeedServer, fetcher: Fetcher) -> None:
    server.redirect("/old", "/middle", 301)
    server.redirect("/middle", server.url("/new"), 308)
    server.serve("/new", FEED)
    result = fetcher.fetch(FetchRequest(server.url("/old")))
    assert isinstance(result, FetchResult)
    assert result.url == server.url("/old")
    assert result.final_url == server.url("/new")
    assert result.permanent_redirect == server.url("/new")


def test_temporary_hop_means_no_permanent_redirect(server: FeedServer, fetcher: Fetcher) -> None:
    server.redirect("/old", "/middle", 301)
    server.redirect("/middle", "/new", 302)
    server.serve("/new", FEED)
    result = fetcher.fetch(FetchRequest(server.url("/old")))
    assert isinstance(result, FetchResult)
    assert result.final_url == server.url("/new")
    assert result.permanent_redirect is None


def test_permanent_redirect_then_304(server: FeedServer, fetcher: Fetcher) -> None:
    server.redirect("/old", "/new", 301)
    server.serve("/new", FEED, etag='"e"')
    result = fetcher.fetch(FetchRequest(server.url("/old"), etag='"e"'))
    assert isinstance(result, NotModified)
    assert result.permanent_redirect == server.url("/new")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("loop", "redirect loop"),
        ("many", "more than 3 redirects"),
        ("file", "'file:///etc/passwd' refused"),
        ("ftp", "'ftp://127.0.0.1/feed' refused"),
        ("nolocation", "without a Location header"),
    ],
)
def test_bad_redirects_are_refused(
    server: FeedServer, fetcher: Fetcher, setup: str, expected: str
) -> None:
    if setup == "loop":
        server.redirect("/start", "/a", 302)
        server.redirect("/a", "/b", 301)
        server.redirect("/b", "/a", 301)
    elif setup == "many":
        for i in range(6):
            server.redirect("/start" if i == 0 else f"/r{i}", f"/r{i + 1}", 302)
    elif setup == "file":
        server.redirect("/start", "file:///etc/passwd", 301)
    elif setup == "ftp":
        server.redirect("/start", "ftp://127.0.0.1/feed", 302)
    else:
        server.route("/start", Reply(status=301))
    result = fetcher.fetch(FetchRequest(server.url("/start")))
    assert isinstance(result, FetchError)
    assert result.kind == "redirect"
    assert expected in result.reason
    assert result.reason.startswith(f"fetch failed: {server.url('/start')!r}: ")
    assert server.count() <= 5


def test_410_is_gone(server: FeedServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(FetchRequest(server.status("/feed", 410)))
    assert isinstance(result, FetchError)
    assert (result.kind, result.status) == ("gone", 410)
    assert "HTTP 410 Gone" in result.reason


def test_429_with_retry_after_seconds(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.status("/feed", 429, {"Retry-After": "120"})
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchError)
    assert (result.kind, result.status, result.retry_after) == ("rate_limited", 429, 120.0)
    assert "Retry-After 120 s" in result.reason


def test_503_with_retry_after_date(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.status("/feed", 503, {"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"})
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchError)
    assert result.kind == "rate_limited"
    assert result.retry_after is not None and result.retry_after > 3600


def test_500_is_an_http_error(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.status("/feed", 500)
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchError)
    assert (result.kind, result.status) == ("http", 500)
    assert result.reason == f"fetch failed: {url!r}: HTTP 500 Internal Server Error"


def test_read_timeout_is_readable(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.drip("/feed", FEED, interval=30.0)  # headers, then silence
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchError)
    assert result.kind == "timeout"
    assert "ReadTimeout" in result.reason


def test_connection_refused(fetcher: Fetcher) -> None:
    with FeedServer() as s:
        url = s.url("/feed")
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchError)
    assert result.kind == "connection"
    assert "ConnectError" in result.reason


def test_not_http_url(fetcher: Fetcher) -> None:
    result = fetcher.fetch(FetchRequest("file:///etc/passwd"))
    assert isinstance(result, FetchError)
    assert "not an http(s) URL" in result.reason


def test_cache_control_max_age(server: FeedServer, fetcher: Fetcher) -> None:
    url = server.serve("/feed", FEED, headers={"Cache-Control": "public, max-age=900"})
    result = fetcher.fetch(FetchRequest(url))
    assert isinstance(result, FetchResult)
    assert result.max_age == 900


def test_fetch_many_keeps_order_and_isolates_failures(server: FeedServer, fetcher: Fetcher) -> None:
    urls = []
    for i in range(12):
        if i % 4 == 3:
            urls.append(server.status(f"/f{i}", 500))
        else:
            urls.append(server.serve(f"/f{i}", FEED.replace(b"One", f"Item {i}".encode())))
    results = fetcher.fetch_many([FetchRequest(u) for u in urls])
    assert [r.url for r in results] == urls
    for i, r in enumerate(results):
        if i % 4 == 3:
            assert isinstance(r, FetchError)
        else:
            assert isinstance(r, FetchResult)
            assert f"Item {i}".encode() in r.body
    assert fetcher.fetch_many([]) == []


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now) == 120.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_parse_max_age() -> None:
    assert parse_max_age("max-age=60") == 60
    assert parse_max_age('public, s-maxage=5, max-age="300"') == 300
    assert parse_max_age("no-cache") is None
    assert parse_max_age(None) is None


# -- internal addresses (SSRF) --------------------------------------------------------------------

METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://0xA9FEA9FE/latest/",
    "http://0xa9.0xfe.0xa9.0xfe/latest/",
    "http://2852039166/latest/",
    "http://0251.0376.0251.0376/latest/",
    "http://169.254.43518/latest/",
    "http://169.254.169.254./latest/",
    "http://[fd00:ec2::254]/latest/",
    "http://[::ffff:169.254.169.254]/latest/",
    "http://[::ffff:a9fe:a9fe]/latest/",
    "http://[64:ff9b::a9fe:a9fe]/latest/",
    "http://[fe80::1]/",
    "http://169.254.1.1/",
    "http://100.100.100.200/latest/meta-data/",
]


def guarded(**settings: Any) -> Fetcher:
    return Fetcher(Settings(fetch_timeout=0.5, fetch_deadline=2.0, **settings))


@pytest.mark.parametrize("url", METADATA_URLS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_link_local_and_metadata_addresses_are_refused_in_any_spelling(
    url: str, allow_private: bool
) -> None:
    with guarded(allow_private=allow_private) as fetcher:
        outcome = fetcher.fetch(FetchRequest(url))
    assert isinstance(outcome, FetchError)
    assert outcome.kind == "blocked", outcome.reason
    assert outcome.reason.startswith(f"fetch failed: {url!r}: ")
    assert "link-local" in outcome.reason or "metadata" in outcome.reason
    assert "allow_networks" in outcome.reason  # the error says how to allow it on purpose


# httpx itself refuses a Location of 0251.0376.0251.0376 (a protocol error), before our check.
REDIRECT_TARGETS = [u for u in METADATA_URLS if "0251" not in u]


@pytest.mark.parametrize("target", [*REDIRECT_TARGETS, "http://10.0.0.5/feed", "http://[::1]/feed"])
def test_a_redirect_to_an_internal_address_is_refused(server: FeedServer, target: str) -> None:
    url = server.redirect("/feed", target, 302)
    with guarded(allow_networks=("127.0.0.1/32",)) as fetcher:  # the feed server only
        outcome = fetcher.fetch(FetchRequest(url))
    assert isinstance(outcome, FetchError) and outcome.kind == "blocked", outcome
    assert outcome.reason.startswith(f"fetch failed: {url!r}: redirect to ")
    assert f"redirect to {target.lower()!r} refused: " in outcome.reason.lower()
    assert server.statuses("/feed") == {302: 1}


def test_loopback_and_private_ranges_are_refused_by_default_and_allowed_by_the_option(
    server: FeedServer,
) -> None:
    url = server.serve("/feed", FEED)
    with guarded() as fetcher:
        refused = fetcher.fetch(FetchRequest(url))
    assert isinstance(refused, FetchError) and refused.kind == "blocked"
    assert "127.0.0.1 is a loopback address" in refused.reason
    assert "allow_private = true" in refused.reason
    assert server.hits == []  # refused before any connection
    with guarded(allow_private=True) as fetcher:
        assert isinstance(fetcher.fetch(FetchRequest(url)), FetchResult)
    with guarded(allow_networks=("127.0.0.0/8",)) as fetcher:
        assert isinstance(fetcher.fetch(FetchRequest(url)), FetchResult)
    with guarded(allow_networks=("10.0.0.0/8",)) as fetcher:
        assert isinstance(fetcher.fetch(FetchRequest(url)), FetchError)


def test_a_name_is_checked_after_resolution(server: FeedServer) -> None:
    """``localhost`` is a name, not an address: only the connection layer can see 127.0.0.1."""
    url = server.serve("/feed", FEED).replace("127.0.0.1", "localhost")
    with guarded() as fetcher:
        refused = fetcher.fetch(FetchRequest(url))
    assert isinstance(refused, FetchError) and refused.kind == "blocked", refused
    assert "localhost resolves to " in refused.reason  # 127.0.0.1, or ::1 first on some hosts
    assert "is a loopback address" in refused.reason
    assert server.hits == []
    with guarded(allow_private=True) as fetcher:
        assert isinstance(fetcher.fetch(FetchRequest(url)), FetchResult)


def test_the_connection_goes_to_the_address_that_was_checked(
    server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is resolved once per connection: a second answer (DNS rebinding to the metadata
    address) is never asked for, because the socket connects to the checked address."""
    import socket

    real = socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "feeds.rebind.example":
            asked.append(host)
            answer = "127.0.0.1" if len(asked) == 1 else "169.254.169.254"
            return real(answer, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = server.serve("/feed", FEED).replace("127.0.0.1", "feeds.rebind.example")
    with guarded(allow_networks=("127.0.0.1/32",)) as fetcher:
        outcome = fetcher.fetch(FetchRequest(url))
    assert isinstance(outcome, FetchResult), outcome
    assert asked == ["feeds.rebind.example"]
    assert server.hits[-1].headers["host"].startswith("feeds.rebind.example")


def test_an_unresolvable_name_is_still_a_connection_error() -> None:
    with guarded() as fetcher:
        outcome = fetcher.fetch(FetchRequest("https://feeds.invalid/rss"))
    assert isinstance(outcome, FetchError) and outcome.kind == "connection", outcome


def test_a_refused_feed_is_one_error_among_the_others(server: FeedServer) -> None:
    good = server.serve("/feed", FEED)
    with guarded(allow_networks=("127.0.0.1/32",)) as fetcher:
        outcomes = fetcher.fetch_many(
            [FetchRequest("http://169.254.169.254/latest/"), FetchRequest(good)]
        )
    assert [type(o).__name__ for o in outcomes] == ["FetchError", "FetchResult"]
    assert isinstance(outcomes[0], FetchError) and outcomes[0].kind == "blocked"
