"""Hostile and broken feeds on 127.0.0.1: each ends as a clear per-feed outcome, in bounded time and
memory. The inputs are written here; nothing is downloaded.

Memory is measured in a subprocess that fetches and parses every case at once and reports its
peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aggregator.config.model import Settings
from aggregator.ingest.fetch import Fetcher
from aggregator.ingest.parse import parse_feed
from aggregator.models import FetchError, FetchRequest, FetchResult, NotModified, ParseError
from tests.feedserver import FeedServer, Reply, gzip_zeros

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
SETTINGS = Settings(
    fetch_timeout=1.0,
    fetch_deadline=2.0,
    max_body_bytes=10 * MIB,
    concurrency=16,
    allow_private=True,
)
MEMORY_LIMIT_MB = 200

GOOD = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Fine</title>
<item><title>A fine story</title><link>https://example.org/fine</link></item>
</channel></rss>
"""


def entity_bomb() -> bytes:
    """112 KB on the wire: one 100 KB entity referenced 5,000 times (1.4 GB in the loose parser)."""
    refs = b"&big;" * 5000
    return (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY big "' + b"x" * 100_000 + b'">]>\n'
        b"<rss version='2.0'><channel><title>t</title><item><title>a</title><description>"
        + refs
        + b"</description></item></channel></rss>"
    )


def billion_laughs() -> bytes:
    decls = b'<!ENTITY l0 "lol">' + b"".join(
        b'<!ENTITY l%d "%s">' % (i, b"&l%d;" % (i - 1) * 10) for i in range(1, 10)
    )
    return (
        b"<?xml version='1.0'?><!DOCTYPE rss [" + decls + b"]>"
        b"<rss version='2.0'><channel><item><title>&l9;</title></item></channel></rss>"
    )


def surrogate_feed() -> bytes:
    return GOOD.replace(b"A fine story", b"Broken &#xD800; story")


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[FeedServer, str], object]
    stage: str  # fetch | parse | warning: where the outcome is decided
    expect: str  # a phrase the reason must contain
    kind: str = ""  # FetchError.kind, for fetch-stage cases


def _redirect_chain(server: FeedServer, path: str) -> None:
    for i in range(10):
        server.redirect(path if i == 0 else f"{path}/{i}", f"{path}/{i + 1}", 302)


CASES = [
    Case(
        "body over the cap (declared)",
        lambda s, p: s.route(p, Reply(stream=lambda: iter([b"x" * MIB] * 50), length=50 * MIB)),
        "fetch",
        "over the 10,485,760-byte cap",
        "too_large",
    ),
    Case("body over the cap (endless)", lambda s, p: s.endless(p), "fetch", "cap", "too_large"),
    Case(
        "gzip bomb (one member, 64 MiB)",
        lambda s, p: s.gzip_bomb(p, 64 * MIB),
        "fetch",
        "decoded body is over",
        "too_large",
    ),
    Case(
        "gzip bomb (1,024 members, 1 GiB)",
        lambda s, p: s.encoded(p, gzip_zeros(MIB) * 1024, "gzip"),
        "fetch",
        "decoded body is over",
        "too_large",
    ),
    Case(
        "slow drip under the read timeout",
        lambda s, p: s.drip(p, GOOD * 10, interval=0.2),
        "fetch",
        "deadline of 2.0 s passed",
        "timeout",
    ),
    Case(
        "drip just under the read timeout",
        lambda s, p: s.drip(p, GOOD, interval=0.9),
        "fetch",
        "deadline of 2.0 s passed",
        "timeout",
    ),
    Case(
        "headers, then silence",
        lambda s, p: s.drip(p, GOOD, interval=60.0),
        "fetch",
        "ReadTimeout",
        "timeout",
    ),
    Case(
        "redirect loop",
        lambda s, p: (s.redirect(p, f"{p}/x", 301), s.redirect(f"{p}/x", p, 301)),
        "fetch",
        "redirect loop",
        "redirect",
    ),
    Case("endless redirects", _redirect_chain, "fetch", "more than 5 redirects", "redirect"),
    Case(
        "redirect to file://",
        lambda s, p: s.redirect(p, "file:///etc/passwd", 301),
        "fetch",
        "'file:///etc/passwd' refused",
        "redirect",
    ),
    Case(
        "redirect to ftp://",
        lambda s, p: s.redirect(p, "ftp://127.0.0.1/feed.xml", 302),
        "fetch",
        "'ftp://127.0.0.1/feed.xml' refused",
        "redirect",
    ),
    Case(
        "unknown content encoding",
        lambda s, p: s.encoded(p, b"\x00" * 100, "br"),
        "fetch",
        "unsupported Content-Encoding 'br'",
        "error",
    ),
    Case(
        "corrupt gzip",
        lambda s, p: s.encoded(p, b"\x1f\x8b\x08\x00garbage-not-deflate", "gzip"),
        "fetch",
        "body is not valid gzip",
        "error",
    ),
    Case("entity bomb", lambda s, p: s.serve(p, entity_bomb()), "parse", "<!ENTITY"),
    Case("billion laughs", lambda s, p: s.serve(p, billion_laughs()), "parse", "<!ENTITY"),
    Case(
        "entity bomb in UTF-16",
        lambda s, p: s.serve(p, entity_bomb().decode().encode("utf-16")),
        "parse",
        "<!ENTITY",
    ),
    Case(
        "lone surrogate",
        lambda s, p: s.serve(p, surrogate_feed()),
        "warning",
        "lone surrogate",
    ),
    Case(
        "invalid UTF-8 bytes",
        lambda s, p: s.serve(p, GOOD.replace(b"fine story", b"fine \xff\xfe\xc3 story")),
        "warning",
        "declared as utf-8",
    ),
    Case(
        "declared UTF-16, actually ASCII",
        lambda s, p: s.serve(p, GOOD.replace(b"utf-8", b"utf-16"), content_type="application/xml"),
        "warning",
        "declared as utf-16, but parsed as utf-8",
    ),
    Case("empty body", lambda s, p: s.serve(p, b""), "parse", "the body is empty"),
    Case(
        "HTML page instead of a feed",
        lambda s, p: s.serve(
            p,
            b"<!DOCTYPE html><html><head><title>Log in</title></head><body>Hi</body></html>",
            content_type="text/html; charset=utf-8",
        ),
        "parse",
        "HTML page",
    ),
    Case(
        "random garbage",
        lambda s, p: s.serve(p, bytes((i * 131 + 7) % 256 for i in range(50_000))),
        "parse",
        "no feed found",
    ),
]


def _path(case: Case) -> str:
    return "/" + "".join(c if c.isalnum() else "-" for c in case.name)


def serve_cases(server: FeedServer) -> list[str]:
    urls = []
    for case in CASES:
        case.setup(server, _path(case))
        urls.append(server.url(_path(case)))
    return urls


def describe(url: str, outcome: FetchResult | NotModified | FetchError) -> dict[str, object]:
    """Fetch outcome, then parse outcome, as one JSON-able record."""
    record: dict[str, object] = {"url": url, "elapsed": round(outcome.elapsed, 3)}
    if isinstance(outcome, FetchError):
        record |= {"stage": "fetch", "kind": outcome.kind, "reason": outcome.reason}
    elif isinstance(outcome, FetchResult):
        parsed = parse_feed(url, outcome.body, content_type=outcome.content_type)
        if isinstance(parsed, ParseError):
            record |= {"stage": "parse", "reason": parsed.reason}
        else:
            record |= {"stage": "warning" if parsed.warning else "ok"}
            record |= {"reason": parsed.warning or "", "entries": len(parsed.entries)}
    else:
        record |= {"stage": "unchanged", "reason": ""}
    return record


def run_all() -> dict[str, object]:
    """Every hostile case at once, plus a healthy feed; used by the memory subprocess."""
    import resource

    with FeedServer() as server, Fetcher(SETTINGS) as fetcher:
        urls = serve_cases(server)
        urls.append(server.serve("/good", GOOD))
        outcomes = fetcher.fetch_many([FetchRequest(u) for u in urls])
        records = [describe(u, o) for u, o in zip(urls, outcomes, strict=True)]
    # VmHWM is this program's own peak. ru_maxrss is not: Linux carries it over from the parent
    # at fork, so a large pytest process (one that imported scikit-learn) inflated it.
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
        peak_kb = int(status.split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "records": records}


# -- tests ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[FeedServer, list[str]]]:
    with FeedServer() as server:
        yield server, serve_cases(server)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_each_hostile_case_is_a_clear_per_feed_outcome(
    hostile: tuple[FeedServer, list[str]], index: int
) -> None:
    case = CASES[index]
    _, urls = hostile
    with Fetcher(SETTINGS) as fetcher:
        outcome = fetcher.fetch(FetchRequest(urls[index]))
    record = describe(urls[index], outcome)
    assert record["stage"] == case.stage, record
    assert case.expect in str(record["reason"]), record
    assert urls[index] in str(record["reason"]) or case.stage == "warning"
    if case.kind:
        assert record["kind"] == case.kind
    # Bounded time: the deadline is hard (a watchdog cuts a read that is still waiting).
    assert outcome.elapsed < SETTINGS.fetch_deadline + 0.5


def test_a_slow_feed_does_not_hold_back_the_others(
    hostile: tuple[FeedServer, list[str]],
) -> None:
    server, urls = hostile
    drip = urls[[c.name for c in CASES].index("slow drip under the read timeout")]
    good = [server.serve(f"/good{i}", GOOD) for i in range(20)]
    with Fetcher(SETTINGS) as fetcher:
        outcomes = fetcher.fetch_many([FetchRequest(u) for u in [drip, *good]])
    assert isinstance(outcomes[0], FetchError) and outcomes[0].kind == "timeout"
    assert all(isinstance(o, FetchResult) for o in outcomes[1:])
    slowest_good = max(o.elapsed for o in outcomes[1:])
    assert slowest_good < outcomes[0].elapsed


def test_memory_stays_bounded_with_every_hostile_case_at_once() -> None:
    script = "import json; from tests.test_hostile import run_all; print(json.dumps(run_all()))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    records = report["records"]
    print(f"hostile suite: {len(records)} feeds at once, peak RSS {report['peak_rss_mb']} MB")
    for r in records:
        print(f"  {r['stage']:8} {r['elapsed']:6.2f} s  {r['reason']}")
    assert report["peak_rss_mb"] < MEMORY_LIMIT_MB
    assert [r["stage"] for r in records] == [c.stage for c in CASES] + ["ok"]
