"""The second stage of a topic: the learned score behind its query, and the tier it gives an item.

A topic's query is the net its users edit. When the topic has a model, every item the query
catches is scored, and the score decides how it is delivered:

- ``alert``: at or above the topic's alert threshold, it alerts now;
- ``review``: between the review and the alert thresholds, it goes to the topic's digest as
  "possibly relevant", so recall is not bought with noise in the channel;
- ``below``: it is stored with its score, and not delivered.

A topic without a model alerts on its query alone, as it always did. Pure: the models are passed
in, already loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from aggregator.errors import ConfigError, ModelError
from aggregator.models import Document, TopicMatch
from aggregator.relevance.model import RelevanceModel, Vocabularies


class Tier(StrEnum):
    ALERT = "alert"
    REVIEW = "review"
    BELOW = "below"


class Thresholds(Protocol):
    @property
    def alert(self) -> float: ...
    @property
    def review(self) -> float: ...


class Model(Protocol):
    """What the planner and ``explain`` need of a topic's model."""

    @property
    def thresholds(self) -> Thresholds: ...

    def score(self, doc: Document, clauses: Collection[str]) -> float: ...

    def movers(
        self, doc: Document, clauses: Collection[str], n: int = 5
    ) -> list[tuple[str, float]]: ...


class TopicRules(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def exclude(self) -> str | None: ...


class TopicRelevance(Protocol):
    """What the stage reads of a topic; :class:`~aggregator.config.model.TopicConfig` has it."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> Path | None: ...
    @property
    def alert_threshold(self) -> float | None: ...
    @property
    def review_threshold(self) -> float | None: ...


@dataclass(frozen=True)
class TopicScorer:
    """A topic's model and the thresholds in force (topics.toml's, else the model's own)."""

    model: Model
    alert: float
    review: float

    def tier(self, score: float) -> Tier:
        if score >= self.alert:
            return Tier.ALERT
        if score >= self.review:
            return Tier.REVIEW
        return Tier.BELOW


@dataclass(frozen=True)
class Scoring:
    """Every topic's scorer; a topic missing here has no model."""

    scorers: Mapping[str, TopicScorer]

    def judge(self, doc: Document, match: TopicMatch) -> tuple[TopicMatch, Tier]:
        """The match with its score, and its tier (``alert`` for a topic without a model)."""
        scorer = self.scorers.get(match.topic)
        if scorer is None:
            return match, Tier.ALERT
        score = scorer.model.score(doc, match.clauses)
        return replace(match, score=score), scorer.tier(score)


NO_SCORING = Scoring({})


def load_scoring(topics: Sequence[TopicRelevance], load: Callable[[Path, str], Model]) -> Scoring:
    """Load the model of every topic that names one: ``load(path, topic)``, which raises on a
    bad file."""
    scorers: dict[str, TopicScorer] = {}
    for topic in topics:
        if topic.model is None:
            continue
        model = load(topic.model, topic.name)
        alert = topic.alert_threshold
        review = topic.review_threshold
        alert = model.thresholds.alert if alert is None else alert
        review = model.thresholds.review if review is None else review
        scorers[topic.name] = TopicScorer(model, alert, min(review, alert))
    return Scoring(scorers)


def load_models(topics: Sequence[TopicRelevance]) -> Scoring:
    """The topics' model files, each loaded once, sharing one term index. Raises
    :class:`~aggregator.errors.ConfigError` naming each topic whose model cannot be used."""
    vocabularies = Vocabularies()
    loaded: dict[str, Model] = {}
    problems: list[str] = []
    for topic in topics:
        if topic.model is not None:
            try:
                loaded[topic.name] = RelevanceModel.load(
                    topic.model, topic.name, vocabularies=vocabularies
                )
            except ModelError as e:
                problems.append(f"topics.{topic.name}.model: {e}")
    if problems:
        raise ConfigError(problems)
    return load_scoring(topics, lambda _path, name: loaded[name])


def stale_models(topics: Sequence[TopicRules], scoring: Scoring) -> list[str]:
    """One line per topic whose query changed since its model was trained: the clause
    features may mean something else now, so the model should be retrained."""
    notes: list[str] = []
    for topic in topics:
        scorer = scoring.scorers.get(topic.name)
        model = scorer.model if scorer is not None else None
        if isinstance(model, RelevanceModel) and not model.trained_on_rules(
            topic.query, topic.exclude
        ):
            notes.append(
                f"topics.{topic.name}: the query changed since its model was trained: retrain "
                f"it with `aggregator train {topic.name}`"
            )
    return notes
