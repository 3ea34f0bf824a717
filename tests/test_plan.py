"""The cycle's planner, without SQLite: what one fetched feed means, decided as a value.

Every decision the pipeline used to make while writing (which entries are new, first-poll
silence, the story an entry joins, alerts per channel, thread replies, the feed's schedule and
its ops notice) is checked here on plain values: a stored view, a story window, a fixed clock.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config.model import Config, FeedConfig, Settings, TopicConfig
from aggregator.cycle.plan import (
    ChangedEntry,
    FeedPlan,
    Fetched,
    NewEntry,
    PlannedAlert,
    Policy,
    StoredView,
    plan_feed,
)
from aggregator.models import (
    Document,
    Entry,
    FeedResult,
    FeedState,
    FeedStatus,
    FetchError,
    FetchResult,
    NotModified,
    ParsedFeed,
    ParseError,
    TopicMatch,
)
from aggregator.relevance.tiers import Tier, load_scoring
from aggregator.stories.index import StoryIndex

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
URL = "https://news.example/feed.xml"
AI = TopicMatch("ai-policy", ("AI",))
EO = TopicMatch("executive-orders", ("order",))
ECON = TopicMatch("economy", ("tariff",))
TOPICS = (
    TopicConfig("ai-policy", "#ai-policy", "AI"),
    TopicConfig("executive-orders", "#executive-orders", "order"),
    TopicConfig("economy", "#executive-orders", "tariff"),  # shares a channel
)


def policy(*feeds: FeedConfig, **settings: object) -> Policy:
    config = Config(Settings(**settings), feeds or (FeedConfig(URL, "News"),), TOPICS)  # type: ignore[arg-type]
    return Policy.from_config(config)


def feed(**changes: object) -> FeedState:
    base = FeedState(URL, "News", FeedStatus.ACTIVE, None, None, None, 0, None, None, None, None,
                     first_polled_at=NOW - timedelta(days=3), failing_since=None)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def entry(n: int, title: str = "", *, hours: float = 1, url: str | None = None) -> Entry:
    link = url if url is not None else f"https://news.example/{n}"
    published = NOW - timedelta(hours=hours)
    title = title or f"Item number {n}"
    return Entry(URL, f"g{n}", link, link, title, "", published, f"h{n}", "News")


def fetched(**changes: object) -> Fetched:
    result = FetchResult(URL, URL, b"<rss/>", etag='"v2"', last_modified="Mon", elapsed=0.2)
    return Fetched(feed(**changes), result, "body-hash")


def parsed(*items: tuple[Entry, tuple[TopicMatch, ...]]) -> ParsedFeed:
    return ParsedFeed("News", tuple(e for e, _ in items), matches=tuple(m for _, m in items))


def plan(
    items: ParsedFeed | None,
    stored: StoredView | None = None,
    *,
    window: StoryIndex | None = None,
    rules: Policy | None = None,
    source: Fetched | None = None,
) -> FeedPlan:
    return plan_feed(source or fetched(), items, stored or StoredView(next_story_id=10),
                     rules or policy(), window if window is not None else StoryIndex(), NOW,
                     random.Random(1))  # fmt: skip


def only_new(p: FeedPlan) -> list[NewEntry]:
    return [s for s in p.steps if isinstance(s, NewEntry)]


# -- entries -------------------------------------------------------------------------------------


def test_a_matching_entry_starts_a_story_and_alerts_once_per_channel() -> None:
    p = plan(parsed((entry(1, "Trump signs AI order"), (AI, EO, ECON)), (entry(2), ())))
    first, dull = only_new(p)
    assert (first.story_id, first.starts_story, first.follow_up) == (10, True, False)
    assert first.alerts == (
        PlannedAlert("#ai-policy", (AI,)),
        PlannedAlert("#executive-orders", (EO, ECON)),  # two topics, one channel, one message
    )
    assert (dull.story_id, dull.matches, dull.alerts) == (None, (), ())  # stored, in no story
    assert (p.outcome.status, p.outcome.new_entries, p.outcome.matched) == ("fetched", 2, 1)
    assert p.record is not None and p.record.new_entries == 2


def test_entries_seen_before_are_skipped_or_edited_when_their_text_changed() -> None:
    same, changed, repeated = entry(1), entry(2), entry(3)
    stored = StoredView({"g1": "h1", "g2": "old"}, {}, 10)
    p = plan(parsed((same, (AI,)), (changed, (AI,)), (repeated, (AI,)), (repeated, (AI,))), stored)
    assert p.steps[0] == ChangedEntry(changed)
    assert [s.entry.guid for s in only_new(p)] == ["g3"]  # a guid repeated in a feed counts once


def test_a_first_poll_stores_old_items_silently_and_alerts_fresh_ones() -> None:
    source = fetched(first_polled_at=None)
    p = plan(parsed((entry(1, hours=30), (AI,)), (entry(2, "Fresh AI news", hours=2), (AI,))),
             source=source)  # fmt: skip
    old, fresh = only_new(p)
    assert (old.story_id, old.alerts) == (10, ())  # a story of its own, no alert
    assert [a.channel for a in fresh.alerts] == ["#ai-policy"]
    assert p.update is not None and p.update.first_poll


def test_a_link_stored_before_is_a_repeat_that_joins_its_story_and_never_alerts() -> None:
    shared = "https://other.example/story"
    stored = StoredView({}, {shared: 4}, 10)
    p = plan(parsed((entry(1, "AI law passes", url=shared), (AI,)), (entry(2, url=shared), ())),
             stored)  # fmt: skip
    matched, unmatched = only_new(p)
    assert (matched.story_id, matched.starts_story, matched.alerts, matched.follow_up) == (
        4, False, (), False,
    )  # fmt: skip
    assert unmatched.story_id == 4  # an unmatched item still joins the story of its link


def test_a_second_outlet_of_a_story_in_the_window_follows_it_up() -> None:
    window = StoryIndex()
    first = entry(90, "Trump signs executive order restricting lumber imports from Canada")
    window.add(3, window.features(first, NOW))
    later = entry(1, "Trump signs order restricting Canadian lumber imports", hours=0.5)
    (step,) = only_new(plan(parsed((later, (EO,))), window=window))
    assert (step.story_id, step.starts_story, step.follow_up) == (3, False, True)
    assert [a.channel for a in step.alerts] == ["#executive-orders"]  # the dedupe key decides
    assert len(window.story(3).members) == 2  # type: ignore[union-attr]  # the window learnt it


def test_an_entry_can_join_a_story_started_earlier_in_the_same_feed() -> None:
    a = entry(1, "Governor Newsom declares state of emergency over wildfires")
    b = entry(2, "Newsom declares a state of emergency as wildfires spread", hours=0.9)
    c = entry(3, "Senate confirms new ambassador to Japan", hours=0.8)
    steps = only_new(plan(parsed((a, (EO,)), (b, (EO,)), (c, (EO,)))))
    assert [(s.story_id, s.starts_story) for s in steps] == [(10, True), (10, False), (11, True)]
    assert steps[1].follow_up


def test_a_feeds_own_topics_apply_to_every_item() -> None:
    primary = FeedConfig(URL, "White House", topics=("executive-orders",), primary=True)
    p = plan(parsed((entry(1, "A proclamation on trade"), ())), rules=policy(primary))
    (step,) = only_new(p)
    assert step.matches == (TopicMatch("executive-orders", ()),)
    assert p.primary


def test_a_parsed_feed_without_matches_is_a_bug_said_out_loud() -> None:
    unmatched = ParsedFeed("News", (entry(1),))
    with pytest.raises(ValueError, match="parsed without matching"):
        plan(unmatched)


# -- the feed's schedule ---------------------------------------------------------------------------


def test_a_fetched_feed_stores_validators_body_hash_and_its_next_fetch() -> None:
    p = plan(parsed())
    u = p.update
    assert u is not None
    assert (u.status, u.error, u.validators, u.body_hash) == ("active", None, ('"v2"', "Mon"),
                                                              "body-hash")  # fmt: skip
    assert u.next_fetch_at is not None and NOW < u.next_fetch_at <= NOW + timedelta(minutes=5)
    assert u.ops_notified is False  # a success clears the notice, so a later episode is told


def test_an_unchanged_body_or_a_304_keeps_the_body_hash_and_moves_nothing_else() -> None:
    not_modified = Fetched(feed(), NotModified(URL, elapsed=0.1))
    p = plan(None, source=not_modified)
    assert p.outcome.status == FeedResult.UNCHANGED and p.steps == ()
    assert p.update is not None and (p.update.validators, p.update.body_hash) == (None, None)
    assert p.record is not None and p.record.status_code == 304
    same_body = plan(None)  # a 200 with the body parsed last time
    assert same_body.update is not None and same_body.update.validators == ('"v2"', "Mon")


def test_a_failing_feed_backs_off_and_tells_ops_once_it_has_failed_long_enough() -> None:
    error = FetchError(URL, "fetch failed: HTTP 503", "http", 503)
    since = NOW - timedelta(days=2)
    source = Fetched(feed(consecutive_errors=5, failing_since=since), error)
    p = plan(None, source=source, rules=policy(ops_channel="#ops"))
    u = p.update
    assert u is not None and u.status == FeedStatus.FAILING and u.consecutive_errors == 6
    assert u.next_fetch_at is not None and u.next_fetch_at - NOW >= timedelta(hours=1)
    assert u.ops_notified and p.notice is not None and p.notice.channel == "#ops"
    assert "keeps failing" in p.notice.text and p.outcome.reason == "fetch failed: HTTP 503"
    told = Fetched(feed(consecutive_errors=6, failing_since=since, ops_notified_at=NOW), error)
    again = plan(None, source=told, rules=policy(ops_channel="#ops"))
    assert again.notice is None and again.update is not None and again.update.ops_notified is None


def test_a_gone_feed_stops_and_a_parse_error_keeps_the_old_body_hash() -> None:
    gone = plan(None, source=Fetched(feed(), FetchError(URL, "HTTP 410 Gone", "gone", 410)))
    assert gone.outcome.status == FeedResult.GONE and gone.update is not None
    assert (gone.update.status, gone.update.next_fetch_at) == (FeedStatus.GONE, None)
    broken = plan(ParseError(URL, "parse failed: not XML"))
    assert broken.outcome.status == FeedResult.FAILED and broken.outcome.parsed
    assert broken.update is not None and broken.update.body_hash is None
    assert broken.update.validators == ('"v2"', "Mon")  # the fetch itself worked


def test_a_permanent_redirect_is_followed_and_said() -> None:
    moved = FetchResult(URL, "https://new.example/feed", b"<rss/>",
                        permanent_redirect="https://new.example/feed")  # fmt: skip
    p = plan(parsed(), source=Fetched(feed(), moved, "x"))
    assert p.moved_to == "https://new.example/feed"
    assert "moved permanently to https://new.example/feed" in p.outcome.reason


# -- the learned score -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    alert: float = 0.8
    review: float = 0.5


@dataclass(frozen=True)
class ScoreByWord:
    """A model whose score is written in the title: "strong" .9, "maybe" .6, else .1."""

    thresholds: Cut = Cut()

    def score(self, doc: Document, clauses: Collection[str]) -> float:
        return 0.9 if "strong" in doc.title else 0.6 if "maybe" in doc.title else 0.1

    def movers(
        self, doc: Document, clauses: Collection[str], n: int = 5
    ) -> list[tuple[str, float]]:
        return []


def test_a_topic_with_a_model_alerts_reviews_or_only_stores_by_its_score() -> None:
    scoring = load_scoring(
        [replace(TOPICS[0], model=Path("m.json"))], lambda path, topic: ScoreByWord()
    )
    rules = replace(policy(), scoring=scoring)
    items = parsed(
        (entry(1, "A strong AI story"), (AI, EO)),
        (entry(2, "A maybe AI story about tariffs"), (AI, ECON)),
        (entry(3, "A weak AI story"), (AI,)),
    )
    strong, maybe, weak = only_new(plan(items, rules=rules))
    assert [(a.channel, a.review) for a in strong.alerts] == [
        ("#ai-policy", False), ("#executive-orders", False),
    ]  # fmt: skip
    assert strong.matches[0].score == 0.9 and strong.matches[1].score is None  # EO has no model
    assert [(a.channel, [t.topic for t in a.topics], a.review) for a in maybe.alerts] == [
        ("#executive-orders", ["economy"], False), ("#ai-policy", ["ai-policy"], True),
    ]  # fmt: skip
    assert weak.alerts == () and weak.matches[0].score == 0.1
    assert (weak.story_id, weak.starts_story) == (12, True)  # still a story: the rule matched


def test_a_feeds_own_topics_alert_whatever_the_score() -> None:
    primary = FeedConfig(URL, "White House", topics=("ai-policy",), primary=True)
    scoring = load_scoring(
        [replace(TOPICS[0], model=Path("m.json"))], lambda path, topic: ScoreByWord()
    )
    rules = replace(policy(primary), scoring=scoring)
    (step,) = only_new(plan(parsed((entry(1, "A weak item"), (AI,))), rules=rules))
    assert [(a.channel, a.review) for a in step.alerts] == [("#ai-policy", False)]


def test_thresholds_in_topics_toml_win_over_the_models_own() -> None:
    topic = replace(TOPICS[0], model=Path("m.json"), alert_threshold=0.95, review_threshold=0.99)
    scorer = load_scoring([topic], lambda path, topic: ScoreByWord()).scorers["ai-policy"]
    assert (scorer.alert, scorer.review) == (0.95, 0.95)  # review is never above alert
    assert scorer.tier(0.9) == Tier.BELOW and scorer.tier(0.95) == Tier.ALERT
    default = load_scoring([replace(TOPICS[0], model=Path("m.json"))], lambda p, t: ScoreByWord())
    assert default.scorers["ai-policy"].tier(0.6) == Tier.REVIEW
