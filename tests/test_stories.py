"""The "same story?" decision and the window index behind it (pure: no clock, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.models import Entry, TopicMatch
from aggregator.store import Store
from aggregator.stories.decide import StoryDecision, decide, replay_decision
from aggregator.stories.features import GroupingParams, primary_source_link, similarity
from aggregator.stories.index import StoryIndex, warm_index
from aggregator.text.stems import stem, stems
from tests.storing import Item, store_items

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
WH_LINK = (
    "https://www.whitehouse.gov/presidential-actions/2026/03/protecting-american-lumber-mills/"
)


def entry(
    title: str,
    summary: str = "",
    *,
    source: str = "NPR",
    hours: float = 0.0,
    link: str = "",
    links: tuple[str, ...] = (),
) -> Entry:
    link = link or f"https://{source.lower().replace(' ', '')}.example/{abs(hash(title))}"
    return Entry(
        feed_url=f"https://{source.lower().replace(' ', '')}.example/feed",
        guid=link,
        link=link,
        canonical_url=link,
        title=title,
        summary=summary,
        published=T0 + timedelta(hours=hours),
        content_hash=title,
        source=source,
        links=links,
    )


class Grouper:
    """Feeds entries through decide() and the index, as the pipeline does."""

    def __init__(self, params: GroupingParams | None = None) -> None:
        self.index = StoryIndex(params=params)
        self.next_id = 100

    def add(self, item: Entry) -> StoryDecision:
        assert item.published is not None
        now = item.published
        self.index.expire(now - timedelta(hours=72))
        feats = self.index.features(item, now)
        decision = decide(feats, self.index, now, timedelta(hours=72), self.index.params)
        story_id = decision.story_id
        if story_id is None:
            story_id = self.next_id
            self.next_id += 1
        self.index.add(story_id, feats)
        return decision


SIGNED = entry(
    "Trump signs executive order imposing tariffs on Canadian lumber",
    "President Trump signed an order on Monday placing a 25% tariff on softwood lumber imported "
    "from Canada.",
)
SIGNED_ELSEWHERE = entry(
    "Trump slaps 25% tariff on Canadian softwood lumber in new executive order",
    "The order targets lumber imports from Canada, which the White House says hurt US mills.",
    source="Ars Technica",
    hours=2,
)


def test_same_event_from_another_outlet_joins_the_story() -> None:
    g = Grouper()
    first = g.add(SIGNED)
    second = g.add(SIGNED_ELSEWHERE)
    assert first.story_id is None
    assert second.story_id == 100
    assert second.score >= GroupingParams().threshold
    text = second.explain()
    assert "joins story 100" in text
    assert "'lumber'" in text and "title+summary similarity" in text


def test_new_development_is_a_new_story() -> None:
    g = Grouper()
    g.add(SIGNED)
    g.add(SIGNED_ELSEWHERE)
    ruling = g.add(
        entry(
            "Judge blocks Trump's tariff on Canadian lumber",
            "A federal judge on Tuesday temporarily blocked the 25% lumber tariff, siding with "
            "importers.",
            source="BBC",
            hours=30,
        )
    )
    assert ruling.story_id is None
    assert any("new action in the title" in r for r in ruling.reasons)
    assert "starts a new story" in ruling.explain()


def test_different_event_with_the_same_vocabulary_is_a_new_story() -> None:
    g = Grouper()
    g.add(SIGNED)
    chips = g.add(
        entry(
            "Trump signs executive order on AI chip exports",
            "President Trump signed an order on Monday tightening export rules for advanced AI "
            "chips sold to China.",
            source="BBC",
            hours=1,
        )
    )
    assert chips.story_id is None
    assert chips.score < GroupingParams().threshold


def test_same_outlet_needs_more_evidence_than_another_outlet() -> None:
    first = entry("Wildfire forces evacuations near Boulder", "Thousands flee a fast-moving fire.")
    follow = entry(
        "Boulder wildfire evacuations expand",
        "More neighbourhoods are told to flee the fire.",
        hours=3,
    )
    scores = {}
    for source in ("NPR", "CNN"):
        g = Grouper()
        g.add(first)
        moved = Entry(**{**{f: getattr(follow, f) for f in Entry.__slots__}, "source": source})
        scores[source] = g.add(moved).score
    assert scores["CNN"] - scores["NPR"] == pytest.approx(GroupingParams().same_source_penalty)


def test_a_shared_primary_source_link_joins_whatever_the_words() -> None:
    g = Grouper()
    g.add(
        entry(
            "Protecting American Lumber Mills",
            "By the authority vested in me as President by the Constitution and the laws of the "
            "United States of America, it is hereby ordered:",
            source="whitehouse.gov",
            link=WH_LINK,
        )
    )
    news = g.add(
        entry(
            "What the new order means for home builders",
            "Builders warn that prices will rise.",
            source="CNN",
            hours=5,
            links=(WH_LINK.replace("https://www.", "http://"),),
        )
    )
    assert news.story_id == 100
    assert news.score == 1.0
    assert any(r.startswith("shares whitehouse.gov link") for r in news.reasons)


def test_a_shared_canonical_link_joins() -> None:
    g = Grouper()
    g.add(entry("Senate passes the budget", link="https://news.example/budget"))
    again = g.add(
        entry(
            "Budget passes Senate, 51-49", source="AP", hours=1, link="https://news.example/budget"
        )
    )
    assert again.story_id == 100
    assert again.reasons[0] == "same canonical link https://news.example/budget"


def test_stories_outside_the_window_are_not_joined_and_expire() -> None:
    g = Grouper()
    g.add(SIGNED)
    late = Entry(
        **{
            **{f: getattr(SIGNED_ELSEWHERE, f) for f in Entry.__slots__},
            "published": T0 + timedelta(hours=80),
        }
    )
    assert g.add(late).story_id is None
    assert g.index.story(100) is None  # expired when the late entry arrived
    assert len(g.index) == 1


def test_closeness_in_time_counts() -> None:
    params = GroupingParams()
    scores = []
    for hours in (2, 30):
        g = Grouper()
        g.add(SIGNED)
        moved = Entry(
            **{
                **{f: getattr(SIGNED_ELSEWHERE, f) for f in Entry.__slots__},
                "published": T0 + timedelta(hours=hours),
            }
        )
        scores.append(g.add(moved).score)
    expected = params.penalty_per_day * (30 - params.grace_hours) / 24
    assert scores[0] - scores[1] == pytest.approx(expected)


def test_decide_does_not_change_the_index_and_uses_the_given_now() -> None:
    index = StoryIndex()
    feats = index.features(SIGNED, T0)
    index.add(7, feats)
    before = (len(index), list(index.story(7).members))  # type: ignore[union-attr]
    future = Entry(**{**{f: getattr(SIGNED, f) for f in Entry.__slots__}, "published": None})
    decision = decide(future, index, T0 + timedelta(hours=1))
    assert decision.story_id == 7
    assert (len(index), list(index.story(7).members)) == before  # type: ignore[union-attr]
    # an entry without a date (or dated in the future) is placed at ``now``
    assert index.features(future, T0 + timedelta(hours=1)).published == T0 + timedelta(hours=1)


def test_rename_moves_a_provisional_story_to_its_database_id() -> None:
    index = StoryIndex()
    index.add(-1, index.features(SIGNED, T0))
    index.rename(-1, 42)
    assert index.story(-1) is None
    found = decide(SIGNED_ELSEWHERE, index, T0 + timedelta(hours=2))
    assert found.story_id == 42
    assert index.expire(T0 + timedelta(days=10)) == 1
    assert len(index) == 0


def test_candidates_are_bounded_whatever_the_window() -> None:
    index = StoryIndex()
    for k in range(300):
        item = entry(f"Lumber tariff story number {k} about Canadian mills", hours=k / 100)
        index.add(k, index.features(item, item.published or T0))
    decision = decide(SIGNED_ELSEWHERE, index, T0 + timedelta(hours=3))
    assert decision.candidates <= GroupingParams().max_candidates


def test_common_words_alone_never_make_a_story() -> None:
    g = Grouper()
    g.add(
        entry("Trump says this will be the first", "People say the state will be first this year.")
    )
    other = g.add(entry("The president says this is the first", "People say it is new.", hours=1))
    assert other.story_id is None
    assert other.reasons == ("no recent story shares a rare word",)


def test_stems_fold_inflections_and_cut_long_words() -> None:
    assert stem("Blocks") == stem("blocked") == stem("block") == "block"
    assert stem("tariffs") == "tariff"
    assert stem("ruling") == stem("rules") == stem("ruled") == "rul"
    assert stem("Grantmaking") == "grantm"  # cut to six letters
    assert stem("U.S.") == "us"
    assert stems("<b>Judges</b> rule") == ["judg", "rul"]


def test_primary_source_links() -> None:
    assert primary_source_link(WH_LINK) == (
        "whitehouse.gov/presidential-actions/2026/03/protecting-american-lumber-mills"
    )
    assert primary_source_link("https://www.federalregister.gov/d/2026-01234") is not None
    assert (
        primary_source_link("https://www.congress.gov/bill/119th-congress/house-bill/1") is not None
    )
    assert primary_source_link("https://www.whitehouse.gov/") is None
    assert primary_source_link("https://www.whitehouse.gov/presidential-actions/") is None
    assert primary_source_link("https://notwhitehouse.gov.example/x/y/z") is None
    assert primary_source_link("not a url") is None


def test_similarity_is_symmetric_and_bounded() -> None:
    index = StoryIndex()
    a = index.features(SIGNED, T0)
    b = index.features(SIGNED_ELSEWHERE, T0)
    ab, shared = similarity(a, b)
    ba, _ = similarity(b, a)
    assert ab == pytest.approx(ba)
    assert 0 < ab < 1
    assert similarity(a, a)[0] == pytest.approx(1.0)
    assert "lumber" in shared


def test_index_warms_from_the_database_and_keeps_deciding(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "agg.db")
    try:
        now = T0 + timedelta(hours=1)
        topic = (TopicMatch("executive-orders", ("executive order",)),)
        store_items(store, [Item(SIGNED, topic)], now)
        unmatched = entry("Local bakery wins county fair pie contest", hours=0)
        store_items(store, [Item(unmatched)], now)  # never a story we alert on
        story_id = store.entries.recent_story_entries(now - timedelta(hours=72))[0][0]
        old = entry("An old story about zeppelins", hours=-200)
        store_items(store, [Item(old, topic)], T0 - timedelta(hours=200))

        index = StoryIndex()
        warm = store.entries.recent_story_entries(now - timedelta(hours=72))
        assert [(sid, e.title) for sid, e in warm] == [(story_id, SIGNED.title)]
        for sid, stored in warm:
            index.add(sid, index.features(stored, now))

        decision = decide(SIGNED_ELSEWHERE, index, T0 + timedelta(hours=2))
        assert decision.story_id == story_id
        store_items(store, [Item(SIGNED_ELSEWHERE, topic, story_id=decision.story_id)], now)
        members = store.entries.recent_story_entries(now - timedelta(hours=72))
        assert [sid for sid, _ in members] == [story_id, story_id]
    finally:
        store.close()


PREAMBLE = (
    "By the authority vested in me as President by the Constitution and the laws of the United "
    "States of America, it is hereby ordered: Section 1. Purpose."
)
ORDER_TOPICS = (
    "Restoring Gold Standard Science",
    "Enabling Competition in the Commercial Space Industry",
    "Reforming Accreditation of Universities",
    "Modernizing Federal Grantmaking Oversight",
    "Ending Subsidies for Public Broadcasting",
    "Unleashing American Offshore Minerals",
    "Improving Air Traffic Control Hiring",
    "Establishing the Gold Card Visa",
    "Protecting Coastal Fisheries",
    "Streamlining Nuclear Reactor Permits",
    "Promoting Domestic Shipbuilding",
)


def test_an_outlets_boilerplate_is_learned_and_ignored() -> None:
    g = Grouper()
    for k, title in enumerate(ORDER_TOPICS):
        g.add(entry(title, PREAMBLE, source="White House", hours=k * 30))
    assert {"vest", "hereby", "consti"} <= g.index.boilerplate("White House")
    # A different order, on the same day, from another primary feed with the same preamble.
    other = g.add(
        entry(
            "Securing Rare Earth Supply Chains",
            PREAMBLE,
            source="Federal Register",
            hours=(len(ORDER_TOPICS) - 1) * 30 + 1,
        )
    )
    assert other.story_id is None


def test_replay_explains_a_stored_decision() -> None:
    earlier = [(5, SIGNED)]
    now = T0 + timedelta(hours=2)
    decision = replay_decision(SIGNED_ELSEWHERE, earlier, now, timedelta(hours=72))
    assert decision.story_id == 5
    assert "joins story 5" in decision.explain()
    warmed = warm_index(StoryIndex(), earlier, now)
    assert warmed.story(5) is not None


def _score_by_hand(feats_entry: Entry, index: StoryIndex, story_id: int) -> float:
    """The documented score: mean over the story's latest members of cosine minus penalties."""
    params = index.params
    assert feats_entry.published is not None
    feats = index.features(feats_entry, feats_entry.published)
    story = index.story(story_id)
    assert story is not None
    members = story.members[-params.max_members :]
    own = index.boilerplate(feats.source)
    total = 0.0
    for m in members:
        raw, _ = similarity(feats, m, own | index.boilerplate(m.source))
        hours = abs((feats.published - m.published).total_seconds()) / 3600
        total += raw - params.penalty_per_day * max(0.0, hours - params.grace_hours) / 24
        if m.source == feats.source:
            total -= params.same_source_penalty
    return total / len(members)


def test_the_fast_score_equals_the_mean_of_member_similarities() -> None:
    # Scores come from one dot product with a cached sum of the members' unit vectors; members
    # whose outlet has boilerplate are compared one by one. Both must give the documented mean,
    # also after the story grows and after an outlet's boilerplate is learned.
    g = Grouper()
    for k, title in enumerate(ORDER_TOPICS):
        g.add(entry(title, PREAMBLE, source="White House", hours=k * 30))
    story_id = g.next_id
    g.index.add(story_id, g.index.features(SIGNED, T0), SIGNED.title)
    probes = [
        SIGNED_ELSEWHERE,
        entry(SIGNED.title, PREAMBLE, source="White House", hours=3),
        entry("Lumber tariff order draws praise from mills", "Softwood lumber, Canada", hours=4),
    ]
    joined = 0
    for k, probe in enumerate(probes):
        assert probe.published is not None
        decision = decide(g.index.features(probe, probe.published), g.index, probe.published)
        scored = decision.score
        expected = _score_by_hand(probe, g.index, story_id)
        assert decision.story_id in (story_id, None)
        if decision.story_id == story_id:
            joined += 1
            assert scored == pytest.approx(expected, abs=1e-9)
        else:
            assert expected < g.index.params.threshold
        # grow the story with a member from an outlet with boilerplate, then with another
        member = entry(f"{SIGNED.title} {k}", PREAMBLE, source="White House", hours=1 + k)
        g.index.add(story_id, g.index.features(member, member.published or T0))
    assert joined >= 2
    assert g.index.boilerplate("White House")
    story = g.index.story(story_id)
    assert story is not None and len(story.members) == 4


def test_a_decision_without_reasons_has_the_same_story_and_score() -> None:
    g = Grouper()
    g.add(SIGNED)
    probes = [SIGNED_ELSEWHERE, entry("Lumber mills praise tariff order", "Canada", hours=30)]
    for probe in probes:
        assert probe.published is not None
        feats = g.index.features(probe, probe.published)
        full = decide(feats, g.index, probe.published)
        bare = decide(feats, g.index, probe.published, explain=False)
        assert (bare.story_id, bare.score, bare.candidates) == (
            full.story_id,
            full.score,
            full.candidates,
        )
        # the evidence is left out; a one-line verdict may stay
        assert len(bare.reasons) <= 1 < len(full.reasons)
        assert full.reasons[: len(bare.reasons)] == bare.reasons


def test_a_member_sum_kept_up_to_date_equals_one_summed_from_scratch() -> None:
    # The cached sum is extended as a story grows; it must be bit for bit the sum a fresh index
    # computes, in the same stem order, also past the limit of members compared.
    limit = 4
    grown = Grouper().index
    titles = [f"{SIGNED.title} {k}" for k in range(7)]
    for k, title in enumerate(titles):
        feats = grown.features(entry(title, SIGNED.summary, source=f"Outlet {k % 3}"), T0)
        grown.add(1, feats)
        story = grown.story(1)
        assert story is not None
        incremental = grown.member_sum(story, limit)
        fresh = StoryIndex()
        for member in story.members:
            fresh.add(1, member)
        fresh_story = fresh.story(1)
        assert fresh_story is not None
        from_scratch = fresh.member_sum(fresh_story, limit)
        assert list(incremental[0].items()) == list(from_scratch[0].items())
        assert incremental[1] == from_scratch[1]
