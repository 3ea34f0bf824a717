"""How the alert and review thresholds are chosen from out-of-fold scores (pure Python)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from aggregator.relevance.thresholds import (
    CURATED,
    GRID,
    SAMPLED,
    TEAM,
    choose_thresholds,
    combined,
    counts,
    curve,
    threshold_pool,
)


@dataclass(frozen=True, slots=True)
class Scored:
    origin: str
    label: int
    unsure: bool
    net: bool


def items(*groups: tuple[int, int, float], origin: str = SAMPLED) -> list[tuple[Scored, float]]:
    """(how many, label, score) groups of items the rule caught."""
    return [(Scored(origin, label, False, True), score)
            for n, label, score in groups for _ in range(n)]  # fmt: skip


def choose(pairs: list[tuple[Scored, float]]) -> tuple[float, float]:
    return choose_thresholds([ex for ex, _ in pairs], [s for _, s in pairs])


# 30 sampled positives and 60 negatives. From .61 to .90: P .86 R .80 F1 .83; from .21 to .50:
# P .75, R 1, F1 .86 (the best F1, short of the precision aimed at).
SHARP = items((4, 0, 0.95), (24, 1, 0.9), (6, 0, 0.6), (6, 1, 0.5), (50, 0, 0.2))
BLUNT = items((4, 0, 0.95), (20, 1, 0.9), (6, 0, 0.6), (10, 1, 0.5), (50, 0, 0.2))


def test_the_best_f1_among_thresholds_precise_enough() -> None:
    alert, review = choose(SHARP)
    assert alert == 0.9  # the best F1 (.86 at .50) is not precise enough; .83 costs < a tenth
    # the band [.21, .90) holds 6 relevant items and 6 others: relevant half of the time
    assert review == 0.21


def test_no_more_than_a_tenth_of_the_best_f1_is_given_for_precision() -> None:
    # BLUNT, from .61 to .90: F1 .74 (P .83 R .67), more than a tenth below the best (.86)
    alert, _ = choose(BLUNT)
    assert alert == 0.5  # of the thresholds near the best F1, the most precise


def test_curated_items_keep_the_threshold_from_costing_their_stories() -> None:
    # curated stories that score .7: a threshold above it loses all of them
    alert, _ = choose(SHARP + items((10, 1, 0.7), (40, 0, 0.1), origin=CURATED))
    assert alert == 0.7  # the highest threshold that keeps them, still precise enough


def test_thresholds_aim_at_sampled_and_team_items_when_they_hold_20_positives() -> None:
    team = [(Scored(TEAM, ex.label, ex.unsure, ex.net), s) for ex, s in SHARP]
    assert choose(team) == choose(SHARP)
    assert threshold_pool([ex for ex, _ in team + SHARP]) == frozenset({SAMPLED, TEAM})
    few = items((19, 1, 0.9), (40, 0, 0.2)) + items((30, 1, 0.9), origin=CURATED)
    assert threshold_pool([ex for ex, _ in few]) is None  # then every item counts
    unsure = [(Scored(SAMPLED, 1, True, True), 0.9)]
    assert threshold_pool([ex for ex, _ in few[:40] + unsure * 5]) is None  # unsure don't count


def test_pooled_partitions_choose_as_one_sample() -> None:
    """Partitions of the same items, pooled: each item counts once per partition."""
    assert choose(SHARP + SHARP) == choose(SHARP)
    # above .61 BLUNT and SHARP together reach P .85 and F1 .79, within a tenth of the best
    assert choose(BLUNT)[0] == 0.5 and choose(BLUNT + SHARP)[0] == 0.9


def test_the_curve_counts_what_alerts_at_each_threshold() -> None:
    rng = random.Random(7)
    examples = [
        Scored(rng.choice([SAMPLED, CURATED, TEAM]), rng.random() < 0.3, rng.random() < 0.05,
               rng.random() < 0.6)
        for _ in range(400)
    ]  # fmt: skip
    scores = [round(rng.random(), 2) for _ in examples]  # ties on the grid's own values
    for origins in (None, frozenset({SAMPLED}), frozenset({CURATED, TEAM})):
        want = [counts(examples, combined(examples, scores, t), origins) for t in GRID]
        assert curve(examples, scores, GRID, origins) == want
