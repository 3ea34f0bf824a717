"""Edit ``feeds.toml`` the way a person would, and read and write OPML.

``feeds add`` and ``feeds remove`` change the file a person maintains by hand, so they must not
destroy comments, ordering or layout. These are text transforms: a new feed is appended as one
``[[feeds]]`` block, and removing a feed cuts exactly its block (and the comment lines directly
above it). Every result is parsed again with ``tomllib`` before it is written; the write is
atomic.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from aggregator.config.model import FeedConfig
from aggregator.errors import ConfigError

_TABLE_HEADER = re.compile(r"^\s*\[")  # [table] or [[array-of-tables]]
_FEEDS_HEADER = re.compile(r"^\s*\[\[\s*feeds\s*\]\]\s*(#.*)?$")
_COMMENT = re.compile(r"^\s*#")


@dataclass(frozen=True, slots=True)
class OpmlFeed:
    url: str
    name: str
    category: str = ""


# -- feeds.toml ------------------------------------------------------------------------------------


def feed_block(
    url: str,
    *,
    name: str = "",
    topics: Sequence[str] = (),
    interval: str | None = None,
    comment: str = "",
) -> str:
    """One ``[[feeds]]`` block in the style of the shipped file."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()] if comment else []
    lines.append("[[feeds]]")
    lines.append(f"url = {_toml_string(url)}")
    if name:
        lines.append(f"name = {_toml_string(name)}")
    if interval:
        lines.append(f"interval = {_toml_string(interval)}")
    if topics:
        lines.append(f"topics = [{', '.join(_toml_string(t) for t in topics)}]")
    return "\n".join(lines) + "\n"


def add_feed(text: str, block: str) -> str:
    """Append a feed block, separated by one blank line; the rest of the file is untouched."""
    new_url = _urls_in(block)
    if len(new_url) != 1:
        raise ConfigError("a feed block must hold exactly one [[feeds]] table")
    if new_url[0] in _urls_in(text):
        raise ConfigError(f"feeds.toml already has a feed with url {new_url[0]!r}")
    if text and not text.endswith("\n"):
        text += "\n"
    separator = "\n" if text.strip() else ""
    result = (text if text.strip() else "") + separator + block
    _check(result, expected=len(_urls_in(text)) + 1)
    return result


def remove_feed(text: str, url_or_name: str) -> tuple[str, str]:
    """Cut the block of the feed with this URL (or this name). Returns the new text and the URL."""
    lines = text.splitlines(keepends=True)
    blocks = _feed_blocks(lines)
    matches = [b for b in blocks if url_or_name in (b.url, b.name)]
    if not matches:
        known = ", ".join(b.url for b in blocks) or "none"
        raise ConfigError(
            f"no feed with url or name {url_or_name!r} in feeds.toml (feeds: {known})"
        )
    if len(matches) > 1:
        raise ConfigError(f"{url_or_name!r} names {len(matches)} feeds; give the URL instead")
    block = matches[0]
    start = block.start
    # Comment lines directly above the header describe this feed: they go with it, unless they
    # open the file (the file's own header comment).
    while start > 0 and _COMMENT.match(lines[start - 1]):
        start -= 1
    if start == 0 and block.start > 0:
        start = block.start
    kept = lines[:start] + lines[block.end :]
    if all(not line.strip() for line in kept[start:]):
        # The block was last: drop the blank line that separated it.
        kept = kept[:start]
        while kept and not kept[-1].strip():
            kept.pop()
    elif start > 0 and not kept[start - 1].strip() and not kept[start].strip():
        del kept[start]  # do not leave two blank lines where the block was
    result = "".join(kept)
    _check(result, expected=len(blocks) - 1)
    return result, block.url


@dataclass(frozen=True, slots=True)
class _Block:
    start: int  # index of the [[feeds]] line
    end: int  # index after the block's last line (trailing blank and comment lines excluded)
    url: str
    name: str


def _feed_blocks(lines: list[str]) -> list[_Block]:
    headers = [i for i, line in enumerate(lines) if _TABLE_HEADER.match(line)]
    blocks: list[_Block] = []
    for n, i in enumerate(headers):
        if not _FEEDS_HEADER.match(lines[i]):
            continue
        end = headers[n + 1] if n + 1 < len(headers) else len(lines)
        # Trailing blank lines and comments belong to whatever follows.
        while end > i + 1 and (not lines[end - 1].strip() or _COMMENT.match(lines[end - 1])):
            end -= 1
        try:
            table = tomllib.loads("".join(lines[i:end])).get("feeds", [{}])[0]
        except (tomllib.TOMLDecodeError, IndexError, AttributeError):
            continue
        blocks.append(_Block(i, end, str(table.get("url", "")), str(table.get("name", ""))))
    return blocks


def _urls_in(text: str) -> list[str]:
    try:
        feeds = tomllib.loads(text).get("feeds", [])
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"feeds.toml: invalid TOML: {e}") from e
    return [str(f.get("url", "")) for f in feeds if isinstance(f, dict)]


def _check(text: str, *, expected: int) -> None:
    found = len(_urls_in(text))
    if found != expected:
        raise ConfigError(
            f"feeds.toml: the edit would leave {found} feeds instead of {expected}; file unchanged"
        )


def _toml_string(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a file in one step, keeping its permissions: a crash never leaves half a file."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- OPML ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpmlScan:
    """What an OPML file holds: its feeds, and the outlines that cannot be feeds, with why."""

    outlines: int  # outlines with an xmlUrl
    feeds: tuple[OpmlFeed, ...]
    refused: tuple[tuple[str, str], ...]  # (xmlUrl, reason): javascript:, file: ...


def read_opml(text: str) -> list[OpmlFeed]:
    """The feeds of an OPML file: every outline with an http(s) ``xmlUrl``, folder as category."""
    return list(scan_opml(text).feeds)


def scan_opml(text: str) -> OpmlScan:
    """Every outline with an ``xmlUrl``, in document order, with its folder as category.

    Only http(s) URLs become feeds; the others (``javascript:``, ``file:``, ``feed:`` ...) are
    returned as refused so the caller can list them. Walks the tree without recursion: a file of
    deeply nested folders cannot exhaust the stack.
    """
    if re.search(r"<!\s*(ENTITY|DOCTYPE)", text, re.IGNORECASE):
        raise ConfigError("OPML files that declare a DOCTYPE or entities are refused")
    try:
        root = ET.fromstring(text)  # noqa: S314 - no DOCTYPE or entities can reach the parser
    except ET.ParseError as e:
        raise ConfigError(f"not a readable OPML file: {e}") from e
    body = root.find("body")
    if root.tag != "opml" or body is None:
        raise ConfigError("not an OPML file: expected <opml> with a <body>")
    found: dict[str, OpmlFeed] = {}
    refused: dict[str, str] = {}
    outlines = 0
    # Depth first, in document order: one iterator per open folder.
    stack: list[tuple[Iterator[ET.Element], str]] = [(iter(body.findall("outline")), "")]
    while stack:
        children, category = stack[-1]
        outline = next(children, None)
        if outline is None:
            stack.pop()
            continue
        url = (outline.get("xmlUrl") or outline.get("xmlurl") or "").strip()
        label = " ".join((outline.get("title") or outline.get("text") or "").split())
        if not url:  # a folder
            stack.append((iter(outline.findall("outline")), label or category))
            continue
        outlines += 1
        if not url.lower().startswith(("http://", "https://")):
            refused.setdefault(url, "not an http(s) URL")
        elif url not in found:
            found[url] = OpmlFeed(url=url, name=label, category=category)
    return OpmlScan(outlines, tuple(found.values()), tuple(refused.items()))


def import_opml(text: str, feeds: Iterable[OpmlFeed]) -> tuple[str, list[OpmlFeed], list[str]]:
    """Append the OPML feeds not yet in ``feeds.toml``. Returns the text, the added, the skipped.

    One pass: the file is parsed once before and once after, however many feeds are added.
    """
    present = set(_urls_in(text))
    before = len(present)
    added: list[OpmlFeed] = []
    skipped: list[str] = []
    blocks: list[str] = []
    for feed in feeds:
        if feed.url in present:
            skipped.append(feed.url)
            continue
        comment = f"Imported from OPML ({feed.category})" if feed.category else "Imported from OPML"
        blocks.append(feed_block(feed.url, name=feed.name, comment=comment))
        present.add(feed.url)
        added.append(feed)
    if not blocks:
        return text, added, skipped
    if text and not text.endswith("\n"):
        text += "\n"
    head = text + "\n" if text.strip() else ""
    result = head + "\n".join(blocks)
    _check(result, expected=before + len(added))
    return result, added, skipped


def export_opml(feeds: Sequence[FeedConfig], title: str = "aggregator feeds") -> str:
    """OPML 2.0 of the configured feeds; a feed's topics become its ``category``."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<opml version="2.0">',
        f"  <head><title>{escape(title)}</title></head>",
        "  <body>",
    ]
    for feed in feeds:
        attrs = f'type="rss" text={quoteattr(feed.name)} title={quoteattr(feed.name)} '
        attrs += f"xmlUrl={quoteattr(feed.url)}"
        if feed.topics:
            attrs += f" category={quoteattr(','.join(feed.topics))}"
        lines.append(f"    <outline {attrs}/>")
    lines += ["  </body>", "</opml>", ""]
    return "\n".join(lines)
