"""The feedparser edge: bytes in, normalised :class:`Entry` values out.

Pure and picklable: :func:`parse_feed` is a top-level function of plain arguments, so a process
pool can run it on every core. It never raises; a body that yields no feed becomes a
:class:`ParseError` value.

feedparser is called on a stream, never on a URL or bare bytes: given ``bytes`` it first tries
them as a *file name* (and given a URL it fetches with no timeout). Sanitising and relative-URI
resolution are off (2x faster, measured); we strip HTML to text ourselves.

Importing this module leaves feedparser as shipped. :func:`tune_parser` speeds it up in the
process that calls it, which is each parse worker as it starts (:mod:`aggregator.ingest.workers`).
"""

from __future__ import annotations

import calendar
import hashlib
import html
import io
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import feedparser

from aggregator.ingest.dedupe import canonical_url, content_hash
from aggregator.ingest.tuning import tune, untuned_reason
from aggregator.models import Entry, ParsedFeed, ParseError, ParseOutcome
from aggregator.text.normalise import fold_space, strip_html

MAX_SUMMARY_CHARS = 20_000  # plenty for matching and FTS; bounds one hostile item
MAX_TITLE_CHARS = 1_000
MAX_LINKS = 25
_ENTITY_DECL = re.compile(rb"<!\s*entity", re.IGNORECASE)
_HTML_START = re.compile(rb"<\s*(!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.IGNORECASE)
_HREF = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# An xml:base (or a bare base= that the loose parser reads as one): feedparser resolves ids and
# links against it, itself resolved against the feed's URL (see _feed). Searched in the lower-cased
# body: led by a literal, 15x faster than "xml:base|base\s*=" with IGNORECASE.
_BASE = re.compile(rb"base(?:(?<=xml:base)|\s*=)")
# Every tag that feedparser may read as an entry id, and a guid's isPermaLink="false" (or any value
# but "true" without a character reference): feedparser resolves an id against the base unless so.
_ID_TAG = re.compile(rb"<(?:[^\s<>:/\"']+:)?(?:guid|id)(?=[\s/>])([^>]*)>", re.IGNORECASE)
_NOT_PERMALINK = re.compile(
    rb"""\sispermalink\s*=\s*(?:"(?!true")[^"&]*"|'(?!true')[^'&]*')""", re.IGNORECASE
)
# EBCDIC "<?xm", as feedparser recognises it: a body whose ASCII words we cannot search.
_EBCDIC = b"\x4c\x6f\xa7\x94"
# An absolute http(s) URL that urljoin returns unchanged: ASCII, lower-case scheme, a host, no
# bracket, no ";" (path parameters), no "?" or "#" with nothing after it.
_NORMAL_URL = re.compile(
    r"https?://[A-Za-z0-9.\-_~%!$&'()*+,=:@]+"
    r"(?:/[A-Za-z0-9.\-_~%!$&'()*+,=:@/]*)?"
    r"(?:\?[A-Za-z0-9.\-_~%!$&'()*+,;=:@/?]+)?"
    r"(?:#[A-Za-z0-9.\-_~%!$&'()*+,;=:@/?]+)?"
)
_CHAR_REF = re.compile(rb"&#([xX][0-9a-fA-F]{1,16}|[0-9]{1,20});")


def tune_parser() -> bool:
    """Make feedparser faster in this process, with the same results (:mod:`.tuning`). False,
    and nothing changed, when the installed feedparser is not the version that was checked."""
    return tune(feedparser)


def tuning_off_reason() -> str | None:
    """Why :func:`tune_parser` cannot apply here, in words for the log and the doctor; None when
    it can. Asks without tuning this process."""
    return untuned_reason(getattr(feedparser, "__version__", None))


def parse_feed(
    feed_url: str, body: bytes, *, source: str = "", content_type: str = ""
) -> ParseOutcome:
    """Parse one feed body. ``content_type`` (the HTTP header) helps find the encoding."""
    try:
        return _parse(feed_url, body, source, content_type)
    except UnicodeError as e:
        detail = f"invalid text in the feed ({type(e).__name__}: {e})"
        return ParseError(feed_url, f"parse failed: {feed_url!r}: {detail}")
    except Exception as e:  # feedparser raises ValueError and more on mutated input
        detail = f"the parser failed ({type(e).__name__}: {e})"
        return ParseError(feed_url, f"parse failed: {feed_url!r}: {detail}")


def _parse(feed_url: str, body: bytes, source: str, content_type: str) -> ParseOutcome:
    def error(detail: str) -> ParseError:
        return ParseError(feed_url, f"parse failed: {feed_url!r}: {detail}")

    if not body.strip():
        return error("the body is empty")
    if declares_entities(body):
        # One declared 100 KB entity referenced 5,000 times grew to 1.4 GB in the loose parser.
        return error("the body declares XML entities (<!ENTITY), refused as a possible entity bomb")
    if body.lstrip()[:1] == b"{":
        return error(
            "this looks like a JSON Feed, which is not supported; use the RSS or Atom feed"
        )
    body, repaired = _repair_char_refs(body)
    result = _feed(feed_url, body, content_type)
    raw_entries = result.get("entries") or []
    version = result.get("version") or ""
    problem = _bozo_reason(result)
    if repaired:
        note = f"replaced {repaired} invalid character reference(s) such as a lone surrogate"
        problem = f"{problem}; {note}" if problem else note
    feed = result.get("feed") or {}
    title = _text(feed.get("title", ""), feed.get("title_detail"), MAX_TITLE_CHARS)
    if not raw_entries and not version:
        if _HTML_START.search(body[:4096]):
            return error("this is an HTML page, not a feed")
        if problem:
            return error(f"no feed found: {problem}")
        return error("no feed found: no RSS, Atom or RDF document in the body")
    entries: list[Entry] = []
    seen: set[str] = set()
    skipped = 0
    for raw in raw_entries:
        entry = _entry(feed_url, raw, source or title)
        if entry is None:
            skipped += 1
        elif entry.guid not in seen:
            seen.add(entry.guid)
            entries.append(entry)
    notes = [problem] if problem else []
    if skipped:
        notes.append(f"skipped {skipped} item(s) with no title, link or text")
    if not raw_entries:
        notes.append("the feed has no entries")
    # A valid feed with nothing to show is not a failure: it is polled again as usual.
    return ParsedFeed(title=title, entries=tuple(entries), warning="; ".join(notes) or None)


def declares_entities(body: bytes) -> bool:
    """True when the body declares an XML entity, also in UTF-16/32 (NULs between letters)."""
    if _ENTITY_DECL.search(body):
        return True
    return b"\x00" in body[:4096] and bool(_ENTITY_DECL.search(body.replace(b"\x00", b"")))


def _feed(feed_url: str, body: bytes, content_type: str) -> Any:
    """feedparser's result, as it is when told the feed's URL (``Content-Location``).

    Told the URL, feedparser resolves it against every element's base, which costs a third of its
    time; we resolve links ourselves. Where the URL could change the result (an ``xml:base``, or
    an id that it would make absolute), the body is parsed again with the URL: ids are the stored
    identity of entries and must not change.
    """
    headers = {"content-type": _feed_content_type(content_type)}
    if not _may_set_base(body):
        result = _feedparser(body, headers)
        if _base_free(feed_url, body, result):
            return result
    headers["content-location"] = feed_url
    return _feedparser(body, headers)


def _feedparser(body: bytes, headers: dict[str, str]) -> Any:
    return feedparser.parse(
        io.BytesIO(body),
        response_headers=headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )


def _may_set_base(body: bytes) -> bool:
    """True when the body may set an ``xml:base``, or is in an encoding where we cannot tell."""
    return b"\x00" in body or body[:4] == _EBCDIC or _BASE.search(body.lower()) is not None


def _base_free(feed_url: str, body: bytes, result: Any) -> bool:
    """True when telling feedparser the feed's URL would not have changed this result.

    Without a base, feedparser leaves relative ids and links as they are: links we make absolute
    ourselves, but an id it would have resolved must come out as before. Many feeds have relative
    ids that are no links (``<guid isPermaLink="false">``), which feedparser never resolves. A
    base in a detail means an ``xml:base`` that :func:`_may_set_base` could not see.
    """
    feed = result.get("feed") or {}
    if (feed.get("title_detail") or {}).get("base"):
        return False
    ids_resolved: bool | None = None  # looked up once, for the first relative id
    for raw in result.get("entries") or []:
        entry = dict(raw)  # as in _entry: a plain dict is faster to read
        value = entry.get("id")
        if isinstance(value, str) and value and not _is_absolute(feed_url, value):
            if ids_resolved is None:
                ids_resolved = _may_resolve_ids(body)
            if ids_resolved:
                return False
        details = [entry.get("title_detail"), entry.get("summary_detail")]
        if any(d and d.get("base") for d in [*details, *(entry.get("content") or ())]):
            return False
    return True


def _may_resolve_ids(body: bytes) -> bool:
    """False when every guid or id tag says isPermaLink="false": then no id was resolved."""
    return any(_NOT_PERMALINK.search(m[1]) is None for m in _ID_TAG.finditer(body))


def _is_absolute(base: str, url: str) -> bool:
    try:
        return _join(base, url) == url
    except ValueError:
        return False


def _join(base: str, url: str) -> str:
    """``urljoin``, without its cost for a URL it would return unchanged (most links)."""
    if _NORMAL_URL.fullmatch(url) and _NORMAL_URL.fullmatch(base):
        return url
    return urljoin(base, url)


def _feed_content_type(content_type: str) -> str:
    """The type to tell feedparser, so that the XML declaration decides the encoding.

    feedparser follows RFC 3023, where ``text/xml`` without a charset means US-ASCII; most feeds
    served that way are UTF-8 or declare their encoding, as RFC 7303 now expects.
    """
    value = content_type.strip()
    if not value:
        return "application/xml"
    if (
        value.split(";", 1)[0].strip().lower().startswith("text/")
        and "charset" not in value.lower()
    ):
        return "application/xml"
    return value


def _repair_char_refs(body: bytes) -> tuple[bytes, int]:
    """Replace numeric references to lone surrogates or beyond U+10FFFF with U+FFFD.

    ``&#xD800;`` makes feedparser raise UnicodeEncodeError for the whole feed; one bad character
    should not cost every other item.
    """
    if b"&#" not in body:
        return body, 0
    count = 0

    def fix(m: re.Match[bytes]) -> bytes:
        nonlocal count
        digits = m.group(1)
        try:
            value = int(digits[1:], 16) if digits[:1] in (b"x", b"X") else int(digits)
        except ValueError:
            value = -1
        if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF or value < 0:
            count += 1
            return b"&#xFFFD;"
        return m.group(0)

    return _CHAR_REF.sub(fix, body), count


def _bozo_reason(result: Any) -> str | None:
    if not result.get("bozo"):
        return None
    exc = result.get("bozo_exception")
    if exc is None:
        return "the feed is not well-formed"
    text = str(exc).strip()
    label = type(exc).__name__
    return f"{label}: {text[:200]}" if text else label


def _entry(feed_url: str, raw: Any, source: str) -> Entry | None:
    raw = dict(raw)  # FeedParserDict.get costs a microsecond a key, for aliases we never use
    title = _text(raw.get("title", ""), raw.get("title_detail"), MAX_TITLE_CHARS)
    summary_html, summary_detail = _summary_source(raw)
    summary = _text(summary_html, summary_detail, MAX_SUMMARY_CHARS)
    link = _absolute_http(feed_url, _link_of(raw))
    canonical = canonical_url(link) if link else ""
    published = _published(raw)
    if not (title or summary or link):
        return None
    guid = _clean_id(raw.get("id"))
    if not guid:
        guid = canonical
    if not guid:
        stamp = published.isoformat() if published else ""
        basis = f"{title}\n{stamp}" if (title or stamp) else summary
        guid = "sha256:" + hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return Entry(
        feed_url=feed_url,
        guid=guid,
        link=link,
        canonical_url=canonical,
        title=title,
        summary=summary,
        published=published,
        content_hash=content_hash(title, summary),
        source=source,
        links=_other_links(raw, link),
    )


def _summary_source(raw: Any) -> tuple[str, Any]:
    summary = raw.get("summary")
    if summary:
        return str(summary), raw.get("summary_detail")
    for content in raw.get("content") or []:
        value = content.get("value")
        if value:
            return str(value), content
    return "", None


def _text(value: Any, detail: Any, limit: int) -> str:
    """Plain text: HTML stripped when the feed says it is HTML, whitespace collapsed, bounded."""
    if not isinstance(value, str) or not value:
        return ""
    text: str = value
    kind = str((detail or {}).get("type", "text/html")).lower()
    if "html" in kind:
        text = strip_html(text)
    if not text.isprintable():  # a control character or a surrogate is never printable
        text = _storable(_CONTROL.sub(" ", text))
    return fold_space(text)[:limit]


def _storable(text: str) -> str:
    """A lone surrogate (from "&#xD800;") cannot be stored or encoded: replace it."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _link_of(raw: Any) -> str:
    link = raw.get("link")
    if isinstance(link, str) and link.strip():
        return link.strip()
    for candidate in raw.get("links") or []:
        href = candidate.get("href")
        if href and candidate.get("rel", "alternate") == "alternate":
            return str(href).strip()
    return ""


def _absolute_http(base: str, link: str) -> str:
    if not link:
        return ""
    try:
        absolute = _join(base, link.strip())
    except ValueError:
        return ""
    return absolute if absolute.lower().startswith(("http://", "https://")) else ""


def _clean_id(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return _storable(value.strip())[:2000]


def _published(raw: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed = raw.get(key)
        if isinstance(parsed, time.struct_time):
            try:
                return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
            except (OverflowError, ValueError, OSError):
                continue
    return None


def _other_links(raw: Any, own: str) -> tuple[str, ...]:
    """http(s) links inside the item's HTML: a link to whitehouse.gov marks a primary source."""
    html_parts: list[str] = []
    summary = raw.get("summary")
    if isinstance(summary, str):
        html_parts.append(summary)
    for content in raw.get("content") or []:
        value = content.get("value")
        if isinstance(value, str):
            html_parts.append(value)
    found: dict[str, None] = {}
    for part in html_parts:
        for m in _HREF.finditer(part):
            href = m[m.lastindex or 0]  # the one alternative that matched
            url = _absolute_http(own, html.unescape(href))
            if url and url != own:
                found[url] = None
                if len(found) >= MAX_LINKS:
                    return tuple(found)
    return tuple(found)
