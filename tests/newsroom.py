"""Outlets that publish stories over time on a :class:`FeedServer`: alerts, replies and edits.

Each story is told by three outlets, one step apart, so that a service polling the feeds sees it
as the pipeline's three kinds of outbox rows:

- step ``n``: its first outlet publishes it (an alert in each topic channel);
- step ``n + 1``: a second outlet publishes it under a similar title (it joins the story: a thread
  reply under each alert, and an edit of each alert showing two outlets);
- step ``n + 2``: the first outlet rewrites its title (same guid, new text: an edit);
- step ``n + 3``: a third outlet publishes it (a reply and an edit, three outlets).

Stories are told apart by two made-up words only they use (``story_words``), which no other story
shares, so grouping joins exactly the outlets of one story. Every title and summary mentions AI and
senators or lawmakers, so each item matches both topics of :data:`TOPICS`. Feeds list their newest
items first and keep ``keep`` of them, as real feeds do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from xml.sax.saxutils import escape

from tests.feedserver import FeedServer

OUTLETS = ("alpha", "beta", "gamma")
SOURCES = {"alpha": "Alpha News", "beta": "Beta Wire", "gamma": "Gamma Daily"}
# Two topics in two channels: every item alerts in both.
TOPICS = (
    '[topics.ai-rules]\nchannel = "#ai-rules"\nquery = "AI"\n'
    '[topics.senate]\nchannel = "#senate"\nquery = "senate OR senators OR lawmakers"\n'
)
CHANNELS = ("#ai-rules", "#senate")
_SYLLABLES = (
    "ka",
    "zo",
    "mi",
    "vu",
    "re",
    "ta",
    "no",
    "li",
    "pe",
    "gu",
    "sa",
    "do",
    "bi",
    "fe",
    "qu",
    "wy",
)  # fmt: skip (two letters each: stems keep six)
REWRITE = " as talks stall"
_WORD = re.compile(r"\b[a-z]+x\b")


def story_words(n: int) -> tuple[str, str, str]:
    """Three made-up words that only story ``n`` uses."""

    def word(i: int) -> str:
        s = _SYLLABLES
        return s[i % 16] + s[(i // 16) % 16] + s[(i // 256) % 16] + "x"

    return word(3 * n), word(3 * n + 1), word(3 * n + 2)


def outlets_of(n: int) -> tuple[str, str, str]:
    """The outlets that tell story ``n``, in the order they publish it."""
    first = n % len(OUTLETS)
    return tuple(OUTLETS[(first + k) % len(OUTLETS)] for k in range(3))  # type: ignore[return-value]


@dataclass
class Item:
    guid: str
    title: str
    link: str
    summary: str
    published: datetime


def _item(n: int, outlet: str, telling: int, now: datetime) -> Item:
    a, b, c = story_words(n)
    title, summary = (
        (f"Senate weighs AI limits for {a} {b} {c}",
         f"The {a} {b} {c} case is now before the Senate."),
        (f"{a.title()} {b} {c} faces AI curbs from senators",
         f"Senators want {a} {b} {c} to follow new rules."),
        (f"Lawmakers target {a} {b} {c} with AI bill",
         f"A bill on {a} {b} {c} reached lawmakers today."),
    )[telling]  # fmt: skip
    return Item(f"{outlet}-{n}", title, f"https://{outlet}.example/story/{n}", summary, now)


class Newsroom:
    """The feeds of :data:`OUTLETS` on ``server``; :meth:`advance` publishes the next step."""

    def __init__(self, server: FeedServer, stories: int, *, per_step: int = 1, keep: int = 40):
        self.server = server
        self.stories = stories
        self.per_step = per_step
        self.keep = keep
        self.step = 0
        self.items: dict[str, list[Item]] = {o: [] for o in OUTLETS}  # newest first
        self.published: dict[int, list[str]] = {}  # story -> outlets that published it
        self._by_word = {story_words(n)[0]: n for n in range(stories)}
        for outlet in OUTLETS:
            self._serve(outlet)

    @property
    def steps(self) -> int:
        """How many steps tell every story to its end."""
        return -(-self.stories // self.per_step) + 3

    def urls(self) -> dict[str, str]:
        return {o: self.server.url(f"/{o}.xml") for o in OUTLETS}

    def advance(self, now: datetime | None = None) -> bool:
        """Publish what step ``self.step`` holds; False once every story is told."""
        if self.step >= self.steps:
            return False
        now = now or datetime.now(UTC)
        touched: set[str] = set()
        for stage in range(4):  # stage k of the stories that began k steps ago
            began = self.step - stage
            if began < 0:
                continue
            end = min((began + 1) * self.per_step, self.stories)
            for n in range(began * self.per_step, end):
                touched.add(self._stage(n, stage, now))
        self.step += 1
        for outlet in touched:
            self._serve(outlet)
        return True

    def _stage(self, n: int, stage: int, now: datetime) -> str:
        order = outlets_of(n)
        if stage == 2:  # the first outlet rewrites its title
            outlet = order[0]
            for item in self.items[outlet]:
                if item.guid == f"{outlet}-{n}":
                    item.title += REWRITE
            return outlet
        outlet = order[{0: 0, 1: 1, 3: 2}[stage]]
        telling = {0: 0, 1: 1, 3: 2}[stage]
        self.items[outlet].insert(0, _item(n, outlet, telling, now))
        self.published.setdefault(n, []).append(outlet)
        del self.items[outlet][self.keep :]
        return outlet

    def _serve(self, outlet: str) -> None:
        parts = [
            '<?xml version="1.0"?><rss version="2.0"><channel>'
            f"<title>{SOURCES[outlet]}</title><link>https://{outlet}.example/</link>"
        ]
        for item in self.items[outlet]:
            parts.append(
                f"<item><guid isPermaLink='false'>{item.guid}</guid>"
                f"<title>{escape(item.title)}</title><link>{item.link}</link>"
                f"<pubDate>{format_datetime(item.published)}</pubDate>"
                f"<description>{escape(item.summary)}</description></item>"
            )
        parts.append("</channel></rss>")
        self.server.serve(f"/{outlet}.xml", "".join(parts).encode())

    def story_of(self, text: str) -> int | None:
        """The story a message's text names (by its first made-up word), or None."""
        for word in _WORD.findall(text.lower()):
            n = self._by_word.get(word)
            if n is not None:
                return n
        return None

    def told(self) -> int:
        """How many stories have been published at least once."""
        return len(self.published)
