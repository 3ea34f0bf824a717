"""A deterministic feed corpus for the cycle benchmark, and a local server that serves it.

Feed ``i`` is generated from its own seeded generator, so a corpus of 100 feeds is the first 100
feeds of a corpus of 2,000 and every run sees the same bytes. Feeds mix RSS 2.0 and Atom, carry
20-100 items with HTML descriptions of 300-2,000 characters, and about 5% of the items are about
AI regulation or executive orders. A third of the feeds send no validators (no ETag, no
Last-Modified), as many publishers do; the rest send an ETag, a Last-Modified or both.

:class:`CorpusServer` serves the corpus on 127.0.0.1 (the test suite's feed server, which answers
conditional GETs with 304) and can *churn* feeds: add new items and change their validators.
"""

from __future__ import annotations

import html
import random
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.feedserver import FeedServer  # noqa: E402

SEED = 20261127
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # the corpus's "now": items are older
ON_TOPIC_SHARE = 0.05
HISTORY = timedelta(days=3)  # items spread over this span; a third fall inside the first-poll day

OUTLETS = (
    "Daily Ledger", "Metro Courier", "Harbor Times", "Valley Herald", "Capitol Wire",
    "Northern Star", "Evening Post", "Tribune Online", "Coastal Report", "Plains Gazette",
    "Civic Monitor", "Riverside Journal", "Summit News", "Lakeshore Dispatch", "Frontier Press",
)  # fmt: skip
PLACES = (
    "Springfield", "Riverton", "Lakewood", "Fairview", "Madison", "Georgetown", "Ashland",
    "Clinton", "Oakdale", "Milford", "Salem", "Franklin", "Bristol", "Dover", "Kingston",
)  # fmt: skip
GROUPS = (
    "city council", "school board", "county commissioners", "transit agency", "hospital",
    "university", "water district", "chamber of commerce", "library trustees", "zoning board",
    "parks department", "housing authority", "port authority", "fire department", "museum",
)  # fmt: skip
ACTIONS = (
    "approves", "delays", "debates", "rejects", "unveils", "expands", "postpones", "funds",
    "reviews", "celebrates", "questions", "announces", "cuts", "renews", "studies",
)  # fmt: skip
THINGS = (
    "budget for next year", "plan for downtown parking", "new bike lanes", "library renovation",
    "summer concert series", "road repair schedule", "flood defences", "youth sports program",
    "affordable housing project", "farmers market hours", "bridge inspection", "school lunch menu",
    "recycling contract", "stadium lease", "harbour dredging", "tree planting drive",
    "community health clinic", "winter shelter hours", "property tax rate", "bus timetable",
)  # fmt: skip
SPORTS = (
    "Rovers", "Hawks", "Mariners", "Pioneers", "Comets", "Wolves", "Rangers", "Falcons",
)  # fmt: skip
TITLE_SHAPES = (
    "{Place} {group} {action} {thing}",
    "{Place} {group} {action} {thing} after long debate",
    "Residents react as {group} {action} {thing}",
    "{Team} beat {Team2} {a}-{b} in {Place}",
    "{Team} fall to {Team2} in late rally",
    "Weather: rain and wind expected across {Place} this weekend",
    "{Place} family bakery wins regional pie contest",
    "Why the {thing} matters to {Place}",
    "Five things to know about the {thing}",
    "Opinion: {Place} deserves a better {thing}",
    "Markets close mixed as investors weigh retail earnings",
    "{Place} museum opens exhibition of local photography",
)  # fmt: skip
SENTENCES = (
    "Officials in {Place} said the {thing} would be discussed again next month.",
    "The {group} met on Tuesday evening, and more than a hundred residents attended.",
    "Several speakers asked for more time to study the {thing} before any vote.",
    "Supporters say the change will save money over the next decade.",
    "Critics point out that similar plans in {Place2} ran over budget.",
    "A spokesperson for the {group} declined to comment on the timing.",
    "The final figures are expected to be published early next week.",
    "Local businesses have mixed feelings about the proposal.",
    "\u201cWe have listened to every concern,\u201d the chair told the meeting.",
    "Attendance at the weekend events rose by a fifth compared with last year.",
    "The {Team} travel to {Place2} on Saturday for their next fixture.",
    "Forecasters expect temperatures to return to normal by Thursday.",
    "Volunteers will be on hand to answer questions at the town hall.",
    "The report runs to 240 pages & includes a dozen recommendations.",
    "Earlier coverage of the {thing} is available in our archive.",
)  # fmt: skip
ON_TOPIC_TITLES = (
    "{Body} advances bill to regulate artificial intelligence in {domain}",
    "President signs executive order on AI standards for {domain}",
    "Lawmakers in {Place} weigh AI regulation after {incident}",
    "White House drafts executive order on {export}",
    "FTC opens investigation into AI chatbot makers over {harm}",
    "Governor of {Place} signs executive order creating AI task force on {domain}",
    "EU regulators finalise AI Act rules for {domain}",
    "Trump revokes executive order on artificial intelligence in {domain}",
    "{Guild} sue AI company over training on their work",
    "{Body} debates moratorium on state AI laws for {domain}",
)  # fmt: skip
BODIES = (
    "Senate panel", "House committee", "State assembly", "Congress", "Legislature",
    "City council in {Place}",
)  # fmt: skip
DOMAINS = (
    "hiring", "health care", "policing", "lending", "schools", "elections", "housing",
    "insurance", "welfare benefits", "border screening", "courts", "energy grids",
)  # fmt: skip
INCIDENTS = (
    "deepfake election ads", "a chatbot data leak", "a facial recognition arrest",
    "a voice-clone scam", "a biased hiring tool", "fake robocalls",
)  # fmt: skip
EXPORTS = (
    "chip export controls to China", "advanced AI chip exports", "cloud computing exports",
    "AI model weight exports",
)  # fmt: skip
HARMS = ("child safety", "teen mental health", "false advertising", "data privacy", "fraud")
GUILDS = ("Authors", "Artists", "Musicians", "News publishers", "Photographers", "Actors")
ON_TOPIC_SENTENCES = (
    "The executive order directs agencies to report on AI risks in {domain} within {days} days.",
    "{Official} said the rules on artificial intelligence would take effect in {month}.",
    "The measure, known as {bill}, passed by a vote of {a}{b} to {b}{a}.",
    "Industry groups warned that the regulation could slow AI investment in {Place}.",
    "Civil liberties advocates welcomed the move but asked {Official} for stronger enforcement.",
    "Under {bill}, {domain} providers must disclose when an automated system makes a decision.",
    "Regulators in {Place2} opened a review of AI tools used in {domain} after {incident}.",
    "{Official} told reporters the administration would defend the order in court.",
)  # fmt: skip
OFFICIALS = (
    "Senator Alvarez", "Governor Brooks", "Commissioner Chen", "Representative Dubois",
    "Attorney General Evans", "Secretary Faulkner", "Senator Garcia", "Mayor Hollis",
    "Assemblywoman Ito", "Commissioner Jensen", "Senator Kowalski", "Governor Lindqvist",
)  # fmt: skip
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "September")
SYNDICATED_SHARE = 0.3  # on-topic items that cover one of a few big stories, as wires do
BIG_STORIES = 20


@dataclass(frozen=True, slots=True)
class Item:
    guid: str
    title: str
    link: str
    published: datetime
    html: str
    on_topic: bool


@dataclass(frozen=True, slots=True)
class CorpusFeed:
    index: int
    path: str
    kind: str  # "rss" | "atom"
    validators: str  # "none" | "etag" | "last_modified" | "both"
    title: str
    site: str
    items: tuple[Item, ...]
    version: int = 0  # bumped by each churn; part of the ETag

    @property
    def content_type(self) -> str:
        kind = "atom" if self.kind == "atom" else "rss"
        return f"application/{kind}+xml; charset=utf-8"

    @property
    def etag(self) -> str | None:
        if self.validators in ("etag", "both"):
            return f'"f{self.index}-v{self.version}"'
        return None

    @property
    def last_modified(self) -> str | None:
        if self.validators in ("last_modified", "both"):
            return format_datetime(self.items[0].published, usegmt=True)
        return None


def build_corpus(feeds: int, *, seed: int = SEED, now: datetime = NOW) -> list[CorpusFeed]:
    """``feeds`` feeds; feed ``i`` is the same whatever the size of the corpus."""
    return [_feed(i, seed, now) for i in range(feeds)]


def churned(feed: CorpusFeed, new_items: int, now: datetime, *, seed: int = SEED) -> CorpusFeed:
    """The same feed a little later: ``new_items`` items on top and new validators."""
    version = feed.version + 1
    rng = random.Random(f"{seed}:{feed.index}:churn:{version}")
    fresh = [
        _item(rng, feed.site, f"{feed.index}-c{version}-{k}", now - timedelta(minutes=5 * k))
        for k in range(new_items)
    ]
    return replace(feed, items=(*fresh, *feed.items), version=version)


def render(feed: CorpusFeed) -> bytes:
    return (_atom(feed) if feed.kind == "atom" else _rss(feed)).encode("utf-8")


def churn_indices(feeds: int, share: float = 0.1) -> list[int]:
    """Which feeds change in the churn cycle: spread evenly over the corpus."""
    step = max(1, round(1 / share))
    return list(range(0, feeds, step))


class CorpusServer:
    """Serves a corpus on 127.0.0.1 with ETag/Last-Modified and 304s."""

    def __init__(self, corpus: list[CorpusFeed]) -> None:
        self.corpus = list(corpus)
        self._server = FeedServer()
        self.bodies: list[bytes] = [render(f) for f in self.corpus]

    def __enter__(self) -> CorpusServer:
        self._server.start()
        for i in range(len(self.corpus)):
            self._publish(i)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stop()

    @property
    def urls(self) -> list[str]:
        return [self._server.url(f.path) for f in self.corpus]

    def churn(self, indices: list[int], new_items: int, now: datetime) -> None:
        for i in indices:
            self.corpus[i] = churned(self.corpus[i], new_items, now)
            self.bodies[i] = render(self.corpus[i])
            self._publish(i)

    def reset(self, corpus: list[CorpusFeed]) -> None:
        """Serve ``corpus`` again (undo churn between repetitions)."""
        for i, feed in enumerate(corpus):
            if self.corpus[i] is not feed:
                self.corpus[i] = feed
                self.bodies[i] = render(feed)
                self._publish(i)

    def statuses(self) -> dict[int, int]:
        return dict(self._server.statuses())

    def _publish(self, i: int) -> None:
        feed = self.corpus[i]
        self._server.serve(
            feed.path,
            self.bodies[i],
            content_type=feed.content_type,
            etag=feed.etag,
            last_modified=feed.last_modified,
        )


# -- generation -----------------------------------------------------------------------------------


def _feed(index: int, seed: int, now: datetime) -> CorpusFeed:
    rng = random.Random(f"{seed}:{index}")
    kind = "atom" if rng.random() < 0.4 else "rss"
    validators = "none" if index % 3 == 0 else rng.choice(("etag", "last_modified", "both", "both"))
    outlet = f"{rng.choice(OUTLETS)} {rng.choice(PLACES)}"
    site = f"https://{outlet.lower().replace(' ', '-')}-{index}.example"
    count = rng.randint(20, 100)
    span = HISTORY.total_seconds()
    stamps = sorted((now - timedelta(seconds=rng.uniform(60, span)) for _ in range(count)),
                    reverse=True)  # fmt: skip
    items = tuple(_item(rng, site, f"{index}-{k}", at) for k, at in enumerate(stamps))
    return CorpusFeed(index, f"/feeds/{index:05d}.xml", kind, validators, outlet, site, items)


def _item(rng: random.Random, site: str, key: str, published: datetime) -> Item:
    on_topic = rng.random() < ON_TOPIC_SHARE
    slots = _slots(rng)
    if on_topic and rng.random() < SYNDICATED_SHARE:
        # One of a few big stories: every outlet covering it tells the same details.
        slots = _slots(random.Random(f"story:{rng.randrange(BIG_STORIES)}"))
    shape = rng.choice(ON_TOPIC_TITLES if on_topic else TITLE_SHAPES)
    title = shape.format(**slots)
    title = title[:1].upper() + title[1:]
    slug = "-".join(title.lower().split()[:8]).strip(".,:")
    link = f"{site}/{published:%Y/%m/%d}/{slug}-{key}"
    story = slots if on_topic else None
    return Item(key, title, link, published, _description(rng, site, story), on_topic)


def _slots(rng: random.Random) -> dict[str, str]:
    team, team2 = rng.sample(SPORTS, 2)
    place, place2 = rng.sample(PLACES, 2)
    return {
        "Body": rng.choice(BODIES).format(Place=place),
        "domain": rng.choice(DOMAINS),
        "incident": rng.choice(INCIDENTS),
        "export": rng.choice(EXPORTS),
        "harm": rng.choice(HARMS),
        "Guild": rng.choice(GUILDS),
        "Official": rng.choice(OFFICIALS),
        "bill": f"{rng.choice(('SB', 'HB', 'AB', 'H.R.'))} {rng.randint(100, 9999)}",
        "days": str(rng.choice((30, 45, 60, 90, 120, 180))),
        "month": rng.choice(MONTHS),
        "Place": place,
        "Place2": place2,
        "group": rng.choice(GROUPS),
        "action": rng.choice(ACTIONS),
        "thing": rng.choice(THINGS),
        "Team": team,
        "Team2": team2,
        "a": str(rng.randint(0, 5)),
        "b": str(rng.randint(0, 4)),
    }


def _description(rng: random.Random, site: str, story: dict[str, str] | None) -> str:
    """HTML of 300-2,000 characters: paragraphs, links, emphasis, the odd image and entity.

    An on-topic item (``story`` holds its details) tells those details in about half of its
    sentences; the rest, like every other item, is local-news filler.
    """
    target = rng.randint(300, 2000)
    paragraphs: list[str] = []
    size = 0
    while True:
        sentences = []
        for _ in range(rng.randint(2, 5)):
            if story is not None and rng.random() < 0.5:
                sentence = rng.choice(ON_TOPIC_SENTENCES).format(**story)
            else:
                sentence = rng.choice(SENTENCES).format(**_slots(rng))
            sentences.append(html.escape(sentence, quote=False))
        if rng.random() < 0.5:
            href = f"{site}/related/{rng.randint(1000, 9999)}"
            sentences.append(f'<a href="{href}">Read more</a>.')
        if rng.random() < 0.3:
            sentences[0] = f"<strong>{sentences[0]}</strong>"
        paragraph = "<p>" + " ".join(sentences) + "</p>"
        if size + len(paragraph) > target and paragraphs:
            break
        paragraphs.append(paragraph)
        size += len(paragraph)
        if size >= target:
            break
    if rng.random() < 0.2:
        paragraphs.insert(0, f'<img src="{site}/img/{rng.randint(1, 999)}.jpg" alt="" />')
    text = "".join(paragraphs)
    return text if len(text) >= 300 else text + "<p>" + "&nbsp;" * ((300 - len(text)) // 6 + 1)


def _rss(feed: CorpusFeed) -> str:
    rng = random.Random(f"rss:{feed.index}")
    cdata = rng.random() < 0.5  # half the RSS feeds wrap HTML in CDATA, half escape it
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" '
        'xmlns:atom="http://www.w3.org/2005/Atom"><channel>',
        f"<title>{html.escape(feed.title)}</title><link>{feed.site}/</link>",
        f"<description>News from {html.escape(feed.title)}</description><language>en</language>",
        f"<lastBuildDate>{format_datetime(feed.items[0].published)}</lastBuildDate>",
    ]
    for item in feed.items:
        body = f"<![CDATA[{item.html}]]>" if cdata else html.escape(item.html, quote=False)
        out.append(
            f"<item><title>{html.escape(item.title)}</title><link>{item.link}</link>"
            f'<guid isPermaLink="false">{feed.site}/id/{item.guid}</guid>'
            f"<pubDate>{format_datetime(item.published)}</pubDate>"
            f"<category>Local</category><description>{body}</description></item>\n"
        )
    out.append("</channel></rss>\n")
    return "".join(out)


def _atom(feed: CorpusFeed) -> str:
    out = [
        '<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">',
        f"<title>{html.escape(feed.title)}</title><id>{feed.site}/</id>",
        f'<link rel="alternate" href="{feed.site}/"/>',
        f"<updated>{feed.items[0].published.isoformat()}</updated>",
    ]
    for item in feed.items:
        stamp = item.published.isoformat()
        out.append(
            f"<entry><title>{html.escape(item.title)}</title>"
            f'<link rel="alternate" href="{item.link}"/>'
            f"<id>tag:{feed.site[8:]},2026:{item.guid}</id>"
            f"<published>{stamp}</published><updated>{stamp}</updated>"
            f"<author><name>Staff</name></author>"
            f'<summary type="html">{html.escape(item.html, quote=False)}</summary></entry>\n'
        )
    out.append("</feed>\n")
    return "".join(out)
