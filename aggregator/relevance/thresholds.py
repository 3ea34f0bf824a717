"""How well a topic alerts at a threshold, and how its alert and review thresholds are chosen.

Pure Python, on the out-of-fold scores of cross-validation. What alerts is what the service
alerts on: the topic's rule caught the item AND its score reaches the alert threshold. Figures
leave out the items unsure for the topic, as ``aggregator eval`` does.

Where an item comes from matters: the service scores what the feeds bring, so thresholds aim at
items *sampled* as the feeds bring them (a ``--labels`` file, the team's own labels) rather than
*curated* ones, which are denser in clear cases; curated items only keep the choice from costing
the stories they stand for (issue 17: the hidden test set is sampled; the first holdout is
curated).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SAMPLED, CURATED, TEAM = "train", "dev", "team"  # where a labelled item comes from
SAMPLED_POOL = frozenset({SAMPLED, TEAM})
MIN_SAMPLED_POSITIVES = 20  # fewer sampled positives than this: thresholds from every item

GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(95))  # the thresholds tried: .05 .. .99
MIN_ALERT_PRECISION = 0.78  # the alert threshold aims at this precision on the pool ...
F1_GIVE_SHARE = 0.1  # ... giving up at most this share of the pool's best F1 ...
CURATED_F1_GIVE = 0.05  # ... and at most this much of the curated items' best F1
REVIEW_PRECISION = 1 / 3  # the review band must be relevant at least this often


class Judged(Protocol):
    """What measuring reads of a labelled item under one topic."""

    @property
    def origin(self) -> str: ...
    @property
    def label(self) -> int: ...
    @property
    def unsure(self) -> bool: ...
    @property
    def net(self) -> bool: ...  # the topic's rule caught it


@dataclass(frozen=True, slots=True)
class Counts:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def line(self) -> str:
        return (f"P {self.precision:.3f} R {self.recall:.3f} F1 {self.f1:.3f} "
                f"(tp {self.tp} fp {self.fp} fn {self.fn})")  # fmt: skip

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "tp": self.tp, "fp": self.fp, "fn": self.fn}  # fmt: skip


def counts(examples: Sequence[Judged], alerted: Sequence[bool],
           origins: frozenset[str] | None = None) -> Counts:  # fmt: skip
    """Scored as ``aggregator eval`` scores: items unsure for the topic are left out; only the
    items of ``origins`` (None: every origin)."""
    tp = fp = fn = 0
    for ex, a in zip(examples, alerted, strict=True):
        if ex.unsure or (origins is not None and ex.origin not in origins):
            continue
        tp += bool(a and ex.label)
        fp += bool(a and not ex.label)
        fn += bool(ex.label and not a)
    return Counts(tp, fp, fn)


def combined(examples: Sequence[Judged], scores: Sequence[float], threshold: float) -> list[bool]:
    """What alerts: the rule caught the item and its score reaches the threshold."""
    return [ex.net and s >= threshold for ex, s in zip(examples, scores, strict=True)]


def curve(examples: Sequence[Judged], scores: Sequence[float], thresholds: Sequence[float],
          origins: frozenset[str] | None = None) -> list[Counts]:  # fmt: skip
    """:func:`counts` of what alerts at each threshold, computed at once (sorted scores)."""
    mine = [(s, ex.label) for ex, s in zip(examples, scores, strict=True)
            if not ex.unsure and (origins is None or ex.origin in origins)
            and ex.net]  # fmt: skip
    positives = sum(1 for ex in examples if ex.label and not ex.unsure
                    and (origins is None or ex.origin in origins))  # fmt: skip
    mine.sort()
    ranked = [s for s, _ in mine]
    above = [0] * (len(mine) + 1)  # above[i]: positives among mine[i:]
    for i in range(len(mine) - 1, -1, -1):
        above[i] = above[i + 1] + mine[i][1]
    out = []
    for t in thresholds:
        first = bisect_left(ranked, t)
        tp = above[first]
        out.append(Counts(tp, len(mine) - first - tp, positives - tp))
    return out


def threshold_pool(examples: Sequence[Judged]) -> frozenset[str] | None:
    """The origins thresholds are chosen on: sampled and team items when they hold enough
    positives, else every item (None)."""
    positives = sum(
        1 for ex in examples if ex.origin in SAMPLED_POOL and ex.label and not ex.unsure
    )
    return SAMPLED_POOL if positives >= MIN_SAMPLED_POSITIVES else None


def choose_thresholds(examples: Sequence[Judged], scores: Sequence[float]) -> tuple[float, float]:
    """(alert, review) from out-of-fold scores; ``examples`` may repeat, one copy per CV
    partition, to choose on several partitions pooled.

    Alert, measured on :func:`threshold_pool`: the candidates are the thresholds that keep the
    pool's F1 within :data:`F1_GIVE_SHARE` of its best and, when the pool is the sampled items,
    the curated items' F1 within :data:`CURATED_F1_GIVE` of its best (higher thresholds aimed at
    sampled traffic would otherwise cost curated-style stories). Of those reaching precision
    :data:`MIN_ALERT_PRECISION`, the best F1; when none does, the most precise. (Issue 17: F1 is
    flat near its top, precision climbs with the threshold, and each target, F1 and precision
    .75, binds one shipped topic; .78 sits near the point that leaves both the widest margin.)

    Review: the lowest threshold below the alert one whose band [review, alert) is relevant at
    least :data:`REVIEW_PRECISION` of the time (the alert threshold itself when none is).
    """
    pool = threshold_pool(examples)
    curated = pool is not None and any(ex.origin == CURATED and ex.label for ex in examples)
    on_pool = curve(examples, scores, GRID, pool)
    on_curated = curve(examples, scores, GRID, frozenset({CURATED}))
    rows = [
        (t, c, d.f1 if curated else 0.0) for t, c, d in zip(GRID, on_pool, on_curated, strict=True)
    ]
    best_curated = max(c for _, _, c in rows)
    kept = [(t, c) for t, c, on_curated in rows if on_curated >= best_curated - CURATED_F1_GIVE]
    best = max(c.f1 for _, c in kept)
    candidates = [(t, c) for t, c in kept if c.f1 >= (1 - F1_GIVE_SHARE) * best]
    precise = [(c.f1, t) for t, c in candidates if c.precision >= MIN_ALERT_PRECISION and c.tp]
    if not precise:  # none reaches the precision: as close to it as the candidates allow
        precise = [(c.precision, t) for t, c in candidates]
    alert = max(precise)[1]
    at_alert = next(c for t, c, _ in rows if t == alert)
    for t, c, _ in rows:
        if t >= alert:
            break
        band_tp, band_fp = c.tp - at_alert.tp, c.fp - at_alert.fp
        if band_tp + band_fp and band_tp / (band_tp + band_fp) >= REVIEW_PRECISION:
            return alert, t
    return alert, alert
