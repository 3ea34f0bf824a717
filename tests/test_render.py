"""Block Kit rendering: escaping, links, limits, bold terms, digests. Pure: no server, no clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from aggregator.models import (
    Alert,
    AlertKind,
    AlertPayload,
    EditPayload,
    NoticePayload,
    ReplyItem,
    ReplyPayload,
    TopicMatch,
)
from aggregator.notify.console import ConsoleSink
from aggregator.notify.render import (
    EVENT_TYPE,
    MAX_BLOCKS,
    MAX_HEADER,
    MAX_SECTION,
    alert_ids_in,
    escape,
    escape_within,
    highlight,
    render,
    render_digest,
    safe_link,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOSTILE = "<!channel> <@U123> <https://evil|click>"


def make_alert(**changes: object) -> Alert:
    fields: dict[str, object] = {
        "id": 7,
        "channel": "#ai-policy",
        "kind": AlertKind.ALERT,
        "title": "Trump kills AI security order after tech pressure",
        "link": "https://example.com/story?id=1",
        "source": "NPR",
        "published": datetime(2026, 11, 28, 9, 30, tzinfo=UTC),
        "summary": "President Trump scrapped an executive order on AI and cybersecurity.",
        "topics": (
            TopicMatch("ai-policy", ("AI",)),
            TopicMatch("executive-orders", ("executive order",)),
        ),
        "payload": AlertPayload(),
    }
    fields.update(changes)
    return Alert(**fields)  # type: ignore[arg-type]


def all_text(message: object) -> str:
    return json.dumps(message.blocks) + message.text  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a & b", "a &amp; b"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("<@U123>", "&lt;@U123&gt;"),
        ("<https://evil|click>", "&lt;https://evil|click&gt;"),
        ("&amp;", "&amp;amp;"),
        ("plain", "plain"),
    ],
)
def test_escape_table(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a", "https://example.com/a"),
        ("http://example.com/a?x=1|2", "http://example.com/a?x=1%7C2"),
        ("https://example.com/<b>", "https://example.com/%3Cb%3E"),
        ("HTTPS://EXAMPLE.com/x", "HTTPS://EXAMPLE.com/x"),
        ("javascript:alert(1)", None),
        ("file:///etc/passwd", None),
        ("ftp://example.com/x", None),
        ("https://", None),
        ("https://exa mple.com/", None),
        ("https://example.com/\nx", None),
        ("", None),
    ],
)
def test_safe_link_table(url: str, expected: str | None) -> None:
    assert safe_link(url) == expected


def test_hostile_feed_text_reaches_slack_literally() -> None:
    alert = make_alert(
        title=HOSTILE, source=HOSTILE, summary=f"{HOSTILE} AI", link="https://x.com/a|b>c"
    )
    message = render(alert)
    text = all_text(message)
    for ping in ("<!channel>", "<@U123>", "<https://evil|click>"):
        assert ping not in text
    assert "&lt;!channel&gt;" in message.blocks[0]["text"]["text"]
    # the only link syntax left is ours, with the URL's | and > encoded
    section_links = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    assert "<https://x.com/a%7Cb%3Ec|Read the story>" in section_links


MRKDWN = "*bold* ~strike~ _italic_ ```code``` `tick` > quote"
BIDI = "safe\u202egnp.exe\u202c \u2066isolated\u2069 \u202aembedded\u202d"


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("*bold*", "\u2217bold\u2217"),
        ("~strike~", "\u223cstrike\u223c"),
        ("_italic_", "\u02cditalic\u02cd"),
        ("```code```", "\u02cb\u02cb\u02cbcode\u02cb\u02cb\u02cb"),
        ("snake_case and F_1", "snake_case and F_1"),  # inside a word, _ opens nothing
        ("3 * 4 ~ 12", "3 \u2217 4 \u223c 12"),
        ("a\u202eb\u2066c\u2069d\u202ce", "abcde"),
        ("Arabic \u200fmark stays", "Arabic \u200fmark stays"),
    ],
)
def test_feed_text_loses_its_mrkdwn_and_bidi_controls(raw: str, plain: str) -> None:
    assert escape_within(raw, 500) == plain
    assert highlight(raw, ()) == plain


def texts(message: object) -> str:
    """Every string Slack receives in a message (blocks and fallback), unescaped, one per line."""
    found: list[str] = [message.text]  # type: ignore[attr-defined]
    pending: list[object] = list(message.blocks)  # type: ignore[attr-defined]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return "\n".join(found)


BIDI_CONTROLS = ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2069")


def test_mrkdwn_and_bidi_overrides_from_a_feed_never_reach_slack() -> None:
    alert = make_alert(
        title=f"{MRKDWN} {BIDI}",
        source=f"*NPR* {BIDI}",
        summary=f"{MRKDWN} AI {BIDI}",
        kind=AlertKind.UPDATE,
        payload=EditPayload(7, outlets=2),
    )
    reply = make_alert(
        kind=AlertKind.REPLY,
        payload=ReplyPayload(7, (ReplyItem("*x*", BIDI, "https://e.x/1"),)),
    )
    messages = [render(alert), render(reply), *render_digest([alert], label="t", now=NOW)]
    for message in messages:
        sent = texts(message)
        assert not [c for c in BIDI_CONTROLS if c in sent]
        for markup in ("*bold*", "~strike~", "_italic_", "```", "`tick`", "*x*", "*NPR*"):
            assert markup not in sent
    # Our own markup survives: the source and the matched term in bold, the topic as code.
    sent = texts(messages[0])
    assert "*\u2217NPR\u2217 safegnp.exe" in sent
    assert "*AI*" in sent and "`ai-policy`" in sent


def test_a_link_with_a_bidi_override_is_percent_encoded() -> None:
    assert safe_link("https://example.com/\u202eexe.pdf") == "https://example.com/%E2%80%AEexe.pdf"


def test_blocks_shape_and_fallback() -> None:
    message = render(make_alert())
    kinds = [b["type"] for b in message.blocks]
    assert kinds[0] == "header" and message.blocks[0]["text"]["type"] == "plain_text"
    assert "section" in kinds
    assert message.text.startswith("Trump kills AI security order")
    assert "NPR" in message.text
    assert message.metadata == {"event_type": EVENT_TYPE, "event_payload": {"alert_id": 7}}
    context = json.dumps(message.blocks)
    assert "2026-11-28 09:30 UTC" in context
    assert "`ai-policy`" in context and "`executive-orders`" in context


def test_long_texts_stay_within_limits() -> None:
    alert = make_alert(title="&" * 500, summary="<" * 10_000, source="x" * 5000)
    message = render(alert)
    assert len(message.blocks[0]["text"]["text"]) <= MAX_HEADER
    for block in message.blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= MAX_SECTION
    # truncation never splits an entity
    header = message.blocks[0]["text"]["text"]
    assert header.rstrip("\u2026").endswith("&amp;")


def test_escape_within_never_splits_entities() -> None:
    for limit in range(5, 40):
        out = escape_within("a<b>&c" * 10, limit)
        assert len(out) <= limit
        body = out.rstrip("\u2026")
        assert body.count("&") == body.count(";")


@pytest.mark.parametrize(
    ("summary", "terms", "expected"),
    [
        ("New AI rules from the EU", ("AI",), "New *AI* rules from the EU"),
        ("an executive order was signed", ("executive order",), "an *executive order* was signed"),
        ("MAIL and AI", ("ai",), "MAIL and *AI*"),
        ("AI Act & <AI>", ("AI Act", "AI"), "*AI Act* &amp; &lt;*AI*&gt;"),
        ("nothing here", ("AI",), "nothing here"),
    ],
)
def test_matched_terms_in_bold(summary: str, terms: tuple[str, ...], expected: str) -> None:
    assert highlight(summary, terms) == expected


def test_snippet_starts_near_the_first_match() -> None:
    text = "filler " * 300 + "the executive order on AI " + "tail " * 300
    out = highlight(text, ("executive order",), 400)
    assert "*executive order*" in out
    assert out.startswith("\u2026") and out.endswith("\u2026")
    assert len(out) <= 400


def test_unsafe_link_is_dropped_not_rendered() -> None:
    message = render(make_alert(link="javascript:alert(1)"))
    assert "javascript" not in all_text(message)


def test_metadata_round_trip() -> None:
    assert alert_ids_in(render(make_alert(id=42)).metadata) == {42}
    assert alert_ids_in({"event_type": "other", "event_payload": {"alert_id": 1}}) == set()
    assert alert_ids_in(None) == set()


def test_digest_splits_within_block_kit_limits() -> None:
    alerts = [
        make_alert(id=i, title=f"Story {i} <!here>", summary="AI " + "word " * 500)
        for i in range(1, 131)
    ]
    messages = render_digest(alerts, label="ai-policy", now=NOW)
    assert len(messages) > 1
    seen: list[int] = []
    for message in messages:
        assert len(message.blocks) <= MAX_BLOCKS
        assert sum(len(json.dumps(b)) for b in message.blocks) < 16_000
        assert "<!here>" not in all_text(message)
        assert message.text
        seen.extend(message.alert_ids)
        assert alert_ids_in(message.metadata) == set(message.alert_ids)
    assert seen == list(range(1, 131))
    assert "part 1 of" in messages[0].blocks[0]["text"]["text"]


def test_reply_and_notice_kinds() -> None:
    reply = render(
        make_alert(
            kind=AlertKind.REPLY,
            payload=ReplyPayload(7, (ReplyItem("Ars <b>", "Same <!channel>", "https://a.b/c"),)),
        )
    )
    assert "Also covered by Ars &lt;b&gt;" in all_text(reply)
    assert "<!channel>" not in all_text(reply)
    notice = render(make_alert(kind=AlertKind.OPS, payload=NoticePayload("feed <x> failing")))
    assert "feed &lt;x&gt; failing" in notice.text


def test_console_sink_prints_readably() -> None:
    import io

    out = io.StringIO()
    ConsoleSink(out).post("#ai-policy", render(make_alert(title=HOSTILE)))
    printed = out.getvalue()
    assert "#ai-policy" in printed
    assert HOSTILE in printed  # the reader sees the literal title
    assert "Read the story (https://example.com/story?id=1)" in printed


def test_many_outlets_in_one_reply_stay_whole_links() -> None:
    from aggregator.notify.render import render_replies

    items = tuple(ReplyItem(f"S{i}", "t" * 200, f"https://x.example/{i}") for i in range(60))
    message = render_replies(
        [make_alert(id=1, kind=AlertKind.REPLY, payload=ReplyPayload(1, items))]
    )
    body = message.blocks[0]["text"]["text"]
    assert len(body) <= MAX_SECTION
    assert body.count("<https://") == body.count(">")  # every link is closed
    assert "more" in body.splitlines()[-1]


def test_edit_keeps_the_parent_alert_id_in_metadata() -> None:
    edit = EditPayload(3, outlets=4, updated=True)
    message = render(make_alert(id=9, kind=AlertKind.UPDATE, payload=edit))
    assert alert_ids_in(message.metadata) == {3}
    assert "covered by 4 outlets" in json.dumps(message.blocks)
    assert "_updated_" in json.dumps(message.blocks)
