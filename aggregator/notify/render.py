"""Block Kit messages for alerts, replies, digests and notices. Pure: no I/O, no clock.

Every piece of feed text is escaped (``&``, ``<``, ``>``) before it reaches Slack, so a title such
as ``<!channel>`` is shown as text and pings no one. Feed text also loses its power over the layout:
mrkdwn's markers (``*``, ``~``, backticks, and ``_`` where it could open italics) become look-alike
characters, and bidi overrides (U+202E ...) are dropped, so a title can neither restyle an alert nor
show its text reversed. Links are http(s) only, with ``|``, ``<`` and ``>`` percent-encoded so a URL
cannot close Slack's ``<url|label>`` syntax. Every message stays within Block Kit's limits and
always carries a fallback ``text``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from aggregator.models import (
    Alert,
    AlertKind,
    AlertPayload,
    EditPayload,
    NoticePayload,
    ReplyPayload,
    TopicMatch,
)

MAX_HEADER = 150
MAX_SECTION = 3000
MAX_BLOCKS = 50
MAX_FALLBACK = 3000
# Slack rejects messages (msg_blocks_too_long) well below the documented sums; keep them small.
MAX_MESSAGE_CHARS = 11_000
SNIPPET_CHARS = 600
EVENT_TYPE = "aggregator_alert"
ELLIPSIS = "\u2026"

Block = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One Slack message: fallback text, blocks and the metadata naming the alert(s) it carries."""

    text: str
    blocks: tuple[Block, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    alert_ids: tuple[int, ...] = ()


# -- escaping ------------------------------------------------------------------------------------

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Bidi embeddings, overrides and isolates: they make text display in another order than it reads.
# (The marks U+200E and U+200F only nudge neutral characters; right-to-left text needs them.)
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Mrkdwn markers in feed text, and the look-alikes that show the same but format nothing. An
# underscore between two letters or digits (snake_case) opens no italics and stays as it is.
_MRKDWN = re.compile(r"[*~`]|(?<![^\W_])_|_(?![^\W_])")
_LOOK_ALIKES = {"*": "\u2217", "~": "\u223c", "`": "\u02cb", "_": "\u02cd"}


def escape(text: str) -> str:
    """Slack's three control characters as entities; nothing else changes."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def inert(text: str) -> str:
    """Feed text made inert: one line, no bidi controls, no mrkdwn markers (look-alikes instead).

    Not yet escaped: :func:`escape` still applies.
    """
    text = " ".join(_CONTROL.sub(" ", _BIDI.sub("", text)).split())
    return _MRKDWN.sub(lambda m: _LOOK_ALIKES[m.group()], text)


def escape_within(text: str, limit: int) -> str:
    """``escape(inert(text))`` cut to at most ``limit`` characters, never inside an entity."""
    text = inert(text)
    full = escape(text)
    if len(full) <= limit:
        return full
    out: list[str] = []
    used = 0
    budget = limit - len(ELLIPSIS)
    for ch in text:
        piece = _ESCAPES.get(ch, ch)
        if used + len(piece) > budget:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out).rstrip() + ELLIPSIS


def safe_link(url: str) -> str | None:
    """An http(s) URL fit for ``<url|label>``, or None when the link must not be shown."""
    url = _BIDI.sub(lambda m: quote(m.group()), url.strip())  # the link works, shown inert
    if not url or _CONTROL.search(url) or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    encoded = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return encoded if len(encoded) <= MAX_SECTION - 100 else None


def link(url: str, label: str, limit: int = 300) -> str:
    """A mrkdwn link with an escaped label, or the escaped label alone for an unsafe URL."""
    safe = safe_link(url)
    text = escape_within(label, limit) or "link"
    return f"<{safe}|{text}>" if safe else text


# -- snippets ------------------------------------------------------------------------------------


def highlight(text: str, terms: Sequence[str], limit: int = SNIPPET_CHARS) -> str:
    """An escaped, :func:`inert` snippet of ``text`` with each matched term in bold, near the first
    match.

    ``limit`` bounds the result, entities and bold markers included.
    """
    text = inert(text)
    if not text:
        return ""
    spans = _term_spans(text, terms)
    start = 0
    if spans and spans[0][0] > limit // 3:
        start = _word_start(text, spans[0][0] - limit // 6)
    out: list[str] = [ELLIPSIS] if start > 0 else []
    used = len(out)
    budget = limit - len(ELLIPSIS)
    pos = start
    truncated = False
    for s, e in [*[(s, e) for s, e in spans if s >= start], (len(text), len(text))]:
        plain = escape(text[pos:s])
        if used + len(plain) > budget:
            out.append(escape_within(text[pos:s], budget - used).removesuffix(ELLIPSIS))
            truncated = True
            break
        out.append(plain)
        used += len(plain)
        if s < e:
            bold = f"*{escape(text[s:e])}*"
            if used + len(bold) > budget:
                truncated = True
                break
            out.append(bold)
            used += len(bold)
        pos = e
    result = "".join(out)
    return result.rstrip() + ELLIPSIS if truncated else result


def _term_spans(text: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """Non-overlapping spans of the terms, longest term first, as whole words where possible."""
    wanted = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    taken: list[tuple[int, int]] = []
    for term in wanted:
        pattern = re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE)
        for m in pattern.finditer(text):
            if all(m.end() <= s or m.start() >= e for s, e in taken):
                taken.append((m.start(), m.end()))
    return sorted(taken)


def _word_start(text: str, index: int) -> int:
    index = max(0, index)
    space = text.rfind(" ", 0, index)
    return space + 1 if space >= 0 else index


# -- messages ------------------------------------------------------------------------------------


def metadata_for(alert_ids: Sequence[int]) -> dict[str, Any]:
    """Slack message metadata naming the alert(s), for reconciliation after a crash."""
    payload: dict[str, Any] = {"alert_id": alert_ids[0]}
    if len(alert_ids) > 1:
        payload["alert_ids"] = list(alert_ids)
    return {"event_type": EVENT_TYPE, "event_payload": payload}


def alert_ids_in(metadata: object) -> set[int]:
    """The alert ids a message's metadata names (empty when it is not one of ours)."""
    if not isinstance(metadata, dict) or metadata.get("event_type") != EVENT_TYPE:
        return set()
    payload = metadata.get("event_payload")
    if not isinstance(payload, dict):
        return set()
    found: set[int] = set()
    for value in [payload.get("alert_id"), *(payload.get("alert_ids") or [])]:
        try:
            found.add(int(value))
        except (TypeError, ValueError):
            continue
    return found


def format_published(moment: datetime | None) -> str:
    if moment is None:
        return "time not given"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def slack_date(moment: datetime | None) -> str:
    """A time each reader sees in their own time zone, with UTC text as the fallback."""
    if moment is None:
        return "time not given"
    epoch = int(moment.timestamp())
    return f"<!date^{epoch}^{{date_short_pretty}} at {{time}}|{format_published(moment)}>"


def topics_line(topics: Sequence[TopicMatch]) -> str:
    parts = []
    for t in topics:
        terms = ", ".join(f"*{escape_within(term, 80)}*" for term in t.terms[:8])
        parts.append(f"`{escape_within(t.topic, 64)}`" + (f" (matched {terms})" if terms else ""))
    return escape_cut("Topics: " + " · ".join(parts), MAX_SECTION) if parts else ""


def escape_cut(mrkdwn: str, limit: int) -> str:
    """Cut already-escaped mrkdwn to ``limit`` characters without splitting an entity."""
    if len(mrkdwn) <= limit:
        return mrkdwn
    cut = mrkdwn[: limit - 1]
    amp = cut.rfind("&")
    if amp >= 0 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


def render_alert(alert: Alert) -> Message:
    """The real-time alert for one story (also used for the edit of a changed story)."""
    title = alert.title.strip() or "(untitled story)"
    blocks: list[Block] = [_header(title)]
    context = [f"*{escape_within(alert.source or 'unknown source', 200)}*"]
    context.append(slack_date(alert.published))
    payload = alert.payload
    edit = payload if isinstance(payload, EditPayload) else None
    if isinstance(payload, AlertPayload | EditPayload) and payload.primary:
        context.append(":scroll: Official text")
    if edit is not None and edit.outlets > 1:
        context.append(f"covered by {edit.outlets} outlets")
    if edit is not None and edit.updated:
        context.append("_updated_")  # the story's text changed (not just its coverage)
    blocks.append(_context(" · ".join(context)))
    line = topics_line(alert.topics)
    if line:
        blocks.append(_section(line))
    terms = [term for t in alert.topics for term in t.terms]
    snippet = highlight(alert.summary, terms)
    if snippet:
        blocks.append(_section(snippet))
    safe = safe_link(alert.link)
    if safe:
        blocks.append(_section(f"<{safe}|Read the story>"))
    official = edit.official_link if edit is not None else None
    if official and safe_link(official):
        blocks.append(_section(link(official, "Official text")))
    topic_names = ", ".join(t.topic for t in alert.topics)
    fallback = escape_within(title, 500)
    if alert.source:
        fallback += f" ({escape_within(alert.source, 100)})"
    if topic_names:
        fallback += f" [{escape_within(topic_names, 200)}]"
    if safe:
        fallback += f" {safe}"
    # an edit keeps the parent's metadata, so the message still names the alert it carries
    named = edit.parent_alert_id if edit is not None else alert.id
    return Message(
        text=escape_cut(fallback, MAX_FALLBACK),
        blocks=tuple(blocks),
        metadata=metadata_for([named]),
        alert_ids=(alert.id,),
    )


def render_reply(alert: Alert) -> Message:
    """A thread reply: further outlets covering a story already posted."""
    return render_replies([alert])


def render_replies(alerts: Sequence[Alert]) -> Message:
    """One thread reply listing every further outlet these reply rows carry."""
    rows: list[tuple[str, str, str, bool]] = []
    for alert in alerts:
        items = alert.payload.items if isinstance(alert.payload, ReplyPayload) else ()
        rows.extend((i.source, i.title, i.link, i.primary) for i in items)
        if not items:  # a reply row without items names its own entry
            primary = isinstance(alert.payload, AlertPayload) and alert.payload.primary
            rows.append((alert.source, alert.title, alert.link, primary))
    sources = ", ".join(dict.fromkeys(escape_within(s, 100) for s, _, _, _ in rows if s))
    lines = [f"Also covered by {sources or 'another outlet'}:"]
    size = len(lines[0])
    for shown, (source, title, url, primary) in enumerate(rows):
        entry = link(url, title or url or "(untitled)", 300)
        flag = " :scroll: *Official text*" if primary else ""
        line = f"\u2022 {entry}" + (f" ({escape_within(source, 100)})" if source else "") + flag
        if size + len(line) + 1 > MAX_SECTION - 40:  # whole lines only: never cut a link
            lines.append(f"\u2026 and {len(rows) - shown} more")
            break
        lines.append(line)
        size += len(line) + 1
    ids = [a.id for a in alerts]
    titles = "; ".join(escape_within(t, 200) for _, t, _, _ in rows[:10])
    return Message(
        text=escape_cut(f"{lines[0]} {titles}", 999),
        blocks=(_section(escape_cut("\n".join(lines), MAX_SECTION)),),
        metadata=metadata_for(ids),
        alert_ids=tuple(ids),
    )


def render_notice(alert: Alert) -> Message:
    """An operations notice or a test message: plain words from our own code, still escaped."""
    notice = alert.payload.text if isinstance(alert.payload, NoticePayload) else ""
    text = notice or alert.title or "notice from the alert bot"
    body = escape_within(text, MAX_SECTION)
    return Message(
        text=escape_within(text, MAX_FALLBACK),
        blocks=(_section(body),),
        metadata=metadata_for([alert.id]),
        alert_ids=(alert.id,),
    )


def render(alert: Alert) -> Message:
    """The message for one outbox row, by its kind."""
    if alert.kind == AlertKind.REPLY:
        return render_reply(alert)
    if alert.kind in (AlertKind.OPS, AlertKind.TEST):
        return render_notice(alert)
    return render_alert(alert)


def render_digest(alerts: Sequence[Alert], *, label: str, now: datetime) -> list[Message]:
    """One digest listing stories, split across messages to stay within Block Kit limits."""
    entries: list[tuple[int, Block]] = []
    for alert in alerts:
        title = link(alert.link, alert.title.strip() or "(untitled story)", 400)
        meta = [escape_within(alert.source, 100)] if alert.source else []
        meta.append(escape(format_published(alert.published)))
        terms = sorted({term for t in alert.topics for term in t.terms}, key=str.lower)
        if terms:
            meta.append("matched " + ", ".join(f"*{escape_within(x, 80)}*" for x in terms[:8]))
        text = f"• *{title}*\n{' · '.join(meta)}"
        snippet = highlight(alert.summary, terms, 300)
        if snippet:
            text += f"\n{snippet}"
        entries.append((alert.id, _section(escape_cut(text, MAX_SECTION))))

    chunks: list[list[tuple[int, Block]]] = [[]]
    size = 0
    for entry in entries:
        length = len(entry[1]["text"]["text"])
        if chunks[-1] and (len(chunks[-1]) >= MAX_BLOCKS - 2 or size + length > MAX_MESSAGE_CHARS):
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += length
    messages: list[Message] = []
    when = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for number, chunk in enumerate(chunks, start=1):
        if not chunk:
            continue
        part = f" (part {number} of {len(chunks)})" if len(chunks) > 1 else ""
        heading = f"Digest: {label}: {len(alerts)} stories{part}"
        ids = tuple(alert_id for alert_id, _ in chunk)
        blocks = [_header(heading), _context(escape(when)), *(block for _, block in chunk)]
        titles = "; ".join(escape_within(a.title, 150) for a in alerts if a.id in ids)
        messages.append(
            Message(
                text=escape_cut(f"{escape(heading)}: {titles}", MAX_FALLBACK),
                blocks=tuple(blocks),
                metadata=metadata_for(ids),
                alert_ids=ids,
            )
        )
    return messages


def render_test(channel: str, now: datetime) -> Message:
    """The message ``aggregator slack test`` posts."""
    text = (
        f"Test message from the political-news alert bot for {escape(channel)} at "
        f"{now.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}: alerts will arrive here."
    )
    return Message(text=text, blocks=(_section(text),))


def _header(text: str) -> Block:
    plain = {"type": "plain_text", "text": escape_within(text, MAX_HEADER)}
    return {"type": "header", "text": plain}


def _section(mrkdwn: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": escape_cut(mrkdwn, MAX_SECTION)}}


def _context(mrkdwn: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": escape_cut(mrkdwn, 2000)}]}
