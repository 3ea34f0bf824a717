"""The console sink: with no Slack token, alerts are printed readably and count as sent."""

from __future__ import annotations

import html
import re
import sys
from datetime import datetime
from typing import Any, TextIO

from aggregator.notify.render import Message
from aggregator.notify.sink import Posted

_LINK = re.compile(r"<([^|>]+)\|([^>]*)>")
_DATE = re.compile(r"<!date\^[^|>]*\|([^>]*)>")


def plain(mrkdwn: str) -> str:
    """Slack mrkdwn as a terminal reader wants it: links as 'label (url)', entities decoded."""
    text = _DATE.sub(lambda m: m.group(1), mrkdwn)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    return html.unescape(text)


class ConsoleSink:
    """Prints each message to ``stream`` (stdout by default)."""

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._count = 0

    def post(self, channel: str, message: Message, *, thread_ts: str | None = None) -> Posted:
        self._count += 1
        where = f"{channel} (reply in thread {thread_ts})" if thread_ts else channel
        self._print(f"-> {where}", message)
        return Posted("console", f"{self._count}.000000")

    def update(self, channel: str, ts: str, message: Message) -> Posted:
        self._print(f"-> {channel} (edit of message {ts})", message)
        return Posted("console", ts)

    def find_alert(
        self,
        channel: str,
        alert_id: int,
        *,
        oldest: datetime | None = None,
        channel_id: str | None = None,
        thread_ts: str | None = None,
    ) -> Posted | None:
        return None  # the terminal keeps no history; printing twice harms no one

    def identity(self) -> str:
        return "the console (no Slack token set)"

    def _print(self, heading: str, message: Message) -> None:
        lines = [heading]
        for block in message.blocks:
            lines.extend("   " + line for line in _block_text(block).splitlines() if line.strip())
        if not message.blocks:
            lines.append("   " + plain(message.text))
        stream = self._stream or sys.stdout
        stream.write("\n".join(lines) + "\n\n")
        stream.flush()


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "header":
        return "== " + html.unescape(str(block["text"]["text"])) + " =="
    if kind == "context":
        return " ".join(plain(str(e.get("text", ""))) for e in block.get("elements", []))
    text = block.get("text")
    return plain(str(text.get("text", ""))) if isinstance(text, dict) else ""
